"""A signed-in user links an OIDC identity to their account and unlinks it,
against test_oidc's fake provider: the same code flow (PKCE, state, nonce,
id_token verified), completed only by the user who started it (a callback
URL someone else obtained links nothing); an identity of one user only; the
last sign-in method of a user without a password cannot be unlinked; audit
events; isolation between orgs; bad input."""
import os
import re
import subprocess
import time
import unittest
import urllib.parse
import uuid

import harness
from test_accounts import FAST, SmtpSink, token_of
from test_oidc import CLIENT, CLIENT_SECRET, REDIRECT, Provider
from test_users import bearer, create_key, create_user, login, signup

PW = "correct horse battery"


class OidcLinkTest(harness.DbTestCase):

    @classmethod
    def setUpClass(cls):
        cls.prov = Provider()
        cls.sink = SmtpSink().start()
        harness.secret(CLIENT_SECRET)
        cls.server_env = dict(FAST, TENANTD_SMTP_URL=f"smtp://127.0.0.1:{cls.sink.port}",
                              TENANTD_OIDC_FAKE_ISSUER=cls.prov.issuer,
                              TENANTD_OIDC_FAKE_CLIENT_ID=CLIENT,
                              TENANTD_OIDC_FAKE_CLIENT_SECRET=CLIENT_SECRET,
                              TENANTD_OIDC_REDIRECT_URIS=REDIRECT)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.prov.stop()
            cls.sink.stop()

    def setUp(self):
        self.org = signup(self.server)
        self.slug, self.admin = self.org["slug"], self.org["access_token"]
        self.admin_id = self.org["user"]["id"]

    # ---- the provider's side and the flow

    def provider_code(self, p, sub, email=None):
        """What the fake provider hands the browser for auth params p."""
        now = int(time.time())
        claims = {"iss": self.prov.issuer, "aud": CLIENT, "sub": sub, "email_verified": True,
                  "email": email or f"{sub}@gmail.example", "iat": now, "exp": now + 300,
                  "nonce": p["nonce"]}
        code = uuid.uuid4().hex
        key = self.prov.keys[0]
        self.prov.codes[code] = {"challenge": p["code_challenge"], "claims": claims,
                                 "make": lambda cl: key.sign(cl)}
        return code

    def link_start(self, token):
        st, b, _ = self.server.json("POST", "/v1/auth/oidc/fake/link", {"redirect_uri": REDIRECT},
                                    bearer(token))
        self.assertEqual(st, 200, b)
        loc = urllib.parse.urlsplit(b["authorization_url"])
        self.assertEqual(f"{loc.scheme}://{loc.netloc}{loc.path}", self.prov.issuer + "/authorize")
        p = dict(urllib.parse.parse_qsl(loc.query))
        self.assertEqual((p["client_id"], p["code_challenge_method"]), (CLIENT, "S256"))
        return p

    def callback(self, p, sub):
        """The browser back at the callback: 302 to the frontend with the
        link's state and code; returns them."""
        code = self.provider_code(p, sub)
        r = self.server.request("GET", "/v1/auth/oidc/fake/callback?" +
                                urllib.parse.urlencode({"state": p["state"], "code": code}))
        body = r.read()
        self.assertEqual(r.status, 302, body)
        loc = urllib.parse.urlsplit(r.getheader("Location"))
        self.assertEqual(f"{loc.scheme}://{loc.netloc}{loc.path}", REDIRECT)
        q = dict(urllib.parse.parse_qsl(loc.query))
        self.assertEqual(q["link_provider"], "fake")
        self.assertNotIn("code", q)  # not a sign-in code
        return {"state": q["link_state"], "code": q["link_code"]}

    def complete(self, token, handed):
        st, b, _ = self.server.json("POST", "/v1/auth/oidc/fake/link/complete", handed,
                                    bearer(token))
        return st, b

    def link(self, token, sub):
        st, b = self.complete(token, self.callback(self.link_start(token), sub))
        self.assertEqual(st, 200, b)
        return b

    def unlink(self, token):
        st, b, _ = self.server.json("DELETE", "/v1/auth/oidc/fake/link", None, bearer(token))
        return st, b

    def sign_in(self, sub, slug=None):
        """An OIDC sign-in with subject sub: the user's tokens, or None when
        refused."""
        r = self.server.request("GET", "/v1/auth/oidc/fake/start?" + urllib.parse.urlencode(
            {"org": slug or self.slug, "redirect_uri": REDIRECT}))
        r.read()
        self.assertEqual(r.status, 302)
        p = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.getheader("Location")).query))
        code = self.provider_code(p, sub)
        r = self.server.request("GET", "/v1/auth/oidc/fake/callback?" +
                                urllib.parse.urlencode({"state": p["state"], "code": code}))
        r.read()
        loc = r.getheader("Location") or ""
        if r.status != 302 or "?code=" not in loc:
            return None
        st, tok, _ = self.server.json("POST", "/v1/auth/oidc/exchange",
                                      {"code": loc.split("?code=", 1)[1]})
        self.assertEqual(st, 200, tok)
        harness.secret(tok["access_token"]), harness.secret(tok["refresh_token"])
        return tok

    def events(self, action, token=None):
        st, b, _ = self.server.json("GET", f"/v1/audit-events?action={action}", None,
                                    bearer(token or self.admin))
        self.assertEqual(st, 200, b)
        return b["data"]

    def member(self, email=None):
        email = email or f"m{uuid.uuid4().hex[:6]}@{self.slug}.example.com"
        u = create_user(self.server, self.admin, email, password=PW)
        return u, login(self.server, email, PW, org=self.slug)["access_token"]

    # ---- tests

    def test_link_sign_in_unlink(self):
        sub = "g-" + uuid.uuid4().hex[:8]
        self.assertIsNone(self.sign_in(sub))  # not linked yet: refused
        user = self.link(self.admin, sub)
        self.assertEqual(user["id"], self.admin_id)
        self.assertEqual(user["identities"], [{"provider": "fake", "subject": sub}])
        st, me, _ = self.server.json("GET", "/v1/auth/me", None, bearer(self.admin))
        self.assertEqual(st, 200, me)
        self.assertEqual(me["user"]["identities"],
                         [{"provider": "fake", "subject": sub}])
        ev = self.events("user.identity_linked")
        self.assertEqual(len(ev), 1, ev)
        self.assertEqual((ev[0]["actor"], ev[0]["target"]),
                         ({"type": "user", "id": self.admin_id}, {"type": "user", "id": self.admin_id}))
        self.assertEqual((ev[0]["details"]["provider"], ev[0]["details"]["subject"]), ("fake", sub))
        # The identity now signs in as this user (the password still works).
        tok = self.sign_in(sub)
        self.assertEqual(tok["user"]["id"], self.admin_id)
        login(self.server, self.org["email"], PW, org=self.slug)
        # Unlink: 204 once, then 404; the identity signs in no more.
        st, b = self.unlink(self.admin)
        self.assertEqual(st, 204, b)
        st, b = self.unlink(self.admin)
        self.assertEqual((st, b["code"]), (404, "not_found"))
        self.assertIsNone(self.sign_in(sub))
        ev = self.events("user.identity_unlinked")
        self.assertEqual([(e["actor"]["id"], e["details"]) for e in ev],
                         [(self.admin_id, {"provider": "fake", "subject": sub})])

    def test_only_the_starter_completes(self):
        # The attacker starts a link of their own account and takes the
        # callback's URL (their identity at the provider) to the victim.
        attacker, atok = self.member()
        victim, vtok = self.member()
        other = signup(self.server)
        handed = self.callback(self.link_start(atok), "attacker-sub")
        for tok in (vtok, self.admin, other["access_token"]):
            st, b = self.complete(tok, handed)
            self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        st, me, _ = self.server.json("GET", f"/v1/users/{victim['id']}", None, bearer(self.admin))
        self.assertEqual(me["identities"], [])
        self.assertEqual(self.events("user.identity_linked"), [])
        # The starter still can, once.
        st, b = self.complete(atok, handed)
        self.assertEqual(st, 200, b)
        self.assertEqual(b["id"], attacker["id"])
        st, b = self.complete(atok, handed)
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        # A sign-in flow's callback never hands out a link.
        self.assertIsNone(self.sign_in("nobody-" + uuid.uuid4().hex[:6]))

    def test_identity_of_one_user_and_one_per_provider(self):
        sub = "one-" + uuid.uuid4().hex[:8]
        self.link(self.admin, sub)
        # Again by the same user: 200, no second event.
        again = self.link(self.admin, sub)
        self.assertEqual(again["identities"], [{"provider": "fake", "subject": sub}])
        self.assertEqual(len(self.events("user.identity_linked")), 1)
        # Another user of the org: 409, nothing linked.
        u, tok = self.member()
        st, b = self.complete(tok, self.callback(self.link_start(tok), sub))
        self.assertEqual((st, b["code"]), (409, "identity_taken"), b)
        # A second identity of the same provider: 409 until unlinked.
        st, b = self.complete(self.admin, self.callback(self.link_start(self.admin), "two"))
        self.assertEqual((st, b["code"]), (409, "identity_taken"), b)
        self.assertEqual(len(self.events("user.identity_linked")), 1)
        # The same subject in another org is another identity there.
        other = signup(self.server)
        linked = self.link(other["access_token"], sub)
        self.assertEqual(linked["id"], other["user"]["id"])
        self.assertEqual(self.sign_in(sub)["user"]["id"], self.admin_id)
        self.assertEqual(self.sign_in(sub, other["slug"])["user"]["id"], other["user"]["id"])
        theirs = self.events("user.identity_linked", other["access_token"])
        self.assertEqual([e["actor"]["id"] for e in theirs], [other["user"]["id"]])

    def test_last_method_of_a_user_without_password(self):
        st, b, _ = self.server.json("PATCH", "/v1/org", {"join_policy": "domain",
                                                         "domains": ["corp.test"]}, bearer(self.admin))
        self.assertEqual(st, 200, b)
        sub, email = "nopw-" + uuid.uuid4().hex[:6], f"n{uuid.uuid4().hex[:6]}@corp.test"
        r = self.server.request("GET", "/v1/auth/oidc/fake/start?" + urllib.parse.urlencode(
            {"org": self.slug, "redirect_uri": REDIRECT}))
        r.read()
        p = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.getheader("Location")).query))
        code = self.provider_code(p, sub, email)
        r = self.server.request("GET", "/v1/auth/oidc/fake/callback?" +
                                urllib.parse.urlencode({"state": p["state"], "code": code}))
        r.read()
        st, tok, _ = self.server.json("POST", "/v1/auth/oidc/exchange",
                                      {"code": r.getheader("Location").split("?code=", 1)[1]})
        self.assertEqual(st, 200, tok)
        harness.secret(tok["access_token"]), harness.secret(tok["refresh_token"])
        uid = tok["user"]["id"]
        st, b = self.unlink(tok["access_token"])
        self.assertEqual((st, b["code"]), (409, "last_sign_in_method"), b)
        self.assertEqual(self.events("user.identity_unlinked"), [])
        self.assertEqual(self.sign_in(sub)["user"]["id"], uid)
        # With another identity left, it may go.
        self.pg.psql("INSERT INTO public.user_identities (org_id, user_id, provider, subject)"
                     f" SELECT org_id, id, 'other', 'x' FROM public.users WHERE id = '{uid}'",
                     db=self.dbname)
        st, b = self.unlink(tok["access_token"])
        self.assertEqual(st, 204, b)
        self.pg.psql(f"DELETE FROM public.user_identities WHERE user_id = '{uid}'", db=self.dbname)
        # Once the user has a password (a reset), the last identity may go.
        self.link(tok["access_token"], sub)
        st, _, _ = self.server.json("POST", "/v1/auth/password-reset", {"email": email, "org": self.slug})
        self.assertEqual(st, 202)
        reset = token_of(self.sink.wait_for(email)[-1]["msg"], "/password-reset")
        st, b, _ = self.server.json("POST", "/v1/auth/password-reset/confirm",
                                    {"token": reset, "new_password": "a new password 1"})
        self.assertEqual(st, 204, b)
        fresh = login(self.server, email, "a new password 1", org=self.slug)["access_token"]
        st, b = self.unlink(fresh)
        self.assertEqual(st, 204, b)

    def test_concurrent_unlinks_keep_one(self):
        """Two unlinks of a passwordless user's two identities on two
        backends at once: one goes, one stays. The server's statement is
        run as the server runs it (taken from src/auth/oidclink.c), the
        first held open in a transaction while the second starts."""
        src = open(os.path.join(os.path.dirname(__file__), "../../src/auth/oidclink.c")).read()
        body = src[src.index("q_unlink = {"):]
        body = body[:body.index("};")]
        # The C string literals after the statement's name, the one macro
        # spelled out (no escapes in this statement).
        parts = re.findall(r'"([^"]*)"|\b(OIDC_NO_PASSWORD_SUFFIX)\b', body)[1:]
        sql = "".join(lit or "$" + "A" * 43 for lit, _ in parts)
        uid = str(uuid.uuid4())
        org = self.org["org"]["id"]
        self.pg.psql("INSERT INTO public.users (id, org_id, email, role, password_hash) VALUES"
                     f" ('{uid}', '{org}', 'race@{self.slug}.example.com', 'member',"
                     f" '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA${'A' * 43}');"
                     "INSERT INTO public.user_identities (org_id, user_id, provider, subject) VALUES"
                     f" ('{org}', '{uid}', 'p1', 's1'), ('{org}', '{uid}', 'p2', 's2')", db=self.dbname)

        def stmt(provider):
            return (f"PREPARE u AS {sql}; EXECUTE u('{uid}', '{org}', '{provider}', '127.0.0.1',"
                    " 'r');")
        url = self.pg.url(self.dbname)
        first = subprocess.Popen([harness.PSQL, url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c",
                                  "BEGIN; " + stmt("p1") + " SELECT pg_sleep(1.5); COMMIT;"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        second = subprocess.run([harness.PSQL, url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c",
                                 stmt("p2")], capture_output=True, text=True, timeout=30)
        out1, err1 = first.communicate(timeout=30)
        self.assertEqual((first.returncode, second.returncode), (0, 0), (err1, second.stderr))
        self.assertEqual((out1.split("\n")[0], second.stdout.strip()), ("1|t", "0|t"))
        left = self.pg.psql(f"SELECT provider FROM public.user_identities WHERE user_id = '{uid}'",
                            db=self.dbname)
        self.assertEqual(left, ["p2"])

    def test_bad_input(self):
        def post(path, body, token=None, **hdr):
            st, b, _ = self.server.json("POST", path, body, bearer(token or self.admin, **hdr)
                                        if token is not False else {})
            return st, b
        link = "/v1/auth/oidc/fake/link"
        self.assertEqual(post(link, {"redirect_uri": "https://evil.test/cb"})[0], 422)
        self.assertEqual(post(link, {})[0], 422)
        self.assertEqual(post(link, {"redirect_uri": REDIRECT, "extra": 1})[0], 422)
        self.assertEqual(post(link, [REDIRECT])[0], 400)
        self.assertEqual(post("/v1/auth/oidc/nope/link", {"redirect_uri": REDIRECT})[0], 404)
        self.assertEqual(post(link, {"redirect_uri": REDIRECT}, False)[0], 401)
        key = create_key(self.server, self.admin, role="admin")["key"]
        harness.secret(key)
        self.assertEqual(post(link, {"redirect_uri": REDIRECT}, key)[0], 403)
        done = link + "/complete"
        for body in ({"state": "A" * 43}, {"state": "short", "code": "c"},
                     {"state": "A" * 43, "code": ""}, {"state": "A" * 43, "code": "c" * 2049},
                     {"state": "A" * 43, "code": "c", "x": 1}, {"state": 5, "code": "c"}):
            st, b = post(done, body)
            self.assertEqual(st, 422, (body, b))
        st, b = post(done, {"state": "A" * 43, "code": "c"})
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        for name in ("NOPE", "a" * 40, "bad-name"):
            st, b = self.server.json("DELETE", f"/v1/auth/oidc/{name}/link", None, bearer(self.admin))[:2]
            self.assertEqual(st, 404, (name, b))
        st, _, _ = self.server.json("DELETE", "/v1/auth/oidc/fake/link", None, bearer(key))
        self.assertEqual(st, 403)
        self.assertEqual(self.events("user.identity_linked") + self.events("user.identity_unlinked"), [])


if __name__ == "__main__":
    unittest.main()
