"""Accounts end to end: mail (email.send over SMTP to a sink in this file,
and files without SMTP), invitations, password reset, email verification,
the audit log, the refresh reuse grace, and their isolation between orgs.

The SMTP sink is a small threaded socket server (EHLO, AUTH PLAIN, MAIL,
RCPT, DATA): Python 3.11+ has no smtpd module, and the test stays stdlib.
"""
import base64
import concurrent.futures
import email
import email.policy
import glob
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

import harness
from test_users import bearer, create_key, create_user, login, signup

PW = "correct horse battery"
PUBLIC = "https://app.example.test"
SMTP_PASSWORD = "smtp-" + uuid.uuid4().hex
FAST = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1", "TENANTD_LOGIN_LIMIT": "0",
        "TENANTD_JOB_POLL_MS": "50", "TENANTD_JOB_RETRY_BASE_MS": "100",
        "TENANTD_JOB_RETRY_MAX_MS": "300", "TENANTD_PUBLIC_URL": PUBLIC,
        "TENANTD_MAIL_FROM": "Tenantd <no-reply@tenantd.test>"}


class SmtpSink:
    """Accepts every mail; keeps (mail_from, rcpts, parsed message, auth)."""

    def __init__(self, port=None):
        self.port = port or harness.free_port()
        self.mails = []
        self.cond = threading.Condition()
        self.sock = None

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.sock = s
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _accept(self):
        sock = self.sock
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c):
        f = c.makefile("rb")
        send = lambda line: c.sendall(line.encode() + b"\r\n")
        send("220 sink ESMTP")
        mail_from, rcpts, auth = None, [], None
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode("ascii", "replace").strip()
                up = cmd.upper()
                if up.startswith("EHLO"):
                    send("250-sink")
                    send("250-AUTH PLAIN")
                    send("250 8BITMIME")
                elif up.startswith("HELO"):
                    send("250 sink")
                elif up.startswith("AUTH PLAIN"):
                    parts = cmd.split(" ", 2)
                    if len(parts) == 3:
                        auth = base64.b64decode(parts[2]).split(b"\0")
                        send("235 ok")
                    else:
                        send("334 ")
                        auth = base64.b64decode(f.readline().strip()).split(b"\0")
                        send("235 ok")
                elif up.startswith("MAIL FROM:"):
                    mail_from, rcpts = cmd[10:].strip(), []
                    send("250 ok")
                elif up.startswith("RCPT TO:"):
                    rcpts.append(cmd[8:].strip())
                    send("250 ok")
                elif up == "DATA":
                    send("354 go")
                    data = b""
                    while True:
                        l = f.readline()
                        if l in (b".\r\n", b".\n", b""):
                            break
                        if l.startswith(b".."):
                            l = l[1:]
                        data += l
                    msg = email.message_from_bytes(data, policy=email.policy.default)
                    with self.cond:
                        self.mails.append({"from": mail_from, "rcpts": rcpts, "msg": msg,
                                           "auth": auth})
                        self.cond.notify_all()
                    send("250 queued")
                elif up == "QUIT":
                    send("221 bye")
                    return
                else:
                    send("250 ok")
        finally:
            c.close()

    def wait_for(self, to, timeout=15, count=1):
        """The mails to `to` once there are `count` of them."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                got = [m for m in self.mails if f"<{to}>" in m["rcpts"]]
                if len(got) >= count or time.time() > deadline:
                    return got
                self.cond.wait(0.05)


def text_part(msg):
    return msg.get_body(preferencelist=("plain",)).get_content()


def link_of(msg, path):
    """The link on a line of its own in the plain-text part."""
    text = text_part(msg)
    for line in text.splitlines():
        if line.startswith(PUBLIC + path + "?token="):
            return line
    raise AssertionError(f"no {path} link in:\n{text}")


def token_of(msg, path):
    return link_of(msg, path).split("?token=", 1)[1]


class AccountsCase(harness.DbTestCase):
    sink_up = True
    extra_env = {}

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpSink()
        if cls.sink_up:
            cls.sink.start()
        harness.secret(SMTP_PASSWORD)
        cls.server_env = dict(FAST, **cls.extra_env,
                              TENANTD_SMTP_URL=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{cls.sink.port}")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.sink.stop()

    def setUp(self):
        self.org = signup(self.server)
        self.admin = self.org["access_token"]
        self.slug = self.org["slug"]
        self.org_id = self.org["org"]["id"]

    def call(self, method, path, body=None, token=None):
        return self.server.json(method, path, body, bearer(token or self.admin))

    def invite(self, email, role=None, token=None):
        body = {"email": email}
        if role:
            body["role"] = role
        st, b, _ = self.call("POST", "/v1/invitations", body, token)
        self.assertEqual(st, 201, b)
        return b

    def invitation_token(self, email):
        mails = self.sink.wait_for(email)
        self.assertTrue(mails, f"no mail to {email}")
        return token_of(mails[-1]["msg"], "/invitations/accept")

    def events(self, token=None, query=""):
        st, b, _ = self.call("GET", "/v1/audit-events" + query, None, token)
        self.assertEqual(st, 200, b)
        return b["data"]

    def accept(self, token, password=PW, **extra):
        return self.server.json("POST", "/v1/invitations/accept",
                                dict(token=token, password=password, **extra))


class InvitationTest(AccountsCase):

    def test_invite_mail_accept_once(self):
        em = f"New.Person@{self.slug}.example.com"
        inv = self.invite(em, role="admin")
        self.assertEqual(set(inv), {"id", "email", "role", "expires_at", "created_at"})
        self.assertEqual((inv["email"], inv["role"]), (em.lower(), "admin"))
        mails = self.sink.wait_for(em.lower())
        self.assertEqual(len(mails), 1)
        m = mails[0]
        self.assertEqual(m["from"], "<no-reply@tenantd.test>")
        self.assertEqual(m["auth"][1:], [b"mailer", SMTP_PASSWORD.encode()])
        self.assertIn(self.slug, m["msg"]["Subject"])
        html = m["msg"].get_body(preferencelist=("html",)).get_content()
        link = link_of(m["msg"], "/invitations/accept")
        self.assertIn(link.replace("&", "&amp;"), html)
        token = token_of(m["msg"], "/invitations/accept")
        self.assertGreaterEqual(len(base64.urlsafe_b64decode(token + "=")), 16)
        # Stored hashed only.
        rows = self.pg.psql("SELECT token_hash FROM public.invitations WHERE id = "
                            f"'{inv['id']}'", db=self.dbname)
        self.assertEqual(rows, [hashlib.sha256(token.encode()).hexdigest()])
        st, b, _ = self.call("GET", "/v1/invitations")
        self.assertEqual([i["id"] for i in b["data"]], [inv["id"]])
        # The email.send job is a system job: free, and its payload names
        # no link.
        st, jobs, _ = self.call("GET", "/v1/jobs")
        mail_jobs = [j for j in jobs["data"] if j["type"] == "email.send"]
        self.assertEqual(len(mail_jobs), 1, jobs)
        self.assertEqual(mail_jobs[0]["cost"], 0)
        self.assertNotIn(token, json.dumps(mail_jobs[0]))

        # A blank name is refused (the one display-name rule) and uses up nothing.
        st, b, _ = self.accept(token, name="   ")
        self.assertEqual((st, [e["field"] for e in b.get("errors", [])]), (422, ["name"]), b)
        st, b, _ = self.accept(token, name="Ada")
        self.assertEqual(st, 201, b)
        self.assertEqual(b["user"]["email"], em.lower())
        self.assertEqual(b["user"]["role"], "admin")
        self.assertEqual(b["user"]["name"], "Ada")
        self.assertIsNotNone(b["user"]["email_verified_at"])
        self.assertEqual(b["org"]["id"], self.org_id)
        harness.secret(b["access_token"]), harness.secret(b["refresh_token"])
        st, me, _ = self.server.json("GET", "/v1/auth/me", None, bearer(b["access_token"]))
        self.assertEqual((st, me["user"]["id"]), (200, b["user"]["id"]))
        self.assertEqual(login(self.server, em.lower(), PW, org=self.slug)["user"]["id"],
                         b["user"]["id"])
        # Works once.
        st, b2, _ = self.accept(token)
        self.assertEqual(st, 400, b2)
        self.assertEqual(b2["code"], "token_invalid")
        self.assertIn("already used", b2["detail"])
        st, b, _ = self.call("GET", "/v1/invitations")
        self.assertEqual(b["data"], [])
        acts = [e["action"] for e in self.events()]
        self.assertEqual(acts.count("invitation.created"), 1, acts)
        self.assertEqual(acts.count("invitation.accepted"), 1, acts)

    def test_invitation_list_is_paged(self):
        ids = [self.invite(f"page{i}@{self.slug}.example.com")["id"] for i in range(3)]

        def get(path):
            st, b, _ = self.call("GET", path)
            return st, b
        harness.check_paging(self, get, "/v1/invitations", ids)

    def test_errors(self):
        st, b, _ = self.call("POST", "/v1/invitations", {"email": self.org["email"]})
        self.assertEqual(st, 409, b)
        for bad in [{}, {"email": "nope"}, {"email": "a@b.co", "role": "owner"},
                    {"email": "a@b.co", "extra": 1}]:
            st, b, _ = self.call("POST", "/v1/invitations", bad)
            self.assertEqual(st, 422, (bad, b))
        # A member may not invite.
        user = create_user(self.server, self.admin, f"m@{self.slug}.example.com")
        mtok = login(self.server, user["email"], PW, org=self.slug)["access_token"]
        st, b, _ = self.call("POST", "/v1/invitations", {"email": "x@y.co"}, mtok)
        self.assertEqual(st, 403, b)
        for tok in ["", "short", "A" * 43 + "!", "A" * 43]:
            st, b, _ = self.accept(tok)
            self.assertIn(st, (400, 422), (tok, b))
        st, b, _ = self.accept("A" * 42 + "A")
        self.assertEqual((st, b["code"]), (400, "token_invalid"))
        em = f"short@{self.slug}.example.com"
        self.invite(em)
        tok = self.invitation_token(em)
        st, b, _ = self.accept(tok, password="short")
        self.assertEqual(st, 422, b)

    def test_revoke_and_expiry(self):
        em = f"r@{self.slug}.example.com"
        inv = self.invite(em)
        tok = self.invitation_token(em)
        st, b, _ = self.call("DELETE", f"/v1/invitations/{inv['id']}")
        self.assertEqual(st, 204, b)
        st, b, _ = self.call("DELETE", f"/v1/invitations/{inv['id']}")
        self.assertEqual(st, 404, b)
        st, b, _ = self.call("DELETE", "/v1/invitations/not-a-uuid")
        self.assertEqual(st, 404, b)
        st, b, _ = self.accept(tok)
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        self.assertIn("withdrawn", b["detail"])
        # A new invitation of the same email replaces the old; an expired
        # one fails clearly.
        em2 = f"e@{self.slug}.example.com"
        inv2 = self.invite(em2)
        tok2 = self.invitation_token(em2)
        self.pg.psql("UPDATE public.invitations SET expires_at = now() - interval '1 second'"
                     f" WHERE id = '{inv2['id']}'", db=self.dbname)
        st, b, _ = self.accept(tok2)
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        self.assertIn("expired", b["detail"])
        acts = [e["action"] for e in self.events()]
        self.assertEqual(acts.count("invitation.revoked"), 1, acts)

    def test_rolled_back_change_leaves_no_event(self):
        # A failure late in the transaction (the mail cannot be queued)
        # takes the invitation and its audit event with it.
        self.pg.psql("CREATE FUNCTION public.test_fail_mail() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN RAISE EXCEPTION 'planted'; END $$;"
                     "CREATE TRIGGER test_fail_mail BEFORE INSERT ON public.mail_outbox"
                     " FOR EACH ROW EXECUTE FUNCTION public.test_fail_mail()", db=self.dbname)
        try:
            st, b, _ = self.call("POST", "/v1/invitations", {"email": f"rb@{self.slug}.example.com"})
            self.assertEqual(st, 500, b)
        finally:
            self.pg.psql("DROP TRIGGER test_fail_mail ON public.mail_outbox;"
                         "DROP FUNCTION public.test_fail_mail()", db=self.dbname)
        self.assertEqual([e for e in self.events() if e["action"].startswith("invitation")], [])
        st, b, _ = self.call("GET", "/v1/invitations")
        self.assertEqual(b["data"], [])

    def test_email_send_not_enqueueable(self):
        st, b, _ = self.call("POST", "/v1/jobs", {"type": "email.send", "payload": {}})
        self.assertEqual(st, 422, b)


class AcceptRaceTest(AccountsCase):
    # One query per connection: concurrent accepts really run at once in
    # PostgreSQL (a pipeline would serialize them on one connection).
    extra_env = {"TENANTD_DB_PIPELINE_DEPTH": "1", "TENANTD_DB_POOL_SIZE": "6"}

    def test_two_accepts_exactly_one_wins(self):
        for i in range(3):
            em = f"race{i}@{self.slug}.example.com"
            inv = self.invite(em)
            tok = self.invitation_token(em)
            # Every accept gets past its checks while the invitation row is
            # held locked, so all of them reach the arbiter together.
            holder = None
            if i > 0:
                holder = subprocess.Popen(
                    [harness.PSQL, self.pg.url(self.dbname), "-qAt", "-c",
                     "BEGIN; SELECT 1 FROM public.invitations WHERE id = "
                     f"'{inv['id']}' FOR UPDATE; SELECT pg_sleep(1.5); COMMIT;"],
                    stdout=subprocess.DEVNULL)
                time.sleep(0.4)
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                res = list(ex.map(lambda _: self.accept(tok), range(4)))
            if holder:
                holder.wait(10)
            self.assertEqual(sorted(st for st, _, _ in res), [201, 400, 400, 400],
                             [(st, b) for st, b, _ in res])
            n = self.pg.psql(f"SELECT count(*) FROM public.users WHERE email = '{em}'",
                             db=self.dbname)
            self.assertEqual(n, ["1"])

    def test_accept_racing_the_links_use_never_answers_member_exists(self):
        # Another transaction accepts the same link while this accept is
        # between reading the invitation and checking for a member (held
        # there by a lock on public.orgs): the answer is the link's fate
        # (201 or 400), never 409 "member exists" for the member that very
        # acceptance created.
        em = f"midway@{self.slug}.example.com"
        inv = self.invite(em)
        tok = self.invitation_token(em)
        holder = subprocess.Popen(
            [harness.PSQL, self.pg.url(self.dbname), "-qAt", "-c",
             "BEGIN; LOCK TABLE public.orgs IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(1.0); "
             "WITH a AS (UPDATE public.invitations SET accepted_at = now() "
             f"WHERE id IN (SELECT id FROM public.invitations WHERE id = '{inv['id']}' "
             "FOR UPDATE SKIP LOCKED) RETURNING org_id, email, role) "
             "INSERT INTO public.users (org_id, email, role, password_hash) "
             "SELECT org_id, email, role, 'x' FROM a; COMMIT;"],
            stdout=subprocess.DEVNULL)
        time.sleep(0.4)
        st, b, _ = self.accept(tok)
        self.assertEqual(holder.wait(10), 0)
        self.assertIn(st, (201, 400), b)
        n = self.pg.psql(f"SELECT count(*) FROM public.users WHERE email = '{em}'",
                         db=self.dbname)
        self.assertEqual(n, ["1"])


class ResetAndVerifyTest(AccountsCase):

    def test_password_reset(self):
        em = f"u@{self.slug}.example.com"
        create_user(self.server, self.admin, em)
        old = login(self.server, em, PW, org=self.slug)
        harness.secret(old["refresh_token"])
        st, b, _ = self.server.json("POST", "/v1/auth/password-reset", {"email": em, "org": self.slug})
        self.assertEqual(st, 202, b)
        # Unknown email, unknown org: the same answer, no mail.
        for body in [{"email": f"nobody@{self.slug}.example.com", "org": self.slug},
                     {"email": em, "org": "no-such-org-" + uuid.uuid4().hex[:6]}]:
            st, b2, _ = self.server.json("POST", "/v1/auth/password-reset", body)
            self.assertEqual((st, b2), (202, b), body)
        mails = self.sink.wait_for(em)
        self.assertEqual(len(mails), 1)
        tok = token_of(mails[0]["msg"], "/password-reset")
        new_pw = "a much newer password"
        harness.secret(new_pw)
        st, b, _ = self.server.json("POST", "/v1/auth/password-reset/confirm",
                                    {"token": tok, "new_password": new_pw})
        self.assertEqual(st, 204, b)
        # Sessions are revoked; the new password works, the old does not.
        st, _, _ = self.server.json("POST", "/v1/auth/refresh", {"refresh_token": old["refresh_token"]})
        self.assertEqual(st, 401)
        st, _, _ = self.server.json("GET", "/v1/auth/me", None, bearer(old["access_token"]))
        self.assertEqual(st, 401)
        login(self.server, em, new_pw, org=self.slug)
        st, _, _ = self.server.json("POST", "/v1/auth/login", {"email": em, "password": PW, "org": self.slug})
        self.assertEqual(st, 401)
        st, b, _ = self.server.json("POST", "/v1/auth/password-reset/confirm",
                                    {"token": tok, "new_password": "another password!"})
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        time.sleep(0.3)
        self.assertEqual(len(self.sink.wait_for(f"nobody@{self.slug}.example.com", timeout=0)), 0)
        acts = [e["action"] for e in self.events()]
        self.assertEqual(acts.count("user.password_reset_requested"), 1, acts)
        self.assertEqual(acts.count("user.password_reset"), 1, acts)

    def test_reset_same_time_for_unknown_emails(self):
        em = f"t@{self.slug}.example.com"
        create_user(self.server, self.admin, em)

        def timed(e):
            t = time.perf_counter()
            st, _, _ = self.server.json("POST", "/v1/auth/password-reset", {"email": e, "org": self.slug})
            self.assertEqual(st, 202)
            return time.perf_counter() - t
        known, unknown = [], []
        for i in range(8):
            known.append(timed(em))
            unknown.append(timed(f"x{i}@{self.slug}.example.com"))
        known.sort(), unknown.sort()
        # Medians within 25 ms: one statement either way, no hashing.
        self.assertLess(abs(known[4] - unknown[4]), 0.025, (known, unknown))

    def test_expired_reset_and_verify_email(self):
        em = f"v@{self.slug}.example.com"
        create_user(self.server, self.admin, em)
        tokens = login(self.server, em, PW, org=self.slug)
        st, b, _ = self.server.json("POST", "/v1/auth/verify-email", {}, bearer(tokens["access_token"]))
        self.assertEqual(st, 202, b)
        tok = token_of(self.sink.wait_for(em)[0]["msg"], "/verify-email")
        st, me, _ = self.server.json("GET", "/v1/auth/me", None, bearer(tokens["access_token"]))
        self.assertIsNone(me["user"]["email_verified_at"])
        st, b, _ = self.server.json("POST", "/v1/auth/verify-email/confirm", {"token": tok})
        self.assertEqual(st, 204, b)
        st, me, _ = self.server.json("GET", "/v1/auth/me", None, bearer(tokens["access_token"]))
        self.assertIsNotNone(me["user"]["email_verified_at"])
        st, b, _ = self.server.json("POST", "/v1/auth/verify-email/confirm", {"token": tok})
        self.assertEqual((st, b["code"]), (400, "token_invalid"))
        # An API key cannot ask (no mailbox).
        key = create_key(self.server, self.admin, role="admin")["key"]
        harness.secret(key)
        st, b, _ = self.server.json("POST", "/v1/auth/verify-email", {}, bearer(key))
        self.assertEqual(st, 403, b)
        # Expired reset link.
        self.server.json("POST", "/v1/auth/password-reset", {"email": em, "org": self.slug})
        tok = token_of(self.sink.wait_for(em, count=2)[-1]["msg"], "/password-reset")
        self.pg.psql("UPDATE public.account_tokens SET expires_at = now() - interval '1 second'"
                     f" WHERE token_hash = '{hashlib.sha256(tok.encode()).hexdigest()}'",
                     db=self.dbname)
        st, b, _ = self.server.json("POST", "/v1/auth/password-reset/confirm",
                                    {"token": tok, "new_password": "whatever password"})
        self.assertEqual((st, b["code"]), (400, "token_invalid"), b)
        self.assertIn("expired", b["detail"])


class IsolationTest(AccountsCase):

    def test_org_a_never_grants_org_b(self):
        b_org = signup(self.server)
        shared = f"both@{self.slug}.example.com"
        create_user(self.server, b_org["access_token"], shared)
        # An invitation of A makes a user of A only.
        em = f"only-a@{self.slug}.example.com"
        self.invite(em)
        st, acc, _ = self.accept(self.invitation_token(em))
        self.assertEqual((st, acc["org"]["id"]), (201, self.org_id))
        st, _, _ = self.server.json("POST", "/v1/auth/login",
                                    {"email": em, "password": PW, "org": b_org["slug"]})
        self.assertEqual(st, 401)
        # A reset asked in A for an email of B's user (not in A): no mail.
        st, _, _ = self.server.json("POST", "/v1/auth/password-reset", {"email": shared, "org": self.slug})
        self.assertEqual(st, 202)
        time.sleep(0.5)
        self.assertEqual(self.sink.wait_for(shared, timeout=0), [])
        # A reset in B resets B's account only.
        self.server.json("POST", "/v1/auth/password-reset", {"email": shared, "org": b_org["slug"]})
        tok = token_of(self.sink.wait_for(shared)[0]["msg"], "/password-reset")
        rows = self.pg.psql("SELECT org_id FROM public.account_tokens WHERE token_hash = "
                            f"'{hashlib.sha256(tok.encode()).hexdigest()}'", db=self.dbname)
        self.assertEqual(rows, [b_org["org"]["id"]])
        # B's admin cannot see or revoke A's invitations, nor read A's audit.
        inv = self.invite(f"x@{self.slug}.example.com")
        st, b, _ = self.call("DELETE", f"/v1/invitations/{inv['id']}", None, b_org["access_token"])
        self.assertEqual(st, 404, b)
        st, b, _ = self.call("GET", "/v1/invitations", None, b_org["access_token"])
        self.assertNotIn(inv["id"], [i["id"] for i in b["data"]])
        a_ids = {e["id"] for e in self.events()}
        self.assertTrue(a_ids)
        b_events = self.events(b_org["access_token"], "?limit=200")
        self.assertFalse(a_ids & {e["id"] for e in b_events})
        self.assertEqual(self.events(b_org["access_token"], f"?actor={self.org['user']['id']}"), [])


class AuditTest(AccountsCase):

    def test_audited_actions_filters_cursor_operator(self):
        user = create_user(self.server, self.admin, f"a@{self.slug}.example.com")
        st, b, _ = self.call("PATCH", f"/v1/users/{user['id']}", {"role": "admin"})
        self.assertEqual(st, 200, b)
        st, b, _ = self.call("PATCH", f"/v1/users/{user['id']}", {"name": "No Role Change"})
        self.assertEqual(st, 200, b)
        key = create_key(self.server, self.admin)
        harness.secret(key["key"])
        st, _, _ = self.call("DELETE", f"/v1/api-keys/{key['id']}")
        self.assertEqual(st, 204)
        st, _, _ = self.call("DELETE", f"/v1/users/{user['id']}")
        self.assertEqual(st, 204)
        st, _, _ = self.server.json("POST", "/v1/auth/login",
                                    {"email": self.org["email"], "password": "wrong password", "org": self.slug})
        self.assertEqual(st, 401)
        login(self.server, self.org["email"], PW, org=self.slug)
        ev = self.events()
        acts = [e["action"] for e in ev]
        for a in ["user.created", "user.role_changed", "api_key.created", "api_key.revoked",
                  "user.removed", "auth.login_failed", "auth.login"]:
            self.assertEqual(acts.count(a), 1, (a, acts))
        rc = next(e for e in ev if e["action"] == "user.role_changed")
        self.assertEqual(rc["actor"], {"type": "user", "id": self.org["user"]["id"]})
        self.assertEqual(rc["target"], {"type": "user", "id": user["id"]})
        self.assertEqual(rc["details"], {"from": "member", "to": "admin"})
        self.assertEqual(rc["ip"], "127.0.0.1")
        self.assertTrue(rc["request_id"])
        self.assertEqual(set(rc), {"id", "at", "actor", "action", "target", "ip", "request_id", "details"})
        # Newest first; filters; cursor.
        seqs = [e["at"] for e in ev]
        self.assertEqual(seqs, sorted(seqs, reverse=True))
        self.assertEqual([e["action"] for e in self.events(query="?action=api_key.created")],
                         ["api_key.created"])
        mine = self.events(query=f"?actor={self.org['user']['id']}")
        self.assertTrue(mine and all(e["actor"]["id"] == self.org["user"]["id"] for e in mine))
        self.assertEqual(self.events(query="?since=2999-01-01T00:00:00Z"), [])
        # The one RFC 3339 rule of client times (core/rfc3339.h), as jobs' run_at.
        for since in ("yesterday", "2026-02-30T00:00:00Z", "1969-12-31T23:59:59Z",
                      "2026-01-01T00:00:00", "2026-01-01T00:00:00.1234567890Z"):
            st, b, _ = self.call("GET", f"/v1/audit-events?since={since}")
            self.assertEqual((st, b["errors"][0]["field"] if "errors" in b else None),
                             (422, "since"), (since, b))
        st, b, _ = self.call("GET", "/v1/audit-events?cursor=!!")
        self.assertEqual(st, 422, b)
        # The one limit rule of every list (1..200 here): digits only, no leading zero.
        for q in ("limit=0", "limit=201", "limit=%2B5", "limit=05", "limit=0005", "limit=5x", "limit="):
            st, b, _ = self.call("GET", f"/v1/audit-events?{q}")
            self.assertEqual((st, b["errors"][0]["field"]), (422, "limit"), (q, b))
        st, b, _ = self.call("GET", "/v1/audit-events?limit=200")
        self.assertEqual(st, 200, b)
        pages, cursor = [], None
        while True:
            st, b, _ = self.call("GET", "/v1/audit-events?limit=2" + (f"&cursor={cursor}" if cursor else ""))
            self.assertEqual(st, 200, b)
            pages += b["data"]
            cursor = b["next_cursor"]
            if not cursor:
                break
        self.assertEqual([e["id"] for e in pages], [e["id"] for e in ev])
        # Only admins; the operator reads one org's.
        key = create_key(self.server, self.admin, role="member")["key"]
        harness.secret(key)
        st, _, _ = self.server.json("GET", "/v1/audit-events", None, bearer(key))
        self.assertEqual(st, 403)
        # Append-only.
        with self.assertRaises(Exception):
            self.pg.psql("UPDATE public.audit_events SET action = 'x'", db=self.dbname)
        with self.assertRaises(Exception):
            self.pg.psql("DELETE FROM public.audit_events", db=self.dbname)

    def test_refused_change_leaves_no_event(self):
        # The last admin cannot be demoted: nothing changed, nothing logged.
        st, b, _ = self.call("PATCH", f"/v1/users/{self.org['user']['id']}", {"role": "member"})
        self.assertEqual(st, 409, b)
        self.assertNotIn("user.role_changed", [e["action"] for e in self.events()])


class OperatorAuditTest(AccountsCase):
    OP = "op-" + uuid.uuid4().hex
    extra_env = {"TENANTD_OPERATOR_TOKEN": OP}

    def test_operator_reads_one_org(self):
        other = signup(self.server)
        # Org settings and the operator's status changes are audited.
        st, b, _ = self.call("PATCH", "/v1/org", {"name": "Renamed"})
        self.assertEqual(st, 200, b)
        st, b, _ = self.call("PATCH", "/v1/org", {"name": "Renamed"})
        self.assertEqual(st, 200, b)
        upd = [e for e in self.events() if e["action"] == "org.updated"]
        self.assertEqual(len(upd), 1, upd)
        self.assertEqual(upd[0]["details"]["to"]["name"], "Renamed")
        for path in ("suspend", "suspend", "unsuspend"):
            st, b, _ = self.server.json("POST", f"/v1/admin/orgs/{other['slug']}/{path}", None, bearer(self.OP))
            self.assertEqual(st, 200, b)
        st, b, _ = self.server.json("GET", f"/v1/admin/orgs/{other['slug']}/audit-events?action=org.suspended",
                                    None, bearer(self.OP))
        self.assertEqual([(e["action"], e["actor"]["type"]) for e in b["data"]], [("org.suspended", "operator")])
        # Credits granted and spent, once each even when the request is
        # replayed with its Idempotency-Key.
        for _ in range(2):
            st, b, _ = self.server.json("POST", f"/v1/admin/orgs/{self.slug}/credits", {"amount": 50},
                                        bearer(self.OP, **{"Idempotency-Key": "grant-1"}))
            self.assertEqual(st, 201, b)
            st, b, _ = self.server.json("POST", "/v1/credits/spend", {"amount": 5},
                                        bearer(self.admin, **{"Idempotency-Key": "spend-1"}))
            self.assertEqual(st, 201, b)
        acts = [e["action"] for e in self.events()]
        self.assertEqual((acts.count("credits.granted"), acts.count("credits.spent")), (1, 1), acts)
        spent = self.events(query="?action=credits.spent")[0]
        self.assertEqual((spent["actor"]["id"], spent["details"]), (self.org["user"]["id"], {"amount": 5}))
        st, b, _ = self.server.json("GET", f"/v1/admin/orgs/{self.slug}/audit-events", None, bearer(self.OP))
        self.assertEqual(st, 200, b)
        ids = {e["id"] for e in self.events()}
        self.assertEqual({e["id"] for e in b["data"]}, ids)
        st, b2, _ = self.server.json("GET", f"/v1/admin/orgs/{other['slug']}/audit-events", None, bearer(self.OP))
        self.assertEqual(st, 200, b2)
        self.assertFalse(ids & {e["id"] for e in b2["data"]})
        st, b, _ = self.server.json("GET", "/v1/admin/orgs/no-such-org/audit-events", None, bearer(self.OP))
        self.assertEqual(st, 404, b)
        st, b, _ = self.server.json("GET", f"/v1/admin/orgs/{self.slug}/audit-events", None, bearer(self.admin))
        self.assertIn(st, (401, 403), b)


class RefreshGraceTest(AccountsCase):

    def refresh(self, rt):
        st, b, _ = self.server.json("POST", "/v1/auth/refresh", {"refresh_token": rt})
        if st == 200:
            harness.secret(b["refresh_token"]), harness.secret(b["access_token"])
        return st, b

    def test_tabs_refreshing_together_stay_signed_in(self):
        t0 = login(self.server, self.org["email"], PW, org=self.slug)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            res = list(ex.map(lambda _: self.refresh(t0["refresh_token"]), range(4)))
        self.assertEqual([st for st, _ in res], [200] * 4, res)
        self.assertEqual(len({b["refresh_token"] for _, b in res}), 1)
        nxt = res[0][1]["refresh_token"]
        st, b = self.refresh(nxt)
        self.assertEqual(st, 200, b)

    def test_reuse_after_grace_revokes_family(self):
        t0 = login(self.server, self.org["email"], PW, org=self.slug)
        st, t1 = self.refresh(t0["refresh_token"])
        self.assertEqual(st, 200)
        h = hashlib.sha256(t0["refresh_token"].encode()).hexdigest()
        self.pg.psql("UPDATE public.refresh_tokens SET used_at = now() - interval '11 seconds'"
                     f" WHERE token_hash = '{h}'", db=self.dbname)
        st, b = self.refresh(t0["refresh_token"])
        self.assertEqual(st, 401, b)
        st, b = self.refresh(t1["refresh_token"])
        self.assertEqual(st, 401, b)


class MailDownTest(AccountsCase):
    sink_up = False

    def test_smtp_down_retries_then_delivers(self):
        bal = self.call("GET", "/v1/credits")[1]["balance"]
        em = f"late@{self.slug}.example.com"
        self.invite(em)  # the API call succeeds while SMTP is down
        deadline = time.time() + 10
        while time.time() < deadline:
            jobs = [j for j in self.call("GET", "/v1/jobs")[1]["data"] if j["type"] == "email.send"]
            if jobs and jobs[0]["attempts"] >= 2:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(jobs[0]["attempts"], 2, jobs)
        self.assertIn("smtp", jobs[0]["error"] or "")
        self.assertNotIn(SMTP_PASSWORD, jobs[0]["error"] or "")
        self.sink.start()
        self.assertEqual(len(self.sink.wait_for(em)), 1)
        deadline = time.time() + 10
        while time.time() < deadline:
            jobs = [j for j in self.call("GET", "/v1/jobs")[1]["data"] if j["type"] == "email.send"]
            if jobs[0]["status"] == "succeeded":
                break
            time.sleep(0.05)
        self.assertEqual(jobs[0]["status"], "succeeded", jobs)
        self.assertEqual(self.call("GET", "/v1/credits")[1]["balance"], bal)


class MailNeedsTlsForCredentialsTest(AccountsCase):
    """Outside development mode a URL with credentials is never used without
    TLS: the sink offers no STARTTLS, so nothing is sent (and retried)."""
    extra_env = {"TENANTD_DEV": "0", "TENANTD_JWT_SECRET": "j" * 16 + uuid.uuid4().hex}

    def test_no_password_in_clear(self):
        em = f"tls@{self.slug}.example.com"
        self.invite(em)
        deadline = time.time() + 10
        while time.time() < deadline:
            jobs = [j for j in self.call("GET", "/v1/jobs")[1]["data"] if j["type"] == "email.send"]
            if jobs and jobs[0]["attempts"] >= 2:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(jobs[0]["attempts"], 2, jobs)
        self.assertIn("SSL", jobs[0]["error"])
        self.assertEqual(self.sink.wait_for(em, timeout=0), [])
        self.assertFalse([m for m in self.sink.mails if m["auth"]])


class MailFileTest(harness.DbTestCase):
    """Without SMTP (development) each mail is a file in the folder the log names."""
    maildir = tempfile.mkdtemp(prefix="tenantd-mail-")
    server_env = dict(FAST, TENANTD_MAIL_DIR=maildir)

    def test_mail_written_as_file(self):
        org = signup(self.server)
        em = f"f@{org['slug']}.example.com"
        st, b, _ = self.server.json("POST", "/v1/invitations", {"email": em}, bearer(org["access_token"]))
        self.assertEqual(st, 201, b)
        deadline = time.time() + 10
        files = []
        while time.time() < deadline and not files:
            files = glob.glob(os.path.join(self.maildir, "*.eml"))
            time.sleep(0.05)
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            msg = email.message_from_bytes(f.read(), policy=email.policy.default)
        self.assertEqual(msg["To"], em)
        link_of(msg, "/invitations/accept")
        self.assertIn(self.maildir, self.server.log())
        self.assertEqual(os.stat(files[0]).st_mode & 0o077, 0)


if __name__ == "__main__":
    unittest.main()
