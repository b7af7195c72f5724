/*
 * The worker API: external workers (any language, over HTTP) run the jobs of
 * operator-declared types (external.c).
 *
 *   POST /v1/worker/claim                  {types, max?, wait_s?} -> jobs + leases
 *   POST /v1/worker/jobs/{id}/heartbeat    {lease_id, progress?}
 *   POST /v1/worker/jobs/{id}/complete     {lease_id, result?}
 *   POST /v1/worker/jobs/{id}/fail         {lease_id, error, retry?}
 *
 * Credentials (AUTH_WORKER): TENANTD_WORKER_TOKEN claims for every org, an
 * API key with role worker for its own org only. Each claimed job has its
 * own lease id; a heartbeat extends the lease (never past the type's
 * timeout_s), a lapsed lease is reaped like an in-process worker's (the job
 * runs again, or fails and is refunded), and a stale lease id is 409.
 * Claims are fair between orgs exactly as in-process claims (the same skip
 * scan, from a rotating cursor kept per loop); claims arriving together go
 * to the database as one statement (claim sets, below).
 *
 * Long polling: a claim that finds nothing parks (a timer on the request's
 * loop) until wait_s pass. It claims again only when the LISTEN thread
 * below has heard a NOTIFY on tenantd_jobs (an atomic generation it bumps;
 * parked claims look at it every WAKE_CHECK_MS). Jobs that become due by
 * time (run_at, retry backoff) send no NOTIFY: the same thread looks for
 * them once per TENANTD_JOB_POLL_MS and bumps the generation when one did.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <uv.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/log.h"
#include "core/problem.h"
#include "core/strbuf.h"
#include "core/thread.h"
#include "db/db.h"
#include "db/listen.h"
#include "app/dbhttp.h"
#include "job/internal.h"

#define NIL_UUID "00000000-0000-0000-0000-000000000000"
#define WAKE_CHECK_MS 10
#define TYPES_MAX 50
#define ERROR_MAX 2000
#define METRICS_SAMPLE_MS 5000

/* ---- the LISTEN thread ----------------------------------------------------------- */
/* Also fires due schedule ticks (schedule.c) every TENANTD_SCHEDULE_TICK_MS in
 * serve; `tenantd worker` ticks from its coordinator (worker.c). */

static atomic_uint_fast64_t wake_gen;
static struct {
    pthread_t thread;
    bool started, reap;
    atomic_bool stop;
    int fd; /* eventfd: interrupts the poll at stop */
    char *conninfo;
} L = {.fd = -1};

static void *listener_main(void *arg)
{
    (void)arg;
    thread_name("job-ext-listen");
    PGconn *c = NULL;
    int backoff = 100;
    uint64_t next_reap = 0, next_tick = 0, next_sample = 0, next_due = 0;
    char due_since[64] = "";                      /* the database's now() at the last look */
    int64_t tick_ms = g_config->schedule_tick_ms; /* 0: this process does not tick */
    int wait_ms =
        (int)(tick_ms > 0 && tick_ms < g_config->job_poll_ms ? tick_ms : g_config->job_poll_ms);
    while (!atomic_load(&L.stop)) {
        if (!c) {
            c = PQconnectdb(L.conninfo);
            PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, "LISTEN tenantd_jobs") : NULL;
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                PQclear(r);
                PQfinish(c);
                c = NULL;
                struct pollfd p = {.fd = L.fd, .events = POLLIN};
                poll(&p, 1, backoff);
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                continue;
            }
            PQclear(r);
            backoff = 100;
            atomic_fetch_add(&wake_gen, 1); /* notifications sent meanwhile are lost */
        }
        int f = db_listen_wait(c, L.fd, wait_ms, NULL, NULL);
        if (f & DB_LISTEN_LOST) {
            PQfinish(c);
            c = NULL;
            continue;
        }
        if (f & DB_LISTEN_NOTIFIED)
            atomic_fetch_add(&wake_gen, 1);
        uint64_t now = job_now_ns();
        if (now >= next_due) {
            /* Jobs that became due by time (run_at, retry backoff) send no
             * NOTIFY: one look per process and interval, and a wake only
             * when one did, instead of every parked claim polling. */
            const char *v[] = {due_since[0] ? due_since : NULL};
            PGresult *r = PQexecParams(
                c,
                "SELECT now()::text, EXISTS (SELECT 1 FROM public.jobs j WHERE j.status ="
                " 'queued' AND j.external AND j.run_at > $1::timestamptz AND j.run_at <= now())",
                1, NULL, v, NULL, NULL, 0);
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
                snprintf(due_since, sizeof due_since, "%s", PQgetvalue(r, 0, 0));
                if (PQgetvalue(r, 0, 1)[0] == 't')
                    atomic_fetch_add(&wake_gen, 1);
            }
            PQclear(r);
            next_due = now + (uint64_t)g_config->job_poll_ms * 1000000u;
        }
        if (L.reap && now >= next_reap) {
            PGresult *r = PQexec(c, "SELECT public.tenantd_job_reap()");
            PQclear(r);
            next_reap = now + (uint64_t)g_config->job_poll_ms * 1000000u;
        }
        if (now >= next_sample) {
            job_metrics_sample(c);
            next_sample = now + (uint64_t)METRICS_SAMPLE_MS * 1000000u;
        }
        if (tick_ms > 0 && now >= next_tick) {
            job_schedule_tick(c);
            next_tick = now + (uint64_t)tick_ms * 1000000u;
        }
        if (PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = NULL;
        }
    }
    PQfinish(c);
    job_metrics_free();
    return NULL;
}

int job_ext_listener_start(const char *conninfo, bool reap)
{
    if (L.started)
        return 0;
    L.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L.conninfo = strdup(conninfo);
    if (L.fd < 0 || !L.conninfo) {
        log_msg(LOG_ERROR, "job worker API: cannot start its listener");
        return -1;
    }
    L.reap = reap;
    atomic_store(&L.stop, false);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&L.thread, NULL, listener_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_msg(LOG_ERROR, "job worker API: cannot start its listener: %s", strerror(rc));
        return -1;
    }
    L.started = true;
    return 0;
}

void job_ext_listener_stop(void)
{
    if (!L.started)
        return;
    atomic_store(&L.stop, true);
    uint64_t one = 1;
    if (write(L.fd, &one, sizeof one) < 0)
        log_msg(LOG_WARN, "job worker API listener: wake: %s", strerror(errno));
    pthread_join(L.thread, NULL);
    close(L.fd);
    L.fd = -1;
    free(L.conninfo);
    L.conninfo = NULL;
    L.started = false;
}

/* ---- POST /v1/worker/claim -------------------------------------------------------- */

static const struct db_stmt claim_stmt = {
    "job_ext_claim",
    "SELECT org_id, type, job::text"
    " FROM public.tenantd_job_ext_claim($1::uuid, $2::text[], $3::uuid, $4::int, $5::int)",
};

/* Rotating org cursor of this loop's claims (fairness between orgs). */
static _Thread_local char loop_cursor[37] = NIL_UUID;

struct claim {
    struct request *req;
    const char *org;   /* NULL: every org (worker token) */
    const char *types; /* text[] literal */
    int max;
    char cursor[37]; /* where the statement that answered it started */
    int pass;
    /* Long poll. */
    uv_timer_t *timer; /* malloc'd; closed when the claim answers */
    uint64_t deadline_ns, seen_gen;
    bool querying;      /* in a claim set, at the database or waiting for it */
    struct claim *next; /* in a claim set's waiting list */
};

/*
 * Claims, together. Claims of one loop for the same org and types (the same
 * credential's kind of claim) are one statement at a time: those that come
 * while one is at the database wait for it and then go as one statement for
 * all their jobs, handed out in the order claimed. Claims sent side by side
 * from one rotating cursor went for the same candidates and skipped each
 * other's locked rows (test/bench/jobs.sh, 4 workers with 10 requests under
 * way each: 2,336 claim statements for 20,000 jobs, 1.5-2 ms each, where a
 * lone claim takes 0.8; as sets, ~950 of ~21 jobs and 15-20% more jobs/s).
 * A NOTIFY that wakes many parked workers of one org (or the operator's)
 * costs one statement, not one per worker. Claims of other orgs or types
 * never wait behind these.
 */
#define CLAIM_SET_JOBS 100 /* the most jobs one statement claims (one claim's max) */

struct claim_set {
    struct claim *item[CLAIM_SET_JOBS]; /* each claim asks at least one job */
    int n, jobs;
    /* The key, item[0]'s: its request is answered only after the set has
     * left its bucket, so these outlive every lookup and the statement. */
    const char *org, *types, *schema;
    struct claim *wait, **wait_tail; /* came while this set was at the database */
    struct claim_set *next;          /* in its bucket of claim_sets */
    const char *values[5];
    char cursor[37], jobs_s[12], lease_s[24];
};

/* This loop's claim sets at the database, one per key in use, by a hash of
 * the key: when a NOTIFY wakes the parked claims of thousands of orgs'
 * workers, each finds its key's set without walking all the others. */
#define CLAIM_SET_BUCKETS 256
static _Thread_local struct claim_set *claim_sets[CLAIM_SET_BUCKETS];

static unsigned claim_key_hash(const char *org, const char *types)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = org ? org : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const char *p = types; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % CLAIM_SET_BUCKETS;
}

static void claim_submit(struct claim *list);

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

static void claim_stop_timer(struct claim *c)
{
    if (c->timer) {
        uv_timer_stop(c->timer);
        uv_close((uv_handle_t *)c->timer, timer_closed);
        c->timer = NULL;
    }
}

/* Answers with rows [from, from + n) of r (n = 0: an empty list). */
static void claim_answer(struct claim *c, const PGresult *r, int from, int n)
{
    struct request *req = c->req;
    claim_stop_timer(c);
    job_metrics_api(JOB_API_CLAIM, true);
    size_t len = 32;
    for (int i = from; i < from + n; i++)
        len += (size_t)PQgetlength(r, i, 2) + 1;
    char *out = arena_alloc(req->arena, len), *w = out;
    w += sprintf(w, "{\"data\":[");
    for (int i = from; i < from + n; i++) {
        job_metrics_count(PQgetvalue(r, i, 1), JOB_VIA_HTTP, JOB_COUNT_CLAIMED);
        if (i > from)
            *w++ = ',';
        size_t l = (size_t)PQgetlength(r, i, 2);
        memcpy(w, PQgetvalue(r, i, 2), l);
        w += l;
    }
    w += sprintf(w, "]}");
    http_respond(req, 200, "application/json", out, (size_t)(w - out));
}

static void claim_query(struct claim *c)
{
    assert(!c->querying);
    c->next = NULL;
    claim_submit(c);
}

static void on_wake_check(uv_timer_t *t)
{
    struct claim *c = t->data;
    if (c->querying)
        return;
    uint64_t now = job_now_ns();
    if (c->req->ctx->draining || now >= c->deadline_ns) {
        claim_answer(c, NULL, 0, 0);
        return;
    }
    uint64_t g = atomic_load(&wake_gen);
    if (g != c->seen_gen) {
        c->seen_gen = g;
        c->pass = 0;
        claim_query(c);
    }
}

/* A claim the set's statement gave `got` jobs (from row `from`), or none. */
static void claim_settle(struct claim *c, const PGresult *r, int from, int got)
{
    struct request *req = c->req;
    c->querying = false;
    if (got == 0 && strcmp(c->cursor, NIL_UUID) != 0 && c->pass == 0) {
        c->pass = 1; /* nothing after the cursor: look again from the first org */
        claim_query(c);
        return;
    }
    if (got > 0 || c->deadline_ns <= job_now_ns() || req->ctx->draining) {
        claim_answer(c, r, from, got);
        return;
    }
    if (!c->timer) { /* park: wait for a NOTIFY */
        c->timer = malloc(sizeof *c->timer);
        if (!c->timer) {
            claim_answer(c, r, from, 0);
            return;
        }
        uv_timer_init(req->ctx->loop, c->timer);
        c->timer->data = c;
        uv_timer_start(c->timer, on_wake_check, WAKE_CHECK_MS, WAKE_CHECK_MS);
    }
}

static void claim_set_done(struct db_result *r, void *ud)
{
    struct claim_set *s = ud;
    struct claim_set **p = &claim_sets[claim_key_hash(s->org, s->types)];
    while (*p != s)
        p = &(*p)->next;
    *p = s->next;

    int rows = r->status == DB_OK ? PQntuples(r->res) : 0;
    assert(rows <= s->jobs);
    if (r->status == DB_OK) {
        for (int i = 0; i < rows; i++) {
            const char *org = PQgetvalue(r->res, i, 0);
            if (strcmp(org, loop_cursor) > 0)
                snprintf(loop_cursor, sizeof loop_cursor, "%s", org);
        }
        if (rows < s->jobs)
            snprintf(loop_cursor, sizeof loop_cursor, "%s", NIL_UUID); /* wrap around */
    }
    /* Claims that came meanwhile go now, from the cursor just moved, before
     * these are answered (an answer may park or look again: those wait for
     * the next set). */
    if (s->wait)
        claim_submit(s->wait);
    int from = 0;
    for (int i = 0; i < s->n; i++) {
        struct claim *c = s->item[i];
        assert(c->querying);
        if (r->status != DB_OK) {
            c->querying = false;
            claim_stop_timer(c);
            db_respond_failure(c->req, r, "worker claim");
            continue;
        }
        int got = rows - from < c->max ? rows - from : c->max;
        claim_settle(c, r->res, from, got);
        from += got;
    }
    free(s);
}

/* Sends claims of one key (list: linked by next) as one statement, or adds
 * them to the waiting list of the set of that key at the database. */
static void claim_submit(struct claim *list)
{
    struct claim *c = list;
    for (struct claim *x = list; x; x = x->next)
        x->querying = true;
    struct claim_set **bucket = &claim_sets[claim_key_hash(c->org, c->types)];
    for (struct claim_set *s = *bucket; s; s = s->next) {
        if ((s->org == NULL) != (c->org == NULL) || (s->org && strcmp(s->org, c->org)) ||
            strcmp(s->types, c->types))
            continue;
        *s->wait_tail = list;
        while (*s->wait_tail)
            s->wait_tail = &(*s->wait_tail)->next;
        return;
    }
    struct claim_set *s = calloc(1, sizeof *s);
    if (!s) { /* out of memory: 503, which tells a worker to claim again */
        while (list) {
            struct claim *x = list;
            list = x->next;
            x->querying = false;
            claim_stop_timer(x);
            db_respond_unavailable(x->req);
        }
        return;
    }
    bool from_start = false;
    while (list && (s->n == 0 || s->jobs + list->max <= CLAIM_SET_JOBS)) {
        struct claim *x = list;
        list = x->next;
        x->next = NULL;
        from_start |= x->pass != 0;
        s->item[s->n++] = x;
        s->jobs += x->max;
    }
    assert(s->n >= 1 && s->jobs <= CLAIM_SET_JOBS);
    s->wait = list; /* the rest: the next set */
    s->wait_tail = &s->wait;
    while (*s->wait_tail)
        s->wait_tail = &(*s->wait_tail)->next;
    s->org = c->org;
    s->types = c->types;
    s->schema = auth_ctx(c->req)->schema;
    snprintf(s->cursor, sizeof s->cursor, "%s", from_start ? NIL_UUID : loop_cursor);
    for (int i = 0; i < s->n; i++)
        memcpy(s->item[i]->cursor, s->cursor, sizeof s->cursor);
    snprintf(s->jobs_s, sizeof s->jobs_s, "%d", s->jobs);
    snprintf(s->lease_s, sizeof s->lease_s, "%d", (int)g_config->job_lease_ms);
    s->values[0] = s->org;
    s->values[1] = s->types;
    s->values[2] = s->cursor;
    s->values[3] = s->jobs_s;
    s->values[4] = s->lease_s;
    s->next = *bucket;
    *bucket = s;
    job_metrics_claim_set();
    db_query(c->req->ctx->db, s->schema, &claim_stmt, 5, s->values, claim_set_done, s);
}

/* The org a worker credential is limited to, or NULL for the worker token. */
static const char *worker_org(const struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    return a->kind == AUTH_KIND_KEY ? a->org_id : NULL;
}

void job_worker_claim(struct request *req)
{
    json_t *body = body_object(req, false);
    if (!body)
        return;
    static const char *const fields[] = {"types", "max", "wait_s", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    json_t *types = json_object_get(body, "types");
    char *lit = NULL;
    if (!json_is_array(types) || json_array_size(types) < 1 || json_array_size(types) > TYPES_MAX) {
        problem_add_error(&errors, "types", "must be an array of 1 to 50 job type names");
    } else {
        /* A text[] literal; names are [a-z0-9_.-] only, so quoting is enough. */
        size_t cap = json_array_size(types) * 68 + 3, used = 0;
        lit = arena_alloc(req->arena, cap);
        lit[used++] = '{';
        size_t i;
        json_t *t;
        json_array_foreach(types, i, t)
        {
            const char *s = json_string_value(t);
            if (!s || !job_ext_name_valid(s)) {
                problem_add_error(&errors, "types", "must hold job type names");
                break;
            }
            used += (size_t)snprintf(lit + used, cap - used, "%s\"%s\"", i ? "," : "", s);
        }
        snprintf(lit + used, cap - used, "}");
    }
    json_int_t max_in = 1, wait_in = 0;
    body_int(body, "max", false, 1, 100, NULL, &max_in, &errors);
    body_int(body, "wait_s", false, 0, 30, NULL, &wait_in, &errors);
    int max = (int)max_in, wait_s = (int)wait_in;
    if (errors) {
        problem_respond_errors(req, "The claim is not valid.", errors);
        return;
    }
    struct claim *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->org = worker_org(req);
    c->types = lit;
    c->max = max;
    c->deadline_ns = job_now_ns() + (uint64_t)wait_s * 1000000000u;
    c->seen_gen = atomic_load(&wake_gen);
    claim_query(c);
}

/* ---- heartbeat / complete / fail ----------------------------------------------------- */

static const struct db_stmt heartbeat_stmt = {
    "job_ext_heartbeat",
    "SELECT o_outcome, o_lease_expires_at, o_cancel_requested"
    " FROM public.tenantd_job_ext_heartbeat($1::uuid, $2::uuid, $3::uuid, $4::int, $5::int)",
};

static const struct db_stmt finish_stmt = {
    "job_ext_finish",
    "SELECT f.o_outcome, f.o_body, b.j->>'type', b.j->>'status'"
    " FROM public.tenantd_job_ext_finish($1::uuid, $2::uuid, $3::uuid, $4::boolean, $5::jsonb,"
    " $6, $7::boolean, $8::bigint, $9::bigint) f, LATERAL (SELECT f.o_body::json AS j) b",
};

/* The job id and the body's lease_id, or NULL after answering 404/400/422. */
static json_t *lease_body(struct request *req, const char *const *fields, const char **id,
                          const char **lease, json_t **errors)
{
    *id = http_param(req, "id");
    if (!*id || !token_uuid_valid(*id, strlen(*id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job (job ids are UUIDs).");
        return NULL;
    }
    json_t *body = body_object(req, false);
    if (!body)
        return NULL;
    body_unknown_fields(req, body, fields, NULL, errors);
    json_t *l = json_object_get(body, "lease_id");
    *lease = json_string_value(l);
    if (!*lease || !token_uuid_valid(*lease, strlen(*lease))) {
        problem_add_error(errors, "lease_id", "must be the lease_id the claim answered");
        *lease = NULL;
    }
    return body;
}

static bool outcome_answered(struct request *req, enum job_api_op op, const char *outcome)
{
    job_metrics_api(op, outcome && !strcmp(outcome, "ok"));
    if (outcome && !strcmp(outcome, "stale")) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "This lease is no longer the job's: it lapsed (the job went back to the "
                        "queue or ended) or the job was already finished.");
        return true;
    }
    if (!outcome || strcmp(outcome, "ok")) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job.");
        return true;
    }
    return false;
}

static void heartbeat_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "worker heartbeat"))
        return;
    if (outcome_answered(req, JOB_API_HEARTBEAT, db_result_text(r, 0, 0)))
        return;
    const char *cr = db_result_text(r, 0, 2);
    http_respond_json(req, 200,
                      json_pack("{s:s, s:b}", "lease_expires_at", db_result_text(r, 0, 1),
                                "cancel_requested", cr && cr[0] == 't'));
}

void job_worker_heartbeat(struct request *req)
{
    static const char *const fields[] = {"lease_id", "progress", NULL};
    const char *id, *lease;
    json_t *errors = NULL;
    json_t *body = lease_body(req, fields, &id, &lease, &errors);
    if (!body)
        return;
    const char *progress = NULL;
    json_int_t pct;
    if (body_int(body, "progress", false, 0, 100, NULL, &pct, &errors) == 1)
        progress = arena_printf(req->arena, "%d", (int)pct);
    if (errors) {
        problem_respond_errors(req, "The heartbeat is not valid.", errors);
        return;
    }
    const char **v = arena_calloc(req->arena, 5 * sizeof *v);
    v[0] = id;
    v[1] = arena_strdup(req->arena, lease);
    v[2] = worker_org(req);
    v[3] = progress;
    v[4] = arena_printf(req->arena, "%d", (int)g_config->job_lease_ms);
    db_query(req->ctx->db, auth_ctx(req)->schema, &heartbeat_stmt, 5, v, heartbeat_done, req);
}

struct finish {
    struct request *req;
    enum job_api_op op;
    const char **values;  /* finish_stmt's */
    struct finish *next;  /* in this loop's completion queue */
};

static void finish_done(struct db_result *r, void *ud)
{
    struct finish *f = ud;
    struct request *req = f->req;
    if (db_failed(req, r, "worker finish"))
        return;
    if (outcome_answered(req, f->op, db_result_text(r, 0, 0)))
        return;
    const char *type = db_result_text(r, 0, 2), *status = db_result_text(r, 0, 3);
    if (type) /* status: the job's after the report (succeeded, queued, failed, cancelled) */
        job_metrics_count(type, JOB_VIA_HTTP,
                          status && !strcmp(status, "succeeded")
                              ? JOB_COUNT_COMPLETED
                              : job_metrics_fail_outcome(status));
    db_respond_json(req, r, 1, "No such job.");
}

/* Sends one report through tenantd_job_ext_finish, which answers every case. */
static void finish_alone(struct finish *f)
{
    /* The retry backoff: only this way reads it, so a completion taken by a
     * set never formats it. */
    const char **v = f->values;
    v[7] = arena_printf(f->req->arena, "%lld", (long long)g_config->job_retry_base_ms);
    v[8] = arena_printf(f->req->arena, "%lld", (long long)g_config->job_retry_max_ms);
    db_query(f->req->ctx->db, auth_ctx(f->req)->schema, &finish_stmt, 9, f->values, finish_done,
             f);
}

/*
 * Completions, together. Completions that arrive while one of this loop's
 * is at the database go there together as one statement and one
 * transaction (group commit): a busy fleet of workers pays one round trip
 * and one commit for many jobs, and a lone completion goes at once. The
 * statement is tenantd_job_ext_finish's common case (control 0017) over a
 * set: each row back is that job's 200. A completion without a row (a
 * stale lease, an unknown job, the same job twice in one set), and every
 * completion of a set that failed, goes alone through the function, which
 * tells which answer is due; so one bad report never fails the others
 * (a set the pool could not send, shed or without a database, answers each
 * 503 instead: sending them again would only add load).
 * The set is one JSON array; each job is found by primary key (id = ANY)
 * and its report by its position (array_position: for the same job twice
 * only the first report can match, the other goes alone and finds its
 * lease used). No join: joined to the set's rows on id the planner hashed
 * the set (a sizeable share of the database's time per completion) or every
 * running job of the lease index (all 5,000 for a set of one when 5,000
 * jobs ran). No status test either: a lease is only ever on a running job
 * (jobs_check), and without one the lease index cannot be chosen.
 */
#define COMPLETE_SET_MAX 64

static const struct db_stmt complete_set_stmt = {
    "job_ext_complete_set",
    "WITH s AS MATERIALIZED (SELECT $1::jsonb AS a, ARRAY(SELECT (e->>'id')::uuid"
    " FROM jsonb_array_elements($1::jsonb) e) AS ids),"
    " done AS (UPDATE public.jobs x SET status = 'succeeded',"
    " result = nullif(s.a -> (array_position(s.ids, x.id) - 1) -> 'result', 'null'),"
    " error = NULL, finished_at = clock_timestamp(), locked_by = NULL, locked_until = NULL"
    " FROM s WHERE x.id = ANY (s.ids) AND x.external"
    " AND x.locked_by = 'lease:' || (s.a -> (array_position(s.ids, x.id) - 1) ->> 'lease')::uuid"
    " AND coalesce((s.a -> (array_position(s.ids, x.id) - 1) ->> 'org')::uuid = x.org_id, true)"
    " RETURNING array_position(s.ids, x.id) - 1 AS i, x AS j)"
    " SELECT d.i, public.tenantd_job_json(d.j)::text, (d.j).type FROM done d",
};

struct complete_set {
    struct finish *item[COMPLETE_SET_MAX];
    int n;
    char *param; /* the set as JSON: [{id, lease, org, result}, ...], item[i] at i */
};

/* This loop's completions waiting for the set at the database to return. */
static _Thread_local struct {
    struct finish *head, **tail;
    bool busy; /* a set is at the database */
} completions;

static void complete_set_done(struct db_result *r, void *ud);

static void complete_set_send(void)
{
    assert(!completions.busy);
    if (!completions.head)
        return;
    struct complete_set *set = calloc(1, sizeof *set);
    if (!set) { /* each alone, as before sets */
        while (completions.head) {
            struct finish *f = completions.head;
            completions.head = f->next;
            finish_alone(f);
        }
        completions.tail = &completions.head;
        return;
    }
    struct strbuf b = {0};
    sb_puts(&b, "[");
    while (completions.head && set->n < COMPLETE_SET_MAX) {
        struct finish *f = completions.head;
        completions.head = f->next;
        const char **v = f->values; /* id, lease, org: UUIDs checked; result: JSON text */
        sb_printf(&b, "%s{\"id\":\"%s\",\"lease\":\"%s\",\"org\":", set->n ? "," : "", v[0],
                  v[1]);
        if (v[2])
            sb_printf(&b, "\"%s\"", v[2]);
        else
            sb_puts(&b, "null");
        sb_puts(&b, ",\"result\":");
        sb_puts(&b, v[4] ? v[4] : "null");
        sb_puts(&b, "}");
        set->item[set->n++] = f;
    }
    sb_puts(&b, "]");
    if (!completions.head)
        completions.tail = &completions.head;
    set->param = b.s;
    completions.busy = true;
    job_metrics_completion_set();
    db_query(set->item[0]->req->ctx->db, NULL, &complete_set_stmt, 1,
             (const char *const *)&set->param, complete_set_done, set);
}

static void complete_set_done(struct db_result *r, void *ud)
{
    struct complete_set *set = ud;
    assert(completions.busy);
    bool answered[COMPLETE_SET_MAX] = {false};
    int rows = r->status == DB_OK ? PQntuples(r->res) : 0;
    for (int k = 0; k < rows; k++) {
        int i = atoi(PQgetvalue(r->res, k, 0));
        if (i < 0 || i >= set->n || answered[i])
            continue;
        answered[i] = true;
        struct request *req = set->item[i]->req;
        job_metrics_api(JOB_API_COMPLETE, true);
        job_metrics_count(PQgetvalue(r->res, k, 2), JOB_VIA_HTTP, JOB_COUNT_COMPLETED);
        http_respond(req, 200, "application/json", PQgetvalue(r->res, k, 1),
                     (size_t)PQgetlength(r->res, k, 1));
    }
    if (r->status == DB_UNAVAILABLE) {
        /* Shed or no database: sending each again would only add load; each
         * gets the 503 (Retry-After) it would have got alone. */
        for (int i = 0; i < set->n; i++)
            db_respond_failure(set->item[i]->req, r, "worker completion");
    } else {
        if (r->status != DB_OK)
            log_msg(LOG_WARN, "worker completions sent alone: the set failed: %s (%s)",
                    r->message ? r->message : "?", r->sqlstate ? r->sqlstate : "?");
        for (int i = 0; i < set->n; i++)
            if (!answered[i])
                finish_alone(set->item[i]);
    }
    free(set->param);
    free(set);
    /* Completions that came while the set was out (answering above may have
     * read more requests) go now, as the next set. */
    completions.busy = false;
    complete_set_send();
}

static void complete_queue(struct finish *f)
{
    if (!completions.tail)
        completions.tail = &completions.head;
    f->next = NULL;
    *completions.tail = f;
    completions.tail = &f->next;
    if (!completions.busy)
        complete_set_send();
}

static void finish_send(struct request *req, const char *id, const char *lease, bool ok,
                        const char *result, const char *error, bool retry)
{
    struct finish *f = arena_calloc(req->arena, sizeof *f);
    f->req = req;
    f->op = ok ? JOB_API_COMPLETE : JOB_API_FAIL;
    const char **v = f->values = arena_calloc(req->arena, 9 * sizeof *v);
    v[0] = id;
    v[1] = arena_strdup(req->arena, lease);
    v[2] = worker_org(req);
    v[3] = ok ? "true" : "false";
    v[4] = result;
    v[5] = error;
    v[6] = retry ? "true" : "false";
    if (ok)
        complete_queue(f);
    else
        finish_alone(f);
}

void job_worker_complete(struct request *req)
{
    static const char *const fields[] = {"lease_id", "result", NULL};
    const char *id, *lease;
    json_t *errors = NULL;
    json_t *body = lease_body(req, fields, &id, &lease, &errors);
    if (!body)
        return;
    if (errors) {
        problem_respond_errors(req, "The completion is not valid.", errors);
        return;
    }
    const char *result = NULL;
    json_t *res = json_object_get(body, "result");
    if (res && !json_is_null(res)) {
        char *t = json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY);
        result = t ? arena_strdup(req->arena, t) : NULL;
        free(t);
    }
    finish_send(req, id, lease, true, result, NULL, false);
}

void job_worker_fail(struct request *req)
{
    static const char *const fields[] = {"lease_id", "error", "retry", NULL};
    const char *id, *lease;
    json_t *errors = NULL;
    json_t *body = lease_body(req, fields, &id, &lease, &errors);
    if (!body)
        return;
    json_t *e = json_object_get(body, "error");
    if (!json_is_string(e) || json_string_length(e) < 1 || json_string_length(e) > ERROR_MAX ||
        strlen(json_string_value(e)) != json_string_length(e))
        problem_add_error(&errors, "error", "must be a string of 1 to 2000 bytes");
    bool retry = false;
    body_bool(body, "retry", false, &retry, &errors);
    if (errors) {
        problem_respond_errors(req, "The failure report is not valid.", errors);
        return;
    }
    finish_send(req, id, lease, false, NULL, json_string_value(e), retry);
}
