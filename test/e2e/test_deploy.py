"""Deploys (issue 14): expand/contract (a binary serving on a database up
to TENANTD_COMPATIBLE_AHEAD compatible migrations newer than itself, and
refusing anything else), the SIGTERM shutdown delay, the version and commit
in --version and /metrics, the healthcheck subcommand, and `migrate status`
from the tenant versions recorded in the control schema (--json too)."""
import glob
import json
import os
import signal
import subprocess
import threading
import time
import unittest

import harness

MIGRATIONS = os.path.join(harness.SOURCE_DIR, "migrations")


def latest(track):
    return max(int(os.path.basename(p)[:4])
               for p in glob.glob(os.path.join(MIGRATIONS, track, "*.up.sql")))


CONTROL = latest("control")
TENANT = latest("tenant")


def signup(server, name):
    status, body, _ = server.json("POST", "/v1/orgs", {
        "name": name, "admin": {"email": f"admin@{name.lower()}.test",
                                "password": "correct horse battery"}})
    assert status == 201, body
    return body


class ExpandContractTest(unittest.TestCase):
    """Each test gets its own migrated database."""

    def setUp(self):
        self.pg = harness.cluster()
        self.dbname = self.pg.create_db()
        self.url = self.pg.url(self.dbname)
        r = harness.run_tenantd(["migrate", "up"], self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            if s.proc and s.proc.poll() is None:
                s.stop()
        self.pg.drop_db(self.dbname)

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def serve(self, env=None, wait=True):
        s = harness.Server(self.url, args=("serve",),
                           env=dict({"TENANTD_JOB_WORKERS": "0"}, **(env or {})))
        self.servers.append(s)
        return s.start(wait=wait)

    def serve_refused(self, env=None):
        s = self.serve(env, wait=False)
        s.proc.wait(30)
        self.assertEqual(s.proc.returncode, 1, s.log())
        return s.log()

    def newer_control(self, n=1, compatible=True):
        for i in range(1, n + 1):
            self.sql("INSERT INTO public.schema_migrations (version, name, checksum, compatible) "
                     f"VALUES ({CONTROL + i}, 'future_{i}', 'x', {str(compatible).lower()})")

    def test_old_binary_on_compatible_migration_ahead(self):
        """The old binary (this one) on a database a newer binary migrated
        one compatible migration further: ready, serving, and it says so."""
        running = self.serve()
        self.assertEqual(running.get("/ready").status, 200)
        self.newer_control(1)
        status, body, _ = running.json("GET", "/ready")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"status": "ready", "schema": "1 compatible migration(s) ahead"})
        # A restart of the old binary (a rolling deploy's old replicas) too.
        restarted = self.serve()
        self.assertIn("compatible migration(s) ahead of this binary", restarted.log())
        self.assertEqual(restarted.get("/ready").status, 200)
        token = signup(restarted, "Ahead")["access_token"]
        status, me, _ = restarted.json("GET", "/v1/auth/me",
                                       headers={"Authorization": "Bearer " + token})
        self.assertEqual(status, 200, me)
        # Nor does a restart with --migrate (TENANTD_MIGRATE_ON_START=1 in
        # the image): nothing to apply, it serves.
        s = harness.Server(self.url, args=("serve", "--migrate"), env={"TENANTD_JOB_WORKERS": "0"})
        self.servers.append(s)
        s.start()
        self.assertIn("nothing to migrate", s.log())
        self.assertEqual(s.get("/ready").status, 200)
        # But it never migrates a database newer than itself.
        r = harness.run_tenantd(["migrate", "up"], self.url)
        self.assertEqual(r.returncode, 1)
        self.assertIn("newer tenantd", r.stderr)

    def test_incompatible_or_too_far_ahead_refused(self):
        running = self.serve()
        self.newer_control(1, compatible=False)
        status, body, _ = running.json("GET", "/ready")
        self.assertEqual(status, 503, body)
        self.assertIn("not marked compatible", body["detail"])
        log = self.serve_refused()
        self.assertIn("not marked compatible", log)
        self.sql(f"UPDATE public.schema_migrations SET compatible = true WHERE version > {CONTROL}")
        self.sql("INSERT INTO public.schema_migrations (version, name, checksum, compatible) "
                 f"VALUES ({CONTROL + 2}, 'future_2', 'x', true)")
        # Two compatible ahead: the default (3) accepts, 1 does not.
        self.assertEqual(running.get("/ready").status, 200)
        log = self.serve_refused({"TENANTD_COMPATIBLE_AHEAD": "1"})
        self.assertIn("TENANTD_COMPATIBLE_AHEAD is 1", log)
        self.assertEqual(self.serve().get("/ready").status, 200)

    def test_tenant_schemas_ahead(self):
        running = self.serve()
        signup(running, "Tenant")
        recorded = self.sql("SELECT version FROM public.tenant_schema_versions")
        self.assertEqual(recorded, [str(TENANT)], "signup records its schema's version")
        # A newer binary applied one more tenant migration, marked compatible.
        self.sql("INSERT INTO public.tenant_migrations (version, name, compatible) "
                 f"VALUES ({TENANT + 1}, 'future', true)")
        self.sql(f"UPDATE public.tenant_schema_versions SET version = {TENANT + 1}")
        s = self.serve()
        self.assertIn("tenant %04d (compatible, ahead)" % (TENANT + 1), s.log())
        s.stop()
        self.sql(f"UPDATE public.tenant_migrations SET compatible = false "
                 f"WHERE version = {TENANT + 1}")
        log = self.serve_refused()
        self.assertIn("not all of those migrations are marked compatible", log)

    def test_compatible_marks_recorded(self):
        """The marking: `-- tenantd: compatible` as the first line of an
        .up.sql; `migrate up` records it (0009 is marked itself)."""
        marked = []
        for p in sorted(glob.glob(os.path.join(MIGRATIONS, "control", "*.up.sql"))):
            with open(p) as f:
                if f.readline().rstrip("\n") == "-- tenantd: compatible":
                    marked.append(int(os.path.basename(p)[:4]))
        self.assertIn(9, marked)
        rows = self.sql("SELECT version FROM public.schema_migrations WHERE compatible "
                        "ORDER BY version")
        self.assertEqual([int(v) for v in rows], marked)
        self.assertEqual(self.sql("SELECT count(*) FROM public.tenant_migrations"), [str(TENANT)])

    def test_status_json_and_one_query(self):
        running = self.serve()
        for name in ("One", "Two"):
            signup(running, name)
        r = harness.run_tenantd(["migrate", "status", "--json"], self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertTrue(doc["up_to_date"])
        self.assertEqual(doc["control"]["binary_version"], CONTROL)
        self.assertEqual(len(doc["control"]["migrations"]), CONTROL)
        self.assertTrue(all(m["state"] == "applied" for m in doc["control"]["migrations"]))
        t = doc["tenant"]
        self.assertEqual((t["schemas"], t["current"], t["behind"], t["recorded"]), (2, 2, 0, True))
        self.assertEqual([m["applied"] for m in t["migrations"]], [2] * TENANT)
        # The recorded versions are what status reads: a schema put behind
        # by `migrate down --tenant` shows up, and `up` brings it back.
        r = harness.run_tenantd(["migrate", "down", "--tenant"], self.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(harness.run_tenantd(["migrate", "status", "--json"], self.url).stdout)
        self.assertEqual((doc["tenant"]["behind"], doc["up_to_date"]), (2, False))
        self.assertEqual(doc["tenant"]["migrations"][-1]["pending"], 2)
        log = self.serve_refused()
        self.assertIn("2 of 2 tenant schema(s) behind", log)
        self.assertEqual(harness.run_tenantd(["migrate", "up"], self.url).returncode, 0)
        r = harness.run_tenantd(["migrate", "status"], self.url)
        self.assertIn("2 schema(s): 2 current, 0 behind", r.stdout)
        self.assertIn("from public.tenant_schema_versions", r.stdout)
        # A schema nobody recorded (made by hand) is read directly.
        self.sql("DELETE FROM public.tenant_schema_versions WHERE schema_name = "
                 "(SELECT min(schema_name) FROM public.tenant_schema_versions)")
        doc = json.loads(harness.run_tenantd(["migrate", "status", "--json"], self.url).stdout)
        self.assertEqual((doc["tenant"]["current"], doc["tenant"]["recorded"]), (2, False))
        r = harness.run_tenantd(["migrate", "status", "--yaml"], self.url)
        self.assertEqual(r.returncode, 2)

    def test_progress_lines_off_a_terminal(self):
        for i in range(40):
            self.sql(f"INSERT INTO public.orgs (name, slug, schema_name) VALUES "
                     f"('p{i}', 'p{i}', 'tenant_p{i}'); CREATE SCHEMA tenant_p{i}")
        # Each schema's migration waits on a lock long enough that the run
        # takes over 5 s, so a progress line is due.
        locker = subprocess.Popen(
            [harness.PSQL, self.url, "-qAt", "-c",
             "BEGIN; LOCK TABLE public.tenant_schema_versions IN EXCLUSIVE MODE; "
             "SELECT pg_sleep(6); COMMIT"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.time()
        r = harness.run_tenantd(["migrate", "up"], self.url, env={
            "TENANTD_MIGRATE_CONCURRENCY": "2"})
        locker.wait(30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(time.time() - t0, 5)
        lines = [l for l in r.stderr.splitlines() if l.startswith("tenant schemas: ")]
        self.assertTrue(lines, r.stderr)
        self.assertRegex(lines[0], r"^tenant schemas: \d+/40 \(\d+%\), [\d.]+/s, ETA \d+ s$")
        self.assertIn("40 migrated", r.stdout)


class ShutdownDelayTest(harness.DbTestCase):
    server_env = {"TENANTD_SHUTDOWN_DELAY_MS": "1500", "TENANTD_JOB_WORKERS": "0"}

    def test_ready_fails_while_serving_goes_on(self):
        s = self.server
        self.assertEqual(s.get("/ready").status, 200)
        t0 = time.time()
        s.signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body, _ = s.json("GET", "/ready")
        self.assertEqual(status, 503, body)
        self.assertIn("shutting down", body["detail"])
        # New connections are still accepted and answered during the delay.
        for _ in range(5):
            self.assertEqual(s.get("/health").status, 200)
        signup(s, "During")
        self.assertIsNone(s.proc.poll(), "still serving")
        self.assertLess(time.time() - t0, 1.4)
        s.proc.wait(15)
        took = time.time() - t0
        self.assertEqual(s.proc.returncode, 0, s.log())
        self.assertGreaterEqual(took, 1.5)
        with self.assertRaises(OSError):
            s.get("/health")
        self.assertIn("serving 1500 ms more, then draining", s.log())


class ShutdownDelayCutShortTest(harness.DbTestCase):
    server_env = {"TENANTD_SHUTDOWN_DELAY_MS": "60000", "TENANTD_JOB_WORKERS": "0"}

    def test_second_signal_cuts_the_delay_short(self):
        s = self.server
        s.signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertEqual(s.get("/ready").status, 503)
        self.assertEqual(subprocess.run([harness.BIN, "healthcheck", "--ready"], env=s.env,
                                        capture_output=True).returncode, 1)
        t0 = time.time()
        s.signal(signal.SIGTERM)
        s.proc.wait(15)
        self.assertLess(time.time() - t0, 10)
        self.assertEqual(s.proc.returncode, 0, s.log())
        self.assertIn("delay cut short", s.log())


class VersionTest(harness.DbTestCase):
    server_env = {"TENANTD_JOB_WORKERS": "0"}

    def test_version_and_build_info(self):
        r = subprocess.run([harness.BIN, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^tenantd \d+\.\d+\.\d+ \(commit [0-9a-z._-]+\)\n$")
        built = r.stdout.split("(commit ")[1].rstrip(")\n")
        # The build looked the commit up (the binary may be older than HEAD:
        # ctest does not rebuild): a real commit of this checkout, when the
        # tree is a checkout; "unknown" in a tarball.
        inside = subprocess.run(["git", "-C", harness.SOURCE_DIR, "rev-parse", "--git-dir"],
                                capture_output=True).returncode == 0
        if inside and not os.environ.get("TENANTD_COMMIT"):
            sha = built[:-len("-dirty")] if built.endswith("-dirty") else built
            self.assertRegex(sha, r"^[0-9a-f]{12}$")
            self.assertEqual(subprocess.run(["git", "-C", harness.SOURCE_DIR, "cat-file", "-e",
                                             sha + "^{commit}"]).returncode, 0, sha)
        text = self.server.get("/metrics").body.decode()
        self.assertIn("# TYPE tenantd_build_info gauge", text)
        self.assertRegex(text, r'tenantd_build_info\{version="\d+\.\d+\.\d+",commit="%s"\} 1'
                         % built.replace(".", r"\."))

    def test_healthcheck_subcommand(self):
        env = dict(self.server.env)
        ok = subprocess.run([harness.BIN, "healthcheck"], env=env, capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        ok = subprocess.run([harness.BIN, "healthcheck", "--ready"], env=env, capture_output=True,
                            text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        env["TENANTD_LISTEN"] = f"0.0.0.0:{self.server.port}"  # wildcard: asks loopback
        self.assertEqual(subprocess.run([harness.BIN, "healthcheck"], env=env).returncode, 0)
        env["TENANTD_LISTEN"] = f"127.0.0.1:{harness.free_port()}"
        bad = subprocess.run([harness.BIN, "healthcheck"], env=env, capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("no answer", bad.stderr)


if __name__ == "__main__":
    unittest.main()
