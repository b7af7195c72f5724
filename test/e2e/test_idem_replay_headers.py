"""Idempotent replays and per-request headers (issue 10, item 8): a replay
carries the stored status and body, but its CORS and RateLimit headers are
computed for the replaying request, never copied from the first answer (a
copy gave two Access-Control-Allow-Origin headers and a stale budget)."""
import http.client
import json
import uuid

import harness

ORIGIN = "https://app.example"
FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}


class IdemReplayHeadersTest(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_CORS_ORIGINS=ORIGIN, TENANTD_ORG_RATE_LIMIT="1000")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tag = uuid.uuid4().hex[:10]
        body = {"name": f"Org {tag}", "admin": {"email": f"a-{tag}@example.com",
                                                "password": "correct horse battery"}}
        status, doc, _ = cls.server.json("POST", "/v1/orgs", body)
        if status != 201:
            raise AssertionError(f"signup failed: {status} {doc}")
        cls.token = doc["access_token"]

    def post(self, key, origin=ORIGIN):
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        h = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
             "Idempotency-Key": key}
        if origin:
            h["Origin"] = origin
        c.request("POST", "/v1/collections/notes/records", json.dumps({"n": 1}), h)
        r = c.getresponse()
        r.body = r.read()
        c.close()
        return r

    def test_replay_has_one_fresh_set_of_request_headers(self):
        key = "k-" + uuid.uuid4().hex
        first = self.post(key)
        self.assertEqual(first.status, 201, first.body)
        self.assertEqual(first.headers.get_all("Access-Control-Allow-Origin"), [ORIGIN])
        again = self.post(key)
        self.assertEqual(again.status, 201)
        self.assertEqual(again.getheader("Idempotent-Replayed"), "true")
        self.assertEqual(again.body, first.body)
        self.assertEqual(again.headers.get_all("Location"), first.headers.get_all("Location"))
        self.assertEqual(again.headers.get_all("Access-Control-Allow-Origin"), [ORIGIN])
        self.assertEqual(len(again.headers.get_all("Vary") or []), 1)
        self.assertEqual(len(again.headers.get_all("Access-Control-Expose-Headers")), 1)
        remaining = again.headers.get_all("RateLimit-Remaining")
        self.assertEqual(len(remaining), 1, remaining)
        self.assertLess(int(remaining[0]), int(first.getheader("RateLimit-Remaining")))

    def test_replay_without_origin_has_no_cors_headers(self):
        key = "k-" + uuid.uuid4().hex
        self.assertEqual(self.post(key).status, 201)
        again = self.post(key, origin=None)
        self.assertEqual(again.getheader("Idempotent-Replayed"), "true")
        self.assertIsNone(again.getheader("Access-Control-Allow-Origin"))
        self.assertIsNone(again.getheader("Vary"))


if __name__ == "__main__":
    import unittest
    unittest.main()
