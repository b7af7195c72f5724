#!/usr/bin/env bash
# Job throughput: completed jobs per second, with 2 workers inside
# `tenantd serve`, with 2 `tenantd worker` processes (one worker each), with
# 4 external workers over the HTTP worker API (test/bench/http_worker.py:
# claim batches of 10, complete each; the same jobs as an external type;
# then 4 workers driven by wrk, test/bench/http_worker.lua, first each
# waiting for every answer, then each with BENCH_WORKER_CONNS requests under
# way: the figure set against the in-process workers),
# and pgbench with 4 clients (BENCH_PGBENCH=0 skips it) three times:
# running the external claim's UPDATE ... SKIP LOCKED reduced to its core
# (no fairness between orgs; batches of 10, completed by one UPDATE),
# running the worker API's own SQL functions as the HTTP path calls them,
# and running the in-process claim and the completer's statement as the
# in-process path sends them. Each phase also reports the CPU it used per job (tenantd, the
# clients and the cluster's backends together; see cpu_ticks), a figure a
# busy shared machine moves much less than jobs/s.
#
#   test/bench/jobs.sh
#   BENCH_JOBS=50000 BENCH_ORGS=100 test/bench/jobs.sh
#   BENCH_JOBS=10000 BENCH_ROUNDS=5 test/bench/jobs.sh   (the HTTP/pgbench
#       ratios over 5 rounds of the three, alternating, and their medians)
#
# For each run: a fresh database (`tenantd migrate up`), BENCH_ORGS orgs with
# credits, then BENCH_JOBS `sleep` jobs with ms 0 spread evenly over the orgs,
# enqueued by the same SQL function POST /v1/jobs calls
# (public.tenantd_job_enqueue: charge + insert + NOTIFY), all before any
# worker starts. Then the workers start and the script waits until every job
# has succeeded. jobs/s = jobs / (last finished_at - first started_at), both
# taken from the jobs table, so process start-up is not counted. It also
# checks that every job ran exactly once (attempts = 1) and the ledger holds
# exactly one deduction per job and no refund.
#
# It is a measurement, not a test. Environment: BENCH_JOBS (20000),
# BENCH_ORGS (100), BENCH_WORKER_CONNS (10: the requests each wrk-driven
# worker may have under way, one per job of its batch), BENCH_BATCH (the in-process workers' TENANTD_JOB_BATCH;
# default 10, the claim size of the HTTP workers and of the pgbench script,
# so that all claim alike; tenantd's own default is 8), TENANTD_BIN
# (default: the release preset's binary, built here if stale).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
. test/bench/lib.sh
jobs=${BENCH_JOBS:-20000}
orgs=${BENCH_ORGS:-100}
batch=${BENCH_BATCH:-10}

if [ -z "${TENANTD_BIN:-}" ]; then
    ./deps/install.sh
    cmake --preset release >/dev/null
    cmake --build --preset release --target tenantd -j "$(nproc)" >/dev/null
    TENANTD_BIN=$here/build/release/tenantd
fi
BIN=$TENANTD_BIN

started_pg=
if ! ./deps/pg.sh psql -qAt -c "SELECT 1" >/dev/null 2>&1; then
    ./deps/pg.sh start >/dev/null
    started_pg=1
fi
PGURL=$(./deps/pg.sh url 2>/dev/null || echo "postgresql://tenantd@127.0.0.1:55432/tenantd")
base=${PGURL%/*}
dbname=bench_jobs_$$
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    [ -n "$started_pg" ] && ./deps/pg.sh stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
sql() { "$PSQL" "$base/$dbname" -qAt -v ON_ERROR_STOP=1 -c "$1"; }

export TENANTD_DEV=1 TENANTD_TEST_JOBS=1 TENANTD_LOG_LEVEL=warn TENANTD_JOB_BATCH=$batch
export DATABASE_URL=$base/$dbname

# A fresh database with the orgs and the queued jobs; no worker runs yet.
prepare() {
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null
    ./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
    "$BIN" migrate up >/dev/null 2>&1
    sql "INSERT INTO public.orgs (name, slug, schema_name)
         SELECT 'bench ' || i, 'bench-' || i, 'tenant_bench_' || i FROM generate_series(1, $orgs) i;
         SELECT count(public.tenantd_credit_apply(id, $jobs, 'grant')) FROM public.orgs;" >/dev/null
    # Interleaved by org, as many clients enqueueing at once would do.
    # ${1:-sleep}: bench.ext is an external type (declared here, cost 1).
    sql "INSERT INTO public.job_types (type, cost) VALUES ('bench.ext', 1)" >/dev/null
    sql "SELECT count(*) FROM (SELECT public.tenantd_job_enqueue(o.id, '${1:-sleep}', '{\"ms\":0}',
             0, NULL, 3, 1) FROM generate_series(1, $jobs / $orgs) n, public.orgs o
         ORDER BY n, o.id) s;" >/dev/null
    [ "$(sql "SELECT count(*) FROM public.jobs WHERE status = 'queued'")" = "$((jobs / orgs * orgs))" ]
    # Statistics and dirty pages settled before the clock starts: otherwise
    # autoanalyze (which changes the claim's plan) and a checkpoint of the
    # enqueue's pages land at a different moment of each phase.
    sql "ANALYZE; CHECKPOINT" >/dev/null
}

# Waits until every job succeeded (at most 10 minutes), then prints jobs/s.
measure() {
    local label=$1 total=$((jobs / orgs * orgs)) done
    for _ in $(seq 3000); do
        done=$(sql "SELECT count(*) FROM public.jobs WHERE status = 'succeeded'")
        [ "$done" = "$total" ] && break
        sleep 0.2
    done
    [ "$done" = "$total" ] || { echo "$label: only $done of $total jobs done" >&2; exit 1; }
    local secs
    secs=$(sql "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM public.jobs")
    # every job ran once, charged once, never refunded
    [ "$(sql "SELECT count(*) FROM public.jobs WHERE attempts <> 1")" = 0 ]
    [ "$(sql "SELECT count(*), count(DISTINCT job_id) FROM public.credit_transactions
              WHERE type = 'deduction'")" = "$total|$total" ]
    [ "$(sql "SELECT count(*) FROM public.credit_transactions WHERE type = 'refund'")" = 0 ]
    python3 -c "print(f'%-34s %8d jobs %8.2f s %10.0f jobs/s' % ('$label', $total, $secs, $total / $secs))"
    rate=$(python3 -c "print($total / $secs)")
}

stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

# CPU used, in clock ticks, by this script's finished children (tenantd,
# the clients, psql; a child's own children included once waited for) plus
# the cluster's finished backends (the postmaster's children, found as the
# checkpointer's parent). Wall-clock jobs/s swing with whatever else runs on
# a shared machine; CPU per job much less, so each phase reports both.
cpu_ticks() {
    local pm
    pm=$(awk '{print $4}' "/proc/$(sql "SELECT pid FROM pg_stat_activity
                                       WHERE backend_type = 'checkpointer'")/stat")
    awk '{s += $16 + $17} END {print s}' "/proc/$$/stat" "/proc/$pm/stat"
}
cpu_mark() { cpu_start=$(cpu_ticks); }
# After the phase's processes ended: CPU ms per job since cpu_mark.
cpu_report() {
    sleep 0.3 # the postmaster reaps the last backends
    local used total=$((jobs / orgs * orgs))
    used=$(($(cpu_ticks) - cpu_start))
    python3 -c "print(f'%-34s %8.3f CPU ms/job (tenantd + clients + PostgreSQL)' % ('$1', $used * 1000 / $(getconf CLK_TCK) / $total))"
}

echo "jobs: $jobs sleep(0) jobs over $orgs orgs, batch $batch, $(nproc) cores shared with PostgreSQL"

phase_inproc() {
    prepare
    cpu_mark
    TENANTD_JOB_WORKERS=2 TENANTD_LISTEN=127.0.0.1:$(free_port) "$BIN" serve 2>>/tmp/bench-jobs-$$.log &
    pids+=($!)
    measure "serve, 2 in-process workers"
    stop_all
    cpu_report "  (serve, 2 in-process workers)"
}
phase_inproc
in_rates=("$rate")

prepare
cpu_mark
for _ in 1 2; do
    TENANTD_JOB_WORKERS=1 "$BIN" worker 2>>/tmp/bench-jobs-$$.log &
    pids+=($!)
done
measure "2 tenantd worker processes"
stop_all
cpu_report "  (2 tenantd worker processes)"

prepare bench.ext
cpu_mark
port=$(free_port)
export TENANTD_WORKER_TOKEN=bench-worker-token-0123456789
TENANTD_JOB_WORKERS=0 TENANTD_LISTEN=127.0.0.1:$port "$BIN" serve 2>>/tmp/bench-jobs-$$.log &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
wpids=()
for _ in 1 2 3 4; do
    python3 test/bench/http_worker.py 127.0.0.1 "$port" bench.ext >/dev/null &
    wpids+=($!)
done
measure "HTTP worker API, 4 Python workers"
for p in "${wpids[@]}"; do wait "$p" || true; done
stop_all
cpu_report "  (HTTP, 4 Python workers)"

# The same with wrk driving the 4 workers (http_worker.lua): the Python
# clients' own CPU competes with PostgreSQL and tenantd on a small machine.
# $1: requests each worker may have under way (its connections). With 1 a
# worker waits for each completion's answer before it sends the next, so
# the server never sees more than 4 completions at once and completion sets
# (src/job/workerapi.c) stay at 1-2 per loop; with $conns (the jobs of a
# batch run at once, each reported as it ends) sets grow as the in-process
# completer's do. The second is the figure set against the in-process
# workers, the first is reported beside it.
conns=${BENCH_WORKER_CONNS:-10}
phase_wrk() {
    local k=$1 label="HTTP worker API, 4 wrk workers x$1"
    prepare bench.ext
    cpu_mark
    port=$(free_port)
    TENANTD_JOB_WORKERS=0 TENANTD_LISTEN=127.0.0.1:$port "$BIN" serve 2>>/tmp/bench-jobs-$$.log &
    pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
    TENANTD_WORKER_TOKEN=$TENANTD_WORKER_TOKEN BENCH_JOB_TYPE=bench.ext \
        wrk -t4 -c$((4 * k)) -d600s -s test/bench/http_worker.lua \
        "http://127.0.0.1:$port" >/dev/null &
    pids+=($!)
    measure "$label"
    stop_all
    cpu_report "  (HTTP, 4 wrk workers x$k)"
}

phase_pgbench() {
    prepare bench.ext
    # The worker API's claim (tenantd_job_ext_claim) reduced to its core:
    # SKIP LOCKED over the queued external jobs, then the completion.
    cat >/tmp/bench-jobs-$$.sql <<'SQL'
WITH picked AS (SELECT id FROM public.jobs WHERE status = 'queued' AND external
                 AND run_at <= now() AND type = 'bench.ext'
                 ORDER BY org_id, priority DESC, run_at, seq LIMIT 10 FOR UPDATE SKIP LOCKED)
UPDATE public.jobs j SET status = 'running', attempts = attempts + 1,
       locked_by = 'lease:' || gen_random_uuid(), locked_until = now() + interval '30 s',
       leased_at = now(), started_at = coalesce(started_at, clock_timestamp())
  FROM picked p WHERE j.id = p.id;
UPDATE public.jobs SET status = 'succeeded', result = '{"ok":1}', finished_at = clock_timestamp(),
       locked_by = NULL, locked_until = NULL
 WHERE status = 'running' AND locked_by LIKE 'lease:%' AND type = 'bench.ext';
SQL
    run_pgbench "pgbench claim+complete SQL" $((jobs / orgs * orgs / 40))
}

# Runs /tmp/bench-jobs-$$.sql with pgbench, 4 clients, $2 transactions each,
# and reports the jobs that succeeded as phase $1 (sets rate, done_n).
# Its sessions plan as tenantd's connections do (plan_cache_mode, see
# src/db/pool.c): with PostgreSQL's default, control 0017's claim stayed on
# custom plans, planned anew at every call, and this baseline ran at
# 6,700-7,200 jobs/s instead of 9,500-9,700 (measured at 0018), a handicap
# tenantd does not have.
run_pgbench() {
    cpu_mark
    PGOPTIONS="-c plan_cache_mode=force_generic_plan" \
        /usr/lib/postgresql/15/bin/pgbench -n -c 4 -j 2 -t "$2" -f /tmp/bench-jobs-$$.sql \
        "$base/$dbname" >/tmp/bench-jobs-$$.pgbench 2>&1 || cat /tmp/bench-jobs-$$.pgbench >&2
    local secs
    secs=$(sql "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM public.jobs
                WHERE status = 'succeeded'")
    done_n=$(sql "SELECT count(*) FROM public.jobs WHERE status = 'succeeded'")
    python3 -c "print(f'%-34s %8d jobs %8.2f s %10.0f jobs/s' % ('$1, 4 cl', $done_n, $secs, $done_n / $secs))"
    rate=$(python3 -c "print($done_n / $secs)")
    cpu_report "  ($1)"
    rm -f /tmp/bench-jobs-$$.sql /tmp/bench-jobs-$$.pgbench
}

# pgbench running the in-process workers' own SQL: the claim
# (tenantd_job_claim: its UPDATE ... SKIP LOCKED with the fairness between
# orgs, from a rotating cursor kept in the session as each worker keeps its
# own), then the completer's statement for the claimed jobs
# (tenantd_job_finish_succeeded), each a transaction, as tenantd sends them
# but with no handler, no hand-over between threads and no tenantd.
# In-process/this is what tenantd's own layer costs that path.
phase_pgbench_claim() {
    prepare
    cat >/tmp/bench-jobs-$$.sql <<'SQL'
SELECT set_config('bench.ids', coalesce(array_agg(id)::text, '{}'), false),
       set_config('bench.tries', coalesce(array_agg(attempts)::text, '{}'), false),
       set_config('bench.results', '[' || coalesce(string_agg('{"slept_ms":0}', ','), '') || ']',
                  false),
       set_config('bench.cur', CASE WHEN count(*) < 10 THEN '00000000-0000-0000-0000-000000000000'
                                    ELSE max(org_id::text) END, false)
  FROM public.tenantd_job_claim('pgbench',
           coalesce(nullif(current_setting('bench.cur', true), ''),
                    '00000000-0000-0000-0000-000000000000')::uuid, 10, 30000);
SELECT count(*) FROM public.tenantd_job_finish_succeeded('pgbench',
           current_setting('bench.ids')::uuid[], current_setting('bench.tries')::integer[],
           current_setting('bench.results')::jsonb);
SQL
    run_pgbench "pgbench in-process SQL" $((jobs / orgs * orgs / 40))
}

# pgbench running the statements the worker API runs, committed as it
# commits them: one claim of 10 (tenantd_job_ext_claim, with its fairness
# between orgs), then one tenantd_job_ext_finish per job, each its own
# transaction. A procedure does the loop inside the server, so this
# baseline pays no client round trips at all (the HTTP path pays two hops
# per statement). HTTP/this is what tenantd's own layer costs.
phase_pgbench_sql() {
    prepare bench.ext
    # Each client claims with its own rotating org cursor, as each of
    # tenantd's loops does (back to the first org after a short batch), and
    # stops when no job is left.
    sql "CREATE PROCEDURE public.bench_worker_cycle() LANGUAGE plpgsql AS \$\$
         DECLARE
             c record;
             nil constant uuid := '00000000-0000-0000-0000-000000000000';
             cur uuid := nil;
             top uuid;
             n integer;
         BEGIN
             LOOP
                 n := 0;
                 top := cur;
                 FOR c IN SELECT x.org_id, (x.job->>'id')::uuid AS id,
                                 (x.job->>'lease_id')::uuid AS lease
                            FROM public.tenantd_job_ext_claim(NULL, ARRAY['bench.ext'], cur,
                                                              10, 30000) x LOOP
                     COMMIT; -- the claim, then each completion, is a transaction
                     n := n + 1;
                     top := greatest(top, c.org_id);
                     PERFORM public.tenantd_job_ext_finish(c.id, c.lease, NULL, true,
                                                           '{\"ok\":1}', NULL, false, 1000, 60000);
                 END LOOP;
                 COMMIT;
                 EXIT WHEN n = 0 AND cur = nil;
                 cur := CASE WHEN n < 10 THEN nil ELSE top END;
             END LOOP;
         END \$\$" >/dev/null
    echo "CALL public.bench_worker_cycle();" >/tmp/bench-jobs-$$.sql
    run_pgbench "pgbench worker API SQL" 1
    [ "$done_n" = "$((jobs / orgs * orgs))" ] ||
        { echo "pgbench worker API SQL: only $done_n jobs done" >&2; exit 1; }
}

have_wrk=; command -v wrk >/dev/null && have_wrk=1
have_pgbench=
if [ "${BENCH_PGBENCH:-1}" != 0 ] && command -v /usr/lib/postgresql/15/bin/pgbench >/dev/null; then
    have_pgbench=1
fi
[ -n "$have_wrk" ] && [ "$conns" != 1 ] && phase_wrk 1
[ -n "$have_wrk" ] && phase_wrk "$conns" && wrk_rates=("$rate")
[ -n "$have_pgbench" ] && phase_pgbench && pg_rates=("$rate")
[ -n "$have_pgbench" ] && phase_pgbench_sql && sql_rates=("$rate")
[ -n "$have_pgbench" ] && phase_pgbench_claim && claim_rates=("$rate")

# BENCH_ROUNDS > 1: more rounds of the four, in alternating order (so a
# drift of the machine's load favours none), then each round's ratios and
# their medians: one round's ratio swung 0.64-1.09 on a quiet 2-core machine.
if [ -n "$have_wrk" ] && [ -n "$have_pgbench" ] && [ "${BENCH_ROUNDS:-1}" -gt 1 ]; then
    for r in $(seq 2 "$BENCH_ROUNDS"); do
        echo "round $r:"
        if [ $((r % 2)) = 0 ]; then
            phase_pgbench_claim; claim_rates+=("$rate")
            phase_pgbench_sql; sql_rates+=("$rate"); phase_pgbench; pg_rates+=("$rate")
            phase_wrk "$conns"; wrk_rates+=("$rate"); phase_inproc; in_rates+=("$rate")
        else
            phase_inproc; in_rates+=("$rate"); phase_wrk "$conns"; wrk_rates+=("$rate")
            phase_pgbench; pg_rates+=("$rate"); phase_pgbench_sql; sql_rates+=("$rate")
            phase_pgbench_claim; claim_rates+=("$rate")
        fi
    done
    python3 - "${in_rates[*]}" "${wrk_rates[*]}" "${pg_rates[*]}" "${sql_rates[*]}" \
        "${claim_rates[*]}" <<'PY'
import statistics, sys
i, w, p, s, c = ([float(x) for x in a.split()] for a in sys.argv[1:6])
for top, base in (("in-process workers", "pgbench in-process SQL"),
                  ("in-process workers", "pgbench claim+complete SQL"),
                  ("HTTP worker API (wrk)", "in-process workers"),
                  ("HTTP worker API (wrk)", "pgbench claim+complete SQL"),
                  ("HTTP worker API (wrk)", "pgbench worker API SQL")):
    a = {"in-process workers": i, "HTTP worker API (wrk)": w,
         "pgbench claim+complete SQL": p, "pgbench worker API SQL": s,
         "pgbench in-process SQL": c}
    r = [x / y for x, y in zip(a[top], a[base])]
    print(f"{top} / {base} per round: " + " ".join(f"{x:.2f}" for x in r)
          + f"; median {statistics.median(r):.2f} over {len(r)} rounds")
PY
fi
rm -f /tmp/bench-jobs-$$.log
