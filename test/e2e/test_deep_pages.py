"""A list's later pages cost what its first page costs: the cursor is an
index condition on the plans tenantd's connections use (generic plans,
db/pool.c), so each page reads about one page of the org's index, not every
row newer than the cursor. Read counts come from PostgreSQL's own index and
table statistics for the class's database; no job worker runs."""
import time
import unittest

import harness
from test_users import bearer, signup

ROWS = 1000
LIMIT = 100


class DeepPagesTest(harness.DbTestCase):
    server_env = {"TENANTD_JOB_WORKERS": "0", "TENANTD_LOGIN_LIMIT": "0"}

    def reads(self, index):
        # The index's entries read, plus its table's rows read by sequential
        # scans unless another reader scans that table (the jobs metrics).
        seq = "" if index.startswith("jobs_") else " + t.seq_tup_read"
        return int(self.pg.psql(f"SELECT i.idx_tup_read{seq} FROM pg_stat_user_indexes i"
                                f" JOIN pg_stat_user_tables t USING (relid)"
                                f" WHERE i.indexrelname = '{index}'", db=self.dbname)[0])

    def settled_reads(self, index, before):
        # A backend reports its statistics within a second or so of going
        # idle; wait for the figure to move and then to stay put.
        last, still = self.reads(index), 0
        deadline = time.time() + 10
        while time.time() < deadline and (last == before or still < 3):
            time.sleep(0.5)
            now = self.reads(index)
            still = still + 1 if now == last else 0
            last = now
        return last - before

    def walk(self, path, token):
        seen, cursor = 0, None
        while True:
            q = f"{path}?limit={LIMIT}" + (f"&cursor={cursor}" if cursor else "")
            status, body, _ = self.server.json("GET", q, headers=bearer(token))
            self.assertEqual(status, 200, body)
            seen += len(body["data"])
            cursor = body["next_cursor"]
            if not cursor:
                return seen

    def check(self, path, index, fill):
        o = signup(self.server)
        self.pg.psql(fill.format(org=o["org"]["id"], n=ROWS), db=self.dbname)
        self.pg.psql(f"ANALYZE", db=self.dbname)
        time.sleep(1.5)  # earlier statements' statistics reported
        before = self.reads(index)
        seen = self.walk(path, o["access_token"])
        self.assertGreaterEqual(seen, ROWS)
        read = self.settled_reads(index, before)
        # One pass over the rows is ~ROWS reads; each page reading all the
        # rows before it (the cursor as a filter) made it ~ROWS * pages / 2.
        self.assertLess(read, 2 * ROWS, f"{read} index entries or rows read to list {seen} rows")

    def test_jobs(self):
        self.check("/v1/jobs", "jobs_org_seq_idx",
                   "INSERT INTO public.jobs (id, org_id, type, payload, cost, status, finished_at)"
                   " SELECT gen_random_uuid(), '{org}', 'deep.page', '{{}}'::jsonb, 0, 'succeeded', now()"
                   " FROM generate_series(1, {n})")

    def test_credit_ledger(self):
        self.check("/v1/credits/transactions", "credit_transactions_org_seq_idx",
                   "SELECT count(public.tenantd_credit_apply('{org}', 1, 'grant'))"
                   " FROM generate_series(1, {n})")

    def test_audit_events(self):
        self.check("/v1/audit-events", "audit_events_org_idx",
                   "INSERT INTO public.audit_events (org_id, actor_type, action)"
                   " SELECT '{org}', 'operator', 'deep.page' FROM generate_series(1, {n})")


if __name__ == "__main__":
    unittest.main()
