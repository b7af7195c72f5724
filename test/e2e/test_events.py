"""Event webhooks: subscriptions (validation, secret shown once, list,
delete, isolation) and deliveries of job.succeeded, job.failed,
credits.low, user.created and user.removed through webhook.deliver: signed
with the subscription's secret, named by X-Tenantd-Event (the same on a
retried delivery), once per subscription, free of charge."""
import json
import time
import unittest
import uuid

import harness
from test_jobs import FAST, Receiver, verify_signature
from test_users import bearer, create_user, signup


class EventsTest(harness.DbTestCase):
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rx = Receiver()
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_ALLOW_PRIVATE="1",
            TENANTD_WEBHOOK_ALLOW=f"127.0.0.1:{cls.rx.port}")).start()

    @classmethod
    def tearDownClass(cls):
        cls.rx.close()
        super().tearDownClass()

    def setUp(self):
        o = signup(self.server)
        self.token, self.org_id = o["access_token"], o["org"]["id"]

    def call(self, method, path, body=None, token=None):
        return self.server.json(method, path, body, bearer(token or self.token))[:2]

    def subscribe(self, events, path=None, **extra):
        path = path or self.rx.new_path()
        status, w = self.call("POST", "/v1/webhooks", dict(
            url=f"http://127.0.0.1:{self.rx.port}{path}", events=events, **extra))
        self.assertEqual(status, 201, w)
        harness.secret(w["secret"])
        return path, w

    def wait_sent(self, path, n, timeout=10):
        deadline = time.time() + timeout
        while len(self.rx.sent_to(path)) < n and time.time() < deadline:
            time.sleep(0.05)
        return self.rx.sent_to(path)

    def test_validation_and_routes(self):
        for body, field in (({"url": "ftp://x/", "events": ["job.failed"]}, "url"),
                            ({"url": "http://10.1.2.3/", "events": ["job.failed"]}, "url"),
                            ({"url": f"http://127.0.0.1:{self.rx.port}/", "events": []},
                             "events"),
                            ({"url": f"http://127.0.0.1:{self.rx.port}/", "events": ["x"]},
                             "events"),
                            ({"url": f"http://127.0.0.1:{self.rx.port}/",
                              "events": ["job.failed"], "credits_low_below": -1},
                             "credits_low_below")):
            status, answer = self.call("POST", "/v1/webhooks", body)
            self.assertEqual(status, 422, (body, answer))
            self.assertIn(field, [e["field"] for e in answer["errors"]], answer)
        _, w = self.subscribe(["job.succeeded"])
        self.assertTrue(w["secret"].startswith("whsec_"))
        status, listed = self.call("GET", "/v1/webhooks")
        self.assertEqual([x["id"] for x in listed["data"]], [w["id"]])
        self.assertNotIn("secret", listed["data"][0])
        status, one = self.call("GET", f"/v1/webhooks/{w['id']}")
        self.assertEqual((status, one["events"]), (200, ["job.succeeded"]))
        other = signup(self.server)
        status, _ = self.call("GET", f"/v1/webhooks/{w['id']}", None, other["access_token"])
        self.assertEqual(status, 404)
        status, _ = self.call("DELETE", f"/v1/webhooks/{w['id']}", None, other["access_token"])
        self.assertEqual(status, 404)
        status, _ = self.call("DELETE", f"/v1/webhooks/{w['id']}")
        self.assertEqual(status, 204)
        status, _ = self.call("GET", f"/v1/webhooks/{w['id']}")
        self.assertEqual(status, 404)

    def test_list_is_paged(self):
        ids = [self.subscribe(["job.succeeded"])[1]["id"] for _ in range(3)]
        harness.check_paging(self, lambda path: self.call("GET", path), "/v1/webhooks", ids)

    def test_job_events_signed_once_per_subscription_and_free(self):
        path_a, a = self.subscribe(["job.succeeded", "job.failed"])
        path_b, b = self.subscribe(["job.failed"])
        status, ok = self.call("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 0}})
        self.assertEqual(status, 202)
        status, bad = self.call("POST", "/v1/jobs", {"type": "fail", "max_attempts": 1})
        self.assertEqual(status, 202)
        sent_a = self.wait_sent(path_a, 2)
        sent_b = self.wait_sent(path_b, 1)
        time.sleep(0.3)  # nothing more comes
        self.assertEqual(len(self.rx.sent_to(path_a)), 2)
        self.assertEqual(len(self.rx.sent_to(path_b)), 1)
        events = {}
        for headers, body in sent_a:
            self.assertTrue(verify_signature(headers, body, a["secret"]))
            e = json.loads(body)
            self.assertEqual(headers["X-Tenantd-Event"], e["id"])
            events[e["type"]] = e
        self.assertEqual(events["job.succeeded"]["data"]["id"], ok["id"])
        self.assertEqual(events["job.failed"]["data"]["id"], bad["id"])
        headers, body = sent_b[0]
        self.assertTrue(verify_signature(headers, body, b["secret"]))
        self.assertEqual(json.loads(body)["data"]["id"], bad["id"])
        # The deliveries cost nothing: only the two jobs were charged.
        charged = self.pg.psql("SELECT count(*) FROM public.credit_transactions"
                               f" WHERE org_id = '{self.org_id}' AND type = 'deduction'",
                               db=self.dbname)
        self.assertEqual(charged, ["2"])

    def test_retried_delivery_keeps_its_event_id(self):
        path, w = self.subscribe(["user.created"])
        self.rx.answers[path] = [500]
        user = create_user(self.server, self.token, f"u-{uuid.uuid4().hex[:6]}@example.com")
        sent = self.wait_sent(path, 2)
        self.assertEqual(len(sent), 2)
        ids = {h["X-Tenantd-Event"] for h, _ in sent}
        self.assertEqual(len(ids), 1)
        self.assertEqual({json.loads(b)["data"]["id"] for _, b in sent}, {user["id"]})
        # user.removed too
        path2, _ = self.subscribe(["user.removed"])
        status, _ = self.call("DELETE", f"/v1/users/{user['id']}")
        self.assertEqual(status, 204)
        [(h, b)] = self.wait_sent(path2, 1)
        self.assertEqual(json.loads(b)["type"], "user.removed")

    def test_credits_low_when_the_balance_crosses_the_threshold(self):
        path, _ = self.subscribe(["credits.low"], credits_low_below=995)
        for _ in range(5):  # 1000 -> 995: not below 995 yet, no event
            self.call("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 0}})
        time.sleep(0.5)
        self.assertEqual(self.rx.sent_to(path), [])
        for _ in range(2):  # 994 falls below; 993 was below already
            self.call("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 0}})
        [(h, b)] = self.wait_sent(path, 1)
        e = json.loads(b)
        self.assertEqual((e["type"], e["data"]["balance"]), ("credits.low", 994))
        time.sleep(0.3)
        self.assertEqual(len(self.rx.sent_to(path)), 1)


if __name__ == "__main__":
    unittest.main()
