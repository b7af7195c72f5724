"""Rate limits shared by every instance on one database (control migration
0012, src/auth/sharedlimit.c): two tenantd processes, a client alternating
between them, is held to the configured budget (login, the client budget
of the link routes, signup, the per-org budget), not to twice it. When the
database cannot answer a take, each instance's own buckets decide."""
import re
import time
import unittest

import harness

SECRET = "shared-limits-secret-" + "s" * 32
BASE_ENV = {
    "TENANTD_JWT_SECRET": SECRET,
    "TENANTD_ARGON2_M_KIB": "1024",
    "TENANTD_ARGON2_T": "1",
    "TENANTD_JOB_WORKERS": "0",
}


class TwoInstances(unittest.TestCase):
    """Two servers on one fresh database, migrated once."""

    env = {}

    @classmethod
    def setUpClass(cls):
        cls.pg = harness.cluster()
        cls.dbname = cls.pg.create_db()
        cls.db_url = cls.pg.url(cls.dbname)
        r = harness.run_tenantd(["migrate", "up"], cls.db_url)
        assert r.returncode == 0, r.stderr
        env = dict(BASE_ENV)
        env.update(cls.env)
        cls.servers = [harness.Server(cls.db_url, env=env, args=("serve",)).start()
                       for _ in range(2)]

    @classmethod
    def tearDownClass(cls):
        try:
            for s in cls.servers:
                rc = s.stop()
                if rc != 0:
                    raise AssertionError(f"tenantd exited with {rc}:\n{s.log()}")
        finally:
            cls.pg.drop_db(cls.dbname)

    def alternate(self, n, send):
        """send(server, i) n times, alternating servers; the statuses."""
        return [send(self.servers[i % 2], i) for i in range(n)]

    def signup(self, server, slug):
        status, doc, _ = server.json("POST", "/v1/orgs", {
            "name": slug, "slug": slug,
            "admin": {"email": f"admin@{slug}.test", "password": "correct horse battery"}})
        self.assertEqual(status, 201, doc)
        return doc


class LoginLimitShared(TwoInstances):
    env = {"TENANTD_LOGIN_LIMIT": "6", "TENANTD_SIGNUP_LIMIT": "0"}

    def test_wrong_passwords_alternating_get_the_budget_once(self):
        self.signup(self.servers[0], "loginshared")
        seen = []

        def login(server, i):
            status, doc, r = server.json("POST", "/v1/auth/login", {
                "email": "admin@loginshared.test", "password": f"wrong password {i}",
                "org": "loginshared"})
            seen.append((status, r.getheader("RateLimit-Remaining"), r.getheader("Retry-After")))
            return status

        statuses = self.alternate(14, login)
        # 6 a minute in all (the client's budget and the account's); each
        # instance alone would allow 6, together 12.
        self.assertEqual(statuses, [401] * 6 + [429] * 8, seen)
        for status, _, retry in seen[6:]:
            self.assertTrue(1 <= int(retry) <= 10, seen)  # one attempt per 10 s
        # The 401s count down across both instances.
        self.assertEqual([s[1] for s in seen[:6]], ["5", "4", "3", "2", "1", "0"], seen)
        m = self.servers[0].get("/metrics").body.decode()
        self.assertRegex(m, r'tenantd_rate_limited_total\{limit="login_ip"\} [1-9]')



class LinkRoutesShared(TwoInstances):
    env = {"TENANTD_LOGIN_LIMIT": "6", "TENANTD_SIGNUP_LIMIT": "0"}

    def test_link_routes_share_the_client_budget(self):
        # The password-reset request draws from the per-client login budget.
        statuses = self.alternate(14, lambda s, i: s.json(
            "POST", "/v1/auth/password-reset", {"email": f"x{i}@nowhere.test",
                                                "org": "nowhere"})[0])
        self.assertEqual(statuses, [202] * 6 + [429] * 8)


class SignupLimitShared(TwoInstances):
    env = {"TENANTD_SIGNUP_LIMIT": "3", "TENANTD_LOGIN_LIMIT": "0"}

    def test_org_creation_alternating_gets_the_budget_once(self):
        def create(server, i):
            status, doc, _ = server.json("POST", "/v1/orgs", {
                "name": f"Signup {i}",
                "admin": {"email": f"a{i}@signup.test", "password": "correct horse battery"}})
            return status

        statuses = self.alternate(8, create)
        self.assertEqual(statuses, [201] * 3 + [429] * 5)
        orgs = self.pg.psql("SELECT count(*) FROM public.orgs", db=self.dbname)
        self.assertEqual(orgs, ["3"])


class OrgLimitShared(TwoInstances):
    env = {"TENANTD_ORG_RATE_LIMIT": "40", "TENANTD_LOGIN_LIMIT": "0",
           "TENANTD_SIGNUP_LIMIT": "0"}

    def test_org_budget_alternating(self):
        org = self.signup(self.servers[0], "orgshared")
        auth = {"Authorization": "Bearer " + org["access_token"]}
        t0 = time.time()
        statuses = self.alternate(80, lambda s, i: s.get("/v1/auth/me", auth).status)
        elapsed = time.time() - t0
        ok = statuses.count(200)
        # 40 a minute: a bucket of 40 that gains one every 1.5 s while the
        # test runs; per process it would be 80.
        self.assertLessEqual(ok, 40 + int(elapsed / 1.5) + 1, (elapsed, statuses))
        self.assertGreaterEqual(ok, 40, statuses)
        self.assertEqual(set(statuses), {200, 429})


class OrgLimitLeases(TwoInstances):
    """A large budget: instances take leases of several tokens, so most
    requests need no round trip, and still never pass the budget."""
    env = {"TENANTD_ORG_RATE_LIMIT": "1280", "TENANTD_LOGIN_LIMIT": "0",
           "TENANTD_SIGNUP_LIMIT": "0"}

    def test_leases_never_exceed_the_budget(self):
        org = self.signup(self.servers[0], "leases")
        auth = {"Authorization": "Bearer " + org["access_token"]}
        # Fill both instances' leases, then empty the database's bucket
        # behind their backs: only what they already hold may still pass.
        for s in self.servers:
            for _ in range(30):
                self.assertEqual(s.get("/v1/auth/me", auth).status, 200)
        self.pg.psql("UPDATE public.rate_limits SET level = 0, "
                     "updated_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint "
                     "+ 600000 WHERE name = 'org'", db=self.dbname)
        statuses = self.alternate(60, lambda s, i: s.get("/v1/auth/me", auth).status)
        ok = statuses.count(200)
        # Each instance holds at most 1280/64 = 20 leased tokens.
        self.assertLessEqual(ok, 40, statuses)
        self.assertEqual(statuses[-10:], [429] * 10, statuses)
        # Leases are at work: most requests needed no round trip.
        for s in self.servers:
            m = s.get("/metrics").body.decode()
            db = int(re.search(r'tenantd_rate_limit_takes_total\{source="database"\} (\d+)',
                               m).group(1))
            lease = int(re.search(r'tenantd_rate_limit_takes_total\{source="local"\} (\d+)',
                                  m).group(1))
            self.assertGreater(lease, 2 * db, m)


class FallbackWhenTheTableIsGone(TwoInstances):
    env = {"TENANTD_LOGIN_LIMIT": "3", "TENANTD_SIGNUP_LIMIT": "0"}

    def test_local_limits_decide_when_the_database_cannot(self):
        self.signup(self.servers[0], "fallback")
        # A take that fails (here: the table is gone) falls back to each
        # instance's own bucket: limited per instance, never open.
        self.pg.psql("ALTER TABLE public.rate_limits RENAME TO rate_limits_gone", db=self.dbname)
        try:
            statuses = [self.servers[0].json("POST", "/v1/auth/login", {
                "email": "admin@fallback.test", "password": f"wrong {i}",
                "org": "fallback"})[0] for i in range(5)]
        finally:
            self.pg.psql("ALTER TABLE public.rate_limits_gone RENAME TO rate_limits",
                         db=self.dbname)
        self.assertEqual(statuses, [401] * 3 + [429] * 2)
        m = self.servers[0].get("/metrics").body.decode()
        self.assertRegex(m, r"tenantd_rate_limit_fallbacks_total [1-9]")
        self.assertIn("own limits decide", self.servers[0].log())


if __name__ == "__main__":
    unittest.main()
