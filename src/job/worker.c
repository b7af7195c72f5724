/*
 * Job workers: N threads, each with its own blocking libpq connection, plus
 * one coordinator thread. Blocking libpq on threads of their own keeps the
 * event loops free of job work entirely (handlers may take seconds) and is
 * the simplest robust shape; every state change is one SQL function of the
 * jobs migration, so a crash at any point leaves a consistent queue.
 *
 * A worker: claim a batch (tenantd_job_claim: SKIP LOCKED, round-robin
 * between orgs from a rotating cursor), run each job's handler, end the
 * attempt: a success goes to the completer; a retry with backoff or a
 * failure + refund is tenantd_job_finish, at once. With nothing to do it
 * sleeps until the coordinator hears a NOTIFY or TENANTD_JOB_POLL_MS pass
 * (run_at in the future, retries).
 *
 * The completer (a thread with its own connection) ends succeeded attempts
 * in sets (tenantd_job_finish_succeeded), group-commit style: all that
 * arrived while the previous set ran go in the next one. A statement and
 * a commit per job cost the database as much as the claims did; a worker
 * no longer waits for its completion either. The queue is bounded (a
 * worker waits for room), so a database that is away holds workers back
 * instead of piling up results. A completion lost with the process is a
 * job whose lease lapses and which runs again, as with a crash mid-job.
 *
 * The coordinator: LISTEN tenantd_jobs on a connection outside any pool
 * (re-LISTENs after a reconnect and wakes everyone, since notifications
 * sent meanwhile are lost), renews the leases of every job this process
 * holds (at a third of TENANTD_JOB_LEASE_MS), and reaps jobs whose lease
 * lapsed (a worker died), every poll interval. In `tenantd worker` (no
 * listener thread of the worker API there) it also fires due schedule
 * ticks every TENANTD_SCHEDULE_TICK_MS.
 *
 * Shutdown: workers stop claiming; a running job may finish until the
 * drain deadline (handlers wait through job_run_wait, which returns
 * JOB_WAIT_STOP then), then it and every claimed job not started are
 * released. The completer then ends what it holds (trying until the drain
 * deadline), and the coordinator keeps renewing leases until both are gone.
 */
#include "job/job.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/rand.h>

#include "core/config.h"
#include "core/log.h"
#include "core/strbuf.h"
#include "core/thread.h"
#include "db/listen.h"
#include "db/migrate.h"
#include "job/internal.h"

#define NIL_UUID "00000000-0000-0000-0000-000000000000"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct claimed {
    char id[37], org_id[37], schema[64], type[64];
    char *payload; /* malloc'd JSON text */
    int attempt, max_attempts;
};

struct worker {
    int index;
    pthread_t thread;
    PGconn *conn;
    char cursor[37]; /* claim from the org after this one (round-robin) */
    struct claimed *batch;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    bool running;
    bool stopping; /* no new claims */
    bool coord_stop;
    uint64_t wake_gen; /* bumped on NOTIFY / reconnect / stop */
    uint64_t drain_deadline;
    char *conninfo;
    char ident[128]; /* this process's locked_by */
    int n;
    struct worker *workers;
    pthread_t coord;
    int wake_fd; /* interrupts the coordinator's poll */
    bool ticks;  /* the coordinator fires schedule ticks (`tenantd worker`) */
} W = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake_fd = -1};

/* ---- waiting ---------------------------------------------------------- */

static void abs_deadline(uint64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

static void wake_all(void)
{
    pthread_mutex_lock(&W.mu);
    W.wake_gen++;
    pthread_cond_broadcast(&W.cond);
    pthread_mutex_unlock(&W.mu);
}

static bool stopping(void)
{
    pthread_mutex_lock(&W.mu);
    bool s = W.stopping;
    pthread_mutex_unlock(&W.mu);
    return s;
}

/* Sleeps up to ms, or until a wake (generation moves past gen) or stop. */
static void wait_for_work(uint64_t gen, uint64_t ms)
{
    uint64_t until = job_now_ns() + ms * 1000000u;
    struct timespec ts;
    abs_deadline(until, &ts);
    pthread_mutex_lock(&W.mu);
    while (!W.stopping && W.wake_gen == gen && job_now_ns() < until)
        if (pthread_cond_timedwait(&W.cond, &W.mu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&W.mu);
}

enum job_wait job_run_wait(struct job_run *run, uint64_t until_ns)
{
    enum job_wait out;
    pthread_mutex_lock(&W.mu);
    for (;;) {
        uint64_t now = job_now_ns();
        if (W.stopping && now >= W.drain_deadline) {
            out = JOB_WAIT_STOP;
            break;
        }
        if (now >= until_ns) {
            out = JOB_WAIT_DONE;
            break;
        }
        if (now >= run->deadline_ns) {
            out = JOB_WAIT_DEADLINE;
            break;
        }
        uint64_t at = until_ns < run->deadline_ns ? until_ns : run->deadline_ns;
        if (W.stopping && W.drain_deadline < at)
            at = W.drain_deadline;
        struct timespec ts;
        abs_deadline(at, &ts);
        pthread_cond_timedwait(&W.cond, &W.mu, &ts);
    }
    pthread_mutex_unlock(&W.mu);
    return out;
}

/* ---- database helpers --------------------------------------------------- */

static PGconn *connect_db(const char *who)
{
    PGconn *c = PQconnectdb(W.conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        log_msg(LOG_WARN, "job %s: cannot connect to the database: %s", who, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, NULL, NULL);
    /* Generic plans, as on the pools' connections (db/pool.c): left to
     * PostgreSQL's default, the claim's statement was planned anew at
     * every call, which cost the in-process path a fifth of its speed. */
    PGresult *r = PQexec(c, "SELECT set_config('application_name', 'tenantd worker', false),"
                            " set_config('plan_cache_mode', 'force_generic_plan', false)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        log_msg(LOG_WARN, "job %s: cannot set up the connection: %s", who, PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return NULL;
    }
    log_msg(LOG_DEBUG, "job %s: connected (plan_cache_mode %s)", who, PQgetvalue(r, 0, 1));
    PQclear(r);
    return c;
}

/* ---- one worker ------------------------------------------------------------ */

static const char claim_sql[] =
    "SELECT id, org_id, schema_name, type, payload::text, attempts, max_attempts"
    " FROM public.tenantd_job_claim($1, $2::uuid, $3::int, $4::int)";

/* Claims up to job_batch jobs into wk->batch; returns how many, -1 when the
 * connection failed. */
static int claim(struct worker *wk)
{
    char batch[16], lease[16];
    snprintf(batch, sizeof batch, "%d", (int)g_config->job_batch);
    snprintf(lease, sizeof lease, "%d", (int)g_config->job_lease_ms);
    for (int pass = 0; pass < 2; pass++) {
        const char *v[] = {W.ident, wk->cursor, batch, lease};
        PGresult *r = PQexecParams(wk->conn, claim_sql, 4, NULL, v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            log_msg(LOG_WARN, "job worker %d: claim failed: %s", wk->index,
                    PQresultErrorMessage(r));
            PQclear(r);
            return -1;
        }
        int n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            struct claimed *c = &wk->batch[i];
            snprintf(c->id, sizeof c->id, "%s", PQgetvalue(r, i, 0));
            snprintf(c->org_id, sizeof c->org_id, "%s", PQgetvalue(r, i, 1));
            snprintf(c->schema, sizeof c->schema, "%s", PQgetvalue(r, i, 2));
            snprintf(c->type, sizeof c->type, "%s", PQgetvalue(r, i, 3));
            c->payload = strdup(PQgetvalue(r, i, 4));
            if (!c->payload)
                abort();
            job_metrics_count(c->type, JOB_VIA_IN_PROCESS, JOB_COUNT_CLAIMED);
            c->attempt = atoi(PQgetvalue(r, i, 5));
            c->max_attempts = atoi(PQgetvalue(r, i, 6));
            /* Orgs are visited in org_id order from the cursor: continue
             * after the furthest one served. */
            if (strcmp(c->org_id, wk->cursor) > 0)
                snprintf(wk->cursor, sizeof wk->cursor, "%s", c->org_id);
        }
        PQclear(r);
        bool from_start = !strcmp(wk->cursor, NIL_UUID);
        if (n < g_config->job_batch)
            snprintf(wk->cursor, sizeof wk->cursor, "%s", NIL_UUID); /* wrap around */
        if (n > 0 || from_start)
            return n;
        /* Nothing after the cursor: look again from the first org. */
    }
    return 0;
}

static bool exec_ok(PGconn *c, const char *sql, int n, const char *const *v, char *out,
                    size_t outlen)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, v, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        log_msg(LOG_WARN, "job statement failed: %s", PQresultErrorMessage(r));
    if (out && outlen) {
        out[0] = '\0';
        if (ok && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
            snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return ok;
}

static void release(struct worker *wk, const struct claimed *c)
{
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%d", c->attempt);
    const char *v[] = {c->id, W.ident, attempt};
    exec_ok(wk->conn, "SELECT public.tenantd_job_release($1::uuid, $2, $3::int)", 3, v, NULL, 0);
    log_msg(LOG_DEBUG, "job %s attempt %d released (shutdown)", c->id, c->attempt);
}

/* ---- the completer ---------------------------------------------------------- */

struct succeeded {
    char id[37], type[64];
    int attempt;
    char *result; /* malloc'd JSON object text, or NULL */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; work arrived, room freed, stop */
    struct succeeded *q; /* waiting for the next set */
    size_t n, cap;
    bool stop;
    pthread_t thread;
} C = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Hands a succeeded attempt (and its result) to the completer; waits while
 * the queue is full. */
static void completer_push(const struct claimed *c, char *result)
{
    pthread_mutex_lock(&C.mu);
    while (C.n == C.cap && !C.stop)
        pthread_cond_wait(&C.cond, &C.mu);
    assert(C.n < C.cap); /* the completer stops only after the workers */
    struct succeeded *d = &C.q[C.n++];
    snprintf(d->id, sizeof d->id, "%s", c->id);
    snprintf(d->type, sizeof d->type, "%s", c->type);
    d->attempt = c->attempt;
    d->result = result;
    pthread_cond_broadcast(&C.cond);
    pthread_mutex_unlock(&C.mu);
}

/* Whether a row of r (a column of ids; NULL: none) names id. */
static bool has_id(const PGresult *r, const char *id)
{
    for (int k = 0, rows = r ? PQntuples(r) : 0; k < rows; k++)
        if (!strcmp(PQgetvalue(r, k, 0), id))
            return true;
    return false;
}

/* Ends set[0..n) in one statement. false: the statement did not run, or its
 * answer was lost (the connection failed); the set is kept for another try.
 * `again`: an earlier try of this set lost its connection while the set was
 * at the database, so it may have committed: a job that this try finds no
 * longer running under this worker, but succeeded at the very attempt this
 * worker held (any later holder would have counted another attempt), was
 * ended by that try, and is counted completed, not lost. */
static bool complete_set(PGconn *conn, struct succeeded *set, size_t n, bool again)
{
    struct strbuf ids = {0}, attempts = {0}, results = {0};
    sb_puts(&ids, "{");
    sb_puts(&attempts, "{");
    sb_puts(&results, "[");
    for (size_t i = 0; i < n; i++) {
        const char *sep = i ? "," : "";
        sb_printf(&ids, "%s%s", sep, set[i].id);
        sb_printf(&attempts, "%s%d", sep, set[i].attempt);
        sb_printf(&results, "%s%s", sep, set[i].result ? set[i].result : "null");
    }
    sb_puts(&ids, "}");
    sb_puts(&attempts, "}");
    sb_puts(&results, "]");
    const char *v[] = {W.ident, ids.s, attempts.s, results.s};
    PGresult *r = PQexecParams(conn,
                               "SELECT public.tenantd_job_finish_succeeded($1, $2::uuid[],"
                               " $3::integer[], $4::jsonb)",
                               4, NULL, v, NULL, NULL, 0);
    PGresult *before = NULL; /* ids that an earlier try ended */
    bool before_lost = false;
    if (again && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) < (int)n) {
        before = PQexecParams(conn,
                              "SELECT x.id FROM public.jobs x"
                              " JOIN unnest($1::uuid[], $2::integer[]) AS r (id, attempt)"
                              " ON x.id = r.id"
                              " WHERE x.status = 'succeeded' AND x.attempts = r.attempt",
                              2, NULL, v + 1, NULL, NULL, 0);
        if (PQresultStatus(before) != PGRES_TUPLES_OK) {
            before_lost = PQstatus(conn) != CONNECTION_OK;
            log_msg(LOG_WARN, "job completer: reading what an earlier try ended failed: %s",
                    PQresultErrorMessage(before));
            PQclear(before);
            before = NULL;
        }
    }
    free(ids.s);
    free(attempts.s);
    free(results.s);
    if (before_lost) { /* the set went in; its next try finds it ended */
        PQclear(r);
        return false;
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        bool lost = PQstatus(conn) != CONNECTION_OK;
        log_msg(LOG_WARN, "job completer: ending %zu job(s) failed: %s", n,
                PQresultErrorMessage(r));
        PQclear(r);
        if (lost)
            return false;
        /* The statement itself failed (a result that is not JSON, say): the
         * jobs stay running under a lease no one renews after this process,
         * then run again, as with a crash mid-job. Not retried: it would
         * fail the same way. */
        for (size_t i = 0; i < n; i++)
            job_metrics_count(set[i].type, JOB_VIA_IN_PROCESS, JOB_COUNT_FAIL_LOST);
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        bool ended = has_id(r, set[i].id), earlier = !ended && has_id(before, set[i].id);
        job_metrics_count(set[i].type, JOB_VIA_IN_PROCESS,
                          ended || earlier ? JOB_COUNT_COMPLETED : JOB_COUNT_FAIL_LOST);
        log_msg(LOG_DEBUG, "job %s attempt %d end status=%s (a set of %zu%s)", set[i].id,
                set[i].attempt, ended || earlier ? "succeeded" : "lost-lease", n,
                earlier ? ", ended by a try whose answer was lost" : "");
    }
    PQclear(before);
    PQclear(r);
    return true;
}

static void *completer_main(void *arg)
{
    (void)arg;
    thread_name("job-completer");
    PGconn *conn = NULL;
    uint64_t backoff = BACKOFF_MIN_MS;
    struct succeeded *set = calloc(C.cap, sizeof *set);
    if (!set)
        abort();
    pthread_mutex_lock(&C.mu);
    for (;;) {
        while (C.n == 0 && !C.stop)
            pthread_cond_wait(&C.cond, &C.mu);
        if (C.n == 0)
            break; /* stopped and nothing left */
        /* Take everything waiting; the workers fill the other array meanwhile. */
        size_t n = C.n;
        struct succeeded *taken = C.q;
        C.q = set;
        set = taken;
        C.n = 0;
        pthread_cond_broadcast(&C.cond); /* room for the workers */
        pthread_mutex_unlock(&C.mu);
        bool again = false;
        for (;;) {
            if (!conn || PQstatus(conn) != CONNECTION_OK) {
                PQfinish(conn);
                conn = connect_db("completer");
            }
            if (conn) {
                if (complete_set(conn, set, n, again))
                    break;
                again = true; /* it was sent: it may have gone in */
            }
            /* No database: try again, until the drain deadline once stopping. */
            uint64_t until = job_now_ns() + backoff * 1000000u;
            pthread_mutex_lock(&W.mu);
            bool give_up = W.stopping && job_now_ns() >= W.drain_deadline;
            if (W.stopping && W.drain_deadline < until)
                until = W.drain_deadline;
            pthread_mutex_unlock(&W.mu);
            if (give_up) {
                log_msg(LOG_WARN,
                        "job completer: %zu succeeded job(s) not recorded; they run "
                        "again once their lease lapses",
                        n);
                break;
            }
            /* The backoff whole (up to the drain deadline): the workers'
             * hand-overs signal the same condition and must not make each
             * one another try. */
            struct timespec ts;
            abs_deadline(until, &ts);
            pthread_mutex_lock(&C.mu);
            while (job_now_ns() < until)
                if (pthread_cond_timedwait(&C.cond, &C.mu, &ts) == ETIMEDOUT)
                    break;
            pthread_mutex_unlock(&C.mu);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        }
        backoff = BACKOFF_MIN_MS;
        for (size_t i = 0; i < n; i++)
            free(set[i].result);
        pthread_mutex_lock(&C.mu);
    }
    pthread_mutex_unlock(&C.mu);
    free(set);
    PQfinish(conn);
    return NULL;
}

static void run_one(struct worker *wk, const struct claimed *c)
{
    struct job_run run = {
        .conn = wk->conn,
        .id = c->id,
        .org_id = c->org_id,
        .schema = c->schema,
        .attempt = c->attempt,
        .max_attempts = c->max_attempts,
        .deadline_ns = job_now_ns() + (uint64_t)g_config->job_timeout_ms * 1000000u,
    };
    log_msg(LOG_DEBUG, "job %s attempt %d start type=%s worker=%s/%d", c->id, c->attempt, c->type,
            W.ident, wk->index);
    const struct job_type *t = job_type_find(c->type);
    json_error_t je;
    run.payload = json_loads(c->payload, 0, &je);
    enum job_outcome out;
    if (!t) {
        /* A test type enqueued on a server that allows it, claimed by a
         * worker that does not: another worker may. */
        snprintf(run.error, sizeof run.error, "job type %s is not enabled on this worker", c->type);
        out = JOB_RETRY;
    } else if (!run.payload) {
        snprintf(run.error, sizeof run.error, "stored payload is not JSON");
        out = JOB_FAIL;
    } else {
        out = t->run(&run);
    }
    json_decref(run.payload);
    if (out == JOB_STOPPED) {
        release(wk, c);
        free(run.result);
        return;
    }
    if (out == JOB_OK) {
        completer_push(c, run.result); /* it owns the result now */
        return;
    }
    /* A retry or a failure (with its refund): at once, one at a time. */
    char attempt[16], base[24], max[24], status[16];
    snprintf(attempt, sizeof attempt, "%d", c->attempt);
    snprintf(base, sizeof base, "%lld", (long long)g_config->job_retry_base_ms);
    snprintf(max, sizeof max, "%lld", (long long)g_config->job_retry_max_ms);
    const char *v[] = {c->id,
                       W.ident,
                       attempt,
                       "false",
                       run.result,
                       run.error,
                       out == JOB_RETRY ? "true" : "false",
                       base,
                       max,
                       run.keep_charge ? "false" : "true"};
    if (exec_ok(wk->conn,
                "SELECT public.tenantd_job_finish($1::uuid, $2, $3::int, $4::boolean, $5::jsonb,"
                " $6, $7::boolean, $8::bigint, $9::bigint, $10::boolean)",
                10, v, status, sizeof status)) {
        /* status: the job's after this attempt; "" when the lease had lapsed. */
        job_metrics_count(c->type, JOB_VIA_IN_PROCESS, job_metrics_fail_outcome(status));
        log_msg(LOG_DEBUG, "job %s attempt %d end status=%s error=%s", c->id, c->attempt,
                status[0] ? status : "lost-lease", run.error);
    }
    free(run.result);
}

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
    thread_name("job-worker");
    uint64_t backoff = BACKOFF_MIN_MS;
    snprintf(wk->cursor, sizeof wk->cursor, "%s", NIL_UUID);
    while (!stopping()) {
        if (!wk->conn || PQstatus(wk->conn) != CONNECTION_OK) {
            PQfinish(wk->conn);
            wk->conn = connect_db("worker");
            if (!wk->conn) {
                pthread_mutex_lock(&W.mu);
                uint64_t g = W.wake_gen;
                pthread_mutex_unlock(&W.mu);
                wait_for_work(g, backoff); /* a stop still wakes it */
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_MIN_MS;
        }
        pthread_mutex_lock(&W.mu);
        uint64_t gen = W.wake_gen;
        pthread_mutex_unlock(&W.mu);
        int n = claim(wk);
        if (n < 0) {
            if (PQstatus(wk->conn) == CONNECTION_OK)
                wait_for_work(gen, BACKOFF_MIN_MS); /* a statement error: do not spin */
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (stopping())
                release(wk, &wk->batch[i]);
            else
                run_one(wk, &wk->batch[i]);
            free(wk->batch[i].payload);
            wk->batch[i].payload = NULL;
        }
        if (n == 0)
            wait_for_work(gen, (uint64_t)g_config->job_poll_ms);
    }
    PQfinish(wk->conn);
    wk->conn = NULL;
    return NULL;
}

/* ---- the coordinator --------------------------------------------------------- */

static bool coord_stopped(void)
{
    pthread_mutex_lock(&W.mu);
    bool s = W.coord_stop;
    pthread_mutex_unlock(&W.mu);
    return s;
}

static void *coord_main(void *arg)
{
    (void)arg;
    thread_name("job-coord");
    PGconn *c = NULL;
    uint64_t backoff = BACKOFF_MIN_MS, next_renew = 0, next_reap = 0, next_tick = 0;
    uint64_t renew_every = (uint64_t)g_config->job_lease_ms * 1000000u / 3;
    uint64_t reap_every = (uint64_t)g_config->job_poll_ms * 1000000u;
    uint64_t tick_every = (uint64_t)g_config->schedule_tick_ms * 1000000u;
    bool ticks = W.ticks && tick_every > 0;
    if (!ticks)
        next_tick = UINT64_MAX;
    while (!coord_stopped()) {
        if (!c) {
            c = connect_db("listener");
            PGresult *r = c ? PQexec(c, "LISTEN tenantd_jobs") : NULL;
            if (c && PQresultStatus(r) != PGRES_COMMAND_OK) {
                PQfinish(c);
                c = NULL;
            }
            PQclear(r);
            if (!c) {
                struct pollfd p = {.fd = W.wake_fd, .events = POLLIN};
                poll(&p, 1, (int)backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            backoff = BACKOFF_MIN_MS;
            log_msg(LOG_DEBUG, "job listener: listening");
            wake_all(); /* notifications sent while we were away are lost */
        }
        uint64_t now = job_now_ns();
        uint64_t next = next_renew < next_reap ? next_renew : next_reap;
        if (next_tick < next)
            next = next_tick;
        int ms = next <= now ? 0 : (int)((next - now) / 1000000u) + 1;
        int f = db_listen_wait(c, W.wake_fd, ms, NULL, NULL);
        if (f & DB_LISTEN_WOKEN) {
            uint64_t x;
            if (read(W.wake_fd, &x, sizeof x) < 0 && errno != EAGAIN)
                log_msg(LOG_WARN, "job listener: read: %s", strerror(errno));
        }
        if (f & DB_LISTEN_LOST) {
            log_msg(LOG_WARN, "job listener: connection lost: %s", PQerrorMessage(c));
            PQfinish(c);
            c = NULL;
            continue;
        }
        if (f & DB_LISTEN_NOTIFIED) {
            log_msg(LOG_DEBUG, "job listener: woken by NOTIFY");
            wake_all();
        }
        now = job_now_ns();
        char lease[16], out[16];
        snprintf(lease, sizeof lease, "%d", (int)g_config->job_lease_ms);
        if (now >= next_renew) {
            const char *v[] = {W.ident, lease};
            exec_ok(c, "SELECT public.tenantd_job_renew($1, $2::int)", 2, v, NULL, 0);
            next_renew = now + renew_every;
        }
        if (now >= next_reap) {
            if (!stopping() &&
                exec_ok(c, "SELECT public.tenantd_job_reap()", 0, NULL, out, sizeof out) &&
                atoi(out) > 0)
                log_msg(LOG_INFO, "job listener: %s job(s) with a lapsed lease queued again", out);
            next_reap = now + reap_every;
        }
        /* Row locks (SKIP LOCKED) in tenantd_schedule_tick make each tick
         * fire once however many serve and worker processes try it. */
        if (ticks && now >= next_tick && !stopping()) {
            job_schedule_tick(c);
            next_tick = now + tick_every;
        }
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = NULL;
        }
    }
    PQfinish(c);
    return NULL;
}

/* ---- start / stop ------------------------------------------------------------- */

/* Threads start with every signal blocked: signals belong to the loops
 * (libuv) or to `tenantd worker`'s sigwait. */
static int spawn(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int job_workers_start(const char *conninfo, int n)
{
    if (W.running || n < 1) {
        log_msg(LOG_ERROR, "job workers: already running or n < 1");
        return -1;
    }
    if (job_webhook_tls_check() != 0)
        return -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&W.cond, &ca);
    W.stopping = W.coord_stop = false;
    W.conninfo = strdup(conninfo);
    W.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    W.n = n;
    W.workers = calloc((size_t)n, sizeof *W.workers);
    if (!W.conninfo || W.wake_fd < 0 || !W.workers)
        abort();
    unsigned char rnd[6];
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        abort();
    snprintf(W.ident, sizeof W.ident, "%.60s/%d/%02x%02x%02x%02x%02x%02x", host, (int)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
    /* Room for a few batches of every worker: enough that sets grow under
     * load, small enough that a database away holds the workers soon. */
    pthread_cond_init(&C.cond, &ca);
    C.stop = false;
    C.n = 0;
    C.cap = (size_t)n * (size_t)g_config->job_batch * 4;
    if (C.cap < 64)
        C.cap = 64;
    C.q = calloc(C.cap, sizeof *C.q);
    if (!C.q)
        abort();
    if (spawn(&W.coord, coord_main, NULL) != 0 || spawn(&C.thread, completer_main, NULL) != 0) {
        log_msg(LOG_ERROR, "job workers: cannot start a thread");
        abort(); /* a half-started set of threads would be worse */
    }
    pthread_condattr_destroy(&ca);
    for (int i = 0; i < n; i++) {
        struct worker *wk = &W.workers[i];
        wk->index = i;
        wk->batch = calloc((size_t)g_config->job_batch, sizeof *wk->batch);
        if (!wk->batch)
            abort();
        if (spawn(&wk->thread, worker_main, wk) != 0)
            abort(); /* a half-started pool would be worse; threads are cheap */
    }
    W.running = true;
    log_msg(LOG_INFO, "job workers: %d started as %s", n, W.ident);
    return 0;
}

void job_workers_begin_stop(int drain_ms)
{
    if (!W.running)
        return;
    pthread_mutex_lock(&W.mu);
    if (!W.stopping) {
        W.stopping = true;
        W.drain_deadline = job_now_ns() + (uint64_t)drain_ms * 1000000u;
        W.wake_gen++;
        pthread_cond_broadcast(&W.cond);
    }
    pthread_mutex_unlock(&W.mu);
}

void job_workers_stop(int drain_ms)
{
    if (!W.running)
        return;
    job_workers_begin_stop(drain_ms);
    for (int i = 0; i < W.n; i++) {
        pthread_join(W.workers[i].thread, NULL);
        free(W.workers[i].batch);
    }
    /* Workers gone: the completer ends what it holds, then stops. */
    pthread_mutex_lock(&C.mu);
    C.stop = true;
    pthread_cond_broadcast(&C.cond);
    pthread_mutex_unlock(&C.mu);
    pthread_join(C.thread, NULL);
    assert(C.n == 0);
    free(C.q);
    C.q = NULL;
    pthread_cond_destroy(&C.cond);
    pthread_mutex_lock(&W.mu);
    W.coord_stop = true;
    pthread_mutex_unlock(&W.mu);
    uint64_t one = 1;
    if (write(W.wake_fd, &one, sizeof one) < 0)
        log_msg(LOG_WARN, "job workers: eventfd write: %s", strerror(errno));
    pthread_join(W.coord, NULL);
    close(W.wake_fd);
    W.wake_fd = -1;
    free(W.workers);
    W.workers = NULL;
    free(W.conninfo);
    W.conninfo = NULL;
    pthread_cond_destroy(&W.cond);
    W.running = false;
    log_msg(LOG_INFO, "job workers: stopped");
}

int job_worker_main(int argc, char **argv)
{
    if (argc > 0) {
        fprintf(stderr, "tenantd worker: unexpected argument '%s' (see tenantd --help)\n", argv[0]);
        return 2;
    }
    const struct config *cfg = g_config;
    if (cfg->job_workers < 1) {
        fprintf(stderr, "tenantd worker: TENANTD_JOB_WORKERS must be at least 1\n");
        return 2;
    }
    char err[512];
    int rc = migrate_check(cfg->database_url, err, sizeof err);
    if (rc != 0) {
        log_msg(LOG_ERROR, "worker: the database schema is %s (%s)",
                rc > 0 ? "behind this binary; run `tenantd migrate up`" : "not readable", err);
        return 1;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    W.ticks = true; /* no listener thread here: the coordinator ticks schedules */
    if (job_workers_start(cfg->database_url, (int)cfg->job_workers) != 0)
        return 1;
    int sig = 0;
    sigwait(&set, &sig);
    log_msg(LOG_INFO, "worker: %s, stopping (drain %lld ms)", sig == SIGINT ? "SIGINT" : "SIGTERM",
            (long long)cfg->drain_timeout_ms);
    job_workers_stop((int)cfg->drain_timeout_ms);
    char *counts = job_metrics_counts_line();
    log_msg(LOG_INFO, "worker: stopped; jobs of this process: %s",
            counts && counts[0] ? counts : "none");
    free(counts);
    return 0;
}
