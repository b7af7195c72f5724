"""A full connection table (issue 11, item 1): idle keep-alive connections
make room for new clients, oldest first; only with none idle is a new client
refused (503); connections in the middle of a request are never taken; the
per-address cap refuses only the address that reached it."""
import socket
import time

import harness

MAX = 8
GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def read_answer(s, timeout=5):
    """Reads one answer (head and Content-Length body); returns (status, bytes)."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(65536)
        if not b:
            raise EOFError(f"closed after {data!r}")
        data += b
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        b = s.recv(65536)
        if not b:
            raise EOFError("closed mid-body")
        rest += b
    return int(head.split(b" ")[1]), head


def closed_by_server(s, timeout=2.0):
    """True when the server closed s (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


class ConnectionTableTest(harness.DbTestCase):
    server_env = {"TENANTD_MAX_CONNECTIONS": str(MAX), "TENANTD_MAX_CONNECTIONS_PER_IP": "0"}

    def connect(self, source="127.0.0.1"):
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=5,
                                        source_address=(source, 0))

    def idle_keepalive(self):
        s = self.connect()
        s.sendall(GET)
        self.assertEqual(read_answer(s)[0], 200)
        return s

    def mid_request(self):
        s = self.connect()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers not complete
        return s

    def test_oldest_idle_makes_room_mid_request_untouched(self):
        idle = []
        for _ in range(5):
            idle.append(self.idle_keepalive())
            time.sleep(0.02)  # a clear order
        busy = [self.mid_request() for _ in range(MAX - 5)]
        time.sleep(0.2)
        try:
            # The table is full: a new client is served, the oldest idle
            # connection closed for it.
            s = self.connect()
            s.sendall(GET)
            self.assertEqual(read_answer(s)[0], 200)
            s.close()
            self.assertTrue(closed_by_server(idle[0]), "the oldest idle connection was closed")
            for other in idle[1:]:
                self.assertFalse(closed_by_server(other, 0.2))
            # Requests in progress were not touched: they complete.
            for b in busy:
                b.sendall(b"\r\n")
                self.assertEqual(read_answer(b)[0], 200)
            # The other idle ones still serve.
            for other in idle[1:]:
                other.sendall(GET)
                self.assertEqual(read_answer(other)[0], 200)
        finally:
            for x in idle + busy:
                x.close()

    def test_refused_only_when_none_is_idle(self):
        time.sleep(0.3)  # earlier tests' connections closed
        busy = [self.mid_request() for _ in range(MAX)]
        time.sleep(0.2)
        try:
            s = self.connect()
            s.sendall(GET)
            status, head = read_answer(s)
            self.assertEqual(status, 503)
            self.assertIn(b"Retry-After", head)
            s.close()
            for b in busy:
                b.sendall(b"\r\n")
                self.assertEqual(read_answer(b)[0], 200)
        finally:
            for x in busy:
                x.close()


class IdleSweepTest(harness.DbTestCase):
    """A kept-alive connection gives its request state back while it waits
    and takes it again for the next request; the loop's sweep closes it
    after the idle timeout, counted from its last answer."""
    server_env = {"TENANTD_IDLE_TIMEOUT_MS": "600"}

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=5)

    def test_idle_closed_busy_kept(self):
        idle, busy = self.connect(), self.connect()
        try:
            for s in (idle, busy):
                s.sendall(GET)
                self.assertEqual(read_answer(s)[0], 200)
            t0 = time.time()
            closed_at = None
            while time.time() - t0 < 2.0:
                busy.sendall(GET)  # a request every 200 ms or so
                self.assertEqual(read_answer(busy)[0], 200)
                if closed_at is None and closed_by_server(idle, 0.2):
                    closed_at = time.time() - t0
            self.assertIsNotNone(closed_at, "the idle connection was never closed")
            self.assertGreater(closed_at, 0.3)
            self.assertLess(closed_at, 1.6)
        finally:
            idle.close()
            busy.close()


class PerAddressCapTest(harness.DbTestCase):
    server_env = {"TENANTD_MAX_CONNECTIONS_PER_IP": "3"}

    def connect(self, source):
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=5,
                                        source_address=(source, 0))

    def test_cap_refuses_the_capped_address_only(self):
        time.sleep(0.3)  # the start-up probes' connections closed
        held = []
        try:
            for _ in range(3):
                s = self.connect("127.0.0.1")
                s.sendall(GET)
                self.assertEqual(read_answer(s)[0], 200)
                held.append(s)
            s = self.connect("127.0.0.1")
            s.sendall(GET)
            self.assertEqual(read_answer(s)[0], 503)
            s.close()
            other = self.connect("127.0.0.2")
            other.sendall(GET)
            self.assertEqual(read_answer(other)[0], 200)
            other.close()
            # One closed: the address gets a place again.
            held.pop().close()
            time.sleep(0.2)
            s = self.connect("127.0.0.1")
            s.sendall(GET)
            self.assertEqual(read_answer(s)[0], 200)
            held.append(s)
        finally:
            for x in held:
                x.close()


if __name__ == "__main__":
    import unittest
    unittest.main()
