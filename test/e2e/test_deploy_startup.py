"""Start-up checks of `tenantd serve` (issue 14, item 3): DATABASE_URL
required outside development mode, the first database connection retried
for TENANTD_DB_STARTUP_TIMEOUT_MS (naming host and port, never the
password), a port held by another tenantd refused unless TENANTD_REUSEPORT,
TENANTD_*_FILE secrets, and unknown TENANTD_* variables warned about."""
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness

SECRET = "s3cret-" + "x" * 40


def clean_env(**extra):
    """The environment without any DATABASE_URL or TENANTD_* setting the
    caller's shell may have, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not (k.startswith("TENANTD_") and k not in (
               "TENANTD_PG_PORT", "TENANTD_BIN", "TENANTD_SOURCE_DIR"))}
    env.update(extra)
    return env


def run(args, env, timeout=30):
    r = subprocess.run([harness.BIN, *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert mark not in r.stderr, r.stderr
    return r


class LateProxy:
    """A TCP forwarder to PostgreSQL that starts listening only after
    `delay` seconds: a database that comes up after tenantd."""

    def __init__(self, target_port, delay):
        self.port = harness.free_port()
        self.target = target_port
        self.stop = threading.Event()
        self.sock = None
        self.thread = threading.Thread(target=self._run, args=(delay,), daemon=True)
        self.thread.start()

    def _pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self, delay):
        if self.stop.wait(delay):
            return
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            up = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(c, up), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, c), daemon=True).start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        if self.sock:
            self.sock.close()


class StartupTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = harness.cluster()
        cls.dbname = cls.pg.create_db()
        cls.db_url = cls.pg.url(cls.dbname)
        r = harness.run_tenantd(["migrate", "up"], cls.db_url)
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        cls.pg.drop_db(cls.dbname)

    def test_database_url_required_outside_dev_mode(self):
        for cmd in (["serve"], ["worker"], ["migrate", "status"]):
            r = run(cmd, clean_env(TENANTD_JWT_SECRET=SECRET))
            self.assertEqual(r.returncode, 2, (cmd, r.stderr))
            self.assertIn("DATABASE_URL is not set", r.stderr)
        # Commands that never touch the database do not need it.
        self.assertEqual(run(["routes"], clean_env()).returncode, 0)
        self.assertEqual(run(["--version"], clean_env()).returncode, 0)

    def test_unreachable_database_retried_then_named(self):
        port = harness.free_port()
        url = f"postgresql://tenantd:{SECRET}@127.0.0.1:{port}/tenantd"
        t0 = time.time()
        r = run(["serve"], clean_env(DATABASE_URL=url, TENANTD_DEV="1",
                                     TENANTD_LISTEN=f"127.0.0.1:{harness.free_port()}",
                                     TENANTD_DB_STARTUP_TIMEOUT_MS="1500"))
        took = time.time() - t0
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertGreaterEqual(took, 1.4, "retried for the whole timeout")
        self.assertLess(took, 15)
        self.assertIn(f"127.0.0.1:{port}", r.stderr)
        self.assertIn("cannot connect to the database", r.stderr)
        self.assertGreaterEqual(r.stderr.count("retrying in"), 3, r.stderr)
        self.assertNotIn(SECRET, r.stderr)

    def test_database_coming_up_late(self):
        proxy = LateProxy(self.pg.port, delay=1.5)
        try:
            url = f"postgresql://tenantd@127.0.0.1:{proxy.port}/{self.dbname}"
            server = harness.Server(url, args=("serve",),
                                    env={"TENANTD_DB_STARTUP_TIMEOUT_MS": "20000",
                                         "TENANTD_JOB_WORKERS": "0"})
            t0 = time.time()
            server.start()
            try:
                self.assertGreaterEqual(time.time() - t0, 1.0)
                self.assertEqual(server.get("/ready").status, 200)
                self.assertIn("not reachable yet", server.log())
                self.assertIn("answers (attempt", server.log())
            finally:
                self.assertEqual(server.stop(), 0)
        finally:
            proxy.close()

    def test_port_of_another_tenantd(self):
        a = harness.Server(self.db_url, args=("serve",), env={"TENANTD_JOB_WORKERS": "0"}).start()
        try:
            env = dict(a.env)
            r = run(["serve"], env, timeout=20)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("already in use", r.stderr)
            self.assertIn("TENANTD_REUSEPORT", r.stderr)
            # Asked for: the second one shares the port.
            b = harness.Server(self.db_url, args=("serve",),
                               env={"TENANTD_JOB_WORKERS": "0", "TENANTD_REUSEPORT": "1"})
            b.port = a.port
            b.env["TENANTD_LISTEN"] = a.env["TENANTD_LISTEN"]
            b.start(wait=False)
            try:
                deadline = time.time() + 20
                while "listening on" not in b.log() and time.time() < deadline:
                    self.assertIsNone(b.proc.poll(), b.log())
                    time.sleep(0.05)
                self.assertIn("listening on", b.log())
            finally:
                self.assertEqual(b.stop(), 0)
            self.assertEqual(a.get("/health").status, 200)
        finally:
            self.assertEqual(a.stop(), 0)

    def test_secrets_from_files(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "jwt")
            with open(path, "w") as f:
                f.write(SECRET + "\n")  # as `echo` and secret mounts leave it
            url_path = os.path.join(d, "url")
            with open(url_path, "w") as f:
                f.write(self.db_url + "\n")
            server = harness.Server("unused", args=("serve",),
                                    env={"TENANTD_DEV": "0", "TENANTD_JWT_SECRET_FILE": path,
                                         "TENANTD_JOB_WORKERS": "0"})
            del server.env["DATABASE_URL"]
            server.env["DATABASE_URL_FILE"] = url_path
            server.start()
            try:
                status, body, _ = server.json("POST", "/v1/orgs", {
                    "name": "Files", "admin": {"email": "a@files.test",
                                               "password": "correct horse battery"}})
                self.assertEqual(status, 201, body)
                status, me, _ = server.json("GET", "/v1/auth/me", headers={
                    "Authorization": "Bearer " + body["access_token"]})
                self.assertEqual(status, 200, me)
            finally:
                self.assertEqual(server.stop(), 0)
            self.assertNotIn(SECRET, server.log())

            base = clean_env(DATABASE_URL=self.db_url, TENANTD_LISTEN="127.0.0.1:1")
            r = run(["serve"], dict(base, TENANTD_JWT_SECRET_FILE=path, TENANTD_JWT_SECRET=SECRET))
            self.assertEqual(r.returncode, 2)
            self.assertIn("both TENANTD_JWT_SECRET and TENANTD_JWT_SECRET_FILE", r.stderr)
            missing = os.path.join(d, "nope")
            r = run(["serve"], dict(base, TENANTD_JWT_SECRET_FILE=missing))
            self.assertEqual(r.returncode, 2)
            self.assertIn(f"TENANTD_JWT_SECRET_FILE: cannot read {missing}", r.stderr)
            short = os.path.join(d, "short")
            with open(short, "w") as f:
                f.write("tooshort\n")
            r = run(["serve"], dict(base, TENANTD_JWT_SECRET_FILE=short))
            self.assertEqual(r.returncode, 2)
            self.assertIn("at least 32 bytes", r.stderr)
            self.assertNotIn("tooshort", r.stderr)

    def test_unknown_variables_warned(self):
        r = run(["routes"], clean_env(TENANTD_LISTNE="0.0.0.0:80", TENANTD_THREADS="2"))
        self.assertEqual(r.returncode, 0)
        self.assertIn("TENANTD_LISTNE is not a tenantd setting", r.stderr)
        self.assertNotIn("TENANTD_THREADS", r.stderr)
        self.assertNotIn("0.0.0.0:80", r.stderr, "values are not logged")


if __name__ == "__main__":
    unittest.main()
