"""Jobs end to end: the API (types, enqueue with its charge, list, get,
cancel with its refund, validation, 402, Idempotency-Key), the workers
(success, retry then success, retry then failure with exactly one refund,
run_at, priorities, fairness between orgs, two worker processes never
running one attempt twice) and the real job types (records.export,
credits.report, webhook.deliver to an allowed local receiver with its
signature checked, and to hosts that are not allowed).

Every class has its own database; settings keep it fast (50 ms polls,
short backoffs)."""
import base64
import concurrent.futures
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import socket
import shutil
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

import harness
from test_users import bearer, create_key, create_user, login, signup


FAST = {
    "TENANTD_TEST_JOBS": "1",
    "TENANTD_SIGNUP_CREDITS": "1000",
    "TENANTD_LOGIN_LIMIT": "0",
    "TENANTD_JOB_POLL_MS": "50",
    "TENANTD_JOB_RETRY_BASE_MS": "20",
    "TENANTD_JOB_RETRY_MAX_MS": "100",
    "TENANTD_JOB_LEASE_MS": "3000",
}
TERMINAL = ("succeeded", "failed", "cancelled")


def wait_job(server, token, job_id, statuses=TERMINAL, timeout=15):
    """Polls GET /v1/jobs/{id} until its status is one of `statuses`."""
    deadline = time.time() + timeout
    while True:
        status, body, _ = server.json("GET", f"/v1/jobs/{job_id}", None, bearer(token))
        assert status == 200, (status, body)
        if body["status"] in statuses or time.time() > deadline:
            return body
        time.sleep(0.03)


def enqueue(server, token, type_, payload=None, expect=202, headers=None, **fields):
    body = {"type": type_}
    if payload is not None:
        body["payload"] = payload
    body.update(fields)
    status, answer, resp = server.json("POST", "/v1/jobs", body, bearer(token, **(headers or {})))
    if expect is not None and status != expect:
        raise AssertionError(f"enqueue {body}: {status} {answer}")
    return answer


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger:
    """Reads an org's ledger and account straight from the database."""

    def __init__(self, pg, db):
        self.pg, self.db = pg, db

    def balance(self, org_id):
        return int(self.pg.psql(
            f"SELECT balance FROM public.credit_accounts WHERE org_id = '{org_id}'", db=self.db)[0])

    def rows(self, job_id):
        """[(type, amount)] of a job's ledger rows, oldest first."""
        return [tuple(r.split("|")[:1]) + (int(r.split("|")[1]),) for r in self.pg.psql(
            f"SELECT type, amount FROM public.credit_transactions WHERE job_id = '{job_id}'"
            " ORDER BY created_at, type", db=self.db)]

    def check_sum(self, org_id):
        """The balance equals the sum of the ledger (the credits invariant)."""
        s = self.pg.psql("SELECT coalesce(sum(amount), 0) FROM public.credit_transactions"
                         f" WHERE org_id = '{org_id}'", db=self.db)[0]
        return int(s) == self.balance(org_id)


# The auditor (STYLE 14): over every job and org of the database, each job
# was charged exactly once (when it cost anything), refunded exactly once
# when it failed or was cancelled and never otherwise (a failure on the
# receiver's side keeps the cost: jobs.cost_kept, SECURITY.md 10.7), and
# every balance equals the sum of its org's ledger.
AUDIT_SQL = """
WITH j AS (
  SELECT j.id, CASE WHEN j.cost_kept THEN 'failed, cost kept' ELSE j.status END AS status,
    j.cost,
    (SELECT count(*) FROM public.credit_transactions t
      WHERE t.job_id = j.id AND t.type = 'deduction') AS d,
    (SELECT count(*) FROM public.credit_transactions t
      WHERE t.job_id = j.id AND t.type = 'refund') AS r,
    (SELECT coalesce(sum(t.amount), 0) FROM public.credit_transactions t
      WHERE t.job_id = j.id) AS net
  FROM public.jobs j)
SELECT 'job ' || id || ' ' || status || ' cost ' || cost || ': ' || d || ' deductions, '
       || r || ' refunds, net ' || net FROM j
 WHERE d <> (cost > 0)::int
    OR r <> (cost > 0 AND status IN ('failed', 'cancelled'))::int
    OR net <> CASE WHEN status IN ('failed', 'cancelled') THEN 0 ELSE -cost END
UNION ALL
SELECT 'org ' || a.org_id || ': balance ' || a.balance || ' but ledger sum '
       || coalesce((SELECT sum(t.amount) FROM public.credit_transactions t
                     WHERE t.org_id = a.org_id), 0)
  FROM public.credit_accounts a
 WHERE a.balance <> coalesce((SELECT sum(t.amount) FROM public.credit_transactions t
                               WHERE t.org_id = a.org_id), 0)
"""


class LedgerAudit:
    """Mixin: runs the auditor after every test of a DbTestCase."""

    def tearDown(self):
        self.assertEqual(self.pg.psql(AUDIT_SQL, db=self.dbname), [], "ledger audit")
        super().tearDown()


class JobsApiTest(LedgerAudit, harness.DbTestCase):
    server_env = dict(FAST, TENANTD_JOB_WORKERS="2")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ledger = Ledger(cls.pg, cls.dbname)
        cls.org = signup(cls.server)
        cls.token = cls.org["access_token"]
        cls.org_id = cls.org["org"]["id"]

    def fresh_org(self):
        o = signup(self.server)
        return o, o["access_token"], o["org"]["id"]

    def test_delete_org_removes_its_jobs(self):
        """DELETE /v1/org deletes the org's jobs, queued and finished alike;
        another org's jobs stay."""
        _, token, org_id = self.fresh_org()
        _, other_token, other_id = self.fresh_org()
        done = enqueue(self.server, token, "sleep", {})
        self.assertEqual(wait_job(self.server, token, done["id"])["status"], "succeeded")
        later = iso(datetime.datetime.utcnow() + datetime.timedelta(hours=1))
        enqueue(self.server, token, "sleep", {}, run_at=later)
        kept = enqueue(self.server, other_token, "sleep", {}, run_at=later)
        count = lambda oid: self.pg.psql(
            f"SELECT count(*) FROM public.jobs WHERE org_id = '{oid}'", db=self.dbname)[0]
        self.assertEqual(count(org_id), "2")
        r = self.server.request("DELETE", "/v1/org", headers=bearer(token))
        self.assertEqual(r.status, 204, r.body)
        self.assertEqual(count(org_id), "0")
        self.assertEqual(count(other_id), "1")
        status, body, _ = self.server.json("GET", f"/v1/jobs/{kept['id']}", None,
                                           bearer(other_token))
        self.assertEqual((status, body["status"]), (200, "queued"), body)
        self.server.json("POST", f"/v1/jobs/{kept['id']}/cancel", None, bearer(other_token))

    def test_job_types(self):
        o, token, _ = self.fresh_org()
        member = create_user(self.server, token, f"m@{o['slug']}.example.com")
        mtoken = login(self.server, member["email"], org=o["slug"])["access_token"]
        status, body, _ = self.server.json("GET", "/v1/job-types", None, bearer(mtoken))
        self.assertEqual(status, 200, body)
        types = {t["type"]: t for t in body["data"]}
        self.assertEqual(set(types), {"records.export", "credits.report", "webhook.deliver",
                                      "sleep", "fail"})
        for t in body["data"]:
            self.assertIsInstance(t["cost"], int)
            self.assertTrue(t["description"])
        self.assertEqual(types["sleep"]["cost"], 1)
        self.assertEqual(self.server.json("GET", "/v1/job-types", None, {})[0], 401)

    def test_success_charges_once(self):
        _, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        status, job, resp = self.server.json("POST", "/v1/jobs",
                                             {"type": "sleep", "payload": {"ms": 10}},
                                             bearer(token))
        self.assertEqual(status, 202, job)
        self.assertEqual(resp.getheader("Location"), f"/v1/jobs/{job['id']}")
        self.assertEqual(job["status"], "queued")
        self.assertEqual(job["cost"], 1)
        self.assertEqual(job["attempts"], 0)
        self.assertEqual(job["max_attempts"], 3)
        self.assertEqual(job["priority"], 0)
        for k in ("id", "type", "status", "payload", "result", "error", "priority", "attempts",
                  "max_attempts", "cost", "run_at", "created_at", "started_at", "finished_at"):
            self.assertIn(k, job)
        self.assertEqual(self.ledger.balance(org_id), before - 1)
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["result"], {"slept_ms": 10})
        self.assertEqual(done["attempts"], 1)
        self.assertIsNone(done["error"])
        self.assertLessEqual(parse_ts(done["started_at"]), parse_ts(done["finished_at"]))
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])
        self.assertEqual(self.ledger.balance(org_id), before - 1)
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_retry_then_success(self):
        _, token, org_id = self.fresh_org()
        job = enqueue(self.server, token, "fail", {"fail_attempts": 2, "message": "flaky"},
                      max_attempts=3)
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["attempts"], 3)
        self.assertEqual(done["result"], {"attempt": 3})
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])

    def test_retry_then_fail_refunds_exactly_once(self):
        _, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        job = enqueue(self.server, token, "fail", {"message": "always"}, max_attempts=3)
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 3)
        self.assertEqual(done["error"], "always")
        self.assertIsNotNone(done["finished_at"])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])
        self.assertEqual(self.ledger.balance(org_id), before)
        # A second refund is impossible, whoever tries it.
        self.assertEqual(self.pg.psql(
            f"SELECT (public.tenantd_credit_refund_job('{org_id}', '{job['id']}')).id IS NULL",
            db=self.dbname), ["t"])
        with self.assertRaises(subprocess.CalledProcessError):
            self.pg.psql("SELECT public.tenantd_credit_apply("
                         f"'{org_id}', 1, 'refund', '{job['id']}')", db=self.dbname)
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_backoff_grows(self):
        """Retries wait base * 2^(attempt-1) (with jitter of 0.5..1), capped
        at the max: each retry's wait, as the database scheduled it (run_at
        minus the moment of the failure, traced by a trigger), lies in its
        own band and is longer than the one before; no attempt starts
        before its run_at."""
        sql = lambda q: self.pg.psql(q, db=self.dbname)
        sql("CREATE TABLE public.t_job_trace (job uuid, status text, attempts int, "
            "run_at timestamptz, at timestamptz);"
            "CREATE FUNCTION public.t_job_trace() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO public.t_job_trace VALUES (NEW.id, NEW.status, NEW.attempts, "
            "NEW.run_at, clock_timestamp()); RETURN NEW; END $$;"
            # BEFORE: the moment is read right after the UPDATE's own
            # clock_timestamp() + backoff, not after the row and the other
            # triggers (an AFTER trace ran 2 ms late on a loaded machine).
            "CREATE TRIGGER t_job_trace BEFORE UPDATE ON public.jobs "
            "FOR EACH ROW EXECUTE FUNCTION public.t_job_trace()")
        self.addCleanup(sql, "DROP TABLE public.t_job_trace; "
                        "DROP TRIGGER t_job_trace ON public.jobs; "
                        "DROP FUNCTION public.t_job_trace()")
        _, token, _ = self.fresh_org()
        job = enqueue(self.server, token, "fail", {}, max_attempts=4)
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "failed")
        self.assertEqual(done["attempts"], 4)
        rows = [r.split("|") for r in sql(
            "SELECT status, attempts, round(extract(epoch FROM run_at - at) * 1000), "
            "round(extract(epoch FROM at) * 1000) FROM public.t_job_trace "
            f"WHERE job = '{job['id']}' ORDER BY at")]
        base, cap = int(FAST["TENANTD_JOB_RETRY_BASE_MS"]), int(FAST["TENANTD_JOB_RETRY_MAX_MS"])
        waits = [int(float(w)) for st, _, w, _ in rows if st == "queued"]
        self.assertEqual(len(waits), 3, rows)
        for k, w in enumerate(waits, start=1):
            full = min(cap, base * 2 ** (k - 1))
            self.assertGreaterEqual(w, full // 2 - 1, (k, waits))
            self.assertLessEqual(w, full + 1, (k, waits))
        self.assertLess(waits[0], waits[1], waits)
        self.assertLess(waits[1], waits[2], waits)
        # Each retry started no earlier than its run_at.
        seq = [(st, int(float(w)), int(float(at))) for st, _, w, at in rows]
        for i, (st, w, at) in enumerate(seq):
            if st == "queued":
                nxt = next(r for r in seq[i + 1:] if r[0] == "running")
                self.assertGreaterEqual(nxt[2] - at, w - 1, seq)

    def test_cancel_refunds_once(self):
        _, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        later = iso(datetime.datetime.utcnow() + datetime.timedelta(hours=1))
        job = enqueue(self.server, token, "sleep", {}, run_at=later)
        self.assertEqual(self.ledger.balance(org_id), before - 1)
        status, body, _ = self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                           bearer(token))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["status"], "cancelled")
        self.assertIsNotNone(body["finished_at"])
        self.assertEqual(self.ledger.balance(org_id), before)
        status, body, _ = self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                           bearer(token))
        self.assertEqual(status, 409, body)
        self.assertEqual(body["code"], "conflict")
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_cancel_running_or_done_is_409(self):
        _, token, org_id = self.fresh_org()
        job = enqueue(self.server, token, "sleep", {"ms": 1500})
        running = wait_job(self.server, token, job["id"], ("running",) + TERMINAL)
        self.assertEqual(running["status"], "running")
        status, body, _ = self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                           bearer(token))
        self.assertEqual(status, 409, body)
        self.assertIn("running", body["detail"])
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "succeeded")
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                          bearer(token))[0], 409)
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1)])

    def test_cancel_races_claim(self):
        """Cancels sent while workers claim: every job ends cancelled (and
        refunded once) or ran (and was not refunded), never both."""
        _, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        jobs = [enqueue(self.server, token, "sleep", {"ms": 5}) for _ in range(30)]
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            codes = list(ex.map(lambda j: self.server.json(
                "POST", f"/v1/jobs/{j['id']}/cancel", None, bearer(token))[0], jobs))
        self.assertTrue(set(codes) <= {200, 409}, codes)
        refunds = 0
        for j, code in zip(jobs, codes):
            done = wait_job(self.server, token, j["id"])
            rows = self.ledger.rows(j["id"])
            if code == 200:
                self.assertEqual(done["status"], "cancelled")
                self.assertEqual(rows, [("deduction", -1), ("refund", 1)])
                refunds += 1
            else:
                self.assertEqual(done["status"], "succeeded")
                self.assertEqual(rows, [("deduction", -1)])
        self.assertEqual(self.ledger.balance(org_id), before - 30 + refunds)
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_run_at_in_the_future(self):
        _, token, _ = self.fresh_org()
        at = datetime.datetime.utcnow() + datetime.timedelta(seconds=1.5)
        job = enqueue(self.server, token, "sleep", {}, run_at=iso(at))
        self.assertEqual(parse_ts(job["run_at"]), at.replace(microsecond=at.microsecond))
        # Every look taken before run_at sees it queued (no fixed window
        # that a slow machine could overrun), and at least one was.
        early = 0
        deadline = time.time() + 15
        while True:
            asked = datetime.datetime.utcnow()
            status, body, _ = self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                               bearer(token))
            self.assertEqual(status, 200, body)
            if asked < at:
                self.assertEqual(body["status"], "queued", body)
                early += 1
            if body["status"] in TERMINAL:
                break
            self.assertLess(time.time(), deadline, body)
            time.sleep(0.05)
        self.assertGreater(early, 0)
        done = body
        self.assertEqual(done["status"], "succeeded")
        self.assertGreaterEqual(parse_ts(done["started_at"]), at)
        # an offset other than Z means the same instant
        job = enqueue(self.server, token, "sleep", {},
                      run_at=(at.replace(tzinfo=datetime.timezone.utc)
                              .astimezone(datetime.timezone(datetime.timedelta(hours=2)))
                              .isoformat()))
        self.assertEqual(parse_ts(job["run_at"]), at)

    def test_validation(self):
        o, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        cases = [
            ({"type": "nope"}, "type"),
            ({}, "type"),
            ({"type": 5}, "type"),
            ({"type": "sleep", "payload": []}, "payload"),
            ({"type": "sleep", "payload": "x"}, "payload"),
            ({"type": "sleep", "payload": {"ms": -1}}, "payload.ms"),
            ({"type": "sleep", "payload": {"ms": "10"}}, "payload.ms"),
            ({"type": "sleep", "payload": {"sleep": 10}}, "payload.sleep"),
            ({"type": "sleep", "priority": 10}, "priority"),
            ({"type": "sleep", "priority": -1}, "priority"),
            ({"type": "sleep", "priority": 1.5}, "priority"),
            ({"type": "sleep", "max_attempts": 0}, "max_attempts"),
            ({"type": "sleep", "max_attempts": 26}, "max_attempts"),
            ({"type": "sleep", "run_at": "tomorrow"}, "run_at"),
            ({"type": "sleep", "run_at": "2030-02-30T00:00:00Z"}, "run_at"),
            ({"type": "sleep", "run_at": "2030-01-01T00:00:00"}, "run_at"),
            ({"type": "sleep", "run_at": "2030-01-01 00:00:00Z; DROP TABLE jobs"}, "run_at"),
            ({"type": "sleep", "colour": "red"}, "colour"),
            ({"type": "records.export", "payload": {}}, "payload.collection"),
            ({"type": "records.export", "payload": {"collection": "Bad Name"}},
             "payload.collection"),
            ({"type": "credits.report", "payload": {"from": "2026-01-02", "to": "2026-01-01"}},
             "payload.to"),
            ({"type": "credits.report", "payload": {"from": "2026-13-01", "to": "2026-01-01"}},
             "payload.from"),
            ({"type": "credits.report", "payload": {"from": "2020-01-01", "to": "2026-01-01"}},
             "payload.to"),
            ({"type": "webhook.deliver", "payload": {"url": "http://127.0.0.1:1/",
                                                     "secret": "s" * 16}}, "payload.url"),
            ({"type": "webhook.deliver", "payload": {"url": "ftp://x/", "secret": "s" * 16}},
             "payload.url"),
            ({"type": "webhook.deliver", "payload": {"url": "http://user@evil/",
                                                     "secret": "s" * 16}}, "payload.url"),
            ({"type": "fail", "payload": {"fail_attempts": 99}}, "payload.fail_attempts"),
        ]
        for body, field in cases:
            with self.subTest(body=body):
                status, answer, _ = self.server.json("POST", "/v1/jobs", body, bearer(token))
                self.assertEqual(status, 422, answer)
                self.assertEqual(answer["code"], "validation_failed")
                self.assertIn(field, [e["field"] for e in answer["errors"]], answer)
        for raw in (b"{", b"[]", b"\"sleep\"", b"{\"type\": \"sleep\", \"type\": \"fail\"}"):
            with self.subTest(raw=raw):
                r = self.server.request("POST", "/v1/jobs", raw,
                                        bearer(token, **{"Content-Type": "application/json"}))
                self.assertEqual(r.status, 400, r.body)
        # The body is read as every module reads one (core/body.h): an empty body is 400,
        # and unknown fields are reported, but the answer does not balloon.
        r = self.server.request("POST", "/v1/jobs", b"", bearer(token))
        self.assertEqual(r.status, 400, r.body)
        status, answer, _ = self.server.json(
            "POST", "/v1/jobs", {"type": "sleep", **{f"f{i}": i for i in range(40)}}, bearer(token))
        self.assertEqual(status, 422, answer)
        self.assertLessEqual(len(answer["errors"]), 9, answer)
        self.assertEqual(self.ledger.balance(org_id), before)
        self.assertEqual(self.pg.psql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{org_id}'",
                                      db=self.dbname), ["0"])

    def test_who_may_enqueue(self):
        o, token, org_id = self.fresh_org()
        member = create_user(self.server, token, f"m@{o['slug']}.example.com")
        mtoken = login(self.server, member["email"], org=o["slug"])["access_token"]
        mkey = create_key(self.server, token, "member key")["key"]
        status, body, _ = self.server.json("POST", "/v1/jobs", {"type": "sleep"}, bearer(mtoken))
        self.assertEqual(status, 403, body)
        job = enqueue(self.server, mkey, "sleep")  # any API key may
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                          bearer(mtoken))[0], 403)
        # members read
        self.assertEqual(self.server.json("GET", f"/v1/jobs/{job['id']}", None,
                                          bearer(mtoken))[0], 200)
        self.assertEqual(self.server.json("GET", "/v1/jobs", None, bearer(mtoken))[0], 200)
        self.assertEqual(self.server.json("POST", "/v1/jobs", {"type": "sleep"}, {})[0], 401)

    def test_payment_required(self):
        _, token, org_id = self.fresh_org()
        bal = self.ledger.balance(org_id)
        # leave 3 credits (through the ledger, so the invariant holds)
        self.pg.psql(f"SELECT public.tenantd_credit_apply('{org_id}', {3 - bal}, 'adjustment')",
                     db=self.dbname)
        status, body, _ = self.server.json("POST", "/v1/jobs", {
            "type": "records.export", "payload": {"collection": "c"}}, bearer(token))
        self.assertEqual(status, 402, body)
        self.assertEqual(body["code"], "payment_required")
        self.assertEqual(self.ledger.balance(org_id), 3)
        self.assertEqual(self.pg.psql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{org_id}'",
                                      db=self.dbname), ["0"])
        for _ in range(3):
            enqueue(self.server, token, "sleep", {"ms": 0})
        self.assertEqual(self.server.json("POST", "/v1/jobs", {"type": "sleep"},
                                          bearer(token))[0], 402)
        self.assertEqual(self.ledger.balance(org_id), 0)
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_concurrent_enqueue_never_overdraws(self):
        _, token, org_id = self.fresh_org()
        bal = self.ledger.balance(org_id)
        self.pg.psql(f"SELECT public.tenantd_credit_apply('{org_id}', {20 - bal}, 'adjustment')",
                     db=self.dbname)
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            codes = list(ex.map(lambda _: self.server.json(
                "POST", "/v1/jobs", {"type": "sleep", "run_at": "2099-01-01T00:00:00Z"},
                bearer(token))[0], range(40)))
        self.assertEqual(codes.count(202), 20, codes)
        self.assertEqual(codes.count(402), 20, codes)
        self.assertEqual(self.ledger.balance(org_id), 0)
        self.assertEqual(self.pg.psql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{org_id}'",
                                      db=self.dbname), ["20"])
        self.assertTrue(self.ledger.check_sum(org_id))

    def test_get_and_list(self):
        o, token, org_id = self.fresh_org()
        other, otoken, _ = self.fresh_org()
        later = "2099-01-01T00:00:00Z"
        ids = [enqueue(self.server, token, "sleep", {}, run_at=later)["id"] for _ in range(5)]
        failed = enqueue(self.server, token, "fail", {}, max_attempts=1)["id"]
        wait_job(self.server, token, failed)
        # get: own 200, another org's 404, not a uuid 404
        self.assertEqual(self.server.json("GET", f"/v1/jobs/{ids[0]}", None, bearer(token))[0], 200)
        self.assertEqual(self.server.json("GET", f"/v1/jobs/{ids[0]}", None, bearer(otoken))[0], 404)
        self.assertEqual(self.server.json("POST", f"/v1/jobs/{ids[0]}/cancel", None,
                                          bearer(otoken))[0], 404)
        for bad in ("nope", "1", ids[0][:-1], ids[0] + "0", str(uuid.uuid4())):
            self.assertEqual(self.server.json("GET", f"/v1/jobs/{bad}", None, bearer(token))[0],
                             404, bad)
            self.assertEqual(self.server.json("POST", f"/v1/jobs/{bad}/cancel", None,
                                              bearer(token))[0], 404, bad)
        # list: newest first, pages by cursor, stable under inserts
        status, page, _ = self.server.json("GET", "/v1/jobs?limit=2", None, bearer(token))
        self.assertEqual(status, 200, page)
        self.assertEqual([j["id"] for j in page["data"]], [failed, ids[4]])
        enqueue(self.server, token, "sleep", {}, run_at=later)  # must not shift page 2
        status, page2, _ = self.server.json("GET", f"/v1/jobs?limit=2&cursor={page['next_cursor']}",
                                            None, bearer(token))
        self.assertEqual([j["id"] for j in page2["data"]], [ids[3], ids[2]])
        status, page3, _ = self.server.json("GET", f"/v1/jobs?limit=3&cursor={page2['next_cursor']}",
                                            None, bearer(token))
        self.assertEqual([j["id"] for j in page3["data"]], [ids[1], ids[0]])
        self.assertIsNone(page3["next_cursor"])
        # filters
        status, f, _ = self.server.json("GET", "/v1/jobs?status=failed", None, bearer(token))
        self.assertEqual([j["id"] for j in f["data"]], [failed])
        status, f, _ = self.server.json("GET", "/v1/jobs?type=fail&status=failed", None,
                                        bearer(token))
        self.assertEqual([j["id"] for j in f["data"]], [failed])
        status, f, _ = self.server.json("GET", "/v1/jobs?type=sleep&limit=100", None,
                                        bearer(token))
        self.assertEqual(len(f["data"]), 6)
        status, f, _ = self.server.json("GET", "/v1/jobs", None, bearer(otoken))
        self.assertEqual(f, {"data": [], "next_cursor": None})
        # The one limit rule of every list (jobs once took "+5" and " 5"); cursors are
        # opaque base64url, so a bare seq is refused.
        for q in ("status=done", "limit=0", "limit=101", "limit=x", "limit=%2B5", "limit=%205",
                  "limit=05", "limit=5%20", "limit=", "cursor=abc", "cursor=-1", "cursor=12",
                  "cursor=99999999999999999999",
                  "cursor=" + base64.urlsafe_b64encode(b"9223372036854775808").decode().rstrip("=")):
            status, body, _ = self.server.json("GET", f"/v1/jobs?{q}", None, bearer(token))
            self.assertEqual(status, 422, (q, body))

    def test_idempotency_key(self):
        _, token, org_id = self.fresh_org()
        before = self.ledger.balance(org_id)
        key = "job-" + uuid.uuid4().hex
        body = {"type": "sleep", "payload": {"ms": 1}}
        r1 = self.server.request("POST", "/v1/jobs", body, bearer(token, **{"Idempotency-Key": key}))
        r2 = self.server.request("POST", "/v1/jobs", body, bearer(token, **{"Idempotency-Key": key}))
        self.assertEqual(r1.status, 202, r1.body)
        self.assertEqual(r2.status, 202, r2.body)
        self.assertEqual(r1.body, r2.body)
        self.assertEqual(r2.getheader("Idempotent-Replayed"), "true")
        self.assertEqual(r2.getheader("Location"), r1.getheader("Location"))
        self.assertEqual(self.ledger.balance(org_id), before - 1)
        # same key, another body: 422; nothing charged
        r3 = self.server.request("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 2}},
                                 bearer(token, **{"Idempotency-Key": key}))
        self.assertEqual(r3.status, 422, r3.body)
        self.assertEqual(self.ledger.balance(org_id), before - 1)
        # a rejected request does not use up its key
        key2 = "job-" + uuid.uuid4().hex
        bad = self.server.request("POST", "/v1/jobs", {"type": "nope"},
                                  bearer(token, **{"Idempotency-Key": key2}))
        self.assertEqual(bad.status, 422)
        ok = self.server.request("POST", "/v1/jobs", body, bearer(token, **{"Idempotency-Key": key2}))
        self.assertEqual(ok.status, 202, ok.body)
        # cancel with a key replays its answer
        job = enqueue(self.server, token, "sleep", {}, run_at="2099-01-01T00:00:00Z")
        ck = "cancel-" + uuid.uuid4().hex
        c1 = self.server.request("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                 bearer(token, **{"Idempotency-Key": ck}))
        c2 = self.server.request("POST", f"/v1/jobs/{job['id']}/cancel", None,
                                 bearer(token, **{"Idempotency-Key": ck}))
        self.assertEqual((c1.status, c2.status), (200, 200), (c1.body, c2.body))
        self.assertEqual(c1.body, c2.body)
        self.assertEqual(c2.getheader("Idempotent-Replayed"), "true")
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -1), ("refund", 1)])

    def test_records_export(self):
        o, token, org_id = self.fresh_org()
        coll = "export_me"
        made = []
        for i in range(5):
            status, rec, _ = self.server.json("POST", f"/v1/collections/{coll}/records",
                                              {"n": i, "big": 12345678901234567890},
                                              bearer(token))
            self.assertEqual(status, 201, rec)
            made.append(rec)
        self.server.json("POST", "/v1/collections/other/records", {"x": 1}, bearer(token))
        done = wait_job(self.server, token,
                        enqueue(self.server, token, "records.export", {"collection": coll})["id"])
        self.assertEqual(done["status"], "succeeded", done)
        res = done["result"]
        self.assertEqual(res["collection"], coll)
        self.assertEqual(res["count"], 5)
        self.assertFalse(res["truncated"])
        self.assertEqual(sorted(r["id"] for r in res["records"]), sorted(r["id"] for r in made))
        self.assertEqual({r["data"]["n"] for r in res["records"]}, set(range(5)))
        expect = "\n".join(f"{r['id']}:{r['version']}:" + self.pg.psql(
            f"SELECT data::text FROM {self.schema_of(org_id)}.records"
            f" WHERE id = '{r['id']}'", db=self.dbname)[0]
            for r in sorted(made, key=lambda r: r["id"]))
        self.assertEqual(res["checksum"], hashlib.sha256(expect.encode()).hexdigest())
        # larger than max_records: count and checksum only
        small = wait_job(self.server, token, enqueue(
            self.server, token, "records.export", {"collection": coll, "max_records": 2})["id"])
        self.assertEqual(small["status"], "succeeded", small)
        self.assertTrue(small["result"]["truncated"])
        self.assertIsNone(small["result"]["records"])
        self.assertEqual(small["result"]["checksum"], res["checksum"])
        # another org's export sees none of these
        _, otoken, _ = self.fresh_org()
        other = wait_job(self.server, otoken, enqueue(
            self.server, otoken, "records.export", {"collection": coll})["id"])
        self.assertEqual(other["result"]["count"], 0)
        self.assertEqual(other["result"]["records"], [])

    def schema_of(self, org_id):
        return self.pg.psql(f"SELECT schema_name FROM public.orgs WHERE id = '{org_id}'",
                            db=self.dbname)[0]

    def test_credits_report(self):
        _, token, org_id = self.fresh_org()
        for _ in range(3):
            wait_job(self.server, token, enqueue(self.server, token, "sleep")["id"])
        wait_job(self.server, token, enqueue(self.server, token, "fail", {}, max_attempts=1)["id"])
        today = datetime.datetime.utcnow().strftime("%Y-%m-%d")
        done = wait_job(self.server, token, enqueue(
            self.server, token, "credits.report", {"from": today, "to": today})["id"])
        self.assertEqual(done["status"], "succeeded", done)
        res = done["result"]
        self.assertEqual((res["from"], res["to"]), (today, today))
        by_type = {d["type"]: d for d in res["days"]}
        self.assertEqual(by_type["grant"]["amount"], 1000)
        # 3 sleeps + 1 fail + this report (charged when enqueued, before it ran)
        self.assertEqual(by_type["deduction"]["count"], 5)
        self.assertEqual(by_type["deduction"]["amount"], -(4 + 2))
        self.assertEqual(by_type["refund"], {"date": today, "type": "refund", "count": 1,
                                             "amount": 1})
        self.assertEqual(res["totals"]["deduction"]["amount"], -6)
        empty = wait_job(self.server, token, enqueue(
            self.server, token, "credits.report", {"from": "2001-01-01", "to": "2001-12-31"})["id"])
        self.assertEqual(empty["result"]["days"], [])
        self.assertEqual(empty["result"]["totals"], {})


class TestJobsOffTest(LedgerAudit, harness.DbTestCase):
    """Without TENANTD_TEST_JOBS=1 the sleep and fail types do not exist:
    not listed, and refused at enqueue without a charge."""
    server_env = dict(FAST, TENANTD_TEST_JOBS="0", TENANTD_JOB_WORKERS="0")

    def test_sleep_and_fail_hidden(self):
        ledger = Ledger(self.pg, self.dbname)
        o = signup(self.server)
        token, org_id = o["access_token"], o["org"]["id"]
        status, body, _ = self.server.json("GET", "/v1/job-types", None, bearer(token))
        self.assertEqual(status, 200, body)
        names = {t["type"] for t in body["data"]}
        self.assertIn("records.export", names)
        self.assertFalse(names & {"sleep", "fail"}, names)
        before = ledger.balance(org_id)
        for type_ in ("sleep", "fail"):
            with self.subTest(type=type_):
                status, body, _ = self.server.json("POST", "/v1/jobs", {"type": type_},
                                                   bearer(token))
                self.assertEqual(status, 422, body)
                self.assertEqual(body["errors"][0]["field"], "type", body)
        self.assertEqual(ledger.balance(org_id), before)
        self.assertEqual(self.pg.psql(f"SELECT count(*) FROM public.jobs WHERE org_id = '{org_id}'",
                                      db=self.dbname), ["0"])


class Receiver:
    """A local HTTP server that records what it is sent and answers with the
    statuses queued for the request's path in `answers` (then 200); HTTPS
    with `tls` (an ssl.SSLContext of the server side). Tests sharing one
    receiver each use their own path (new_path), so a late retry of one
    test's job never lands in another's count."""

    def __init__(self, tls=None):
        self.requests = []
        self.answers = {}  # path -> [status, ...]
        self.connections = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.requests.append((self.path, dict(self.headers), body))
                    queued = outer.answers.get(self.path)
                    code = queued.pop(0) if queued else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with outer.lock:
                    outer.connections += 1
                return True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        if tls:
            # A failed handshake raises in accept(), which socketserver drops.
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def new_path(suffix=""):
        return "/t/" + uuid.uuid4().hex + suffix

    def sent_to(self, path):
        """[(headers, body)] of the requests to `path`, in arrival order."""
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def assert_url_refused(test, server, token, url):
    """A webhook.deliver job for `url` is refused at enqueue: 422 on payload.url."""
    status, body, _ = server.json("POST", "/v1/jobs", {
        "type": "webhook.deliver", "payload": {"url": url, "secret": "s" * 16}}, bearer(token))
    test.assertEqual(status, 422, body)
    test.assertEqual(body["errors"][0]["field"], "payload.url")


def verify_signature(headers, body, secret):
    m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", headers["X-Tenantd-Signature"])
    assert m, headers
    mac = hmac.new(secret.encode(), m.group(1).encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, m.group(2)) and abs(time.time() - int(m.group(1))) < 60


class WebhookTest(LedgerAudit, harness.DbTestCase):
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rx = Receiver()
        cls.closed_port = harness.free_port()  # nothing listens there
        # accepts connections (the kernel's backlog) but never answers
        cls.silent = socket.socket()
        cls.silent.bind(("127.0.0.1", 0))
        cls.silent.listen(8)
        silent_port = cls.silent.getsockname()[1]
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_TIMEOUT_MS="1000",
            TENANTD_WEBHOOK_ALLOW_PRIVATE="1",  # the receivers are on loopback
            TENANTD_WEBHOOK_ALLOW=f"127.0.0.1:{cls.rx.port}, localhost:{cls.closed_port},"
                                  f"127.0.0.1:{silent_port}")).start()
        cls.silent_url = f"http://127.0.0.1:{silent_port}/"
        cls.org = signup(cls.server)
        cls.token = cls.org["access_token"]
        cls.ledger = Ledger(cls.pg, cls.dbname)

    @classmethod
    def tearDownClass(cls):
        cls.rx.close()
        cls.silent.close()
        super().tearDownClass()

    def test_receiver_that_never_answers_times_out(self):
        t0 = time.time()
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": self.silent_url, "secret": "s" * 16}, max_attempts=1)
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("in time", done["error"])
        self.assertGreaterEqual(time.time() - t0, 0.9)  # TENANTD_WEBHOOK_TIMEOUT_MS
        # The receiver's side: the cost stays (SECURITY.md 10.7).
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])

    def test_delivers_signed_body(self):
        secret = "whsec_" + uuid.uuid4().hex
        path = self.rx.new_path("?x=1")
        payload = {"url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": secret,
                   "body": {"event": "thing.happened", "n": [1, 2, 3], "text": "caf\u00e9"}}
        job = enqueue(self.server, self.token, "webhook.deliver", payload)
        self.assertNotIn("secret", job["payload"])  # never shown back
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["result"], {"status": 200, "attempt": 1})
        self.assertNotIn("secret", done["payload"])
        sent = self.rx.sent_to(path)
        self.assertEqual(len(sent), 1, sent)
        headers, body = sent[0]
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["X-Tenantd-Job"], job["id"])
        self.assertEqual(headers["X-Tenantd-Attempt"], "1")
        self.assertEqual(json.loads(body), payload["body"])
        self.assertTrue(verify_signature(headers, body, secret))
        self.assertFalse(verify_signature(headers, body, secret + "x"))
        self.assertFalse(verify_signature(headers, body + b" ", secret))

    def test_retries_5xx_then_succeeds(self):
        path = self.rx.new_path()
        self.rx.answers[path] = [503, 500]
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": "s" * 16}, max_attempts=5)
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["attempts"], 3)
        self.assertEqual(done["result"], {"status": 200, "attempt": 3})
        # Each delivery names its job and attempt (receivers de-duplicate on them).
        sent = self.rx.sent_to(path)
        self.assertEqual([h["X-Tenantd-Attempt"] for h, _ in sent], ["1", "2", "3"])
        self.assertEqual({h["X-Tenantd-Job"] for h, _ in sent}, {job["id"]})
        self.assertEqual(len({b for _, b in sent}), 1, "every attempt sends the same body")

    def test_retry_cap(self):
        """A receiver that always answers 500 gets exactly max_attempts
        deliveries, numbered 1..max_attempts; then the job fails, its cost kept (the receiver failed)."""
        path = self.rx.new_path()
        self.rx.answers[path] = [500] * 10
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": "s" * 16}, max_attempts=3)
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 3)
        self.assertIn("500", done["error"])
        self.assertEqual([h["X-Tenantd-Attempt"] for h, _ in self.rx.sent_to(path)],
                         ["1", "2", "3"])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])
        time.sleep(0.3)  # well past the 100 ms retry cap of FAST: nothing more comes
        self.assertEqual(len(self.rx.sent_to(path)), 3)

    def test_4xx_fails_without_retry_and_keeps_the_cost(self):
        path = self.rx.new_path()
        self.rx.answers[path] = [410]
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": "s" * 16}, max_attempts=5)
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 1)
        self.assertIn("410", done["error"])
        self.assertEqual(len(self.rx.sent_to(path)), 1)
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])

    def test_unreachable_retries_then_fails(self):
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": f"http://localhost:{self.closed_port}/", "secret": "s" * 16}, max_attempts=2)
        done = wait_job(self.server, self.token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 2)
        self.assertIn("connect", done["error"])
        self.assertEqual(self.ledger.rows(job["id"]), [("deduction", -2)])

    def test_disallowed_hosts_are_refused_at_enqueue(self):
        before = self.ledger.balance(self.org["org"]["id"])
        conns = self.rx.connections
        for url in (f"http://127.0.0.1:{self.rx.port + 1}/", f"http://localhost:{self.rx.port}/",
                    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
                    f"http://127.0.0.1.nip.io:{self.rx.port}/"):
            with self.subTest(url=url):
                assert_url_refused(self, self.server, self.token, url)
        self.assertEqual(self.rx.connections, conns)
        self.assertEqual(self.ledger.balance(self.org["org"]["id"]), before)


def make_cert(folder, name, sans):
    """A self-signed certificate (also its own CA) for `sans`, made by the
    openssl command; returns (cert.pem, key.pem)."""
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=tenantd test " + name,
                    "-addext", "subjectAltName=" + sans],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def tls_receiver(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return Receiver(tls=ctx)


class WebhookTlsTest(LedgerAudit, harness.DbTestCase):
    """webhook.deliver over https: the receiver's certificate is verified
    against the system's CAs plus TENANTD_WEBHOOK_CA_FILE, and against the
    URL's host name or IPv4 address; an untrusted or misnamed certificate
    fails the attempt before a byte of the body is sent."""
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="tenantd-tls-")
        good = make_cert(cls.tmp, "good", "DNS:localhost,IP:127.0.0.1")
        stranger = make_cert(cls.tmp, "stranger", "DNS:localhost,IP:127.0.0.1")  # not trusted
        cls.misnamed_cert = make_cert(cls.tmp, "misnamed", "DNS:other.example")
        cls.rx = tls_receiver(*good)
        cls.untrusted = tls_receiver(*stranger)
        cls.misnamed = tls_receiver(*cls.misnamed_cert)  # trusted below, but for another name
        with open(os.path.join(cls.tmp, "ca.pem"), "w") as ca:
            for cert in (good[0], cls.misnamed_cert[0]):
                with open(cert) as f:
                    ca.write(f.read())
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_TIMEOUT_MS="3000",
            TENANTD_WEBHOOK_ALLOW_PRIVATE="1",  # the receivers are on loopback
            TENANTD_WEBHOOK_CA_FILE=os.path.join(cls.tmp, "ca.pem"),
            TENANTD_WEBHOOK_ALLOW=",".join([
                f"localhost:{cls.rx.port}", f"127.0.0.1:{cls.rx.port}",
                f"localhost:{cls.untrusted.port}", f"localhost:{cls.misnamed.port}"]))).start()
        cls.org = signup(cls.server)
        cls.token = cls.org["access_token"]
        cls.ledger = Ledger(cls.pg, cls.dbname)

    @classmethod
    def tearDownClass(cls):
        for rx in (cls.rx, cls.untrusted, cls.misnamed):
            rx.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def deliver(self, url, **fields):
        secret = "whsec_" + uuid.uuid4().hex
        job = enqueue(self.server, self.token, "webhook.deliver", {
            "url": url, "secret": secret, "body": {"event": "tls.test"}}, **fields)
        return wait_job(self.server, self.token, job["id"]), secret

    def test_delivers_over_https_by_name_and_by_address(self):
        for host in ("localhost", "127.0.0.1"):
            with self.subTest(host=host):
                path = self.rx.new_path()
                done, secret = self.deliver(f"https://{host}:{self.rx.port}{path}")
                self.assertEqual(done["status"], "succeeded", done)
                self.assertEqual(done["result"], {"status": 200, "attempt": 1})
                sent = self.rx.sent_to(path)
                self.assertEqual(len(sent), 1, sent)
                headers, body = sent[0]
                self.assertEqual(headers["Host"], f"{host}:{self.rx.port}")
                self.assertEqual(json.loads(body), {"event": "tls.test"})
                self.assertTrue(verify_signature(headers, body, secret))

    def test_untrusted_certificate_fails_without_sending(self):
        done, _ = self.deliver(f"https://localhost:{self.untrusted.port}/", max_attempts=1)
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("not trusted", done["error"])
        self.assertEqual(self.untrusted.requests, [])
        # The receiver's certificate: its side, the cost stays.
        self.assertEqual(self.ledger.rows(done["id"]), [("deduction", -2)])

    def test_certificate_for_another_name_fails(self):
        done, _ = self.deliver(f"https://localhost:{self.misnamed.port}/", max_attempts=1)
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("not trusted", done["error"])
        self.assertEqual(self.misnamed.requests, [])

    def test_plain_http_to_a_tls_port_gets_no_answer(self):
        path = self.rx.new_path()
        done, _ = self.deliver(f"http://localhost:{self.rx.port}{path}", max_attempts=1)
        self.assertEqual(done["status"], "failed", done)
        self.assertIn("no HTTP answer", done["error"])
        self.assertEqual(self.rx.sent_to(path), [])

    def test_other_schemes_are_refused_at_enqueue(self):
        for url in (f"ftp://localhost:{self.rx.port}/", f"httpx://localhost:{self.rx.port}/",
                    f"https//localhost:{self.rx.port}/", f"https://:{self.rx.port}/"):
            with self.subTest(url=url):
                assert_url_refused(self, self.server, self.token, url)

    def test_a_ca_file_that_cannot_be_read_stops_the_start(self):
        bad = os.path.join(self.tmp, "missing.pem")
        for args in (("serve", "--migrate"), ("worker",)):
            with self.subTest(command=args[0]):
                srv = harness.Server(self.db_url, env=dict(FAST, TENANTD_JOB_WORKERS="1",
                                                           TENANTD_WEBHOOK_CA_FILE=bad), args=args)
                srv.start(wait=False)
                try:
                    srv.proc.wait(30)
                finally:
                    srv.stop()
                self.assertNotEqual(srv.proc.returncode, 0)
                self.assertIn("TENANTD_WEBHOOK_CA_FILE", srv.log())


class WebhookWorkerAllowListTest(LedgerAudit, harness.DbTestCase):
    """The worker's own allow list decides: a job accepted by a server that
    allows the host, run by a `tenantd worker` that does not, fails without
    connecting (and is refunded)."""
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rx = Receiver()
        cls.server = harness.Server(cls.db_url, env=dict(
            FAST, TENANTD_JOB_WORKERS="0", TENANTD_WEBHOOK_ALLOW_PRIVATE="1",
            TENANTD_WEBHOOK_ALLOW=f"127.0.0.1:{cls.rx.port}")).start()

    @classmethod
    def tearDownClass(cls):
        cls.rx.close()
        super().tearDownClass()

    def test_worker_refuses(self):
        org = signup(self.server)
        token = org["access_token"]
        job = enqueue(self.server, token, "webhook.deliver", {
            "url": f"http://127.0.0.1:{self.rx.port}/", "secret": "s" * 16}, max_attempts=3)
        w = harness.Server(self.db_url, env=dict(FAST, TENANTD_JOB_WORKERS="1"), args=("worker",))
        w.start(wait=False)
        try:
            done = wait_job(self.server, token, job["id"])
        finally:
            self.assertEqual(w.stop(), 0, w.log())
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 1)
        self.assertIn("not allowed", done["error"])
        self.assertEqual(self.rx.connections, 0)
        self.assertEqual(Ledger(self.pg, self.dbname).rows(job["id"]),
                         [("deduction", -2), ("refund", 2)])


def start_worker(db_url, **env):
    e = dict(FAST, TENANTD_JOB_WORKERS="1")
    e.update(env)
    return harness.Server(db_url, env=e, args=("worker",)).start(wait=False)


def job_starts(log):
    """(job id, attempt) of every 'job ... start' debug line of a log."""
    out = []
    for line in log.splitlines():
        m = re.search(r'"msg":"job ([0-9a-f-]{36}) attempt (\d+) start', line)
        if m:
            out.append((m.group(1), int(m.group(2))))
    return out


class TimeoutTest(LedgerAudit, harness.DbTestCase):
    """TENANTD_JOB_TIMEOUT_MS bounds every attempt: a job that runs longer
    fails the attempt ("timed out"), retries, and is refunded at the end."""
    server_env = dict(FAST, TENANTD_JOB_WORKERS="1", TENANTD_JOB_TIMEOUT_MS="300")

    def test_attempts_time_out(self):
        org = signup(self.server)
        token = org["access_token"]
        t0 = time.time()
        job = enqueue(self.server, token, "sleep", {"ms": 5000}, max_attempts=2)
        done = wait_job(self.server, token, job["id"])
        self.assertEqual(done["status"], "failed", done)
        self.assertEqual(done["attempts"], 2)
        self.assertEqual(done["error"], "timed out")
        self.assertLess(time.time() - t0, 4)
        self.assertEqual(Ledger(self.pg, self.dbname).rows(job["id"]),
                         [("deduction", -1), ("refund", 1)])
        ok = wait_job(self.server, token, enqueue(self.server, token, "sleep", {"ms": 50})["id"])
        self.assertEqual(ok["status"], "succeeded")


class SchedulingTest(LedgerAudit, harness.DbTestCase):
    """Ordering and fairness, with the server's workers off: jobs are queued
    first, then `tenantd worker` processes run them."""
    OPERATOR = "scheduling-test-operator-token-0123456789"
    server_env = dict(FAST, TENANTD_JOB_WORKERS="0", TENANTD_OPERATOR_TOKEN=OPERATOR)

    def finished_order(self, org_id=None):
        where = f"WHERE org_id = '{org_id}'" if org_id else ""
        return [r.split("|") for r in self.pg.psql(
            f"SELECT id, org_id, priority FROM public.jobs {where} ORDER BY finished_at, id",
            db=self.dbname)]

    def started_order(self):
        """Priorities in the order the jobs were claimed (started_at is the
        claim's time). Not finished_at: succeeded jobs are recorded in sets
        (the completer, control 0020), and one set's rows get their
        finished_at in whatever order the UPDATE meets them (a CI run saw a
        set of priorities 9, 7, 5 recorded as 5, 9, 7)."""
        return [int(p) for p in self.pg.psql(
            "SELECT priority FROM public.jobs ORDER BY started_at, id", db=self.dbname)]

    def wait_all(self, n, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = int(self.pg.psql("SELECT count(*) FROM public.jobs WHERE status = 'succeeded'",
                                    db=self.dbname)[0])
            if done >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {done} of {n} jobs done")

    def setUp(self):
        self.pg.psql("DELETE FROM public.jobs", db=self.dbname)

    def test_priority_order(self):
        org = signup(self.server)
        token = org["access_token"]
        prios = [0, 9, 3, 0, 9, 5, 1, 9, 0, 7]
        for p in prios:
            enqueue(self.server, token, "sleep", {"ms": 1}, priority=p)
        w = start_worker(self.db_url, TENANTD_JOB_BATCH="1")
        try:
            self.wait_all(len(prios))
        finally:
            self.assertEqual(w.stop(), 0)
        self.assertEqual(self.started_order(), sorted(prios, reverse=True))

    def test_fair_between_orgs(self):
        """Org A floods the queue with 60 jobs before org B enqueues 3: with
        one worker, B's jobs still finish among the first few, not after A's
        60 (first-come-first-served would put them last)."""
        a, b = signup(self.server), signup(self.server)
        for _ in range(60):
            enqueue(self.server, a["access_token"], "sleep", {"ms": 5})
        for _ in range(3):
            enqueue(self.server, b["access_token"], "sleep", {"ms": 5})
        w = start_worker(self.db_url, TENANTD_JOB_BATCH="2")
        try:
            self.wait_all(63)
        finally:
            self.assertEqual(w.stop(), 0)
        order = [org for _, org, _ in self.finished_order()]
        b_positions = [i for i, org in enumerate(order) if org == b["org"]["id"]]
        self.assertEqual(len(b_positions), 3)
        self.assertLess(max(b_positions), 10, order)

    def statuses(self, org_id):
        return self.pg.psql(f"SELECT status, attempts FROM public.jobs WHERE org_id = '{org_id}'",
                            db=self.dbname)

    def test_suspended_orgs_jobs_wait_until_unsuspended(self):
        """Jobs of suspended orgs are skipped, not run (no spending, no
        webhooks), however many such orgs lie before an active one in the
        workers' scan; unsuspended, they run."""
        op = bearer(self.OPERATOR)
        paused = [signup(self.server) for _ in range(4)]
        active = signup(self.server)
        for o in paused + [active]:
            for _ in range(3):
                enqueue(self.server, o["access_token"], "sleep", {"ms": 1})
        for o in paused:
            status, body, _ = self.server.json(
                "POST", f"/v1/admin/orgs/{o['org']['slug']}/suspend", headers=op)
            self.assertEqual(status, 200, body)
        w = start_worker(self.db_url, TENANTD_JOB_BATCH="2")
        try:
            self.wait_all(3)
            time.sleep(0.5)  # ten polls of the worker
            self.assertEqual(self.statuses(active["org"]["id"]), ["succeeded|1"] * 3)
            for o in paused:
                self.assertEqual(self.statuses(o["org"]["id"]), ["queued|0"] * 3)
            for o in paused:
                status, body, _ = self.server.json(
                    "POST", f"/v1/admin/orgs/{o['org']['slug']}/unsuspend", headers=op)
                self.assertEqual(status, 200, body)
            self.wait_all(15)
        finally:
            self.assertEqual(w.stop(), 0)

    def test_two_worker_processes_never_run_an_attempt_twice(self):
        orgs = [signup(self.server) for _ in range(4)]
        env = dict(TENANTD_JOB_WORKERS="2", TENANTD_JOB_BATCH="4", TENANTD_LOG_LEVEL="debug")
        w1, w2 = start_worker(self.db_url, **env), start_worker(self.db_url, **env)
        n = 0
        try:
            # Both processes listen before the first job exists, so both are
            # woken by every enqueue: one that starts late (ASan, a loaded
            # machine) cannot find the queue already drained by the other.
            deadline = time.time() + 30
            while not all('"msg":"job listener: listening"' in w.log() for w in (w1, w2)):
                self.assertLess(time.time(), deadline, w1.log() + w2.log())
                time.sleep(0.05)
            for i in range(200):
                enqueue(self.server, orgs[i % 4]["access_token"], "sleep", {"ms": 2 + i % 3})
                n += 1
            self.wait_all(n)
        finally:
            self.assertEqual(w1.stop(), 0)
            self.assertEqual(w2.stop(), 0)
        s1, s2 = job_starts(w1.log()), job_starts(w2.log())
        self.assertEqual(len(s1) + len(s2), n)
        self.assertEqual(len(set(s1) | set(s2)), n)  # no (job, attempt) twice
        self.assertTrue(s1 and s2, "both processes should have worked")
        self.assertEqual(self.pg.psql("SELECT DISTINCT attempts FROM public.jobs", db=self.dbname),
                         ["1"])
        # each job charged exactly once, none refunded
        ids = ",".join(f"'{o['org']['id']}'" for o in orgs)
        self.assertEqual(self.pg.psql(
            "SELECT count(*), count(DISTINCT job_id) FROM public.credit_transactions"
            f" WHERE type = 'deduction' AND org_id IN ({ids})", db=self.dbname)[0], f"{n}|{n}")
        self.assertEqual(self.pg.psql(
            "SELECT count(*) FROM public.credit_transactions"
            f" WHERE type = 'refund' AND org_id IN ({ids})", db=self.dbname), ["0"])

    def test_worker_help_and_arguments(self):
        cp = harness.run_tenantd(["worker", "--help"], self.db_url)
        self.assertEqual(cp.returncode, 0)
        self.assertIn("tenantd worker", cp.stdout)
        self.assertIn("TENANTD_JOB_WORKERS", cp.stdout)
        cp = harness.run_tenantd(["worker", "extra"], self.db_url, env={"TENANTD_DEV": "1"})
        self.assertEqual(cp.returncode, 2, cp.stderr)
        cp = harness.run_tenantd(["worker"], self.db_url,
                                 env={"TENANTD_DEV": "1", "TENANTD_JOB_WORKERS": "0"})
        self.assertEqual(cp.returncode, 2, cp.stderr)


if __name__ == "__main__":
    unittest.main()
