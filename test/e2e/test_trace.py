"""W3C trace context (issue 14, item 7): a valid `traceparent` continues
the caller's trace (same trace id, a new span of this server, answered as
`traceresponse` and logged as trace_id); a malformed, repeated or absent
one is ignored and a new trace starts; a webhook delivery enqueued by the
request continues the trace as a child span, with the caller's
tracestate."""
import re
import time
import unittest

import harness
from test_jobs import FAST, Receiver, enqueue, wait_job
from test_users import bearer, signup

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
SHAPE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# Each must be ignored (a new trace), never answered 4xx.
MALFORMED = [
    f"00-{TRACE.upper()}-{PARENT}-01",           # upper-case hex
    f"00-{TRACE}-{PARENT}-0",                    # short flags
    f"00-{TRACE}-{PARENT}-01-extra",             # version 00 with more fields
    f"ff-{TRACE}-{PARENT}-01",                   # version ff
    f"00-{'0' * 32}-{PARENT}-01",                # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                 # all-zero parent id
    f"00_{TRACE}_{PARENT}_01",                   # wrong separators
    f"00-{TRACE[:-1]}g-{PARENT}-01",             # not hex
    f"0-{TRACE}-{PARENT}-01",                    # short version
    f"00-{TRACE}-{PARENT}",                      # no flags
    "",
    "x" * 300,
]


class TraceContextTest(harness.DbTestCase):
    @classmethod
    def setUpClass(cls):
        cls.rx = Receiver()
        cls.server_env = dict(FAST, TENANTD_JOB_WORKERS="1", TENANTD_WEBHOOK_ALLOW_PRIVATE="1",
                              TENANTD_WEBHOOK_ALLOW=f"127.0.0.1:{cls.rx.port}")
        super().setUpClass()

    def access_line(self, request_id):
        deadline = time.time() + 5
        while time.time() < deadline:
            for line in self.server.log_lines():
                if line.get("msg") == "request" and line.get("request_id") == request_id:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no access line for {request_id}")

    def test_valid_traceparent_continues_the_trace(self):
        r = self.server.get("/health", {"traceparent": VALID, "X-Request-Id": "trace-valid-1"})
        self.assertEqual(r.status, 200)
        m = SHAPE.match(r.getheader("traceresponse") or "")
        self.assertTrue(m, r.getheader("traceresponse"))
        self.assertEqual(m.group(1), TRACE)
        self.assertNotEqual(m.group(2), PARENT)  # this server's own span
        self.assertEqual(m.group(3), "01")       # the sampled flag goes on
        self.assertEqual(self.access_line("trace-valid-1")["trace_id"], TRACE)

    def test_unknown_flags_are_cleared_and_a_later_version_is_read(self):
        r = self.server.get("/health", {"traceparent": f"00-{TRACE}-{PARENT}-ff"})
        self.assertEqual(SHAPE.match(r.getheader("traceresponse")).group(3), "01")
        r = self.server.get("/health", {"traceparent": f"01-{TRACE}-{PARENT}-00-future"})
        self.assertEqual(SHAPE.match(r.getheader("traceresponse")).group(1), TRACE)

    def test_malformed_traceparent_starts_a_new_trace(self):
        seen = set()
        for i, value in enumerate(MALFORMED):
            rid = f"trace-bad-{i}"
            r = self.server.get("/health", {"traceparent": value, "X-Request-Id": rid})
            self.assertEqual(r.status, 200, value)
            m = SHAPE.match(r.getheader("traceresponse") or "")
            self.assertTrue(m, value)
            self.assertNotEqual(m.group(1).lower(), TRACE, value)
            self.assertEqual(m.group(3), "00", value)
            self.assertEqual(self.access_line(rid)["trace_id"], m.group(1))
            seen.add(m.group(1))
        self.assertEqual(len(seen), len(MALFORMED), "each new trace has its own id")

    def test_repeated_traceparent_is_ignored(self):
        raw = (f"GET /health HTTP/1.1\r\nHost: x\r\ntraceparent: {VALID}\r\n"
               f"traceparent: {VALID}\r\nConnection: close\r\n\r\n").encode()
        answer = self.server.raw(raw).decode()
        m = re.search(r"traceresponse: (\S+)", answer)
        self.assertTrue(m, answer)
        self.assertNotIn(TRACE, m.group(1))

    def test_no_traceparent_starts_a_trace(self):
        a = self.server.get("/health").getheader("traceresponse")
        b = self.server.get("/health").getheader("traceresponse")
        self.assertTrue(SHAPE.match(a) and SHAPE.match(b), (a, b))
        self.assertNotEqual(a[3:35], b[3:35])

    def test_webhook_delivery_continues_the_trace(self):
        org = signup(self.server)
        path = "/traced"
        status, job, r = self.server.json("POST", "/v1/jobs", {
            "type": "webhook.deliver",
            "payload": {"url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": "s" * 16}},
            bearer(org["access_token"], traceparent=VALID, tracestate="vendor=abc,other=1"))
        self.assertEqual(status, 202, job)
        server_span = SHAPE.match(r.getheader("traceresponse")).group(2)
        done = wait_job(self.server, org["access_token"], job["id"])
        self.assertEqual(done["status"], "succeeded", done)
        got = [h for p, h, _ in self.rx.requests if p == path]
        self.assertEqual(len(got), 1)
        headers = {k.lower(): v for k, v in got[0].items()}
        m = SHAPE.match(headers.get("traceparent", ""))
        self.assertTrue(m, headers)
        self.assertEqual(m.group(1), TRACE)
        self.assertNotIn(m.group(2), (PARENT, server_span))  # a child span of its own
        self.assertEqual(m.group(3), "01")
        self.assertEqual(headers.get("tracestate"), "vendor=abc,other=1")

    def test_webhook_without_trace_gets_the_requests_new_trace(self):
        org = signup(self.server)
        path = "/untraced"
        status, job, r = self.server.json("POST", "/v1/jobs", {
            "type": "webhook.deliver",
            "payload": {"url": f"http://127.0.0.1:{self.rx.port}{path}", "secret": "s" * 16}},
            bearer(org["access_token"], traceparent="garbage", tracestate="vendor=abc"))
        self.assertEqual(status, 202, job)
        trace = SHAPE.match(r.getheader("traceresponse")).group(1)
        self.assertEqual(wait_job(self.server, org["access_token"], job["id"])["status"],
                         "succeeded")
        headers = {k.lower(): v for k, v in
                   [h for p, h, _ in self.rx.requests if p == path][0].items()}
        self.assertEqual(SHAPE.match(headers["traceparent"]).group(1), trace)
        self.assertNotIn("tracestate", headers)  # kept only beside a valid traceparent


if __name__ == "__main__":
    unittest.main()
