"""Sessions end to end: login, refresh rotation and reuse detection,
logout, /v1/auth/me, password change, the auth cache kept current by
LISTEN/NOTIFY, and the login rate limit. Orgs and users are seeded straight
into the database (harness.seed_org), so these tests do not depend on the
signup route."""
import concurrent.futures
import hashlib
import json
import secrets
import string
import time
import unittest

import harness

FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
PW = "correct horse battery"


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


def api_key():
    """A key in tenantd's format and its lookup prefix."""
    low = string.ascii_lowercase + string.digits
    b62 = string.ascii_letters + string.digits
    prefix = "".join(secrets.choice(low) for _ in range(8))
    key = "tdk_" + prefix + "_" + "".join(secrets.choice(b62) for _ in range(43))
    return key, prefix


class AuthCase(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0")

    def sql(self, q):
        return self.pg.psql(q, self.dbname)

    def seed(self, slug, users):
        return harness.seed_org(self.pg, self.dbname, slug, users)

    def login(self, email, password=PW, org=None, headers=None):
        body = {"email": email, "password": password}
        if org is not None:
            body["org"] = org
        return self.server.json("POST", "/v1/auth/login", body, headers)

    def tokens(self, email, password=PW, org=None):
        st, b, _ = self.login(email, password, org)
        self.assertEqual(st, 200, b)
        return b

    def me(self, tok, headers=None):
        h = bearer(tok)
        h.update(headers or {})
        return self.server.json("GET", "/v1/auth/me", None, h)

    def refresh(self, rt):
        return self.server.json("POST", "/v1/auth/refresh", {"refresh_token": rt})

    def settles(self, fn, want, timeout=2.0):
        """Asserts that fn() answers `want` within timeout. For changes made
        behind the server's back (psql, i.e. another instance): they reach
        the cache through NOTIFY, milliseconds after the commit, so the
        request right after psql may still race the notification."""
        deadline = time.monotonic() + timeout
        got = fn()
        while got != want and time.monotonic() < deadline:
            time.sleep(0.005)
            got = fn()
        self.assertEqual(got, want)

    def add_key(self, org_id, role="admin", revoked=False):
        key, prefix = api_key()
        kid = self.sql(
            "INSERT INTO public.api_keys (org_id, name, role, prefix, key_hash, revoked_at) VALUES "
            f"('{org_id}', 'k', '{role}', '{prefix}', "
            f"'{hashlib.sha256(key.encode()).hexdigest()}', "
            f"{'now()' if revoked else 'NULL'}) RETURNING id")[0]
        return key, kid


class LoginTest(AuthCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.acme = harness.seed_org(cls.pg, cls.dbname, "acme", [
            ("ann@acme.io", PW, "admin"), ("bob@acme.io", PW, "member")])
        # One email in two orgs, with different passwords.
        cls.o1 = harness.seed_org(cls.pg, cls.dbname, "one", [("dup@x.io", "password-one", "admin")])
        cls.o2 = harness.seed_org(cls.pg, cls.dbname, "two", [("dup@x.io", "password-two", "admin")])
        cls.susp = harness.seed_org(cls.pg, cls.dbname, "frozen", [("sue@frozen.io", PW, "admin")],
                                    status="suspended")

    def test_login_success(self):
        st, b, r = self.login("ann@acme.io")
        self.assertEqual(st, 200, b)
        self.assertEqual(b["token_type"], "Bearer")
        self.assertEqual(b["expires_in"], 900)
        self.assertTrue(b["refresh_token"].startswith("tdr_"))
        self.assertEqual(b["access_token"].count("."), 2)
        self.assertEqual(b["user"]["email"], "ann@acme.io")
        self.assertEqual(b["user"]["role"], "admin")
        self.assertEqual(b["user"]["id"], self.acme["users"]["ann@acme.io"])
        self.assertNotIn("password_hash", b["user"])
        self.assertEqual(b["org"]["slug"], "acme")
        self.assertEqual(b["org"]["id"], self.acme["id"])
        self.assertEqual(r.getheader("Cache-Control"), "no-store")
        st, me, _ = self.me(b["access_token"])
        self.assertEqual(st, 200, me)
        self.assertEqual(me["user"]["id"], b["user"]["id"])
        self.assertEqual(me["org"]["slug"], "acme")

    def test_email_is_case_insensitive(self):
        st, b, _ = self.login("ANN@Acme.IO")
        self.assertEqual(st, 200, b)
        self.assertEqual(b["user"]["email"], "ann@acme.io")

    def test_wrong_password_and_unknown_email_answer_alike(self):
        answers = []
        for email, pw in [("ann@acme.io", "wrong password"), ("nobody@acme.io", PW),
                          ("ann@acme.io", ""), ("nobody@nowhere.io", "x" * 1024)]:
            st, b, r = self.login(email, pw)
            self.assertEqual(st, 401, (email, b))
            self.assertTrue(r.getheader("WWW-Authenticate", "").startswith("Bearer"))
            b.pop("request_id")
            answers.append(b)
        for b in answers[1:]:
            self.assertEqual(b, answers[0])
        self.assertEqual(answers[0]["code"], "unauthorized")

    def test_login_bad_bodies(self):
        for body in [b"", b"not json", b"[1,2]", b'"str"', b'{"email": "a@b.c", "email": "x"}']:
            r = self.server.request("POST", "/v1/auth/login", body,
                                    {"Content-Type": "application/json"})
            self.assertEqual(r.status, 400, body)
            self.assertEqual(json.loads(r.body)["code"], "bad_request")
        cases = [({}, {"email", "password"}),
                 ({"email": 5, "password": PW}, {"email"}),
                 ({"email": "ann@acme.io", "password": ["x"]}, {"password"}),
                 ({"email": "ann@acme.io", "password": "x" * 1025}, {"password"}),
                 ({"email": "a" * 255, "password": PW}, {"email"}),
                 ({"email": "ann@acme.io", "password": PW, "org": 7}, {"org"})]
        for body, fields in cases:
            st, b, _ = self.server.json("POST", "/v1/auth/login", body)
            self.assertEqual(st, 422, (body, b))
            self.assertEqual({e["field"] for e in b["errors"]}, fields, body)

    def test_email_in_several_orgs_needs_org(self):
        # The oldest account's password without org: told to send org
        # (only a holder of that password learns the email is ambiguous).
        st, b, _ = self.login("dup@x.io", "password-one")
        self.assertEqual(st, 409, b)
        self.assertEqual(b["code"], "org_required")
        # Any other password: the plain 401, nothing tells that the email
        # exists twice.
        st, amb, _ = self.login("dup@x.io", "password-two")
        self.assertEqual(st, 401, amb)
        st, wrong, _ = self.login("ann@acme.io", "nope")
        amb.pop("request_id"), wrong.pop("request_id")
        self.assertEqual(amb, wrong)
        b = self.tokens("dup@x.io", "password-one", org="one")
        self.assertEqual(b["org"]["id"], self.o1["id"])
        st, b, _ = self.login("dup@x.io", "password-two", headers={"X-Org-Name": "TWO"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["org"]["id"], self.o2["id"])
        # The other org's password does not open this org.
        self.assertEqual(self.login("dup@x.io", "password-two", org="one")[0], 401)
        self.assertEqual(self.login("dup@x.io", "password-one", org="nosuchorg")[0], 401)
        # With a single match, an org is not needed (and a wrong one fails).
        self.assertEqual(self.login("ann@acme.io", PW, org="acme")[0], 200)
        self.assertEqual(self.login("ann@acme.io", PW, org="one")[0], 401)

    def test_suspended_org(self):
        st, b, _ = self.login("sue@frozen.io")
        self.assertEqual(st, 403, b)
        self.assertEqual(b["code"], "forbidden")
        # A wrong password does not learn that the org is suspended.
        self.assertEqual(self.login("sue@frozen.io", "wrong pw!")[0], 401)

    def test_auth_required_and_malformed_headers(self):
        st, b, r = self.server.json("GET", "/v1/auth/me")
        self.assertEqual(st, 401, b)
        self.assertTrue(r.getheader("WWW-Authenticate", "").startswith("Bearer"))
        tok = self.tokens("bob@acme.io")["access_token"]
        for h in ["Basic " + tok, "Bearer", "Bearer  ", tok, "Bearer " + tok + " x"]:
            self.assertEqual(self.server.json("GET", "/v1/auth/me", None,
                                              {"Authorization": h})[0], 401, h)
        self.assertEqual(self.server.json("GET", "/v1/auth/me", None,
                                          {"Authorization": "bearer " + tok})[0], 200)

    def test_x_org_name(self):
        tok = self.tokens("bob@acme.io")["access_token"]
        self.assertEqual(self.me(tok, {"X-Org-Name": "acme"})[0], 200)
        self.assertEqual(self.me(tok, {"X-Org-Name": "ACME"})[0], 200)
        st, b, _ = self.me(tok, {"X-Org-Name": "one"})
        self.assertEqual(st, 403, b)
        self.assertEqual(self.me(tok, {"X-Org-Name": "nosuchorg"})[0], 403)

    def test_api_key_me_and_levels(self):
        key, kid = self.add_key(self.acme["id"], role="member")
        st, b, _ = self.me(key)
        self.assertEqual(st, 200, b)
        self.assertIsNone(b["user"])
        self.assertEqual(b["api_key"]["id"], kid)
        self.assertEqual(b["api_key"]["role"], "member")
        self.assertEqual(b["org"]["id"], self.acme["id"])
        # last_used_at is written in the background, not awaited by the answer.
        self.settles(lambda: self.sql(f"SELECT last_used_at IS NOT NULL FROM public.api_keys "
                                      f"WHERE id = '{kid}'"), ["t"])
        # Password change is for users only.
        st, b, _ = self.server.json("POST", "/v1/auth/password",
                                    {"current_password": PW, "new_password": "x" * 12},
                                    bearer(key))
        self.assertEqual(st, 403, b)
        # A wrong secret with a real prefix, and a revoked key.
        self.assertEqual(self.me(key[:-1] + ("A" if key[-1] != "A" else "B"))[0], 401)
        rkey, _ = self.add_key(self.acme["id"], revoked=True)
        self.assertEqual(self.me(rkey)[0], 401)
        # Deleting the key stops it on the next request (NOTIFY).
        self.assertEqual(self.me(key)[0], 200)
        self.sql(f"DELETE FROM public.api_keys WHERE id = '{kid}'")
        self.settles(lambda: self.me(key)[0], 401)


class RefreshTest(AuthCase):
    # Reuse detection without the reuse grace (test_accounts covers the grace).
    server_env = dict(AuthCase.server_env, TENANTD_REFRESH_REUSE_GRACE_S="0")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.org = harness.seed_org(cls.pg, cls.dbname, "rot", [("rita@rot.io", PW, "admin")])

    def test_rotation_and_reuse_revokes_family(self):
        t0 = self.tokens("rita@rot.io")
        st, t1, _ = self.refresh(t0["refresh_token"])
        self.assertEqual(st, 200, t1)
        self.assertNotEqual(t1["refresh_token"], t0["refresh_token"])
        self.assertEqual(t1["user"]["id"], t0["user"]["id"])
        self.assertEqual(self.me(t1["access_token"])[0], 200)
        st, t2, _ = self.refresh(t1["refresh_token"])
        self.assertEqual(st, 200, t2)
        # t0 was used: presenting it again is reuse, and the family dies,
        # including the newest token t2.
        st, b, _ = self.refresh(t0["refresh_token"])
        self.assertEqual(st, 401, b)
        self.assertEqual(self.refresh(t2["refresh_token"])[0], 401)
        # Another login (another family) is unaffected.
        other = self.tokens("rita@rot.io")
        self.assertEqual(self.refresh(other["refresh_token"])[0], 200)

    def test_concurrent_refresh_exactly_one_wins(self):
        for _ in range(3):
            rt = self.tokens("rita@rot.io")["refresh_token"]
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                results = list(ex.map(lambda _: self.refresh(rt), range(8)))
            self.assertEqual(sorted(st for st, _, _ in results), [200] + [401] * 7,
                             [st for st, _, _ in results])
            # The losers presented a rotated token: reuse, so the family
            # dies, the winner's new refresh token with it (README: "a
            # parallel refresh counts as reuse").
            winner = next(b for st, b, _ in results if st == 200)
            st, b, _ = self.refresh(winner["refresh_token"])
            self.assertEqual(st, 401, b)

    def test_refresh_bad_input(self):
        self.assertEqual(self.refresh("tdr_" + "A" * 43)[0], 401)  # well-formed, unknown
        for bad in ["", "nope", "tdr_" + "A" * 42, "tdr_" + "!" * 43, "x" * 5000]:
            st, b, _ = self.refresh(bad)
            self.assertEqual(st, 401, (bad, b))
        st, b, _ = self.server.json("POST", "/v1/auth/refresh", {})
        self.assertEqual(st, 422, b)
        self.assertEqual(b["errors"][0]["field"], "refresh_token")
        st, b, _ = self.server.json("POST", "/v1/auth/refresh", {"refresh_token": 12})
        self.assertEqual(st, 422, b)
        r = self.server.request("POST", "/v1/auth/refresh", b"{", {"Content-Type": "application/json"})
        self.assertEqual(r.status, 400)

    def test_expired_refresh_token(self):
        t = self.tokens("rita@rot.io")
        h = hashlib.sha256(t["refresh_token"].encode()).hexdigest()
        self.sql(f"UPDATE public.refresh_tokens SET expires_at = now() - interval '1 s' "
                 f"WHERE token_hash = '{h}'")
        self.assertEqual(self.refresh(t["refresh_token"])[0], 401)

    def test_logout(self):
        t = self.tokens("rita@rot.io")
        st, t1, _ = self.refresh(t["refresh_token"])
        self.assertEqual(st, 200)
        st, b, _ = self.server.json("POST", "/v1/auth/logout", {"refresh_token": t1["refresh_token"]})
        self.assertEqual(st, 204, b)
        self.assertIsNone(b)
        self.assertEqual(self.refresh(t1["refresh_token"])[0], 401)
        # Idempotent, and unknown or malformed tokens are nothing to revoke.
        for rt in [t1["refresh_token"], "tdr_" + "B" * 43, "garbage"]:
            self.assertEqual(self.server.json("POST", "/v1/auth/logout", {"refresh_token": rt})[0], 204)
        self.assertEqual(self.server.json("POST", "/v1/auth/logout", {})[0], 422)
        self.assertEqual(self.server.request("POST", "/v1/auth/logout", b"[]",
                                             {"Content-Type": "application/json"}).status, 400)
        # Logging out one session leaves the others.
        other = self.tokens("rita@rot.io")
        self.assertEqual(self.refresh(other["refresh_token"])[0], 200)

    def test_suspended_org_refresh_is_403_and_keeps_token(self):
        org = harness.seed_org(self.pg, self.dbname, "paused", [("pam@paused.io", PW, "admin")])
        t = self.tokens("pam@paused.io")
        self.sql(f"UPDATE public.orgs SET status = 'suspended' WHERE id = '{org['id']}'")
        st, b, _ = self.refresh(t["refresh_token"])
        self.assertEqual(st, 403, b)
        self.assertEqual(self.me(t["access_token"])[0], 403)
        self.sql(f"UPDATE public.orgs SET status = 'active' WHERE id = '{org['id']}'")
        self.assertEqual(self.refresh(t["refresh_token"])[0], 200)


class PasswordAndCacheTest(AuthCase):

    def test_password_change(self):
        org = self.seed("pwd", [("pat@pwd.io", PW, "admin")])
        t = self.tokens("pat@pwd.io")
        t2 = self.tokens("pat@pwd.io")
        h = bearer(t["access_token"])
        new = "a brand new password"
        for body, field in [({"current_password": PW}, "new_password"),
                            ({"current_password": PW, "new_password": "short"}, "new_password"),
                            ({"current_password": PW, "new_password": "x" * 1025}, "new_password"),
                            ({"new_password": new}, "current_password"),
                            ({"current_password": 1, "new_password": new}, "current_password")]:
            st, b, _ = self.server.json("POST", "/v1/auth/password", body, h)
            self.assertEqual(st, 422, (body, b))
            self.assertIn(field, {e["field"] for e in b["errors"]})
        st, b, _ = self.server.json("POST", "/v1/auth/password",
                                    {"current_password": "not it at all", "new_password": new}, h)
        self.assertEqual(st, 422, b)
        self.assertEqual(b["errors"][0]["field"], "current_password")
        self.assertEqual(self.me(t["access_token"])[0], 200)  # nothing changed

        st, b, _ = self.server.json("POST", "/v1/auth/password",
                                    {"current_password": PW, "new_password": new}, h)
        self.assertEqual(st, 204, b)
        # Every access token of the user dies at once, every refresh token too.
        self.assertEqual(self.me(t["access_token"])[0], 401)
        self.assertEqual(self.me(t2["access_token"])[0], 401)
        self.assertEqual(self.refresh(t["refresh_token"])[0], 401)
        self.assertEqual(self.refresh(t2["refresh_token"])[0], 401)
        self.assertEqual(self.login("pat@pwd.io", PW)[0], 401)
        t3 = self.tokens("pat@pwd.io", new)
        self.assertEqual(self.me(t3["access_token"])[0], 200)
        self.assertEqual(self.sql("SELECT count(*) FROM public.refresh_tokens WHERE user_id = "
                                  f"'{org['users']['pat@pwd.io']}' AND revoked_at IS NULL")[0], "1")

    def test_cache_follows_database_changes(self):
        """Changes made behind the server's back (psql, as another instance
        would) reach the cache through the triggers' NOTIFY."""
        org = self.seed("cachy", [("cid@cachy.io", PW, "admin")])
        uid = org["users"]["cid@cachy.io"]
        tok = self.tokens("cid@cachy.io")["access_token"]
        key, _ = self.add_key(org["id"])
        me_tok = lambda h=None: self.me(tok, h)[0]
        me_key = lambda: self.me(key)[0]
        self.assertEqual(me_tok(), 200)
        self.assertEqual(me_key(), 200)

        # The cache is really used: without the trigger, a bumped token
        # version goes unnoticed (until the TTL)...
        self.sql("ALTER TABLE public.users DISABLE TRIGGER users_notify")
        try:
            self.sql(f"UPDATE public.users SET token_version = token_version + 1 WHERE id = '{uid}'")
            for _ in range(5):
                self.assertEqual(me_tok(), 200)
                time.sleep(0.02)
        finally:
            self.sql("ALTER TABLE public.users ENABLE TRIGGER users_notify")
        # ... and with it, any notified change of the user reloads the row.
        self.sql(f"UPDATE public.users SET role = 'member' WHERE id = '{uid}'")
        self.settles(me_tok, 401)  # the bumped version is seen now
        self.sql(f"UPDATE public.users SET token_version = token_version - 1 WHERE id = '{uid}'")
        self.settles(me_tok, 200)

        # Rename: X-Org-Name follows the new slug.
        self.sql(f"UPDATE public.orgs SET slug = 'cachy2' WHERE id = '{org['id']}'")
        self.settles(lambda: me_tok({"X-Org-Name": "cachy2"}), 200)
        self.assertEqual(me_tok({"X-Org-Name": "cachy"}), 403)
        # Suspension: 403 for tokens and keys; back again: 200.
        self.sql(f"UPDATE public.orgs SET status = 'suspended' WHERE id = '{org['id']}'")
        self.settles(me_tok, 403)
        self.assertEqual(me_key(), 403)
        self.sql(f"UPDATE public.orgs SET status = 'active' WHERE id = '{org['id']}'")
        self.settles(me_tok, 200)
        # Deleted org: 401.
        self.sql(f"UPDATE public.orgs SET status = 'deleted' WHERE id = '{org['id']}'")
        self.settles(me_tok, 401)
        self.assertEqual(me_key(), 401)
        self.sql(f"UPDATE public.orgs SET status = 'active' WHERE id = '{org['id']}'")
        self.settles(me_tok, 200)
        # User removed: 401.
        self.sql(f"DELETE FROM public.users WHERE id = '{uid}'")
        self.settles(me_tok, 401)

    def test_demotion_applies_at_once(self):
        """The role comes from the cache, not the token: an admin-only route
        refuses a demoted admin."""
        org = self.seed("demo", [("dee@demo.io", PW, "admin")])
        uid = org["users"]["dee@demo.io"]
        tok = self.tokens("dee@demo.io")["access_token"]
        # POST /v1/api-keys is admin-only; an empty body is refused after the
        # auth check (422), a member is refused by it (403).
        post = lambda: self.server.json("POST", "/v1/api-keys", {}, bearer(tok))[0]
        self.assertEqual(post(), 422)
        self.sql(f"UPDATE public.users SET role = 'member' WHERE id = '{uid}'")
        self.settles(post, 403)
        self.sql(f"UPDATE public.users SET role = 'admin' WHERE id = '{uid}'")
        self.settles(post, 422)


class MultiLoopTest(AuthCase):
    """Two loops share one cache and one password pool: concurrent logins,
    refresh chains and cached authentications, while the rows change under
    them, all answer correctly (and cleanly under the sanitizers)."""
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="0", TENANTD_THREADS="2")

    def test_concurrent_mix(self):
        org = self.seed("busy", [("u1@busy.io", PW, "admin"), ("u2@busy.io", PW, "member")])
        key, _ = self.add_key(org["id"], role="member")

        def worker(i):
            email = "u1@busy.io" if i % 2 else "u2@busy.io"
            t = self.tokens(email)
            out = []
            for n in range(15):
                out.append(self.me(t["access_token"])[0])
                out.append(self.me(key)[0])
                if n % 5 == 0:
                    st, t2, _ = self.refresh(t["refresh_token"])
                    out.append(st)
                    if st == 200:
                        t = t2
            return out

        def churn():
            for n in range(10):
                role = "member" if n % 2 == 0 else "admin"
                self.sql(f"UPDATE public.users SET role = '{role}' WHERE org_id = '{org['id']}' "
                         "AND email = 'u1@busy.io'")
                self.sql(f"UPDATE public.orgs SET slug = 'busy{n}' WHERE id = '{org['id']}'")
                time.sleep(0.01)

        with concurrent.futures.ThreadPoolExecutor(9) as ex:
            ch = ex.submit(churn)
            results = list(ex.map(worker, range(8)))
            ch.result()
        flat = [x for r in results for x in r]
        self.assertEqual(set(flat), {200}, flat)


class LoginRateLimitTest(AuthCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="3")

    def test_limit_per_ip_and_email(self):
        self.seed("lim", [("lee@lim.io", PW, "admin")])
        for i in range(3):
            st, b, r = self.login("lee@lim.io", "bad password")
            self.assertEqual(st, 401, b)
            self.assertEqual(r.getheader("RateLimit-Limit"), "3")
            self.assertEqual(r.getheader("RateLimit-Remaining"), str(2 - i))
        st, b, r = self.login("lee@lim.io")  # even the right password
        self.assertEqual(st, 429, b)
        self.assertEqual(b["code"], "rate_limited")
        self.assertGreaterEqual(int(r.getheader("Retry-After")), 1)
        self.assertLessEqual(int(r.getheader("Retry-After")), 20)
        self.assertEqual(r.getheader("RateLimit-Limit"), "3")
        self.assertEqual(r.getheader("RateLimit-Remaining"), "0")
        self.assertGreater(int(r.getheader("RateLimit-Reset")), 0)
        # The IP is out of attempts too, whatever the email.
        self.assertEqual(self.login("other@lim.io")[0], 429)
        # Other routes are not limited.
        self.assertEqual(self.server.get("/health").status, 200)


class LoginRateLimitPerEmailTest(AuthCase):
    """The per-email budget holds across client addresses (a password
    guesser cannot spread one account's attempts over many IPs), and a
    successful login gives the email its whole budget back. One org, so the
    test holds whether the key is the email or (org, email)."""
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="3", TENANTD_TRUSTED_PROXIES="127.0.0.1")

    def attempt(self, email, ip, password="bad password"):
        return self.login(email, password, headers={"X-Forwarded-For": ip})[0]

    def test_email_limit_across_ips_and_reset(self):
        self.seed("perm", [("pat@perm.io", PW, "admin"), ("quinn@perm.io", PW, "admin")])
        ips = (f"203.0.113.{i}" for i in range(20, 60))  # one fresh address per attempt
        self.assertEqual([self.attempt("pat@perm.io", next(ips)) for _ in range(4)],
                         [401, 401, 401, 429])
        # Even the right password, from yet another address.
        self.assertEqual(self.attempt("pat@perm.io", next(ips), PW), 429)
        # Another email of the same org is not limited by pat's attempts.
        self.assertEqual(self.attempt("quinn@perm.io", next(ips)), 401)
        # A successful login resets the email's budget: after it, three
        # more failures pass before the fourth is refused.
        self.assertEqual(self.attempt("quinn@perm.io", next(ips)), 401)
        self.assertEqual(self.attempt("quinn@perm.io", next(ips), PW), 200)
        self.assertEqual([self.attempt("quinn@perm.io", next(ips)) for _ in range(4)],
                         [401, 401, 401, 429])


class LoginRateLimitAcrossLoopsTest(AuthCase):
    """The limit is per process, not per event loop: with two loops sharing
    the port, connections landing on either loop draw from one budget."""
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="3", TENANTD_THREADS="2")

    def test_one_budget_for_all_loops(self):
        self.seed("limx", [("lou@limx.io", PW, "admin")])
        # Each login on a new connection: SO_REUSEPORT spreads them over both loops.
        statuses = [self.login("lou@limx.io", "bad password")[0] for _ in range(10)]
        self.assertEqual(statuses[:3], [401, 401, 401], statuses)
        self.assertEqual(set(statuses[3:]), {429}, statuses)


class LoginRateLimitBehindProxyTest(AuthCase):
    """Behind a trusted proxy the limit is per client (X-Forwarded-For), not
    one budget for everybody the proxy forwards; a client that is not a
    trusted proxy cannot pick its address by sending the header."""
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="2", TENANTD_TRUSTED_PROXIES="127.0.0.1")

    def attempts(self, email, xff, n=3):
        return [self.login(email, "bad password", headers={"X-Forwarded-For": xff})[0]
                for _ in range(n)]

    def test_per_forwarded_client(self):
        self.seed("prx", [(f"u{i}@prx.io", PW, "admin") for i in range(6)])
        self.assertEqual(self.attempts("u0@prx.io", "203.0.113.5"), [401, 401, 429])
        # Another client behind the same proxy has its own budget ...
        self.assertEqual(self.attempts("u1@prx.io", "203.0.113.6"), [401, 401, 429])
        # ... and what a client writes left of the proxy's own entry is not
        # believed: this is still 203.0.113.5, out of attempts.
        self.assertEqual(self.attempts("u2@prx.io", "198.51.100.1, 203.0.113.5", n=1), [429])
        # The right password from a fresh client works.
        st, b, _ = self.login("u3@prx.io", headers={"X-Forwarded-For": "203.0.113.7"})
        self.assertEqual(st, 200, b)
        # The access log names the client, not the proxy (a line is written
        # once its answer is sent, so the last one may lag a little).
        want = {"203.0.113.5", "203.0.113.6", "203.0.113.7"}
        deadline = time.monotonic() + 5
        while True:
            ips = {l.get("client_ip") for l in self.server.log_lines()
                   if l.get("msg") == "request" and l.get("route") == "/v1/auth/login"}
            if want <= ips or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(want <= ips, ips)
        self.assertNotIn("127.0.0.1", ips)


class LoginRateLimitNoProxyTest(AuthCase):
    """Without TENANTD_TRUSTED_PROXIES, X-Forwarded-For is ignored: sending a
    new address with every attempt does not escape the limit."""
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="2")

    def test_header_ignored(self):
        self.seed("noprx", [(f"v{i}@noprx.io", PW, "admin") for i in range(3)])
        statuses = [self.login(f"v{i}@noprx.io", "bad password",
                               headers={"X-Forwarded-For": f"203.0.113.{i + 10}"})[0]
                    for i in range(3)]
        self.assertEqual(statuses, [401, 401, 429])


class DefaultParamsTest(AuthCase):
    """Default argon2id parameters (m=19456, t=2): login works, and a hash
    made with weaker parameters is upgraded after a successful login."""
    server_env = {"TENANTD_LOGIN_LIMIT": "0"}

    def test_login_and_rehash(self):
        org = self.seed("slowhash", [("sam@slow.io", PW, "admin")])  # seeded with m=1024,t=1
        uid = org["users"]["sam@slow.io"]
        t0 = time.monotonic()
        b = self.tokens("sam@slow.io")
        self.assertEqual(b["user"]["id"], uid)
        deadline = time.monotonic() + 10
        phc = ""
        while time.monotonic() < deadline:
            phc = self.sql(f"SELECT password_hash FROM public.users WHERE id = '{uid}'")[0]
            if "m=19456,t=2,p=1" in phc:
                break
            time.sleep(0.05)
        self.assertIn("$argon2id$v=19$m=19456,t=2,p=1$", phc)
        # The new hash verifies the same password; a wrong one still fails.
        self.assertEqual(self.login("sam@slow.io")[0], 200)
        self.assertEqual(self.login("sam@slow.io", "wrong password")[0], 401)
        self.assertLess(time.monotonic() - t0, 30)

    def test_unknown_email_costs_like_wrong_password(self):
        self.seed("timing", [("tim@timing.io", PW, "admin")])
        self.tokens("tim@timing.io")  # re-hashed to the default parameters

        pid = self.server.proc.pid

        def cpu_ms(email, pw, n=8):
            # The server's CPU time (the hashing threads included): unlike
            # wall time, it hardly moves when the machine is busy.
            before = harness.process_cpu_ms(pid)
            for _ in range(n):
                self.assertEqual(self.login(email, pw)[0], 401)
            return (harness.process_cpu_ms(pid) - before) / n

        # Give the background re-hash time to land first.
        self.settles(lambda: "m=19456" in self.sql(
            "SELECT password_hash FROM public.users WHERE email = 'tim@timing.io'")[0], True, 10)
        wrong = cpu_ms("tim@timing.io", "not the password")
        unknown = cpu_ms("nobody@timing.io", "not the password")
        # Both run one argon2id verification with the same parameters.
        self.assertGreater(wrong, 5, "a real argon2id check takes milliseconds of CPU")
        self.assertGreater(unknown, wrong / 2, (wrong, unknown))
        self.assertLess(unknown, wrong * 2, (wrong, unknown))


if __name__ == "__main__":
    unittest.main()
