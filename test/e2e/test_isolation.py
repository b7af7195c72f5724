"""Tenant isolation: two orgs A and B, each with an admin, a member, an admin
API key and a member API key (and, where the routes exist, records and
jobs). The matrices are GENERATED from `tenantd routes` and /openapi.json,
so a new route is covered without anyone remembering to add it:

1. every route with a path parameter, called with each of A's credentials
   on B's ids/slug/names: 404 (403 where the credential may not use the
   route at all, e.g. operator routes or a member on an admin route);
2. every authenticated route called with A's credentials on A's own ids
   plus `X-Org-Name: <B's slug>`: 403, and A's data unchanged;
3. every authenticated GET called with A's admin credentials: no byte of
   B's identifiers in the answer;
4. every authenticated POST sent by B, then by A with the same
   Idempotency-Key: A never gets B's answer replayed;
and after each, B's rows in every `public` table with an org_id column and
every table of B's schema are byte for byte what they were.

A route whose parameter this file cannot fill fails the test: teach
`Org.param_value` about it (that is the point)."""
import json
import re
import unittest
import uuid

import harness
from test_users import PASSWORD, SERVER_ENV, bearer, create_key, create_user, login, signup

OPERATOR_TOKEN = "op-" + uuid.uuid4().hex + uuid.uuid4().hex
PARAM_RE = re.compile(r"\{([^}]+)\}")
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}

# A body for routes that take one: valid, so a 404/403 cannot hide behind
# a 400/422. Keyed by operationId; others get DEFAULT_BODY.
BODIES = {
    "updateUser": {"name": "pwned by A"},
    "createUser": {"email": "intruder@example.com", "password": PASSWORD},
    "createApiKey": {"name": "intruder"},
    "updateOrg": {"name": "pwned by A"},
    "changePassword": {"current_password": PASSWORD, "new_password": "pwned-by-A-123"},
    "spendCredits": {"amount": 1},
    "createRecordsBatch": {"records": [{"pwned": True}]},
    "importUsers": {"users": [{"email": "intruder-import@example.com",
                               "password_hash": harness.argon2id_phc("pwned-by-A-123")}]},
    # createJob: the cheapest job type, filled in by IsolationTest.setUpClass.
    # The worker API: a well-formed lease, so only the job's org decides.
    "updateSchedule": {"paused": True},
    "workerHeartbeat": {"lease_id": str(uuid.uuid4())},
    "workerComplete": {"lease_id": str(uuid.uuid4())},
    "workerFail": {"lease_id": str(uuid.uuid4()), "error": "by A"},
}
DEFAULT_BODY = {"pwned": True}


class Org:
    """One org and its credentials. Ids of resources that other modules own
    (records, jobs) are made on first use, through the API."""

    def __init__(self, test, tag):
        self.test = test
        server = test.server
        self.signup = signup(server)
        self.slug = self.signup["slug"]
        self.id = self.signup["org"]["id"]
        self.admin_token = self.signup["access_token"]
        self.member = create_user(server, self.admin_token,
                                  f"member-{tag}@{self.slug}.example.com", name=f"member {tag}")
        self.member_token = login(server, self.member["email"], org=self.slug)["access_token"]
        self.admin_key = create_key(server, self.admin_token, name=f"admin key {tag}", role="admin")
        self.member_key = create_key(server, self.admin_token, name=f"member key {tag}")
        self.worker_key = create_key(server, self.admin_token, name=f"worker key {tag}",
                                     role="worker")
        self.collection = f"isol_{tag.lower()}"
        self._record = self._job = self._schedule = self._webhook = None
        self.schema = test.sql(f"SELECT schema_name FROM public.orgs WHERE id = '{self.id}'")[0]

    def credentials(self):
        return {"admin token": self.admin_token, "member token": self.member_token,
                "admin key": self.admin_key["key"], "member key": self.member_key["key"],
                "worker key": self.worker_key["key"]}

    def secrets(self):
        """Strings that must never appear in another org's answers."""
        return [self.id, self.slug, self.signup["email"], self.signup["user"]["id"],
                self.member["id"], self.member["email"], self.admin_key["id"],
                self.member_key["id"], self.admin_key["prefix"], self.member_key["prefix"],
                self.worker_key["id"], self.worker_key["prefix"]] + \
            [x for x in (self._record, self._job, self._schedule, self._webhook) if x]

    def record_id(self):
        if not self._record:
            status, body, _ = self.test.server.json(
                "POST", f"/v1/collections/{self.collection}/records",
                {"secret": f"data of {self.slug}"}, bearer(self.admin_token))
            self.test.assertEqual(status, 201, f"cannot create a record in {self.slug}: {body}")
            self._record = body["id"]
        return self._record

    def job_id(self):
        if not self._job:
            status, types, _ = self.test.server.json("GET", "/v1/job-types", None,
                                                     bearer(self.admin_token))
            self.test.assertEqual(status, 200, types)
            cheapest = min(types["data"], key=lambda t: t["cost"])
            status, body, _ = self.test.server.json(
                "POST", "/v1/jobs", {"type": cheapest["type"], "payload": {}},
                bearer(self.admin_token))
            self.test.assertIn(status, (201, 202), f"cannot create a job in {self.slug}: {body}")
            self._job = body["id"]
        return self._job

    def schedule_id(self):
        if not self._schedule:
            status, body, _ = self.test.server.json(
                "POST", "/v1/schedules", {"type": "sleep", "payload": {"ms": 0},
                                          "cron": "0 0 1 1 *"}, bearer(self.admin_token))
            self.test.assertEqual(status, 201, f"cannot create a schedule in {self.slug}: {body}")
            self._schedule = body["id"]
        return self._schedule

    def webhook_id(self):
        if not self._webhook:
            status, body, _ = self.test.server.json(
                "POST", "/v1/webhooks", {"url": "https://hooks.example.com/x",
                                         "events": ["job.failed"]}, bearer(self.admin_token))
            self.test.assertEqual(status, 201, f"cannot create a webhook in {self.slug}: {body}")
            harness.secret(body["secret"])
            self._webhook = body["id"]
        return self._webhook

    def invitation_id(self):
        if not getattr(self, "_invitation", None):
            status, body, _ = self.test.server.json(
                "POST", "/v1/invitations", {"email": f"invitee@{self.slug}.example.com"},
                bearer(self.admin_token))
            self.test.assertEqual(status, 201, f"cannot invite in {self.slug}: {body}")
            self._invitation = body["id"]
        return self._invitation

    def param_value(self, pattern, name, start):
        """The value of path parameter `name` (at offset `start` of pattern)
        naming this org's resource."""
        if name == "slug":
            return self.slug
        if name == "type" and pattern.startswith("/v1/admin/job-types/"):
            return "isolation.type"  # operator-only: no org owns a job type
        if name == "collection":
            return self.collection
        if name == "provider":
            return "google"  # sign-in provider names are not per org
        if name == "id":
            parent = pattern[:start].rstrip("/").rsplit("/", 1)[-1]
            by_parent = {"users": lambda: self.member["id"],
                         "api-keys": lambda: self.member_key["id"],
                         "records": self.record_id,
                         "jobs": self.job_id,
                         "schedules": self.schedule_id,
                         "webhooks": self.webhook_id,
                         "invitations": self.invitation_id}
            if parent in by_parent:
                return by_parent[parent]()
        self.test.fail(f"{pattern}: no known value for parameter {{{name}}}; "
                       "teach test_isolation.Org.param_value about it")

    def fill(self, pattern):
        return PARAM_RE.sub(lambda m: self.param_value(pattern, m.group(1), m.start()), pattern)


class IsolationTest(harness.DbTestCase):
    server_env = dict(SERVER_ENV, TENANTD_OPERATOR_TOKEN=OPERATOR_TOKEN,
                      TENANTD_SIGNUP_CREDITS="1000", TENANTD_TEST_JOBS="1",
                      TENANTD_JOB_WORKERS="0", TENANTD_WEBHOOK_ALLOW="hooks.example.com")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cp = harness.run_tenantd(["routes"], cls.db_url)
        if cp.returncode != 0:
            raise AssertionError(cp.stderr)
        cls.routes = []
        for line in cp.stdout.splitlines():
            method, pattern, opid = line.split(" ")
            if method != "HEAD":
                cls.routes.append((method, pattern, opid))
        status, doc, _ = cls.server.json("GET", "/openapi.json")
        assert status == 200
        # Which routes need a credential, from the document the drift test
        # keeps equal to the route tables: an empty requirement ({}) means a
        # credential is optional (signup), so the route is open to anyone.
        cls.public = set()
        # Routes that take an Idempotency-Key, from the same document.
        cls.idempotent = set()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method in HTTP_METHODS:
                    sec = op.get("security", doc.get("security", []))
                    if sec == [] or {} in sec:
                        cls.public.add((method.upper(), path))
                    if "Idempotency-Key" in json.dumps(op.get("parameters", [])) or \
                            "IdempotencyKey" in json.dumps(op.get("parameters", [])):
                        cls.idempotent.add((method.upper(), path))
        assert cls.routes
        assert ("POST", "/v1/credits/spend") in cls.idempotent, cls.idempotent
        assert ("POST", "/v1/jobs") in cls.idempotent, cls.idempotent
        status, types, _ = cls.server.json("GET", "/v1/job-types", None,
                                           bearer(signup(cls.server)["access_token"]))
        assert status == 200, types
        cheapest = min(types["data"], key=lambda t: t["cost"])
        BODIES["createJob"] = {"type": cheapest["type"], "payload": {}}

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def setUp(self):
        self.a = Org(self, "A")
        self.b = Org(self, "B")
        # Resources of other modules exist before the snapshot, in both orgs.
        for method, pattern, _ in self.routes:
            if "{" in pattern:
                for org in (self.a, self.b):
                    org.fill(pattern)

    def snapshot(self, org):
        """Every row of the org: public tables with an org_id column, and
        every table of its schema, as text. A key's last_used_at is left
        out: authenticating with it may touch it, even when the request is
        then refused."""
        snap = {}
        tables = self.sql("SELECT table_name FROM information_schema.columns "
                          "WHERE table_schema = 'public' AND column_name = 'org_id' "
                          "ORDER BY table_name")
        for t in tables:
            snap[f"public.{t}"] = self.sql(
                f"SELECT (to_jsonb(t) - 'last_used_at')::text FROM public.\"{t}\" t "
                f"WHERE org_id = '{org.id}' ORDER BY 1")
        snap["public.orgs"] = self.sql(f"SELECT o::text FROM public.orgs o WHERE id = '{org.id}'")
        for t in self.sql(f"SELECT table_name FROM information_schema.tables "
                          f"WHERE table_schema = '{org.schema}' ORDER BY 1"):
            snap[f"{org.schema}.{t}"] = self.sql(
                f'SELECT t::text FROM "{org.schema}"."{t}" t ORDER BY 1')
        self.assertIn("public.users", snap)
        return snap

    def assertUnchanged(self, before, org):
        after = self.snapshot(org)
        for k in sorted(set(before) | set(after)):
            self.assertEqual(before.get(k), after.get(k), f"{org.slug}: {k} changed")

    def request(self, method, path, token, headers=None, opid=None):
        body = BODIES.get(opid, DEFAULT_BODY) if method in ("POST", "PUT", "PATCH") else None
        r = self.server.request(method, path, body, bearer(token, **(headers or {})))
        if "ndjson" in (r.getheader("Content-Type") or ""):  # the org export: a line per item
            return r.status, [json.loads(line) for line in r.body.splitlines()], r
        return r.status, (json.loads(r.body) if r.body else None), r

    def test_route_list_is_parsed(self):
        pats = {p for _, p, _ in self.routes}
        self.assertIn("/v1/users/{id}", pats)
        self.assertIn("/v1/api-keys/{id}", pats)
        self.assertIn(("GET", "/health"), self.public)

    def test_ids_of_another_org_are_404(self):
        before = self.snapshot(self.b)
        param_routes = [r for r in self.routes if "{" in r[1]]
        self.assertTrue(param_routes)
        for method, pattern, opid in param_routes:
            path = self.b.fill(pattern)
            names = set(PARAM_RE.findall(pattern))
            # A's own collection of that name; a sign-in provider is no org's
            # (linking one is about the caller only).
            own_namespace = names <= {"collection", "provider"}
            for cred, token in self.a.credentials().items():
                with self.subTest(route=f"{method} {pattern}", credential=cred):
                    status, body, _ = self.request(method, path, token, opid=opid)
                    if own_namespace:
                        self.assertLess(status, 500, body)
                        self.assertNoSecrets(body, self.b, f"{method} {path}")
                    elif pattern.startswith("/v1/admin/"):
                        self.assertEqual(status, 403, body)
                    elif pattern.startswith("/v1/worker/"):
                        # Only worker credentials may; A's worker key finds no B job.
                        self.assertEqual(status, 404 if cred == "worker key" else 403, body)
                    elif cred.startswith("admin"):
                        self.assertEqual(status, 404, body)
                    else:
                        self.assertIn(status, (403, 404), body)
                    if status >= 400:
                        self.assertNoSecrets(body, self.b, f"{method} {path}")
        self.assertUnchanged(before, self.b)
        # B's things still work for B.
        status, body, _ = self.server.json("GET", f"/v1/users/{self.b.member['id']}", None,
                                           bearer(self.b.admin_token))
        self.assertEqual(status, 200, body)
        status, body, _ = self.server.json("GET", "/v1/users", None,
                                           bearer(self.b.member_key["key"]))
        self.assertEqual(status, 200, body)

    def test_x_org_name_of_another_org_is_403(self):
        before_a, before_b = self.snapshot(self.a), self.snapshot(self.b)
        authed = [r for r in self.routes if (r[0], r[1]) not in self.public]
        self.assertTrue(authed)
        for method, pattern, opid in authed:
            path = self.a.fill(pattern)
            for cred, token in self.a.credentials().items():
                for slug in (self.b.slug, self.b.slug.upper()):
                    with self.subTest(route=f"{method} {pattern}", credential=cred, slug=slug):
                        status, body, _ = self.request(method, path, token,
                                                       {"X-Org-Name": slug}, opid)
                        self.assertEqual(status, 403, body)
                        self.assertNoSecrets(body, self.b, f"{method} {path}")
        self.assertUnchanged(before_a, self.a)
        self.assertUnchanged(before_b, self.b)
        # The credential's own slug, in any case, is fine.
        for slug in (self.a.slug, self.a.slug.upper()):
            status, body, _ = self.server.json("GET", "/v1/users", None,
                                               bearer(self.a.admin_token, **{"X-Org-Name": slug}))
            self.assertEqual(status, 200, body)
        # A name that is no org at all is refused too.
        status, body, _ = self.server.json(
            "GET", "/v1/users", None, bearer(self.a.admin_token, **{"X-Org-Name": "no-such-org"}))
        self.assertEqual(status, 403, body)

    def test_reads_never_show_another_orgs_data(self):
        gets = [r for r in self.routes if r[0] == "GET" and (r[0], r[1]) not in self.public]
        self.assertTrue(gets)
        for method, pattern, opid in gets:
            path = self.a.fill(pattern)
            for cred in ("admin token", "admin key", "member token"):
                with self.subTest(route=pattern, credential=cred):
                    status, body, r = self.request(method, path, self.a.credentials()[cred])
                    self.assertLess(status, 500, body)
                    self.assertNoSecrets(body, self.b, f"GET {path}")
        # The lists hold exactly A's users and keys.
        status, users, _ = self.server.json("GET", "/v1/users?limit=100", None,
                                            bearer(self.a.admin_token))
        self.assertEqual({u["id"] for u in users["data"]},
                         {self.a.signup["user"]["id"], self.a.member["id"]})
        status, keys, _ = self.server.json("GET", "/v1/api-keys?limit=100", None,
                                           bearer(self.a.admin_token))
        self.assertEqual({k["id"] for k in keys["data"]},
                         {self.a.admin_key["id"], self.a.member_key["id"],
                          self.a.worker_key["id"]})

    def test_operator_token_is_not_a_member(self):
        """The operator is not a member of any org: org routes refuse it
        (except those that say MEMBER_OR_OPERATOR), and with it B's ids are
        still not A's."""
        before = self.snapshot(self.b)
        for method, pattern, opid in self.routes:
            if (method, pattern) in self.public or pattern.startswith(("/v1/admin/", "/v1/orgs/")):
                continue
            path = self.b.fill(pattern)
            with self.subTest(route=f"{method} {pattern}"):
                status, body, _ = self.request(method, path, OPERATOR_TOKEN, opid=opid)
                self.assertIn(status, (401, 403, 404), body)
        self.assertUnchanged(before, self.b)

    def test_idempotency_keys_are_per_org(self):
        """B uses an Idempotency-Key on every authenticated POST; A then
        sends the same key and body: A's answer is A's own, never a replay
        of B's. On the routes that take a key (org routes; the operator's
        admin routes are not an org's), B's request must succeed and B's
        retry must be a replay, or the key was never stored and "per org"
        would pass untested."""
        posts = [r for r in self.routes if r[0] == "POST" and (r[0], r[1]) not in self.public]
        self.assertTrue(posts)
        checked = set()
        for method, pattern, opid in posts:
            idem = "isolation-" + uuid.uuid4().hex
            keyed = (method, pattern) in self.idempotent and not pattern.startswith("/v1/admin/")
            with self.subTest(route=pattern):
                b_status, b_body, _ = self.request(method, self.b.fill(pattern),
                                                   self.b.admin_key["key"],
                                                   {"Idempotency-Key": idem}, opid)
                if keyed:
                    self.assertIn(b_status, (200, 201, 202), b_body)
                status, body, r = self.request(method, self.a.fill(pattern),
                                               self.a.admin_key["key"],
                                               {"Idempotency-Key": idem}, opid)
                self.assertLess(status, 500, body)
                self.assertIsNone(r.getheader("Idempotent-Replayed"), body)
                self.assertNoSecrets(body, self.b, f"POST {pattern}")
                if keyed:
                    self.assertIn(status, (200, 201, 202), body)
                    self.assertNotEqual(body, b_body)
                    # B's key was stored: B's retry is B's answer, replayed.
                    st2, body2, r2 = self.request(method, self.b.fill(pattern),
                                                  self.b.admin_key["key"],
                                                  {"Idempotency-Key": idem}, opid)
                    self.assertEqual((st2, body2), (b_status, b_body))
                    self.assertEqual(r2.getheader("Idempotent-Replayed"), "true")
                    checked.add(pattern)
        self.assertTrue({"/v1/credits/spend", "/v1/jobs",
                         "/v1/collections/{collection}/records"} <= checked, checked)

    def assertNoSecrets(self, body, org, where):
        text = json.dumps(body) if body is not None else ""
        for s in org.secrets():
            self.assertNotIn(s, text, f"{where} leaked {s!r} of {org.slug}")


if __name__ == "__main__":
    unittest.main()
