"""Jobs your own code runs: operator-declared job types (payload schema
checked at enqueue), the HTTP worker API (claim with long polling, heartbeat
with progress, complete, fail with and without retry, leases that lapse,
stale leases 409), cancelling a running job, retrying a failed job, worker
credentials and their isolation, and the Python example worker run end to
end. The in-process workers run too (one), and never take an external job."""
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest
import uuid

import harness
from test_users import bearer, create_key, signup

OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
WORKER = "wk-" + uuid.uuid4().hex + uuid.uuid4().hex
harness.secret(OPERATOR)
harness.secret(WORKER)

SCHEMA = {"type": "object", "required": ["text"],
          "properties": {"text": {"type": "string", "maxLength": 1000},
                         "delay_s": {"type": "number", "minimum": 0, "maximum": 30},
                         "lang": {"enum": ["en", "fr"]}}}
ENV = {
    "TENANTD_OPERATOR_TOKEN": OPERATOR,
    "TENANTD_WORKER_TOKEN": WORKER,
    "TENANTD_SIGNUP_CREDITS": "1000",
    "TENANTD_LOGIN_LIMIT": "0",
    "TENANTD_JOB_WORKERS": "1",
    "TENANTD_JOB_POLL_MS": "50",
    "TENANTD_JOB_LEASE_MS": "1500",
    "TENANTD_JOB_RETRY_BASE_MS": "20",
    "TENANTD_JOB_RETRY_MAX_MS": "50",
}


class WorkerApiTest(harness.DbTestCase):
    server_env = ENV

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.type = "text.wordcount"
        status, body, _ = cls.server.json("PUT", f"/v1/admin/job-types/{cls.type}", {
            "cost": 3, "description": "count words", "timeout_s": 60, "max_attempts": 2,
            "payload_schema": SCHEMA}, bearer(OPERATOR))
        assert status == 200, (status, body)

    def setUp(self):
        o = signup(self.server)
        self.token, self.org_id = o["access_token"], o["org"]["id"]
        self.key = create_key(self.server, self.token, name="w", role="worker")["key"]
        harness.secret(self.key)

    # ---- helpers

    def call(self, method, path, body=None, cred=None):
        return self.server.json(method, path, body, bearer(cred or self.token))[:2]

    def enqueue(self, text="a b a", token=None, **payload):
        status, body = self.call("POST", "/v1/jobs", {
            "type": self.type, "payload": dict(text=text, **payload)}, token or self.token)
        self.assertEqual(status, 202, body)
        return body

    def claim(self, cred=None, max=1, wait_s=0, types=None):
        status, body = self.call("POST", "/v1/worker/claim", {
            "types": types or [self.type], "max": max, "wait_s": wait_s}, cred or self.key)
        self.assertEqual(status, 200, body)
        return body["data"]

    def ledger(self, job_id):
        return self.pg.psql("SELECT type || ':' || amount FROM public.credit_transactions"
                            f" WHERE job_id = '{job_id}' ORDER BY seq", db=self.dbname)

    def job(self, job_id):
        status, body = self.call("GET", f"/v1/jobs/{job_id}")
        self.assertEqual(status, 200, body)
        return body

    # ---- declared types

    def test_declare_refuses_unknown_keywords_and_bad_names(self):
        op = OPERATOR
        status, body = self.call("PUT", "/v1/admin/job-types/x.y",
                                 {"cost": 1, "payload_schema": {"type": "object",
                                                                "patternProperties": {}}}, op)
        self.assertEqual(status, 422, body)
        self.assertIn("payload_schema.patternProperties", json.dumps(body))
        status, body = self.call("PUT", "/v1/admin/job-types/x.y", {
            "cost": 1, "payload_schema": {"properties": {"a": {"format": "email"}}}}, op)
        self.assertEqual(status, 422, body)
        self.assertIn("payload_schema.properties.a.format", json.dumps(body))
        for name in ("records.export", "sleep", "Bad", "x" * 65):
            status, body = self.call("PUT", f"/v1/admin/job-types/{name}", {"cost": 1}, op)
            self.assertEqual(status, 422, (name, body))
        status, body = self.call("PUT", "/v1/admin/job-types/x.y", {"cost": -1}, op)
        self.assertEqual(status, 422, body)
        # cost is required: null is not a free type.
        for bad in ({"cost": None}, {}, {"cost": 1, "timeout_s": 0}, {"cost": 1, "max_attempts": "2"}):
            status, body = self.call("PUT", "/v1/admin/job-types/x.y", bad, op)
            self.assertEqual(status, 422, (bad, body))
        # Only the operator declares.
        status, _ = self.call("PUT", "/v1/admin/job-types/x.y", {"cost": 1})
        self.assertEqual(status, 403)
        status, _ = self.call("PUT", "/v1/admin/job-types/x.y", {"cost": 1}, WORKER)
        self.assertIn(status, (401, 403))

    def test_deleted_type_keeps_its_queued_jobs_claimable(self):
        status, _ = self.call("PUT", "/v1/admin/job-types/short.lived", {"cost": 1}, OPERATOR)
        self.assertEqual(status, 200)
        status, job = self.call("POST", "/v1/jobs", {"type": "short.lived"})
        self.assertEqual(status, 202, job)
        status, _ = self.call("DELETE", "/v1/admin/job-types/short.lived", None, OPERATOR)
        self.assertEqual(status, 204)
        status, _ = self.call("DELETE", "/v1/admin/job-types/short.lived", None, OPERATOR)
        self.assertEqual(status, 404)
        status, body = self.call("POST", "/v1/jobs", {"type": "short.lived"})
        self.assertEqual(status, 422, body)
        [c] = self.claim(types=["short.lived"])
        self.assertEqual(c["id"], job["id"])
        status, done = self.call("POST", f"/v1/worker/jobs/{c['id']}/complete",
                                 {"lease_id": c["lease_id"]}, self.key)
        self.assertEqual((status, done["status"]), (200, "succeeded"))

    def test_listed_and_payload_checked_at_enqueue(self):
        status, body = self.call("GET", "/v1/job-types")
        self.assertEqual(status, 200)
        mine = [t for t in body["data"] if t["type"] == self.type]
        self.assertEqual(mine[0]["cost"], 3)
        self.assertTrue(mine[0]["external"])
        self.assertIn("records.export", [t["type"] for t in body["data"]])
        for payload, field in (({}, "payload.text"), ({"text": 5}, "payload.text"),
                               ({"text": "x" * 1001}, "payload.text"),
                               ({"text": "a", "delay_s": 31}, "payload.delay_s"),
                               ({"text": "a", "lang": "de"}, "payload.lang")):
            status, body = self.call("POST", "/v1/jobs", {"type": self.type, "payload": payload})
            self.assertEqual(status, 422, (payload, body))
            self.assertIn(field, [e["field"] for e in body["errors"]], body)
        status, body = self.call("POST", "/v1/jobs", {"type": "no.such.type"})
        self.assertEqual(status, 422, body)
        job = self.enqueue(lang="fr")
        self.assertEqual((job["cost"], job["max_attempts"], job["status"]), (3, 2, "queued"))
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3"])

    def test_in_process_workers_leave_external_jobs_alone(self):
        job = self.enqueue()
        time.sleep(0.5)  # the in-process worker polls every 50 ms
        self.assertEqual(self.job(job["id"])["status"], "queued")

    # ---- the worker API

    def test_claim_heartbeat_complete_and_double_complete(self):
        job = self.enqueue("to be or not to be")
        [c] = self.claim()
        self.assertEqual((c["id"], c["status"], c["attempts"]), (job["id"], "running", 1))
        self.assertTrue(c["lease_id"] and c["lease_expires_at"])
        status, hb = self.call("POST", f"/v1/worker/jobs/{c['id']}/heartbeat",
                               {"lease_id": c["lease_id"], "progress": 40}, self.key)
        self.assertEqual(status, 200, hb)
        self.assertFalse(hb["cancel_requested"])
        self.assertGreaterEqual(hb["lease_expires_at"], c["lease_expires_at"])
        self.assertEqual(self.job(c["id"])["progress"], 40)
        status, done = self.call("POST", f"/v1/worker/jobs/{c['id']}/complete",
                                 {"lease_id": c["lease_id"], "result": {"words": 6}}, self.key)
        self.assertEqual(status, 200, done)
        self.assertEqual((done["status"], done["result"]), ("succeeded", {"words": 6}))
        status, again = self.call("POST", f"/v1/worker/jobs/{c['id']}/complete",
                                  {"lease_id": c["lease_id"]}, self.key)
        self.assertEqual(status, 409, again)
        status, _ = self.call("POST", f"/v1/worker/jobs/{c['id']}/heartbeat",
                              {"lease_id": c["lease_id"]}, self.key)
        self.assertEqual(status, 409)
        status, _ = self.call("POST", f"/v1/worker/jobs/{c['id']}/complete",
                              {"lease_id": str(uuid.uuid4())}, self.key)
        self.assertEqual(status, 409)
        status, _ = self.call("POST", f"/v1/worker/jobs/{uuid.uuid4()}/complete",
                              {"lease_id": c["lease_id"]}, self.key)
        self.assertEqual(status, 404)
        self.assertEqual(self.ledger(c["id"]), ["deduction:-3"])

    def test_completions_arriving_together_each_get_their_own_answer(self):
        # Completions that arrive while another is at the database go there
        # as one set; each still gets the answer it would get alone.
        jobs = [self.enqueue(f"job {i}") for i in range(12)]
        claimed = {c["id"]: c for c in self.claim(max=12)}
        self.assertEqual(set(claimed), {j["id"] for j in jobs})
        other = signup(self.server)
        status, theirs = self.call("POST", "/v1/jobs", {"type": self.type,
                                   "payload": {"text": "theirs"}}, other["access_token"])
        self.assertEqual(status, 202, theirs)
        their_key = create_key(self.server, other["access_token"], name="w", role="worker")["key"]
        harness.secret(their_key)
        [their_claim] = self.claim(their_key)
        self.assertEqual(their_claim["id"], theirs["id"])
        ids = list(claimed)
        reports = [(i, {"lease_id": claimed[i]["lease_id"], "result": {"n": n}})
                   for n, i in enumerate(ids)]
        reports += [
            (ids[0], {"lease_id": claimed[ids[0]]["lease_id"]}),   # the same job twice
            (ids[1], {"lease_id": str(uuid.uuid4())}),             # not its lease
            (their_claim["id"], {"lease_id": their_claim["lease_id"]}),  # another org's job
            (str(uuid.uuid4()), {"lease_id": str(uuid.uuid4())}),  # no such job
        ]

        def sets():
            text = self.server.get("/metrics").body.decode()
            return int(re.search(r"^tenantd_worker_completion_sets_total (\d+)$", text, re.M)[1])

        before = sets()
        conns = [self.server.conn() for _ in reports]
        for c in conns:
            c.connect()
        for c, (job_id, body) in zip(conns, reports):  # all sent before any answer is read
            c.request("POST", f"/v1/worker/jobs/{job_id}/complete", json.dumps(body),
                      {"Authorization": f"Bearer {self.key}",
                       "Content-Type": "application/json"})
        answers = []
        for c in conns:
            r = c.getresponse()
            answers.append((r.status, json.loads(r.read())))
            c.close()
        sent_sets = sets() - before

        statuses = [a[0] for a in answers]
        for n, (job_id, _) in enumerate(reports[:12]):
            if job_id == ids[0]:
                continue
            self.assertEqual(statuses[n], 200, answers[n])
            self.assertEqual((answers[n][1]["id"], answers[n][1]["status"],
                              answers[n][1]["result"]), (job_id, "succeeded", {"n": n}))
        # One of job 0's two reports won, the other found its lease used.
        self.assertEqual(sorted([statuses[0], statuses[12]]), [200, 409], answers)
        self.assertEqual(statuses[13:], [409, 404, 404], answers[13:])
        for job_id in ids:
            self.assertEqual(self.job(job_id)["status"], "succeeded")
            self.assertEqual(self.ledger(job_id), ["deduction:-3"])
        status, still = self.call("GET", f"/v1/jobs/{theirs['id']}", None,
                                  other["access_token"])
        self.assertEqual((status, still["status"]), (200, "running"))
        self.call("POST", f"/v1/worker/jobs/{theirs['id']}/complete",  # leave nothing queued
                  {"lease_id": their_claim["lease_id"]}, their_key)
        # Sent at once, they went to the database in fewer statements than
        # there were reports (2 in the runs seen, one per set in flight).
        self.assertLess(sent_sets, len(reports),
                        f"{sent_sets} statements for {len(reports)} completions sent at once")

    def test_claims_arriving_together_share_a_statement(self):
        # Claims of one org and types that arrive while one is at the
        # database go together as one statement; each still gets its own
        # jobs (no job twice, none past its max), and a claim of another
        # org or of other types never takes part in theirs.
        jobs = [self.enqueue(f"job {i}") for i in range(24)]
        other = signup(self.server)
        theirs = [self.enqueue("theirs", other["access_token"]) for _ in range(2)]
        their_key = create_key(self.server, other["access_token"], name="w", role="worker")["key"]
        harness.secret(their_key)

        def sets():
            text = self.server.get("/metrics").body.decode()
            return int(re.search(r"^tenantd_worker_claim_sets_total (\d+)$", text, re.M)[1])

        claims = [(self.key, [self.type], 2) for _ in range(12)]
        claims.insert(3, (their_key, [self.type], 5))
        claims.insert(7, (self.key, ["text.nothing"], 5))  # nothing of that type: empty
        before = sets()
        conns = [self.server.conn() for _ in claims]
        for c in conns:
            c.connect()
        for c, (key, types, n) in zip(conns, claims):  # all sent before any answer is read
            c.request("POST", "/v1/worker/claim",
                      json.dumps({"types": types, "max": n, "wait_s": 0}),
                      {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        answers = []
        for c in conns:
            r = c.getresponse()
            body = json.loads(r.read())
            self.assertEqual(r.status, 200, body)
            answers.append(body["data"])
            c.close()
        sent_sets = sets() - before

        ours = [a for (key, types, _), a in zip(claims, answers)
                if key == self.key and types == [self.type]]
        self.assertEqual([len(a) for a in ours], [2] * 12)
        got = [j["id"] for a in ours for j in a]
        self.assertEqual(sorted(got), sorted(j["id"] for j in jobs))  # each job once
        self.assertEqual(len({j["lease_id"] for a in ours for j in a}), 24)
        self.assertEqual(sorted(j["id"] for j in answers[3]), sorted(j["id"] for j in theirs))
        self.assertEqual(answers[7], [])
        for a in answers:
            for j in a:
                status, done = self.call("POST", f"/v1/worker/jobs/{j['id']}/complete",
                                         {"lease_id": j["lease_id"]},
                                         their_key if j["org_id"] == other["org"]["id"]
                                         else self.key)
                self.assertEqual((status, done["status"]), (200, "succeeded"), done)
        # 14 claims sent at once went in fewer statements (at most one set
        # per key and loop in flight, and the rest together after it).
        self.assertLess(sent_sets, len(claims) - 4,
                        f"{sent_sets} statements for {len(claims)} claims sent at once")

    def test_bad_worker_requests(self):
        for body in ({}, {"types": []}, {"types": ["A B"]}, {"types": [self.type], "max": 0},
                     {"types": [self.type], "max": 101}, {"types": [self.type], "wait_s": 31},
                     {"types": [self.type], "extra": 1}):
            status, answer = self.call("POST", "/v1/worker/claim", body, self.key)
            self.assertEqual(status, 422, (body, answer))
        jid = str(uuid.uuid4())
        status, _ = self.call("POST", f"/v1/worker/jobs/{jid}/heartbeat", {}, self.key)
        self.assertEqual(status, 422)
        status, _ = self.call("POST", f"/v1/worker/jobs/{jid}/fail",
                              {"lease_id": str(uuid.uuid4())}, self.key)
        self.assertEqual(status, 422)
        status, _ = self.call("POST", "/v1/worker/jobs/nope/complete", {"lease_id": jid}, self.key)
        self.assertEqual(status, 404)

    def test_long_poll_wakes_on_enqueue(self):
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            t0 = time.time()
            fut = ex.submit(self.claim, None, 1, 10)
            time.sleep(0.5)
            self.assertFalse(fut.done())
            job = self.enqueue()
            got = fut.result(timeout=15)
            took = time.time() - t0
        self.assertEqual([j["id"] for j in got], [job["id"]])
        self.assertLess(took, 3.0)
        # Nothing to claim: answers empty after wait_s.
        t0 = time.time()
        self.assertEqual(self.claim(wait_s=1), [])
        self.assertGreaterEqual(time.time() - t0, 0.9)

    def test_vanished_worker_loses_lease_and_another_completes_once(self):
        job = self.enqueue()
        [first] = self.claim()
        # The first worker vanishes: no heartbeat. After the lease (1.5 s) the
        # reaper queues the job again and a second worker claims it.
        deadline = time.time() + 10
        second = []
        while not second and time.time() < deadline:
            second = self.claim(wait_s=2)
        self.assertEqual([j["id"] for j in second], [job["id"]])
        self.assertEqual(second[0]["attempts"], 2)
        self.assertNotEqual(second[0]["lease_id"], first["lease_id"])
        status, _ = self.call("POST", f"/v1/worker/jobs/{job['id']}/complete",
                              {"lease_id": first["lease_id"], "result": 1}, self.key)
        self.assertEqual(status, 409)
        status, done = self.call("POST", f"/v1/worker/jobs/{job['id']}/complete",
                                 {"lease_id": second[0]["lease_id"], "result": 2}, self.key)
        self.assertEqual((status, done["status"], done["result"]), (200, "succeeded", 2))
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3"])

    def test_cancel_running_job_refunds_once(self):
        job = self.enqueue()
        [c] = self.claim()
        status, body = self.call("POST", f"/v1/jobs/{job['id']}/cancel")
        self.assertEqual((status, body["status"], body["cancel_requested"]),
                         (202, "running", True), body)
        status, hb = self.call("POST", f"/v1/worker/jobs/{c['id']}/heartbeat",
                               {"lease_id": c["lease_id"], "progress": 10}, self.key)
        self.assertEqual((status, hb["cancel_requested"]), (200, True))
        status, body = self.call("POST", f"/v1/worker/jobs/{c['id']}/fail",
                                 {"lease_id": c["lease_id"], "error": "cancelled",
                                  "retry": True}, self.key)
        self.assertEqual((status, body["status"]), (200, "cancelled"), body)
        status, _ = self.call("POST", f"/v1/jobs/{job['id']}/cancel")
        self.assertEqual(status, 409)
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3", "refund:3"])

    def test_cancelled_job_whose_worker_vanished_is_refunded_once(self):
        job = self.enqueue()
        self.claim()
        status, _ = self.call("POST", f"/v1/jobs/{job['id']}/cancel")
        self.assertEqual(status, 202)
        deadline = time.time() + 10
        while self.job(job["id"])["status"] != "cancelled" and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.job(job["id"])["status"], "cancelled")
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3", "refund:3"])

    def test_fail_retry_then_fail_then_retry_route(self):
        job = self.enqueue()
        [c] = self.claim()
        status, body = self.call("POST", f"/v1/worker/jobs/{c['id']}/fail",
                                 {"lease_id": c["lease_id"], "error": "flaky", "retry": True},
                                 self.key)
        self.assertEqual((status, body["status"], body["error"]), (200, "queued", "flaky"))
        again = []
        deadline = time.time() + 5
        while not again and time.time() < deadline:
            again = self.claim(wait_s=1)
        self.assertEqual(again[0]["attempts"], 2)
        status, body = self.call("POST", f"/v1/worker/jobs/{c['id']}/fail",
                                 {"lease_id": again[0]["lease_id"], "error": "broken"}, self.key)
        self.assertEqual((status, body["status"]), (200, "failed"))
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3", "refund:3"])
        # Retry: queued again, charged again; its failure is refunded again, once.
        status, body = self.call("POST", f"/v1/jobs/{job['id']}/retry")
        self.assertEqual((status, body["status"], body["attempts"]), (202, "queued", 0), body)
        status, _ = self.call("POST", f"/v1/jobs/{job['id']}/retry")
        self.assertEqual(status, 409)
        [c3] = self.claim(wait_s=2)
        status, body = self.call("POST", f"/v1/worker/jobs/{c3['id']}/complete",
                                 {"lease_id": c3["lease_id"]}, self.key)
        self.assertEqual((status, body["status"]), (200, "succeeded"))
        self.assertEqual(self.ledger(job["id"]), ["deduction:-3", "refund:3", "deduction:-3"])
        status, _ = self.call("POST", f"/v1/jobs/{uuid.uuid4()}/retry")
        self.assertEqual(status, 404)

    # ---- credentials and isolation

    def test_worker_key_is_for_the_worker_api_and_its_org_only(self):
        other = signup(self.server)
        theirs = self.enqueue(token=other["access_token"])
        status, _ = self.call("GET", "/v1/jobs", None, self.key)
        self.assertEqual(status, 403)
        status, _ = self.call("POST", "/v1/jobs", {"type": self.type,
                                                   "payload": {"text": "x"}}, self.key)
        self.assertEqual(status, 403)
        # A member's token or an admin key cannot claim.
        admin_key = create_key(self.server, self.token, name="a", role="admin")["key"]
        harness.secret(admin_key)
        status, _ = self.call("POST", "/v1/worker/claim", {"types": [self.type]}, admin_key)
        self.assertEqual(status, 403)
        status, _ = self.call("POST", "/v1/worker/claim", {"types": [self.type]}, OPERATOR)
        self.assertIn(status, (401, 403))
        self.assertEqual(self.claim(max=10), [])
        status, _ = self.call("POST", f"/v1/jobs/{theirs['id']}/cancel")
        self.assertEqual(status, 404)
        # The operator's worker token takes it; our key cannot touch its lease.
        mine = self.claim(WORKER, max=100)
        lease = [j for j in mine if j["id"] == theirs["id"]][0]["lease_id"]
        status, _ = self.call("POST", f"/v1/worker/jobs/{theirs['id']}/complete",
                              {"lease_id": lease}, self.key)
        self.assertEqual(status, 404)
        for j in mine:
            status, _ = self.call("POST", f"/v1/worker/jobs/{j['id']}/complete",
                                  {"lease_id": j["lease_id"]}, WORKER)
            self.assertEqual(status, 200)

    def test_worker_token_claims_fairly_between_orgs(self):
        orgs = [signup(self.server) for _ in range(3)]
        for _ in range(20):
            self.enqueue(token=orgs[0]["access_token"])
        for o in orgs[1:]:
            for _ in range(2):
                self.enqueue(token=o["access_token"])
        wanted = {o["org"]["id"] for o in orgs}
        got = []
        while True:
            batch = [j for j in self.claim(WORKER, max=6)]
            if not batch:
                break
            got.extend(batch)
            for j in batch:
                self.call("POST", f"/v1/worker/jobs/{j['id']}/complete",
                          {"lease_id": j["lease_id"]}, WORKER)
            if len(got) >= 6:
                break
        first = [j["org_id"] for j in got[:6] if j["org_id"] in wanted]
        # Every org is served within the first batch of six, not after the flood.
        self.assertEqual(set(first), wanted, first)

    def test_claim_fills_its_batch_past_rows_another_claim_holds(self):
        # Each org's scan locks its own share (control 0022), skipping rows
        # another transaction holds and taking the org's next ones. The
        # claim before it read a share plus one spare unlocked and locked
        # them after: with two of an org's first rows held it came back
        # short (2 of 3) although the org had 3 more jobs queued.
        kind = "text.held"
        status, body = self.call("PUT", f"/v1/admin/job-types/{kind}", {"cost": 1}, OPERATOR)
        self.assertEqual(status, 200, body)
        ids = []
        for prio in (9, 9, 5, 5, 5):
            status, job = self.call("POST", "/v1/jobs", {"type": kind, "payload": {},
                                                         "priority": prio})
            self.assertEqual(status, 202, job)
            ids.append(job["id"])
        held = ids[:2]  # the first two in claim order
        holder = subprocess.Popen([harness.PSQL, self.pg.url(self.dbname), "-qAt", "-v",
                                   "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            in_list = ",".join(f"'{i}'" for i in held)
            holder.stdin.write("BEGIN; SELECT count(*) FROM (SELECT id FROM public.jobs"
                               f" WHERE id IN ({in_list}) FOR UPDATE) s;\n")
            holder.stdin.flush()
            self.assertEqual(holder.stdout.readline().strip(), "2")  # held now
            got = self.claim(WORKER, max=3, types=[kind])
            self.assertEqual(sorted(j["id"] for j in got), sorted(ids[2:]), got)
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()
            self.assertEqual(holder.wait(timeout=30), 0)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        rest = self.claim(WORKER, max=3, types=[kind])
        self.assertEqual(sorted(j["id"] for j in rest), sorted(held), rest)
        for j in got + rest:
            status, done = self.call("POST", f"/v1/worker/jobs/{j['id']}/complete",
                                     {"lease_id": j["lease_id"]}, WORKER)
            self.assertEqual((status, done["status"]), (200, "succeeded"), done)

    def test_claim_skip_scan_steps_over_no_finished_jobs(self):
        # 200 orgs of 50 jobs, the first 30 orgs' jobs finished (updated, as
        # workers leave them): each claim's skip scan must find the orgs with
        # queued jobs through its queued-jobs index. Ordered by org_id alone
        # (control 0011) the planner took jobs_org_seq_idx here and read the
        # 1,500 finished jobs on its way (1,512 index fetches; seen for the
        # external claim, the in-process one kept its index in this case).
        # Each try is one rolled-back transaction (the class's database is
        # shared); the second try finds the indexes grown by the first, as a
        # busy queue's are, which is when that plan looked the cheaper.
        org = "('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid"
        nil = "'00000000-0000-0000-0000-000000000000'"
        fetched = "SELECT pg_stat_get_xact_tuples_fetched('public.jobs_org_seq_idx'::regclass);"
        claims = {  # a declared type makes the jobs external
            "external": ("INSERT INTO public.job_types (type, cost) VALUES ('scan.check', 0);",
                         f"public.tenantd_job_ext_claim(NULL, ARRAY['scan.check'], {nil}, 10,"
                         " 30000)"),
            "in-process": ("", f"public.tenantd_job_claim('scan-test', {nil}, 10, 30000)"),
        }
        for name, (declare, claim) in claims.items():
            sql = f"""BEGIN;
                {declare}
                INSERT INTO public.orgs (id, name, slug, schema_name)
                SELECT {org}, 'scan ' || i, 'scan-check-' || i, 'tenant_scan_check_' || i
                  FROM generate_series(1, 200) i;
                INSERT INTO public.jobs (id, org_id, type, payload, cost, max_attempts)
                SELECT gen_random_uuid(), {org}, 'scan.check', '{{}}', 0, 3
                  FROM generate_series(1, 200) i, generate_series(1, 50) n;
                UPDATE public.jobs SET status = 'succeeded', finished_at = now()
                 WHERE type = 'scan.check'
                   AND org_id <= '00000000-0000-0000-0000-00000000001e';
                ANALYZE public.jobs;
                {fetched}
                SELECT count(*) FROM {claim};
                {fetched}
                ROLLBACK;"""
            for _ in range(2):
                before, claimed, after = (int(r) for r in self.pg.psql(sql, db=self.dbname))
            self.assertEqual(claimed, 10, name)
            self.assertLess(after - before, 10,
                            f"the {name} claim read finished jobs through jobs_org_seq_idx")

    def test_a_claimed_batch_comes_highest_priority_first(self):
        # Both credentials' claims answer in the order they picked: a worker
        # that runs its batch in turn runs the urgent job first.
        status, _ = self.call("PUT", "/v1/admin/job-types/order.check", {"cost": 0}, OPERATOR)
        self.assertEqual(status, 200)
        for cred in (self.key, WORKER):
            for p in (0, 9, 5, 2):
                status, body = self.call("POST", "/v1/jobs",
                                         {"type": "order.check", "priority": p})
                self.assertEqual(status, 202, body)
            got = self.claim(cred, max=4, types=["order.check"])
            self.assertEqual([j["priority"] for j in got], [9, 5, 2, 0], cred == WORKER)
            for j in got:
                status, _ = self.call("POST", f"/v1/worker/jobs/{j['id']}/complete",
                                      {"lease_id": j["lease_id"]}, cred)
                self.assertEqual(status, 200)

    def test_an_orgs_claim_reads_none_of_the_other_orgs_queues(self):
        # 50 orgs with 40 external jobs queued each, ours last in id order,
        # and the claim on its generic plan as on tenantd's connections
        # (plan_cache_mode, db/pool.c). Control 0017's one query for both
        # credentials walked the other orgs' queued jobs before ours (seen:
        # 2,012 index entries for a claim of 10).
        org = "('00000000-0000-0000-0003-' || lpad(to_hex(i), 12, '0'))::uuid"
        ours = "'00000000-0000-0000-0003-0000000000ff'::uuid"
        nil = "'00000000-0000-0000-0000-000000000000'"
        reads = "SELECT pg_stat_get_xact_tuples_returned('public.jobs_ext_claim_idx'::regclass);"
        sql = f"""BEGIN;
            INSERT INTO public.job_types (type, cost) VALUES ('claim.own', 0);
            INSERT INTO public.orgs (id, name, slug, schema_name)
            SELECT {org}, 'own ' || i, 'claim-own-' || i, 'tenant_claim_own_' || i
              FROM generate_series(1, 50) i UNION ALL
            SELECT {ours}, 'own last', 'claim-own-last', 'tenant_claim_own_last';
            INSERT INTO public.jobs (id, org_id, type, payload, cost, max_attempts)
            SELECT gen_random_uuid(), {org}, 'claim.own', '{{}}'::jsonb, 0, 3
              FROM generate_series(1, 50) i, generate_series(1, 40) n UNION ALL
            SELECT gen_random_uuid(), {ours}, 'claim.own', '{{}}'::jsonb, 0, 3
              FROM generate_series(1, 40) n;
            ANALYZE public.jobs;
            SET LOCAL plan_cache_mode = force_generic_plan;
            {reads}
            SELECT count(*), count(*) FILTER (WHERE org_id = {ours}) FROM
                   public.tenantd_job_ext_claim({ours}, ARRAY['claim.own'], {nil}, 10, 30000);
            {reads}
            SELECT count(DISTINCT org_id) FROM
                   public.tenantd_job_ext_claim(NULL, ARRAY['claim.own'], {nil}, 10, 30000);
            ROLLBACK;"""
        before, claimed, after, spread = self.pg.psql(sql, db=self.dbname)
        self.assertEqual(claimed, "10|10")
        self.assertLess(int(after) - int(before), 30, "the org's claim read other orgs' jobs")
        self.assertEqual(spread, "10")  # the operator's claim still goes round the orgs

    def test_lease_calls_find_the_job_by_id_not_through_the_running_index(self):
        # 2,000 external jobs running, statistics taken while they were
        # queued (as after a burst of claims), and each function's statement
        # on its generic plan (as from a backend's sixth call on): each
        # completion, failure, heartbeat, release and cancel must read its
        # job by id. Through control 0017 they scanned jobs_lease_idx, all
        # 2,000 running jobs, filtered on id (seen: ~2,000 reads per call).
        job = "('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid"
        org = "'00000000-0000-0000-0002-000000000001'::uuid"
        one = "'00000000-0000-0000-0001-00000000000{}'::uuid".format
        reads = "SELECT pg_stat_get_xact_tuples_returned('public.jobs_lease_idx'::regclass);"
        calls = {
            "heartbeat": f"SELECT o_outcome FROM public.tenantd_job_ext_heartbeat({one(1)},"
                         f" {one(1)}, NULL, 5, 30000)",
            "complete": f"SELECT o_outcome FROM public.tenantd_job_ext_finish({one(1)}, {one(1)},"
                        " NULL, true, '{}', NULL, false, 1000, 60000)",
            "fail": f"SELECT o_outcome FROM public.tenantd_job_ext_finish({one(2)}, {one(2)},"
                    " NULL, false, NULL, 'boom', true, 1000, 60000)",
            "cancel": f"SELECT o_outcome FROM public.tenantd_job_cancel({org}, {one(3)})",
            "in-process finish": f"SELECT public.tenantd_job_finish({one(4)}, 'lease-check', 1,"
                                 " true, '{}', NULL, false, 1000, 60000, true)",
            "in-process release": f"SELECT public.tenantd_job_release({one(5)}, 'lease-check', 1)",
            "in-process set": "SELECT count(*) FROM public.tenantd_job_finish_succeeded("
                              f"'lease-check', ARRAY[{one(6)}, {one(7)}], ARRAY[1, 1],"
                              " '[{}, null]')",
        }
        steps = "\n".join(f"{reads} {c};" for c in calls.values())
        sql = f"""BEGIN;
            INSERT INTO public.job_types (type, cost) VALUES ('lease.check', 0);
            INSERT INTO public.orgs (id, name, slug, schema_name)
            VALUES ({org}, 'lease check', 'lease-check', 'tenant_lease_check');
            INSERT INTO public.jobs (id, org_id, type, payload, cost, max_attempts)
            SELECT {job}, {org}, CASE WHEN i BETWEEN 4 AND 7 THEN 'lease.inproc' ELSE 'lease.check' END,
                   '{{}}', 0, 3
              FROM generate_series(1, 2000) i;
            ANALYZE public.jobs;
            UPDATE public.jobs SET status = 'running', attempts = 1, leased_at = now(),
                   started_at = now(), locked_until = now() + interval '1 hour',
                   locked_by = CASE WHEN external THEN 'lease:' || id ELSE 'lease-check' END
             WHERE org_id = {org};
            SET LOCAL plan_cache_mode = force_generic_plan;
            {steps}
            {reads}
            ROLLBACK;"""
        rows = self.pg.psql(sql, db=self.dbname)
        self.assertEqual(rows[1::2],
                         ["ok", "ok", "ok", "cancel_requested", "succeeded", "t", "2"])
        counts = [int(r) for r in rows[0::2]]
        read = {name: after - before for name, before, after in zip(calls, counts, counts[1:])}
        self.assertEqual([n for n, k in read.items() if k >= 10], [],
                         f"index entries of running jobs read per call: {read}")

    def test_a_succeeded_set_ends_only_the_attempts_this_worker_holds(self):
        # The in-process completer's statement: of four jobs, one holds
        # another worker's lock and one is at a later attempt (its lease
        # lapsed and the job was claimed again): those two stay running.
        job = "('00000000-0000-0000-0004-' || lpad(to_hex(i), 12, '0'))::uuid"
        one = "'00000000-0000-0000-0004-00000000000{}'::uuid".format
        org = "'00000000-0000-0000-0005-000000000001'::uuid"
        sql = f"""BEGIN;
            INSERT INTO public.orgs (id, name, slug, schema_name)
            VALUES ({org}, 'set check', 'set-check', 'tenant_set_check');
            INSERT INTO public.jobs (id, org_id, type, payload, cost, max_attempts)
            SELECT {job}, {org}, 'set.check', '{{}}', 0, 3 FROM generate_series(1, 4) i;
            UPDATE public.jobs SET status = 'running', started_at = now(),
                   attempts = CASE WHEN id = {one(4)} THEN 2 ELSE 1 END,
                   locked_until = now() + interval '1 hour',
                   locked_by = CASE WHEN id = {one(3)} THEN 'other' ELSE 'me' END
             WHERE org_id = {org};
            SELECT string_agg(right(x::text, 1), ',' ORDER BY x)
              FROM public.tenantd_job_finish_succeeded('me',
                   ARRAY[{one(1)}, {one(2)}, {one(3)}, {one(4)}], ARRAY[1, 1, 1, 1],
                   '[{{"n": 1}}, null, {{"n": 3}}, {{"n": 4}}]') x;
            SELECT string_agg(right(id::text, 1) || ':' || status || ':'
                              || coalesce(result::text, '-') || ':'
                              || coalesce(locked_by, '-') || ':' || (finished_at IS NOT NULL),
                              ' ' ORDER BY id)
              FROM public.jobs WHERE org_id = {org};
            ROLLBACK;"""
        ended, jobs = self.pg.psql(sql, db=self.dbname)
        self.assertEqual(ended, "1,2")
        self.assertEqual(jobs, '1:succeeded:{"n": 1}:-:true 2:succeeded:-:-:true'
                               ' 3:running:-:other:false 4:running:-:me:false')

    def test_metrics(self):
        status, _ = self.call("PUT", "/v1/admin/job-types/metrics.probe", {"cost": 0}, OPERATOR)
        self.assertEqual(status, 200)
        for _ in range(2):
            status, _ = self.call("POST", "/v1/jobs", {"type": "metrics.probe"})
            self.assertEqual(status, 202)
        self.claim(types=["no.such.jobs"])
        want = 'tenantd_jobs{type="metrics.probe",status="queued"} 2'
        deadline = time.time() + 15  # the database part is sampled every 5 s
        while True:
            text = self.server.get("/metrics").body.decode()
            if want in text or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertIn(want, text)
        self.assertIn('tenantd_job_attempts{type="metrics.probe",status="queued"} 0', text)
        self.assertRegex(text, r'tenantd_worker_api_calls_total\{op="claim",result="ok"\} [1-9]')
        self.assertIn("# TYPE tenantd_schedule_ticks_total counter", text)

    def test_metrics_sample_reads_only_live_jobs(self):
        # 20,000 finished jobs: the database part of /metrics (every 5 s in
        # every process) counts the queued and running ones through their
        # partial indexes. It counted every job ever run by status, two full
        # scans of the jobs table per sample (seen: 80,000 rows read in 12 s).
        org = "'00000000-0000-0000-0004-000000000001'::uuid"
        self.pg.psql(f"""INSERT INTO public.orgs (id, name, slug, schema_name)
                         VALUES ({org}, 'history', 'metrics-history', 'tenant_metrics_history');
                         INSERT INTO public.jobs (id, org_id, type, payload, cost, status,
                                                  finished_at)
                         SELECT gen_random_uuid(), {org}, 'metrics.history', '{{}}'::jsonb, 0,
                                'succeeded', now() FROM generate_series(1, 20000);
                         ANALYZE public.jobs;""", db=self.dbname)
        reads = ("SELECT seq_tup_read FROM pg_stat_user_tables"
                 " WHERE schemaname = 'public' AND relname = 'jobs'")
        time.sleep(6)  # a sample planned before ANALYZE, if any, reported
        before = int(self.pg.psql(reads, db=self.dbname)[0])
        time.sleep(12)  # two samples, and their statistics reported
        read = int(self.pg.psql(reads, db=self.dbname)[0]) - before
        self.assertLess(read, 20000, f"{read} rows of the jobs table read by sequential scans")
        text = self.server.get("/metrics").body.decode()
        self.assertNotIn('type="metrics.history"', text)

    # ---- the example worker

    def test_python_example_worker_runs_a_job(self):
        job = self.enqueue("the cat and the hat and the bat")
        env = dict(os.environ, TENANTD_URL=f"http://127.0.0.1:{self.server.port}",
                   TENANTD_WORKER_CREDENTIAL=self.key)
        p = subprocess.run([sys.executable, os.path.join(harness.SOURCE_DIR, "examples",
                                                         "worker.py"), "--max-jobs", "1"],
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        done = self.job(job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["result"]["words"], 8)
        self.assertEqual(done["result"]["top"][0], {"word": "the", "count": 3})

    def test_python_example_worker_runs_jobs_at_once(self):
        # --concurrency: a claimed batch's jobs run in threads and each is
        # reported as it ends. Four jobs of 1.5 s each all ran at one time:
        # the last to start started before the first to end ended (one after
        # another, each would start after the previous ended).
        jobs = [self.enqueue(f"w{i} x", delay_s=1.5) for i in range(4)]
        env = dict(os.environ, TENANTD_URL=f"http://127.0.0.1:{self.server.port}",
                   TENANTD_WORKER_CREDENTIAL=self.key)
        p = subprocess.run([sys.executable, os.path.join(harness.SOURCE_DIR, "examples",
                                                         "worker.py"),
                            "--concurrency", "4", "--max-jobs", "4"],
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        self.assertEqual(sorted(x["job"] for x in lines), sorted(j["id"] for j in jobs))
        self.assertTrue(all(x["status"] == 200 and x["outcome"] == "succeeded" for x in lines),
                        lines)
        done = [self.job(j["id"]) for j in jobs]
        for d in done:
            self.assertEqual(d["status"], "succeeded", d)
            self.assertEqual((d["result"]["words"], d["attempts"]), (2, 1), d)
        self.assertLess(max(d["started_at"] for d in done), min(d["finished_at"] for d in done),
                        [(d["started_at"], d["finished_at"]) for d in done])

    def test_javascript_example_worker_runs_a_job(self):
        node = shutil.which("node")
        if not node:
            self.skipTest("node is not installed")
        job = self.enqueue("b a b")
        env = dict(os.environ, TENANTD_URL=f"http://127.0.0.1:{self.server.port}",
                   TENANTD_WORKER_CREDENTIAL=self.key)
        p = subprocess.run([node, os.path.join(harness.SOURCE_DIR, "examples", "worker.mjs"),
                            "--max-jobs", "1"], env=env, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        done = self.job(job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["result"], {"words": 3, "top": [{"word": "b", "count": 2},
                                                              {"word": "a", "count": 1}]})


if __name__ == "__main__":
    unittest.main()
