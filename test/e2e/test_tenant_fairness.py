"""Tenant affinity under trouble: one org flooding slow `?filter=` lists must
not stall the orgs that share the pool (statements in flight per org are
capped, a busy connection is avoided), and an org's backend killed in the
middle of its pipeline fails only what was on it."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness

SERVER_ENV = {
    "TENANTD_DB_POOL_SIZE": "4",
    "TENANTD_ARGON2_M_KIB": "64",
    "TENANTD_ARGON2_T": "1",
    "TENANTD_ACCESS_TTL_S": "3600",
    "TENANTD_LOG_LEVEL": "warn",
    "TENANTD_JOB_WORKERS": "0",
}
# An empty array gives the GIN index (jsonb_path_ops) nothing to look up, so
# the list reads every record of the org to find that none matches: ~22 ms
# per 100,000 records once the filter is planned knowing its value (it was
# 32-41 ms on the generic plan); 800,000 keep it well above ten quiet GETs'
# p99 under ASan (6.5 ms seen in CI).
NOISY_RECORDS = 800000
SLOW_FILTER = '{"nope":[]}'


def signup(server, slug):
    st, d, _ = server.json("POST", "/v1/orgs", {
        "name": slug, "slug": slug,
        "admin": {"email": f"admin@{slug}.example.com", "password": "correct-horse-battery"}})
    if st != 201:
        raise AssertionError(f"signup {slug}: {st} {d}")
    return {"token": d["access_token"],
            "schema": "tenant_" + d["org"]["id"].replace("-", "")}


def p99(samples):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


@unittest.skipUnless(shutil.which("wrk"), "wrk is needed to flood (deps/install.sh)")
class TenantFairnessTest(harness.DbTestCase):
    server_env = SERVER_ENV

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # One core per list: parallel workers would take the whole machine,
        # and then nothing the pool does could keep other orgs fast.
        cls.pg.psql(f"ALTER DATABASE {cls.dbname} SET max_parallel_workers_per_gather = 0")
        cls.server.stop()
        cls.server = harness.Server(cls.db_url, env=SERVER_ENV).start()
        tag = os.urandom(4).hex()
        cls.noisy = signup(cls.server, f"noisy-{tag}")
        cls.pg.psql(
            f'INSERT INTO "{cls.noisy["schema"]}".records (collection, data, created_at) '
            f"SELECT 'items', jsonb_build_object('n', g, 'tags', jsonb_build_array('common')), "
            f"now() - g * interval '1 ms' FROM generate_series(1, {NOISY_RECORDS}) g; "
            f'ANALYZE "{cls.noisy["schema"]}".records', db=cls.dbname)
        cls.quiet = [signup(cls.server, f"quiet-{tag}-{i}") for i in range(8)]
        for q in cls.quiet:
            st, d, _ = cls.server.json("POST", "/v1/collections/items/records", {"q": 1},
                                       {"Authorization": f"Bearer {q['token']}"})
            assert st == 201, d
            q["path"] = f"/v1/collections/items/records/{d['id']}"

    def flood(self, seconds, connections=24):
        """wrk on the noisy org's slow list; returns the running process."""
        tmp = tempfile.mkdtemp(prefix="tenantd-flood-")
        self.addCleanup(shutil.rmtree, tmp, True)
        url = (f"http://127.0.0.1:{self.server.port}/v1/collections/items/records?filter="
               + SLOW_FILTER.replace('"', "%22").replace("[", "%5B").replace("]", "%5D"))
        return subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             "-H", f"Authorization: Bearer {self.noisy['token']}", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def quiet_latencies(self, n):
        """n GETs of the quiet orgs' records in turn, on one keep-alive
        connection; their latencies in seconds."""
        c = self.server.conn(timeout=30)
        out = []
        for i in range(n):
            q = self.quiet[i % len(self.quiet)]
            t0 = time.monotonic()
            c.request("GET", q["path"], headers={"Authorization": f"Bearer {q['token']}"})
            r = c.getresponse()
            r.read()
            out.append(time.monotonic() - t0)
            self.assertEqual(r.status, 200)
        c.close()
        return out

    def wait_lists_done(self):
        """Until the lists the flood left behind (its requests still queued
        or running for the noisy org when wrk went) have run: the next try's
        flood would wait behind them (24 lists of ~0.2 s)."""
        active = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantd'"
                  f" AND state = 'active' AND query LIKE '%{self.noisy['schema']}%'")
        deadline, quiet = time.time() + 60, 0
        while quiet < 3 and time.time() < deadline:
            time.sleep(0.3)
            quiet = quiet + 1 if self.pg.psql(active, db=self.dbname)[0] == "0" else 0

    def backend_of(self, schema):
        """Pids of tenantd's backends whose last statement named schema."""
        rows = self.pg.psql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tenantd' "
            f"AND datname = current_database() AND query LIKE '%{schema}%'", db=self.dbname)
        return {int(r) for r in rows if r.strip()}

    def test_noisy_neighbour(self):
        # The slow list is slow (else this test proves nothing).
        t0 = time.monotonic()
        r = self.server.get("/v1/collections/items/records?filter=" + SLOW_FILTER,
                            {"Authorization": f"Bearer {self.noisy['token']}"})
        slow = time.monotonic() - t0
        self.assertEqual(r.status, 200, r.body)
        self.quiet_latencies(80)  # warm: statements prepared

        # A quiet GET stalled behind the flood waits for at least the rest of
        # one slow list, and 3 of 300 doing so put the p99 there. Within 3x
        # of the unloaded p99, or a fifth of one list: on two cores the two
        # lists the org's cap lets run take both, and a quiet GET's backend
        # then waits for the scheduler too (6-9 ms p99 against 1-2 ms seen
        # under ASan in CI, with one list at 164 ms), which is no stall.
        def bound(base):
            return max(3 * base, slow / 5)
        # Timing on a shared machine: up to three tries, each measured against
        # a baseline taken just before it.
        tries, bases = [], []
        for _ in range(3):
            base = p99(self.quiet_latencies(300))
            bases.append(base)
            wrk = self.flood(30)
            started = time.monotonic()
            try:
                time.sleep(1)
                loaded = p99(self.quiet_latencies(300))
                # Long enough for some of the slow lists to finish (~0.2 s
                # each, 24 at once behind the org's cap): a flood that served
                # none would say nothing.
                time.sleep(max(0.0, 4 - (time.monotonic() - started)))
            finally:
                wrk.send_signal(signal.SIGINT)  # wrk stops and reports
                out = wrk.communicate(timeout=30)[0]
                self.wait_lists_done()
            self.assertIn("Requests/sec", out, out)
            served = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            self.assertGreater(served, 0, out)
            tries.append(f"{loaded * 1000:.1f} ms with the flood ({served:.0f} lists/s), "
                         f"{base * 1000:.1f} ms without")
            if os.environ.get("TENANTD_TEST_VERBOSE"):
                print(f"\nquiet p99 {tries[-1]}; one slow list {slow * 1000:.0f} ms")
            if loaded <= bound(base):
                break
        self.assertLessEqual(loaded, bound(base),
                             f"quiet orgs' GET p99: {'; '.join(tries)} "
                             f"(one slow list: {slow * 1000:.0f} ms)")
        # Against the quiet GETs' own p99 measured here, not a fixed 20 ms: one
        # list took 19.97 ms in a CI run on a fast moment of the machine
        # (32-41 ms usual), with quiet p99s of 0.5-1 ms.
        self.assertGreater(slow, 10 * bases[0],
                           f"the noisy org's list ({slow * 1000:.1f} ms) is not slow against a quiet "
                           f"GET's p99 ({bases[0] * 1000:.1f} ms): this test proves nothing")

    def test_affine_backend_lost(self):
        headers = {"Authorization": f"Bearer {self.noisy['token']}"}
        self.quiet_latencies(16)
        self.assertEqual(self.server.get("/v1/collections/items/records?limit=1", headers).status,
                         200)
        victims = self.backend_of(self.noisy["schema"])
        self.assertTrue(victims, "the noisy org's backend is not visible")
        wrk = self.flood(4, connections=8)
        try:
            time.sleep(1)
            killed = self.pg.psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid IN ("
                + ",".join(str(p) for p in victims) + ")", db=self.dbname)
            self.assertEqual(killed, [str(len(victims))])
            # The quiet orgs on other backends do not notice.
            others = [q for q in self.quiet if not (self.backend_of(q["schema"]) & victims)]
            self.assertTrue(others, "every quiet org shares the noisy org's backend")
            c = self.server.conn(timeout=30)
            for q in others * 4:
                c.request("GET", q["path"], headers={"Authorization": f"Bearer {q['token']}"})
                r = c.getresponse()
                body = r.read()
                self.assertEqual(r.status, 200, body)
            c.close()
        finally:
            out = wrk.communicate(timeout=30)[0]
        # The noisy org's requests failed (503) or were served, nothing else.
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        total = int(re.search(r"(\d+) requests in", out).group(1))
        self.assertGreater(total, 0, out)
        if m:
            self.assertLess(int(m.group(1)), total, out)
        # And the org is served again right away, in its own schema.
        deadline = time.monotonic() + 5
        while True:
            r = self.server.get("/v1/collections/items/records?limit=1", headers)
            if r.status == 200 or time.monotonic() > deadline:
                break
            self.assertEqual(r.status, 503, r.body)
            time.sleep(0.05)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)["data"][0]["data"]["n"], 1)
        log = self.server.log()
        self.assertIn("database connection lost", log)


if __name__ == "__main__":
    unittest.main()
