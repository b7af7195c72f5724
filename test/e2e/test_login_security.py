"""Login limits and org-less logins under attack (SECURITY.md, findings
10.2 and 10.4). Client addresses are varied through X-Forwarded-For from a
trusted 127.0.0.1, as a reverse proxy would send them."""
import harness

FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
PW = "correct horse battery"


class LoginCase(harness.DbTestCase):
    def login(self, email, password=PW, org=None, ip=None):
        body = {"email": email, "password": password}
        if org is not None:
            body["org"] = org
        h = {"X-Forwarded-For": ip} if ip else None
        return self.server.json("POST", "/v1/auth/login", body, h)

    def seed(self, slug, users):
        return harness.seed_org(self.pg, self.dbname, slug, users)


class AccountLimitTest(LoginCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="3", TENANTD_TRUSTED_PROXIES="127.0.0.1")

    def test_other_org_success_does_not_reset(self):
        """An attacker registers the victim's email in an org of their own;
        logging in there must not give back guesses against the victim."""
        self.seed("victim", [("vic@corp.io", PW, "admin")])
        self.seed("attacker", [("vic@corp.io", "attacker's own pw", "admin")])
        self.assertEqual(self.login("vic@corp.io", "guess 1", "victim", "198.51.100.1")[0], 401)
        self.assertEqual(self.login("vic@corp.io", "guess 2", "victim", "198.51.100.2")[0], 401)
        st, b, _ = self.login("vic@corp.io", "attacker's own pw", "attacker", "198.51.100.3")
        self.assertEqual(st, 200, b)
        self.assertEqual(self.login("vic@corp.io", "guess 3", "victim", "198.51.100.4")[0], 401)
        st, b, _ = self.login("vic@corp.io", "guess 4", "victim", "198.51.100.5")
        self.assertEqual(st, 429, b)
        # ... and the attacker's own account has a budget of its own.
        self.assertEqual(self.login("vic@corp.io", "attacker's own pw", "attacker",
                                    "198.51.100.6")[0], 200)

    def test_ipv6_client_counted_by_its_64(self):
        self.seed("six", [(f"s{i}@six.io", PW, "admin") for i in range(5)])
        got = [self.login(f"s{i}@six.io", "wrong", ip=f"2001:db8:6:6::{i + 1:x}")[0]
               for i in range(4)]
        self.assertEqual(got, [401, 401, 401, 429])
        # Written another way, still the same /64.
        self.assertEqual(self.login("s4@six.io", "wrong", ip="2001:db8:6:6:ffff:1:2:3")[0], 429)
        # Another /64 is another client.
        self.assertEqual(self.login("s4@six.io", ip="2001:db8:6:7::1")[0], 200)

    def test_guesses_cannot_lock_the_owner_out(self):
        """Guesses from many addresses spend the account's budget, but the
        owner, from an address that logged in to the account before, still
        gets in with the right password; a new address does not."""
        self.seed("lock", [("own@lock.io", PW, "admin")])
        home = "203.0.113.50"
        self.assertEqual(self.login("own@lock.io", ip=home)[0], 200)
        got = [self.login("own@lock.io", "guess", ip=f"198.51.100.{60 + i}")[0] for i in range(5)]
        self.assertEqual(got, [401, 401, 401, 429, 429])
        # The right password from a fresh address: still refused (else the
        # budget would not bound guessing at all).
        self.assertEqual(self.login("own@lock.io", ip="198.51.100.99")[0], 429)
        st, b, _ = self.login("own@lock.io", ip=home)
        self.assertEqual(st, 200, b)
        # The known path has a budget too: guessing from it is limited.
        got = [self.login("own@lock.io", "guess", ip=home)[0] for _ in range(4)]
        self.assertEqual(got[-1], 429, got)


class OrgLessLoginTest(LoginCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0")

    def test_ambiguous_email_asks_for_org(self):
        self.seed("first", [("amy@dup.io", "amy's real password", "admin")])
        self.seed("copycat", [("amy@dup.io", "someone else's pw", "admin")])
        # The owner (oldest account) is told clearly to send `org` ...
        st, b, r = self.login("amy@dup.io", "amy's real password")
        self.assertEqual(st, 409, b)
        self.assertEqual(b["code"], "org_required")
        self.assertIn("org", b["detail"])
        self.assertEqual(r.getheader("Content-Type"), "application/problem+json")
        # ... and gets in with it.
        st, b, _ = self.login("amy@dup.io", "amy's real password", "first")
        self.assertEqual(st, 200, b)
        self.assertEqual(b["org"]["slug"], "first")
        # A stranger learns nothing: a wrong password is the plain 401, the
        # same as for an email nobody has.
        st, b1, _ = self.login("amy@dup.io", "a wrong guess")
        st2, b2, _ = self.login("nobody@dup.io", "a wrong guess")
        self.assertEqual((st, st2), (401, 401))
        self.assertEqual(b1["detail"], b2["detail"])
        self.assertEqual(b1["code"], "unauthorized")
        # The copycat (newer) account needs its org, as always.
        self.assertEqual(self.login("amy@dup.io", "someone else's pw", "copycat")[0], 200)
