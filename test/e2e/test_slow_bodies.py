"""Slow and padded request bodies (issue 10, item 5): the whole body must
arrive within TENANTD_BODY_TIMEOUT_MS (a byte now and then does not keep a
connection forever), and chunk extensions, which llhttp 8.1 accepts without
a bound, count against the header limit."""
import socket
import time

import harness


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_all(s, timeout):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except socket.timeout:
        pass
    except ConnectionResetError:
        pass
    return data


class SlowBodiesTest(harness.DbTestCase):
    server_env = {"TENANTD_BODY_TIMEOUT_MS": "1500", "TENANTD_IDLE_TIMEOUT_MS": "1000"}

    def test_trickled_body_is_bounded_in_total(self):
        s = connect(self.server.port)
        try:
            s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            t0 = time.time()
            closed_at = None
            # A byte every 300 ms: each read came within the idle timeout.
            for _ in range(20):
                try:
                    s.sendall(b"a")
                except OSError:
                    closed_at = time.time() - t0
                    break
                s.settimeout(0.3)
                try:
                    if s.recv(65536) == b"":
                        closed_at = time.time() - t0
                        break
                except socket.timeout:
                    pass
                except ConnectionResetError:
                    closed_at = time.time() - t0
                    break
            self.assertIsNotNone(closed_at, "the trickled body kept the connection for 6 s")
            self.assertLess(closed_at, 3.5)
        finally:
            s.close()
        self.assertEqual(self.server.get("/health").status, 200)

    def test_body_in_time_is_served(self):
        s = connect(self.server.port)
        try:
            s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            time.sleep(0.5)
            s.sendall(b"cd")
            data = read_all(s, 2)
            self.assertTrue(data.startswith(b"HTTP/1.1 405 "), data[:80])
        finally:
            s.close()

    def test_chunk_extensions_are_bounded(self):
        s = connect(self.server.port)
        try:
            s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;n=")
            try:
                for _ in range(64):  # 64 KiB of one chunk's extension value
                    s.sendall(b"v" * 1024)
            except OSError:
                pass  # closed after the answer: fine
            data = read_all(s, 3)
            self.assertTrue(data.startswith(b"HTTP/1.1 431 "), data[-300:])
        finally:
            s.close()
        # Short extensions stay accepted.
        s = connect(self.server.port)
        try:
            s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"2;name=value\r\nab\r\n0\r\n\r\n")
            data = read_all(s, 2)
            self.assertTrue(data.startswith(b"HTTP/1.1 405 "), data[:80])
        finally:
            s.close()


if __name__ == "__main__":
    import unittest
    unittest.main()
