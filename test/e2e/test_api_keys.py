"""API keys end to end: create (shown once, stored hashed), list (never the
key), use as a Bearer credential with the key's role, revoke (stops working
at once), and the documented errors and hostile input."""
import concurrent.futures
import hashlib
import json
import re
import unittest
import uuid

import harness
from test_users import (PASSWORD, SERVER_ENV, bearer, create_key, create_user, list_all, signup,
                        user_with_token)

KEY_RE = re.compile(r"^tdk_([a-z0-9]{8})_[A-Za-z0-9]{43}$")
KEY_FIELDS = {"id", "name", "role", "prefix", "created_at", "last_used_at"}


class ApiKeysTest(harness.DbTestCase):
    server_env = SERVER_ENV

    def setUp(self):
        self.org = signup(self.server)
        self.admin_token = self.org["access_token"]
        self.org_id = self.org["org"]["id"]

    def sql(self, q):
        return self.pg.psql(q, db=self.dbname)

    def call(self, method, path, body=None, token=None):
        return self.server.json(method, path, body, bearer(token or self.admin_token))

    def key_count(self):
        return int(self.sql(f"SELECT count(*) FROM public.api_keys WHERE org_id = '{self.org_id}'")[0])

    def assertProblem(self, status, body, want, code):
        self.assertEqual(status, want, body)
        self.assertEqual(body["code"], code, body)

    def test_create_shows_key_once_and_stores_its_hash(self):
        status, body, r = self.call("POST", "/v1/api-keys", {"name": "CI deploy"})
        self.assertEqual(status, 201, body)
        self.assertEqual(set(body), KEY_FIELDS | {"key"})
        m = KEY_RE.match(body["key"])
        self.assertTrue(m, body["key"])
        self.assertEqual(body["prefix"], m.group(1))
        self.assertEqual(body["role"], "member")
        self.assertEqual(body["name"], "CI deploy")
        self.assertIsNone(body["last_used_at"])
        self.assertEqual(r.getheader("Location"), f"/v1/api-keys/{body['id']}")
        self.assertIn("no-store", r.getheader("Cache-Control", ""))
        row = self.sql(f"SELECT row_to_json(k)::text FROM public.api_keys k WHERE id = '{body['id']}'")
        self.assertEqual(len(row), 1)
        stored = json.loads(row[0])
        self.assertEqual(stored["key_hash"], hashlib.sha256(body["key"].encode()).hexdigest())
        self.assertNotIn(body["key"], row[0])
        self.assertNotIn(body["key"].split("_")[2], row[0])
        # Listed without the key or its hash.
        status, page, _ = self.call("GET", "/v1/api-keys")
        self.assertEqual(status, 200, page)
        listed = [k for k in page["data"] if k["id"] == body["id"]]
        self.assertEqual(len(listed), 1)
        self.assertEqual(set(listed[0]), KEY_FIELDS)
        self.assertNotIn(body["key"], json.dumps(page))
        self.assertNotIn(stored["key_hash"], json.dumps(page))
        self.assertEqual({k: v for k, v in body.items() if k != "key"}, listed[0])

    def test_member_key_reads_but_may_not_manage(self):
        key = create_key(self.server, self.admin_token, role="member")["key"]
        status, body, _ = self.call("GET", "/v1/users", token=key)
        self.assertEqual(status, 200, body)
        self.assertIn(self.org["user"]["id"], [u["id"] for u in body["data"]])
        status, body, _ = self.call("GET", f"/v1/users/{self.org['user']['id']}", token=key)
        self.assertEqual(status, 200, body)
        before_users = self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{self.org_id}'")
        for method, path, req in (
                ("POST", "/v1/users", {"email": "k@example.com", "password": PASSWORD}),
                ("PATCH", f"/v1/users/{self.org['user']['id']}", {"name": "by key"}),
                ("DELETE", f"/v1/users/{self.org['user']['id']}", None),
                ("GET", "/v1/api-keys", None),
                ("POST", "/v1/api-keys", {"name": "escalate", "role": "admin"}),
                ("DELETE", f"/v1/api-keys/{uuid.uuid4()}", None)):
            with self.subTest(route=f"{method} {path}"):
                status, body, _ = self.call(method, path, req, token=key)
                self.assertProblem(status, body, 403, "forbidden")
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{self.org_id}'"),
                         before_users)
        self.assertEqual(self.key_count(), 1)
        # last_used_at is the auth module's to keep; it must be a time or null.
        status, page, _ = self.call("GET", "/v1/api-keys")
        used = page["data"][0]["last_used_at"]
        self.assertTrue(used is None or used.endswith("Z"), used)

    def test_admin_key_manages_users_and_keys(self):
        key = create_key(self.server, self.admin_token, role="admin")["key"]
        user = create_user(self.server, key, f"bykey@{self.org['slug']}.example.com")
        status, body, _ = self.call("PATCH", f"/v1/users/{user['id']}", {"role": "admin"}, token=key)
        self.assertEqual(status, 200, body)
        other = create_key(self.server, key, name="made by a key")
        status, body, _ = self.call("DELETE", f"/v1/api-keys/{other['id']}", token=key)
        self.assertEqual(status, 204, body)
        status, body, _ = self.call("DELETE", f"/v1/users/{user['id']}", token=key)
        self.assertEqual(status, 204, body)

    def test_members_user_token_may_not_manage_keys(self):
        _, mtoken, _ = user_with_token(self.server, self.admin_token, self.org["slug"])
        k = create_key(self.server, self.admin_token)
        for method, path, req in (("GET", "/v1/api-keys", None),
                                  ("POST", "/v1/api-keys", {"name": "x"}),
                                  ("DELETE", f"/v1/api-keys/{k['id']}", None)):
            with self.subTest(route=f"{method} {path}"):
                status, body, _ = self.call(method, path, req, token=mtoken)
                self.assertProblem(status, body, 403, "forbidden")
        self.assertEqual(self.key_count(), 1)

    def test_delete_stops_the_key_at_once(self):
        made = create_key(self.server, self.admin_token, role="admin")
        key = made["key"]
        # Warm the cache with a few uses.
        for _ in range(3):
            status, body, _ = self.call("GET", "/v1/users", token=key)
            self.assertEqual(status, 200, body)
        status, body, r = self.call("DELETE", f"/v1/api-keys/{made['id']}")
        self.assertEqual(status, 204, body)
        self.assertEqual(r.body, b"")
        status, body, _ = self.call("GET", "/v1/users", token=key)
        self.assertProblem(status, body, 401, "unauthorized")
        status, body, _ = self.call("DELETE", f"/v1/api-keys/{made['id']}")
        self.assertProblem(status, body, 404, "not_found")
        status, page, _ = self.call("GET", "/v1/api-keys")
        self.assertNotIn(made["id"], [k["id"] for k in page["data"]])

    def test_key_revoked_while_in_use_by_many_requests(self):
        made = create_key(self.server, self.admin_token)
        key = made["key"]

        def use(_):
            return self.call("GET", "/v1/users", token=key)[0]

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            self.assertEqual(set(ex.map(use, range(16))), {200})
            status, _, _ = self.call("DELETE", f"/v1/api-keys/{made['id']}")
            self.assertEqual(status, 204)
            self.assertEqual(set(ex.map(use, range(16))), {401})

    def test_delete_unknown_or_malformed_is_404(self):
        for bad in (str(uuid.uuid4()), "nope", "0", "%27%20OR%201=1--", "a" * 200):
            with self.subTest(id=bad):
                status, body, _ = self.call("DELETE", f"/v1/api-keys/{bad}")
                self.assertProblem(status, body, 404, "not_found")

    def test_list_pagination(self):
        made = [create_key(self.server, self.admin_token, name=f"k{i}")["id"] for i in range(5)]
        got = [k["id"] for k in list_all(self.server, "/v1/api-keys", self.admin_token, limit=2)]
        self.assertEqual(got, made)
        status, body, _ = self.call("GET", "/v1/api-keys?limit=0")
        self.assertProblem(status, body, 422, "validation_failed")
        status, body, _ = self.call("GET", "/v1/api-keys?cursor=zzz")
        self.assertProblem(status, body, 422, "validation_failed")

    def test_bad_bodies(self):
        for raw in (b"", b"[]", b"{", b'"x"', b'{"name": "a", "name": "b"}'):
            with self.subTest(body=raw):
                r = self.server.request("POST", "/v1/api-keys", raw, bearer(self.admin_token))
                self.assertEqual(r.status, 400, r.body)
        cases = [
            ({}, ["name"]), ({"name": None}, ["name"]), ({"name": ""}, ["name"]),
            ({"name": 5}, ["name"]), ({"name": "x" * 101}, ["name"]), ({"name": " "}, ["name"]),
            ({"name": "ok", "role": "owner"}, ["role"]), ({"name": "ok", "role": 1}, ["role"]),
            ({"name": "ok", "key": "tdk_aaaaaaaa_" + "a" * 43}, ["key"]),
            ({"name": "ok", "prefix": "aaaaaaaa"}, ["prefix"]),
            ({"name": "\x00"}, None), ({"name": "line\nbreak"}, ["name"]),
        ]
        for req, fields in cases:
            with self.subTest(body=req):
                status, body, _ = self.call("POST", "/v1/api-keys", req)
                if fields is None:
                    self.assertIn(status, (400, 422), body)
                else:
                    self.assertProblem(status, body, 422, "validation_failed")
                    self.assertEqual(sorted(e["field"] for e in body["errors"]), sorted(fields))
        status, body, _ = self.call("POST", "/v1/api-keys", {"name": "n" * (1 << 20)})
        self.assertProblem(status, body, 413, "payload_too_large")
        self.assertEqual(self.key_count(), 0)
        # SQL-looking and unicode names are just names.
        for name in ("x'); DELETE FROM api_keys; --", "🔑 déploiement"):
            k = create_key(self.server, self.admin_token, name=name)
            self.assertEqual(k["name"], name)
        self.assertEqual(self.key_count(), 2)

    def test_malformed_and_forged_keys_are_401(self):
        real = create_key(self.server, self.admin_token)["key"]
        prefix = real[4:12]
        forged = [
            real[:-1] + ("A" if real[-1] != "A" else "B"),  # right prefix, wrong secret
            real + "x", real[:-1], "tdk_", "tdk_" + prefix, "TDK" + real[3:],
            f"tdk_{prefix}_" + "A" * 43, "tdk_zzzzzzzz_" + "A" * 43,
        ]
        for k in forged:
            with self.subTest(key=k):
                status, body, _ = self.call("GET", "/v1/users", token=k)
                self.assertProblem(status, body, 401, "unauthorized")
        status, _, _ = self.call("GET", "/v1/users", token=real)
        self.assertEqual(status, 200)

    def test_key_outlives_the_admin_who_made_it(self):
        """A key belongs to the org, not to the admin who made it: deleting
        that admin leaves the key valid."""
        second = create_user(self.server, self.admin_token, f"a2@{self.org['slug']}.example.com",
                             role="admin")
        key = create_key(self.server, self.admin_token, role="admin")["key"]
        status, _, _ = self.call("DELETE", f"/v1/users/{self.org['user']['id']}", token=key)
        self.assertEqual(status, 204)
        status, body, _ = self.call("GET", f"/v1/users/{second['id']}", token=key)
        self.assertEqual(status, 200, body)


if __name__ == "__main__":
    unittest.main()
