"""Organizations end to end: signup (POST /v1/orgs) and everything it creates,
its all-or-nothing rollback, slug rules, hostile input, closed signup, rename
and deletion (GET|PATCH|DELETE /v1/org, GET /v1/orgs/{slug})."""
import hashlib
import json
import os
import re
import threading
import unittest
import uuid

import harness

# Small argon2 parameters: signups in these tests should take milliseconds.
FAST_ARGON2 = {"TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ORG_FIELDS = {"id", "name", "slug", "created_at", "updated_at", "status", "join_policy", "domains"}
PASSWORD = "correct horse battery"


def unique(prefix="org"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


class OrgTestCase(harness.DbTestCase):
    """Helpers shared by the org test classes."""

    server_env = dict(FAST_ARGON2)

    def sql(self, q):
        return self.pg.psql(q, self.dbname)

    def signup(self, name=None, slug=None, email=None, password=PASSWORD, headers=None,
               expect=201):
        body = {"name": name or unique("Org"), "admin": {"email": email or f"{unique('a')}@example.com",
                                                          "password": password}}
        if slug is not None:
            body["slug"] = slug
        status, doc, _ = self.server.json("POST", "/v1/orgs", body, headers)
        if expect is not None:
            self.assertEqual(status, expect, doc)
        return doc

    def counts(self):
        """What a failed signup must not change."""
        return (self.sql("SELECT count(*) FROM public.orgs")[0],
                self.sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")[0],
                self.sql("SELECT count(*) FROM public.users")[0],
                self.sql("SELECT count(*) FROM public.credit_accounts")[0],
                self.sql("SELECT count(*) FROM public.refresh_tokens")[0])

    def assert_problem(self, status, doc, want_status, code):
        self.assertEqual(status, want_status, doc)
        self.assertEqual(doc["code"], code, doc)
        self.assertEqual(doc["status"], want_status)

    def assert_org(self, org):
        self.assertEqual(set(org), ORG_FIELDS, org)
        uuid.UUID(org["id"])
        self.assertRegex(org["created_at"], RFC3339_UTC)
        self.assertRegex(org["updated_at"], RFC3339_UTC)


class SignupTest(OrgTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_SIGNUP_CREDITS="250")

    def test_signup_creates_everything(self):
        slug = unique("acme")
        status, doc, r = self.server.json("POST", "/v1/orgs", {
            "name": "Acme Inc", "slug": slug,
            "admin": {"email": "Founder@Example.COM", "password": PASSWORD, "name": "Ada"}})
        self.assertEqual(status, 201, doc)
        self.assertEqual(r.getheader("Cache-Control"), "no-store")
        self.assertTrue(r.getheader("Content-Type").startswith("application/json"))
        self.assertEqual(doc["user"]["name"], "Ada")
        self.assertEqual(set(doc), {"org", "user", "access_token", "refresh_token", "token_type",
                                    "expires_in"})
        org, user = doc["org"], doc["user"]
        self.assert_org(org)
        self.assertEqual((org["name"], org["slug"], org["status"]), ("Acme Inc", slug, "active"))
        self.assertEqual(user["email"], "founder@example.com")
        self.assertEqual(user["role"], "admin")
        self.assertEqual(doc["token_type"], "Bearer")
        self.assertIsInstance(doc["expires_in"], int)
        self.assertGreater(doc["expires_in"], 0)
        self.assertTrue(doc["refresh_token"].startswith("tdr_"))
        self.assertEqual(doc["access_token"].count("."), 2)

        # The schema is named from the id and holds every tenant migration.
        schema = "tenant_" + org["id"].replace("-", "")
        self.assertEqual(self.sql(f"SELECT schema_name FROM public.orgs WHERE id = '{org['id']}'"),
                         [schema])
        self.assertEqual(self.sql(f"SELECT to_regclass('{schema}.records') IS NOT NULL"), ["t"])
        applied = self.sql(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
        tenant_dir = os.path.join(harness.SOURCE_DIR, "migrations", "tenant")
        expected = sorted({str(int(f.split("_")[0])) for f in os.listdir(tenant_dir)
                           if f.endswith(".up.sql")}, key=int)
        self.assertEqual(applied, expected)  # every tenant migration of this binary
        self.assertEqual(self.sql(
            f"SELECT role, password_hash LIKE '$argon2id$%' FROM public.users"
            f" WHERE org_id = '{org['id']}'"), ["admin|t"])
        # Signup credits: the account and its ledger agree from the start.
        self.assertEqual(self.sql(
            f"SELECT balance FROM public.credit_accounts WHERE org_id = '{org['id']}'"), ["250"])
        self.assertEqual(self.sql(
            f"SELECT type, amount, balance_after FROM public.credit_transactions"
            f" WHERE org_id = '{org['id']}'"), ["grant|250|250"])
        # Only the refresh token's hash is stored.
        digest = hashlib.sha256(doc["refresh_token"].encode()).hexdigest()
        self.assertEqual(self.sql(
            f"SELECT count(*) FROM public.refresh_tokens WHERE org_id = '{org['id']}'"
            f" AND token_hash = '{digest}' AND user_id = '{user['id']}'"), ["1"])

        # The tokens work.
        status, me, _ = self.server.json("GET", "/v1/org", headers=bearer(doc["access_token"]))
        self.assertEqual(status, 200, me)
        self.assertEqual(me, org)
        status, got, _ = self.server.json("GET", f"/v1/orgs/{slug.upper()}",
                                          headers=bearer(doc["access_token"]))
        self.assertEqual(status, 200, got)
        self.assertEqual(got["id"], org["id"])
        status, pair, _ = self.server.json("POST", "/v1/auth/refresh",
                                           {"refresh_token": doc["refresh_token"]})
        self.assertEqual(status, 200, pair)

    def test_signup_is_all_or_nothing(self):
        """A failure at a late step (credit account, refresh token) leaves no
        org row, no schema, no user behind."""
        for table in ("credit_accounts", "refresh_tokens"):
            with self.subTest(failing=table):
                before = self.counts()
                self.sql("CREATE FUNCTION public.org_test_fail() RETURNS trigger LANGUAGE plpgsql"
                         " AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
                self.sql(f"CREATE TRIGGER org_test_fail BEFORE INSERT ON public.{table}"
                         " FOR EACH ROW EXECUTE FUNCTION public.org_test_fail()")
                try:
                    slug, email = unique("rollback"), f"{unique('rb')}@example.com"
                    status, doc, _ = self.server.json("POST", "/v1/orgs", {
                        "name": "Rollback", "slug": slug,
                        "admin": {"email": email, "password": PASSWORD}})
                    self.assert_problem(status, doc, 500, "internal")
                    self.assertNotIn("injected", json.dumps(doc))  # no SQL detail leaks
                finally:
                    self.sql(f"DROP TRIGGER org_test_fail ON public.{table}")
                    self.sql("DROP FUNCTION public.org_test_fail()")
                self.assertEqual(self.counts(), before)
                self.assertEqual(self.sql(f"SELECT count(*) FROM public.orgs WHERE slug = '{slug}'"),
                                 ["0"])
                self.assertEqual(self.sql(
                    f"SELECT count(*) FROM public.users WHERE email = '{email}'"), ["0"])
                # The same signup succeeds once the failure is gone.
                self.signup(name="Rollback", slug=slug, email=email)

    def test_slug_rules(self):
        bad = ["a", "x" * 51, "has space", "under_score", "sl/ash", "dot.dot", "ünï-code",
               "'; DROP TABLE public.orgs; --", "", "tab\tslug", "emoji-🚀"]
        before = self.counts()
        for slug in bad:
            with self.subTest(slug=slug):
                status, doc, _ = self.server.json("POST", "/v1/orgs", {
                    "name": "Slug Test", "slug": slug,
                    "admin": {"email": f"{unique('s')}@example.com", "password": PASSWORD}})
                self.assert_problem(status, doc, 422, "validation_failed")
                self.assertIn("slug", [e["field"] for e in doc["errors"]])
        self.assertEqual(self.counts(), before)
        # Upper case is accepted and stored lowercase; 2 and 50 chars are the bounds.
        base = uuid.uuid4().hex[:8]
        self.assertEqual(self.signup(slug=f"Mixed-CASE-{base}")["org"]["slug"],
                         f"mixed-case-{base}")
        self.assertEqual(self.signup(slug="q7")["org"]["slug"], "q7")
        fifty = ("z" + uuid.uuid4().hex * 2)[:50]
        self.assertEqual(self.signup(slug=fifty)["org"]["slug"], fifty)

    def test_slug_taken_is_409_case_insensitively(self):
        slug = unique("dup")
        self.signup(slug=slug)
        before = self.counts()
        for other in (slug, slug.upper(), slug.capitalize()):
            with self.subTest(slug=other):
                status, doc, _ = self.server.json("POST", "/v1/orgs", {
                    "name": "Dup", "slug": other,
                    "admin": {"email": f"{unique('d')}@example.com", "password": PASSWORD}})
                self.assert_problem(status, doc, 409, "slug_taken")
        self.assertEqual(self.counts(), before)

    def test_derived_slug(self):
        tag = uuid.uuid4().hex[:6]
        cases = {
            f"Hello, World! {tag}": f"hello-world-{tag}",
            f"  --Acme   Widgets__Ltd.  {tag}  ": f"acme-widgets-ltd-{tag}",
            f"Café Ünïcode {tag}": f"caf-n-code-{tag}",
        }
        for name, slug in cases.items():
            with self.subTest(name=name):
                org = self.signup(name=name)["org"]
                self.assertEqual(org["name"], name)
                self.assertEqual(org["slug"], slug)
        # Long names are cut to 50 characters, without a trailing '-'.
        long_name = tag + "-" + "a" * 43 + " b" + "c" * 30
        org = self.signup(name=long_name)["org"]
        self.assertEqual(org["slug"], tag + "-" + "a" * 43)
        # A derived slug that is taken is a conflict like an explicit one.
        status, doc, _ = self.server.json("POST", "/v1/orgs", {
            "name": f"HELLO world {tag}", "admin": {"email": f"{unique('c')}@example.com",
                                                   "password": PASSWORD}})
        self.assert_problem(status, doc, 409, "slug_taken")
        # Nothing usable to derive from: 422 on slug, asking for one.
        before = self.counts()
        for name in ("日本語", "!!", "x", "🚀🚀🚀"):
            with self.subTest(name=name):
                status, doc, _ = self.server.json("POST", "/v1/orgs", {
                    "name": name, "admin": {"email": f"{unique('u')}@example.com",
                                            "password": PASSWORD}})
                self.assert_problem(status, doc, 422, "validation_failed")
                self.assertEqual([e["field"] for e in doc["errors"]], ["slug"])
        self.assertEqual(self.counts(), before)
        # With an explicit slug a non-ASCII name is fine.
        self.assertEqual(self.signup(name="日本語", slug=f"nihongo-{tag}")["org"]["name"], "日本語")

    def test_hostile_input_creates_nothing(self):
        before = self.counts()
        good_admin = {"email": "h@example.com", "password": PASSWORD}
        bad_json = [b"", b"{", b"not json", b"[]", b'"string"', b"null", b"42",
                    b'{"name": "a", "name": "b", "admin": {}}',  # duplicate key
                    b'{"name": "nul\\u0000byte", "admin": {}}',
                    b"\xff\xfe{}"]
        for body in bad_json:
            with self.subTest(body=body):
                r = self.server.request("POST", "/v1/orgs", body,
                                        {"Content-Type": "application/json"})
                doc = json.loads(r.body)
                self.assert_problem(r.status, doc, 400, "bad_request")
        fields = [
            ({}, {"name", "admin"}),
            ({"name": "x" * 3}, {"admin"}),
            ({"admin": good_admin}, {"name"}),
            ({"name": 5, "admin": good_admin}, {"name"}),
            ({"name": None, "admin": good_admin}, {"name"}),
            ({"name": ["a"], "admin": good_admin}, {"name"}),
            ({"name": "ok name", "slug": 7, "admin": good_admin}, {"slug"}),
            ({"name": "ok name", "admin": "admin@example.com"}, {"admin"}),
            ({"name": "ok name", "admin": []}, {"admin"}),
            ({"name": "ok name", "admin": {}}, {"admin.email", "admin.password"}),
            ({"name": "ok name", "admin": {"email": 1, "password": True}},
             {"admin.email", "admin.password"}),
            ({"name": "ok name", "admin": {"email": "h@example.com", "password": "short"}},
             {"admin.password"}),
            ({"name": "ok name", "admin": {"email": "h@example.com", "password": "p" * 1025}},
             {"admin.password"}),
            ({"name": "ok name", "admin": dict(good_admin, name=5)}, {"admin.name"}),
            ({"name": "ok name", "admin": dict(good_admin, name="n" * 101)}, {"admin.name"}),
            ({"name": "", "admin": good_admin}, {"name"}),
            ({"name": "   ", "admin": good_admin}, {"name"}),
            ({"name": "n" * 101, "admin": good_admin}, {"name"}),
            ({"name": "🚀" * 101, "admin": good_admin}, {"name"}),
            ({"name": "bell\u0007", "admin": good_admin}, {"name"}),
            ({"name": "two\nlines", "admin": good_admin}, {"name"}),
            ({"name": "c1\u0085", "admin": good_admin}, {"name"}),
            ({"name": "ok name", "admin": dict(good_admin, name="")}, {"admin.name"}),
            ({"name": "ok name", "admin": dict(good_admin, name="tab\t")}, {"admin.name"}),
            ({"name": "ok name", "nmae": "typo", "admin": good_admin}, {"nmae"}),
            ({"name": "ok name", "admin": dict(good_admin, role="member")}, {"admin.role"}),
            ({"name": "ok name", "id": str(uuid.uuid4()), "status": "suspended",
              "admin": good_admin}, {"id", "status"}),
        ]
        for email in ("no-at-sign", "a@b", "a@@example.com", "a@example..com", "@example.com",
                      "a@-example.com", "a b@example.com", "<script>@example.com", ".a@example.com",
                      "a..b@example.com", "a@example.com.", "a(b)@example.com",
                      "x@example.com'; DROP TABLE public.users; --", "é@example.com",
                      "a" * 65 + "@example.com", "a@" + "b" * 250 + ".com"):
            fields.append(({"name": "ok name", "admin": {"email": email, "password": PASSWORD}},
                           {"admin.email"}))
        for body, want in fields:
            with self.subTest(body=json.dumps(body)[:80]):
                status, doc, _ = self.server.json("POST", "/v1/orgs", body)
                self.assert_problem(status, doc, 422, "validation_failed")
                self.assertEqual({e["field"] for e in doc["errors"]}, want, doc)
                for e in doc["errors"]:
                    self.assertTrue(e["message"])
        # A name of about a megabyte: over the body limit (413) or the name limit (422).
        for size in (1_000_000, 2_000_000):
            with self.subTest(size=size):
                status, doc, _ = self.server.json("POST", "/v1/orgs",
                                                  {"name": "n" * size, "admin": good_admin})
                self.assertIn(status, (413, 422), doc)
        self.assertEqual(self.counts(), before)
        self.assertEqual(self.server.get("/health").status, 200)

    def test_hostile_but_valid_text_is_stored_verbatim(self):
        """SQL-looking and unicode text that passes validation is data, never SQL."""
        name = "Robert'); DROP TABLE public.orgs; -- 🚀 Ünïcode \"quoted\" \\ back"
        email = f"o'brien+drop--table-{uuid.uuid4().hex[:6]}@example.com"
        doc = self.signup(name=name, slug=f"drop-table-orgs--{uuid.uuid4().hex[:6]}", email=email)
        self.assertEqual(doc["org"]["name"], name)
        self.assertEqual(doc["user"]["email"], email)
        self.assertEqual(self.sql("SELECT to_regclass('public.orgs') IS NOT NULL"), ["t"])
        # 100 characters of 4 bytes each: the limit counts characters.
        self.assertEqual(self.signup(name="🚀" * 100, slug=unique("rockets"))["org"]["name"],
                         "🚀" * 100)

    def test_get_by_slug_never_reveals_another_org(self):
        a = self.signup()
        b = self.signup()
        tok = bearer(a["access_token"])
        for slug in (b["org"]["slug"], "no-such-org-" + uuid.uuid4().hex[:6], "!!", "a",
                     "x" * 51, "%27%20OR%201%3D1"):
            with self.subTest(slug=slug):
                status, doc, _ = self.server.json("GET", f"/v1/orgs/{slug}", headers=tok)
                self.assert_problem(status, doc, 404, "not_found")
        # Without a credential: 401.
        status, doc, _ = self.server.json("GET", f"/v1/orgs/{a['org']['slug']}")
        self.assert_problem(status, doc, 401, "unauthorized")
        status, doc, _ = self.server.json("GET", "/v1/org")
        self.assert_problem(status, doc, 401, "unauthorized")


class SignupConcurrencyTest(OrgTestCase):
    server_env = dict(FAST_ARGON2)

    def test_same_slug_at_once_exactly_one_wins(self):
        slug = unique("race")
        before = self.counts()
        results = []

        def one(i):
            status, doc, _ = self.server.json("POST", "/v1/orgs", {
                "name": "Race", "slug": slug,
                "admin": {"email": f"r{i}@example.com", "password": PASSWORD}})
            results.append((status, doc))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(s for s, _ in results), [201] + [409] * 7, results)
        self.assertEqual({d["code"] for s, d in results if s == 409}, {"slug_taken"}, results)
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.orgs WHERE slug = '{slug}'"), ["1"])
        self.assertEqual([int(a) - int(b) for a, b in zip(self.counts(), before)], [1] * 5)

    def test_new_schemas_are_what_migrate_up_makes(self):
        """Signup applies the binary's tenant migrations with the runner's
        bookkeeping: `migrate status` sees the schemas current, `migrate up`
        has nothing to do."""
        for _ in range(2):
            self.signup()
        n = self.sql("SELECT count(*) FROM public.orgs WHERE status <> 'deleted'")[0]
        cp = harness.run_tenantd(["migrate", "status"], self.db_url)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(f"{n} current, 0 behind", cp.stdout)
        cp = harness.run_tenantd(["migrate", "up"], self.db_url)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(f"0 migrated, {n} already current", cp.stdout + cp.stderr)


class SignupBusyTest(OrgTestCase):
    """A saturated password pool answers 503 + Retry-After at once, and such a
    signup creates nothing."""
    server_env = {"TENANTD_ARGON2_M_KIB": "32768", "TENANTD_ARGON2_T": "3",
                  "TENANTD_HASH_THREADS": "1", "TENANTD_HASH_QUEUE": "1"}

    def test_busy_is_503_and_creates_nothing(self):
        results = []

        def one(i):
            status, doc, r = self.server.json("POST", "/v1/orgs", {
                "name": f"Busy {i}", "slug": f"busy-{i}",
                "admin": {"email": f"b{i}@example.com", "password": PASSWORD}})
            results.append((i, status, doc, r.getheader("Retry-After")))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created = {i for i, status, _, _ in results if status == 201}
        busy = [(i, doc, ra) for i, status, doc, ra in results if status == 503]
        self.assertEqual(len(created) + len(busy), 12, results)
        self.assertTrue(created)
        self.assertTrue(busy, "12 signups at once never filled a queue of 1")
        for i, doc, retry_after in busy:
            self.assertEqual(doc["code"], "unavailable")
            self.assertEqual(retry_after, "1")
        self.assertEqual(sorted(self.sql("SELECT slug FROM public.orgs")),
                         sorted(f"busy-{i}" for i in created))
        self.assertEqual(self.sql("SELECT count(*) FROM public.users")[0], str(len(created)))


class RenameDeleteTest(OrgTestCase):

    def test_rename_keeps_tokens_and_schema(self):
        doc = self.signup(name="Before Rename")
        org, tok = doc["org"], bearer(doc["access_token"])
        schema = self.sql(f"SELECT schema_name FROM public.orgs WHERE id = '{org['id']}'")
        new_slug = unique("renamed")
        status, after, _ = self.server.json("PATCH", "/v1/org",
                                            {"name": "After Rename", "slug": new_slug.upper()},
                                            headers=tok)
        self.assertEqual(status, 200, after)
        self.assert_org(after)
        self.assertEqual((after["id"], after["name"], after["slug"]),
                         (org["id"], "After Rename", new_slug))
        self.assertEqual(after["created_at"], org["created_at"])
        self.assertGreater(after["updated_at"], org["updated_at"])
        self.assertEqual(self.sql(f"SELECT schema_name FROM public.orgs WHERE id = '{org['id']}'"),
                         schema)
        # The old access token still works, and the org answers under its new slug only.
        status, got, _ = self.server.json("GET", "/v1/org", headers=tok)
        self.assertEqual((status, got), (200, after))
        status, got, _ = self.server.json("GET", f"/v1/orgs/{new_slug}", headers=tok)
        self.assertEqual((status, got), (200, after))
        status, got, _ = self.server.json("GET", f"/v1/orgs/{org['slug']}", headers=tok)
        self.assertEqual(status, 404, got)
        # X-Org-Name follows the rename at once.
        status, got, _ = self.server.json("GET", "/v1/org",
                                          headers=dict(tok, **{"X-Org-Name": new_slug}))
        self.assertEqual(status, 200, got)
        status, got, _ = self.server.json("GET", "/v1/org",
                                          headers=dict(tok, **{"X-Org-Name": org["slug"]}))
        self.assert_problem(status, got, 403, "forbidden")
        # The old refresh token too.
        status, pair, _ = self.server.json("POST", "/v1/auth/refresh",
                                           {"refresh_token": doc["refresh_token"]})
        self.assertEqual(status, 200, pair)
        # The old slug is free for someone else.
        self.signup(slug=org["slug"])

    def test_patch_rules(self):
        a, b = self.signup(), self.signup()
        tok = bearer(a["access_token"])
        # Another live org's slug, in any case: 409, nothing changes.
        for slug in (b["org"]["slug"], b["org"]["slug"].upper()):
            status, doc, _ = self.server.json("PATCH", "/v1/org", {"slug": slug}, headers=tok)
            self.assert_problem(status, doc, 409, "slug_taken")
        # Its own slug again: fine.
        status, doc, _ = self.server.json("PATCH", "/v1/org", {"slug": a["org"]["slug"]},
                                          headers=tok)
        self.assertEqual(status, 200, doc)
        self.assertEqual(doc["updated_at"], a["org"]["updated_at"])  # nothing changed
        # Nothing asked: the org as it is.
        status, doc, _ = self.server.json("PATCH", "/v1/org", {}, headers=tok)
        self.assertEqual((status, doc), (200, a["org"]))
        for body, field in (({"slug": "x"}, "slug"), ({"slug": "bad slug"}, "slug"),
                            ({"slug": None}, "slug"), ({"slug": 12}, "slug"),
                            ({"name": ""}, "name"), ({"name": None}, "name"),
                            ({"name": "n" * 101}, "name"), ({"name": {"a": 1}}, "name"),
                            ({"name": "new\nline"}, "name"), ({"status": "active"}, "status"),
                            ({"id": str(uuid.uuid4())}, "id")):
            with self.subTest(body=body):
                status, doc, _ = self.server.json("PATCH", "/v1/org", body, headers=tok)
                self.assert_problem(status, doc, 422, "validation_failed")
                self.assertEqual([e["field"] for e in doc["errors"]], [field])
        for raw in (b"{", b"[]", b"null"):
            r = self.server.request("PATCH", "/v1/org", raw,
                                    dict(tok, **{"Content-Type": "application/json"}))
            self.assertEqual(r.status, 400, r.body)
        status, doc, _ = self.server.json("GET", "/v1/org", headers=tok)
        self.assertEqual((status, doc), (200, a["org"]))
        status, doc, _ = self.server.json("PATCH", "/v1/org", {"name": "x"})
        self.assert_problem(status, doc, 401, "unauthorized")

    def test_delete_removes_every_credential_and_the_schema(self):
        doc = self.signup()
        org, tok = doc["org"], bearer(doc["access_token"])
        schema = "tenant_" + org["id"].replace("-", "")
        status, key, _ = self.server.json("POST", "/v1/api-keys", {"name": "ci", "role": "admin"},
                                          headers=tok)
        self.assertEqual(status, 201, key)
        status, _, _ = self.server.json("GET", "/v1/org", headers=bearer(key["key"]))
        self.assertEqual(status, 200)
        self.sql(f"UPDATE public.credit_accounts SET balance = balance WHERE org_id = '{org['id']}'")
        self.sql(f"INSERT INTO public.credit_transactions (org_id, amount, type, balance_after)"
                 f" VALUES ('{org['id']}', 0, 'adjustment', 0)")

        r = self.server.request("DELETE", "/v1/org", headers=tok)
        self.assertEqual(r.status, 204, r.body)
        self.assertEqual(r.body, b"")

        for name, cred in (("access token", tok), ("api key", bearer(key["key"]))):
            with self.subTest(credential=name):
                status, body, _ = self.server.json("GET", "/v1/org", headers=cred)
                self.assert_problem(status, body, 401, "unauthorized")
        status, body, _ = self.server.json("POST", "/v1/auth/refresh",
                                           {"refresh_token": doc["refresh_token"]})
        self.assertEqual(status, 401, body)
        status, body, _ = self.server.json("POST", "/v1/auth/login", {
            "email": doc["user"]["email"], "password": PASSWORD})
        self.assertEqual(status, 401, body)

        self.assertEqual(self.sql(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
                         ["0"])
        self.assertEqual(self.sql(f"SELECT status FROM public.orgs WHERE id = '{org['id']}'"),
                         ["deleted"])
        for table in ("users", "api_keys", "refresh_tokens"):
            self.assertEqual(self.sql(
                f"SELECT count(*) FROM public.{table} WHERE org_id = '{org['id']}'"), ["0"], table)
        # The ledger stays, flagged.
        self.assertEqual(self.sql(
            f"SELECT count(*), bool_and(org_deleted) FROM public.credit_transactions"
            f" WHERE org_id = '{org['id']}'"), ["1|t"])
        # The slug is free again; the deleted org is not found under it.
        again = self.signup(slug=org["slug"])
        self.assertNotEqual(again["org"]["id"], org["id"])

    def test_members_and_member_keys_read_but_do_not_change_the_org(self):
        doc = self.signup()
        admin = bearer(doc["access_token"])
        email = f"{unique('m')}@example.com"
        status, user, _ = self.server.json("POST", "/v1/users", {
            "email": email, "password": PASSWORD, "role": "member"}, headers=admin)
        self.assertEqual(status, 201, user)
        status, login, _ = self.server.json("POST", "/v1/auth/login", {
            "email": email, "password": PASSWORD})
        self.assertEqual(status, 200, login)
        status, key, _ = self.server.json("POST", "/v1/api-keys", {"name": "ro", "role": "member"},
                                          headers=admin)
        self.assertEqual(status, 201, key)
        for name, cred in (("member", bearer(login["access_token"])),
                           ("member key", bearer(key["key"]))):
            with self.subTest(credential=name):
                status, got, _ = self.server.json("GET", "/v1/org", headers=cred)
                self.assertEqual((status, got), (200, doc["org"]))
                status, got, _ = self.server.json("GET", f"/v1/orgs/{doc['org']['slug']}",
                                                  headers=cred)
                self.assertEqual((status, got), (200, doc["org"]))
                status, got, _ = self.server.json("PATCH", "/v1/org", {"name": "Taken Over"},
                                                  headers=cred)
                self.assert_problem(status, got, 403, "forbidden")
                r = self.server.request("DELETE", "/v1/org", headers=cred)
                self.assertEqual(r.status, 403, r.body)
        status, got, _ = self.server.json("GET", "/v1/org", headers=admin)
        self.assertEqual((status, got), (200, doc["org"]))

    def test_delete_twice_and_without_credential(self):
        doc = self.signup()
        tok = bearer(doc["access_token"])
        r = self.server.request("DELETE", "/v1/org")
        self.assertEqual(r.status, 401)
        self.assertEqual(self.server.request("DELETE", "/v1/org", headers=tok).status, 204)
        self.assertEqual(self.server.request("DELETE", "/v1/org", headers=tok).status, 401)


class ClosedSignupTest(OrgTestCase):
    OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
    server_env = dict(FAST_ARGON2, TENANTD_SIGNUP="closed", TENANTD_OPERATOR_TOKEN=OPERATOR)

    def test_only_the_operator_creates_orgs(self):
        before = self.counts()
        for headers in (None, bearer("wrong"), bearer(self.OPERATOR[:-1]),
                        bearer(self.OPERATOR + "x"), {"Authorization": self.OPERATOR},
                        {"Authorization": f"Basic {self.OPERATOR}"}):
            with self.subTest(headers=headers):
                status, doc, _ = self.server.json("POST", "/v1/orgs", {
                    "name": "Closed", "admin": {"email": "c@example.com", "password": PASSWORD}},
                    headers)
                self.assert_problem(status, doc, 403, "forbidden")
        # An org admin's token is not the operator's either.
        self.assertEqual(self.counts(), before)
        doc = self.signup(headers=bearer(self.OPERATOR))
        status, again, _ = self.server.json("POST", "/v1/orgs", {
            "name": "Closed", "admin": {"email": "c@example.com", "password": PASSWORD}},
            bearer(doc["access_token"]))
        self.assert_problem(status, again, 403, "forbidden")
        # The admin the operator created can use the org.
        status, org, _ = self.server.json("GET", "/v1/org", headers=bearer(doc["access_token"]))
        self.assertEqual((status, org), (200, doc["org"]))


class SignupLimitTest(OrgTestCase):
    """TENANTD_SIGNUP_LIMIT signups an hour per client address: then 429
    with Retry-After, and nothing is created; the operator is not limited;
    behind a trusted proxy each forwarded client has its own budget."""
    OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
    server_env = dict(FAST_ARGON2, TENANTD_SIGNUP_LIMIT="2", TENANTD_OPERATOR_TOKEN=OPERATOR,
                      TENANTD_TRUSTED_PROXIES="127.0.0.1")

    def attempt(self, xff, headers=None):
        h = dict(headers or {}, **{"X-Forwarded-For": xff})
        return self.server.json("POST", "/v1/orgs", {
            "name": unique("Lim"), "admin": {"email": f"{unique('l')}@example.com",
                                             "password": PASSWORD}}, h)

    def test_limit_per_address(self):
        for i in range(2):
            status, doc, r = self.attempt("203.0.113.20")
            self.assertEqual(status, 201, doc)
            self.assertEqual(r.getheader("RateLimit-Limit"), "2")
            self.assertEqual(r.getheader("RateLimit-Remaining"), str(1 - i))
        before = self.counts()
        status, doc, r = self.attempt("203.0.113.20")
        self.assert_problem(status, doc, 429, "rate_limited")
        retry = int(r.getheader("Retry-After"))
        self.assertTrue(1700 <= retry <= 1800, retry)  # one signup per half hour
        self.assertEqual(self.counts(), before)
        # Another client behind the same proxy still may.
        self.assertEqual(self.attempt("203.0.113.21")[0], 201)
        # The operator is never limited, and gets no RateLimit headers.
        for _ in range(3):
            status, doc, r = self.attempt("203.0.113.20", bearer(self.OPERATOR))
            self.assertEqual(status, 201, doc)
            self.assertIsNone(r.getheader("RateLimit-Limit"))


class ClosedSignupWithoutOperatorTest(OrgTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_SIGNUP="closed")

    def test_nobody_creates_orgs(self):
        for headers in (None, bearer("anything"), bearer("")):
            status, doc, _ = self.server.json("POST", "/v1/orgs", {
                "name": "Closed", "admin": {"email": "c@example.com", "password": PASSWORD}},
                headers)
            self.assert_problem(status, doc, 403, "forbidden")
        self.assertEqual(self.sql("SELECT count(*) FROM public.orgs"), ["0"])


class BadSignupConfigTest(unittest.TestCase):
    def test_unknown_signup_mode_refuses_to_start(self):
        pg = harness.cluster()
        db = pg.create_db()
        try:
            server = harness.Server(pg.url(db), env={"TENANTD_SIGNUP": "maybe"})
            with self.assertRaises(AssertionError) as cm:
                server.start()
            self.assertIn("TENANTD_SIGNUP", str(cm.exception))
            server.stop()
        finally:
            pg.drop_db(db)


if __name__ == "__main__":
    unittest.main()
