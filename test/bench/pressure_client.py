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
  pressure_client.py capacity PORT TOKEN PATH SECONDS CONCURRENCY
      Closed loop: CONCURRENCY keep-alive connections each send GET PATH
      (Bearer TOKEN) back to back for SECONDS; prints the answers per
      status, served/s (the 200s) and their p50/p99 in ms.
  pressure_client.py overload PORT TOKEN PATH SECONDS RATE
      Open loop: GET PATH at RATE a second for SECONDS, whatever the
      answers take (a request never waits for an earlier one; keep-alive
      connections are reused when free, new ones opened otherwise), so the
      offered load does not fall when the server slows down. Latency counts
      from the moment a request was due. Prints requests sent, answers per
      status (200, 503, other incl. timeouts), the 503 share, served/s and
      the served (200) p50/p99 in ms, and the 503s' p99.
"""
import asyncio
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


def get_request(path, token):
    return (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            "\r\n").encode()


async def http_get(conn, req, timeout):
    """One request on conn (reader, writer); returns (status, keep)."""
    r, w = conn
    w.write(req)
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length, keep = 0, True
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection" and v.strip().lower() == "close":
            keep = False
    if length:
        await asyncio.wait_for(r.readexactly(length), timeout)
    return status, keep


async def capacity(port, req, secs, conc):
    stats = {"lat": [], "codes": {}}
    end = time.perf_counter() + secs

    async def worker():
        conn = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                code, keep = await http_get(conn, req, 15)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                code, keep = 0, False
            stats["codes"][code] = stats["codes"].get(code, 0) + 1
            if code == 200:
                stats["lat"].append((time.perf_counter() - t0) * 1000)
            if not keep:
                conn[1].close()
                conn = await asyncio.open_connection("127.0.0.1", port)
        conn[1].close()

    await asyncio.gather(*(worker() for _ in range(conc)))
    lat, codes = stats["lat"], stats["codes"]
    print(f"ok={codes.get(200, 0)} s503={codes.get(503, 0)} "
          f"other={sum(v for k, v in codes.items() if k not in (200, 503))} "
          f"served_per_s={len(lat) / secs:.1f} p50_ms={pct(lat, 0.5):.2f} p99_ms={pct(lat, 0.99):.2f}")


async def overload(port, req, secs, rate):
    idle, lat_ok, lat_503, codes, tasks = [], [], [], {}, []

    async def one(due):
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            code, keep = await http_get(conn, req, 15)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            code, keep = 0, False
        ms = (time.perf_counter() - due) * 1000
        codes[code] = codes.get(code, 0) + 1
        (lat_ok if code == 200 else lat_503 if code == 503 else []).append(ms)
        if conn is not None:
            if keep:
                idle.append(conn)
            else:
                conn[1].close()

    start = time.perf_counter()
    n = int(secs * rate)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    for _, w in idle:
        w.close()
    sent = sum(codes.values())
    print(f"rate={rate:.0f} sent={sent} ok={codes.get(200, 0)} s503={codes.get(503, 0)} "
          f"other={sum(v for k, v in codes.items() if k not in (200, 503))} "
          f"share_503={codes.get(503, 0) / max(sent, 1):.3f} "
          f"served_per_s={len(lat_ok) / secs:.1f} served_p50_ms={pct(lat_ok, 0.5):.1f} "
          f"served_p99_ms={pct(lat_ok, 0.99):.1f} p99_503_ms={pct(lat_503, 0.99):.1f}")


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
    elif mode in ("capacity", "overload"):
        req = get_request(sys.argv[4], sys.argv[3])
        secs, n = float(sys.argv[5]), float(sys.argv[6])
        if mode == "capacity":
            asyncio.run(capacity(port, req, secs, int(n)))
        else:
            asyncio.run(overload(port, req, secs, n))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
