"""User import with other systems' password hashes (POST /v1/users/import):
argon2id, bcrypt ($2a$/$2b$/$2y$) and Django PBKDF2-SHA256 users log in with
their old passwords, and their stored hash becomes argon2id; a wrong password
fails and takes about as long as one against argon2id; unknown formats are a
422 naming the entry and import nothing."""
import base64
import hashlib
import json
import os
import time
import uuid
import warnings

import harness

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # Debian's libxcrypt, the same library tenantd verifies with

# argon2id costly enough (8 MiB) that its time stands out of the noise of a
# loaded machine in the timing test, cheap enough for the others.
FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "8192", "TENANTD_ARGON2_T": "1"}
PASSWORD = "correct horse battery"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def bcrypt_hash(password, variant="2b", cost=4):
    h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << cost))
    assert h.startswith("$2b$"), h
    return "$" + variant + h[3:]


def django_hash(password, iterations=1000, salt=None):
    salt = salt or base64.b64encode(os.urandom(9)).decode().replace("+", "a").replace("/", "b")
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(dk).decode()}"


class UserImportTestCase(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_LOGIN_LIMIT="100000")

    def sql(self, q):
        return self.pg.psql(q, self.dbname)

    def signup(self):
        tag = uuid.uuid4().hex[:10]
        body = {"name": f"Org {tag}", "admin": {"email": f"a-{tag}@example.com", "password": PASSWORD}}
        status, doc, _ = self.server.json("POST", "/v1/orgs", body)
        self.assertEqual(status, 201, doc)
        return doc

    def do_import(self, org, users):
        return self.server.json("POST", "/v1/users/import", {"users": users},
                                bearer(org["access_token"]))

    def login(self, org, email, password):
        return self.server.json("POST", "/v1/auth/login",
                                {"email": email, "password": password, "org": org["org"]["slug"]})

    def stored_hash(self, org, email):
        return self.sql(f"SELECT password_hash FROM public.users WHERE org_id = '{org['org']['id']}' "
                        f"AND email = '{email}'")[0]

    def wait_argon2(self, org, email):
        deadline = time.time() + 10
        while time.time() < deadline:
            h = self.stored_hash(org, email)
            if h.startswith("$argon2id$"):
                return h
            time.sleep(0.05)
        self.fail(f"the hash of {email} stayed {h}")

    def test_legacy_users_log_in_and_are_rehashed(self):
        org = self.signup()
        users = [
            {"email": "B2a@Example.com", "name": "Bea", "password_hash": bcrypt_hash("pw-bcrypt-2a", "2a")},
            {"email": "b2b@example.com", "password_hash": bcrypt_hash("pw-bcrypt-2b", "2b", 5)},
            {"email": "b2y@example.com", "role": "admin", "password_hash": bcrypt_hash("pw-bcrypt-2y", "2y")},
            {"email": "dj@example.com", "password_hash": django_hash("pw-django-1")},
            {"email": "ar@example.com", "password_hash": harness.argon2id_phc("pw-argon2-1")},
        ]
        status, doc, _ = self.do_import(org, users)
        self.assertEqual(status, 201, doc)
        self.assertEqual((doc["imported"], doc["skipped"]), (5, 0))
        self.assertEqual(sorted(u["email"] for u in doc["users"]),
                         sorted(u["email"].lower() for u in users))
        cases = [("b2a@example.com", "pw-bcrypt-2a"), ("b2b@example.com", "pw-bcrypt-2b"),
                 ("b2y@example.com", "pw-bcrypt-2y"), ("dj@example.com", "pw-django-1"),
                 ("ar@example.com", "pw-argon2-1")]
        for email, pw in cases:
            old = self.stored_hash(org, email)
            st, d, _ = self.login(org, email, pw + "x")
            self.assertEqual(st, 401, (email, d))
            self.assertEqual(self.stored_hash(org, email), old)
            st, d, _ = self.login(org, email, pw)
            self.assertEqual(st, 200, (email, d))
            self.assertEqual(d["user"]["email"], email)
            new = self.wait_argon2(org, email)
            if not old.startswith("$argon2id$"):
                self.assertNotEqual(new, old)
            # The new hash works, the old password still logs in.
            st, d, _ = self.login(org, email, pw)
            self.assertEqual(st, 200, (email, d))
        st, d, _ = self.server.json("GET", "/v1/users", headers=bearer(org["access_token"]))
        roles = {u["email"]: u["role"] for u in d["data"]}
        self.assertEqual(roles["b2y@example.com"], "admin")
        self.assertEqual(roles["dj@example.com"], "member")

    def test_unknown_format_names_the_entry_and_imports_nothing(self):
        org = self.signup()
        good = {"email": "ok@example.com", "password_hash": django_hash("whatever-1")}
        for bad in ["md5$abc$def", "$1$saltsalt$abcdefghijklmnopqrstuv", "plaintext-password",
                    "$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                    "$2x$04$" + "a" * 53, "$2b$03$" + "a" * 53, "$2b$17$" + "a" * 53, "pbkdf2_sha256$0$salt$" + "A" * 43 + "=",
                    "pbkdf2_sha1$1000$salt$" + "A" * 27 + "="]:
            status, doc, _ = self.do_import(org, [good, good | {"email": "x@example.com"},
                                                  {"email": "bad@example.com", "password_hash": bad}])
            self.assertEqual(status, 422, (bad, doc))
            self.assertEqual([e["field"] for e in doc["errors"]], ["users[2].password_hash"], doc)
            self.assertNotIn(bad, json.dumps(doc))
        for body, field in [({"users": []}, "users"), ({"users": [{}]}, "users[0].email"),
                            ({"users": [good | {"role": "owner"}]}, "users[0].role"),
                            ({"users": [good | {"extra": 1}]}, "users[0].extra")]:
            status, doc, _ = self.server.json("POST", "/v1/users/import", body,
                                              bearer(org["access_token"]))
            self.assertEqual(status, 422, doc)
            self.assertIn(field, [e["field"] for e in doc["errors"]], doc)
        n = self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{org['org']['id']}'")[0]
        self.assertEqual(n, "1")  # only the admin

    def test_existing_emails_are_skipped_not_overwritten(self):
        org = self.signup()
        admin_email = org["user"]["email"]
        before = self.stored_hash(org, admin_email)
        status, doc, _ = self.do_import(org, [
            {"email": admin_email, "password_hash": bcrypt_hash("takeover-pw")},
            {"email": "new@example.com", "password_hash": bcrypt_hash("new-pw-123")},
            {"email": "NEW@example.com", "password_hash": bcrypt_hash("new-pw-456")},
        ])
        self.assertEqual(status, 201, doc)
        self.assertEqual((doc["imported"], doc["skipped"]), (1, 2))
        self.assertEqual([u["email"] for u in doc["users"]], ["new@example.com"])
        self.assertEqual(self.stored_hash(org, admin_email), before)
        self.assertEqual(self.login(org, admin_email, "takeover-pw")[0], 401)

    def test_members_cannot_import_and_orgs_are_separate(self):
        a, b = self.signup(), self.signup()
        status, doc, _ = self.do_import(a, [{"email": "m@example.com", "role": "member",
                                             "password_hash": bcrypt_hash("member-pw-1")}])
        self.assertEqual(status, 201, doc)
        st, d, _ = self.login(a, "m@example.com", "member-pw-1")
        self.assertEqual(st, 200, d)
        st, d, _ = self.server.json("POST", "/v1/users/import",
                                    {"users": [{"email": "z@example.com",
                                                "password_hash": bcrypt_hash("zzzzzzzz")}]},
                                    bearer(d["access_token"]))
        self.assertEqual(st, 403, d)
        # Imported into a, not b.
        self.assertEqual(self.login(b, "m@example.com", "member-pw-1")[0], 401)

    def test_wrong_password_timing_like_argon2id(self):
        """A wrong password for a migrated user takes at least as long as
        for an argon2id user (the dummy argon2id check pads it), so a
        migrated account is not told apart by a faster answer."""
        org = self.signup()
        self.do_import(org, [{"email": "t-dj@example.com", "password_hash": django_hash("tpw-12345", 1)},
                             {"email": "t-ar@example.com",
                              "password_hash": harness.argon2id_phc("tpw-12345", m_kib=8192)}])

        # The server's CPU time per login, not wall time (a CI run once saw
        # 5.7 against 8.8 ms of wall time while other tests ran): the two
        # kinds alternate, and each gets the median of 9.
        pid = self.server.proc.pid
        spent = {"t-dj@example.com": [], "t-ar@example.com": []}
        for _ in range(9):
            for email, ts in spent.items():
                before = harness.process_cpu_ms(pid)
                self.assertEqual(self.login(org, email, "wrong-password")[0], 401)
                ts.append(harness.process_cpu_ms(pid) - before)
        legacy, argon = (sorted(ts)[4] for ts in spent.values())
        self.assertGreater(argon, 1, "an argon2id check (m=8 MiB) takes milliseconds of CPU")
        self.assertGreater(legacy, argon * 0.7, (legacy, argon))


if __name__ == "__main__":
    import unittest
    unittest.main()
