"""Who may read /metrics (issue 10, item 9): without TENANTD_METRICS_TOKEN
only a client on loopback that did not come through a proxy; with it, a
bearer token equal to it, from anywhere."""
import json
import socket
import subprocess
import unittest

import harness

TOKEN = "metrics-" + "k" * 32


def outside_address():
    """An address of this host that is not loopback, or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    except OSError:
        return None
    for a in out:
        if "." in a and not a.startswith("127."):
            return a
    return None


def get(host, port, path, headers=None):
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, r


class MetricsLoopbackOnly(harness.DbTestCase):
    start_server = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Listens on every address, so that a client can come from outside
        # loopback (this host's own non-loopback address).
        cls.server = harness.Server(cls.db_url)
        cls.server.env["TENANTD_LISTEN"] = f"0.0.0.0:{cls.server.port}"
        cls.server.start()

    def test_local_client_reads_metrics(self):
        status, body, _ = get("127.0.0.1", self.server.port, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"tenantd_", body)

    def test_forwarded_request_is_refused(self):
        for h in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                  {"X-Real-IP": "203.0.113.9"}):
            status, body, _ = get("127.0.0.1", self.server.port, "/metrics", h)
            self.assertEqual(status, 403, h)
            self.assertEqual(json.loads(body)["code"], "forbidden")
            self.assertNotIn(b"tenantd_", body)

    def test_outside_client_is_refused(self):
        addr = outside_address()
        if not addr:
            self.skipTest("this host has no non-loopback IPv4 address")
        status, body, _ = get(addr, self.server.port, "/metrics")
        self.assertEqual(status, 403)
        self.assertNotIn(b"tenantd_", body)
        # The rest of the API is unaffected.
        self.assertEqual(get(addr, self.server.port, "/health")[0], 200)


class MetricsToken(harness.DbTestCase):
    server_env = {"TENANTD_METRICS_TOKEN": TOKEN}

    def test_token_required(self):
        p = self.server.port
        status, body, r = get("127.0.0.1", p, "/metrics")
        self.assertEqual(status, 401)
        self.assertIn("Bearer", r.getheader("WWW-Authenticate"))
        self.assertNotIn(b"tenantd_", body)
        for bad in ("Bearer " + TOKEN[:-1], "Bearer " + TOKEN + "x", "Basic " + TOKEN, TOKEN):
            self.assertEqual(get("127.0.0.1", p, "/metrics", {"Authorization": bad})[0], 401, bad)
        status, body, _ = get("127.0.0.1", p, "/metrics", {"Authorization": "Bearer " + TOKEN})
        self.assertEqual(status, 200)
        self.assertIn(b"tenantd_", body)
        # With the token, a forwarded request is fine (a scraper behind a proxy).
        status, _, _ = get("127.0.0.1", p, "/metrics",
                           {"Authorization": "Bearer " + TOKEN, "X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(status, 200)


if __name__ == "__main__":
    unittest.main()
