"""Overload sheds early (issue 11, item 4): when every database connection
is busy, no request waits for one longer than TENANTD_DB_SHED_WAIT_MS: one
that has waited that long gets 503 with Retry-After, and while the oldest
waiting one has, a new one gets it at once, instead of queueing for
TENANTD_DB_WAIT_TIMEOUT_MS. The request in flight is served."""
import json
import subprocess
import threading
import time
import uuid

import harness

FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
WORKER = "wk-" + uuid.uuid4().hex + uuid.uuid4().hex
harness.secret(OPERATOR)
harness.secret(WORKER)


class DbSheddingTest(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_DB_POOL_SIZE="1", TENANTD_DB_PIPELINE_DEPTH="1",
                      TENANTD_DB_WAIT_TIMEOUT_MS="6000", TENANTD_DB_SHED_WAIT_MS="300",
                      TENANTD_THREADS="1", TENANTD_JOB_WORKERS="0",
                      TENANTD_OPERATOR_TOKEN=OPERATOR, TENANTD_WORKER_TOKEN=WORKER)

    def signup(self):
        tag = uuid.uuid4().hex[:10]
        status, doc, _ = self.server.json("POST", "/v1/orgs", {
            "name": f"Org {tag}", "admin": {"email": f"a-{tag}@example.com",
                                            "password": "correct horse battery"}})
        self.assertEqual(status, 201, doc)
        schema = self.pg.psql(f"SELECT schema_name FROM public.orgs WHERE id = '{doc['org']['id']}'",
                              self.dbname)[0]
        return {"Authorization": f"Bearer {doc['access_token']}"}, schema

    def hold_records(self, schema, seconds):
        """Locks the org's records table for `seconds`: the pool's one
        connection blocks on the next statement that reads it."""
        return subprocess.Popen(
            [harness.PSQL, self.pg.url(self.dbname), "-qAt", "-c",
             f'BEGIN; LOCK TABLE "{schema}".records IN ACCESS EXCLUSIVE MODE; '
             f"SELECT pg_sleep({seconds}); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def test_worker_completion_shed_changes_nothing(self):
        # A completion (sent to the database in a set, workerapi.c) that the
        # pool sheds answers 503 + Retry-After and leaves the job running
        # under its lease: the worker sends it again and it is taken.
        auth, schema = self.signup()
        op = {"Authorization": f"Bearer {OPERATOR}"}
        wk = {"Authorization": f"Bearer {WORKER}"}
        status, body, _ = self.server.json("PUT", "/v1/admin/job-types/shed.probe",
                                           {"cost": 0}, op)
        self.assertEqual(status, 200, body)
        status, job, _ = self.server.json("POST", "/v1/jobs", {"type": "shed.probe"}, auth)
        self.assertEqual(status, 202, job)
        status, claimed, _ = self.server.json("POST", "/v1/worker/claim",
                                              {"types": ["shed.probe"], "max": 1}, wk)
        self.assertEqual((status, [c["id"] for c in claimed["data"]]), (200, [job["id"]]))
        lease = claimed["data"][0]["lease_id"]
        r = self.server.request("POST", "/v1/collections/c/records", json.dumps({"a": 1}).encode(),
                                dict(auth, **{"Content-Type": "application/json"}))
        self.assertEqual(r.status, 201, r.body)
        path = "/v1/collections/c/records/" + json.loads(r.body)["id"]

        lock = self.hold_records(schema, 2.0)
        try:
            time.sleep(0.3)
            held = threading.Thread(
                target=lambda: self.server.request("GET", path, headers=auth, timeout=15))
            held.start()  # takes the pool's one connection and waits on the lock
            time.sleep(0.2)
            status, shed, r = self.server.json("POST", f"/v1/worker/jobs/{job['id']}/complete",
                                               {"lease_id": lease, "result": {"n": 1}}, wk)
            self.assertEqual((status, shed["code"]), (503, "unavailable"), shed)
            self.assertEqual(r.getheader("Retry-After"), "1")
            held.join(15)
        finally:
            lock.wait(10)
        self.assertEqual(self.pg.psql(f"SELECT status FROM public.jobs WHERE id = '{job['id']}'",
                                      self.dbname), ["running"])
        status, done, _ = self.server.json("POST", f"/v1/worker/jobs/{job['id']}/complete",
                                           {"lease_id": lease, "result": {"n": 1}}, wk)
        self.assertEqual((status, done["status"], done["result"]), (200, "succeeded", {"n": 1}))

    def test_new_requests_shed_while_the_queue_is_stuck(self):
        auth, schema = self.signup()
        r = self.server.request("POST", "/v1/collections/c/records", json.dumps({"a": 1}).encode(),
                                dict(auth, **{"Content-Type": "application/json"}))
        self.assertEqual(r.status, 201, r.body)
        path = "/v1/collections/c/records/" + json.loads(r.body)["id"]
        self.assertEqual(self.server.request("GET", path, headers=auth).status, 200)

        # Hold the org's table for 2.5 s: the pool's one connection blocks
        # on it, later requests queue behind.
        lock = self.hold_records(schema, 2.5)
        try:
            time.sleep(0.3)
            results = {}

            def fetch(name):
                t0 = time.time()
                rr = self.server.request("GET", path, headers=auth, timeout=15)
                results[name] = (rr.status, time.time() - t0)

            first = threading.Thread(target=fetch, args=("first",))
            first.start()
            time.sleep(0.2)
            second = threading.Thread(target=fetch, args=("second",))
            second.start()
            time.sleep(0.6)  # the second has waited past the shed bound
            t0 = time.time()
            shed = self.server.request("GET", path, headers=auth, timeout=15)
            took = time.time() - t0
            self.assertEqual(shed.status, 503, shed.body)
            self.assertEqual(shed.getheader("Retry-After"), "1")
            self.assertEqual(json.loads(shed.body)["code"], "unavailable")
            self.assertLess(took, 1.0)
            first.join(15)
            second.join(15)
            # The one in flight was served once the table was free; the one
            # waiting behind it was shed at the bound, not served 2 s late.
            self.assertEqual(results["first"][0], 200)
            self.assertEqual(results["second"][0], 503)
            self.assertLess(results["second"][1], 1.0)
        finally:
            lock.wait(10)
        # And the pool serves normally again.
        self.assertEqual(self.server.request("GET", path, headers=auth).status, 200)


if __name__ == "__main__":
    import unittest
    unittest.main()
