#!/usr/bin/env python3
"""What the shared rate limits cost (README, Deploys, "Limits shared by all
instances"): the latency of a login with the login limit on (two takes in
PostgreSQL) and off, and the throughput of an authenticated GET with the
per-org limit on (leases) and off, on one tenantd.

    BENCH_BIN=build/release/tenantd DATABASE_URL=... test/bench/limits_cost.py

Needs wrk. Short runs (BENCH_DURATION seconds of wrk, default 5)."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
os.environ.setdefault("TENANTD_BIN", os.environ.get("BENCH_BIN", "build/release/tenantd"))
import harness  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "5")
BASE = {"TENANTD_JWT_SECRET": "bench-limits-" + "b" * 32, "TENANTD_JOB_WORKERS": "0",
        "TENANTD_ARGON2_M_KIB": "1024", "TENANTD_ARGON2_T": "1", "TENANTD_LOG_LEVEL": "warn"}


def serve(db_url, **env):
    e = dict(BASE)
    e.update(env)
    return harness.Server(db_url, env=e, args=("serve",)).start()


def login_ms(s, email, n=300):
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, doc, _ = s.json("POST", "/v1/auth/login", {"email": email,
                                                            "password": "correct horse battery"})
        t.append((time.perf_counter() - t0) * 1000)
        assert status == 200, doc
    t.sort()
    return sum(t) / n, t[n // 2]


def wrk(port, token):
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{DURATION}s", "-H",
                          f"Authorization: Bearer {token}",
                          f"http://127.0.0.1:{port}/v1/auth/me"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, int(non2xx.group(1)) if non2xx else 0


def main():
    pg = harness.cluster()
    db = pg.create_db()
    url = pg.url(db)
    try:
        r = harness.run_tenantd(["migrate", "up"], url)
        assert r.returncode == 0, r.stderr
        for name, env in (("login limit off", {"TENANTD_LOGIN_LIMIT": "0"}),
                          ("login limit on ", {"TENANTD_LOGIN_LIMIT": "1000000"})):
            s = serve(url, TENANTD_SIGNUP_LIMIT="0", **env)
            try:
                slug = "b" + str(int(time.time() * 1000))
                st, doc, _ = s.json("POST", "/v1/orgs", {"name": slug, "slug": slug, "admin": {
                    "email": f"a@{slug}.test", "password": "correct horse battery"}})
                assert st == 201, doc
                mean, p50 = login_ms(s, f"a@{slug}.test")
                print(f"{name}: login mean {mean:.3f} ms, p50 {p50:.3f} ms (argon2 m=1 MiB t=1)")
            finally:
                s.stop()
        for name, env in (("org limit off", {"TENANTD_ORG_RATE_LIMIT": "0"}),
                          ("org limit on ", {"TENANTD_ORG_RATE_LIMIT": "100000000"})):
            s = serve(url, TENANTD_SIGNUP_LIMIT="0", TENANTD_THREADS="1", **env)
            try:
                slug = "w" + str(int(time.time() * 1000))
                st, doc, _ = s.json("POST", "/v1/orgs", {"name": slug, "slug": slug, "admin": {
                    "email": f"a@{slug}.test", "password": "correct horse battery"}})
                assert st == 201, doc
                rps, bad = wrk(s.port, doc["access_token"])
                m = s.get("/metrics").body.decode()
                takes = re.findall(r'tenantd_rate_limit_takes_total\{source="(\w+)"\} (\d+)', m)
                print(f"{name}: GET /v1/auth/me {rps:.0f} req/s ({bad} non-2xx), takes {takes}")
            finally:
                s.stop()
    finally:
        pg.drop_db(db)


if __name__ == "__main__":
    main()
