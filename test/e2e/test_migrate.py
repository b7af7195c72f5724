"""`tenantd migrate` end to end: control and tenant tracks, up/down/status,
checksums, resuming after a failed schema, the advisory lock between two
runs, serve refusing an unmigrated database, and argument errors. Each test
gets its own database."""
import glob
import hashlib
import os
import re
import subprocess
import time
import unittest

import harness

MIGRATIONS = os.path.join(harness.SOURCE_DIR, "migrations")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def track_files(track):
    """{version: (name, sha256 of the .up.sql)} from the source tree."""
    out = {}
    for path in glob.glob(os.path.join(MIGRATIONS, track, "*.up.sql")):
        base = os.path.basename(path)[: -len(".up.sql")]
        version, name = base.split("_", 1)
        with open(path, "rb") as f:
            out[int(version)] = (name, hashlib.sha256(f.read()).hexdigest())
    return out


def lit(s):
    """A SQL string literal of a test-controlled string."""
    return "'" + s.replace("'", "''") + "'"


def ident(s):
    """A quoted SQL identifier of a test-controlled string."""
    return '"' + s.replace('"', '""') + '"'


class MigrateTest(unittest.TestCase):
    def setUp(self):
        self.pg = harness.cluster()
        self.dbname = self.pg.create_db()
        self.url = self.pg.url(self.dbname)
        self.control = track_files("control")
        self.tenant = track_files("tenant")

    def tearDown(self):
        self.pg.drop_db(self.dbname)

    # -- helpers --------------------------------------------------------

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def migrate(self, *args, expect=0, env=None):
        r = harness.run_tenantd(["migrate", *args], self.url, env=env)
        for mark in SANITIZER_MARKS:
            self.assertNotIn(mark, r.stderr)
        if expect is not None:
            self.assertEqual(r.returncode, expect,
                             f"migrate {' '.join(args)}: stdout={r.stdout!r} stderr={r.stderr!r}")
        return r

    def add_org(self, schema, status="active", create_schema=True):
        slug = "org-" + hashlib.sha1(schema.encode()).hexdigest()[:8]
        self.sql("INSERT INTO public.orgs (name, slug, schema_name, status) "
                 f"VALUES ({lit(slug)}, {lit(slug)}, {lit(schema)}, {lit(status)})")
        if create_schema:
            self.sql(f"CREATE SCHEMA {ident(schema)}")

    def has_table(self, schema, table):
        return self.sql(f"SELECT to_regclass({lit(ident(schema) + '.' + table)}) IS NOT NULL") == ["t"]

    def applied(self, schema="public"):
        """[(version, name, checksum)] of a schema's schema_migrations."""
        rows = self.sql(f"SELECT version, name, checksum FROM {ident(schema)}.schema_migrations "
                        "ORDER BY version")
        return [(int(v), n, c) for v, n, c in (r.split("|") for r in rows)]

    def expected(self, files):
        return [(v, n, c) for v, (n, c) in sorted(files.items())]

    def merge_patch_fns(self, schema):
        return self.sql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                        f"p.pronamespace WHERE n.nspname = {lit(schema)} "
                        "AND p.proname = 'jsonb_merge_patch'")

    def poll(self, cond, msg, timeout=30):
        deadline = time.time() + timeout
        while not cond():
            self.assertLess(time.time(), deadline, msg)
            time.sleep(0.05)

    # -- tests ----------------------------------------------------------

    def test_up_then_status(self):
        r = self.migrate("status")
        self.assertRegex(r.stdout, r"0001_orgs\s+pending")
        self.assertFalse(self.has_table("public", "schema_migrations"), "status must not write")
        r = self.migrate("up")
        self.assertIn("applied 0001_orgs", r.stdout)
        self.assertEqual(self.applied(), self.expected(self.control))
        self.assertTrue(self.has_table("public", "orgs"))
        r = self.migrate("status")
        for v, (name, _) in self.control.items():
            self.assertRegex(r.stdout, rf"{v:04d}_{name}\s+applied \d{{4}}-\d\d-\d\d ")
        self.assertNotIn("pending", r.stdout.split("tenant migrations")[0])
        # A second run finds nothing to do.
        r = self.migrate("up")
        self.assertIn("up to date", r.stdout)
        self.assertEqual(self.applied(), self.expected(self.control))

    def test_tenant_schemas(self):
        self.migrate("up")
        weird = 'tenant_We"ird name'  # needs quoting everywhere
        self.add_org("tenant_a")
        self.add_org(weird)
        self.add_org("tenant_gone", status="deleted")  # deleted: left alone
        self.add_org("tenant_missing", create_schema=False)  # no schema: skipped
        r = self.migrate("up")
        self.assertIn("tenant schemas: 2 migrated", r.stdout)
        for s in ("tenant_a", weird):
            self.assertTrue(self.has_table(s, "records"), s)
            self.assertEqual(self.applied(s), self.expected(self.tenant))
        self.assertFalse(self.has_table("tenant_gone", "records"))
        self.assertFalse(self.has_table("tenant_gone", "schema_migrations"))
        self.assertFalse(self.has_table("public", "records"))
        r = self.migrate("status")
        self.assertIn("2 schema(s): 2 current, 0 behind", r.stdout)
        self.assertRegex(r.stdout, r"0001_records\s+2 applied, 0 pending")

        latest = max(self.tenant)
        self.assertGreaterEqual(latest, 2)
        for s in ("tenant_a", weird):
            self.assertEqual(self.merge_patch_fns(s), ["1"], s)
        r = self.migrate("down", "1", "--tenant")
        for s in ("tenant_a", weird):
            self.assertEqual(self.applied(s), self.expected(self.tenant)[:-1])
            self.assertTrue(self.has_table(s, "records"), s)
            self.assertEqual(self.merge_patch_fns(s), ["0"], s)  # 0002's object
        # Every tenant step down: the objects of 0001 are gone too.
        r = self.migrate("down", str(latest - 1), "--tenant")
        for s in ("tenant_a", weird):
            self.assertEqual(self.applied(s), [])
            self.assertFalse(self.has_table(s, "records"), s)
        self.assertEqual(self.applied(), self.expected(self.control), "control untouched")
        r = self.migrate("status")
        self.assertIn("2 schema(s): 0 current, 2 behind", r.stdout)

        self.migrate("up")
        for s in ("tenant_a", weird):
            self.assertTrue(self.has_table(s, "records"), s)
            self.assertEqual(self.applied(s), self.expected(self.tenant))
        # The records table works as the record module expects.
        self.sql(f"INSERT INTO {ident(weird)}.records (collection, data) VALUES ('c', '{{}}')")
        self.assertEqual(self.sql(f"SELECT count(*) FROM {ident(weird)}.records"), ["1"])

    def test_failed_schema_rolls_back_and_rerun_resumes(self):
        self.migrate("up")
        for s in ("tenant_a", "tenant_b", "tenant_c"):
            self.add_org(s)
        self.sql("CREATE TABLE tenant_b.records (x int)")  # makes 0001_records fail there
        r = self.migrate("up", expect=1, env={"TENANTD_MIGRATE_CONCURRENCY": "1"})
        self.assertIn("tenant_b", r.stderr)
        self.assertIn("0001_records.up.sql", r.stderr)
        self.assertIn("already exists", r.stderr)
        self.assertEqual(self.applied("tenant_a"), self.expected(self.tenant))
        # The failed schema's transaction left nothing behind, not even its
        # schema_migrations; the one after it was never started.
        self.assertFalse(self.has_table("tenant_b", "schema_migrations"))
        self.assertFalse(self.has_table("tenant_c", "schema_migrations"))
        self.sql("DROP TABLE tenant_b.records")
        r = self.migrate("up")
        self.assertIn("2 migrated, 1 already current", r.stdout)
        for s in ("tenant_a", "tenant_b", "tenant_c"):
            self.assertEqual(self.applied(s), self.expected(self.tenant))

    def test_control_down_up_round_trip(self):
        self.migrate("up")
        self.add_org("tenant_a")
        self.migrate("up")
        n = len(self.control)
        r = self.migrate("down", str(n))
        self.assertIn("reverted 0001_orgs", r.stdout)
        self.assertEqual(self.applied(), [])
        self.assertFalse(self.has_table("public", "orgs"))
        self.assertEqual(self.applied("tenant_a"), self.expected(self.tenant), "tenants untouched")
        r = self.migrate("down")
        self.assertIn("nothing to revert", r.stdout)
        r = self.migrate("status")
        self.assertRegex(r.stdout, r"0001_orgs\s+pending")
        self.migrate("up")
        self.assertEqual(self.applied(), self.expected(self.control))
        self.assertTrue(self.has_table("public", "orgs"))
        # `down` with no N reverts exactly one.
        self.migrate("down")
        self.assertEqual(self.applied(), self.expected(self.control)[:-1])
        self.migrate("up")

    def test_tampered_checksum(self):
        self.migrate("up")
        self.sql("UPDATE public.schema_migrations SET checksum = 'x' WHERE version = 1")
        self.add_org("tenant_a")
        r = self.migrate("up", expect=None)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("control/0001_orgs.up.sql", r.stderr)
        self.assertIn("checksum", r.stderr)
        self.assertFalse(self.has_table("tenant_a", "records"), "nothing applied after a mismatch")
        r = self.migrate("down", expect=1)
        self.assertIn("0001_orgs.up.sql", r.stderr)
        self.assertTrue(self.has_table("public", "orgs"))
        # status shows it rather than failing: it is how one finds the file.
        r = self.migrate("status")
        self.assertRegex(r.stdout, r"0001_orgs\s+applied .*CHANGED")
        # serve refuses too.
        r = harness.run_tenantd(["serve"], self.url, env={
            "TENANTD_DEV": "1", "TENANTD_LISTEN": f"127.0.0.1:{harness.free_port()}"}, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("0001_orgs.up.sql", r.stderr)

        # Same for a tenant schema.
        self.sql(f"UPDATE public.schema_migrations SET checksum = {lit(self.control[1][1])} "
                 "WHERE version = 1")
        self.migrate("up")
        self.add_org("tenant_b")
        self.sql("UPDATE tenant_a.schema_migrations SET checksum = 'x'")
        r = self.migrate("up", expect=1)
        self.assertIn("tenant/0001_records.up.sql", r.stderr)
        self.assertIn("tenant_a", r.stderr)
        self.assertFalse(self.has_table("tenant_b", "records"), "nothing applied after a mismatch")

    def test_database_ahead_of_binary(self):
        self.migrate("up")
        future = max(self.control) + 1
        self.sql(f"INSERT INTO public.schema_migrations (version, name, checksum) "
                 f"VALUES ({future}, 'future', 'abc')")
        r = self.migrate("up", expect=1)
        self.assertIn(f"{future:04d}", r.stderr)
        self.assertIn("newer tenantd", r.stderr)
        r = self.migrate("status")
        self.assertRegex(r.stdout, rf"{future:04d}_future\s+applied .*UNKNOWN")

    def test_serve_needs_migrations(self):
        port = harness.free_port()
        t0 = time.time()
        r = harness.run_tenantd(["serve"], self.url, env={
            "TENANTD_DEV": "1", "TENANTD_LISTEN": f"127.0.0.1:{port}"}, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(time.time() - t0, 10, "serve must exit promptly")
        self.assertIn("migrate", r.stderr)
        self.assertIn("0001_orgs", r.stderr)
        self.assertFalse(self.has_table("public", "orgs"), "serve without --migrate changes nothing")

        server = harness.Server(self.url)  # serve --migrate
        try:
            server.start()
            self.assertEqual(server.get("/health").status, 200)
        finally:
            rc = server.stop()
        self.assertEqual(rc, 0, server.log())
        self.assertEqual(self.applied(), self.expected(self.control))

    def test_two_runs_at_once(self):
        """Two runs started together truly overlap: a psql session holds
        the migration lock until both runs are waiting on it (pg_locks),
        then lets go; the lock must keep serialising them from there."""
        with open(os.path.join(harness.SOURCE_DIR, "src", "db", "migrate.c")) as f:
            key = re.search(r'#define LOCK_KEY "(\d+)"', f.read()).group(1)
        waiting_sql = ("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                       "WHERE l.locktype = 'advisory' AND NOT l.granted "
                       "AND d.datname = current_database()")
        held_sql = waiting_sql.replace("NOT l.granted", "l.granted")

        def race():
            holder = subprocess.Popen([harness.PSQL, self.url, "-qAt"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, text=True)
            try:
                holder.stdin.write(f"SELECT pg_advisory_lock({key});\n")
                holder.stdin.flush()
                self.poll(lambda: self.sql(held_sql) == ["1"], "psql never took the lock")
                env = dict(os.environ, DATABASE_URL=self.url)
                procs = [subprocess.Popen([harness.BIN, "migrate", "up"], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                         for _ in range(2)]
                self.poll(lambda: self.sql(waiting_sql) == ["2"] or
                          any(p.poll() is not None for p in procs),
                          "the two runs never both waited on the lock")
                self.assertEqual([p.poll() for p in procs], [None, None],
                                 "a run ended while another session held the lock")
            finally:
                holder.stdin.close()  # psql ends its session: the lock is free
                holder.wait(10)
            outs = [p.communicate(timeout=60) for p in procs]
            for p, (out, err) in zip(procs, outs):
                self.assertEqual(p.returncode, 0, f"stdout={out!r} stderr={err!r}")
                self.assertIn("holds the lock; waiting", out + err)
                for mark in SANITIZER_MARKS:
                    self.assertNotIn(mark, err)
            return outs

        race()  # on an empty database
        self.assertEqual(self.applied(), self.expected(self.control))
        schemas = [f"tenant_{i:02d}" for i in range(20)]
        for s in schemas:
            self.add_org(s)
        outs = race()  # with tenant schemas to migrate
        migrated = sorted(int(out.split("tenant schemas: ")[1].split()[0]) for out, _ in outs)
        self.assertEqual(migrated, [0, 20], "one run did the work, the other found none")
        self.assertEqual(self.sql("SELECT version, count(*) FROM public.schema_migrations "
                                  "GROUP BY version HAVING count(*) <> 1"), [])
        for s in schemas:
            self.assertEqual(self.applied(s), self.expected(self.tenant))

    def test_bad_arguments(self):
        for args in (["sideways"], ["down", "x"], ["down", "0"], ["down", "-1"],
                     ["down", "1", "2"], ["down", "--tenant", "--tenant"], ["up", "now"],
                     ["status", "x"], []):
            r = self.migrate(*args, expect=2)
            self.assertIn("usage: tenantd migrate", r.stderr, args)
        self.assertFalse(self.has_table("public", "schema_migrations"))

    def test_cannot_connect(self):
        url = f"postgresql://tenantd@127.0.0.1:{harness.free_port()}/nowhere"
        for args in (["up"], ["status"], ["down"]):
            r = harness.run_tenantd(["migrate", *args], url,
                                    env={"TENANTD_DB_STARTUP_TIMEOUT_MS": "0"})
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("cannot connect to the database", r.stderr)


if __name__ == "__main__":
    unittest.main()
