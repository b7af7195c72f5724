"""Sign-in with OIDC end to end against a fake provider in this file
(stdlib http.server; python3-cryptography makes its RS256/ES256 keys and
signs its id_tokens): the code flow with PKCE, state and nonce; forged
id_tokens refused (wrong key, wrong aud, expired, bad nonce, alg none,
HS256 with the public key); key rotation; invitations, the domain join
policy, linked identities, and isolation between orgs."""
import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import unittest
import urllib.parse
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import harness
from test_accounts import SmtpSink, token_of, FAST
from test_users import bearer, signup

REDIRECT = "https://app.example.test/oidc-done"
CLIENT = "client-" + uuid.uuid4().hex[:6]
CLIENT_SECRET = "cs-" + uuid.uuid4().hex


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")


class Key:
    def __init__(self, alg="RS256"):
        self.alg, self.kid = alg, uuid.uuid4().hex[:8]
        self.priv = (rsa.generate_private_key(65537, 2048) if alg == "RS256"
                     else ec.generate_private_key(ec.SECP256R1()))

    def jwk(self):
        pub = self.priv.public_key().public_numbers()
        if self.alg == "RS256":
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                    "n": b64(uint(pub.n)), "e": b64(uint(pub.e))}
        return {"kty": "EC", "kid": self.kid, "use": "sig", "crv": "P-256",
                "x": b64(uint(pub.x, 32)), "y": b64(uint(pub.y, 32))}

    def sign(self, claims, header=None):
        h = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        h.update(header or {})
        si = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(claims).encode())}".encode()
        if self.alg == "RS256":
            sig = self.priv.sign(si, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.priv.sign(si, ec.ECDSA(hashes.SHA256())))
            sig = uint(r, 32) + uint(s, 32)
        return si.decode() + "." + b64(sig)


class Provider:
    def __init__(self):
        self.port = harness.free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = [Key("RS256")]
        self.codes = {}
        self.jwks_fetches = 0
        prov = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, code, obj):
                b = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    self.answer(200, {"issuer": prov.issuer,
                                      "authorization_endpoint": prov.issuer + "/authorize",
                                      "token_endpoint": prov.issuer + "/token",
                                      "jwks_uri": prov.issuer + "/jwks"})
                elif self.path == "/jwks":
                    prov.jwks_fetches += 1
                    self.answer(200, {"keys": [k.jwk() for k in prov.keys]})
                else:
                    self.answer(404, {})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                entry = prov.codes.pop(form.get("code"), None)
                ok = (entry and form.get("client_id") == CLIENT
                      and form.get("client_secret") == CLIENT_SECRET
                      and form.get("grant_type") == "authorization_code"
                      and b64(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
                      == entry["challenge"])
                if not ok:
                    self.answer(400, {"error": "invalid_grant"})
                    return
                self.answer(200, {"id_token": entry["make"](entry["claims"]),
                                  "access_token": "x", "token_type": "Bearer"})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class OidcTest(harness.DbTestCase):

    @classmethod
    def setUpClass(cls):
        cls.prov = Provider()
        cls.sink = SmtpSink().start()
        harness.secret(CLIENT_SECRET)
        cls.server_env = dict(FAST, TENANTD_SMTP_URL=f"smtp://127.0.0.1:{cls.sink.port}",
                              TENANTD_OIDC_FAKE_ISSUER=cls.prov.issuer,
                              TENANTD_OIDC_FAKE_CLIENT_ID=CLIENT,
                              TENANTD_OIDC_FAKE_CLIENT_SECRET=CLIENT_SECRET,
                              TENANTD_OIDC_REDIRECT_URIS=f"https://other.test/x, {REDIRECT}")
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

    def start(self, slug=None, invitation=None, redirect=REDIRECT):
        q = {"org": slug or self.slug, "redirect_uri": redirect}
        if invitation:
            q["invitation"] = invitation
        r = self.server.request("GET", "/v1/auth/oidc/fake/start?" + urllib.parse.urlencode(q))
        body = r.read()
        self.assertEqual(r.status, 302, body)
        loc = urllib.parse.urlsplit(r.getheader("Location"))
        self.assertEqual(f"{loc.scheme}://{loc.netloc}{loc.path}", self.prov.issuer + "/authorize")
        p = dict(urllib.parse.parse_qsl(loc.query))
        self.assertEqual(p["client_id"], CLIENT)
        self.assertEqual(p["code_challenge_method"], "S256")
        self.assertEqual(p["response_type"], "code")
        return p

    def callback(self, p, claims=None, make=None, key=None, **over):
        now = int(time.time())
        c = {"iss": self.prov.issuer, "aud": CLIENT, "sub": "sub-" + uuid.uuid4().hex[:8],
             "email": f"x{uuid.uuid4().hex[:6]}@{self.slug}.example.com", "email_verified": True,
             "iat": now, "exp": now + 300, "nonce": p["nonce"]}
        c.update(claims or {})
        code = uuid.uuid4().hex
        k = key or self.prov.keys[0]
        self.prov.codes[code] = {"challenge": p["code_challenge"], "claims": c,
                                 "make": make or (lambda cl: k.sign(cl))}
        r = self.server.request("GET", "/v1/auth/oidc/fake/callback?" +
                                urllib.parse.urlencode({"state": p["state"], "code": code}))
        return r, r.read(), c

    def sign_in(self, **kw):
        p = self.start(kw.pop("slug", None), kw.pop("invitation", None))
        r, body, c = self.callback(p, **kw)
        self.assertEqual(r.status, 302, body)
        loc = r.getheader("Location")
        self.assertTrue(loc.startswith(REDIRECT + "?code="), loc)
        code = loc.split("?code=", 1)[1]
        st, tok, _ = self.server.json("POST", "/v1/auth/oidc/exchange", {"code": code})
        self.assertEqual(st, 200, tok)
        harness.secret(tok["access_token"]), harness.secret(tok["refresh_token"])
        st2, again, _ = self.server.json("POST", "/v1/auth/oidc/exchange", {"code": code})
        self.assertEqual((st2, again.get("code")), (400, "token_invalid"))
        return tok, c

    def refused(self, **kw):
        p = self.start(kw.pop("slug", None))
        r, body, _ = self.callback(p, **kw)
        if r.status == 302:
            self.assertIn("error=access_denied", r.getheader("Location"))
        else:
            self.assertEqual(r.status, 401, body)
        return r

    def set_domains(self, domains):
        st, b, _ = self.server.json("PATCH", "/v1/org", {"join_policy": "domain", "domains": domains},
                                    bearer(self.admin))
        self.assertEqual(st, 200, b)
        self.assertEqual((b["join_policy"], b["domains"]), ("domain", domains))

    def test_invitation_then_linked_identity(self):
        em = f"inv@{self.slug}.example.com"
        st, inv, _ = self.server.json("POST", "/v1/invitations", {"email": em, "role": "admin"},
                                      bearer(self.admin))
        self.assertEqual(st, 201, inv)
        itok = token_of(self.sink.wait_for(em)[0]["msg"], "/invitations/accept")
        tok, c = self.sign_in(invitation=itok, claims={"email": em})
        self.assertEqual(tok["user"]["email"], em)
        self.assertEqual(tok["user"]["role"], "admin")
        self.assertEqual(tok["user"]["identities"], [{"provider": "fake", "subject": c["sub"]}])
        # The invitation is spent; the identity now signs in alone.
        st, b, _ = self.server.json("POST", "/v1/invitations/accept", {"token": itok, "password": "x" * 12})
        self.assertEqual(st, 400, b)
        tok2, _ = self.sign_in(claims={"sub": c["sub"], "email": "changed@elsewhere.test"})
        self.assertEqual(tok2["user"]["id"], tok["user"]["id"])
        # The same subject means nothing in another org.
        other = signup(self.server)
        self.refused(slug=other["slug"], claims={"sub": c["sub"], "email": em})

    def test_domain_policy(self):
        self.refused(claims={"email": "a@corp.test"})  # join_policy invite
        self.set_domains(["corp.test"])
        tok, _ = self.sign_in(claims={"email": "Ann@Corp.test"})
        self.assertEqual((tok["user"]["email"], tok["user"]["role"]), ("ann@corp.test", "member"))
        self.assertIsNotNone(tok["user"]["email_verified_at"])
        # A user named like a status word still signs in (the exchange reads
        # the status field, not any "invalid" in the answer).
        tok, _ = self.sign_in(claims={"email": "n@corp.test", "name": "invalid"})
        self.assertEqual(tok["user"]["name"], "invalid")
        self.refused(claims={"email": "b@corp.test", "email_verified": False})
        self.refused(claims={"email": "c@evil.test"})
        st, b, _ = self.server.json("PATCH", "/v1/org", {"domains": ["Not A Domain"]}, bearer(self.admin))
        self.assertEqual(st, 422, b)

    def test_forged_id_tokens_are_refused(self):
        self.set_domains(["corp.test"])
        good = {"email": "f@corp.test"}
        stranger = Key("RS256")
        stranger.kid = self.prov.keys[0].kid
        pem = self.prov.keys[0].priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

        def alg_none(cl):
            h = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            return f"{h}.{b64(json.dumps(cl).encode())}."

        def hs256(cl):
            h = b64(json.dumps({"alg": "HS256", "kid": self.prov.keys[0].kid}).encode())
            si = f"{h}.{b64(json.dumps(cl).encode())}"
            return si + "." + b64(hmac.new(pem, si.encode(), hashlib.sha256).digest())

        now = int(time.time())
        cases = {"wrong key": dict(key=stranger), "wrong aud": dict(claims=dict(good, aud="other")),
                 "aud list without us": dict(claims=dict(good, aud=["other", 7])),
                 "expired": dict(claims=dict(good, exp=now - 3600)),
                 "bad nonce": dict(claims=dict(good, nonce="not-the-nonce")),
                 "wrong iss": dict(claims=dict(good, iss="https://evil.test")),
                 "alg none": dict(make=alg_none), "HS256 with the public key": dict(make=hs256)}
        for name, kw in cases.items():
            with self.subTest(name):
                kw.setdefault("claims", good)
                self.assertEqual(self.refused(**kw).status, 401, name)
        # Each is a failed sign-in in the org's audit log, with its reason.
        st, b, _ = self.server.json("GET", "/v1/audit-events?action=auth.login_failed", None,
                                    bearer(self.admin))
        self.assertEqual(st, 200, b)
        reasons = [e["details"]["reason"] for e in b["data"] if e["target"]["type"] == "oidc"]
        self.assertEqual(len(reasons), len(cases), reasons)
        self.assertIn("id_token audience mismatch", reasons)
        self.assertTrue(all(e["actor"] == {"type": "anonymous", "id": None} for e in b["data"]))
        self.sign_in(claims=good)  # and the genuine one passes
        self.sign_in(claims={"email": "f2@corp.test", "aud": [7, "other", CLIENT]})  # a list naming us

    def test_key_rotation_and_es256(self):
        self.set_domains(["corp.test"])
        self.sign_in(claims={"email": "r1@corp.test"})
        before = self.prov.jwks_fetches
        self.prov.keys = [Key("ES256")]  # rotated, and another algorithm
        time.sleep(1.1)
        self.sign_in(claims={"email": "r2@corp.test"})
        self.assertGreater(self.prov.jwks_fetches, before)

    def test_flow_errors(self):
        p = self.start()
        r, body, _ = self.callback(p)  # unknown user: refused, back to the frontend
        self.assertIn("error=access_denied", r.getheader("Location") or "")
        r, body, _ = self.callback(p)  # state used once
        self.assertEqual(r.status, 400, body)
        r = self.server.request("GET", "/v1/auth/oidc/fake/start?" + urllib.parse.urlencode(
            {"org": self.slug, "redirect_uri": "https://evil.test/cb"}))
        self.assertEqual(r.status, 422, r.read())
        r = self.server.request("GET", "/v1/auth/oidc/nope/start?org=x&redirect_uri=" + REDIRECT)
        self.assertEqual(r.status, 404, r.read())
        r = self.server.request("GET", "/v1/auth/oidc/fake/start?" + urllib.parse.urlencode(
            {"org": "no-such-org-x", "redirect_uri": REDIRECT}))
        self.assertEqual(r.status, 404, r.read())
        r = self.server.request("GET", "/v1/auth/oidc/fake/callback?state=" + "A" * 43 + "&code=x")
        self.assertEqual(r.status, 400, r.read())
        st, b, _ = self.server.json("POST", "/v1/auth/oidc/exchange", {"code": "nope"})
        self.assertEqual(st, 400, b)


if __name__ == "__main__":
    unittest.main()
