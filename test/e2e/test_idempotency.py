"""Idempotency-Key end to end (README.md, "Credits and Idempotency-Key"), on the routes that take
it today (POST /v1/credits/spend, POST /v1/admin/orgs/{slug}/credits): replay
byte for byte, another request with the key -> 422, a request still running
-> 409, keys unused by requests refused before they ran, keys per org and
per operator, malformed keys -> 400, lapsed claims, the 24 h purge."""
import concurrent.futures
import json
import os
import subprocess
import time
import unittest

import harness
from test_credits import OPERATOR, SERVER_ENV, audit, op_headers
from test_users import bearer, create_key, signup


class IdempotencyTest(harness.DbTestCase):
    server_env = SERVER_ENV

    def tearDown(self):
        self.assertEqual(audit(self.pg, self.dbname), [], "ledger invariants broken")

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def new_org(self, credits=100):
        org = signup(self.server)
        org["token"] = org["access_token"]
        if credits:
            status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                               {"amount": credits}, op_headers())
            self.assertEqual(status, 201, body)
        return org

    def spend(self, org, body, key=None, server=None, token=None, raw=None):
        h = {"Authorization": f"Bearer {token or org['token']}", "Content-Type": "application/json"}
        if key is not None:
            h["Idempotency-Key"] = key
        return (server or self.server).request("POST", "/v1/credits/spend",
                                               raw if raw is not None else json.dumps(body), h)

    def balance(self, org):
        return int(self.sql("SELECT balance FROM public.credit_accounts "
                            f"WHERE org_id = '{org['org']['id']}'")[0])

    def ledger_count(self, org):
        return int(self.sql("SELECT count(*) FROM public.credit_transactions "
                            f"WHERE org_id = '{org['org']['id']}'")[0])

    def keys(self, org):
        return self.sql("SELECT scope || ':' || key || ':' || status FROM public.idempotency_keys "
                        f"WHERE org_id = '{org['org']['id']}' ORDER BY scope, key")

    def test_replay_is_byte_for_byte_and_spends_once(self):
        org = self.new_org(100)
        body = json.dumps({"amount": 7, "description": "first", "reference": "ref-1"})
        first = self.spend(org, None, key="key-1", raw=body)
        self.assertEqual(first.status, 201, first.body)
        self.assertIsNone(first.getheader("Idempotent-Replayed"))
        for _ in range(3):
            again = self.spend(org, None, key="key-1", raw=body)
            self.assertEqual(again.status, 201)
            self.assertEqual(again.body, first.body)
            self.assertEqual(again.getheader("Content-Type"), first.getheader("Content-Type"))
            self.assertEqual(again.getheader("Idempotent-Replayed"), "true")
            self.assertNotEqual(again.getheader("X-Request-Id"), first.getheader("X-Request-Id"))
        self.assertEqual(self.balance(org), 93)
        self.assertEqual(self.ledger_count(org), 2)
        self.assertEqual(self.keys(org), ["org:key-1:done"])
        # Without a key every request spends.
        for _ in range(2):
            self.assertEqual(self.spend(org, {"amount": 1}).status, 201)
        self.assertEqual(self.balance(org), 91)

    def test_same_key_other_request_is_422(self):
        org = self.new_org(100)
        self.assertEqual(self.spend(org, {"amount": 5}, key="k").status, 201)
        for body in ({"amount": 6}, {"amount": 5, "reference": "x"}):
            with self.subTest(body=body):
                r = self.spend(org, body, key="k")
                self.assertEqual(r.status, 422, r.body)
                answer = json.loads(r.body)
                self.assertEqual(answer["code"], "validation_failed")
                self.assertEqual([e["field"] for e in answer["errors"]], ["Idempotency-Key"])
                self.assertIsNone(r.getheader("Idempotent-Replayed"))
        # The fingerprint is of the bytes: the same JSON spelled otherwise is
        # another request (json.dumps sent '{"amount": 5}').
        r = self.spend(org, None, key="k", raw='{"amount":5}')
        self.assertEqual(r.status, 422, r.body)
        self.assertEqual(self.balance(org), 95)
        # Another route is another request too (the key is the org's).
        status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                           {"amount": 5}, op_headers(**{"Idempotency-Key": "k"}))
        self.assertEqual(status, 201, body)  # the operator's scope: not the org's "k"

    def test_rejected_requests_do_not_use_the_key(self):
        org = self.new_org(10)
        # Validation (422), malformed JSON (400), a bad credential (401), a
        # forbidden credential (403) and a short balance (402): none stores the key.
        self.assertEqual(self.spend(org, {"amount": -1}, key="k1").status, 422)
        self.assertEqual(self.spend(org, None, key="k1", raw="{").status, 400)
        self.assertEqual(self.spend(org, {"amount": 5}, key="k1", token="tdk_bad").status, 401)
        self.assertEqual(self.spend(org, {"amount": 5}, key="k1", token=OPERATOR).status in (401, 403),
                         True)
        self.assertEqual(self.spend(org, {"amount": 50}, key="k1").status, 402)
        self.assertEqual(self.keys(org), [])
        self.assertEqual(self.balance(org), 10)
        # The same key now runs, with a body of its own.
        r = self.spend(org, {"amount": 5}, key="k1")
        self.assertEqual(r.status, 201, r.body)
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        # A 402 key works after a top-up (nothing had happened).
        self.assertEqual(self.spend(org, {"amount": 8}, key="k2").status, 402)
        status, _, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                        {"amount": 10}, op_headers())
        self.assertEqual(status, 201)
        r = self.spend(org, {"amount": 8}, key="k2")
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(self.balance(org), 7)

    def test_keys_are_per_org_and_per_operator(self):
        a, b = self.new_org(50), self.new_org(50)
        ra = self.spend(a, {"amount": 3}, key="shared")
        rb = self.spend(b, {"amount": 3}, key="shared")
        self.assertEqual((ra.status, rb.status), (201, 201))
        self.assertIsNone(rb.getheader("Idempotent-Replayed"))
        self.assertNotEqual(json.loads(ra.body)["id"], json.loads(rb.body)["id"])
        self.assertEqual((self.balance(a), self.balance(b)), (47, 47))
        # An API key and a user of one org share the org's keys.
        key = create_key(self.server, a["token"])["key"]
        r = self.spend(a, {"amount": 3}, key="shared", token=key)
        self.assertEqual((r.status, r.body, r.getheader("Idempotent-Replayed")),
                         (201, ra.body, "true"))
        # The operator's keys are its own: "shared" is free for it.
        status, tx, r = self.server.json("POST", f"/v1/admin/orgs/{a['slug']}/credits",
                                         {"amount": 5}, op_headers(**{"Idempotency-Key": "shared"}))
        self.assertEqual(status, 201, tx)
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        status, tx2, r = self.server.json("POST", f"/v1/admin/orgs/{a['slug']}/credits",
                                          {"amount": 5}, op_headers(**{"Idempotency-Key": "shared"}))
        self.assertEqual((status, tx2, r.getheader("Idempotent-Replayed")), (201, tx, "true"))
        status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{a['slug']}/credits",
                                           {"amount": 6}, op_headers(**{"Idempotency-Key": "shared"}))
        self.assertEqual(status, 422, body)
        # The operator's key for org a is not one for org b.
        status, tx3, r = self.server.json("POST", f"/v1/admin/orgs/{b['slug']}/credits",
                                          {"amount": 5}, op_headers(**{"Idempotency-Key": "shared"}))
        self.assertEqual(status, 201, tx3)
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        self.assertEqual((self.balance(a), self.balance(b)), (52, 52))
        self.assertEqual(self.keys(a), ["operator:shared:done", "org:shared:done"])

    def test_malformed_keys_are_400(self):
        org = self.new_org(10)
        for key in ("", "a b", "x" * 256, "tab\there", "é"):
            with self.subTest(key=key):
                raw = (f"POST /v1/credits/spend HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: Bearer {org['token']}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: 13\r\n"
                       f"Connection: close\r\n").encode() + b"Idempotency-Key: " + \
                    key.encode("utf-8") + b"\r\n\r\n" + b'{"amount": 1}'
                answer = self.server.raw(raw)
                status_line = answer.split(b"\r\n", 1)[0]
                self.assertIn(b" 400 ", status_line, answer)
                self.assertIn(b"application/problem+json", answer)
        # Exactly 255 visible characters is fine; two Idempotency-Key headers are not.
        ok = "!" + "~" * 253 + "a"
        self.assertEqual(self.spend(org, {"amount": 1}, key=ok).status, 201)
        raw = (f"POST /v1/credits/spend HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {org['token']}\r\n"
               "Content-Type: application/json\r\nContent-Length: 13\r\nIdempotency-Key: a\r\n"
               "Idempotency-Key: b\r\nConnection: close\r\n\r\n{\"amount\": 1}").encode()
        self.assertIn(b" 400 ", self.server.raw(raw).split(b"\r\n", 1)[0])
        self.assertEqual(self.balance(org), 9)

    def test_in_flight_is_409(self):
        """The first request is held on the account's row lock (taken by psql);
        a second with the same key, through another server (no shared
        connection to queue behind), is 409 and changes nothing; once the lock
        goes the first completes and later retries replay it."""
        org = self.new_org(100)
        # An API key: the other server signs its own access tokens.
        org["token"] = create_key(self.server, org["token"])["key"]
        other = harness.Server(self.db_url, env=SERVER_ENV).start()
        app = "idem-lock-holder-" + org["org"]["id"][:8]
        holder = subprocess.Popen(
            [harness.PSQL, self.db_url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c",
             "BEGIN; SELECT 1 FROM public.credit_accounts "
             f"WHERE org_id = '{org['org']['id']}' FOR UPDATE; SELECT pg_sleep(3); COMMIT;"],
            env=dict(os.environ, PGAPPNAME=app),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # In pg_sleep means past the FOR UPDATE: the row is locked. Other
            # tests run at the same time: match this holder and this database.
            self._wait_for(lambda: self.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                f"'{app}' AND wait_event = 'PgSleep'") == ["1"])
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                first = ex.submit(self.spend, org, {"amount": 4}, "held")
                self._wait_for(lambda: self.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() "
                    "AND query LIKE '%tenantd_credit_spend%'") == ["1"])
                second = self.spend(org, {"amount": 4}, key="held", server=other)
                self.assertEqual(second.status, 409, second.body)
                self.assertEqual(json.loads(second.body)["code"], "conflict")
                self.assertEqual(second.getheader("Retry-After"), "1")
                # A different body while in flight: still 409 (the first is not done).
                third = self.spend(org, {"amount": 5}, key="held", server=other)
                self.assertEqual(third.status, 409, third.body)
                r1 = first.result(30)
            self.assertEqual(r1.status, 201, r1.body)
            self.assertIsNone(r1.getheader("Idempotent-Replayed"))
            r2 = self.spend(org, {"amount": 4}, key="held", server=other)
            self.assertEqual((r2.status, r2.body, r2.getheader("Idempotent-Replayed")),
                             (201, r1.body, "true"))
        finally:
            holder.wait(30)
            rc = other.stop()
            self.assertEqual(rc, 0, other.log())
        self.assertEqual(self.balance(org), 96)

    def test_same_key_concurrently_runs_once(self):
        org = self.new_org(1000)
        body = {"amount": 10}
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            rs = list(ex.map(lambda _: self.spend(org, body, key="race"), range(32)))
        statuses = sorted(r.status for r in rs)
        self.assertTrue(set(statuses) <= {201, 409}, statuses)
        originals = [r for r in rs if r.status == 201 and not r.getheader("Idempotent-Replayed")]
        self.assertEqual(len(originals), 1, statuses)
        for r in rs:
            if r.status == 201:
                self.assertEqual(r.body, originals[0].body)
        self.assertEqual(self.balance(org), 990)

    def test_lapsed_and_live_claims(self):
        """Two-step claims (tenantd_idem_begin with a lease) as other modules
        use them: a live lease is 409 for everyone, a lapsed one is taken over."""
        org = self.new_org(100)
        oid = org["org"]["id"]
        claim = self.sql(f"SELECT o_outcome || '|' || o_claim_id FROM public.tenantd_idem_begin("
                         f"'{oid}', 'org', 'two-step', 'h1', 60)")[0]
        outcome, claim_id = claim.split("|")
        self.assertEqual(outcome, "proceed")
        self.assertEqual(self.spend(org, {"amount": 1}, key="two-step").status, 409)
        again = self.sql(f"SELECT o_outcome FROM public.tenantd_idem_begin("
                         f"'{oid}', 'org', 'two-step', 'h1', 60)")
        self.assertEqual(again, ["in_flight"])
        # Finishing with a wrong claim id does nothing; the right one stores.
        self.assertEqual(self.sql(f"SELECT public.tenantd_idem_finish('{oid}', 'org', 'two-step', "
                                  "'h1', 201, '[[\"Content-Type\",\"application/json\"]]', '{}', "
                                  "gen_random_uuid())"), ["f"])
        self.assertEqual(self.sql(f"SELECT public.tenantd_idem_finish('{oid}', 'org', 'two-step', "
                                  "'h1', 201, '[[\"Content-Type\",\"application/json\"]]', "
                                  f"'{{\"x\":1}}', '{claim_id}')"), ["t"])
        replay = self.sql(f"SELECT o_outcome || '|' || o_status || '|' || o_body FROM "
                          f"public.tenantd_idem_begin('{oid}', 'org', 'two-step', 'h1', 60)")
        self.assertEqual(replay, ['replay|201|{"x":1}'])
        # Release gives a live claim back at once.
        cid = self.sql(f"SELECT o_claim_id FROM public.tenantd_idem_begin("
                       f"'{oid}', 'org', 'released', 'h', 60)")[0]
        self.assertEqual(self.sql(f"SELECT public.tenantd_idem_release('{oid}', 'org', 'released', "
                                  f"'{cid}')"), ["t"])
        self.assertEqual(self.spend(org, {"amount": 1}, key="released").status, 201)
        # A claim whose request died (lease lapsed) no longer blocks the key.
        self.sql("INSERT INTO public.idempotency_keys (org_id, scope, key, request_hash, status, "
                 f"claim_id, locked_until) VALUES ('{oid}', 'org', 'lapsed', 'old', 'in_flight', "
                 "gen_random_uuid(), now() - interval '1 second')")
        r = self.spend(org, {"amount": 2}, key="lapsed")
        self.assertEqual(r.status, 201, r.body)
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        r2 = self.spend(org, {"amount": 2}, key="lapsed")
        self.assertEqual((r2.status, r2.body), (201, r.body))
        self.assertEqual(self.balance(org), 97)

    def test_expired_keys_are_purged(self):
        org = self.new_org(10)
        oid = org["org"]["id"]
        for key, age, status, lease in (("old-done", "25 hours", "done", None),
                                        ("old-lapsed", "25 hours", "in_flight", "-1 hour"),
                                        ("old-live", "25 hours", "in_flight", "1 hour"),
                                        ("young", "23 hours", "done", None)):
            resp = "201, '[]', '{}'" if status == "done" else "NULL, NULL, NULL"
            until = f"now() + interval '{lease}'" if lease else "NULL"
            self.sql("INSERT INTO public.idempotency_keys (org_id, scope, key, request_hash, status, "
                     "response_status, response_headers, response_body, created_at, locked_until) "
                     f"VALUES ('{oid}', 'org', '{key}', 'h', '{status}', {resp}, "
                     f"now() - interval '{age}', {until})")
        # The purge runs when a server starts (and every few minutes after).
        extra = harness.Server(self.db_url, env=SERVER_ENV).start()
        try:
            self._wait_for(lambda: len(self.keys(org)) == 2)
        finally:
            self.assertEqual(extra.stop(), 0)
        self.assertEqual(self.keys(org), ["org:old-live:in_flight", "org:young:done"])

    def _wait_for(self, cond, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.05)
        self.fail("condition not reached in time")


if __name__ == "__main__":
    unittest.main()
