#!/usr/bin/env bash
# Logins under pressure (issue 11 item 3): do logins keep a share of the CPU
# while cheap requests saturate the event loops?
#
#   test/bench/login_pressure.sh
#
# One server (release preset build, TENANTD_THREADS=0: a loop per core,
# TENANTD_LOGIN_LIMIT=0, default argon2id cost unless TENANTD_ARGON2_* say
# otherwise). Phases, BENCH_DURATION seconds each:
#  (0) the raw argon2id rate of this machine: one hashing thread per core,
#      same parameters (measured before and after; the mean counts);
#  (1) flood: wrk -t1 -c4 GET /health unpaced, and wrk -t1 -c16 --latency
#      POST /v1/auth/login at the same time: logins/s and their p99, and the
#      ratio to the raw rate (target >= 0.3);
#  (2) the same flood against a second server started with
#      TENANTD_HASH_BOOST_MS=0 (idle-priority hashers only, as before the
#      boost threads): what the boost changes, in the same run;
#  (3) no flood: wrk -c16 logins with a paced GET /health probe (~800 req/s),
#      on both servers: the probe's p99 (target < 5 ms; the boost must not
#      cost latency when the loops are not saturated).
#
# A measurement, not a test: runs only when called, talks only to
# 127.0.0.1, bounded in time, cleans up its databases, processes and
# temporary folder. Starts the private PostgreSQL if needed, never stops it.
#
# Environment: BENCH_DURATION (seconds per phase, default 10),
# TENANTD_ARGON2_M_KIB / _T / _P (both sides).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
secs=${BENCH_DURATION:-10}
secs=${secs%s}
m_kib=${TENANTD_ARGON2_M_KIB:-19456}
t_cost=${TENANTD_ARGON2_T:-2}
p_cost=${TENANTD_ARGON2_P:-1}
cores=$(nproc)

for tool in wrk curl cc python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (deps/install.sh)" >&2; exit 1; }
done

cmake --preset release >/dev/null
cmake --build --preset release --target tenantd -j "$cores" >/dev/null 2>&1 ||
    { cmake --build --preset release --target tenantd 2>&1 | tail -20 >&2; exit 1; }
BIN=$here/build/release/tenantd

tmp=$(mktemp -d /tmp/tenantd-bench-login-pressure.XXXXXX)
chmod 755 "$tmp"
pids=()
dbs=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for d in "${dbs[@]}"; do
        ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_argon2rate "$tmp"
hash_rate_now() {
    echo "bench: argon2id m=$m_kib t=$t_cost p=$p_cost on $cores threads for ${secs}s" >&2
    "$tmp/argon2rate" "$m_kib" "$t_cost" "$p_cost" "$cores" "$secs"
}

./deps/pg.sh start >/dev/null
email=bench@example.com
password=correct-horse-battery

# start_server NAME BOOST_MS: a server on its own database with one org;
# sets port and slug.
start_server() {
    local db=bench_lp_$1_$$
    ./deps/pg.sh psql -qAt -c "CREATE DATABASE $db" >/dev/null
    dbs+=("$db")
    local db_url
    db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$db"
    port=$(free_port)
    DATABASE_URL=$db_url TENANTD_LISTEN=127.0.0.1:$port TENANTD_DEV=1 TENANTD_JOB_WORKERS=0 \
        TENANTD_LOG_LEVEL=warn TENANTD_LOGIN_LIMIT=0 TENANTD_ARGON2_M_KIB=$m_kib \
        TENANTD_ARGON2_T=$t_cost TENANTD_ARGON2_P=$p_cost TENANTD_HASH_BOOST_MS=$2 \
        "$BIN" serve --migrate 2>"$tmp/tenantd-$1.log" &
    pids+=($!)
    for _ in $(seq 100); do
        curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    slug=bench$1$$
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"name\":\"Bench\",\"slug\":\"$slug\",\"admin\":{\"email\":\"$email\",\"password\":\"$password\"}}" \
        "http://127.0.0.1:$port/v1/orgs" >/dev/null ||
        { echo "bench: signup failed" >&2; cat "$tmp/tenantd-$1.log" >&2; exit 1; }
    cat >"$tmp/login-$1.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"email":"$email","password":"$password","org":"$slug"}'
wrk.headers["Content-Type"] = "application/json"
LUA
}

# flood NAME: logins at -c16 during an unpaced -c4 /health flood; prints
# "logins/s p99_ms health/s".
flood() {
    echo "bench: [$1] wrk -t1 -c4 -d$((secs + 1))s GET /health (flood) +" \
        "wrk -t1 -c16 -d${secs}s --latency -s login.lua POST /v1/auth/login" >&2
    timeout $((secs + 60)) wrk -t1 -c4 -d"$((secs + 1))s" "http://127.0.0.1:$port/health" \
        >"$tmp/wrk-flood-$1.txt" &
    local fp=$!
    sleep 0.5
    timeout $((secs + 60)) wrk -t1 -c16 -d"${secs}s" --timeout 20s --latency \
        -s "$tmp/login-$1.lua" "http://127.0.0.1:$port/v1/auth/login" >"$tmp/wrk-login-$1.txt"
    wait "$fp"
    check_wrk "flood $1" "$tmp/wrk-flood-$1.txt"
    check_wrk "login $1" "$tmp/wrk-login-$1.txt"
    echo "$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk-login-$1.txt")" \
        "$(to_ms "$(awk '$1 == "99%" {print $2}' "$tmp/wrk-login-$1.txt")")" \
        "$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk-flood-$1.txt")"
}

read -r hash_before _ < <(hash_rate_now)

start_server boost 100
read -r boost_rps boost_p99 boost_flood < <(flood boost)

# calm NAME: logins at -c16 with a paced /health probe, no cheap flood;
# prints "logins/s probe_p99_ms".
cat >"$tmp/health.lua" <<'LUA'
function delay() return 5 end
LUA
calm() {
    echo "bench: [$1] wrk -t1 -c16 -d${secs}s logins + wrk -t1 -c4 --latency -s health.lua" \
        "(paced) GET /health" >&2
    timeout $((secs + 60)) wrk -t1 -c4 -d"$((secs + 1))s" --latency -s "$tmp/health.lua" \
        "http://127.0.0.1:$port/health" >"$tmp/wrk-probe-$1.txt" &
    local pp=$!
    timeout $((secs + 60)) wrk -t1 -c16 -d"${secs}s" --timeout 20s -s "$tmp/login-$1.lua" \
        "http://127.0.0.1:$port/v1/auth/login" >"$tmp/wrk-calm-$1.txt"
    wait "$pp"
    check_wrk "probe $1" "$tmp/wrk-probe-$1.txt"
    check_wrk "calm $1" "$tmp/wrk-calm-$1.txt"
    echo "$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk-calm-$1.txt")" \
        "$(to_ms "$(awk '$1 == "99%" {print $2}' "$tmp/wrk-probe-$1.txt")")"
}

read -r boost_calm boost_probe < <(calm boost)
kill "${pids[0]}" && wait "${pids[0]}" || true

start_server noboost 0
read -r idle_rps idle_p99 idle_flood < <(flood noboost)
read -r idle_calm idle_probe < <(calm noboost)

read -r hash_after _ < <(hash_rate_now)
hash_rate=$(awk -v a="$hash_before" -v b="$hash_after" 'BEGIN { printf "%.2f", (a + b) / 2 }')

echo
printf 'argon2id hashes/s, %d threads (raw)          %8.1f   (m=%s KiB, t=%s, p=%s; before %s, after %s)\n' \
    "$cores" "$hash_rate" "$m_kib" "$t_cost" "$p_cost" "$hash_before" "$hash_after"
printf '(1) boost:    logins/s during /health flood  %8.1f   p99 %8.1f ms  (flood %s req/s)\n' \
    "$boost_rps" "$boost_p99" "$boost_flood"
awk -v a="$boost_rps" -v b="$hash_rate" 'BEGIN {
    printf "              ratio to raw                   %8.2f   (target >= 0.3)\n", a / b }'
printf '(2) no boost: logins/s during /health flood  %8.1f   p99 %8.1f ms  (flood %s req/s)\n' \
    "$idle_rps" "$idle_p99" "$idle_flood"
awk -v a="$idle_rps" -v b="$hash_rate" 'BEGIN {
    printf "              ratio to raw                   %8.2f\n", a / b }'
printf '(3) no flood, paced GET /health p99:  boost %.3f ms (logins/s %.1f), no boost %.3f ms (logins/s %.1f)   (target < 5 ms)\n' \
    "$boost_probe" "$boost_calm" "$idle_probe" "$idle_calm"
