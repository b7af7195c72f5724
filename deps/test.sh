#!/usr/bin/env bash
# Builds tenantd and runs the whole test suite (unit, end-to-end and database
# tests) with ctest: first in the `dev` build, then in the `asan` build
# (AddressSanitizer + UndefinedBehaviorSanitizer).
#
#   ./deps/test.sh [ctest args...]     e.g. ./deps/test.sh -R e2e.test_health
#
# Installs missing packages first (deps/install.sh) and starts the private
# PostgreSQL (deps/pg.sh); stops it at exit if this script started it.
# Needs no terminal; works as root and under CI=true. Exits non-zero if any
# test fails in either build.
#
# Environment:
#   TENANTD_TEST_PRESETS   builds to test, in order (default: "dev asan")
#   CTEST_PARALLEL_LEVEL   tests run at once (default: number of cores)
#   TENANTD_PG_PORT, TENANTD_PG_DIR   the private PostgreSQL (deps/pg.sh)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

presets=${TENANTD_TEST_PRESETS:-dev asan}
jobs=$(nproc)
export CTEST_PARALLEL_LEVEL=${CTEST_PARALLEL_LEVEL:-$jobs}
# The harness and deps/pg.sh read these; exported so every test sees the
# same cluster even when set only for this script.
if [ -n "${TENANTD_PG_PORT:-}" ]; then export TENANTD_PG_PORT; fi
if [ -n "${TENANTD_PG_DIR:-}" ]; then export TENANTD_PG_DIR; fi

./deps/install.sh

started_pg=
log=$(mktemp /tmp/tenantd-ctest.XXXXXX) # one build's ctest output, for the counts
cleanup() {
    rm -f "$log"
    if [ -n "$started_pg" ]; then ./deps/pg.sh stop || true; fi
}
trap cleanup EXIT
if ! ./deps/pg.sh status >/dev/null 2>&1; then
    started_pg=1
fi
./deps/pg.sh start
# The port it runs on (55432, or the next free one if that was taken), for
# every test process.
TENANTD_PG_PORT=$(./deps/pg.sh port)
export TENANTD_PG_PORT

failed=()
npassed=0
nfailed=0
nskipped=0
for preset in $presets; do
    echo "=== $preset: build" >&2
    if ! { cmake --preset "$preset" >/dev/null && cmake --build --preset "$preset" -j "$jobs"; }; then
        failed+=("$preset (build)")
        nfailed=$((nfailed + 1))
        continue
    fi
    echo "=== $preset: test" >&2
    start=$(date +%s)
    set +e
    ctest --preset "$preset" --no-tests=error "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ]; then
        failed+=("$preset")
    fi
    # "100% tests passed, 0 tests failed out of 28" -> counts for the total.
    read -r f n < <(sed -nE 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1 \2/p' "$log" | tail -1) || true
    # ctest counts a Skipped test (e.g. a toolchain it could not install) as
    # passed; here it is counted apart.
    s=$(grep -cE '^[[:space:]]+[0-9]+ - .* \(Skipped\)$' "$log") || true
    if [ -n "${n:-}" ]; then
        npassed=$((npassed + n - f - s))
        nfailed=$((nfailed + f))
        nskipped=$((nskipped + s))
    elif [ "$rc" != 0 ]; then
        nfailed=$((nfailed + 1))
    fi
    f= n= s=
    echo "=== $preset: $(($(date +%s) - start)) s" >&2
done

# One closing line over every build, in the plain form CI tools read.
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED in: ${failed[*]}"
    echo "total: $npassed passed, $nfailed failed, $nskipped skipped"
    exit 1
fi
echo "all tests passed in: $presets"
echo "total: $npassed passed, $nfailed failed, $nskipped skipped"
