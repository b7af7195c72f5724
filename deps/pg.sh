#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for development, tests and benchmarks.
#
#   deps/pg.sh start | stop | status | url | psql [args]
#
# Settings (environment):
#   TENANTD_PG_DIR   data folder        (default: <checkout>/.local/pg)
#   TENANTD_PG_PORT  TCP port on 127.0.0.1 (default: 55432, or the next free
#                    one above it when something else holds 55432)
#
#   deps/pg.sh port  prints the port the cluster runs (or will run) on.
#
# As root, PostgreSQL refuses to run, so initdb/pg_ctl run as the `postgres`
# OS user and the folder is owned by it; as a normal user they run directly.
# The cluster trusts local connections: it is for this machine only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DEFAULT_PORT=55432
DIR=${TENANTD_PG_DIR:-$here/.local/pg}
case "$DIR" in /*) ;; *) DIR=$PWD/$DIR ;; esac
LOG="$DIR.log"

# From / so that a working folder the postgres user cannot enter (a checkout
# under /root) draws no "could not change directory" warnings.
as_pg() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# As root the data folder must be reachable by the postgres user; a checkout
# under a private home (mode 700) is not, so fall back to a folder in /tmp.
pick_dir() {
    if [ "$(id -u)" = 0 ] && [ -z "${TENANTD_PG_DIR:-}" ]; then
        mkdir -p "$(dirname "$DIR")"
        if ! runuser -u postgres -- test -x "$(dirname "$DIR")"; then
            DIR=/tmp/tenantd-pg-$(printf %s "$here" | sha256sum | cut -c1-12)
            LOG="$DIR.log"
        fi
    fi
}

set_port() {
    PORT=$1
    URL="postgresql://tenantd@127.0.0.1:$PORT/tenantd"
}

# The port: the one asked for; else the one the running server listens on
# (postmaster.pid's 4th line); else the one the last start chose (kept in
# $DIR.port); else the default.
resolve_port() {
    if [ -n "${TENANTD_PG_PORT:-}" ]; then
        set_port "$TENANTD_PG_PORT"
    elif [ -f "$DIR/postmaster.pid" ] && running; then
        set_port "$(sed -n 4p "$DIR/postmaster.pid")"
    elif [ -f "$DIR.port" ]; then
        set_port "$(cat "$DIR.port")"
    else
        set_port "$DEFAULT_PORT"
    fi
}

# Something accepts connections on the port (another cluster, any server).
port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

running() {
    [ -f "$DIR/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1
}

start() {
    # Parallel test runs may all ask for the cluster at once.
    mkdir -p "$(dirname "$DIR")"
    exec 9>"$DIR.lock"
    flock 9
    if running; then return 0; fi
    if [ ! -f "$DIR/PG_VERSION" ]; then
        mkdir -p "$DIR"
        if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DIR"; fi
        chmod 700 "$DIR"
        as_pg "$PGBIN/initdb" -D "$DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        # Tuned for a throwaway cluster: speed over durability.
        cat <<CONF | as_pg tee -a "$DIR/postgresql.conf" >/dev/null
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
    fi
    touch "$LOG" && { [ "$(id -u)" != 0 ] || chown postgres:postgres "$LOG"; }
    # 55432 lies in Linux's ephemeral range (32768-60999): an outgoing
    # connection or another program may hold it. Unless a port was asked
    # for, the next free one is taken instead, and kept for `url` and later
    # starts.
    local tries=1 p=$PORT
    if [ -z "${TENANTD_PG_PORT:-}" ]; then tries=50; fi
    while :; do
        if [ "$tries" -gt 1 ] && port_taken "$p"; then
            tries=$((tries - 1)) p=$((p + 1))
            continue
        fi
        local before
        before=$(stat -c %s "$LOG")
        # 9>&-: the server must not inherit the lock, or it would hold it for
        # its whole life and every later `start` would wait on it forever.
        # -k '': TCP only. A Unix socket path longer than 107 bytes (a
        # checkout in a deep folder) makes the server refuse to start, and
        # nothing here uses one. -p: the port is chosen here, not in the
        # data folder's configuration.
        if as_pg "$PGBIN/pg_ctl" -D "$DIR" -l "$LOG" -o "-k '' -p $p" -w -t 60 start >/dev/null 9>&-; then
            break
        fi
        if [ "$tries" -gt 1 ] && tail -c +$((before + 1)) "$LOG" | grep -q 'Address already in use'; then
            tries=$((tries - 1)) p=$((p + 1))
            continue
        fi
        echo "deps/pg.sh: PostgreSQL did not start on port $p; the end of $LOG:" >&2
        tail -n 20 "$LOG" >&2 || true
        exit 1
    done
    set_port "$p"
    if [ -z "${TENANTD_PG_PORT:-}" ]; then echo "$PORT" >"$DIR.port"; fi
    # Role and database of the app; superuser so tests may create databases.
    as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT 'CREATE ROLE tenantd LOGIN SUPERUSER' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenantd') \gexec
SELECT 'CREATE DATABASE tenantd OWNER tenantd' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tenantd') \gexec
SQL
}

stop() {
    if running; then as_pg "$PGBIN/pg_ctl" -D "$DIR" -m fast -w stop >/dev/null; fi
}

pick_dir
resolve_port
case "${1:-}" in
    start) start; echo "PostgreSQL ready: $URL" ;;
    stop) stop ;;
    status) if running; then echo "running: $URL ($DIR)"; else echo "stopped ($DIR)"; exit 3; fi ;;
    url) echo "$URL" ;;
    port) echo "$PORT" ;;
    psql) shift; exec "$PGBIN/psql" "$URL" "$@" ;;
    *) echo "usage: deps/pg.sh start|stop|status|url|port|psql [args]" >&2; exit 2 ;;
esac
