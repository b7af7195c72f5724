"""The HTTP/1.1 server (core/server.c, core/http.c) against the real binary:
keep-alive, pipelining, bodies, limits, timeouts, malformed and
smuggling-shaped requests, request ids, graceful shutdown, threads, IPv6."""
import http.client
import json
import re
import concurrent.futures
import signal
import socket
import time
import unittest

import harness

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


class Raw:
    """A client socket that reads HTTP/1.1 responses one at a time, so tests
    can pipeline, half-send, and see exactly when the server closes."""

    def __init__(self, port, timeout=5, host="127.0.0.1", family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise EOFError("server closed the connection")
        self.buf += b

    def read_until(self, marker):
        while marker not in self.buf:
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head=False):
        block = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = block.split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) (.*)$", lines[0])
        if not m:
            raise AssertionError("bad status line: %r" % lines[0])
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip().lower(), v.strip()))
        r = Response(status, m.group(2), headers, b"")
        n = r.header("content-length")
        if not head and status >= 200 and status not in (204, 304) and n is not None:
            r.body = self.read_exact(int(n))
        return r

    def closed(self, wait=3.0):
        """True when the server closes (EOF or reset) within `wait` seconds
        and sends nothing more."""
        self.sock.settimeout(wait)
        try:
            while True:
                b = self.sock.recv(65536)
                if not b:
                    return True
                self.buf += b
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def req(method, path, headers=(), body=b"", version="1.1"):
    lines = ["%s %s HTTP/%s" % (method, path, version), "Host: t"]
    lines += ["%s: %s" % h for h in headers]
    if body and not any(h[0].lower() in ("content-length", "transfer-encoding") for h in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpBasics(harness.DbTestCase):
    def raw(self):
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        return r

    def test_keep_alive_several_requests_one_socket(self):
        c = self.server.conn()
        socks = set()
        for _ in range(5):
            c.request("GET", "/health")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.read()), {"status": "ok"})
            self.assertIsNone(r.getheader("Connection"))
            socks.add(id(c.sock))
        self.assertEqual(len(socks), 1, "http.client had to reconnect: keep-alive broken")
        c.close()

    def test_pipelined_requests_answered_in_order(self):
        r = self.raw()
        r.send(req("GET", "/health", [("X-Request-Id", "p1")]) +
               req("GET", "/nope", [("X-Request-Id", "p2")]) +
               req("POST", "/health", [("X-Request-Id", "p3")], body=b"{}"))
        a, b, c = r.response(), r.response(), r.response()
        self.assertEqual((a.status, b.status, c.status), (200, 404, 405))
        self.assertEqual([x.header("x-request-id") for x in (a, b, c)], ["p1", "p2", "p3"])
        self.assertEqual(a.json(), {"status": "ok"})
        # and the connection is still usable
        r.send(req("GET", "/health"))
        self.assertEqual(r.response().status, 200)

    def test_pipelined_byte_by_byte(self):
        r = self.raw()
        r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = req("GET", "/health", [("X-A", "a b  c")]) + req("GET", "/health")
        for i in range(len(data)):
            r.send(data[i:i + 1])
        self.assertEqual(r.response().status, 200)
        self.assertEqual(r.response().status, 200)

    def test_many_pipelined_requests_with_backpressure(self):
        import threading
        r = self.raw()
        n = 3000  # about 100 KiB of requests: more than the server buffers
        data = b"".join(req("GET", "/health" if i % 2 else "/nope", [("X-Request-Id", "r%d" % i)])
                        for i in range(n))
        t = threading.Thread(target=r.send, args=(data,))
        t.start()
        for i in range(n):
            resp = r.response()
            self.assertEqual(resp.header("x-request-id"), "r%d" % i)
            self.assertEqual(resp.status, 200 if i % 2 else 404)
        t.join()

    def test_half_close_after_pipelined_requests(self):
        r = self.raw()
        r.send(req("GET", "/health") + req("GET", "/nope"))
        r.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(r.response().status, 200)
        self.assertEqual(r.response().status, 404)
        self.assertTrue(r.closed())

    def test_chunked_request_body(self):
        r = self.raw()
        body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        r.send(req("POST", "/health", [("Transfer-Encoding", "chunked")]) + body)
        resp = r.response()
        self.assertEqual(resp.status, 405)  # parsed to the end: the route exists
        self.assertIsNone(resp.header("connection"))
        # the whole chunked body was consumed: the next request parses cleanly
        r.send(req("GET", "/health"))
        self.assertEqual(r.response().status, 200)

    def test_content_length_body_then_next_request(self):
        r = self.raw()
        r.send(req("POST", "/nope", body=b"x" * 5000) + req("GET", "/health"))
        self.assertEqual(r.response().status, 404)
        self.assertEqual(r.response().status, 200)

    def test_head_keeps_length_sends_no_body(self):
        r = self.raw()
        r.send(req("HEAD", "/health") + req("GET", "/health"))
        h = r.response(head=True)
        self.assertEqual(h.status, 200)
        self.assertEqual(h.header("content-length"), "15")
        g = r.response()  # would fail to parse if HEAD had sent a body
        self.assertEqual(g.status, 200)
        self.assertEqual(g.body, b'{"status":"ok"}')

    def test_expect_100_continue(self):
        r = self.raw()
        r.send(req("POST", "/nope", [("Expect", "100-continue"), ("Content-Length", "5")]))
        interim = r.read_until(b"\r\n\r\n")
        self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
        r.send(b"hello")
        resp = r.response()
        self.assertEqual(resp.status, 404)
        r.send(req("GET", "/health"))
        self.assertEqual(r.response().status, 200)

    def test_expect_100_continue_over_limit_is_413_without_100(self):
        r = self.raw()
        r.send(req("POST", "/nope", [("Expect", "100-continue"), ("Content-Length", str(2 << 20))]))
        resp = r.response()
        self.assertEqual(resp.status, 413)
        self.assertEqual(resp.json()["code"], "payload_too_large")
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(r.closed())

    def test_headers_too_large_431(self):
        r = self.raw()
        r.send(req("GET", "/health", [("X-Big", "a" * (17 * 1024))]))
        resp = r.response()
        self.assertEqual(resp.status, 431)
        self.assertEqual(resp.header("content-type"), "application/problem+json")
        self.assertEqual(resp.json()["code"], "headers_too_large")
        self.assertTrue(r.closed())

    def test_many_small_headers_too_large_431(self):
        r = self.raw()
        r.send(req("GET", "/health", [("X-H%d" % i, "v" * 20) for i in range(700)]))
        resp = r.response()
        self.assertEqual(resp.status, 431)
        self.assertTrue(r.closed())

    def test_headers_just_under_limit_ok(self):
        r = self.raw()
        r.send(req("GET", "/health", [("X-Big", "a" * (15 * 1024))]))
        self.assertEqual(r.response().status, 200)

    def test_declared_body_too_large_413(self):
        r = self.raw()
        r.send(req("POST", "/health", [("Content-Length", str(2 * 1024 * 1024))]))
        resp = r.response()
        self.assertEqual(resp.status, 413)
        self.assertEqual(resp.json()["code"], "payload_too_large")
        self.assertTrue(r.closed())

    def test_chunked_body_too_large_413(self):
        r = self.raw()
        r.send(req("POST", "/nope", [("Transfer-Encoding", "chunked")]))
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"z" * 64 * 1024)
        try:
            for _ in range(20):  # 1.25 MiB > 1 MiB
                r.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = r.response()
        self.assertEqual(resp.status, 413)
        self.assertEqual(resp.json()["code"], "payload_too_large")
        self.assertTrue(r.closed())

    def test_chunk_announcing_too_much_413(self):
        r = self.raw()
        r.send(req("POST", "/nope", [("Transfer-Encoding", "chunked")]) + b"200000\r\nabc")
        resp = r.response()
        self.assertEqual(resp.status, 413)
        self.assertTrue(r.closed())

    def test_404_problem_json(self):
        r = self.raw()
        r.send(req("GET", "/no/such/route"))
        resp = r.response()
        self.assertEqual(resp.status, 404)
        self.assertEqual(resp.header("content-type"), "application/problem+json")
        p = resp.json()
        self.assertEqual(p["code"], "not_found")
        self.assertEqual(p["status"], 404)
        self.assertEqual(p["type"], "https://tenantd.dev/problems/not_found")
        self.assertEqual(p["request_id"], resp.header("x-request-id"))

    def test_405_with_allow(self):
        r = self.raw()
        r.send(req("DELETE", "/health"))
        resp = r.response()
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.json()["code"], "method_not_allowed")
        allow = [m.strip() for m in resp.header("allow").split(",")]
        self.assertIn("GET", allow)
        self.assertIn("HEAD", allow)
        self.assertNotIn("DELETE", allow)

    def test_request_id_echoed_when_sane(self):
        for rid in ["abc", "A.b_c:d-1", "x" * 128]:
            r = self.server.get("/health", headers={"X-Request-Id": rid})
            self.assertEqual(r.getheader("X-Request-Id"), rid)

    def test_request_id_replaced_when_not_sane(self):
        for rid in ["has space", "x" * 129, "semi;colon", "quote\"", "\u00e9t\u00e9"]:
            r = Raw(self.server.port)
            self.addCleanup(r.close)
            r.send(req("GET", "/health", [("X-Request-Id", rid)]))
            resp = r.response()
            got = resp.header("x-request-id")
            self.assertNotEqual(got, rid)
            self.assertRegex(got, UUID_RE)

    def test_request_ids_unique(self):
        ids = {self.server.get("/health").getheader("X-Request-Id") for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for i in ids:
            self.assertRegex(i, UUID_RE)

    def test_date_header(self):
        r = self.server.get("/health")
        self.assertRegex(r.getheader("Date"), r"^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$")

    def test_connection_close_honoured(self):
        r = self.raw()
        r.send(req("GET", "/health", [("Connection", "close")]) + req("GET", "/health"))
        resp = r.response()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(r.closed())
        self.assertEqual(r.buf, b"", "answered a request sent after Connection: close")

    def test_http10_closes_by_default(self):
        r = self.raw()
        r.send(b"GET /health HTTP/1.0\r\n\r\n")
        resp = r.response()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(r.closed())

    def test_http10_keep_alive(self):
        r = self.raw()
        r.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = r.response()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("connection").lower(), "keep-alive")
        r.send(b"GET /health HTTP/1.0\r\n\r\n")
        self.assertEqual(r.response().status, 200)
        self.assertTrue(r.closed())

    def test_absolute_form_target(self):
        r = self.raw()
        r.send(b"GET http://example.com/health HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(r.response().status, 200)

    def test_query_string_not_part_of_path(self):
        r = self.raw()
        r.send(req("GET", "/health?x=1&y=%20"))
        self.assertEqual(r.response().status, 200)

    def test_leading_empty_lines_tolerated(self):
        r = self.raw()
        r.send(b"\r\n" + req("GET", "/health"))
        self.assertEqual(r.response().status, 200)

    def test_upgrade_request_answered_then_closed(self):
        # No protocol switch is offered: a normal answer, then close, since
        # the client may already be speaking the other protocol.
        r = self.raw()
        r.send(req("GET", "/health", [("Connection", "Upgrade"), ("Upgrade", "websocket")]) +
               b"\x81\x85garbage")
        resp = r.response()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("connection"), "close")
        self.assertTrue(r.closed())

    def test_http11_without_host_accepted(self):
        r = self.raw()
        r.send(b"GET /health HTTP/1.1\r\n\r\n")
        self.assertEqual(r.response().status, 200)

    def test_header_values_trimmed_and_case_insensitive(self):
        r = self.raw()
        r.send(b"GET /health HTTP/1.1\r\nx-request-id:   trimmed-id \t \r\n\r\n")
        self.assertEqual(r.response().header("x-request-id"), "trimmed-id")

    def test_client_gone_before_the_answer(self):
        # Login hashes on the thread pool, so the answer comes from a later
        # callback, after this client has closed: the request must stay alive
        # until then, be logged, and its answer dropped (ASan builds check
        # that nothing is used after free).
        body = json.dumps({"email": "nobody@example.com", "password": "not the password"}).encode()
        for rid, reset in (("gone-with-fin", False), ("gone-with-rst", True)):
            r = Raw(self.server.port)
            r.send(req("POST", "/v1/auth/login", [("X-Request-Id", rid),
                                                   ("Content-Type", "application/json")], body=body))
            time.sleep(0.01)  # read and dispatched, the hash still running
            if reset:  # close with RST: the server sees an error, not EOF
                r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            r.close()
            deadline = time.time() + 10
            lines = []
            while time.time() < deadline and not lines:
                lines = [l for l in self.server.log_lines() if l.get("request_id") == rid]
                time.sleep(0.05)
            self.assertEqual(len(lines), 1, self.server.log())
            self.assertEqual(lines[0]["route"], "/v1/auth/login")
        self.assertEqual(self.server.get("/health").status, 200)

    def test_access_log_line(self):
        rid = "log-check-1"
        self.server.get("/health", headers={"X-Request-Id": rid})
        deadline = time.time() + 3
        while time.time() < deadline:
            lines = [l for l in self.server.log_lines() if l.get("request_id") == rid]
            if lines:
                break
            time.sleep(0.05)
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["status"], 200)
        self.assertEqual(lines[0]["route"], "/health")
        self.assertEqual(lines[0]["method"], "GET")


# Each of these must be answered 400 (problem bad_request) and closed.
MALFORMED = [
    ("CL and TE", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("TE and CL", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n"),
    ("duplicate CL, same value", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                 b"Content-Length: 3\r\n\r\nabc"),
    ("duplicate CL, other value", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                  b"Content-Length: 4\r\n\r\nabcd"),
    ("CL list", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("CL with sign", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"),
    ("CL negative", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"),
    ("CL not a number", b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n"),
    ("bad chunk size", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n0\r\n\r\n"),
    ("chunk size overflow", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
    ("chunk without CRLF", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabcX\r\n0\r\n\r\n"),
    ("TE gzip without chunked", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    ("TE gzip, chunked", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n"),
    ("TE chunked, gzip", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n"),
    ("TE twice", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("TE identity", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n"),
    ("TE on HTTP/1.0", b"POST /health HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\n\r\n"),
    ("obs-fold", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"),
    ("obs-fold with tab", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n"),
    ("obs-fold of Transfer-Encoding", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n"
                                      b" chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("space before colon", b"GET /health HTTP/1.1\r\nHost : t\r\n\r\n"),
    ("space before colon of TE", b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n"
                                 b"Content-Length: 3\r\n\r\nabc"),
    ("tab before colon", b"GET /health HTTP/1.1\r\nHost\t: t\r\n\r\n"),
    ("space in header name", b"GET /health HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n"),
    ("empty header name", b"GET /health HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n"),
    ("bare CR in header value", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n"),
    ("NUL in header value", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n"),
    ("NUL in header name", b"GET /health HTTP/1.1\r\nHost: t\r\nX\x00A: b\r\n\r\n"),
    ("DEL in header value", b"GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n"),
    ("non-ASCII header name", b"GET /health HTTP/1.1\r\nHost: t\r\nX\xc3\xa9: b\r\n\r\n"),
    ("bare LF line endings", b"GET /health HTTP/1.1\nHost: t\n\n"),
    ("header line without colon", b"GET /health HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n"),
    ("invalid method", b"G@T /health HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("lower-case method", b"get /health HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("HTTP/1.2", b"GET /health HTTP/1.2\r\nHost: t\r\n\r\n"),
    ("HTTP/2.0", b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n"),
    ("HTTP/0.9 style", b"GET /health HTTP/0.9\r\n\r\n"),
    ("garbage version", b"GET /health HTTP/x.y\r\nHost: t\r\n\r\n"),
    ("no version", b"GET /health\r\nHost: t\r\n\r\n"),
    ("space in target", b"GET /hea lth HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("two spaces after method", b"GET  /health HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("target not origin-form", b"GET health HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
    ("duplicate Host", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("control char in target", b"GET /he\x01alth HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("binary garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
]


class HttpMalformed(harness.DbTestCase):
    def test_malformed_requests_400_and_close(self):
        for name, data in MALFORMED:
            with self.subTest(name):
                r = Raw(self.server.port)
                try:
                    try:
                        r.send(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    resp = r.response()
                    self.assertEqual(resp.status, 400, name)
                    p = resp.json()
                    self.assertEqual(p["code"], "bad_request")
                    self.assertEqual(resp.header("content-type"), "application/problem+json")
                    self.assertEqual(resp.header("connection"), "close")
                    self.assertTrue(r.closed(), name + ": connection not closed")
                finally:
                    r.close()
        # the server survived them all
        self.assertEqual(self.server.get("/health").status, 200)

    def test_smuggled_request_never_answered(self):
        # A request hidden in a rejected body must not be executed as a
        # second request.
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        r.send(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = r.response()
        self.assertEqual(resp.status, 400)
        self.assertTrue(r.closed())
        self.assertNotIn(b"HTTP/1.1", r.buf)


class HttpLimits(harness.DbTestCase):
    server_env = {
        "TENANTD_MAX_CONNECTIONS": "2",
    }

    def test_max_connections(self):
        # Both places taken by requests in progress (an idle keep-alive
        # connection, such as the start-up probe's, would be closed to make
        # room: test_connection_table.py).
        a, b = Raw(self.server.port), Raw(self.server.port)
        for r in (a, b):
            self.addCleanup(r.close)
            r.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.1)
        # the third is answered 503 and closed, never left hanging
        third = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        data = b""
        try:
            while True:
                chunk = third.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            third.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 503 "), data)
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["code"], "unavailable")
        # the first two still work
        for r in (a, b):
            r.send(b"\r\n")
            self.assertEqual(r.response().status, 200)
        a.close()
        b.close()
        # once they are gone, new connections are served again
        deadline = time.time() + 5
        while True:
            try:
                if self.server.get("/health").status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            self.assertLess(time.time(), deadline, "connections never freed")
            time.sleep(0.05)


class HttpSmallLimits(harness.DbTestCase):
    """Non-default TENANTD_MAX_BODY_BYTES and TENANTD_MAX_HEADER_BYTES are
    the limits: a body or header block at the limit passes, one byte more
    is 413 / 431."""
    BODY, HEAD = 1000, 2048
    server_env = {"TENANTD_MAX_BODY_BYTES": str(BODY), "TENANTD_MAX_HEADER_BYTES": str(HEAD)}

    def status(self, data):
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        r.send(data)
        return r.response().status

    def test_body_limit(self):
        for n, want_413 in ((self.BODY, False), (self.BODY + 1, True)):
            with self.subTest(bytes=n):
                st = self.status(req("POST", "/nope", body=b"x" * n))
                self.assertEqual(st == 413, want_413, st)
                # chunked, the same limit on the decoded size
                body = b"%x\r\n" % n + b"x" * n + b"\r\n0\r\n\r\n"
                st = self.status(req("POST", "/nope", [("Transfer-Encoding", "chunked")], body))
                self.assertEqual(st == 413, want_413, st)

    def test_header_limit(self):
        def block(total):
            head = req("GET", "/health", [("X-Pad", "")])
            pad = total - len(head)
            return req("GET", "/health", [("X-Pad", "p" * pad)])
        small = block(self.HEAD - 64)
        self.assertEqual(self.status(small), 200)
        self.assertEqual(self.status(block(self.HEAD + 64)), 431)
        self.assertEqual(self.status(block(4 * self.HEAD)), 431)


class HttpTimeouts(harness.DbTestCase):
    server_env = {
        "TENANTD_HEADER_TIMEOUT_MS": "300",
        "TENANTD_IDLE_TIMEOUT_MS": "300",
    }

    def test_header_timeout_closes_slow_headers(self):
        """The header deadline (300 ms) counts from the first byte, not the
        last: a client trickling a header line every 0.1 s for 1.5 s must be
        cut off while it trickles (a deadline each byte restarts never
        fires until the trickle stops)."""
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        t0 = time.time()
        r.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        closed_at = None
        while closed_at is None and time.time() - t0 < 1.5:
            if r.closed(wait=0.1):
                closed_at = time.time()
                break
            try:
                r.send(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.time()
        self.assertIsNotNone(closed_at, "still open after 1.5 s of trickled header lines")
        self.assertGreaterEqual(closed_at - t0, 0.25)
        self.assertFalse(r.buf.startswith(b"HTTP/1.1 200"))

    def test_silent_connection_closed(self):
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        self.assertTrue(r.closed(wait=3))

    def test_idle_keep_alive_closed(self):
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        r.send(req("GET", "/health"))
        self.assertEqual(r.response().status, 200)
        time.sleep(0.1)
        r.send(req("GET", "/health"))  # well inside the idle window
        self.assertEqual(r.response().status, 200)
        t0 = time.time()
        self.assertTrue(r.closed(wait=3), "idle connection not closed")
        self.assertGreaterEqual(time.time() - t0, 0.2)

    def test_stalled_body_closed(self):
        r = Raw(self.server.port)
        self.addCleanup(r.close)
        r.send(req("POST", "/nope", [("Content-Length", "10")]) + b"abc")
        self.assertTrue(r.closed(wait=3))


class HttpThreads(harness.DbTestCase):
    server_env = {"TENANTD_THREADS": "2"}

    def test_two_loops_serve_concurrently(self):
        socks = [Raw(self.server.port) for _ in range(16)]
        try:
            for s in socks:
                s.send(req("GET", "/health"))
            for s in socks:
                self.assertEqual(s.response().status, 200)
        finally:
            for s in socks:
                s.close()

        def one(_):
            return self.server.get("/health").status

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            self.assertEqual(set(ex.map(one, range(64))), {200})
        self.assertIn("2 loops", self.server.log())


class HttpDefaultThreads(harness.DbTestCase):
    server_env = {"TENANTD_THREADS": "0"}

    def test_zero_threads_means_one_loop_per_core(self):
        import os
        n = len(os.sched_getaffinity(0))
        self.assertIn("with %d loop%s" % (n, "" if n == 1 else "s"), self.server.log())
        self.assertEqual(self.server.get("/health").status, 200)


class HttpShutdown(harness.DbTestCase):
    start_server = False

    def test_graceful_shutdown_with_request_in_flight(self):
        self._graceful_shutdown(threads=1)

    def test_graceful_shutdown_two_loops(self):
        self._graceful_shutdown(threads=2)

    def _graceful_shutdown(self, threads):
        srv = harness.Server(self.db_url, threads=threads).start()
        try:
            idle = Raw(srv.port)
            idle.send(req("GET", "/health"))
            self.assertEqual(idle.response().status, 200)

            r = Raw(srv.port)
            r.send(req("POST", "/nope", [("Content-Length", "10")]) + b"hello")
            time.sleep(0.2)
            srv.signal(signal.SIGTERM)
            # the idle keep-alive connection is closed by the drain
            self.assertTrue(idle.closed(wait=5))
            # no new connections: every loop closes its listener (polled:
            # each loop drains on its own thread, maybe a little later)
            deadline = time.time() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
                except ConnectionRefusedError:
                    break
                except ConnectionResetError:
                    pass  # a listener closed under our handshake (seen in CI): poll on
                self.assertLess(time.time(), deadline, "a listener still accepts")
                time.sleep(0.02)
            r.send(b"world")
            resp = r.response()
            self.assertEqual(resp.status, 404)
            self.assertEqual(resp.header("connection"), "close")
            self.assertTrue(r.closed())
            r.close()
            idle.close()
            srv.proc.wait(15)
            self.assertEqual(srv.proc.returncode, 0, srv.log())
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0)
        self.assertIn("draining", srv.log())

    def test_sigint_idle_server_exits_zero(self):
        srv = harness.Server(self.db_url).start()
        self.assertEqual(srv.stop(sig=signal.SIGINT), 0, srv.log())

    def test_drain_timeout_bounds_a_stuck_request(self):
        srv = harness.Server(self.db_url, env={"TENANTD_DRAIN_TIMEOUT_MS": "300"}).start()
        try:
            r = Raw(srv.port)
            r.send(req("POST", "/nope", [("Content-Length", "10")]) + b"hel")
            time.sleep(0.2)
            t0 = time.time()
            srv.signal(signal.SIGTERM)
            srv.proc.wait(10)
            self.assertLess(time.time() - t0, 5)
            self.assertEqual(srv.proc.returncode, 0, srv.log())
            self.assertTrue(r.closed())
            r.close()
        finally:
            srv.stop()


class HttpListen(harness.DbTestCase):
    start_server = False

    def test_ipv6_listen(self):
        port = harness.free_port()
        srv = harness.Server(self.db_url, env={"TENANTD_LISTEN": "[::1]:%d" % port})
        srv.port = port
        srv.start(wait=False)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    r = Raw(port, host="::1", family=socket.AF_INET6)
                    break
                except OSError:
                    self.assertIsNone(srv.proc.poll(), srv.log())
                    self.assertLess(time.time(), deadline)
                    time.sleep(0.05)
            r.send(req("GET", "/health"))
            self.assertEqual(r.response().status, 200)
            r.close()
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_port_taken_fails_clearly(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        try:
            srv = harness.Server(self.db_url, env={"TENANTD_LISTEN": "127.0.0.1:%d" % port})
            srv.start(wait=False)
            rc = srv.proc.wait(30)
            self.assertNotEqual(rc, 0)
            self.assertIn("cannot listen on 127.0.0.1:%d" % port, srv.log())
        finally:
            holder.close()

    def test_bad_listen_address_fails_clearly(self):
        srv = harness.Server(self.db_url, env={"TENANTD_LISTEN": "nonsense"})
        srv.start(wait=False)
        rc = srv.proc.wait(30)
        self.assertNotEqual(rc, 0)
        self.assertIn("TENANTD_LISTEN", srv.log())


if __name__ == "__main__":
    unittest.main()
