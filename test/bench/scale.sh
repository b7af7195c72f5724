#!/usr/bin/env bash
# Tenant scale: how records, signup and memory hold up as orgs grow from 10
# to 10,000 on one PostgreSQL.
#
#   test/bench/scale.sh
#
# Orgs are signed up through POST /v1/orgs (cheap argon2 parameters, so
# signup measures schema work) and get BENCH_RECORDS records each (default
# 5, inserted with SQL; ids md5("<schema>:<n>")). At each milestone of
# BENCH_MILESTONES (default "10 100 1000 10000"):
#   - signup p50/p99: the last min(50, new orgs) signups of the milestone,
#     one at a time (the others are made 8 at a time, not timed);
#   - GET /v1/collections/items/records/{id}, wrk -c64, and POST
#     /v1/collections/bench/records, wrk -c16, each request on a random org
#     (Lua scripts): req/s, p50, p99. Each is measured warm, as a server
#     that has run a while serves: before it, the same load runs in
#     BENCH_WARMUP-second rounds until a round's statement cache misses are
#     under 1% of its requests (at most BENCH_WARMUP_MAX seconds). A cold
#     (connection, org) pair costs a statement's first Parse and plan and its
#     tables' catalog entries (~0.5 ms of the backend); at 10,000 orgs a
#     single 5 s warm-up left ~5% of them cold and the measured POST ran
#     one third cold. The warm-up seconds are in the table;
#   - PostgreSQL PSS (summed over its processes, /proc/<pid>/smaps_rollup)
#     and tenantd's RSS, after the loads;
#   - the pool's statement cache hits/misses and the most schemas one backend
#     has seen (/metrics; "-" when the binary has no such metrics).
# At the end, `tenantd migrate down 1 --tenant` and `migrate up` over every
# org, timed. Prints one table with each row's GET/POST rate and GET p99 as a
# ratio of the first row's.
#
# A measurement, not a test: runs only when called, talks only to 127.0.0.1,
# bounded in time (BENCH_DURATION seconds per load), cleans up its database,
# processes, temporary folder and (by default) its own PostgreSQL cluster.
#
# Environment: BENCH_MILESTONES, BENCH_RECORDS, BENCH_DURATION (default 10),
# BENCH_WARMUP (default 5), BENCH_WARMUP_MAX (default 60), BENCH_BUILD_DIR (default build/release, built
# with the release preset if it has no tenantd), BENCH_SHARED_PG=1 (the shared
# dev cluster instead of one of its own), TENANTD_THREADS (default 2),
# TENANTD_DB_POOL_SIZE (default the server's) and any other TENANTD_* setting
# (passed through).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
milestones=${BENCH_MILESTONES:-10 100 1000 10000}
nrecs=${BENCH_RECORDS:-5}
secs=${BENCH_DURATION:-10}
warm=${BENCH_WARMUP:-5}
warm_max=${BENCH_WARMUP_MAX:-60}
build=${BENCH_BUILD_DIR:-$here/build/release}
threads=${TENANTD_THREADS:-2}

for tool in wrk curl python3 psql; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (deps/install.sh)" >&2; exit 1; }
done
if [ ! -x "$build/tenantd" ]; then
    cmake --preset release >/dev/null
    cmake --build --preset release -j2 >/dev/null
    build=$here/build/release
fi
BIN=$build/tenantd

tmp=$(mktemp -d /tmp/tenantd-bench-scale.XXXXXX)
BENCH_SERVER_LOG=$tmp/tenantd.log
chmod 755 "$tmp"
tenantd_pid=
own_pg=
dbname=bench_scale_$$
cleanup() {
    set +e
    [ -n "$tenantd_pid" ] && kill "$tenantd_pid" 2>/dev/null && wait "$tenantd_pid" 2>/dev/null
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    [ -n "$own_pg" ] && ./deps/pg.sh stop >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${BENCH_SHARED_PG:-0}" != 1 ]; then
    export TENANTD_PG_DIR="$tmp/pg" TENANTD_PG_PORT
    TENANTD_PG_PORT=$(free_port)
    own_pg=1
fi
./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"
pg_data=$(./deps/pg.sh psql -qAt -c "SHOW data_directory")

port=$(free_port)
export DATABASE_URL="$db_url"
env TENANTD_LISTEN="127.0.0.1:$port" TENANTD_DEV=1 TENANTD_JOB_WORKERS=0 \
    TENANTD_LOG_LEVEL=warn TENANTD_THREADS="$threads" TENANTD_SIGNUP_LIMIT=0 \
    TENANTD_ARGON2_M_KIB=64 TENANTD_ARGON2_T=1 TENANTD_ACCESS_TTL_S=86400 \
    "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
tenantd_pid=$!
for _ in $(seq 100); do
    curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null || { cat "$tmp/tenantd.log" >&2; exit 1; }

post_body='{"title":"new item","n":42,"price":9.99,"active":true,"tags":["a","b3"]}'
export POST_BODY=$post_body

# signup FROM TO: orgs FROM..TO-1 (appended to orgs.txt as "schema token");
# the last min(50, TO-FROM) one at a time, their latencies to signup.txt.
signup() {
    python3 - "$port" "$1" "$2" "$tmp" <<'PY'
import http.client, json, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
port, lo, hi, tmp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
local = threading.local()
def one(i):
    c = getattr(local, "c", None) or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    local.c = c
    body = json.dumps({"name": f"Scale {i}", "slug": f"scale-{i}",
                       "admin": {"email": f"admin{i}@example.com", "password": "correct-horse-battery"}})
    t0 = time.monotonic()
    c.request("POST", "/v1/orgs", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    d = json.loads(r.read())
    took = time.monotonic() - t0
    if r.status != 201:
        sys.exit(f"bench: signup {i} failed: {r.status} {d}")
    return "tenant_" + d["org"]["id"].replace("-", ""), d["access_token"], took
timed = min(50, hi - lo)
with ThreadPoolExecutor(8) as ex:
    rows = list(ex.map(one, range(lo, hi - timed)))
rows += [one(i) for i in range(hi - timed, hi)]
with open(f"{tmp}/orgs.txt", "a") as out, open(f"{tmp}/new.txt", "w") as new:
    for s, t, _ in rows:
        out.write(f"{s} {t}\n")
        new.write(f"{s} {t}\n")
with open(f"{tmp}/signup.txt", "w") as f:
    for _, _, took in rows[-timed:]:
        f.write(f"{took * 1000:.3f}\n")
PY
}

# Records for the orgs in new.txt, in bulk.
seed() {
    {
        echo "BEGIN;"
        while read -r schema _; do
            echo "INSERT INTO \"$schema\".records (id, collection, data)" \
                "SELECT md5('$schema:' || g)::uuid, 'items', jsonb_build_object('title', 'item ' || g, 'n', g)" \
                "FROM generate_series(1, $nrecs) g;"
        done <"$tmp/new.txt"
        echo "COMMIT;"
    } >"$tmp/seed.sql"
    psql "$db_url" -qAt -v ON_ERROR_STOP=1 -f "$tmp/seed.sql" >/dev/null
}

# Lua scripts over every org so far.
lua() {
    python3 - "$tmp" "$nrecs" <<'PY'
import hashlib, sys
tmp, nrecs = sys.argv[1], int(sys.argv[2])
orgs = [line.split() for line in open(f"{tmp}/orgs.txt")]
def rid(schema, g):
    h = hashlib.md5(f"{schema}:{g}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
with open(f"{tmp}/data.lua", "w") as f:
    f.write("tokens = {" + ",".join(f'"{t}"' for _, t in orgs) + "}\n")
    f.write("ids = {" + ",".join("{" + ",".join(f'"{rid(s, g)}"' for g in range(1, nrecs + 1)) + "}"
                                 for s, _ in orgs) + "}\n")
common = f"""dofile("{tmp}/data.lua")
local n = #tokens
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16) % 100000)
"""
with open(f"{tmp}/get.lua", "w") as f:
    f.write(common + """
request = function()
  local o = math.random(n)
  local list = ids[o]
  return wrk.format("GET", "/v1/collections/items/records/" .. list[math.random(#list)],
                    {["Authorization"] = "Bearer " .. tokens[o]})
end
""")
with open(f"{tmp}/post.lua", "w") as f:
    f.write(common + """
local body = os.getenv("POST_BODY")
request = function()
  return wrk.format("POST", "/v1/collections/bench/records",
                    {["Authorization"] = "Bearer " .. tokens[math.random(n)],
                     ["Content-Type"] = "application/json"}, body)
end
""")
PY
}

# wrk_run NAME CONNS SECS SCRIPT: prints "req/s p50_ms p99_ms".
wrk_run() {
    wrk -t2 -c"$2" -d"$3"s --latency -s "$4" "http://127.0.0.1:$port" >"$tmp/$1.txt" 2>&1 || true
    check_wrk "$1" "$tmp/$1.txt"
    local rps p50 p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/$1.txt")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$tmp/$1.txt")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$tmp/$1.txt")")
    echo "$rps $p50 $p99"
}

pss_pg() {
    local pm total=0 kb
    pm=$(head -1 "$pg_data/postmaster.pid")
    for p in $pm $(pgrep -P "$pm" || true); do
        kb=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo $((total / 1024))
}

metric() {
    curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" | awk -v m="$1" '
        index($0, m " ") == 1 { v = $2; found = 1 } END { print found ? v : "-" }'
}

# warm_up NAME CONNS SCRIPT: BENCH_WARMUP-second rounds of the load until a
# round's statement cache misses are under 1% of its requests, or
# BENCH_WARMUP_MAX seconds have passed; prints the seconds it ran.
warm_up() {
    local t=0 m0 m1 n
    while :; do
        m0=$(metric 'tenantd_db_statement_cache_total{result="miss"}')
        wrk_run "warm-$1" "$2" "$warm" "$3" >/dev/null
        m1=$(metric 'tenantd_db_statement_cache_total{result="miss"}')
        t=$((t + warm))
        n=$(awk '/ requests in / {print $1}' "$tmp/warm-$1.txt")
        [ "$m0" = - ] && break
        echo "bench: $1 warm-up round: $((m1 - m0)) misses in $n requests" >&2
        [ $(((m1 - m0) * 100)) -lt "${n:-0}" ] && break
        [ "$t" -ge "$warm_max" ] && break
    done
    echo "$t"
}

pct() {
    sort -n "$1" | awk '{ v[NR] = $1 }
        END { i = int(NR * 0.99) + 1; if (i > NR) i = NR; printf "%.0f/%.0f", v[int(NR * 0.5) + 1], v[i] }'
}

rows=()
have=0
for m in $milestones; do
    echo "bench: signing up orgs $have..$((m - 1))" >&2
    t0=$(date +%s)
    signup "$have" "$m"
    seed
    lua
    have=$m
    echo "bench: $m orgs ready in $(($(date +%s) - t0)) s" >&2
    wget=$(warm_up get 64 "$tmp/get.lua")
    get=$(wrk_run get 64 "$secs" "$tmp/get.lua")
    wpost=$(warm_up post 16 "$tmp/post.lua")
    post=$(wrk_run post 16 "$secs" "$tmp/post.lua")
    hits=$(metric 'tenantd_db_statement_cache_total{result="hit"}')
    misses=$(metric 'tenantd_db_statement_cache_total{result="miss"}')
    smax=$(metric 'tenantd_db_connection_schemas{stat="max"}')
    switches=$(metric tenantd_db_schema_switches_total)
    rss=$(($(awk '/^VmRSS:/ {print $2}' "/proc/$tenantd_pid/status") / 1024))
    row="$m $get $post $(pct "$tmp/signup.txt") $(pss_pg) $rss $hits $misses $smax $switches $wget/$wpost"
    echo "bench: $row" >&2
    rows+=("$row")
done

kill "$tenantd_pid" && wait "$tenantd_pid" 2>/dev/null || true
tenantd_pid=
echo "bench: migrate down 1 --tenant over $have orgs" >&2
t0=$(date +%s.%N)
"$BIN" migrate down 1 --tenant >"$tmp/down.txt" 2>&1 || { cat "$tmp/down.txt" >&2; exit 1; }
t1=$(date +%s.%N)
"$BIN" migrate up >"$tmp/up.txt" 2>&1 || { cat "$tmp/up.txt" >&2; exit 1; }
t2=$(date +%s.%N)

echo
echo "$("$BIN" --version 2>/dev/null || echo tenantd) ($BIN), $threads loops, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' orgs "GET req/s (x)" "GET p50/p99 ms (p99 x)" \
    "POST req/s (x)" "POST p50/p99 ms" "signup p50/p99 ms" "PG PSS MiB" "tenantd RSS MiB" \
    "stmt hits/misses" "max schemas/backend" "search_path switches" "warm-up s GET/POST"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
base=
for r in "${rows[@]}"; do
    set -- $r
    [ -z "$base" ] && base="$2 $4 $5"
    warmed=${15}
    set -- $r $base
    awk -v m="$1" -v gr="$2" -v g50="$3" -v g99="$4" -v pr="$5" -v p50="$6" -v p99="$7" -v su="$8" \
        -v pss="$9" -v rss="${10}" -v h="${11}" -v mi="${12}" -v sm="${13}" -v sw="${14}" \
        -v bg="${16}" -v bg99="${17}" -v bp="${18}" -v wu="$warmed" 'BEGIN {
        printf "| %d | %.0f (%.2f) | %.1f/%.1f (%.2f) | %.0f (%.2f) | %.1f/%.1f | %s | %d | %d | %s/%s | %s | %s | %s |\n",
            m, gr, gr / bg, g50, g99, g99 / bg99, pr, pr / bp, p50, p99, su, pss, rss, h, mi, sm, sw, wu }'
done
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$have" \
    'BEGIN { printf "migrate down 1 --tenant: %.1f s, migrate up: %.1f s (%d orgs)\n", b - a, c - b, n }'
