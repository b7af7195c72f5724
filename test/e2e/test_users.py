"""Users of an org end to end: /v1/users list/create/get/update/delete,
their documented errors, roles, the last-admin rule (also under concurrent
demotions and deletions), and hostile input that must create nothing.

The helpers at the top (signup, login, bearer, ...) are shared with
test_api_keys.py and test_isolation.py."""
import base64
import concurrent.futures
import json
import subprocess
import time
import unittest
import uuid

import harness

PASSWORD = "correct horse battery"
# Lists in the database that a failed request must leave alone.
SERVER_ENV = {"TENANTD_LOGIN_LIMIT": "0"}


def bearer(token, **extra):
    h = {"Authorization": f"Bearer {token}"}
    h.update(extra)
    return h


def new_slug(prefix="o"):
    return prefix + uuid.uuid4().hex[:12]


def signup(server, slug=None, email=None, password=PASSWORD):
    """Creates an org through POST /v1/orgs; returns its answer plus `slug`,
    `email` and `password` for convenience."""
    slug = slug or new_slug()
    email = email or f"admin@{slug}.example.com"
    status, body, _ = server.json("POST", "/v1/orgs", {
        "name": f"Org {slug}", "slug": slug,
        "admin": {"email": email, "password": password, "name": "First Admin"}})
    if status != 201:
        raise AssertionError(f"signup failed: {status} {body}")
    body.update(slug=slug, email=email, password=password)
    return body


def login(server, email, password=PASSWORD, org=None):
    """POST /v1/auth/login; returns the answer (tokens, user, org)."""
    req = {"email": email, "password": password}
    if org:
        req["org"] = org
    status, body, _ = server.json("POST", "/v1/auth/login", req)
    if status != 200:
        raise AssertionError(f"login failed: {status} {body}")
    return body


def create_user(server, token, email, role="member", name=None, password=PASSWORD):
    req = {"email": email, "password": password, "role": role}
    if name is not None:
        req["name"] = name
    status, body, _ = server.json("POST", "/v1/users", req, bearer(token))
    if status != 201:
        raise AssertionError(f"create user failed: {status} {body}")
    return body


def user_with_token(server, admin_token, slug, role="member"):
    """A new user of the org and a fresh access token of theirs."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@{slug}.example.com"
    user = create_user(server, admin_token, email, role=role)
    tokens = login(server, email, org=slug)
    return user, tokens["access_token"], tokens


def create_key(server, token, name="key", role="member"):
    status, body, _ = server.json("POST", "/v1/api-keys", {"name": name, "role": role},
                                  bearer(token))
    if status != 201:
        raise AssertionError(f"create key failed: {status} {body}")
    return body


def list_all(server, path, token, limit=100):
    """Every item of a list route, following next_cursor."""
    items, cursor = [], None
    for _ in range(1000):
        q = f"{path}?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, body, _ = server.json("GET", q, None, bearer(token))
        if status != 200:
            raise AssertionError(f"{q}: {status} {body}")
        items += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("next_cursor never ended")


USER_FIELDS = {"id", "email", "name", "role", "avatar_url", "email_verified_at", "identities",
               "created_at", "updated_at"}


class UsersTestBase(harness.DbTestCase):
    server_env = SERVER_ENV

    def setUp(self):
        self.org = signup(self.server)
        self.admin_token = self.org["access_token"]
        self.org_id = self.org["org"]["id"]

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def user_count(self):
        return int(self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{self.org_id}'")[0])

    def call(self, method, path, body=None, token=None, headers=None):
        h = bearer(token or self.admin_token)
        h.update(headers or {})
        return self.server.json(method, path, body, h)

    def assertProblem(self, status, body, want, code=None):
        self.assertEqual(status, want, body)
        self.assertEqual(body["status"], want)
        if code:
            self.assertEqual(body["code"], code, body)

    def assertFieldErrors(self, status, body, fields):
        self.assertProblem(status, body, 422, "validation_failed")
        self.assertEqual(sorted({e["field"] for e in body["errors"]}), sorted(fields), body)


class UsersCrudTest(UsersTestBase):

    def test_create_get_and_login(self):
        email = f"New.Person@{self.org['slug']}.Example.com"
        status, body, r = self.call("POST", "/v1/users",
                                    {"email": email, "password": PASSWORD, "name": "Ada"})
        self.assertEqual(status, 201, body)
        self.assertEqual(set(body), USER_FIELDS)
        self.assertEqual(body["email"], email.lower())
        self.assertEqual(body["role"], "member")
        self.assertEqual(body["name"], "Ada")
        self.assertIsNone(body["avatar_url"])
        self.assertTrue(body["created_at"].endswith("Z"))
        self.assertEqual(r.getheader("Location"), f"/v1/users/{body['id']}")
        self.assertNotIn(PASSWORD, json.dumps(body))
        # Stored as an argon2id hash, never in clear.
        h = self.sql(f"SELECT password_hash FROM public.users WHERE id = '{body['id']}'")[0]
        self.assertTrue(h.startswith("$argon2id$"), h)

        status, got, _ = self.call("GET", f"/v1/users/{body['id']}")
        self.assertEqual((status, got), (200, body))
        # Upper-case UUIDs name the same user.
        status, got, _ = self.call("GET", f"/v1/users/{body['id'].upper()}")
        self.assertEqual((status, got), (200, body))

        # The new user can log in (any case of the email) and read users.
        tokens = login(self.server, email.upper(), org=self.org["slug"])
        status, me, _ = self.call("GET", f"/v1/users/{body['id']}", token=tokens["access_token"])
        self.assertEqual(status, 200, me)

    def test_create_admin_and_optional_fields(self):
        status, body, _ = self.call("POST", "/v1/users", {
            "email": f"boss@{self.org['slug']}.example.com", "password": PASSWORD,
            "role": "admin", "name": None})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["role"], "admin")
        self.assertIsNone(body["name"])

    def test_duplicate_email_is_409_case_insensitive(self):
        email = f"dup@{self.org['slug']}.example.com"
        create_user(self.server, self.admin_token, email)
        before = self.user_count()
        for e in (email, email.upper()):
            status, body, _ = self.call("POST", "/v1/users", {"email": e, "password": PASSWORD})
            self.assertProblem(status, body, 409, "email_taken")
        # The admin's own email too.
        status, body, _ = self.call("POST", "/v1/users",
                                    {"email": self.org["email"], "password": PASSWORD})
        self.assertProblem(status, body, 409, "email_taken")
        self.assertEqual(self.user_count(), before)

    def test_same_email_in_two_orgs_is_fine(self):
        other = signup(self.server)
        email = f"shared@{uuid.uuid4().hex[:6]}.example.com"
        a = create_user(self.server, self.admin_token, email)
        b = create_user(self.server, other["access_token"], email)
        self.assertNotEqual(a["id"], b["id"])

    def test_get_unknown_and_malformed_ids_are_404(self):
        for bad in (str(uuid.uuid4()), "not-a-uuid", "1", "' OR 1=1 --",
                    "00000000-0000-0000-0000-00000000000g", "%00", "a" * 300,
                    str(uuid.uuid4()) + "0", "{" + str(uuid.uuid4()) + "}"):
            with self.subTest(id=bad):
                path = "/v1/users/" + bad.replace(" ", "%20").replace("'", "%27")
                status, body, _ = self.call("GET", path)
                self.assertProblem(status, body, 404, "not_found")
                status, body, _ = self.call("PATCH", path, {"name": "x"})
                self.assertProblem(status, body, 404, "not_found")
                status, body, _ = self.call("DELETE", path)
                self.assertProblem(status, body, 404, "not_found")

    def test_member_may_read_but_not_create(self):
        member, mtoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"])
        status, body, _ = self.call("GET", "/v1/users", token=mtoken)
        self.assertEqual(status, 200, body)
        self.assertIn(member["id"], [u["id"] for u in body["data"]])
        status, body, _ = self.call("GET", f"/v1/users/{member['id']}", token=mtoken)
        self.assertEqual(status, 200, body)
        before = self.user_count()
        status, body, _ = self.call("POST", "/v1/users",
                                    {"email": "x@example.com", "password": PASSWORD}, token=mtoken)
        self.assertProblem(status, body, 403, "forbidden")
        status, body, _ = self.call("DELETE", f"/v1/users/{member['id']}", token=mtoken)
        self.assertProblem(status, body, 403, "forbidden")
        self.assertEqual(self.user_count(), before)

    def test_no_credential_is_401(self):
        for method, path in (("GET", "/v1/users"), ("POST", "/v1/users"),
                             ("GET", f"/v1/users/{uuid.uuid4()}"),
                             ("PATCH", f"/v1/users/{uuid.uuid4()}"),
                             ("DELETE", f"/v1/users/{uuid.uuid4()}")):
            with self.subTest(route=f"{method} {path}"):
                status, body, _ = self.server.json(method, path, {})
                self.assertProblem(status, body, 401, "unauthorized")
                status, body, _ = self.server.json(method, path, {}, bearer("garbage"))
                self.assertProblem(status, body, 401, "unauthorized")


class UsersListTest(UsersTestBase):

    def test_pagination_is_complete_ordered_and_stable(self):
        made = [create_user(self.server, self.admin_token,
                            f"p{i}@{self.org['slug']}.example.com")["id"] for i in range(5)]
        status, first, _ = self.call("GET", "/v1/users?limit=2")
        self.assertEqual(status, 200, first)
        self.assertEqual(set(first), {"data", "next_cursor"})
        self.assertEqual(len(first["data"]), 2)
        self.assertIsInstance(first["next_cursor"], str)
        for u in first["data"]:
            self.assertEqual(set(u), USER_FIELDS)
        # A user added while paging shows up at the end, nothing repeats.
        late = create_user(self.server, self.admin_token,
                           f"late@{self.org['slug']}.example.com")["id"]
        seen = [u["id"] for u in first["data"]]
        cursor = first["next_cursor"]
        while cursor:
            status, page, _ = self.call("GET", f"/v1/users?limit=2&cursor={cursor}")
            self.assertEqual(status, 200, page)
            self.assertLessEqual(len(page["data"]), 2)
            seen += [u["id"] for u in page["data"]]
            cursor = page["next_cursor"]
        self.assertEqual(len(seen), len(set(seen)), "a user was listed twice")
        self.assertEqual(seen, [self.org["user"]["id"]] + made + [late])
        self.assertEqual(len(seen), self.user_count())
        # Default page size 20; an exact final page has no cursor.
        status, all_, _ = self.call("GET", "/v1/users")
        self.assertEqual([u["id"] for u in all_["data"]], seen)
        self.assertIsNone(all_["next_cursor"])
        status, exact, _ = self.call("GET", f"/v1/users?limit={len(seen)}")
        self.assertIsNone(exact["next_cursor"])

    def test_bad_limit_and_cursor_are_422(self):
        good_ts = "2026-01-02T03:04:05.123456Z|" + str(uuid.uuid4())
        bad_cursors = [
            "x", "%00", base64.urlsafe_b64encode(b"2026|x").decode().rstrip("="),
            base64.urlsafe_b64encode(good_ts.encode()).decode(),  # padded: not ours
            base64.urlsafe_b64encode(good_ts.replace("-01-", "-13-").encode()).decode().rstrip("="),
            base64.urlsafe_b64encode(good_ts.replace("|", "'").encode()).decode().rstrip("="),
            "' OR 1=1 --".replace(" ", "%20"),
        ]
        for q in ["limit=0", "limit=101", "limit=-1", "limit=abc", "limit=", "limit=1.5",
                  "limit=99999999999999999999", "limit=%2B5", "limit=%205", "limit=05"] + \
                 [f"cursor={c}" for c in bad_cursors]:
            with self.subTest(q=q):
                status, body, _ = self.call("GET", f"/v1/users?{q}")
                self.assertProblem(status, body, 422, "validation_failed")
                self.assertIn(body["errors"][0]["field"], ("limit", "cursor"))
        status, body, _ = self.call("GET", "/v1/users?limit=100")
        self.assertEqual(status, 200, body)
        # A well-formed cursor past the end is an empty last page.
        far = base64.urlsafe_b64encode(
            ("2999-01-02T03:04:05.123456Z|" + str(uuid.uuid4())).encode()).decode().rstrip("=")
        status, body, _ = self.call("GET", f"/v1/users?cursor={far}")
        self.assertEqual((status, body), (200, {"data": [], "next_cursor": None}))


class UsersUpdateTest(UsersTestBase):

    def test_admin_updates_every_field(self):
        user = create_user(self.server, self.admin_token, f"u@{self.org['slug']}.example.com")
        status, body, _ = self.call("PATCH", f"/v1/users/{user['id']}", {
            "name": "Grace Hopper", "email": f"GRACE@{self.org['slug']}.example.com",
            "role": "admin", "avatar_url": "https://img.example.com/g.png"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["name"], "Grace Hopper")
        self.assertEqual(body["email"], f"grace@{self.org['slug']}.example.com")
        self.assertEqual(body["role"], "admin")
        self.assertEqual(body["avatar_url"], "https://img.example.com/g.png")
        self.assertEqual(body["created_at"], user["created_at"])
        self.assertGreaterEqual(body["updated_at"], user["updated_at"])
        # Absent fields stay; null clears the nullable ones.
        status, body2, _ = self.call("PATCH", f"/v1/users/{user['id']}",
                                     {"name": None, "avatar_url": None})
        self.assertEqual(status, 200, body2)
        self.assertIsNone(body2["name"])
        self.assertIsNone(body2["avatar_url"])
        self.assertEqual(body2["email"], body["email"])
        self.assertEqual(body2["role"], "admin")
        # An empty patch changes nothing.
        status, body3, _ = self.call("PATCH", f"/v1/users/{user['id']}", {})
        self.assertEqual(status, 200, body3)
        self.assertEqual({k: v for k, v in body3.items() if k != "updated_at"},
                         {k: v for k, v in body2.items() if k != "updated_at"})

    def test_member_updates_self_only_and_never_role(self):
        me, mtoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"])
        other = create_user(self.server, self.admin_token, f"o@{self.org['slug']}.example.com")
        status, body, _ = self.call("PATCH", f"/v1/users/{me['id']}",
                                    {"name": "Me", "avatar_url": "http://a.example.com/x"},
                                    token=mtoken)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["name"], "Me")
        for patch in ({"role": "admin"}, {"role": "member"}, {"name": "x", "role": "admin"}):
            status, body, _ = self.call("PATCH", f"/v1/users/{me['id']}", patch, token=mtoken)
            self.assertProblem(status, body, 403, "forbidden")
        status, body, _ = self.call("PATCH", f"/v1/users/{other['id']}", {"name": "Hacked"},
                                    token=mtoken)
        self.assertProblem(status, body, 403, "forbidden")
        rows = self.sql(f"SELECT role, coalesce(name, '') FROM public.users "
                        f"WHERE id IN ('{me['id']}', '{other['id']}') ORDER BY email")
        self.assertEqual(sorted(rows), sorted(["member|Me", "member|"]))

    def test_email_taken_is_409(self):
        a = create_user(self.server, self.admin_token, f"a@{self.org['slug']}.example.com")
        b = create_user(self.server, self.admin_token, f"b@{self.org['slug']}.example.com")
        status, body, _ = self.call("PATCH", f"/v1/users/{b['id']}", {"email": a["email"].upper()})
        self.assertProblem(status, body, 409, "email_taken")
        status, got, _ = self.call("GET", f"/v1/users/{b['id']}")
        self.assertEqual(got["email"], b["email"])
        # Setting one's own email again is not a conflict.
        status, body, _ = self.call("PATCH", f"/v1/users/{b['id']}", {"email": b["email"]})
        self.assertEqual(status, 200, body)

    def test_email_change_revokes_refresh_tokens(self):
        me, mtoken, tokens = user_with_token(self.server, self.admin_token, self.org["slug"])
        # A name change keeps the refresh token working.
        status, body, _ = self.call("PATCH", f"/v1/users/{me['id']}", {"name": "N"}, token=mtoken)
        self.assertEqual(status, 200, body)
        status, fresh, _ = self.server.json("POST", "/v1/auth/refresh",
                                            {"refresh_token": tokens["refresh_token"]})
        self.assertEqual(status, 200, fresh)
        status, body, _ = self.call("PATCH", f"/v1/users/{me['id']}",
                                    {"email": f"moved@{self.org['slug']}.example.com"},
                                    token=mtoken)
        self.assertEqual(status, 200, body)
        status, body, _ = self.server.json("POST", "/v1/auth/refresh",
                                           {"refresh_token": fresh["refresh_token"]})
        self.assertProblem(status, body, 401, "unauthorized")
        live = self.sql(f"SELECT count(*) FROM public.refresh_tokens WHERE user_id = '{me['id']}' "
                        "AND revoked_at IS NULL AND used_at IS NULL")
        self.assertEqual(live, ["0"])
        # The new email logs in.
        login(self.server, f"moved@{self.org['slug']}.example.com", org=self.org["slug"])

    def test_role_change_applies_to_the_next_request(self):
        boss, btoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"],
                                          role="admin")
        # As admin: may create users.
        status, body, _ = self.call("GET", "/v1/api-keys", token=btoken)
        self.assertEqual(status, 200, body)
        status, body, _ = self.call("PATCH", f"/v1/users/{boss['id']}", {"role": "member"})
        self.assertEqual(status, 200, body)
        # The same, unexpired token is now a member's.
        status, body, _ = self.call("GET", "/v1/api-keys", token=btoken)
        self.assertProblem(status, body, 403, "forbidden")
        status, body, _ = self.call("PATCH", f"/v1/users/{boss['id']}", {"role": "admin"})
        self.assertEqual(status, 200, body)
        status, body, _ = self.call("GET", "/v1/api-keys", token=btoken)
        self.assertEqual(status, 200, body)

    def test_last_admin_cannot_be_demoted(self):
        me = self.org["user"]["id"]
        status, body, _ = self.call("PATCH", f"/v1/users/{me}", {"role": "member"})
        self.assertProblem(status, body, 409, "last_admin")
        # Keeping the role, or changing other fields, is fine.
        status, body, _ = self.call("PATCH", f"/v1/users/{me}", {"role": "admin", "name": "Still"})
        self.assertEqual(status, 200, body)
        # With a second admin, the first may step down; then the second is last.
        second, stoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"],
                                            role="admin")
        status, body, _ = self.call("PATCH", f"/v1/users/{me}", {"role": "member"})
        self.assertEqual(status, 200, body)
        status, body, _ = self.call("PATCH", f"/v1/users/{second['id']}", {"role": "member"},
                                    token=stoken)
        self.assertProblem(status, body, 409, "last_admin")
        self.assertEqual(self._admins(), 1)

    def _admins(self):
        return int(self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{self.org_id}' "
                            "AND role = 'admin'")[0])


class UsersDeleteTest(UsersTestBase):

    def test_delete_revokes_at_once(self):
        victim, vtoken, tokens = user_with_token(self.server, self.admin_token, self.org["slug"])
        status, body, _ = self.call("GET", "/v1/users", token=vtoken)
        self.assertEqual(status, 200, body)  # cached now
        status, body, r = self.call("DELETE", f"/v1/users/{victim['id']}")
        self.assertEqual(status, 204, body)
        self.assertEqual(r.body, b"")
        status, body, _ = self.call("GET", "/v1/users", token=vtoken)
        self.assertProblem(status, body, 401, "unauthorized")
        status, body, _ = self.server.json("POST", "/v1/auth/refresh",
                                           {"refresh_token": tokens["refresh_token"]})
        self.assertProblem(status, body, 401, "unauthorized")
        status, body, _ = self.call("GET", f"/v1/users/{victim['id']}")
        self.assertProblem(status, body, 404, "not_found")
        status, body, _ = self.call("DELETE", f"/v1/users/{victim['id']}")
        self.assertProblem(status, body, 404, "not_found")
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.refresh_tokens "
                                  f"WHERE user_id = '{victim['id']}'"), ["0"])

    def test_last_admin_cannot_be_deleted(self):
        me = self.org["user"]["id"]
        status, body, _ = self.call("DELETE", f"/v1/users/{me}")
        self.assertProblem(status, body, 409, "last_admin")
        # An admin key cannot delete the last admin either.
        key = create_key(self.server, self.admin_token, role="admin")
        status, body, _ = self.call("DELETE", f"/v1/users/{me}", token=key["key"])
        self.assertProblem(status, body, 409, "last_admin")
        # Once another admin exists, the first may go (even by itself).
        create_user(self.server, self.admin_token, f"n@{self.org['slug']}.example.com",
                    role="admin")
        status, body, _ = self.call("DELETE", f"/v1/users/{me}")
        self.assertEqual(status, 204, body)
        status, body, _ = self.call("GET", "/v1/users")
        self.assertProblem(status, body, 401, "unauthorized")


class UsersRaceTest(UsersTestBase):
    """The last-admin rule under real concurrency. Two requests that could
    each pass alone are made to overlap inside PostgreSQL: an outside
    transaction holds the org's user rows locked while both arrive (on two
    connections: pipelining off), then lets go; both statements were
    planned against a snapshot with two admins. Exactly one may pass."""
    server_env = dict(SERVER_ENV, TENANTD_DB_PIPELINE_DEPTH="1", TENANTD_DB_POOL_SIZE="4")

    def race(self, ops):
        org = signup(self.server)
        org_id = org["org"]["id"]
        # An admin key acts for both sides: a user token of a just demoted
        # admin would (rightly) get 403 instead of 409.
        key = create_key(self.server, org["access_token"], role="admin")["key"]
        second = create_user(self.server, key, f"s@{org['slug']}.example.com", role="admin")
        ids = [org["user"]["id"], second["id"]]
        self.call("GET", "/v1/users", token=key)  # the key is cached: auth needs no query
        # The holder keeps its transaction open until told (stdin), so no
        # fixed duration has to outlast a slow machine.
        holder = subprocess.Popen(
            [harness.PSQL, self.db_url, "-qAt", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        app = "users-race-" + uuid.uuid4().hex[:12]
        holder.stdin.write(f"SET application_name = '{app}';\nBEGIN;\n"
                           f"SELECT id FROM public.users WHERE org_id = '{org_id}' FOR UPDATE;\n")
        holder.stdin.flush()

        def poll(cond, msg):
            deadline = time.time() + 30
            while not cond():
                self.assertIsNone(holder.poll(), "the lock holder ended early")
                self.assertLess(time.time(), deadline, msg)
                time.sleep(0.02)

        try:
            # Locked: the holder sits idle in its transaction after the SELECT.
            poll(lambda: self.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                  f"'{app}' AND state = 'idle in transaction' "
                                  "AND query LIKE '%FOR UPDATE%'") == ["1"],
                 "the lock holder never took its locks")
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                futs = [ex.submit(self.server.json, m, p.format(*ids), b, bearer(key))
                        for m, p, b in ops]
                # Both are waiting on the holder's locks before it lets go.
                poll(lambda: self.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND application_name = 'tenantd'") == ["2"],
                    "the two requests did not both wait on the holder's locks")
                holder.stdin.write("COMMIT;\n")
                holder.stdin.close()
                res = [f.result()[0] for f in futs]
        finally:
            if not holder.stdin.closed:
                holder.stdin.close()
            holder.wait(30)
            err = holder.stderr.read()
            holder.stderr.close()
        self.assertEqual(holder.returncode, 0, err)
        n = self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{org_id}' "
                     "AND role = 'admin'")
        return sorted(res), n

    def test_two_admins_demote_each_other(self):
        res, n = self.race([("PATCH", "/v1/users/{0}", {"role": "member"}),
                            ("PATCH", "/v1/users/{1}", {"role": "member"})])
        self.assertEqual(res, [200, 409])
        self.assertEqual(n, ["1"])

    def test_demotion_and_deletion(self):
        res, n = self.race([("PATCH", "/v1/users/{0}", {"role": "member"}),
                            ("DELETE", "/v1/users/{1}", None)])
        self.assertIn(res, ([200, 409], [204, 409]))
        self.assertEqual(n, ["1"])

    def test_two_deletions(self):
        res, n = self.race([("DELETE", "/v1/users/{0}", None),
                            ("DELETE", "/v1/users/{1}", None)])
        self.assertEqual(res, [204, 409])
        self.assertEqual(n, ["1"])


class UsersBusyTest(UsersTestBase):
    """A saturated password pool answers 503 with Retry-After at once,
    and a refused request creates nothing."""
    server_env = dict(SERVER_ENV, TENANTD_HASH_THREADS="1", TENANTD_HASH_QUEUE="1",
                      TENANTD_ARGON2_T="6")

    def test_full_hash_queue_is_503(self):
        slug = self.org["slug"]
        before = self.user_count()

        def create(i):
            return self.server.request("POST", "/v1/users",
                                       {"email": f"busy{i}@{slug}.example.com",
                                        "password": PASSWORD}, bearer(self.admin_token))

        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            answers = list(ex.map(create, range(12)))
        statuses = [r.status for r in answers]
        self.assertLessEqual(set(statuses), {201, 503}, statuses)
        self.assertIn(503, statuses)
        self.assertIn(201, statuses)
        for r in answers:
            if r.status == 503:
                self.assertEqual(r.getheader("Retry-After"), "1")
                self.assertEqual(json.loads(r.body)["code"], "unavailable")
        self.assertEqual(self.user_count(), before + statuses.count(201))


class CrossInstanceTest(UsersTestBase):
    """Two tenantd processes on one database, as behind a load balancer: a
    change made through one takes effect on the other without waiting for
    any TTL (the database triggers' NOTIFY reaches its cache)."""
    # One signing key for both, or neither accepts the other's tokens.
    server_env = dict(SERVER_ENV, TENANTD_JWT_SECRET="cross-instance-" + uuid.uuid4().hex * 2)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.other = harness.Server(cls.db_url, env=cls.server_env, args=("serve",)).start()

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.other.stop()
            if rc != 0:
                raise AssertionError(f"second tenantd exited with {rc}:\n{cls.other.log()}")
        finally:
            super().tearDownClass()

    def status_on_other(self, path, token):
        return self.other.json("GET", path, None, bearer(token))[0]

    def until(self, path, token, want, timeout=3.0):
        """Polls the other instance until it answers `want`; returns seconds."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.status_on_other(path, token) == want:
                return time.monotonic() - start
            time.sleep(0.02)
        self.fail(f"the other instance never answered {want} for {path}")

    def test_delete_demote_and_revoke_reach_the_other_instance(self):
        victim, vtoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"])
        boss, btoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"],
                                          role="admin")
        key = create_key(self.server, self.admin_token)
        # Warm the other instance's cache with every credential.
        self.assertEqual(self.status_on_other("/v1/users", vtoken), 200)
        self.assertEqual(self.status_on_other("/v1/api-keys", btoken), 200)
        self.assertEqual(self.status_on_other("/v1/users", key["key"]), 200)

        status, _, _ = self.call("DELETE", f"/v1/users/{victim['id']}")
        self.assertEqual(status, 204)
        self.until("/v1/users", vtoken, 401)

        status, _, _ = self.call("PATCH", f"/v1/users/{boss['id']}", {"role": "member"})
        self.assertEqual(status, 200)
        self.until("/v1/api-keys", btoken, 403)

        status, _, _ = self.call("DELETE", f"/v1/api-keys/{key['id']}")
        self.assertEqual(status, 204)
        self.until("/v1/users", key["key"], 401)


class UsersHostileInputTest(UsersTestBase):

    def _post(self, body, raw=False):
        before = self.user_count()
        if raw:
            r = self.server.request("POST", "/v1/users", body,
                                    bearer(self.admin_token, **{"Content-Type": "application/json"}))
            status, parsed = r.status, json.loads(r.body)
        else:
            status, parsed, _ = self.call("POST", "/v1/users", body)
        self.assertEqual(self.user_count(), before, f"something was created by {body!r:.200}")
        return status, parsed

    def test_not_json_or_not_an_object_is_400(self):
        for raw in ("", "not json", "{", '{"email": "a@b.co",}', "[]", '"str"', "42", "null",
                    '{"email": "a@b.co", "email": "c@d.co", "password": "xxxxxxxxx"}',
                    "\xff\xfe{}"):
            with self.subTest(body=raw):
                status, body = self._post(raw.encode("latin-1"), raw=True)
                self.assertProblem(status, body, 400, "bad_request")

    def test_missing_and_wrongly_typed_fields_are_422(self):
        slug = self.org["slug"]
        cases = [
            ({}, ["email", "password"]),
            ({"email": f"a@{slug}.example.com"}, ["password"]),
            ({"password": PASSWORD}, ["email"]),
            ({"email": 42, "password": PASSWORD}, ["email"]),
            ({"email": [f"a@{slug}.example.com"], "password": PASSWORD}, ["email"]),
            ({"email": f"a@{slug}.example.com", "password": 12345678}, ["password"]),
            ({"email": f"a@{slug}.example.com", "password": None}, ["password"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "role": "owner"}, ["role"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "role": "ADMIN"}, ["role"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "role": None}, ["role"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "name": 7}, ["name"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "name": ""}, ["name"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "name": "   "}, ["name"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "name": {"x": 1}}, ["name"]),
            ({"email": f"a@{slug}.example.com", "password": "short"}, ["password"]),
            ({"email": f"a@{slug}.example.com", "password": "p" * 1025}, ["password"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "is_admin": True},
             ["is_admin"]),
            ({"email": "a\u0000@b.co", "password": "pass\u0000word"}, ["email", "password"]),
            ({"email": f"a@{slug}.example.com", "password": PASSWORD, "name": "a\u0000"},
             ["name"]),
            ({"email": True, "password": False, "role": 1, "name": []},
             ["email", "password", "role", "name"]),
        ]
        for req, fields in cases:
            with self.subTest(body=req):
                status, body = self._post(req)
                self.assertFieldErrors(status, body, fields)

    def test_bad_emails_are_422(self):
        for email in ("plain", "@example.com", "a@", "a@b", "a@@b.co", "a b@c.co", "a@b .co",
                      ".a@b.co", "a.@b.co", "a..b@c.co", "a@-b.co", "a@b-.co", "a@b..co",
                      "a@.b.co", "\"quoted\"@b.co", "a@[127.0.0.1]", "a\n@b.co", "a@b.co\n",
                      "x'; DROP TABLE users; --@evil.co", "a@b.co; DROP TABLE users",
                      "ünï@cödé.com", "a@b.c\u0000om", "x" * 65 + "@b.co",
                      "a@" + "b" * 64 + ".co", "a@" + ("b" * 63 + ".") * 4 + "co", ""):
            with self.subTest(email=email):
                status, body = self._post({"email": email, "password": PASSWORD})
                self.assertFieldErrors(status, body, ["email"])
        self.assertEqual(self.sql("SELECT to_regclass('public.users') IS NOT NULL"), ["t"])

    def test_sql_looking_but_valid_values_are_stored_verbatim(self):
        email = f"o'brien+--@{self.org['slug']}.example.com"
        name = "Robert'); DROP TABLE users;--"
        status, body, _ = self.call("POST", "/v1/users",
                                    {"email": email, "password": "' OR '1'='1' --", "name": name})
        self.assertEqual(status, 201, body)
        self.assertEqual((body["email"], body["name"]), (email, name))
        rows = self.sql(f"SELECT name FROM public.users WHERE id = '{body['id']}'")
        self.assertEqual(rows, [name])
        self.assertEqual(self.sql("SELECT to_regclass('public.users') IS NOT NULL"), ["t"])
        login(self.server, email, "' OR '1'='1' --", org=self.org["slug"])

    def test_unicode_names(self):
        for name in ("Zoë Ñúñez", "李小龍", "🦀" * 100, "e\u0301" * 50, "ÄÖÜ" * 33 + "ß"):
            with self.subTest(name=name):
                u = create_user(self.server, self.admin_token,
                                f"{uuid.uuid4().hex[:8]}@{self.org['slug']}.example.com", name=name)
                self.assertEqual(u["name"], name)
                got = self.call("GET", f"/v1/users/{u['id']}")[1]
                self.assertEqual(got["name"], name)
        for name in ("🦀" * 101, "a" * 101, "tab\there", "nl\n", "del\x7f", "c1\u0085"):
            with self.subTest(name=name):
                status, body = self._post({"email": f"z@{self.org['slug']}.example.com",
                                           "password": PASSWORD, "name": name})
                self.assertFieldErrors(status, body, ["name"])

    def test_huge_bodies(self):
        # Over the 1 MiB body limit: 413 from the server.
        status, body = self._post({"email": f"h@{self.org['slug']}.example.com",
                                   "password": PASSWORD, "name": "n" * (1 << 20)})
        self.assertProblem(status, body, 413, "payload_too_large")
        # Under it but far over the field limits: 422.
        status, body = self._post({"email": "e" * 200000 + "@x.co", "password": "p" * 300000,
                                   "name": "n" * 400000})
        self.assertFieldErrors(status, body, ["email", "password", "name"])

    def test_hostile_patches_change_nothing(self):
        user = create_user(self.server, self.admin_token, f"t@{self.org['slug']}.example.com",
                           name="Before")
        before = self.sql(f"SELECT row_to_json(u)::text FROM public.users u "
                          f"WHERE id = '{user['id']}'")
        cases = [
            ({"name": ""}, ["name"]), ({"name": "  "}, ["name"]), ({"name": 5}, ["name"]),
            ({"email": None}, ["email"]),
            ({"email": "x'--"}, ["email"]), ({"role": "root"}, ["role"]),
            ({"avatar_url": "javascript:alert(1)"}, ["avatar_url"]),
            ({"avatar_url": "ftp://x.example.com/a"}, ["avatar_url"]),
            ({"avatar_url": "https://x.example.com/" + "a" * 2100}, ["avatar_url"]),
            ({"avatar_url": "https:// spaced.example.com"}, ["avatar_url"]),
            ({"avatar_url": 3}, ["avatar_url"]), ({"password": PASSWORD}, ["password"]),
            ({"name": "ok", "org_id": str(uuid.uuid4())}, ["org_id"]),
            ({"id": str(uuid.uuid4())}, ["id"]),
        ]
        for req, fields in cases:
            with self.subTest(body=req):
                status, body, _ = self.call("PATCH", f"/v1/users/{user['id']}", req)
                self.assertFieldErrors(status, body, fields)
        # Unknown fields are reported, but the answer does not balloon.
        many = {f"f{i}" + "x" * 1000: 1 for i in range(500)}
        status, body, r = self.call("PATCH", f"/v1/users/{user['id']}", many)
        self.assertProblem(status, body, 422, "validation_failed")
        self.assertLess(len(r.body), 2000)
        for raw in (b"[]", b"nope", b'{"name": "a", "name": "b"}', b""):
            with self.subTest(body=raw):
                r = self.server.request("PATCH", f"/v1/users/{user['id']}", raw,
                                        bearer(self.admin_token))
                self.assertEqual(r.status, 400, r.body)
        after = self.sql(f"SELECT row_to_json(u)::text FROM public.users u "
                         f"WHERE id = '{user['id']}'")
        self.assertEqual(before, after)


if __name__ == "__main__":
    unittest.main()
