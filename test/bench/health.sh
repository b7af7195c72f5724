#!/usr/bin/env bash
# GET /health throughput and tail latency: tenantd against nginx.
#
#   test/bench/health.sh
#
# Both servers run one event loop (TENANTD_THREADS=1, nginx worker_processes
# 1) on free ports of 127.0.0.1 and answer GET /health with the same body,
# {"status":"ok"}, as application/json. wrk loads each in turn with the same
# settings, in alternating rounds; the script prints the median requests/s
# and p99 latency of both and the ratios tenantd/nginx. With 2 cores or more,
# the servers are pinned to CPU 1 and wrk to CPU 0, so they do not trade
# places on the cores between runs. It is a measurement, not a test: it runs
# only when called and fails only when a server cannot be started or answers
# wrongly.
#
# Environment: BENCH_DURATION (wrk -d, default 10s), BENCH_CONNECTIONS
# (wrk -c, default 64), BENCH_THREADS (wrk -t, default 1), BENCH_ROUNDS
# (default 3).
# Needs the release build (built here if stale), the private PostgreSQL
# (started here, stopped at exit if this script started it) and nginx
# (Debian's nginx-light, installed here if missing: deps/install.sh does not).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
duration=${BENCH_DURATION:-10s}
conns=${BENCH_CONNECTIONS:-64}
wthreads=${BENCH_THREADS:-1}
rounds=${BENCH_ROUNDS:-3}

./deps/install.sh
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || ./deps/install.sh nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cmake --preset release >/dev/null
cmake --build --preset release --target tenantd -j "$(nproc)" >/dev/null
BIN=$here/build/release/tenantd

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

# Pinning: servers on CPU 1, wrk on CPU 0 (no pinning on a single core).
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    on_server_cpu=(taskset -c 1) on_client_cpu=(taskset -c 0)
else
    on_server_cpu=() on_client_cpu=()
fi

# Waits up to 10 s for GET /health on port $1 to answer 200 with the body.
wait_health() {
    local body
    for _ in $(seq 100); do
        body=$(curl -fsS --max-time 1 "http://127.0.0.1:$1/health" 2>/dev/null) || body=
        if [ "$body" = '{"status":"ok"}' ]; then return 0; fi
        sleep 0.1
    done
    echo "bench: no {\"status\":\"ok\"} from 127.0.0.1:$1/health (last: '$body')" >&2
    return 1
}

./deps/pg.sh status >/dev/null 2>&1 || started_pg=1
./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"

tport=$(free_port)
DATABASE_URL=$db_url TENANTD_LISTEN=127.0.0.1:$tport TENANTD_THREADS=1 TENANTD_DEV=1 \
    TENANTD_JOB_WORKERS=0 TENANTD_LOG_LEVEL=warn \
    "${on_server_cpu[@]}" "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
tenantd_pid=$!
wait_health "$tport" || { cat "$tmp/tenantd.log" >&2; exit 1; }

nport=$(free_port)
mkdir -p "$tmp/nginx"
{
    # As root the master would hand its workers to `nobody`; keep them ours.
    if [ "$(id -u)" = 0 ]; then echo 'user root;'; fi
    cat <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
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
"${on_server_cpu[@]}" "$NGINX" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" &
nginx_pid=$!
wait_health "$nport" || { cat "$tmp/nginx/error.log" >&2; exit 1; }

# run NAME PORT: loads one server once; appends to rps_NAME and p99_NAME.
run() {
    local out rps p99
    out=$(timeout 120 "${on_client_cpu[@]}" wrk -t"$wthreads" -c"$conns" -d"$duration" --latency \
        "http://127.0.0.1:$2/health")
    printf '%s\n' "$out" >>"$tmp/wrk-$1.txt"
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "bench: $1 answered non-2xx responses:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    fi
    if grep -q 'Socket errors' <<<"$out"; then
        echo "bench: $1: $(grep 'Socket errors' <<<"$out")" >&2
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    if [ -z "$rps" ] || [ -z "$p99" ]; then
        echo "bench: cannot read wrk's output for $1:" >&2
        printf '%s\n' "$out" >&2
        exit 1
    fi
    p99=$(to_ms "$p99")
    printf '  %-8s %12.0f req/s %10.3f ms p99\n' "$1" "$rps" "$p99" >&2
    eval "rps_$1+=(\"\$rps\"); p99_$1+=(\"\$p99\")"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Rounds alternate between the servers, so a load that drifts on a shared
# machine hits both alike; the medians are compared.
rps_tenantd=() p99_tenantd=() rps_nginx=() p99_nginx=()
echo "bench: $rounds rounds of wrk -t$wthreads -c$conns -d$duration --latency, tenantd then nginx" >&2
for r in $(seq "$rounds"); do
    echo "round $r:" >&2
    run tenantd "$tport"
    run nginx "$nport"
done

# The server must have come through the load alive.
kill -0 "$tenantd_pid" 2>/dev/null || { echo "bench: tenantd died" >&2; cat "$tmp/tenantd.log" >&2; exit 1; }

rt=$(median "${rps_tenantd[@]}") pt=$(median "${p99_tenantd[@]}")
rn=$(median "${rps_nginx[@]}") pn=$(median "${p99_nginx[@]}")
echo
printf '%-8s %12s %10s   (medians of %s rounds)\n' server 'req/s' 'p99 ms' "$rounds"
printf '%-8s %12.0f %10.3f\n' tenantd "$rt" "$pt"
printf '%-8s %12.0f %10.3f\n' nginx "$rn" "$pn"
awk -v rt="$rt" -v rn="$rn" -v pt="$pt" -v pn="$pn" 'BEGIN {
    printf "ratio tenantd/nginx: req/s %.2f (higher is better), p99 %.2f (lower is better)\n",
        rt / rn, (pn > 0 ? pt / pn : 0) }'
