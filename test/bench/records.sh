#!/usr/bin/env bash
# Records, the hottest path: tenantd against PostgreSQL itself (pgbench) doing
# the same statements on the same data, in the same run.
#
#   test/bench/records.sh
#
# Data: BENCH_ORGS orgs (default 100, signed up through POST /v1/orgs with
# cheap argon2 parameters: logins are not measured here) with
# BENCH_RECORDS records each (default 1000) in collection `items`, inserted
# in bulk with SQL. Record ids are md5("<schema>:<n>") so that both sides can
# name a random record without a lookup table in the database.
#
# (a) GET /v1/collections/items/records/{id}: wrk -c64 with a Lua script
#     picking a random org (its access token) and a random record of it for
#     every request, against pgbench -M prepared -c64 running the very SELECT
#     tenantd runs (src/record/record.c, q_get) on a random record of a
#     random org: one script whose \if chain picks the org, with one prepared
#     statement per org naming its table in full, so PostgreSQL does no
#     search_path switching and keeps every plan: the best case (tenantd
#     does the same: the pool prepares {schema}-qualified statements). pgbench's
#     first BENCH_WARMUP seconds (each connection preparing and planning
#     100 statements) are not counted, as tenantd's warm-up is not either.
#     Ratio target >= 0.8.
# (b) POST /v1/collections/bench/records (a small JSON object) against
#     pgbench running tenantd's INSERT ... RETURNING on random orgs.
# (c) POST .../records/batch (1000 records a request) against psql's COPY of
#     the same rows into the same table: records/s (BENCH_BATCHES requests
#     per round, default 20). Target >= 0.5x.
# (a) and (b) print req/s (tps), p50 and p99; wrk's --latency and pgbench's sampled
# per-transaction log (-l --sampling-rate). Also the pool's schema switches
# per request (tenantd_db_schema_switches_total) during (a).
#
# BENCH_PERF=1 records `perf record -a -g` (the whole machine) during (a) and
# prints cycles by command and the top symbols of postgres and tenantd (needs
# perf; kernel.perf_event_paranoid permitting).
#
# A measurement, not a test: runs only when called, talks only to 127.0.0.1,
# bounded in time, cleans up (its database, processes and temporary folder;
# its own PostgreSQL cluster too, see below). Fails only when
# something cannot start or answers wrongly (non-2xx).
#
# Environment: BENCH_DURATION (seconds per measurement, default 5),
# BENCH_ROUNDS (alternating measurements per side, default 3; medians),
# BENCH_WARMUP (seconds of load before each GET measurement, default 5),
# BENCH_CONNECTIONS (default 64), BENCH_ORGS (100), BENCH_RECORDS (1000),
# BENCH_SHARED_PG (1: the shared dev cluster instead of one of its own),
# BENCH_BUILD_DIR (release build folder, default build/release; built here
# if stale), TENANTD_THREADS (default: cores), TENANTD_DB_POOL_SIZE
# (connections per loop; default 32 / loops, i.e. 32 in all),
# TENANTD_DB_PIPELINE_DEPTH (default the server's).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
secs=${BENCH_DURATION:-5}
secs=${secs%s}
warm=${BENCH_WARMUP:-5}
conns=${BENCH_CONNECTIONS:-64}
norgs=${BENCH_ORGS:-100}
nrecs=${BENCH_RECORDS:-1000}
build=${BENCH_BUILD_DIR:-$here/build/release}
cores=$(nproc)
threads=${TENANTD_THREADS:-$cores}
pool=${TENANTD_DB_POOL_SIZE:-$(((32 + threads - 1) / threads))}
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench)

for tool in wrk curl python3 "$PGBENCH"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (deps/install.sh)" >&2; exit 1; }
done
[ "$norgs" -ge 1 ] && [ "$norgs" -le 120 ] || { echo "bench: BENCH_ORGS must be 1..120 (pgbench takes 128 scripts)" >&2; exit 1; }

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g -DNDEBUG -fno-omit-frame-pointer" -DBUILD_TESTING=ON >/dev/null
cmake --build "$build" --target tenantd -j "$cores" >"$build/bench-build.log" 2>&1 ||
    { cat "$build/bench-build.log" >&2; exit 1; }
BIN=$build/tenantd

tmp=$(mktemp -d /tmp/tenantd-bench-records.XXXXXX)
BENCH_SERVER_LOG=$tmp/tenantd.log # check_wrk shows it on failure
chmod 755 "$tmp"
tenantd_pid=
perf_pid=
own_pg=
dbname=bench_records_$$
cleanup() {
    set +e
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null && wait "$perf_pid" 2>/dev/null
    [ -n "$tenantd_pid" ] && kill "$tenantd_pid" 2>/dev/null && wait "$tenantd_pid" 2>/dev/null
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    [ -n "$own_pg" ] && ./deps/pg.sh stop
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The body POSTed by wrk and inserted by pgbench (as a parameter, like tenantd).
post_body='{"title":"new item","n":42,"price":9.99,"active":true,"tags":["a","b3"],"owner":{"name":"user7","team":"x"}}'

# pgbench_run NAME: runs pgbench on $tmp/NAME.sql for $warm + $secs seconds
# and prints "tps p50_ms p99_ms" of the last $secs seconds only: every
# pgbench connection must first prepare and plan one statement per org (a
# cold start tenantd's pool went through in its own warm-up), and counting
# that would flatter tenantd. tps: mean of the per-second progress reports
# after the warm-up; latencies: the sampled per-transaction log after it.
pgbench_run() {
    local name=$1 t0
    echo "bench: pgbench -n -M prepared -c $conns -j $cores -T $((warm + secs)) -P 1 -f $name.sql (first ${warm}s not counted)" >&2
    rm -f "$tmp"/pgblog*
    t0=$(date +%s)
    (cd "$tmp" && "$PGBENCH" -n -M prepared -c "$conns" -j "$cores" -T "$((warm + secs))" -P 1 \
        -l --log-prefix=pgblog --sampling-rate=0.05 -D body="$post_body" -f "$tmp/$name.sql" "$db_url") \
        >"$tmp/pgbench-$name.txt" 2>&1 || { cat "$tmp/pgbench-$name.txt" >&2; exit 1; }
    if grep -q 'aborted' "$tmp/pgbench-$name.txt"; then cat "$tmp/pgbench-$name.txt" >&2; exit 1; fi
    local tps
    tps=$(awk -v w="$warm" '/^progress: / { t = $2 + 0; if (t > w) { s += $4; n++ } }
        END { if (n) printf "%.1f", s / n }' "$tmp/pgbench-$name.txt")
    [ -n "$tps" ] || { cat "$tmp/pgbench-$name.txt" >&2; exit 1; }
    # Per-transaction log: client_id tx_no latency_us script_no epoch us.
    cat "$tmp"/pgblog* | awk -v from=$((t0 + warm + 1)) '$5 >= from {print $3}' | sort -n |
        awk -v tps="$tps" '
        { v[NR] = $1 }
        END { if (NR == 0) { print tps, "nan", "nan"; exit }
              printf "%s %.3f %.3f\n", tps, v[int(NR * 0.50) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }'
}

switches() {
    curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" |
        awk '$1 == "tenantd_db_schema_switches_total" {print $2}'
}

# ---- server, database, orgs, records --------------------------------------------
# A PostgreSQL of its own by default (deps/pg.sh with a folder and port of
# this run, stopped at exit): the shared one is restarted by fault tests and
# loaded by everyone's suites. BENCH_SHARED_PG=1 uses the shared one instead
# (started if needed, never stopped).
if [ "${BENCH_SHARED_PG:-0}" != 1 ]; then
    export TENANTD_PG_DIR="$tmp/pg" TENANTD_PG_PORT
    TENANTD_PG_PORT=$(free_port)
    own_pg=1
fi
./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"

port=$(free_port)
env_extra=()
[ -n "${TENANTD_DB_PIPELINE_DEPTH:-}" ] && env_extra+=(TENANTD_DB_PIPELINE_DEPTH="$TENANTD_DB_PIPELINE_DEPTH")
env DATABASE_URL="$db_url" TENANTD_LISTEN="127.0.0.1:$port" TENANTD_DEV=1 TENANTD_JOB_WORKERS=0 \
    TENANTD_LOG_LEVEL=warn TENANTD_THREADS="$threads" TENANTD_DB_POOL_SIZE="$pool" \
    TENANTD_ARGON2_M_KIB=64 TENANTD_SIGNUP_LIMIT=0 TENANTD_ARGON2_T=1 TENANTD_ACCESS_TTL_S=3600 "${env_extra[@]}" \
    "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
tenantd_pid=$!
for _ in $(seq 100); do
    curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null || { cat "$tmp/tenantd.log" >&2; exit 1; }

echo "bench: signing up $norgs orgs, $nrecs records each" >&2
python3 - "$port" "$norgs" "$tmp" <<'PY'
import http.client, json, sys
port, n, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
with open(f"{tmp}/orgs.txt", "w") as out:
    for i in range(n):
        body = json.dumps({"name": f"Bench {i}", "slug": f"bench-{i}",
                           "admin": {"email": f"admin{i}@example.com", "password": "correct-horse-battery"}})
        c.request("POST", "/v1/orgs", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        d = json.loads(r.read())
        if r.status != 201:
            sys.exit(f"bench: signup {i} failed: {r.status} {d}")
        schema = "tenant_" + d["org"]["id"].replace("-", "")
        out.write(f"{schema} {d['access_token']}\n")
PY

# Bulk insert, ids md5("<schema>:<n>"); created_at spread over the past hour.
data_sql="jsonb_build_object('title', 'item ' || g, 'n', g, 'price', g * 1.25, 'active', g % 2 = 0, 'tags', jsonb_build_array('a', 'b' || (g % 7)), 'owner', jsonb_build_object('name', 'user' || (g % 13), 'team', 'x'))"
{
    echo "BEGIN;"
    while read -r schema _; do
        echo "INSERT INTO \"$schema\".records (id, collection, data, created_at, updated_at)" \
            "SELECT md5('$schema:' || g)::uuid, 'items', $data_sql, now() - g * interval '1 second'," \
            "now() - g * interval '1 second' FROM generate_series(1, $nrecs) g;"
    done <"$tmp/orgs.txt"
    echo "COMMIT;"
    while read -r schema _; do echo "ANALYZE \"$schema\".records;"; done <"$tmp/orgs.txt"
} >"$tmp/seed.sql"
"$(dirname "$PGBENCH")/psql" "$db_url" -qAt -v ON_ERROR_STOP=1 -f "$tmp/seed.sql" >/dev/null

# ---- Lua for wrk: tokens and record paths per org -------------------------------
python3 - "$tmp" "$nrecs" <<'PY'
import hashlib, sys
tmp, nrecs = sys.argv[1], int(sys.argv[2])
orgs = [line.split() for line in open(f"{tmp}/orgs.txt")]
def rid(schema, g):
    h = hashlib.md5(f"{schema}:{g}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
common = """
local n = #tokens
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
"""
with open(f"{tmp}/get.lua", "w") as f:
    f.write("tokens = {" + ",".join(f'"{t}"' for _, t in orgs) + "}\n")
    f.write("ids = {" + ",".join("{" + ",".join(f'"{rid(s, g)}"' for g in range(1, nrecs + 1)) + "}"
                                 for s, _ in orgs) + "}\n")
    f.write(common + """
local hdrs = {}
for i = 1, n do hdrs[i] = {["Authorization"] = "Bearer " .. tokens[i]} end
request = function()
  local o = math.random(n)
  local list = ids[o]
  return wrk.format("GET", "/v1/collections/items/records/" .. list[math.random(#list)], hdrs[o])
end
""")
with open(f"{tmp}/post.lua", "w") as f:
    f.write("tokens = {" + ",".join(f'"{t}"' for _, t in orgs) + "}\n")
    f.write(common + """
local hdrs = {}
for i = 1, n do hdrs[i] = {["Authorization"] = "Bearer " .. tokens[i], ["Content-Type"] = "application/json"} end
local body = os.getenv("POST_BODY")
request = function()
  return wrk.format("POST", "/v1/collections/bench/records", hdrs[math.random(n)], body)
end
""")
PY

# ---- pgbench scripts: tenantd's statements, schema-qualified -------------------
# One script whose \if chain picks a random org: pgbench 15 with -M prepared
# fails on several -f scripts ("prepared statement P_n does not exist"), and
# a chain of prepared statements, one per org, is the fair best case anyway:
# no search_path, every plan cached.
python3 - "$tmp" "$nrecs" <<'PY'
import sys
tmp, nrecs = sys.argv[1], int(sys.argv[2])
schemas = [line.split()[0] for line in open(f"{tmp}/orgs.txt")]
# tenantd's SQL_RECORD_JSON; the format's colons spelled \x3a, since pgbench
# would take ":MI" for a variable (the string constant is the same).
ts = "to_char({} AT TIME ZONE 'UTC', E'YYYY-MM-DD\"T\"HH24\\x3aMI\\x3aSS.US\"Z\"')"
rec = ("json_build_object('id', r.id, 'collection', r.collection, 'data', r.data, 'version', "
       f"r.version, 'created_at', {ts.format('r.created_at')}, 'updated_at', "
       f"{ts.format('r.updated_at')})::text")
def script(stmt):
    out = [f"\\set o random(1, {len(schemas)})", f"\\set g random(1, {nrecs})"]
    for i, s in enumerate(schemas, 1):
        out.append(("\\if" if i == 1 else "\\elif") + f" :o = {i}")
        out.append(stmt(s))
    out.append("\\endif")
    return "\n".join(out) + "\n"
with open(f"{tmp}/get.sql", "w") as f:
    f.write(script(lambda s: f'SELECT r.version, {rec} FROM "{s}".records r '
                             f"WHERE r.id = md5('{s}:' || :g)::uuid AND r.collection = 'items';"))
with open(f"{tmp}/post.sql", "w") as f:
    f.write(script(lambda s: f'INSERT INTO "{s}".records AS r (collection, data) '
                             f"VALUES ('bench', :body::jsonb) RETURNING r.id, r.version, {rec};"))
PY

# Sanity: one GET through tenantd answers the seeded record.
read -r schema0 token0 < "$tmp/orgs.txt"
id0=$(python3 -c "import hashlib,sys; h=hashlib.md5(sys.argv[1].encode()).hexdigest(); print(f'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}')" "$schema0:1")
curl -fsS --max-time 5 -H "Authorization: Bearer $token0" \
    "http://127.0.0.1:$port/v1/collections/items/records/$id0" | grep -q '"title": *"item 1"' ||
    { echo "bench: GET of a seeded record failed" >&2; cat "$tmp/tenantd.log" >&2; exit 1; }

# wrk_run NAME LUA: one wrk measurement; appends "req/s p50_ms p99_ms
# requests" to $tmp/res-NAME-tenantd.
wrk_run() {
    local name=$1 lua=$2 out="$tmp/wrk-$1.txt"
    echo "bench: wrk -t1 -c$conns -d${secs}s --latency -s $lua.lua" >&2
    POST_BODY=$post_body timeout $((secs + 60)) wrk -t1 -c"$conns" -d"${secs}s" --latency \
        -s "$tmp/$lua.lua" "http://127.0.0.1:$port" >"$out"
    check_wrk "$name" "$out"
    echo "$(awk '/^Requests\/sec:/ {print $2}' "$out")" \
        "$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")" \
        "$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")" \
        "$(awk '/requests in/ {print $1}' "$out")" >>"$tmp/res-$name-tenantd"
}

# median FILE COLUMN
median() {
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

# The machine is shared (builds, other benchmarks): its load drifts within
# seconds, so each side runs BENCH_ROUNDS times, alternating, and the
# medians are compared.
rounds=${BENCH_ROUNDS:-3}

# ---- (a) GET one record ------------------------------------------------------------
echo "bench: warm-up ${warm}s of GETs" >&2
timeout 60 wrk -t1 -c"$conns" -d"${warm}s" -s "$tmp/get.lua" "http://127.0.0.1:$port" >/dev/null
sw0=$(switches)
for r in $(seq "$rounds"); do
    if [ "$r" = 1 ] && [ "${BENCH_PERF:-0}" = 1 ]; then
        # System-wide: where the machine's cycles go (tenantd, postgres, wrk).
        perf record -a -g -F 499 -o "$tmp/perf.data" >/dev/null 2>"$tmp/perf.err" &
        perf_pid=$!
    fi
    wrk_run get get
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=
    fi
    pgbench_run get >>"$tmp/res-get-pgbench"
done
sw1=$(switches)
get_reqs=$(awk '{s += $4} END {print s}' "$tmp/res-get-tenantd")

# ---- (b) POST create ------------------------------------------------------------------
for r in $(seq "$rounds"); do
    wrk_run post post
    pgbench_run post >>"$tmp/res-post-pgbench"
done

# ---- (c) batch create vs COPY ----------------------------------------------------------
# The same rows (BENCH_BATCHES requests of 1000, the POST body above with a
# counter) through POST .../records/batch on one connection, then through
# psql's COPY into the same org's table; records/s each. Target >= 0.5x.
batches=${BENCH_BATCHES:-20}
for r in $(seq "$rounds"); do
    timeout 300 python3 - "$port" "$token0" "$batches" "$post_body" >>"$tmp/res-batch-tenantd" <<'PY'
import http.client, json, sys, time
port, token, n, body = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
reqs = [json.dumps({"records": [dict(body, n=k * 1000 + i) for i in range(1000)]}) for k in range(n)]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
t = time.monotonic()
for b in reqs:
    c.request("POST", "/v1/collections/batch/records/batch", b, h)
    r = c.getresponse(); r.read()
    if r.status != 201:
        sys.exit(f"bench: batch create answered {r.status}")
print(f"{n * 1000 / (time.monotonic() - t):.0f}")
PY
    python3 -c 'import json, sys
b = json.loads(sys.argv[2])
for k in range(int(sys.argv[1]) * 1000):
    print("batch\t" + json.dumps(dict(b, n=k)).replace("\\", "\\\\"))' "$batches" "$post_body" >"$tmp/copy.tsv"
    t0=$(date +%s.%N)
    "$(dirname "$PGBENCH")/psql" "$db_url" -qAt -v ON_ERROR_STOP=1 \
        -c "\\copy \"$schema0\".records (collection, data) FROM '$tmp/copy.tsv'" >/dev/null
    t1=$(date +%s.%N)
    awk -v n=$((batches * 1000)) -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }' \
        >>"$tmp/res-batch-copy"
done

kill -0 "$tenantd_pid" 2>/dev/null || { echo "bench: tenantd died" >&2; cat "$tmp/tenantd.log" >&2; exit 1; }

row() { # LABEL FILE
    printf '%-44s %10.0f %9.3f %9.3f\n' "$1" "$(median "$2" 1)" "$(median "$2" 2)" "$(median "$2" 3)"
}
ratios() { # NAME: per-round ratios and the ratio of the medians
    paste -d' ' "$tmp/res-$1-tenantd" "$tmp/res-$1-pgbench" |
        awk '{printf "%s%.2f", (NR > 1 ? " " : ""), $1 / $5}'
}

echo
echo "tenantd: $threads loop(s), pool $pool per loop; $norgs orgs x $nrecs records; $conns connections;" \
    "$rounds rounds of ${secs}s each side (medians); $cores cores"
printf '%-44s %10s %9s %9s\n' "" "req/s" "p50 ms" "p99 ms"
row "(a) GET record, tenantd (wrk)" "$tmp/res-get-tenantd"
row "    same SELECT, pgbench -M prepared" "$tmp/res-get-pgbench"
awk -v a="$(median "$tmp/res-get-tenantd" 1)" -v b="$(median "$tmp/res-get-pgbench" 1)" -v r="$(ratios get)" \
    'BEGIN { printf "    ratio tenantd/pgbench %28.2f   (target >= 0.8; rounds: %s)\n", a / b, r }'
awk -v s=$((sw1 - sw0)) -v n="$get_reqs" 'BEGIN {
    printf "    schema switches during (a) %23d   (%.4f per request)\n", s, (n > 0 ? s / n : 0) }'
row "(b) POST record, tenantd (wrk)" "$tmp/res-post-tenantd"
row "    same INSERT, pgbench -M prepared" "$tmp/res-post-pgbench"
awk -v a="$(median "$tmp/res-post-tenantd" 1)" -v b="$(median "$tmp/res-post-pgbench" 1)" -v r="$(ratios post)" \
    'BEGIN { printf "    ratio tenantd/pgbench %28.2f   (rounds: %s)\n", a / b, r }'
awk -v a="$(median "$tmp/res-batch-tenantd" 1)" -v b="$(median "$tmp/res-batch-copy" 1)" 'BEGIN {
    printf "%-44s %10.0f records/s\n", "(c) batch create (1000 per request)", a
    printf "%-44s %10.0f rows/s\n", "    COPY of the same rows (psql)", b
    printf "    ratio batch/COPY %33.2f   (target >= 0.5)\n", a / b }'
if [ "${BENCH_PERF:-0}" = 1 ] && [ -s "$tmp/perf.data" ]; then
    echo
    echo "perf (whole machine during (a)): cycles by command"
    # `|| true`: head closing the pipe early is not a failure.
    perf report -i "$tmp/perf.data" --no-children -g none --sort comm --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -8 || true
    for comm in postgres tenantd; do
        echo "perf: top symbols of $comm"
        perf report -i "$tmp/perf.data" --no-children -g none --comm "$comm" --sort sym --stdio \
            2>/dev/null | grep -E '^ +[0-9]' | head -15 || true
    done
fi
