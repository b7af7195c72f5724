"""/metrics beyond requests (issue 14, item 7): the password hash queue
(depth, refusals), connections refused at accept (by reason), rate-limit
refusals by limit, and the process_* series of Prometheus clients, each
seen moving."""
import concurrent.futures
import os
import re
import socket
import threading
import time
import unittest

import harness
from test_users import bearer, signup

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def scrape(server):
    r = server.get("/metrics")
    assert r.status == 200, r.status
    return r.body.decode()


def value(text, series):
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    if not m:
        raise AssertionError(f"{series} not in /metrics")
    return float(m.group(1))


def read_status(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data else None


class ProcessAndHashQueue(harness.DbTestCase):
    # One slow hashing thread and a queue of 2: a burst of logins queues,
    # then overflows (503).
    server_env = {"TENANTD_HASH_THREADS": "1", "TENANTD_HASH_QUEUE": "2",
                  "TENANTD_HASH_BOOST_MS": "0",
                  "TENANTD_ARGON2_M_KIB": "65536", "TENANTD_ARGON2_T": "3",
                  "TENANTD_LOGIN_LIMIT": "0", "TENANTD_ORG_RATE_LIMIT": "3"}

    def test_process_series(self):
        m = scrape(self.server)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                     "process_start_time_seconds"):
            self.assertIn(f"# TYPE {name} ", m)
        rss = value(m, "process_resident_memory_bytes")
        self.assertGreater(rss, 1 << 20)
        self.assertLess(rss, value(m, "process_virtual_memory_bytes"))
        with open(f"/proc/{self.server.proc.pid}/status") as f:
            vmrss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
        self.assertLess(abs(rss - vmrss), max(8 << 20, vmrss // 2))
        fds = len(os.listdir(f"/proc/{self.server.proc.pid}/fd"))
        self.assertLess(abs(value(m, "process_open_fds") - fds), 8)
        start = value(m, "process_start_time_seconds")
        self.assertLess(abs(start - os.stat(f"/proc/{self.server.proc.pid}").st_mtime), 60)
        self.assertLessEqual(start, time.time())
        # More open connections show as more descriptors.
        held = [socket.create_connection(("127.0.0.1", self.server.port)) for _ in range(10)]
        try:
            for s in held:
                s.sendall(GET)
                self.assertEqual(read_status(s), 200)
            self.assertGreaterEqual(value(scrape(self.server), "process_open_fds"),
                                    value(m, "process_open_fds") + 9)
        finally:
            for s in held:
                s.close()

    def test_hash_queue_depth_refusals_and_cpu(self):
        before = scrape(self.server)
        self.assertEqual(value(before, "tenantd_hash_queue_capacity"), 2)
        depth_seen = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                depth_seen.append(value(scrape(self.server), "tenantd_hash_queue_depth"))
                time.sleep(0.01)

        def login(i):
            # Unknown accounts: each costs a full hash with the configured
            # (slow) parameters.
            return self.server.json("POST", "/v1/auth/login", {
                "email": f"nobody{i}@queue.test", "password": "whatever password"})[0]

        w = threading.Thread(target=watch)
        w.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                statuses = list(ex.map(login, range(8)))
        finally:
            stop.set()
            w.join()
        self.assertIn(503, statuses)
        self.assertIn(401, statuses)
        after = scrape(self.server)
        self.assertGreater(max(depth_seen), 0, "the queue was seen holding work")
        self.assertEqual(value(after, "tenantd_hash_queue_depth"), 0)
        self.assertEqual(value(after, "tenantd_hash_queue_refusals_total")
                         - value(before, "tenantd_hash_queue_refusals_total"),
                         statuses.count(503))
        self.assertGreater(value(after, "process_cpu_seconds_total"),
                           value(before, "process_cpu_seconds_total"))

    def test_rate_limit_refusals_by_limit(self):
        org = signup(self.server)
        before = scrape(self.server)
        statuses = [self.server.get("/v1/auth/me", bearer(org["access_token"])).status
                    for _ in range(6)]
        self.assertEqual(statuses.count(429), 3, statuses)
        after = scrape(self.server)
        self.assertEqual(value(after, 'tenantd_rate_limited_total{limit="org"}')
                         - value(before, 'tenantd_rate_limited_total{limit="org"}'), 3)
        self.assertEqual(value(after, 'tenantd_rate_limited_total{limit="login_ip"}'),
                         value(before, 'tenantd_rate_limited_total{limit="login_ip"}'))


class ConnectionRefusalsPerAddress(harness.DbTestCase):
    server_env = {"TENANTD_MAX_CONNECTIONS_PER_IP": "2"}

    def test_per_ip_refusal_counted(self):
        time.sleep(0.3)  # the start-up probes' connections closed
        before = value(scrape(self.server),
                       'tenantd_http_connections_refused_total{reason="per_ip"}')
        time.sleep(0.2)
        held = []
        try:
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
                s.sendall(GET)
                self.assertEqual(read_status(s), 200)
                held.append(s)
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
                s.sendall(GET)
                self.assertEqual(read_status(s), 503)
                s.close()
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        m = scrape(self.server)
        self.assertEqual(value(m, 'tenantd_http_connections_refused_total{reason="per_ip"}')
                         - before, 3)
        self.assertEqual(
            value(m, 'tenantd_http_connections_refused_total{reason="max_connections"}'), 0)


class ConnectionRefusalsTableFull(harness.DbTestCase):
    server_env = {"TENANTD_MAX_CONNECTIONS": "4", "TENANTD_MAX_CONNECTIONS_PER_IP": "0",
                  "TENANTD_THREADS": "1"}

    def test_full_table_refusal_counted(self):
        time.sleep(0.3)
        busy = []
        try:
            for _ in range(4):  # mid-request: none can be closed to make room
                s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                busy.append(s)
            time.sleep(0.2)
            s = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
            s.sendall(GET)
            self.assertEqual(read_status(s), 503)
            s.close()
            for b in busy:
                b.sendall(b"\r\n")
                self.assertEqual(read_status(b), 200)
        finally:
            for b in busy:
                b.close()
        time.sleep(0.2)
        m = scrape(self.server)
        self.assertEqual(
            value(m, 'tenantd_http_connections_refused_total{reason="max_connections"}'), 1)


if __name__ == "__main__":
    unittest.main()
