"""Logins keep a share of the CPU while cheap requests saturate the server
(issue 11 item 3; SECURITY.md). Idle-priority hashers alone get no CPU
while the loops are busy; the boost threads (password.c) must let logins
complete during a flood of GET /health. Loopback only, bounded in time."""
import re
import shutil
import subprocess
import sys
import threading
import time

import harness

PW = "correct horse battery"
FLOOD_S = 4.0
FLOODERS = 3  # processes, each pipelining /health on one keep-alive connection

FLOOD_CODE = r"""
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 32
end = time.monotonic() + secs
n = 0
while time.monotonic() < end:
    s.sendall(req)
    got = 0
    while got < 32:
        b = s.recv(65536)
        if not b:
            sys.exit(1)
        got += b.count(b"HTTP/1.1 200")
    n += 32
print(n)
"""


class LoginFloodTest(harness.DbTestCase):
    # Default argon2id parameters: the real cost of a login.
    server_env = {"TENANTD_LOGIN_LIMIT": "0", "TENANTD_THREADS": "2"}

    def test_logins_complete_during_health_flood(self):
        harness.seed_org(self.pg, self.dbname, "flood", [("fay@flood.io", PW, "admin")])
        # Warm up (and re-hash the seeded weak hash to the default cost).
        st, b, _ = self.server.json("POST", "/v1/auth/login",
                                    {"email": "fay@flood.io", "password": PW})
        self.assertEqual(st, 200, b)
        time.sleep(0.5)

        if shutil.which("wrk"):
            flooders = [subprocess.Popen(
                ["wrk", "-t2", "-c8", f"-d{int(FLOOD_S)}s",
                 f"http://127.0.0.1:{self.server.port}/health"],
                stdout=subprocess.PIPE, text=True)]
        else:
            flooders = [subprocess.Popen([sys.executable, "-c", FLOOD_CODE,
                                          str(self.server.port), str(FLOOD_S)],
                                         stdout=subprocess.PIPE, text=True)
                        for _ in range(FLOODERS)]
        t0 = time.monotonic()
        done = []
        errors = []

        def logins():
            while time.monotonic() - t0 < FLOOD_S - 0.2:
                try:
                    st, b, _ = self.server.json("POST", "/v1/auth/login",
                                                {"email": "fay@flood.io", "password": PW})
                except OSError as e:  # a timeout: starved
                    errors.append(repr(e))
                    return
                if st != 200:
                    errors.append((st, b))
                    return
                done.append(time.monotonic() - t0)

        time.sleep(0.3)  # the flood is on
        users = [threading.Thread(target=logins) for _ in range(2)]
        for u in users:
            u.start()
        for u in users:
            u.join(60)
        counts = []
        for f in flooders:
            out, _ = f.communicate(timeout=60)
            self.assertEqual(f.returncode, 0)
            m = re.search(r"(\d+) requests in", out)
            counts.append(int(m.group(1)) if m else int(out))
        in_flood = [t for t in done if t <= FLOOD_S]
        print(f"\n/health answered during the flood: {sum(counts)}; logins completed "
              f"in the flood: {len(in_flood)}", file=sys.stderr)
        self.assertEqual(errors, [])
        # Raw argon2id (default cost) is ~20-40 ms per hash and core; with
        # starving hashers this is 0-11 logins (seen), with the boost 25-56.
        self.assertGreaterEqual(len(in_flood), 15, done)
