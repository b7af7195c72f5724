/*
 * The jobs module's routes:
 *
 *   GET  /v1/job-types         the enabled types with their cost
 *   POST /v1/jobs              check type and payload, charge, enqueue (202)
 *   GET  /v1/jobs              the org's jobs, newest first (?status= ?type=)
 *   GET  /v1/jobs/{id}         one job of the org
 *   POST /v1/jobs/{id}/cancel  a queued job -> cancelled, refunded
 *
 * Each request is one statement on the caller's connection (all SQL is
 * schema-qualified to public; passing the org's schema only reuses the
 * connection the pool keeps bound to it). Enqueue is one SQL function
 * (tenantd_job_enqueue): Idempotency-Key, deduction, insert, NOTIFY and the
 * stored answer commit together. Cancel is one function too, made
 * idempotent with the two-step form of idem.h. PostgreSQL renders the Job
 * JSON (tenantd_job_json); C passes it through.
 *
 * The workers that run jobs are in worker.c; the job types in types.c.
 */
#include "job/job.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/trace.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/http.h"
#include "core/page.h"
#include "core/rfc3339.h"
#include "core/log.h"
#include "core/problem.h"
#include "credit/credit.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "idem/idem.h"
#include "job/internal.h"

static void job_types_list(struct request *req);
static void jobs_create(struct request *req);
static void jobs_list(struct request *req);
static void jobs_get(struct request *req);
static void jobs_cancel(struct request *req);

static const struct route job_routes[] = {
    {HTTP_GET, "/v1/job-types", AUTH_MEMBER, job_types_list, "listJobTypes"},
    {HTTP_POST, "/v1/jobs", AUTH_ADMIN_OR_KEY, jobs_create, "createJob"},
    {HTTP_GET, "/v1/jobs", AUTH_MEMBER, jobs_list, "listJobs"},
    {HTTP_GET, "/v1/jobs/{id}", AUTH_MEMBER, jobs_get, "getJob"},
    {HTTP_POST, "/v1/jobs/{id}/cancel", AUTH_ADMIN_OR_KEY, jobs_cancel, "cancelJob"},
    /* Jobs your own code runs (external.c, workerapi.c). */
    {HTTP_POST, "/v1/jobs/{id}/retry", AUTH_ADMIN_OR_KEY, job_ext_retry, "retryJob"},
    {HTTP_PUT, "/v1/admin/job-types/{type}", AUTH_OPERATOR, job_ext_type_put, "adminPutJobType"},
    {HTTP_DELETE, "/v1/admin/job-types/{type}", AUTH_OPERATOR, job_ext_type_delete,
     "adminDeleteJobType"},
    {HTTP_POST, "/v1/schedules", AUTH_ADMIN, job_schedule_create, "createSchedule"},
    {HTTP_GET, "/v1/schedules", AUTH_MEMBER, job_schedule_list, "listSchedules"},
    {HTTP_GET, "/v1/schedules/{id}", AUTH_MEMBER, job_schedule_get, "getSchedule"},
    {HTTP_PATCH, "/v1/schedules/{id}", AUTH_ADMIN, job_schedule_patch, "updateSchedule"},
    {HTTP_DELETE, "/v1/schedules/{id}", AUTH_ADMIN, job_schedule_delete, "deleteSchedule"},
    {HTTP_POST, "/v1/webhooks", AUTH_ADMIN, job_webhook_create, "createWebhook"},
    {HTTP_GET, "/v1/webhooks", AUTH_ADMIN, job_webhook_list, "listWebhooks"},
    {HTTP_GET, "/v1/webhooks/{id}", AUTH_ADMIN, job_webhook_get, "getWebhook"},
    {HTTP_DELETE, "/v1/webhooks/{id}", AUTH_ADMIN, job_webhook_delete, "deleteWebhook"},
    {HTTP_POST, "/v1/worker/claim", AUTH_WORKER, job_worker_claim, "workerClaim"},
    {HTTP_POST, "/v1/worker/jobs/{id}/heartbeat", AUTH_WORKER, job_worker_heartbeat,
     "workerHeartbeat"},
    {HTTP_POST, "/v1/worker/jobs/{id}/complete", AUTH_WORKER, job_worker_complete,
     "workerComplete"},
    {HTTP_POST, "/v1/worker/jobs/{id}/fail", AUTH_WORKER, job_worker_fail, "workerFail"},
    {0},
};

static int job_init(void);
static void job_drain(void);
static void job_shutdown(void);

const struct module job_module = {
    .name = "jobs",
    .routes = job_routes,
    .init = job_init,
    .drain = job_drain,
    .shutdown = job_shutdown,
};

#define MAX_ATTEMPTS_DEFAULT 3
#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX 100

/* ---- statements --------------------------------------------------------- */

/* The job (stamped with the request's trace, $10/$11), its charge and its
 * audit event (migration 0010; $12/$13 actor, $14 IP, $15 request id)
 * commit together; a replay adds no event. */
static const struct db_stmt enqueue_stmt = {
    "job_enqueue",
    "WITH e AS (SELECT * FROM public.tenantd_job_enqueue_traced($10, $11, $1::uuid, $2,"
    " $3::jsonb, $4::int, $5::timestamptz, $6::int, $7::bigint, $8, $9)),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $1::uuid, $12, $13, 'job.created', 'job',"
    " e.o_body::json->>'id', $14, $15, jsonb_build_object('type', $2::text, 'cost', $7::bigint)"
    " FROM e WHERE e.o_outcome = 'executed')"
    " SELECT e.o_outcome, e.o_status::text, e.o_headers::text, e.o_body FROM e",
};

static const struct db_stmt get_stmt = {
    "job_get",
    "SELECT public.tenantd_job_json(j)::text FROM public.jobs j"
    " WHERE j.id = $1::uuid AND j.org_id = $2::uuid",
};

/* Newest first by seq (a cursor is the last seq handed out, so inserts never
 * shift a page); one row more than the page says whether another follows.
 * The cursor is a coalesce, not "$4 IS NULL OR", so that it stays an index
 * condition on the generic plan: a deep page reads one page of the index. */
static const struct db_stmt list_stmt = {
    "job_list",
    /* A result over 16 KiB is null in a list item (GET
     * /v1/jobs/{id} has it whole), so that a page stays small. */
    "SELECT public.tenantd_job_json(CASE WHEN octet_length(j.result::text) > 16384"
    " THEN jsonb_populate_record(j, '{\"result\":null}') ELSE j END)::text, j.seq"
    " FROM public.jobs j"
    " WHERE j.org_id = $1::uuid AND ($2::text IS NULL OR j.status = $2)"
    " AND ($3::text IS NULL OR j.type = $3) AND j.seq < coalesce($4::bigint, 9223372036854775807)"
    " ORDER BY j.seq DESC LIMIT $5::int + 1",
};

/* With the audit event of a cancellation (queued: cancelled and refunded;
 * running external: cancel requested); $3/$4 actor, $5 IP, $6 request id. */
static const struct db_stmt cancel_stmt = {
    "job_cancel",
    "WITH c AS (SELECT * FROM public.tenantd_job_cancel($1::uuid, $2::uuid)),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $1::uuid, $3, $4, CASE c.o_outcome"
    " WHEN 'cancelled' THEN 'job.cancelled' ELSE 'job.cancel_requested' END, 'job', $2,"
    " $5, $6, jsonb_build_object('type', c.o_body::json->>'type', 'refunded', CASE c.o_outcome"
    " WHEN 'cancelled' THEN (c.o_body::json->>'cost')::bigint ELSE 0 END)"
    " FROM c WHERE c.o_outcome IN ('cancelled', 'cancel_requested'))"
    " SELECT c.o_outcome, c.o_body FROM c",
};

/* ---- lifecycle ------------------------------------------------------------- */

static bool workers_started;

static int job_init(void)
{
    /* Wakes long-polling worker API claims (and reaps lapsed leases when no
     * in-process worker does). */
    if (job_ext_listener_start(g_config->database_url, g_config->job_workers <= 0) != 0)
        return -1;
    if (g_config->job_workers <= 0)
        return 0;
    if (job_workers_start(g_config->database_url, (int)g_config->job_workers) != 0)
        return -1;
    workers_started = true;
    return 0;
}

static void job_drain(void)
{
    if (workers_started)
        job_workers_begin_stop((int)g_config->drain_timeout_ms);
}

static void job_shutdown(void)
{
    if (workers_started)
        job_workers_stop((int)g_config->drain_timeout_ms);
    workers_started = false;
    job_ext_listener_stop();
}

/* ---- helpers ------------------------------------------------------------------ */

/* ---- GET /v1/job-types ---------------------------------------------------------- */

static void job_types_list(struct request *req)
{
    json_t *data = json_array();
    const struct job_type *t;
    for (size_t i = 0; (t = job_type_at(i)); i++)
        json_array_append_new(data,
                              json_pack("{s:s, s:I, s:s}", "type", t->type, "cost",
                                        (json_int_t)t->cost(), "description", t->description));
    job_ext_types_list(req, data); /* adds the declared external types */
}

/* ---- POST /v1/jobs ----------------------------------------------------------------- */

struct create_ctx {
    struct request *req;
    int64_t cost;
};

static void created(struct db_result *r, void *ud)
{
    struct create_ctx *cc = ud;
    struct request *req = cc->req;
    if (r->status == DB_ERROR && r->sqlstate &&
        !strcmp(r->sqlstate, CREDIT_SQLSTATE_INSUFFICIENT)) {
        char detail[160];
        snprintf(detail, sizeof detail,
                 "The org's balance is short of this job's cost (%" PRId64
                 " credits); nothing was charged or queued.",
                 cc->cost);
        problem_respond(req, PROBLEM_PAYMENT_REQUIRED, detail);
        return;
    }
    if (r->status == DB_ERROR && r->sqlstate && !strncmp(r->sqlstate, "22", 2)) {
        /* Only run_at reaches SQL as client text the C checks could miss
         * (a timestamp PostgreSQL cannot represent). */
        json_t *errors = NULL;
        problem_add_error(&errors, "run_at", "must be an RFC 3339 date-time");
        problem_respond_errors(req, "The job is not valid.", errors);
        return;
    }
    if (db_failed(req, r, "job enqueue"))
        return;
    const char *outcome = db_result_text(r, 0, 0), *body = db_result_text(r, 0, 3);
    if (idem_answer(req, outcome, db_result_text(r, 0, 1), db_result_text(r, 0, 2), body))
        return;
    if (!outcome || strcmp(outcome, "executed") || !body) {
        log_msg(LOG_ERROR, "job enqueue: unexpected outcome %s", outcome ? outcome : "NULL");
        problem_respond(req, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    /* The same headers as the stored answer a replay gets. */
    json_t *hs = json_loads(db_result_text(r, 0, 2), 0, NULL);
    size_t i;
    json_t *h;
    json_array_foreach(hs, i, h)
    {
        const char *name = json_string_value(json_array_get(h, 0));
        const char *value = json_string_value(json_array_get(h, 1));
        if (name && value && strcasecmp(name, "Content-Type"))
            http_set_header(req, name, value);
    }
    json_decref(hs);
    http_respond(req, 202, "application/json", body, strlen(body));
}

static void jobs_create(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    static const char *const known[] = {"type",   "payload",      "priority",
                                        "run_at", "max_attempts", NULL};
    body_unknown_fields(req, body, known, NULL, &errors);

    const struct job_type *t = NULL;
    json_t *type = json_object_get(body, "type");
    /* Not built in: perhaps an operator-declared external type (external.c
     * looks it up and checks the payload against its schema). */
    bool external = false;
    if (!type)
        problem_add_error(&errors, "type", "is required");
    else if (!json_is_string(type) || (!(t = job_type_find(json_string_value(type))) &&
                                       !(external = job_ext_name_valid(json_string_value(type)))))
        problem_add_error(&errors, "type", "is not a job type of this server (GET /v1/job-types)");

    json_t *payload = json_object_get(body, "payload");
    if (payload && json_is_null(payload))
        payload = NULL;
    if (payload && !json_is_object(payload))
        problem_add_error(&errors, "payload", "must be an object");
    else if (t) {
        json_t *empty = payload ? NULL : json_object();
        t->validate(payload ? payload : empty, &errors);
        json_decref(empty);
    }

    json_int_t priority = 0, max_attempts = external ? 0 : MAX_ATTEMPTS_DEFAULT;
    body_int(body, "priority", false, 0, 9, NULL, &priority, &errors);
    body_int(body, "max_attempts", false, 1, 25, NULL, &max_attempts, &errors);
    static const char run_at_rule[] = "must be an RFC 3339 date-time, e.g. 2030-01-02T03:04:05Z";
    const char *run_at = body_string(body, "run_at", false, 1, 64, run_at_rule, &errors);
    if (run_at && !rfc3339_valid(run_at)) {
        problem_add_error(&errors, "run_at", run_at_rule);
        run_at = NULL;
    }
    if (errors || (!t && !external)) { /* no type means an error was added */
        problem_respond_errors(req, "The job is not valid.", errors);
        return;
    }

    struct idem_key *ik = arena_calloc(req->arena, sizeof *ik);
    int has_key = idem_read(req, a->org_id, ik);
    if (has_key < 0)
        return;
    if (external) {
        job_ext_enqueue(req, json_string_value(type), payload, (int)priority, run_at,
                        (int)max_attempts, has_key ? ik : NULL);
        return;
    }
    job_enqueue_send(req, t->type, payload, (int)priority, run_at, (int)max_attempts, t->cost(),
                     has_key ? ik : NULL);
}

void job_enqueue_send(struct request *req, const char *type, json_t *payload, int priority,
                      const char *run_at, int max_attempts, int64_t cost, const struct idem_key *ik)
{
    const struct auth_ctx *a = auth_ctx(req);
    char *ptext = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    const char *payload_text = ptext ? arena_strdup(req->arena, ptext) : "{}";
    free(ptext);
    struct create_ctx *cc = arena_calloc(req->arena, sizeof *cc);
    cc->req = req;
    cc->cost = cost;
    const char **vals = arena_calloc(req->arena, 15 * sizeof *vals);
    vals[0] = a->org_id;
    vals[1] = arena_strdup(req->arena, type);
    vals[2] = payload_text;
    vals[3] = arena_printf(req->arena, "%d", priority);
    vals[4] = run_at;
    vals[5] = arena_printf(req->arena, "%d", max_attempts);
    vals[6] = arena_printf(req->arena, "%" PRId64, cc->cost);
    vals[7] = ik ? ik->key : NULL;
    vals[8] = ik ? ik->hash : NULL;
    /* The job's calls out continue the request's trace (core/trace.h). */
    const struct trace *tr = trace_of(req);
    vals[9] = tr->traceparent;
    vals[10] = tr->tracestate;
    vals[11] = auth_actor_type(a);
    vals[12] = auth_actor_id(a);
    vals[13] = req->client_ip;
    vals[14] = req->request_id;
    db_query(req->ctx->db, a->schema, &enqueue_stmt, 15, vals, created, cc);
}

/* ---- GET /v1/jobs/{id} ------------------------------------------------------------- */

static void got(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "job get"))
        return;
    db_respond_json(req, r, 0, "No such job.");
}

static void jobs_get(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job (job ids are UUIDs).");
        return;
    }
    const char **vals = arena_calloc(req->arena, 2 * sizeof *vals);
    vals[0] = id;
    vals[1] = a->org_id;
    db_query(req->ctx->db, a->schema, &get_stmt, 2, vals, got, req);
}

/* ---- GET /v1/jobs -------------------------------------------------------------------- */

#define LIST_PAGE_BYTES (4u << 20)

struct list_ctx {
    struct request *req;
    int limit;
};

static void listed(struct db_result *r, void *ud)
{
    struct list_ctx *lc = ud;
    struct request *req = lc->req;
    if (db_failed(req, r, "job list"))
        return;
    int n = PQntuples(r->res);
    int shown = n > lc->limit ? lc->limit : n;
    /* A page also ends past LIST_PAGE_BYTES (payloads may be large); the
     * first item always counts. */
    size_t len = 96; /* the envelope and a cursor (at most 26 characters) */
    for (int i = 0; i < shown; i++) {
        size_t l = (size_t)PQgetlength(r->res, i, 0) + 1;
        if (i > 0 && len + l > LIST_PAGE_BYTES) {
            shown = i;
            break;
        }
        len += l;
    }
    char *out = arena_alloc(req->arena, len), *w = out;
    w += sprintf(w, "{\"data\":[");
    for (int i = 0; i < shown; i++) {
        if (i)
            *w++ = ',';
        size_t l = (size_t)PQgetlength(r->res, i, 0);
        memcpy(w, PQgetvalue(r->res, i, 0), l);
        w += l;
    }
    const char *next =
        n > shown ? page_cursor(req->arena, PAGE_KEY_SEQ, PQgetvalue(r->res, shown - 1, 1)) : NULL;
    if (n > shown && !next) {
        problem_respond(req, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    /* base64url needs no escaping inside a JSON string. */
    if (next)
        w += sprintf(w, "],\"next_cursor\":\"%s\"}", next);
    else
        w += sprintf(w, "],\"next_cursor\":null}");
    http_respond_arena(req, 200, "application/json", out, (size_t)(w - out));
}

static void jobs_list(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    json_t *errors = NULL;
    const char *status = http_query(req, "status");
    if (status) {
        static const char *const statuses[] = {"queued", "running",   "succeeded",
                                               "failed", "cancelled", NULL};
        bool ok = false;
        for (const char *const *s = statuses; *s; s++)
            ok = ok || !strcmp(*s, status);
        if (!ok)
            problem_add_error(&errors, "status",
                              "must be queued, running, succeeded, failed or cancelled");
    }
    const char *type = http_query(req, "type");
    if (type && (strlen(type) < 1 || strlen(type) > 64))
        problem_add_error(&errors, "type", "must be a job type name");
    struct page pg;
    page_read(req, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, PAGE_KEY_SEQ, &pg, &errors);
    if (errors) {
        problem_respond_errors(req, "The query is not valid.", errors);
        return;
    }
    struct list_ctx *lc = arena_calloc(req->arena, sizeof *lc);
    lc->req = req;
    lc->limit = pg.limit;
    const char **vals = arena_calloc(req->arena, 5 * sizeof *vals);
    vals[0] = a->org_id;
    vals[1] = status;
    vals[2] = type;
    vals[3] = pg.seq;
    vals[4] = pg.limit_text;
    db_query(req->ctx->db, a->schema, &list_stmt, 5, vals, listed, lc);
}

/* ---- POST /v1/jobs/{id}/cancel ---------------------------------------------------------- */

struct cancel_ctx {
    struct request *req;
    struct idem_claim *claim;
};

static void cancelled(struct db_result *r, void *ud)
{
    struct cancel_ctx *cc = ud;
    struct request *req = cc->req;
    if (r->status == DB_UNAVAILABLE) {
        idem_problem(req, cc->claim, PROBLEM_UNAVAILABLE,
                     "The database is not available; retry later.");
        return;
    }
    if (r->status == DB_ERROR || PQntuples(r->res) != 1) {
        log_msg(LOG_ERROR, "job cancel: %s (%s)", r->message ? r->message : "no row",
                r->sqlstate ? r->sqlstate : "?");
        idem_problem(req, cc->claim, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    const char *outcome = db_result_text(r, 0, 0), *body = db_result_text(r, 0, 1);
    if (outcome && !strcmp(outcome, "cancelled") && body) {
        idem_respond(req, cc->claim, 200, "application/json", body, strlen(body));
    } else if (outcome && !strcmp(outcome, "cancel_requested") && body) {
        /* Running: its worker learns it at its next heartbeat. */
        idem_respond(req, cc->claim, 202, "application/json", body, strlen(body));
    } else if (outcome && !strcmp(outcome, "conflict") && body) {
        json_t *j = json_loads(body, 0, NULL);
        const char *st = json_string_value(json_object_get(j, "status"));
        char detail[128];
        snprintf(detail, sizeof detail,
                 "Only a queued job, or a running one of an external type, can be cancelled;"
                 " this one is %s.",
                 st ? st : "not queued");
        json_decref(j);
        idem_problem(req, cc->claim, PROBLEM_CONFLICT, detail);
    } else {
        idem_problem(req, cc->claim, PROBLEM_NOT_FOUND, "No such job.");
    }
}

static void cancel_proceed(struct request *req, struct idem_claim *claim, void *ud)
{
    (void)ud;
    const struct auth_ctx *a = auth_ctx(req);
    struct cancel_ctx *cc = arena_calloc(req->arena, sizeof *cc);
    cc->req = req;
    cc->claim = claim;
    const char **vals = arena_calloc(req->arena, 6 * sizeof *vals);
    vals[0] = a->org_id;
    vals[1] = http_param(req, "id");
    vals[2] = auth_actor_type(a);
    vals[3] = auth_actor_id(a);
    vals[4] = req->client_ip;
    vals[5] = req->request_id;
    db_query(req->ctx->db, a->schema, &cancel_stmt, 6, vals, cancelled, cc);
}

static void jobs_cancel(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job (job ids are UUIDs).");
        return;
    }
    idem_claim(req, a->org_id, cancel_proceed, NULL);
}

void job_org_row_query(struct request *req, const struct db_stmt *stmt,
                       void (*cb)(struct db_result *r, void *ud), void *ud, const char *missing)
{
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, missing);
        return;
    }
    const struct auth_ctx *a = auth_ctx(req);
    const char **v = arena_calloc(req->arena, 2 * sizeof *v);
    v[0] = id;
    v[1] = a->org_id;
    db_query(req->ctx->db, a->schema, stmt, 2, v, cb, ud);
}
