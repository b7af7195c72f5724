"""TENANTD_ORG_RATE_LIMIT: authenticated requests per minute per org. An
org over its budget gets 429 with Retry-After and RateLimit headers for
every credential it has (users' tokens and API keys share one budget);
other orgs, the operator and routes without a credential are not
affected; off by default."""
import unittest

import harness
from test_users import bearer, create_key, signup

OPERATOR = "op-org-limit-test-0123456789abcdef"


class OrgRateLimitTest(harness.DbTestCase):
    server_env = {"TENANTD_ORG_RATE_LIMIT": "5", "TENANTD_OPERATOR_TOKEN": OPERATOR,
                  "TENANTD_LOGIN_LIMIT": "0", "TENANTD_ARGON2_M_KIB": "1024",
                  "TENANTD_ARGON2_T": "1"}

    def me(self, token):
        return self.server.json("GET", "/v1/auth/me", None, bearer(token))

    def test_budget_per_org(self):
        a, b = signup(self.server), signup(self.server)
        key = create_key(self.server, a["access_token"])["key"]  # 1st request of org A
        for i in range(4):
            status, doc, r = self.me(a["access_token"])
            self.assertEqual(status, 200, doc)
            self.assertEqual(r.getheader("RateLimit-Limit"), "5")
            self.assertEqual(r.getheader("RateLimit-Remaining"), str(3 - i))
        for token in (a["access_token"], key):  # the key draws from the same budget
            status, doc, r = self.me(token)
            self.assertEqual(status, 429, doc)
            self.assertEqual(doc["code"], "rate_limited")
            retry = int(r.getheader("Retry-After"))
            self.assertTrue(1 <= retry <= 12, retry)  # one request per 12 s
            self.assertEqual(r.getheader("RateLimit-Remaining"), "0")
        # Org B, the operator and the open routes go on.
        status, doc, r = self.me(b["access_token"])
        self.assertEqual(status, 200, doc)
        self.assertEqual(r.getheader("RateLimit-Remaining"), "4")
        status, doc, r = self.server.json("GET", "/v1/admin/orgs", None, bearer(OPERATOR))
        self.assertEqual(status, 200, doc)
        self.assertIsNone(r.getheader("RateLimit-Limit"))
        self.assertEqual(self.server.get("/health").status, 200)
        status, doc, _ = self.server.json("POST", "/v1/auth/login", {
            "email": a["email"], "password": a["password"]})
        self.assertEqual(status, 200, doc)  # logging in is not an org request

    def test_bad_credentials_do_not_spend_an_orgs_budget(self):
        a = signup(self.server)
        for _ in range(10):
            self.assertEqual(self.me(a["access_token"] + "x")[0], 401)
        status, doc, r = self.me(a["access_token"])
        self.assertEqual(status, 200, doc)
        self.assertEqual(r.getheader("RateLimit-Remaining"), "4")


class OrgRateLimitOffTest(harness.DbTestCase):
    def test_off_by_default(self):
        a = signup(self.server)
        for _ in range(12):
            status, doc, r = self.server.json("GET", "/v1/auth/me", None,
                                              bearer(a["access_token"]))
            self.assertEqual(status, 200, doc)
            self.assertIsNone(r.getheader("RateLimit-Limit"))


if __name__ == "__main__":
    unittest.main()
