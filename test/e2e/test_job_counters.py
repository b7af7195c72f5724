"""Per-process, per-type job counters in /metrics: jobs claimed, completed
and failed (by what became of the job) by this process's in-process
workers (worker="in_process") and through its worker API (worker="http")."""
import json
import re
import time
import unittest
import uuid

import harness
from test_jobs import FAST, enqueue, wait_job
from test_users import bearer, signup

OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
WORKER = "wk-" + uuid.uuid4().hex + uuid.uuid4().hex
harness.secret(OPERATOR)
harness.secret(WORKER)

LINE = re.compile(r'^(tenantd_jobs_(?:claimed|completed|failed)_total)\{([^}]*)\} (\d+)$')


def counters(server):
    """{(family, type, worker, outcome or None): value} of the counters."""
    out = {}
    text = server.get("/metrics").body.decode()
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1).split("_")[2], labels["type"], labels["worker"],
                 labels.get("outcome"))] = int(m.group(3))
    return out


def only(c, type_, worker):
    """The counters of one type and worker kind, zeros dropped."""
    return {(k[0], k[3]): v for k, v in c.items() if k[1:3] == (type_, worker) and v}


class InProcessCountersTest(harness.DbTestCase):
    server_env = dict(FAST, TENANTD_JOB_WORKERS="1")

    def test_in_process_workers_count_by_type_and_outcome(self):
        self.assertEqual(only(counters(self.server), "sleep", "in_process"), {})
        token = signup(self.server)["access_token"]
        jobs = [enqueue(self.server, token, "sleep", {"ms": 0}) for _ in range(2)]
        jobs.append(enqueue(self.server, token, "fail", {"fail_attempts": 1}, max_attempts=3))
        jobs.append(enqueue(self.server, token, "fail", {"message": "no"}, max_attempts=1))
        done = [wait_job(self.server, token, j["id"])["status"] for j in jobs]
        self.assertEqual(done, ["succeeded", "succeeded", "succeeded", "failed"])
        c = counters(self.server)
        self.assertEqual(only(c, "sleep", "in_process"),
                         {("claimed", None): 2, ("completed", None): 2})
        self.assertEqual(only(c, "fail", "in_process"),
                         {("claimed", None): 3, ("completed", None): 1,
                          ("failed", "retry"): 1, ("failed", "failed"): 1})
        # Zeros are shown once a type was seen, so a rate starts from 0.
        self.assertEqual(c[("failed", "sleep", "in_process", "lease_lost")], 0)
        self.assertEqual(only(c, "sleep", "http"), {})


class WorkerProcessCountersTest(harness.DbTestCase):
    """`tenantd worker` has no /metrics: it logs its counters when it stops."""
    server_env = dict(FAST, TENANTD_JOB_WORKERS="0")

    def test_worker_process_logs_its_counters_at_stop(self):
        token = signup(self.server)["access_token"]
        jobs = [enqueue(self.server, token, "sleep", {"ms": 0}) for _ in range(2)]
        jobs.append(enqueue(self.server, token, "fail", {"fail_attempts": 1}, max_attempts=3))
        w = harness.Server(self.db_url, dict(FAST, TENANTD_JOB_WORKERS="1"), args=("worker",))
        w.start(wait=False)
        try:
            done = [wait_job(self.server, token, j["id"])["status"] for j in jobs]
        finally:
            self.assertEqual(w.stop(), 0, w.log())
        self.assertEqual(done, ["succeeded"] * 3)
        lines = [x["msg"] for x in w.log_lines() if x.get("msg", "").startswith("worker: stopped")]
        self.assertEqual(lines, [
            "worker: stopped; jobs of this process:"
            " sleep(in_process) claimed=2 completed=2 failed_retry=0 failed_failed=0"
            " failed_cancelled=0 failed_lease_lost=0"
            " fail(in_process) claimed=2 completed=1 failed_retry=1 failed_failed=0"
            " failed_cancelled=0 failed_lease_lost=0"], w.log())


class CompletionSetsTest(harness.DbTestCase):
    """In-process workers end succeeded attempts in sets (the completer,
    src/job/worker.c): 60 short jobs queued before a worker process starts
    (2 workers, claims of 10) end in fewer statements than jobs, each job
    once, with its result."""
    server_env = dict(FAST, TENANTD_JOB_WORKERS="0")

    def test_succeeded_attempts_end_in_sets(self):
        token = signup(self.server)["access_token"]
        jobs = [enqueue(self.server, token, "sleep", {"ms": 0}) for _ in range(60)]
        w = harness.Server(self.db_url, dict(FAST, TENANTD_JOB_WORKERS="2", TENANTD_JOB_BATCH="10",
                                             TENANTD_LOG_LEVEL="debug"), args=("worker",))
        w.start(wait=False)
        try:
            done = [wait_job(self.server, token, j["id"]) for j in jobs]
        finally:
            self.assertEqual(w.stop(), 0, w.log())
        self.assertEqual({(j["status"], j["attempts"], json.dumps(j["result"])) for j in done},
                         {("succeeded", 1, '{"slept_ms": 0}')})
        ends = [re.match(r"job (\S+) attempt 1 end status=succeeded \(a set of (\d+)\)$", x)
                for x in (y.get("msg", "") for y in w.log_lines())]
        ends = [(m.group(1), int(m.group(2))) for m in ends if m]
        self.assertEqual(sorted(i for i, _ in ends), sorted(j["id"] for j in jobs), w.log())
        sizes = [n for _, n in ends]
        self.assertGreater(max(sizes), 1, "every attempt ended in a statement of its own")
        statements = round(sum(1 / n for n in sizes))  # a set of n logs n lines
        self.assertLess(statements, len(jobs))


class HttpCountersTest(harness.DbTestCase):
    server_env = dict(FAST, TENANTD_JOB_WORKERS="0", TENANTD_OPERATOR_TOKEN=OPERATOR,
                      TENANTD_WORKER_TOKEN=WORKER)

    def call(self, path, body, cred=WORKER):
        status, answer, _ = self.server.json("POST", path, body, bearer(cred))
        return status, answer

    def claim(self, n):
        got, deadline = [], time.time() + 10
        while len(got) < n and time.time() < deadline:
            status, body = self.call("/v1/worker/claim",
                                     {"types": ["count.me"], "max": n - len(got), "wait_s": 1})
            self.assertEqual(status, 200, body)
            got += body["data"]
        self.assertEqual(len(got), n)
        return got

    def test_worker_api_counts_by_type_and_outcome(self):
        status, body, _ = self.server.json("PUT", "/v1/admin/job-types/count.me", {
            "cost": 1, "max_attempts": 2}, bearer(OPERATOR))
        self.assertEqual(status, 200, body)
        token = signup(self.server)["access_token"]
        for _ in range(4):
            enqueue(self.server, token, "count.me")
        a, b, c, d = self.claim(4)
        self.assertEqual(only(counters(self.server), "count.me", "http"), {("claimed", None): 4})
        self.assertEqual(self.call(f"/v1/worker/jobs/{a['id']}/complete",
                                   {"lease_id": a["lease_id"], "result": {"ok": 1}})[0], 200)
        # A stale report (409) changes no count.
        self.assertEqual(self.call(f"/v1/worker/jobs/{a['id']}/complete",
                                   {"lease_id": a["lease_id"]})[0], 409)
        self.assertEqual(self.call(f"/v1/worker/jobs/{b['id']}/fail",
                                   {"lease_id": b["lease_id"], "error": "again",
                                    "retry": True})[0], 200)
        self.assertEqual(self.call(f"/v1/worker/jobs/{c['id']}/fail",
                                   {"lease_id": c["lease_id"], "error": "no"})[0], 200)
        status, body, _ = self.server.json("POST", f"/v1/jobs/{d['id']}/cancel", {},
                                           bearer(token))
        self.assertEqual(status, 202, body)
        self.assertEqual(self.call(f"/v1/worker/jobs/{d['id']}/fail",
                                   {"lease_id": d["lease_id"], "error": "stopped"})[0], 200)
        again, = self.claim(1)  # b's retry
        self.assertEqual(again["id"], b["id"])
        self.assertEqual(self.call(f"/v1/worker/jobs/{b['id']}/complete",
                                   {"lease_id": again["lease_id"]})[0], 200)
        self.assertEqual(only(counters(self.server), "count.me", "http"),
                         {("claimed", None): 5, ("completed", None): 2, ("failed", "retry"): 1,
                          ("failed", "failed"): 1, ("failed", "cancelled"): 1})


if __name__ == "__main__":
    unittest.main()
