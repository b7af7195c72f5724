#!/usr/bin/env python3
"""Client side of test/bench/pressure.sh (standard library only).

  pressure_client.py idle PORT PID N
      Opens N keep-alive connections to 127.0.0.1:PORT, each does one
      GET /health and then stays idle; prints the RSS of process PID before
      and after and the growth per connection (KiB), then closes them.
  pressure_client.py full PORT N SECONDS RATE
      Fills the server with N idle keep-alive connections (as above, but
      without the RSS figures), then for SECONDS sends paced probes
      (GET /health on a new connection, RATE a second); prints the probes
      that got 200, those that did not, and the p50/p99 latency in ms.
"""
import selectors
import socket
import sys
import time

GET = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_idle(port, n):
    """N connections that each got one answer; the rest of the answers are
    read in a select loop so that the connects are not serialized."""
    socks, pending = [], {}
    sel = selectors.DefaultSelector()
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        sel.register(s, selectors.EVENT_WRITE)
        pending[s] = b""
        socks.append(s)
        # Keep the accept queue short: drain what is ready every 256.
        if i % 256 == 255 or i == n - 1:
            deadline = time.time() + 30
            while pending and (i == n - 1 or len(pending) > 64) and time.time() < deadline:
                for key, ev in sel.select(timeout=1):
                    s = key.fileobj
                    if ev & selectors.EVENT_WRITE:
                        try:
                            s.send(GET)
                        except OSError:
                            sel.unregister(s)
                            del pending[s]
                            continue
                        sel.modify(s, selectors.EVENT_READ)
                    else:
                        try:
                            b = s.recv(4096)
                        except OSError:
                            b = b""
                        if not b:
                            sel.unregister(s)
                            del pending[s]
                            continue
                        pending[s] += b
                        if b"\r\n\r\n" in pending[s]:
                            sel.unregister(s)
                            del pending[s]
    ok = sum(1 for s in socks if s.fileno() >= 0)
    return socks, ok


def probe(port, timeout=2.0):
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(GET)
            data = b""
            while b"\r\n" not in data:
                b = s.recv(4096)
                if not b:
                    break
                data += b
            ok = data.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    return ok, (time.perf_counter() - t0) * 1000


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    mode = sys.argv[1]
    port = int(sys.argv[2])
    if mode == "idle":
        pid, n = int(sys.argv[3]), int(sys.argv[4])
        time.sleep(0.5)
        before = rss_kib(pid)
        socks, _ = open_idle(port, n)
        time.sleep(1.0)
        after = rss_kib(pid)
        print(f"rss_before_kib={before} rss_after_kib={after} conns={n} "
              f"kib_per_conn={(after - before) / n:.3f}")
        for s in socks:
            s.close()
    elif mode == "full":
        n, secs, rate = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        socks, _ = open_idle(port, n)
        time.sleep(0.5)
        good, bad, lat = 0, 0, []
        end = time.time() + secs
        nxt = time.time()
        while time.time() < end:
            ok, ms = probe(port)
            lat.append(ms)
            good += ok
            bad += not ok
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.time()))
        print(f"probes_ok={good} probes_failed={bad} p50_ms={pct(lat, 0.5):.2f} "
              f"p99_ms={pct(lat, 0.99):.2f}")
        for s in socks:
            s.close()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
