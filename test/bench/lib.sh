# Helpers the benchmark scripts share; sourced, not run.

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Converts wrk's latency ("812.00us", "1.23ms", "1.01s") to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# check_wrk NAME FILE: fails on non-2xx answers (showing the last lines of
# $BENCH_SERVER_LOG when set); prints socket errors.
check_wrk() {
    if grep -q 'Non-2xx' "$2"; then
        echo "bench: $1 got non-2xx answers:" >&2
        cat "$2" >&2
        if [ -n "${BENCH_SERVER_LOG:-}" ] && [ -f "$BENCH_SERVER_LOG" ]; then
            echo "bench: tenantd's log (last lines):" >&2
            tail -20 "$BENCH_SERVER_LOG" >&2
        fi
        exit 1
    fi
    if grep -q 'Socket errors' "$2"; then
        echo "bench: $1: $(grep 'Socket errors' "$2")" >&2
    fi
    grep -q '^Requests/sec:' "$2" || { echo "bench: cannot read wrk's output for $1" >&2; cat "$2" >&2; exit 1; }
}

# build_argon2rate DIR: compiles test/bench/argon2rate.c (the raw argon2id
# rate of this machine: one thread per core, the server's parameters) to
# DIR/argon2rate. From the checkout's top folder, as the scripts run.
build_argon2rate() {
    cc -O2 -o "$1/argon2rate" test/bench/argon2rate.c -largon2 -lpthread
}
