"""Several tenantd behind HAProxy (Debian's haproxy, loopback only), as
compose.yaml runs them: a token from one instance works on the others, a
password change is seen at once everywhere, each job is claimed and run
once by the instances' workers together, and a rolling restart of each
instance in turn under a steady load loses no request (SIGTERM: /ready 503
for TENANTD_SHUTDOWN_DELAY_MS while serving, HAProxy takes the instance
out, then the drain)."""
import http.client
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import harness

SECRET = "multi-instance-secret-" + "k" * 32
N = 3
HAPROXY_CFG = """
global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend api
    bind 127.0.0.1:{port}
    option forwardfor
    default_backend tenantd
backend tenantd
    balance roundrobin
    # A new server connection per request: none is reused after a
    # draining instance closed it.
    option http-server-close
    option httpchk
    http-check send meth GET uri /ready
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2 check
{servers}
"""


class MultiInstanceBase(unittest.TestCase):
    """N instances behind HAProxy on one fresh database (no tests here)."""

    login_limit = "0"  # nothing in MultiInstanceTest logs in with wrong passwords

    @classmethod
    def setUpClass(cls):
        cls.haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(cls.haproxy_bin):
            raise AssertionError("haproxy is not installed (deps/install.sh installs it)")
        cls.pg = harness.cluster()
        cls.dbname = cls.pg.create_db()
        cls.db_url = cls.pg.url(cls.dbname)
        r = harness.run_tenantd(["migrate", "up"], cls.db_url)
        assert r.returncode == 0, r.stderr
        cls.servers = [cls.start_instance() for _ in range(N)]
        cls.tmp = tempfile.mkdtemp(prefix="tenantd-haproxy-")
        cls.port = harness.free_port()
        servers = "\n".join(f"    server t{i} 127.0.0.1:{s.port}" for i, s in enumerate(cls.servers))
        cfg = os.path.join(cls.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=cls.port, servers=servers))
        cls.haproxy_log = open(os.path.join(cls.tmp, "haproxy.log"), "w+")
        cls.haproxy = subprocess.Popen([cls.haproxy_bin, "-db", "-f", cfg],
                                       stdout=cls.haproxy_log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if cls.request("GET", "/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        time.sleep(0.6)  # every server through `rise 2`

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.haproxy.poll() is None:
                cls.haproxy.terminate()
                cls.haproxy.wait(10)
            cls.haproxy_log.close()
            for s in cls.servers:
                s.stop()
        finally:
            cls.pg.drop_db(cls.dbname)
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def start_instance(cls, port=None):
        s = harness.Server(cls.db_url, args=("serve",), env={
            "TENANTD_JWT_SECRET": SECRET,
            "TENANTD_JOB_WORKERS": "2",
            "TENANTD_TEST_JOBS": "1",
            "TENANTD_SIGNUP_CREDITS": "1000",
            "TENANTD_SHUTDOWN_DELAY_MS": "1200",
            "TENANTD_TRUSTED_PROXIES": "127.0.0.1",
            "TENANTD_LOGIN_LIMIT": cls.login_limit,
        })
        if port:
            s.port = port
            s.env["TENANTD_LISTEN"] = f"127.0.0.1:{port}"
        return s.start()

    @classmethod
    def request(cls, method, path, body=None, headers=None, port=None):
        c = http.client.HTTPConnection("127.0.0.1", port or cls.port, timeout=10)
        try:
            h = dict(headers or {})
            if body is not None:
                import json
                body = json.dumps(body)
                h["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def signup(self, name):
        import json
        status, body = self.request("POST", "/v1/orgs", {
            "name": name, "admin": {"email": f"a@{name.lower()}.test",
                                    "password": "correct horse battery"}})
        self.assertEqual(status, 201, body)
        return json.loads(body)


class MultiInstanceTest(MultiInstanceBase):
    def test_token_from_one_works_on_all_and_password_change_everywhere(self):
        org = self.signup("Everywhere")
        auth = {"Authorization": "Bearer " + org["access_token"]}
        for s in self.servers:
            self.assertEqual(self.request("GET", "/v1/auth/me", headers=auth, port=s.port)[0], 200)
        # A password change on one instance revokes the token on all of them
        # at once (token version through LISTEN/NOTIFY), not after a cache TTL.
        status, body = self.request("POST", "/v1/auth/password", {
            "current_password": "correct horse battery",
            "new_password": "another horse battery"}, headers=auth,
            port=self.servers[0].port)
        self.assertEqual(status, 204, body)
        deadline = time.time() + 2
        pending = {s.port for s in self.servers}
        while pending and time.time() < deadline:
            for p in list(pending):
                if self.request("GET", "/v1/auth/me", headers=auth, port=p)[0] == 401:
                    pending.discard(p)
            time.sleep(0.05)
        self.assertEqual(pending, set(), "old token still accepted there")

    def test_each_job_runs_once_across_instances(self):
        org = self.signup("Jobs")
        auth = {"Authorization": "Bearer " + org["access_token"]}
        n = 60
        for _ in range(n):
            status, body = self.request("POST", "/v1/jobs", {"type": "sleep", "payload": {"ms": 20}},
                                        headers=auth)
            self.assertEqual(status, 202, body)
        org_id = org["org"]["id"]
        deadline = time.time() + 60
        while time.time() < deadline:
            done = self.pg.psql("SELECT count(*) FROM public.jobs WHERE org_id = "
                                f"'{org_id}' AND status = 'succeeded'", db=self.dbname)
            if done == [str(n)]:
                break
            time.sleep(0.2)
        rows = self.pg.psql("SELECT status, attempts, count(*) FROM public.jobs WHERE org_id = "
                            f"'{org_id}' GROUP BY 1, 2", db=self.dbname)
        # A job claimed twice would show attempts = 2 (each claim counts).
        self.assertEqual(rows, [f"succeeded|1|{n}"])
        balance = self.pg.psql("SELECT balance FROM public.credit_accounts WHERE org_id = "
                               f"'{org_id}'", db=self.dbname)
        self.assertEqual(balance, [str(1000 - n)], "each job charged once (sleep costs 1)")

    def test_rolling_restart_under_load_loses_no_request(self):
        org = self.signup("Rolling")
        auth = {"Authorization": "Bearer " + org["access_token"]}
        stop = threading.Event()
        results = {"ok": 0, "errors": []}
        lock = threading.Lock()

        def load():
            while not stop.is_set():
                try:
                    status, body = self.request("GET", "/v1/auth/me", headers=auth)
                    err = None if status == 200 else f"{status} {body[:200]!r}"
                except OSError as e:
                    err = repr(e)
                with lock:
                    if err:
                        results["errors"].append(err)
                    else:
                        results["ok"] += 1

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        try:
            for i, old in enumerate(list(self.servers)):
                before = results["ok"]
                self.assertEqual(old.stop(), 0, old.log())
                new = self.start_instance(port=old.port)
                self.servers[i] = new
                deadline = time.time() + 10
                while new.get("/ready").status != 200 and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(0.8)  # HAProxy's `rise 2` at 200 ms
                self.assertGreater(results["ok"], before, "requests went on meanwhile")
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        self.assertEqual(results["errors"], [], f"{len(results['errors'])} failed of "
                         f"{results['ok'] + len(results['errors'])}")
        self.assertGreater(results["ok"], 100)
        print(f"rolling restart of {N} instances: {results['ok']} requests, 0 failed",
              flush=True)


class SharedLoginLimitTest(MultiInstanceBase):
    """The login limit is one budget for the three instances (a class of its
    own: the client's budget it spends would refuse the password change of
    MultiInstanceTest, which takes the same budget)."""

    login_limit = "6"

    def test_login_limit_shared_behind_the_balancer(self):
        import json
        self.signup("Limited")
        statuses = []
        for i in range(12):  # round robin: each instance sees every third one
            status, body = self.request("POST", "/v1/auth/login", {
                "email": "a@limited.test", "password": f"wrong password {i}", "org": "limited"})
            statuses.append((status, json.loads(body).get("code")))
        # 6 a minute for the client and the account in all; each instance
        # alone would allow 6 (18 for the three).
        self.assertEqual([s for s, _ in statuses], [401] * 6 + [429] * 6, statuses)


if __name__ == "__main__":
    unittest.main()
