"""PostgreSQL goes away and comes back under a running tenantd: /ready
follows the database (503 while it is down, 200 again after the pool has
reconnected), /health never does, and the server still shuts down cleanly.

Runs on a private cluster (own data folder and port): the shared one must
never be stopped."""
import os
import shutil
import tempfile
import time
import unittest

import harness


def _status(server, path):
    """The status of one GET, or None when the server did not answer."""
    try:
        return server.request("GET", path, timeout=10).status
    except OSError:
        return None


class DbRestartTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tenantd-pgrestart-")
        # As root, pg.sh runs PostgreSQL as `postgres`, which must reach the folder.
        os.chmod(self.tmp, 0o755)
        self.data_dir = os.path.join(self.tmp, "pg")
        self.pg = harness.PgCluster(data_dir=self.data_dir, port=harness.free_port())
        self.pg.start()
        self.server = None

    def tearDown(self):
        try:
            if self.server and self.server.proc and self.server.proc.poll() is None:
                self.server.proc.kill()
                self.server.proc.wait()
        finally:
            try:
                self.pg.stop()
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def wait_for(self, path, want, seconds, also=None):
        """Polls GET path until it answers `want`; calls also() each round.
        Returns the seconds it took; fails after `seconds`."""
        start = time.time()
        seen = []
        while time.time() - start < seconds:
            st = _status(self.server, path)
            seen.append(st)
            if also:
                also()
            if st == want:
                return time.time() - start
            time.sleep(0.1)
        self.fail(f"GET {path} never answered {want} in {seconds} s (saw {seen[-10:]}):\n"
                  + self.server.log()[-4000:])

    def health_ok(self):
        self.assertEqual(_status(self.server, "/health"), 200,
                         "/health must not depend on the database")

    def test_ready_follows_the_database(self):
        env = {
            # Fail fast while the database is away; retry often once it is back.
            "TENANTD_DB_WAIT_TIMEOUT_MS": "1000",
            "TENANTD_DB_RECONNECT_MAX_MS": "500",
            "TENANTD_JOB_WORKERS": "0",
        }
        self.server = harness.Server(self.pg.url(), env=env, threads=2).start()
        self.wait_for("/ready", 200, 10)

        self.pg.stop()
        took = self.wait_for("/ready", 503, 5, also=self.health_ok)
        # Keep asking while it is down: every answer is a prompt 503, never a hang.
        for _ in range(5):
            t0 = time.time()
            self.assertEqual(_status(self.server, "/ready"), 503)
            self.assertLess(time.time() - t0, 3, "/ready hung while the database was down")
            self.health_ok()

        self.pg.start()
        back = self.wait_for("/ready", 200, 10, also=self.health_ok)
        # Both loops' pools must be back, not just one: ask a few times.
        for _ in range(6):
            self.assertEqual(_status(self.server, "/ready"), 200)

        rc = self.server.stop()
        self.assertEqual(rc, 0, "tenantd must exit 0 on SIGTERM:\n" + self.server.log()[-4000:])
        print(f"\n/ready: 503 {took:.1f} s after the stop, 200 {back:.1f} s after the start")


if __name__ == "__main__":
    unittest.main()
