#!/usr/bin/env bash
# POST /v1/credits/spend throughput: tenantd against PostgreSQL doing the
# same work directly (pgbench), in one run.
#
#   test/bench/credits.sh
#
# 1. tenantd (release build, its own database) gets 100 orgs by signup, an
#    API key each and 10^12 credits each by operator grant;
# 2. wrk -c64 POSTs {"amount":1} to /v1/credits/spend, each request with the
#    next org's API key (a Lua script holding the 100 keys);
# 3. pgbench -c64 runs the same transaction straight on PostgreSQL: BEGIN;
#    UPDATE credit_accounts ... WHERE balance >= 1 RETURNING; INSERT INTO
#    credit_transactions ...; END; over the same 100 orgs (prepared protocol);
#    then, for reference, the same work as one CTE statement per transaction
#    (one round trip, as tenantd sends it);
# 4. prints the rates and the ratios tenantd/pgbench (target >= 0.7 against
#    the UPDATE + INSERT transaction), and checks the ledger invariants
#    afterwards (balance == sum of the ledger).
#
# Both sides share this machine's cores with their load generator; compare
# ratios, not absolute figures. Measurement, not a test: it fails only when
# something cannot start or answers wrongly.
#
# Environment: BENCH_DURATION (seconds, default 10), BENCH_CONNECTIONS
# (default 64), BENCH_THREADS (wrk -t / pgbench -j, default 2), BENCH_BIN (a
# tenantd binary to use instead of building the release preset),
# TENANTD_THREADS / TENANTD_DB_POOL_SIZE / TENANTD_DB_PIPELINE_DEPTH (passed
# to tenantd; its defaults otherwise).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
duration=${BENCH_DURATION:-10}
conns=${BENCH_CONNECTIONS:-64}
wthreads=${BENCH_THREADS:-2}
orgs=100
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")

./deps/install.sh >/dev/null
if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
else
    cmake --preset release >/dev/null
    cmake --build --preset release --target tenantd -j 2 >/dev/null
    BIN=$here/build/release/tenantd
fi

tmp=$(mktemp -d /tmp/tenantd-bench-credits.XXXXXX)
chmod 755 "$tmp"
tenantd_pid=
dbname=bench_credits_$$
cleanup() {
    set +e
    [ -n "$tenantd_pid" ] && kill "$tenantd_pid" 2>/dev/null && wait "$tenantd_pid" 2>/dev/null
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Started if needed, never stopped: other work shares this cluster.
./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"
sql() { "$PGBIN/psql" "$db_url" -qAt -v ON_ERROR_STOP=1 -c "$1"; }

port=$(free_port)
operator=bench-operator-$$-$RANDOM$RANDOM
DATABASE_URL=$db_url TENANTD_LISTEN=127.0.0.1:$port TENANTD_DEV=1 TENANTD_JOB_WORKERS=0 \
    TENANTD_LOG_LEVEL=warn TENANTD_OPERATOR_TOKEN=$operator TENANTD_LOGIN_LIMIT=0 TENANTD_SIGNUP_LIMIT=0 \
    TENANTD_ARGON2_M_KIB=1024 TENANTD_ARGON2_T=1 \
    "$BIN" serve --migrate 2>"$tmp/tenantd.log" &
tenantd_pid=$!
for _ in $(seq 100); do
    curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS --max-time 1 "http://127.0.0.1:$port/health" >/dev/null ||
    { echo "bench: tenantd did not start" >&2; cat "$tmp/tenantd.log" >&2; exit 1; }

# Orgs, keys and credits through the API, as a client would; the key list
# becomes the wrk script, the org ids pgbench's lookup table.
echo "bench: creating $orgs orgs with an API key and 10^12 credits each" >&2
python3 - "$port" "$operator" "$orgs" "$tmp" <<'PY'
import http.client, json, sys, uuid
port, operator, n, tmp = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def call(method, path, body, token=None):
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = "Bearer " + token
    c.request(method, path, json.dumps(body), h)
    r = c.getresponse()
    data = json.loads(r.read() or b"null")
    if r.status not in (200, 201):
        sys.exit(f"bench: {method} {path}: {r.status} {data}")
    return data
keys, ids = [], []
for i in range(n):
    slug = "bench-" + uuid.uuid4().hex[:10]
    o = call("POST", "/v1/orgs", {"name": slug, "slug": slug,
             "admin": {"email": f"a@{slug}.example.com", "password": "bench-password-1"}})
    k = call("POST", "/v1/api-keys", {"name": "bench", "role": "admin"}, o["access_token"])
    call("POST", f"/v1/admin/orgs/{slug}/credits", {"amount": 10 ** 12}, operator)
    keys.append(k["key"])
    ids.append(o["org"]["id"])
with open(f"{tmp}/spend.lua", "w") as f:
    f.write("local keys = {" + ",".join(json.dumps(k) for k in keys) + "}\n")
    f.write("""local i = 0
local body = '{"amount":1}'
request = function()
    i = i + 1
    return wrk.format("POST", "/v1/credits/spend",
        {["Authorization"] = "Bearer " .. keys[(i % #keys) + 1],
         ["Content-Type"] = "application/json"}, body)
end
""")
with open(f"{tmp}/orgs.csv", "w") as f:
    for i, oid in enumerate(ids, 1):
        f.write(f"{i},{oid}\n")
PY

# One spend must answer 201 before loading.
key1=$(grep -o '"tdk_[^"]*"' "$tmp/spend.lua" | sed -n 1p | tr -d '"')
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $key1" \
    -H 'Content-Type: application/json' -d '{"amount":1}' "http://127.0.0.1:$port/v1/credits/spend")
[ "$status" = 201 ] || { echo "bench: a spend answered $status" >&2; exit 1; }

echo "bench: wrk -t$wthreads -c$conns -d${duration}s -s spend.lua POST /v1/credits/spend" >&2
out=$(timeout $((duration + 60)) wrk -t"$wthreads" -c"$conns" -d"${duration}s" --latency \
    -s "$tmp/spend.lua" "http://127.0.0.1:$port")
printf '%s\n' "$out" >"$tmp/wrk.txt"
if grep -q 'Non-2xx' <<<"$out"; then
    echo "bench: tenantd answered non-2xx responses:" >&2
    printf '%s\n' "$out" >&2
    exit 1
fi
rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
[ -n "$rps" ] || { echo "bench: cannot read wrk's output:" >&2; printf '%s\n' "$out" >&2; exit 1; }
kill -0 "$tenantd_pid" 2>/dev/null || { echo "bench: tenantd died" >&2; cat "$tmp/tenantd.log" >&2; exit 1; }
# Stop tenantd so that pgbench has the machine to itself, as wrk+tenantd had.
kill "$tenantd_pid"
wait "$tenantd_pid" 2>/dev/null || true
tenantd_pid=

# The same work straight on PostgreSQL.
sql "CREATE TABLE bench_orgs (n int PRIMARY KEY, org_id uuid NOT NULL)"
"$PGBIN/psql" "$db_url" -qAt -v ON_ERROR_STOP=1 -c "\\copy bench_orgs FROM '$tmp/orgs.csv' CSV"
cat >"$tmp/spend.sql" <<'SQL'
\set n random(1, 100)
BEGIN;
UPDATE public.credit_accounts a SET balance = a.balance - 1, updated_at = clock_timestamp() FROM bench_orgs b WHERE b.n = :n AND a.org_id = b.org_id AND a.balance >= 1 RETURNING a.org_id AS org, a.balance AS bal, a.updated_at AS at \gset
INSERT INTO public.credit_transactions (org_id, amount, type, balance_after, created_at) VALUES (:org, -1, 'spend', :bal, :at) RETURNING id;
END;
SQL
# pgbench_run NAME FILE: sets tps_NAME and failed_NAME.
pgbench_run() {
    local out
    echo "bench: pgbench -n -M prepared -c$conns -j$wthreads -T$duration -f $(basename "$2")" >&2
    out=$(timeout $((duration + 60)) "$PGBENCH" -n -M prepared -c "$conns" -j "$wthreads" \
        -T "$duration" -f "$2" "$db_url" 2>&1)
    printf '%s\n' "$out" >"$tmp/pgbench-$1.txt"
    printf -v "tps_$1" '%s' "$(awk '/^tps = / {print $3; exit}' <<<"$out")"
    printf -v "failed_$1" '%s' "$(awk '/^number of failed transactions:/ {print $5}' <<<"$out")"
    local v="tps_$1"
    [ -n "${!v}" ] || { echo "bench: cannot read pgbench's output:" >&2; printf '%s\n' "$out" >&2; exit 1; }
}
pgbench_run tx "$tmp/spend.sql"
# A stricter baseline: the same work as ONE statement (one round trip, as
# tenantd sends it), for reference.
cat >"$tmp/spend1.sql" <<'SQL'
\set n random(1, 100)
WITH a AS (UPDATE public.credit_accounts a SET balance = a.balance - 1, updated_at = clock_timestamp() FROM bench_orgs b WHERE b.n = :n AND a.org_id = b.org_id AND a.balance >= 1 RETURNING a.org_id, a.balance, a.updated_at) INSERT INTO public.credit_transactions (org_id, amount, type, balance_after, created_at) SELECT a.org_id, -1, 'spend', a.balance, a.updated_at FROM a RETURNING id;
SQL
pgbench_run one "$tmp/spend1.sql"

bad=$(sql "SELECT count(*) FROM public.credit_accounts a WHERE a.balance <> (SELECT coalesce(sum(t.amount), 0) FROM public.credit_transactions t WHERE t.org_id = a.org_id)")
spends=$(sql "SELECT count(*) FROM public.credit_transactions WHERE type = 'spend'")

echo
printf '%-34s %12s %10s\n' side 'spends/s' 'p99'
printf '%-34s %12.0f %10s\n' "tenantd (wrk -c$conns)" "$rps" "$p99"
printf '%-34s %12.0f %10s\n' "pgbench -c$conns BEGIN/UPDATE/INSERT/END" "$tps_tx" "-"
printf '%-34s %12.0f %10s\n' "pgbench -c$conns one-statement CTE" "$tps_one" "-"
awk -v r="$rps" -v t="$tps_tx" -v o="$tps_one" 'BEGIN {
    printf "ratio tenantd/pgbench (same transaction): %.2f (target >= 0.7)\n", r / t
    printf "ratio tenantd/pgbench (one-statement CTE): %.2f (for reference)\n", r / o }'
echo "pgbench failed transactions: ${failed_tx:-0} + ${failed_one:-0}; ledger rows of type spend:" \
    "$spends; orgs whose balance differs from their ledger: $bad"
[ "$bad" = 0 ] || { echo "bench: ledger invariant broken" >&2; exit 1; }
