"""A list's later pages cost what its first page costs, and a records filter
that keeps few records reads few: tenantd's connections plan generically
(db/pool.c), so a cursor must stay an index condition on that plan, and the
records filter is planned knowing its value. Read counts come from
PostgreSQL's own index and table statistics for the class's database; no
job worker runs."""
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

    def test_records_filter_that_keeps_few(self):
        # 100,000 records, the one the filter keeps among the oldest: a plan
        # that knows the filter takes the GIN index; tenantd's generic plan
        # took the listing index and read the whole collection (seen:
        # 100,000 entries).
        o = signup(self.server)
        schema = self.pg.psql(f"SELECT schema_name FROM public.orgs WHERE id = '{o['org']['id']}'",
                              db=self.dbname)[0]
        self.pg.psql(f"""INSERT INTO "{schema}".records (collection, data, created_at)
                         SELECT 'deep', jsonb_build_object('k', i, 'tag', CASE WHEN i = 99995
                                THEN 'rare' ELSE 'common' END), now() - i * interval '1 s'
                           FROM generate_series(1, 100000) i;
                         ANALYZE "{schema}".records;""", db=self.dbname)
        # Index scans of the table (either index) and rows read (sequential
        # scans, the listing index): the list moves the first, whatever its
        # plan; the org's set-up scanned only an empty table.
        stats = ("SELECT sum(i.idx_scan), max(t.seq_tup_read)"
                 " + sum(i.idx_tup_read) FILTER (WHERE i.indexrelname <> 'records_data_idx')"
                 " FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i USING (relid)"
                 f" WHERE t.schemaname = '{schema}' AND t.relname = 'records'"
                 " AND i.indexrelname IN ('records_collection_created_idx', 'records_data_idx')")
        def now():
            return [int(x) for x in self.pg.psql(stats, db=self.dbname)[0].split("|")]
        scans0, read0 = now()
        status, body, _ = self.server.json(
            "GET", "/v1/collections/deep/records?filter=%7B%22tag%22%3A%22rare%22%7D",
            headers=bearer(o["access_token"]))
        self.assertEqual(status, 200, body)
        self.assertEqual([r["data"]["k"] for r in body["data"]], [99995])
        # A backend reports its statistics once idle, within ~10 s.
        deadline, (scans, read) = time.time() + 20, now()
        while scans == scans0 and read == read0 and time.time() < deadline:
            time.sleep(0.5)
            scans, read = now()
        self.assertTrue(scans > scans0 or read > read0, "the list's statistics never came")
        self.assertLess(read - read0, 1000, f"{read - read0} rows read for one match")

if __name__ == "__main__":
    unittest.main()
