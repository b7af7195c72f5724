"""The auth cache across a PostgreSQL restart: while the database is away
authenticated requests answer 503 (never a stale cached yes), and once it
is back the LISTEN thread reconnects, re-LISTENs and invalidations work
again. Runs on a private cluster: the shared one is never stopped."""
import os
import shutil
import tempfile
import time
import unittest

import harness
from test_auth import FAST_ARGON2, PW, bearer


class CacheReconnectTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tenantd-authpg-")
        os.chmod(self.tmp, 0o755)  # as root, PostgreSQL runs as `postgres`
        self.pg = harness.PgCluster(data_dir=os.path.join(self.tmp, "pg"), port=harness.free_port())
        self.pg.start()
        self.db = self.pg.create_db()
        env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0", TENANTD_LOG_LEVEL="debug",
                   TENANTD_DB_WAIT_TIMEOUT_MS="300", TENANTD_DB_RECONNECT_MAX_MS="200")
        self.server = harness.Server(self.pg.url(self.db), env=env).start()

    def tearDown(self):
        try:
            if self.server:
                rc = self.server.stop()
                self.assertEqual(rc, 0, self.server.log()[-4000:])
        finally:
            try:
                self.pg.stop()
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def listens(self):
        return sum(1 for l in self.server.log_lines() if l.get("msg") == "auth cache: listening")

    def wait(self, fn, want, seconds):
        deadline = time.monotonic() + seconds
        got = None
        while time.monotonic() < deadline:
            try:
                got = fn()
            except OSError:
                got = None
            if got == want:
                return
            time.sleep(0.05)
        self.fail(f"wanted {want}, last saw {got}:\n" + self.server.log()[-4000:])

    def test_restart(self):
        org = harness.seed_org(self.pg, self.db, "phoenix", [("pho@phoenix.io", PW, "admin")])
        uid = org["users"]["pho@phoenix.io"]
        st, t, _ = self.server.json("POST", "/v1/auth/login", {"email": "pho@phoenix.io", "password": PW})
        self.assertEqual(st, 200, t)
        me = lambda: self.server.json("GET", "/v1/auth/me", None, bearer(t["access_token"]))[0]
        self.wait(self.listens, 1, 10)
        self.assertEqual(me(), 200)

        self.pg.stop()
        # The cache is dropped with the listener: nothing is vouched for
        # while notifications cannot arrive.
        self.wait(me, 503, 10)
        self.assertEqual(self.server.get("/health").status, 200)

        self.pg.start()
        self.wait(me, 200, 20)
        self.wait(self.listens, 2, 20)
        # Invalidation works again after the re-LISTEN.
        self.assertEqual(me(), 200)
        self.pg.psql(f"UPDATE public.users SET token_version = token_version + 1 WHERE id = '{uid}'",
                     db=self.db)
        self.wait(me, 401, 2)


if __name__ == "__main__":
    unittest.main()
