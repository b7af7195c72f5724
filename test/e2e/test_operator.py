"""The operator's routes end to end: listing every org with its balance
(cursor pagination), suspend/unsuspend, delete, reading any org by slug, and
the operator credential itself (wrong or absent token, routes disabled when
TENANTD_OPERATOR_TOKEN is unset)."""
import base64
import time
import unittest
import uuid

import harness
from test_orgs import FAST_ARGON2, PASSWORD, OrgTestCase, bearer, unique

OPERATOR = "op-" + uuid.uuid4().hex + uuid.uuid4().hex

# Every operator route, with a slug placeholder.
ROUTES = [("GET", "/v1/admin/orgs"), ("POST", "/v1/admin/orgs/{slug}/suspend"),
          ("POST", "/v1/admin/orgs/{slug}/unsuspend"), ("DELETE", "/v1/admin/orgs/{slug}")]


class OperatorTest(OrgTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_OPERATOR_TOKEN=OPERATOR, TENANTD_SIGNUP_CREDITS="100")
    OP = bearer(OPERATOR)

    def list_all(self, limit, query=""):
        """Walks every page; returns (items, pages)."""
        items, pages, cursor = [], 0, None
        while True:
            path = f"/v1/admin/orgs?limit={limit}{query}"
            if cursor:
                path += f"&cursor={cursor}"
            status, doc, _ = self.server.json("GET", path, headers=self.OP)
            self.assertEqual(status, 200, doc)
            self.assertEqual(set(doc), {"data", "next_cursor"})
            self.assertLessEqual(len(doc["data"]), limit)
            items += doc["data"]
            pages += 1
            cursor = doc["next_cursor"]
            if cursor is None:
                return items, pages
            self.assertEqual(len(doc["data"]), limit)
            self.assertLess(pages, 1000)

    def test_list_with_balances_and_pagination(self):
        made = [self.signup()["org"] for _ in range(5)]
        self.sql(f"UPDATE public.credit_accounts SET balance = 7 WHERE org_id = '{made[0]['id']}'")
        status, doc, _ = self.server.json("GET", "/v1/admin/orgs", headers=self.OP)
        self.assertEqual(status, 200, doc)
        total = int(self.sql("SELECT count(*) FROM public.orgs WHERE status <> 'deleted'")[0])
        self.assertEqual(len(doc["data"]), min(total, 20))  # default page size
        for item in doc["data"]:
            self.assertEqual(set(item), {"id", "name", "slug", "status", "join_policy",
                                         "domains", "created_at", "updated_at", "balance"})

        items, pages = self.list_all(2)
        self.assertEqual(len(items), total)
        self.assertEqual(pages, (total + 1) // 2)
        ids = [i["id"] for i in items]
        self.assertEqual(len(ids), len(set(ids)), "an org listed twice")
        self.assertEqual([i["id"] for i in items if i["id"] in {m["id"] for m in made}],
                         [m["id"] for m in made], "not oldest first")
        by_id = {i["id"]: i for i in items}
        self.assertEqual(by_id[made[0]["id"]]["balance"], 7)
        for m in made[1:]:
            self.assertEqual(by_id[m["id"]]["balance"], 100)
            self.assertEqual({k: by_id[m["id"]][k] for k in m}, m)
        # One page of exactly everything has no next page.
        status, doc, _ = self.server.json("GET", f"/v1/admin/orgs?limit={total}", headers=self.OP)
        self.assertEqual((status, doc["next_cursor"]), (200, None))
        self.assertEqual(len(doc["data"]), total)

    def test_pages_are_stable_under_inserts(self):
        for _ in range(3):
            self.signup()
        status, first, _ = self.server.json("GET", "/v1/admin/orgs?limit=2", headers=self.OP)
        self.assertEqual(status, 200, first)
        self.assertIsNotNone(first["next_cursor"])
        newest = self.signup()["org"]
        seen = [i["id"] for i in first["data"]]
        cursor = first["next_cursor"]
        while cursor:
            status, doc, _ = self.server.json("GET", f"/v1/admin/orgs?limit=2&cursor={cursor}",
                                              headers=self.OP)
            self.assertEqual(status, 200, doc)
            seen += [i["id"] for i in doc["data"]]
            cursor = doc["next_cursor"]
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(seen[-1], newest["id"])

    def test_list_filters_and_bad_parameters(self):
        gone = self.signup()["org"]
        self.assertEqual(self.server.request("DELETE", f"/v1/admin/orgs/{gone['slug']}",
                                             headers=self.OP).status, 204)
        items, _ = self.list_all(100)
        self.assertNotIn(gone["id"], [i["id"] for i in items])
        items, _ = self.list_all(100, "&status=deleted")
        self.assertIn(gone["id"], [i["id"] for i in items])
        self.assertTrue(all(i["status"] == "deleted" for i in items))

        valid = base64.urlsafe_b64encode(b"2026-01-01T00:00:00.000000Z|" +
                                         str(uuid.uuid4()).encode()).rstrip(b"=").decode()
        status, doc, _ = self.server.json("GET", f"/v1/admin/orgs?cursor={valid}", headers=self.OP)
        self.assertEqual(status, 200, doc)  # well-formed: a position, even if no row has it
        bad = {"limit": ["0", "101", "-1", "abc", "", "1.5", "99999999999", "%2B5", "05"],
               "status": ["gone", ""],
               "cursor": ["junk", "", "x" * 300,
                          base64.urlsafe_b64encode(b"2026-13-01T00:00:00.000000Z|" +
                                                   str(uuid.uuid4()).encode()).decode(),
                          base64.urlsafe_b64encode(b"2026-01-01T00:00:00.000000Z|not-a-uuid"
                                                   b"-at-all-00000000000000").decode(),
                          "%27%3B%20DROP%20TABLE%20orgs"]}
        for name, values in bad.items():
            for value in values:
                with self.subTest(param=name, value=value):
                    status, doc, _ = self.server.json("GET", f"/v1/admin/orgs?{name}={value}",
                                                      headers=self.OP)
                    self.assert_problem(status, doc, 422, "validation_failed")
                    self.assertEqual([e["field"] for e in doc["errors"]], [name])

    def test_suspend_and_unsuspend(self):
        doc = self.signup()
        slug, tok = doc["org"]["slug"], bearer(doc["access_token"])
        status, org, _ = self.server.json("POST", f"/v1/admin/orgs/{slug.upper()}/suspend",
                                          headers=self.OP)
        self.assertEqual(status, 200, org)
        self.assert_org(org)
        self.assertEqual((org["id"], org["status"]), (doc["org"]["id"], "suspended"))
        # Its credentials: 403, at once.
        status, body, _ = self.server.json("GET", "/v1/org", headers=tok)
        self.assert_problem(status, body, 403, "forbidden")
        # Suspending again changes nothing.
        status, again, _ = self.server.json("POST", f"/v1/admin/orgs/{slug}/suspend",
                                            headers=self.OP)
        self.assertEqual((status, again), (200, org))
        # The operator still sees it.
        status, got, _ = self.server.json("GET", f"/v1/orgs/{slug}", headers=self.OP)
        self.assertEqual((status, got), (200, org))

        status, org, _ = self.server.json("POST", f"/v1/admin/orgs/{slug}/unsuspend",
                                          headers=self.OP)
        self.assertEqual((status, org["status"]), (200, "active"))
        status, body, _ = self.server.json("GET", "/v1/org", headers=tok)
        self.assertEqual((status, body), (200, org))

    def test_operator_delete(self):
        doc = self.signup()
        org = doc["org"]
        schema = "tenant_" + org["id"].replace("-", "")
        r = self.server.request("DELETE", f"/v1/admin/orgs/{org['slug']}", headers=self.OP)
        self.assertEqual((r.status, r.body), (204, b""))
        status, body, _ = self.server.json("GET", "/v1/org", headers=bearer(doc["access_token"]))
        self.assert_problem(status, body, 401, "unauthorized")
        self.assertEqual(self.sql(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
                         ["0"])
        self.assertEqual(self.sql(f"SELECT count(*) FROM public.users WHERE org_id = '{org['id']}'"),
                         ["0"])
        # The signup grant stays in the ledger, flagged.
        self.assertEqual(self.sql(
            f"SELECT amount, org_deleted FROM public.credit_transactions"
            f" WHERE org_id = '{org['id']}'"), ["100|t"])
        status, body, _ = self.server.json("GET", f"/v1/orgs/{org['slug']}", headers=self.OP)
        self.assert_problem(status, body, 404, "not_found")
        r = self.server.request("DELETE", f"/v1/admin/orgs/{org['slug']}", headers=self.OP)
        self.assertEqual(r.status, 404)

    def test_unknown_and_junk_slugs_are_404(self):
        for slug in ("no-such-org-" + uuid.uuid4().hex[:6], "!!", "x" * 51, "%27%20OR%201%3D1"):
            for method, path in ROUTES[1:] + [("GET", "/v1/orgs/{slug}")]:
                with self.subTest(slug=slug, route=f"{method} {path}"):
                    status, doc, _ = self.server.json(method, path.format(slug=slug),
                                                      headers=self.OP)
                    self.assert_problem(status, doc, 404, "not_found")

    def test_operator_reads_any_org_by_slug(self):
        org = self.signup()["org"]
        status, got, _ = self.server.json("GET", f"/v1/orgs/{org['slug'].upper()}",
                                          headers=self.OP)
        self.assertEqual((status, got), (200, org))

    def test_wrong_credentials_get_401(self):
        victim = self.signup()
        slug = victim["org"]["slug"]
        wrong = [None, bearer("wrong"), bearer(OPERATOR[:-1]), bearer(OPERATOR + "x"),
                 bearer(OPERATOR.upper()), {"Authorization": OPERATOR},
                 {"Authorization": f"Basic {OPERATOR}"}, bearer("tdk_" + "a" * 52)]
        for headers in wrong:
            for method, path in ROUTES:
                with self.subTest(headers=headers, route=f"{method} {path}"):
                    status, doc, _ = self.server.json(method, path.format(slug=slug),
                                                      headers=headers)
                    self.assert_problem(status, doc, 401, "unauthorized")
        # An org admin is authenticated but not the operator.
        for method, path in ROUTES:
            with self.subTest(admin=True, route=f"{method} {path}"):
                status, doc, _ = self.server.json(method, path.format(slug=slug),
                                                  headers=bearer(victim["access_token"]))
                self.assertIn(status, (401, 403), doc)
        # Nothing happened to the org.
        status, org, _ = self.server.json("GET", "/v1/org", headers=bearer(victim["access_token"]))
        self.assertEqual((status, org), (200, victim["org"]))


class TwoServersTest(OrgTestCase):
    """Org changes made through one server reach another server's auth cache
    (the orgs trigger's NOTIFY), so a second instance never serves a
    suspended, renamed or deleted org from stale memory."""
    # One JWT secret for both, as in any real deployment of several instances.
    server_env = dict(FAST_ARGON2, TENANTD_OPERATOR_TOKEN=OPERATOR,
                      TENANTD_JWT_SECRET="s" + uuid.uuid4().hex + uuid.uuid4().hex)
    OP = bearer(OPERATOR)

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

    def eventually(self, fn, want, timeout=5.0):
        deadline = time.time() + timeout
        while True:
            got = fn()
            if got == want or time.time() > deadline:
                self.assertEqual(got, want)
                return
            time.sleep(0.05)

    def test_changes_reach_the_other_server(self):
        doc = self.signup()
        tok, slug = bearer(doc["access_token"]), doc["org"]["slug"]

        def status_on_other(headers=tok):
            return self.other.json("GET", "/v1/org", headers=headers)[0]

        self.assertEqual(status_on_other(), 200)  # now cached there
        self.assertEqual(self.server.json("POST", f"/v1/admin/orgs/{slug}/suspend",
                                          headers=self.OP)[0], 200)
        self.eventually(status_on_other, 403)
        self.assertEqual(self.server.json("POST", f"/v1/admin/orgs/{slug}/unsuspend",
                                          headers=self.OP)[0], 200)
        self.eventually(status_on_other, 200)

        new_slug = unique("moved")
        self.assertEqual(self.server.json("PATCH", "/v1/org", {"slug": new_slug}, headers=tok)[0],
                         200)
        self.eventually(lambda: status_on_other(dict(tok, **{"X-Org-Name": new_slug})), 200)
        self.assertEqual(status_on_other(dict(tok, **{"X-Org-Name": slug})), 403)

        self.assertEqual(self.server.request("DELETE", "/v1/org", headers=tok).status, 204)
        self.eventually(status_on_other, 401)


class OperatorDisabledTest(OrgTestCase):
    """Without TENANTD_OPERATOR_TOKEN no credential is the operator: 401."""

    def test_operator_routes_answer_401(self):
        doc = self.signup()
        slug = doc["org"]["slug"]
        for headers in (None, bearer("anything"), {"Authorization": "Bearer "}):
            for method, path in ROUTES:
                with self.subTest(headers=headers, route=f"{method} {path}"):
                    status, body, _ = self.server.json(method, path.format(slug=slug),
                                                       headers=headers)
                    self.assert_problem(status, body, 401, "unauthorized")
        # An org admin is authenticated but not the operator.
        for method, path in ROUTES:
            status, body, _ = self.server.json(method, path.format(slug=slug),
                                               headers=bearer(doc["access_token"]))
            self.assertIn(status, (401, 403), body)
        self.assertEqual(self.sql(f"SELECT status FROM public.orgs WHERE slug = '{slug}'"),
                         ["active"])


if __name__ == "__main__":
    unittest.main()
