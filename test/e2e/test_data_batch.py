"""Batch record create (POST /v1/collections/{collection}/records/batch):
1000 records in one request, all or nothing with the bad record named,
the same validation as single creates, its own body limit, and isolation
between orgs."""
import json
import uuid

import harness

FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
PASSWORD = "correct horse battery"
BATCH = "/v1/collections/{}/records/batch"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class BatchTestCase(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_MAX_BATCH_BODY_BYTES="4194304")

    def signup(self):
        tag = uuid.uuid4().hex[:10]
        body = {"name": f"Org {tag}", "admin": {"email": f"a-{tag}@example.com", "password": PASSWORD}}
        status, doc, _ = self.server.json("POST", "/v1/orgs", body)
        self.assertEqual(status, 201, doc)
        doc["schema"] = self.sql(
            f"SELECT schema_name FROM public.orgs WHERE id = '{doc['org']['id']}'")[0]
        return doc

    def sql(self, q):
        return self.pg.psql(q, self.dbname)

    def count(self, org, coll):
        return int(self.sql(f"SELECT count(*) FROM {org['schema']}.records WHERE collection = '{coll}'")[0])

    def batch(self, org, body, coll="items", headers=None):
        h = bearer(org["access_token"])
        h.update(headers or {})
        if isinstance(body, (bytes, str)):
            h["Content-Type"] = "application/json"
        r = self.server.request("POST", BATCH.format(coll), body, h, timeout=60)
        return r.status, (json.loads(r.body) if r.body else None), r

    def test_thousand_records_in_one_request(self):
        org = self.signup()
        records = [{"n": i, "name": f"item {i}", "big": 10 ** 30} for i in range(1000)]
        # The big integer goes through as text: jansson would refuse it.
        body = json.dumps({"records": records})
        self.assertGreater(len(body), 1 << 16)
        status, doc, _ = self.batch(org, body)
        self.assertEqual(status, 201, doc)
        self.assertEqual(len(doc["data"]), 1000)
        self.assertEqual([r["data"]["n"] for r in doc["data"]], list(range(1000)))
        self.assertEqual(doc["data"][7]["data"]["big"], 10 ** 30)
        for r in doc["data"][:3]:
            self.assertEqual(set(r), {"id", "collection", "data", "version", "created_at", "updated_at"})
            self.assertEqual(r["version"], 1)
            self.assertEqual(r["collection"], "items")
        self.assertEqual(self.count(org, "items"), 1000)
        # Each is an ordinary record afterwards.
        one = doc["data"][500]
        st, got, _ = self.server.json("GET", f"/v1/collections/items/records/{one['id']}",
                                      headers=bearer(org["access_token"]))
        self.assertEqual(st, 200, got)
        self.assertEqual(got, one)

    def test_one_invalid_record_stores_nothing(self):
        org = self.signup()
        records = [{"n": i} for i in range(10)]
        records[6] = [1, 2]
        status, doc, _ = self.batch(org, {"records": records})
        self.assertEqual(status, 422, doc)
        self.assertEqual(doc["code"], "validation_failed")
        self.assertEqual([e["field"] for e in doc["errors"]], ["records[6]"])
        self.assertEqual(self.count(org, "items"), 0)
        # A record nested too deep, as a single create would refuse it.
        deep = "1"
        for _ in range(64):
            deep = "[" + deep + "]"
        text = '{"records": [{"a": 1}, {"a": 2}, {"d": ' + deep + '}]}'
        status, doc, _ = self.batch(org, text)
        self.assertEqual(status, 422, doc)
        self.assertEqual([e["field"] for e in doc["errors"]], ["records[2]"])
        # One invalid JSON text anywhere: 400, nothing stored.
        status, doc, _ = self.batch(org, '{"records": [{"a": 1}, {"a": tru}]}')
        self.assertEqual(status, 400, doc)
        self.assertEqual(self.count(org, "items"), 0)

    def test_body_shape(self):
        org = self.signup()
        for body, want, field in [
            ({"records": []}, 422, "records"),
            ({"records": [{}] * 1001}, 422, "records"),
            ({"records": {"a": 1}}, 422, "records"),
            ({}, 422, "records"),
            ({"records": [{}], "extra": 1}, 422, "body"),
            ("[1]", 400, None),
            ("", 400, None),
        ]:
            status, doc, _ = self.batch(org, body)
            self.assertEqual(status, want, (body, doc))
            if field:
                self.assertEqual([e["field"] for e in doc["errors"]], [field], doc)
        status, doc, _ = self.batch(org, {"records": [{}]}, coll="Bad!")
        self.assertEqual(status, 404, doc)
        self.assertEqual(self.count(org, "items"), 0)

    def test_body_limit_is_the_batch_setting(self):
        org = self.signup()
        # 2 MiB: above the 1 MiB limit of other routes, below this route's 4 MiB.
        records = [{"pad": "x" * 2000} for _ in range(1000)]
        body = json.dumps({"records": records})
        self.assertGreater(len(body), 1 << 20)
        status, doc, _ = self.batch(org, body)
        self.assertEqual(status, 201, doc)
        r = self.server.request("POST", "/v1/collections/items/records",
                                json.dumps({"pad": "x" * (1 << 20)}),
                                dict(bearer(org["access_token"]), **{"Content-Type": "application/json"}))
        self.assertEqual(r.status, 413)
        big = json.dumps({"records": [{"pad": "x" * 5000} for _ in range(1000)]})
        self.assertGreater(len(big), 4 << 20)
        status, doc, _ = self.batch(org, big)
        self.assertEqual(status, 413, doc)

    def test_isolation(self):
        a, b = self.signup(), self.signup()
        # B's credential with A's org name: refused, nothing stored anywhere.
        status, doc, _ = self.batch(b, {"records": [{"x": 1}]},
                                    headers={"X-Org-Name": a["org"]["slug"]})
        self.assertEqual(status, 403, doc)
        status, doc, _ = self.batch(b, {"records": [{"secret": "b"}]})
        self.assertEqual(status, 201, doc)
        self.assertEqual(self.count(a, "items"), 0)
        self.assertEqual(self.count(b, "items"), 1)
        st, got, _ = self.server.json("GET", "/v1/collections/items/records",
                                      headers=bearer(a["access_token"]))
        self.assertEqual(got["data"], [])
        st, got, _ = self.server.json("GET", f"/v1/collections/items/records/{doc['data'][0]['id']}",
                                      headers=bearer(a["access_token"]))
        self.assertEqual(st, 404)

    def test_idempotency_key(self):
        org = self.signup()
        h = {"Idempotency-Key": uuid.uuid4().hex}
        s1, d1, _ = self.batch(org, {"records": [{"a": 1}, {"a": 2}]}, headers=h)
        s2, d2, r2 = self.batch(org, {"records": [{"a": 1}, {"a": 2}]}, headers=h)
        self.assertEqual((s1, s2), (201, 201))
        self.assertEqual(d1, d2)
        self.assertEqual(r2.getheader("Idempotent-Replayed"), "true")
        self.assertEqual(self.count(org, "items"), 2)


if __name__ == "__main__":
    import unittest
    unittest.main()
