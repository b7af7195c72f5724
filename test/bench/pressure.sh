#!/usr/bin/env bash
# Under pressure (issue 11): tenantd against nginx when the load is not
# polite.
#
#   test/bench/pressure.sh
#   BENCH_IDLE_CONNS=5000 test/bench/pressure.sh
#
# Phases, each with tenantd (TENANTD_THREADS=1) and nginx (worker_processes
# 1) side by side in the same run, on free ports of 127.0.0.1:
#   1. idle: BENCH_IDLE_CONNS (default 10000) keep-alive connections, each
#      after one GET /health, stay idle; the server process's RSS growth
#      per connection (KiB), read from /proc/PID/status.
#   2. full: the connection table (TENANTD_MAX_CONNECTIONS, nginx's
#      worker_connections) is set to BENCH_IDLE_CONNS and filled with idle
#      keep-alive connections; then for BENCH_PROBE_SECONDS (default 5)
#      paced probes (BENCH_PROBE_RATE a second, default 100), each a
#      GET /health on a new connection: probes that got 200, failures, p99.
#   3. logins during a /health flood: measured by test/bench/login_pressure.sh.
#   4. overload of the records GET (issue 11 item 4), tenantd only: an org
#      with BENCH_OVERLOAD_RECORDS records (default 20000) and a
#      GET .../records?filter= that matches none of them (a scan of them
#      all, ~10-30 ms), served by one loop with one database connection
#      (TENANTD_DB_POOL_SIZE=1, TENANTD_DB_PIPELINE_DEPTH=2). First its
#      capacity in this run without shedding (closed loop, 8 connections,
#      BENCH_CAPACITY_SECONDS, default 8): served/s = 1x. Then an open loop
#      (requests at a fixed rate whatever the answers take) at 2x and 5x of
#      it for BENCH_OVERLOAD_SECONDS (default 10) each, without shedding
#      (TENANTD_DB_SHED_WAIT_MS=0: requests queue up to
#      TENANTD_DB_WAIT_TIMEOUT_MS, 5 s) and with it (BENCH_SHED_MS, default
#      100): the served p99, the 503 share and served/s.
# BENCH_PHASES (default "1 2 4") picks the phases to run.
# The client is test/bench/pressure_client.py (Python, standard library).
# It is a measurement, not a test: it fails only when a server cannot be
# started. Needs the release build (built here if stale), the private
# PostgreSQL (started here, stopped at exit if this script started it),
# nginx (nginx-light) and a file descriptor limit above BENCH_IDLE_CONNS + 200 (each process).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
nidle=${BENCH_IDLE_CONNS:-10000}
probe_s=${BENCH_PROBE_SECONDS:-5}
probe_rate=${BENCH_PROBE_RATE:-100}
phases=${BENCH_PHASES:-1 2 4}
ov_records=${BENCH_OVERLOAD_RECORDS:-20000}
cap_s=${BENCH_CAPACITY_SECONDS:-8}
ov_s=${BENCH_OVERLOAD_SECONDS:-10}
shed_ms=${BENCH_SHED_MS:-100}

if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((nidle + 200)) ]; then
    ulimit -n $((nidle + 200)) 2>/dev/null || {
        echo "bench: needs ulimit -n >= $((nidle + 200)) (have $(ulimit -n))" >&2
        exit 1
    }
fi

./deps/install.sh
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || ./deps/install.sh nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cmake --preset release >/dev/null
cmake --build --preset release --target tenantd -j "$(nproc)" >/dev/null
BIN=$here/build/release/tenantd
CLIENT=$here/test/bench/pressure_client.py

tmp=$(mktemp -d /tmp/tenantd-bench.XXXXXX)
chmod 755 "$tmp"
started_pg=
tenantd_pid=
nginx_pid=
dbname=bench_$$
cleanup() {
    set +e
    [ -n "$tenantd_pid" ] && kill "$tenantd_pid" 2>/dev/null && wait "$tenantd_pid" 2>/dev/null
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    [ -n "$started_pg" ] && ./deps/pg.sh stop
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_health() {
    for _ in $(seq 100); do
        if curl -fsS --max-time 1 "http://127.0.0.1:$1/health" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "bench: no answer from 127.0.0.1:$1/health" >&2
    return 1
}

./deps/pg.sh status >/dev/null 2>&1 || started_pg=1
./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"

# start_tenantd MAX_CONNECTIONS: sets tport and tenantd_pid.
start_tenantd() {
    tport=$(free_port)
    DATABASE_URL=$db_url TENANTD_LISTEN=127.0.0.1:$tport TENANTD_THREADS=1 TENANTD_DEV=1 \
        TENANTD_JOB_WORKERS=0 TENANTD_LOG_LEVEL=error TENANTD_MAX_CONNECTIONS=$1 \
        TENANTD_MAX_CONNECTIONS_PER_IP=0 TENANTD_IDLE_TIMEOUT_MS=120000 \
        "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
    tenantd_pid=$!
    wait_health "$tport" || { cat "$tmp/tenantd.log" >&2; exit 1; }
}

stop_tenantd() {
    kill "$tenantd_pid" && wait "$tenantd_pid" || true
    tenantd_pid=
}

# start_nginx WORKER_CONNECTIONS: sets nport, nginx_pid and nginx_worker.
start_nginx() {
    nport=$(free_port)
    mkdir -p "$tmp/nginx"
    {
        if [ "$(id -u)" = 0 ]; then echo 'user root;'; fi
        cat <<CONF
worker_processes 1;
worker_rlimit_nofile $((nidle + 200));
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections $1; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$nport;
        location = /health {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
CONF
    } >"$tmp/nginx/nginx.conf"
    "$NGINX" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" &
    nginx_pid=$!
    wait_health "$nport" || { cat "$tmp/nginx/error.log" >&2; exit 1; }
    nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
}

stop_nginx() {
    kill "$nginx_pid" && wait "$nginx_pid" || true
    nginx_pid=
}

field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }

has_phase() { [[ " $phases " == *" $1 "* ]]; }

if has_phase 1; then
echo "== 1. RSS per idle keep-alive connection ($nidle connections)"
start_tenantd $((nidle + 1000))
t_idle=$(timeout 300 python3 "$CLIENT" idle "$tport" "$tenantd_pid" "$nidle")
stop_tenantd
start_nginx $((nidle + 1000))
n_idle=$(timeout 300 python3 "$CLIENT" idle "$nport" "$nginx_worker" "$nidle")
stop_nginx
echo "tenantd: $t_idle"
echo "nginx:   $n_idle"
tk=$(field kib_per_conn "$t_idle")
nk=$(field kib_per_conn "$n_idle")
awk -v t="$tk" -v n="$nk" 'BEGIN { printf "idle KiB/conn: tenantd %.3f, nginx %.3f, ratio %.2f (target <= 2)\n", t, n, (n > 0 ? t / n : 0) }'

fi

if has_phase 2; then
echo "== 2. table full of idle keep-alive connections: probes for ${probe_s}s at ${probe_rate}/s"
start_tenantd "$nidle"
t_full=$(timeout 300 python3 "$CLIENT" full "$tport" "$nidle" "$probe_s" "$probe_rate")
stop_tenantd
start_nginx "$nidle"
n_full=$(timeout 300 python3 "$CLIENT" full "$nport" "$nidle" "$probe_s" "$probe_rate")
stop_nginx
echo "tenantd: $t_full"
echo "nginx:   $n_full"

fi

echo "== 3. logins during a /health flood: see test/bench/login_pressure.sh"

# start_tenantd_db SHED_MS: one loop, one database connection (so that the
# database, not the loop, is what runs out), shedding after SHED_MS.
start_tenantd_db() {
    tport=$(free_port)
    DATABASE_URL=$db_url TENANTD_LISTEN=127.0.0.1:$tport TENANTD_THREADS=1 TENANTD_DEV=1 \
        TENANTD_JOB_WORKERS=0 TENANTD_LOG_LEVEL=error TENANTD_MAX_CONNECTIONS_PER_IP=0 \
        TENANTD_DB_POOL_SIZE=1 TENANTD_DB_PIPELINE_DEPTH=2 TENANTD_DB_SHED_WAIT_MS="$1" \
        TENANTD_ARGON2_M_KIB=1024 TENANTD_ARGON2_T=1 TENANTD_JWT_SECRET="$jwt_secret" \
        "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
    tenantd_pid=$!
    wait_health "$tport" || { cat "$tmp/tenantd.log" >&2; exit 1; }
}

if has_phase 4; then
echo "== 4. records GET overload: capacity, then 2x and 5x of it (open loop, ${ov_s}s each)"
# One secret for the restarts below, so that the access token stays valid.
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start_tenantd_db 0
# An org with ov_records records (batches of 1000); prints its access token.
token=$(timeout 300 python3 - "$tport" "$ov_records" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c.request("POST", "/v1/orgs", json.dumps({"name": "Overload", "admin": {
    "email": "admin@overload.example.com", "password": "correct horse battery"}}),
    {"Content-Type": "application/json"})
r = c.getresponse()
doc = json.loads(r.read())
assert r.status == 201, doc
h = {"Authorization": "Bearer " + doc["access_token"], "Content-Type": "application/json"}
for k in range(0, n, 1000):
    body = json.dumps({"records": [{"kind": "item", "n": k + i, "text": f"lorem ipsum {k + i}"}
                                   for i in range(min(1000, n - k))]})
    c.request("POST", "/v1/collections/items/records/batch", body, h)
    r = c.getresponse()
    b = r.read()
    assert r.status == 201, b[:300]
print(doc["access_token"])
PY
)
ov_path='/v1/collections/items/records?filter=%7B%22kind%22%3A%22none%22%7D'
# Statistics now, so that autovacuum does not change the plan mid-run.
"${PGBIN:-/usr/lib/postgresql/15/bin}/psql" "$db_url" -qAt -c "VACUUM ANALYZE" >/dev/null
# Capacity without shedding (8 connections keep the one database
# connection's pipeline full; none waits long enough for a 503).
cap=$(timeout 120 python3 "$CLIENT" capacity "$tport" "$token" "$ov_path" "$cap_s" 8)
echo "capacity (closed loop, 8 connections, ${cap_s}s): $cap"
one_x=$(field served_per_s "$cap")
for shed in 0 "$shed_ms"; do
    if [ "$shed" != 0 ]; then
        stop_tenantd
        start_tenantd_db "$shed"
    fi
    for m in 2 5; do
        rate=$(awk -v c="$one_x" -v m="$m" 'BEGIN { printf "%.1f", c * m }')
        res=$(timeout 120 python3 "$CLIENT" overload "$tport" "$token" "$ov_path" "$ov_s" "$rate")
        echo "${m}x, TENANTD_DB_SHED_WAIT_MS=$shed: $res"
    done
done
stop_tenantd
fi
