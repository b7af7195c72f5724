"""CORS end to end: preflights answered before routing (204 for an allowed
origin and method, 403 otherwise), Access-Control-Allow-Origin and
Expose-Headers on every answer to an allowed origin (errors too, so a page
can read the problem), nothing for other origins or without Origin, "*",
CORS off by default, and bad TENANTD_CORS_ORIGINS refused at start."""
import unittest

import harness
from test_auth import FAST_ARGON2
from test_users import bearer, signup

APP = "https://app.example.com"
DEV = "http://localhost:5173"


def preflight(server, path, origin, method="POST", headers=None):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return server.request("OPTIONS", path, headers=h)


class CorsTest(harness.DbTestCase):
    server_env = dict(FAST_ARGON2, TENANTD_CORS_ORIGINS=f"{APP}, {DEV}",
                      TENANTD_LOGIN_LIMIT="0")

    def assert_no_cors(self, r):
        for h in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                  "Access-Control-Expose-Headers"):
            self.assertIsNone(r.getheader(h), h)

    def test_preflight_from_an_allowed_origin(self):
        for origin in (APP, DEV):
            with self.subTest(origin=origin):
                r = preflight(self.server, "/v1/auth/login", origin,
                              headers="content-type, idempotency-key, sentry-trace")
                self.assertEqual(r.status, 204, r.body)
                self.assertEqual(r.body, b"")
                self.assertEqual(r.getheader("Access-Control-Allow-Origin"), origin)
                self.assertIn("Origin", r.getheader("Vary"))
                methods = [m.strip() for m in r.getheader("Access-Control-Allow-Methods").split(",")]
                for m in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    self.assertIn(m, methods)
                self.assertEqual(r.getheader("Access-Control-Allow-Headers"),
                                 "content-type, idempotency-key, sentry-trace")
                self.assertEqual(r.getheader("Access-Control-Max-Age"), "600")
                self.assertIsNone(r.getheader("Access-Control-Allow-Credentials"))

    def test_preflight_without_request_headers_lists_ours(self):
        r = preflight(self.server, "/v1/records", APP, method="GET")
        self.assertEqual(r.status, 204)
        allowed = r.getheader("Access-Control-Allow-Headers").lower()
        for h in ("authorization", "content-type", "idempotency-key", "if-match", "x-org-name",
                  "traceparent", "tracestate"):
            self.assertIn(h, allowed)

    def test_preflight_with_a_malformed_header_list_gets_ours(self):
        r = preflight(self.server, "/v1/org", APP, method="PATCH", headers="x-a; x-b, (c)")
        self.assertEqual(r.status, 204)
        self.assertIn("Authorization", r.getheader("Access-Control-Allow-Headers"))

    def test_preflight_refused(self):
        cases = [("https://evil.example", "POST"), ("https://app.example.com.evil.example", "POST"),
                 ("http://app.example.com", "POST"), ("null", "GET"), (APP, "TRACE"),
                 (APP, "CONNECT"), (APP, "post")]
        for origin, method in cases:
            with self.subTest(origin=origin, method=method):
                r = preflight(self.server, "/v1/auth/login", origin, method=method)
                self.assertEqual(r.status, 403, r.body)
                self.assertEqual(r.getheader("Content-Type"), "application/problem+json")
                self.assert_no_cors(r)

    def test_actual_requests_carry_allow_and_expose(self):
        doc = signup(self.server)
        tok = doc["access_token"]
        cases = [("GET", "/health", {}, 200), ("GET", "/v1/auth/me", bearer(tok), 200),
                 ("GET", "/v1/auth/me", {}, 401), ("GET", "/v1/nope", {}, 404),
                 ("DELETE", "/health", {}, 405)]
        for method, path, headers, status in cases:
            with self.subTest(method=method, path=path):
                r = self.server.request(method, path, headers=dict(headers, Origin=APP))
                self.assertEqual(r.status, status, r.body)
                self.assertEqual(r.getheader("Access-Control-Allow-Origin"), APP)
                self.assertIn("Origin", r.getheader("Vary"))
                exposed = r.getheader("Access-Control-Expose-Headers")
                for h in ("X-Request-Id", "ETag", "Retry-After", "RateLimit-Remaining",
                          "Idempotent-Replayed", "traceresponse"):
                    self.assertIn(h, exposed)

    def test_other_origins_and_no_origin_get_no_cors_headers(self):
        for headers in ({"Origin": "https://evil.example"}, {}):
            with self.subTest(headers=headers):
                r = self.server.request("GET", "/health", headers=headers)
                self.assertEqual(r.status, 200)  # answered: the browser withholds it
                self.assert_no_cors(r)

    def test_options_without_preflight_headers_is_routed(self):
        r = self.server.request("OPTIONS", "/health", headers={"Origin": APP})
        self.assertEqual(r.status, 405)
        self.assertIn("GET", r.getheader("Allow"))


class CorsAnyOriginTest(harness.DbTestCase):
    server_env = {"TENANTD_CORS_ORIGINS": "*"}

    def test_star(self):
        r = preflight(self.server, "/v1/auth/login", "https://anything.example")
        self.assertEqual(r.status, 204)
        self.assertEqual(r.getheader("Access-Control-Allow-Origin"), "*")
        r = self.server.request("GET", "/health", headers={"Origin": "http://x.test:8000"})
        self.assertEqual(r.getheader("Access-Control-Allow-Origin"), "*")


class CorsOffTest(harness.DbTestCase):
    def test_off_by_default(self):
        r = preflight(self.server, "/v1/auth/login", APP)
        self.assertEqual(r.status, 405)
        self.assertIsNone(r.getheader("Access-Control-Allow-Origin"))
        r = self.server.request("GET", "/health", headers={"Origin": APP})
        self.assertIsNone(r.getheader("Access-Control-Allow-Origin"))


class CorsConfigTest(harness.DbTestCase):
    start_server = False

    def test_bad_origins_stop_the_start(self):
        for value in ("app.example.com", "https://app.example.com/", "https://app.example.com/x",
                      "https://", "https://a.example:", "https://a.example:8o", "*.example.com",
                      "https://a.example,,ftp//b", " , "):
            with self.subTest(value=value):
                cp = harness.run_tenantd(["serve"], self.db_url,
                                         env={"TENANTD_CORS_ORIGINS": value, "TENANTD_DEV": "1"},
                                         timeout=30)
                self.assertNotEqual(cp.returncode, 0)
                self.assertIn("TENANTD_CORS_ORIGINS", cp.stderr)

    def test_good_origins_are_taken(self):
        for value in ("https://app.example.com", "http://localhost:5173, https://x.test",
                      "http://[::1]:8080", "*"):
            with self.subTest(value=value):
                cp = harness.run_tenantd(["routes"], self.db_url,
                                         env={"TENANTD_CORS_ORIGINS": value}, timeout=30)
                self.assertEqual(cp.returncode, 0, cp.stderr)


if __name__ == "__main__":
    unittest.main()
