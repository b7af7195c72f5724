/*
 * Schedules: a job enqueued (and charged) at each tick of a five-field cron
 * in a time zone.
 *
 *   POST   /v1/schedules          {type, payload?, cron, timezone?, paused?}
 *   GET    /v1/schedules[/{id}]
 *   PATCH  /v1/schedules/{id}     {paused?, cron?, timezone?}
 *   DELETE /v1/schedules/{id}
 *
 * Every serve process fires due ticks from its job listener thread
 * (workerapi.c), every `tenantd worker` from its coordinator thread
 * (worker.c), every TENANTD_SCHEDULE_TICK_MS (0: not this process) with one
 * SQL function
 * (tenantd_schedule_tick, migration 0011): rows locked SKIP LOCKED, the
 * job, the tick's record and the next run commit together, so a tick
 * happens once however many processes run. Cron arithmetic (time zones,
 * DST) is SQL too (tenantd_cron_next); C parses and expands the cron
 * (cron.c).
 *
 * Tests speed time up instead of waiting minutes: with
 * TENANTD_TEST_CLOCK_SPEED=n (> 1) schedules see the time
 * base + (now - base) * n, base = TENANTD_TEST_CLOCK_BASE (unix seconds),
 * the same in every process given the same settings.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "app/pagelist.h"
#include "job/cron.h"
#include "job/internal.h"

#define TIMEZONE_MAX 64

bool job_clock_fake(char *buf, size_t len)
{
    if (g_config->test_clock_speed <= 1)
        return false;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    double now = (double)tv.tv_sec + tv.tv_usec / 1e6;
    double base = (double)g_config->test_clock_base;
    snprintf(buf, len, "%.6f", base + (now - base) * (double)g_config->test_clock_speed);
    return true;
}

/* ---- ticking (on the listener thread) -------------------------------------------------- */

void job_schedule_tick(PGconn *c)
{
    /* The configured costs of the built-in types; declared types' costs
     * are in job_types. */
    json_t *costs = json_object();
    const struct job_type *t;
    for (size_t i = 0; (t = job_type_at(i)); i++)
        json_object_set_new(costs, t->type, json_integer((json_int_t)t->cost()));
    char *ctext = json_dumps(costs, JSON_COMPACT);
    json_decref(costs);
    char clock[40];
    char keep[16];
    snprintf(keep, sizeof keep, "%lld", (long long)g_config->schedule_tick_keep_days);
    const char *v[] = {job_clock_fake(clock, sizeof clock) ? clock : NULL, ctext, keep};
    /* The ticks this call fired, by outcome, for this process's counters
     * (tenantd_schedule_ticks_total; control migration 0021); each tick
     * also prunes its schedule's records past TENANTD_SCHEDULE_TICK_KEEP_DAYS. */
    PGresult *r = PQexecParams(c,
                               "SELECT outcome, ticks FROM public.tenantd_schedule_tick_outcomes("
                               "coalesce(to_timestamp($1::float8), now()), $2::jsonb,"
                               " p_keep_days => $3::integer)",
                               3, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        log_msg(LOG_WARN, "schedules: tick failed: %s", PQresultErrorMessage(r));
    else
        for (int i = 0; i < PQntuples(r); i++) {
            job_metrics_schedule_ticks(PQgetvalue(r, i, 0), atoi(PQgetvalue(r, i, 1)));
            log_msg(LOG_DEBUG, "schedules: %s tick(s) fired: %s", PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 0));
        }
    PQclear(r);
    free(ctext);
}

/* ---- routes ------------------------------------------------------------------------------- */

static const struct db_stmt create_stmt = {
    "schedule_create",
    "SELECT public.tenantd_schedule_create($1::uuid, $2, $3::jsonb, $4, $5, $6::int[], $7::int[],"
    " $8::int[], $9::int[], $10::int[], $11::boolean, $12::boolean, $13::boolean,"
    " coalesce(to_timestamp($14::float8), now()))::text",
};

static const struct db_stmt update_stmt = {
    "schedule_update",
    "SELECT public.tenantd_schedule_update($1::uuid, $2::uuid, $3::boolean, $4, $5, $6::int[],"
    " $7::int[], $8::int[], $9::int[], $10::int[], $11::boolean, $12::boolean,"
    " coalesce(to_timestamp($13::float8), now()))::text",
};

static const struct db_stmt list_stmt = {
    "schedule_list",
    SQL_ORG_PAGE("public.schedules", "s", "public.tenantd_schedule_json(s)", ""),
};

static const struct db_stmt get_stmt = {
    "schedule_get",
    "SELECT public.tenantd_schedule_json(s)::text FROM public.schedules s"
    " WHERE s.id = $1::uuid AND s.org_id = $2::uuid",
};

static const struct db_stmt delete_stmt = {
    "schedule_delete",
    "DELETE FROM public.schedules WHERE id = $1::uuid AND org_id = $2::uuid RETURNING 1",
};

/* Time zone names as in the tz database: letters, digits, _ + - /. */
static bool timezone_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > TIMEZONE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '+' || ch == '-' || ch == '/'))
            return false;
    }
    return true;
}

/* cron and timezone fields into v[first..first+8] (the expanded sets and
 * the two "any" flags) and v[first-2], v[first-1] (texts). */
static void cron_values(struct request *req, const char *cron_text, const struct cron *cr,
                        const char **v)
{
    (void)cron_text;
    for (int i = 0; i < 5; i++) {
        char *buf = arena_alloc(req->arena, 256);
        cron_field_array(cr, i, buf, 256);
        v[i] = buf;
    }
    v[5] = cr->dom_any ? "true" : "false";
    v[6] = cr->dow_any ? "true" : "false";
}

static void saved(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status == DB_ERROR && r->sqlstate && !strcmp(r->sqlstate, "22023")) {
        json_t *errors = NULL;
        problem_add_error(&errors, "timezone", "is not a time zone (e.g. Europe/Paris, UTC)");
        problem_respond_errors(req, "The schedule is not valid.", errors);
        return;
    }
    if (db_failed(req, r, "schedule save"))
        return;
    const char *body = db_result_text(r, 0, 0);
    if (!body) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such schedule.");
        return;
    }
    http_respond(req, req->method == HTTP_POST ? 201 : 200, "application/json", body, strlen(body));
}

struct create {
    const char **v; /* 14 values */
};

static void create_send(struct request *req, void *ud, int64_t cost, int max_attempts)
{
    (void)cost;
    (void)max_attempts;
    struct create *c = ud;
    db_query(req->ctx->db, auth_ctx(req)->schema, &create_stmt, 14, c->v, saved, req);
}

void job_schedule_create(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    json_t *body = body_object(req, false);
    if (!body)
        return;
    static const char *const fields[] = {"type", "payload", "cron", "timezone", "paused", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char *type = json_string_value(json_object_get(body, "type"));
    const struct job_type *t = NULL;
    bool external = false;
    if (!type || (!(t = job_type_find(type)) && !(external = job_ext_name_valid(type))))
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
    struct cron cr;
    char why[128];
    const char *cron_text = json_string_value(json_object_get(body, "cron"));
    if (!cron_text)
        problem_add_error(&errors, "cron", "is required: five fields, e.g. \"0 6 * * 1\"");
    else if (cron_parse(cron_text, &cr, why, sizeof why) != 0)
        problem_add_error(&errors, "cron", arena_printf(req->arena, "is not valid: %s", why));
    const char *tz = "UTC";
    json_t *z = json_object_get(body, "timezone");
    if (z && !json_is_null(z)) {
        tz = json_string_value(z);
        if (!tz || !timezone_ok(tz))
            problem_add_error(&errors, "timezone", "is not a time zone (e.g. Europe/Paris, UTC)");
    }
    bool paused = false;
    body_bool(body, "paused", false, &paused, &errors);
    if (errors) {
        problem_respond_errors(req, "The schedule is not valid.", errors);
        return;
    }
    struct create *c = arena_calloc(req->arena, sizeof *c);
    const char **v = c->v = arena_calloc(req->arena, 14 * sizeof *v);
    v[0] = a->org_id;
    v[1] = arena_strdup(req->arena, type);
    char *ptext = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
    v[2] = ptext ? arena_strdup(req->arena, ptext) : "{}";
    free(ptext);
    v[3] = arena_strdup(req->arena, cron_text);
    v[4] = arena_strdup(req->arena, tz);
    cron_values(req, cron_text, &cr, v + 5);
    v[12] = paused ? "true" : "false";
    char clock[40];
    v[13] = job_clock_fake(clock, sizeof clock) ? arena_strdup(req->arena, clock) : NULL;
    if (external)
        job_ext_check(req, type, payload, create_send, c);
    else
        create_send(req, c, 0, 0);
}

void job_schedule_patch(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such schedule (ids are UUIDs).");
        return;
    }
    json_t *body = body_object(req, false);
    if (!body)
        return;
    static const char *const fields[] = {"paused", "cron", "timezone", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char **v = arena_calloc(req->arena, 13 * sizeof *v);
    v[0] = a->org_id;
    v[1] = id;
    bool paused;
    if (body_bool(body, "paused", false, &paused, &errors) == 1)
        v[2] = paused ? "true" : "false";
    json_t *cj = json_object_get(body, "cron");
    if (cj) {
        struct cron cr;
        char why[128];
        const char *ct = json_string_value(cj);
        if (!ct)
            problem_add_error(&errors, "cron", "must be five fields, e.g. \"0 6 * * 1\"");
        else if (cron_parse(ct, &cr, why, sizeof why) != 0)
            problem_add_error(&errors, "cron", arena_printf(req->arena, "is not valid: %s", why));
        else {
            v[3] = arena_strdup(req->arena, ct);
            cron_values(req, ct, &cr, v + 5);
        }
    }
    json_t *z = json_object_get(body, "timezone");
    if (z) {
        const char *tz = json_string_value(z);
        if (!tz || !timezone_ok(tz))
            problem_add_error(&errors, "timezone", "is not a time zone (e.g. Europe/Paris, UTC)");
        else
            v[4] = arena_strdup(req->arena, tz);
    }
    if (errors) {
        problem_respond_errors(req, "The change is not valid.", errors);
        return;
    }
    char clock[40];
    v[12] = job_clock_fake(clock, sizeof clock) ? arena_strdup(req->arena, clock) : NULL;
    db_query(req->ctx->db, a->schema, &update_stmt, 13, v, saved, req);
}

static const struct job_rows rows = JOB_ROWS("schedule", &list_stmt, &get_stmt, &delete_stmt);

void job_schedule_list(struct request *req)
{
    job_rows_list(req, &rows);
}

void job_schedule_get(struct request *req)
{
    job_rows_get(req, &rows);
}

void job_schedule_delete(struct request *req)
{
    job_rows_delete(req, &rows);
}
