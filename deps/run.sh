#!/usr/bin/env bash
# Builds tenantd (release preset) and serves it on http://127.0.0.1:8080 in
# development mode against the private PostgreSQL, in the foreground.
#
#   ./deps/run.sh [tenantd serve flags...]    e.g. ./deps/run.sh --threads 2
#
# Installs missing packages first (deps/install.sh). Migrations run on start.
# Ctrl-C stops the server and then the private PostgreSQL, if this script
# started it (a cluster that was already running is left running).
# Any TENANTD_* variable in the environment is passed on (tenantd --help).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

./deps/install.sh
cmake --preset release >/dev/null
cmake --build --preset release --target tenantd -j "$(nproc)"

started_pg=
stop_pg() {
    if [ -n "$started_pg" ]; then
        echo "stopping the private PostgreSQL" >&2
        ./deps/pg.sh stop || true
    fi
}
trap stop_pg EXIT
if ! ./deps/pg.sh status >/dev/null 2>&1; then
    started_pg=1
fi
./deps/pg.sh start

# Ctrl-C reaches tenantd too (same process group); it drains and exits, then
# this script goes on to its EXIT trap. A handler (not "ignore") so tenantd
# does not inherit an ignored SIGINT.
trap : INT TERM

export DATABASE_URL=${DATABASE_URL:-$(./deps/pg.sh url)}
export TENANTD_DEV=${TENANTD_DEV:-1}
export TENANTD_LISTEN=${TENANTD_LISTEN:-127.0.0.1:8080}
echo "tenantd: serving on http://$TENANTD_LISTEN (dev mode; Ctrl-C stops)" >&2
rc=0
./build/release/tenantd serve --migrate "$@" || rc=$?
exit "$rc"
