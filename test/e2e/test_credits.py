"""Credits end to end: balance, operator grants and adjustments, metered
spend, 402 changing nothing, ledger pagination, concurrency (exactly the
balance is spent, never more) and a PostgreSQL restart under spend load.

After every test an auditor (as TigerBeetle's does) rebuilds each org's balance from
its ledger: balance == sum(amount), balance_after chains along the ledger's
order, nothing negative."""
import concurrent.futures
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

import harness
from test_users import bearer, create_key, signup

OPERATOR = "operator-token-for-credit-tests"
SERVER_ENV = {"TENANTD_LOGIN_LIMIT": "0", "TENANTD_OPERATOR_TOKEN": OPERATOR}
TX_FIELDS = {"id", "amount", "type", "balance_after", "job_id", "description", "reference",
             "created_at"}


def op_headers(**extra):
    return bearer(OPERATOR, **extra)


def audit(pg, db):
    """Problems with the ledger of every org, as a list of strings (empty when
    every invariant holds)."""
    bad = pg.psql("""
        SELECT 'balance ' || a.org_id || ': ' || a.balance || ' <> ledger ' || coalesce(l.s, 0)
          FROM public.credit_accounts a
          LEFT JOIN (SELECT org_id, sum(amount) s FROM public.credit_transactions GROUP BY org_id) l
            ON l.org_id = a.org_id
         WHERE a.balance <> coalesce(l.s, 0) OR a.balance < 0
        UNION ALL
        SELECT 'chain ' || t.org_id || ' seq ' || t.seq
          FROM (SELECT org_id, seq, balance_after,
                       sum(amount) OVER (PARTITION BY org_id ORDER BY seq) AS running
                  FROM public.credit_transactions) t
         WHERE t.balance_after <> t.running OR t.balance_after < 0
        UNION ALL
        SELECT 'ledger without account ' || t.org_id FROM public.credit_transactions t
         WHERE NOT EXISTS (SELECT 1 FROM public.credit_accounts a WHERE a.org_id = t.org_id)
    """, db=db)
    return bad


class CreditsCase(harness.DbTestCase):
    server_env = SERVER_ENV

    def tearDown(self):
        self.assertEqual(audit(self.pg, self.dbname), [], "ledger invariants broken")

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def new_org(self, credits=0):
        org = signup(self.server)
        org["token"] = org["access_token"]
        if credits:
            self.grant(org, credits)
        return org

    def grant(self, org, amount, description=None, headers=None):
        body = {"amount": amount}
        if description is not None:
            body["description"] = description
        status, tx, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits", body,
                                         op_headers(**(headers or {})))
        self.assertEqual(status, 201, tx)
        return tx

    def balance(self, org):
        status, body, _ = self.server.json("GET", "/v1/credits", None, bearer(org["token"]))
        self.assertEqual(status, 200, body)
        return body["balance"]

    def ledger(self, org):
        return self.sql("SELECT amount || ':' || type FROM public.credit_transactions "
                        f"WHERE org_id = '{org['org']['id']}' ORDER BY seq")

    def spend(self, org, amount, token=None, headers=None, **extra):
        body = {"amount": amount, **extra}
        return self.server.json("POST", "/v1/credits/spend", body,
                                bearer(token or org["token"], **(headers or {})))

    def assertProblem(self, status, body, want, code):
        self.assertEqual(status, want, body)
        self.assertEqual(body["code"], code, body)


class CreditsTest(CreditsCase):
    def test_new_org_has_zero_balance(self):
        org = self.new_org()
        status, body, r = self.server.json("GET", "/v1/credits", None, bearer(org["token"]))
        self.assertEqual(status, 200, body)
        self.assertEqual(set(body), {"balance", "updated_at"})
        self.assertEqual(body["balance"], 0)
        self.assertRegex(body["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

    def test_operator_grant_then_spend(self):
        org = self.new_org()
        tx = self.grant(org, 500, "welcome")
        self.assertEqual(set(tx), TX_FIELDS)
        self.assertEqual((tx["amount"], tx["type"], tx["balance_after"]), (500, "grant", 500))
        self.assertEqual(tx["description"], "welcome")
        self.assertIsNone(tx["job_id"])
        self.assertEqual(self.balance(org), 500)

        key = create_key(self.server, org["token"], role="member")["key"]
        status, tx, r = self.spend(org, 120, token=key, description="api calls", reference="inv-1")
        self.assertEqual(status, 201, tx)
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        self.assertEqual(set(tx), TX_FIELDS)
        self.assertEqual((tx["amount"], tx["type"], tx["balance_after"]), (-120, "spend", 380))
        self.assertEqual((tx["description"], tx["reference"]), ("api calls", "inv-1"))
        # The admin user may spend too.
        status, tx, _ = self.spend(org, 80)
        self.assertEqual(status, 201, tx)
        self.assertEqual(tx["balance_after"], 300)
        self.assertEqual(self.balance(org), 300)
        self.assertEqual(self.ledger(org), ["500:grant", "-120:spend", "-80:spend"])

    def test_insufficient_balance_is_402_and_changes_nothing(self):
        org = self.new_org(credits=10)
        before = self.sql("SELECT balance || '|' || updated_at FROM public.credit_accounts "
                          f"WHERE org_id = '{org['org']['id']}'")
        ledger = self.ledger(org)
        for amount in (11, 1000, 10 ** 15):
            status, body, r = self.spend(org, amount)
            self.assertProblem(status, body, 402, "payment_required")
            self.assertEqual(r.getheader("Content-Type"), "application/problem+json")
        after = self.sql("SELECT balance || '|' || updated_at FROM public.credit_accounts "
                         f"WHERE org_id = '{org['org']['id']}'")
        self.assertEqual(before, after)
        self.assertEqual(self.ledger(org), ledger)
        # Exactly the balance is fine; then nothing more.
        status, tx, _ = self.spend(org, 10)
        self.assertEqual(status, 201, tx)
        self.assertEqual(tx["balance_after"], 0)
        status, body, _ = self.spend(org, 1)
        self.assertProblem(status, body, 402, "payment_required")
        self.assertEqual(self.balance(org), 0)

    def test_spend_validation(self):
        org = self.new_org(credits=100)
        cases = [
            ({}, "amount"), ({"amount": 0}, "amount"), ({"amount": -5}, "amount"),
            ({"amount": 1.5}, "amount"), ({"amount": 2.0}, "amount"), ({"amount": "5"}, "amount"),
            ({"amount": True}, "amount"), ({"amount": None}, "amount"),
            ({"amount": 10 ** 15 + 1}, "amount"),
            ({"amount": 1, "reference": ""}, "reference"),
            ({"amount": 1, "reference": "r" * 256}, "reference"),
            ({"amount": 1, "reference": 7}, "reference"),
            ({"amount": 1, "description": "d" * 1001}, "description"),
            ({"amount": 1, "description": "a\u0000b"}, "description"),
            ({"amount": 1, "description": ["x"]}, "description"),
            ({"amount": 1, "type": "grant"}, "type"),
            ({"amount": 1, "balance": 5}, "balance"),
        ]
        for body, field in cases:
            with self.subTest(body=body):
                status, answer, _ = self.server.json("POST", "/v1/credits/spend", body,
                                                     bearer(org["token"]))
                self.assertProblem(status, answer, 422, "validation_failed")
                self.assertIn(field, [e["field"] for e in answer["errors"]])
        for raw in (b"", b"not json", b"[1]", b"5", b'{"amount": 1, "amount": 2}',
                    b'{"amount": 99999999999999999999999}'):
            with self.subTest(raw=raw):
                r = self.server.request("POST", "/v1/credits/spend", raw,
                                        bearer(org["token"], **{"Content-Type": "application/json"}))
                self.assertEqual(r.status, 400, r.body)
                self.assertEqual(json.loads(r.body)["code"], "bad_request")
        # Limits hold exactly at the edge: 1000 characters (not bytes) of description.
        status, tx, _ = self.spend(org, 1, description="é" * 1000, reference="r" * 255)
        self.assertEqual(status, 201, tx)
        self.assertEqual(tx["description"], "é" * 1000)
        self.assertEqual(self.balance(org), 99)

    def test_who_may_do_what(self):
        org = self.new_org(credits=50)
        other = self.new_org(credits=50)
        member_key = create_key(self.server, org["token"], role="member")["key"]
        # A member key may read and (as an API key) spend.
        status, body, _ = self.server.json("GET", "/v1/credits", None, bearer(member_key))
        self.assertEqual((status, body["balance"]), (200, 50))
        # No credential: 401 for all four routes; the operator route refuses org credentials.
        for method, path, body in (("GET", "/v1/credits", None),
                                   ("GET", "/v1/credits/transactions", None),
                                   ("POST", "/v1/credits/spend", {"amount": 1}),
                                   ("POST", f"/v1/admin/orgs/{org['slug']}/credits", {"amount": 1})):
            with self.subTest(path=path):
                status, answer, _ = self.server.json(method, path, body)
                self.assertProblem(status, answer, 401, "unauthorized")
        status, answer, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                             {"amount": 1000}, bearer(org["token"]))
        self.assertIn(status, (401, 403), answer)
        # The operator has no org of its own: org routes are not for it.
        status, answer, _ = self.server.json("POST", "/v1/credits/spend", {"amount": 1}, op_headers())
        self.assertIn(status, (401, 403), answer)
        # Another org's X-Org-Name is 403; its ledger is never visible.
        status, answer, _ = self.server.json("GET", "/v1/credits/transactions", None,
                                             bearer(org["token"], **{"X-Org-Name": other["slug"]}))
        self.assertProblem(status, answer, 403, "forbidden")
        self.spend(other, 7)
        status, page, _ = self.server.json("GET", "/v1/credits/transactions", None,
                                           bearer(org["token"]))
        self.assertEqual([t["amount"] for t in page["data"]], [50])
        self.assertEqual(self.balance(org), 50)
        self.assertEqual(self.balance(other), 43)

    def test_member_user_may_not_spend(self):
        from test_users import user_with_token
        org = self.new_org(credits=5)
        _, member_token, _ = user_with_token(self.server, org["token"], org["slug"], role="member")
        status, body, _ = self.server.json("GET", "/v1/credits", None, bearer(member_token))
        self.assertEqual(status, 200, body)
        status, body, _ = self.spend(org, 1, token=member_token)
        self.assertProblem(status, body, 403, "forbidden")
        self.assertEqual(self.balance(org), 5)

    def test_operator_adjustments(self):
        org = self.new_org(credits=100)
        status, tx, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug'].upper()}/credits",
                                         {"amount": -30, "description": "correction"}, op_headers())
        self.assertEqual(status, 201, tx)
        self.assertEqual((tx["amount"], tx["type"], tx["balance_after"]), (-30, "adjustment", 70))
        # Below zero: 409, nothing changes.
        status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                           {"amount": -71}, op_headers())
        self.assertProblem(status, body, 409, "conflict")
        self.assertEqual(self.balance(org), 70)
        status, tx, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                         {"amount": -70}, op_headers())
        self.assertEqual((status, tx["balance_after"]), (201, 0), tx)
        for body in ({"amount": 0}, {"amount": 1.5}, {}, {"amount": 10 ** 15 + 1},
                     {"amount": -(10 ** 15) - 1}, {"amount": 5, "reference": "x"}):
            with self.subTest(body=body):
                status, answer, _ = self.server.json(
                    "POST", f"/v1/admin/orgs/{org['slug']}/credits", body, op_headers())
                self.assertProblem(status, answer, 422, "validation_failed")
        for slug in ("no-such-org-here", "x" * 101, "%00"):
            with self.subTest(slug=slug):
                status, answer, _ = self.server.json("POST", f"/v1/admin/orgs/{slug}/credits",
                                                     {"amount": 5}, op_headers())
                self.assertProblem(status, answer, 404, "not_found")
        self.assertEqual(self.ledger(org), ["100:grant", "-30:adjustment", "-70:adjustment"])

    def test_grant_beyond_bigint_is_409(self):
        org = self.new_org()
        big = 2 ** 63 - 1 - 10 ** 14
        self.sql(f"SELECT public.tenantd_credit_apply('{org['org']['id']}', {big}, 'grant')")
        status, body, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                           {"amount": 10 ** 15}, op_headers())
        self.assertProblem(status, body, 409, "conflict")
        self.assertEqual(self.balance(org), big)
        self.assertEqual(self.ledger(org), [f"{big}:grant"])

    def test_transactions_pagination(self):
        org = self.new_org(credits=1000)
        for i in range(24):
            status, tx, _ = self.spend(org, i + 1, reference=f"r{i}")
            self.assertEqual(status, 201, tx)
        expected = self.sql("SELECT id FROM public.credit_transactions "
                            f"WHERE org_id = '{org['org']['id']}' ORDER BY seq DESC")
        self.assertEqual(len(expected), 25)
        # Default page size 20, newest first.
        status, page, _ = self.server.json("GET", "/v1/credits/transactions", None,
                                           bearer(org["token"]))
        self.assertEqual(status, 200, page)
        self.assertEqual(set(page), {"data", "next_cursor"})
        self.assertEqual([t["id"] for t in page["data"]], expected[:20])
        self.assertEqual(page["data"][0]["reference"], "r23")
        for t in page["data"]:
            self.assertEqual(set(t), TX_FIELDS)
        # Pages of 7, with inserts between pages: no duplicates, no gaps.
        seen, cursor, pages = [], None, 0
        while True:
            q = "/v1/credits/transactions?limit=7" + (f"&cursor={cursor}" if cursor else "")
            status, page, _ = self.server.json("GET", q, None, bearer(org["token"]))
            self.assertEqual(status, 200, page)
            seen += [t["id"] for t in page["data"]]
            pages += 1
            self.spend(org, 1, reference=f"during-{pages}")
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, expected)
        self.assertEqual(pages, 4)
        # The balance_after of consecutive rows chains (newest first).
        status, page, _ = self.server.json("GET", "/v1/credits/transactions?limit=100", None,
                                           bearer(org["token"]))
        data = page["data"]
        self.assertIsNone(page["next_cursor"])
        for newer, older in zip(data, data[1:]):
            self.assertEqual(newer["balance_after"], older["balance_after"] + newer["amount"])
        # An exact multiple of the page size ends with next_cursor null, not an empty page.
        other = self.new_org(credits=10)
        self.spend(other, 1)
        status, page, _ = self.server.json("GET", "/v1/credits/transactions?limit=2", None,
                                           bearer(other["token"]))
        self.assertEqual((len(page["data"]), page["next_cursor"]), (2, None))

    def test_transactions_bad_parameters(self):
        org = self.new_org(credits=3)
        for q in ("limit=0", "limit=101", "limit=abc", "limit=-1", "limit=1.5", "limit=",
                  "limit=%2B5", "limit=05",
                  "cursor=", "cursor=zzz", "cursor=%00", "cursor=czI%3D", "cursor=" + "A" * 40,
                  "cursor=czA", "cursor=eDE"):
            with self.subTest(q=q):
                status, body, _ = self.server.json("GET", "/v1/credits/transactions?" + q, None,
                                                   bearer(org["token"]))
                self.assertProblem(status, body, 422, "validation_failed")

    def test_ledger_is_append_only_and_job_entries_unique(self):
        """The SQL functions jobs use: a deduction per job, one refund at most,
        TD402 when short; the ledger refuses UPDATE and DELETE."""
        org = self.new_org(credits=10)
        oid = org["org"]["id"]
        job = str(uuid.uuid4())
        self.sql(f"SELECT public.tenantd_credit_apply('{oid}', -4, 'deduction', '{job}', 'job')")
        with self.assertRaises(subprocess.CalledProcessError) as cm:
            self.sql(f"SELECT public.tenantd_credit_apply('{oid}', -1, 'deduction', '{job}')")
        self.assertIn("duplicate key", cm.exception.stderr)
        refund = self.sql(f"SELECT amount FROM public.tenantd_credit_refund_job('{oid}', '{job}')")
        self.assertEqual(refund, ["4"])
        again = self.sql(f"SELECT id IS NULL FROM public.tenantd_credit_refund_job('{oid}', '{job}')")
        self.assertEqual(again, ["t"])
        never = self.sql("SELECT id IS NULL FROM public.tenantd_credit_refund_job("
                         f"'{oid}', '{uuid.uuid4()}')")
        self.assertEqual(never, ["t"])
        with self.assertRaises(subprocess.CalledProcessError) as cm:
            self.sql(f"SELECT public.tenantd_credit_apply('{oid}', -11, 'deduction', "
                     f"'{uuid.uuid4()}')")
        self.assertIn("insufficient credits", cm.exception.stderr)
        code = self.sql(f"""DO $$ BEGIN
            PERFORM public.tenantd_credit_apply('{oid}', -11, 'spend');
            EXCEPTION WHEN SQLSTATE 'TD402' THEN RAISE NOTICE 'caught'; END $$;
            SELECT 'ok'""")
        self.assertEqual(code, ["ok"])
        for bad in ("5, 'spend'", "-5, 'grant'", "-5, 'refund'", "0, 'adjustment'", "5, 'gift'"):
            with self.subTest(bad=bad), self.assertRaises(subprocess.CalledProcessError) as cm:
                self.sql(f"SELECT public.tenantd_credit_apply('{oid}', {bad})")
            self.assertIn("not a valid ledger entry", cm.exception.stderr)
        for stmt in (f"UPDATE public.credit_transactions SET amount = 1000 WHERE org_id = '{oid}'",
                     f"DELETE FROM public.credit_transactions WHERE org_id = '{oid}'"):
            with self.subTest(stmt=stmt), self.assertRaises(subprocess.CalledProcessError) as cm:
                self.sql(stmt)
            self.assertIn("append-only", cm.exception.stderr)
        self.assertEqual(self.balance(org), 10)


class CreditsConcurrencyTest(CreditsCase):
    server_env = dict(SERVER_ENV, TENANTD_THREADS="2")

    THREADS = 64
    PER_THREAD = 20  # 64 * 20 = 1280 attempts against 1000 credits

    def _run_threads(self, worker):
        barrier = threading.Barrier(self.THREADS)
        with concurrent.futures.ThreadPoolExecutor(self.THREADS) as ex:
            futures = [ex.submit(worker, i, barrier) for i in range(self.THREADS)]
            return [f.result() for f in futures]

    def _conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)

    def _post(self, conn, token, body, key=None):
        h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if key:
            h["Idempotency-Key"] = key
        conn.request("POST", "/v1/credits/spend", body=json.dumps(body), headers=h)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Idempotent-Replayed")

    def test_exactly_the_balance_is_spent(self):
        org = self.new_org(credits=1000)
        keys = [create_key(self.server, org["token"], name=f"k{i}")["key"] for i in range(4)]

        def worker(i, barrier):
            conn = self._conn()
            out = {}
            barrier.wait()
            for _ in range(self.PER_THREAD):
                status, _, _ = self._post(conn, keys[i % 4], {"amount": 1})
                out[status] = out.get(status, 0) + 1
            conn.close()
            return out

        totals = {}
        for out in self._run_threads(worker):
            for k, v in out.items():
                totals[k] = totals.get(k, 0) + v
        self.assertEqual(totals, {201: 1000, 402: self.THREADS * self.PER_THREAD - 1000})
        self.assertEqual(self.balance(org), 0)
        rows = self.sql("SELECT count(*) || '|' || sum(amount) FROM public.credit_transactions "
                        f"WHERE org_id = '{org['org']['id']}'")
        self.assertEqual(rows, ["1001|0"])

    def test_exactly_the_balance_is_spent_with_idempotent_replays(self):
        org = self.new_org(credits=1000)
        token = create_key(self.server, org["token"], name="k")["key"]

        def worker(i, barrier):
            conn = self._conn()
            ok, short, replays = {}, 0, 0
            barrier.wait()
            for n in range(self.PER_THREAD):
                key = f"t{i}-{n}-{uuid.uuid4().hex[:8]}"
                body = {"amount": 1, "reference": key}
                status, raw, replayed = self._post(conn, token, body, key)
                if status == 201:
                    self.assertIsNone(replayed)
                    ok[key] = raw
                    # Replay it (sometimes twice): same bytes, flagged, nothing spent.
                    for _ in range(1 + n % 2):
                        s2, raw2, replayed2 = self._post(conn, token, body, key)
                        self.assertEqual((s2, raw2, replayed2), (201, raw, "true"))
                        replays += 1
                else:
                    self.assertEqual(status, 402, raw)
                    short += 1
            conn.close()
            return ok, short, replays

        ok, short, replays = {}, 0, 0
        for o, s, r in self._run_threads(worker):
            ok.update(o)
            short += s
            replays += r
        self.assertEqual(len(ok), 1000)
        self.assertEqual(short, self.THREADS * self.PER_THREAD - 1000)
        self.assertGreaterEqual(replays, 1000)
        self.assertEqual(self.balance(org), 0)
        rows = self.sql("SELECT count(*) || '|' || sum(amount) || '|' || count(DISTINCT reference) "
                        f"FROM public.credit_transactions WHERE org_id = '{org['org']['id']}'")
        self.assertEqual(rows, ["1001|0|1000"])
        stored = self.sql("SELECT count(*) FROM public.idempotency_keys "
                          f"WHERE org_id = '{org['org']['id']}' AND status = 'done'")
        self.assertEqual(stored, ["1000"])  # the 402s did not use up their keys
        # Every stored answer is the transaction with that reference.
        for key, raw in list(ok.items())[:50]:
            self.assertEqual(json.loads(raw)["reference"], key)

    def test_many_orgs_in_parallel(self):
        orgs = [self.new_org(credits=100) for _ in range(8)]

        def worker(i, barrier):
            org = orgs[i % len(orgs)]
            conn = self._conn()
            barrier.wait()
            res = [self._post(conn, org["token"], {"amount": 1})[0] for _ in range(16)]
            conn.close()
            return res

        results = [s for r in self._run_threads(worker) for s in r]
        # 8 threads per org * 16 = 128 attempts per org of 100 credits.
        self.assertEqual(results.count(201), 800)
        self.assertEqual(results.count(402), 64 * 16 - 800)
        for org in orgs:
            self.assertEqual(self.balance(org), 0)


class CreditsTimeoutTest(CreditsCase):
    """A spend stuck behind a row lock past the statement timeout is 503 with
    Retry-After, applies nothing and leaves its Idempotency-Key unused."""
    server_env = dict(SERVER_ENV, TENANTD_DB_STATEMENT_TIMEOUT_MS="500")

    def test_timeout_applies_nothing(self):
        org = self.new_org(credits=20)
        app = "credits-lock-holder-" + org["org"]["id"][:8]
        holder = subprocess.Popen(
            [harness.PSQL, self.db_url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c",
             "BEGIN; SELECT 1 FROM public.credit_accounts "
             f"WHERE org_id = '{org['org']['id']}' FOR UPDATE; SELECT pg_sleep(2); COMMIT;"],
            env=dict(os.environ, PGAPPNAME=app),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # In pg_sleep means past the FOR UPDATE: the row is locked. (Other
            # tests run at the same time: match this holder only.)
            deadline = time.time() + 10
            while self.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           f"'{app}' AND wait_event = 'PgSleep'") != ["1"]:
                self.assertLess(time.time(), deadline, "the lock holder never got its lock")
                time.sleep(0.02)
            status, body, r = self.spend(org, 5, headers={"Idempotency-Key": "slow"})
            self.assertProblem(status, body, 503, "unavailable")
            self.assertEqual(r.getheader("Retry-After"), "1")
        finally:
            holder.wait(30)
        self.assertEqual(self.balance(org), 20)
        self.assertEqual(self.ledger(org), ["20:grant"])
        status, tx, r = self.spend(org, 5, headers={"Idempotency-Key": "slow"})
        self.assertEqual(status, 201, tx)
        self.assertIsNone(r.getheader("Idempotent-Replayed"))
        self.assertEqual(self.balance(org), 15)


class CreditsPgRestartTest(unittest.TestCase):
    """PostgreSQL restarted (fast shutdown) under spend load: every spend that
    got 201 is in the ledger, none that got anything else is, and the ledger
    invariants hold."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tenantd-credits-pg-")
        os.chmod(cls.tmp, 0o755)  # the postgres OS user must reach its data folder
        cls.pg = harness.PgCluster(data_dir=os.path.join(cls.tmp, "pg"), port=harness.free_port())
        cls.pg.start()
        cls.dbname = cls.pg.create_db()
        cls.server = harness.Server(cls.pg.url(cls.dbname),
                                    env=dict(SERVER_ENV, TENANTD_DB_RECONNECT_MAX_MS="200",
                                             TENANTD_DB_WAIT_TIMEOUT_MS="200")).start()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.server:
                rc = cls.server.stop()
                if rc != 0:
                    raise AssertionError(f"tenantd exited with {rc}:\n{cls.server.log()}")
        finally:
            try:
                cls.pg.stop()
            finally:
                shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_restart_under_spend_load(self):
        org = signup(self.server)
        token = org["access_token"]
        status, _, _ = self.server.json("POST", f"/v1/admin/orgs/{org['slug']}/credits",
                                        {"amount": 1000000}, op_headers())
        self.assertEqual(status, 201)
        stop = threading.Event()
        results = []  # (reference, status or None for a transport error)
        lock = threading.Lock()

        def worker():
            conn = None
            while not stop.is_set():
                ref = uuid.uuid4().hex
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
                    conn.request("POST", "/v1/credits/spend",
                                 body=json.dumps({"amount": 1, "reference": ref}),
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    st = r.status
                except (OSError, http.client.HTTPException):
                    st = None
                    if conn is not None:
                        conn.close()
                    conn = None
                with lock:
                    results.append((ref, st))
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            self.pg._run("stop")
            # Longer than the pool's wait timeout: requests meanwhile get 503.
            time.sleep(1.5)
            self.pg.start()
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        statuses = [s for _, s in results]
        self.assertGreater(statuses.count(201), 10, "no spends succeeded")
        self.assertTrue(any(s != 201 for s in statuses), "the restart was not noticed")
        for s in statuses:
            self.assertIn(s, (201, 503), f"unexpected answers: {sorted(set(map(str, statuses)))}")
        # After the restart spends work again.
        deadline = time.time() + 15
        while time.time() < deadline:
            st, _, _ = self.server.json("POST", "/v1/credits/spend", {"amount": 1, "reference": "after"},
                                        bearer(token))
            if st == 201:
                break
            time.sleep(0.2)
        self.assertEqual(st, 201)
        in_ledger = set(self.pg.psql(
            "SELECT reference FROM public.credit_transactions "
            f"WHERE org_id = '{org['org']['id']}' AND type = 'spend'", db=self.dbname))
        ok = {ref for ref, s in results if s == 201}
        failed = {ref for ref, s in results if s != 201}
        self.assertEqual(ok - in_ledger, set(), "a 201 spend is missing from the ledger")
        # A spend in flight when the server stopped may have committed with
        # its answer lost (the backend ends between COMMIT and sending the
        # result): the client saw 503, "may or may not have run", which is
        # what Idempotency-Key is for. At most one such spend per client
        # (8), each answered 503; every other failed spend is absent.
        unknown = failed & in_ledger
        self.assertLessEqual(len(unknown), 8, "failed spends in the ledger beyond those in flight")
        self.assertTrue(all(s == 503 for ref, s in results if ref in unknown), results)
        self.assertEqual(in_ledger, ok | unknown | {"after"})
        self.assertEqual(audit(self.pg, self.dbname), [])
        # Money is conserved: the balance is what the ledger says was spent.
        balance = self.pg.psql("SELECT balance FROM public.credit_accounts "
                               f"WHERE org_id = '{org['org']['id']}'", db=self.dbname)
        self.assertEqual(balance, [str(1000000 - len(in_ledger))])


if __name__ == "__main__":
    unittest.main()
