/*
 * Job types the operator declares, run by the org's (or the operator's) own
 * workers over HTTP (workerapi.c):
 *
 *   PUT    /v1/admin/job-types/{type}   declare or change (cost, timeout, ...)
 *   DELETE /v1/admin/job-types/{type}   queued jobs of it stay claimable
 *   POST   /v1/jobs/{id}/retry          a failed job runs again, charged again
 *
 * plus the external half of POST /v1/jobs and GET /v1/job-types. Declared
 * types live in public.job_types (control migration 0011), so every process
 * sees a declaration at once; enqueueing one costs one lookup more.
 *
 * payload_schema is a small JSON Schema subset: type, required, properties,
 * enum, minimum, maximum, maxLength. Any other keyword is refused at
 * declaration (422), so a schema never silently checks less than it says.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/log.h"
#include "core/problem.h"
#include "credit/credit.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "idem/idem.h"
#include "job/internal.h"

#define SCHEMA_DEPTH_MAX 8
#define ERRORS_MAX 20

bool job_ext_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* ---- the schema subset --------------------------------------------------------- */

static const char *const schema_types[] = {"object",  "string", "integer", "number",
                                           "boolean", "array",  "null",    NULL};

static int check_fail(json_t **errors, const char *path, const char *key, const char *msg)
{
    char field[200];
    snprintf(field, sizeof field, "%s%s%s", path, key ? "." : "", key ? key : "");
    problem_add_error(errors, field, msg);
    return -1;
}

int job_schema_check(json_t *schema, const char *path, json_t **errors, int depth)
{
    if (!json_is_object(schema))
        return check_fail(errors, path, NULL, "must be a JSON Schema object");
    if (depth > SCHEMA_DEPTH_MAX)
        return check_fail(errors, path, NULL, "nests too deep (8 levels at most)");
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(schema, key, v)
    {
        char kp[64];
        snprintf(kp, sizeof kp, "%.60s", key);
        if (!strcmp(key, "type")) {
            bool ok = false;
            for (const char *const *t = schema_types; json_is_string(v) && *t; t++)
                ok = ok || !strcmp(*t, json_string_value(v));
            if (!ok)
                rc = check_fail(errors, path, kp,
                                "must be object, string, integer, number, boolean, array or null");
        } else if (!strcmp(key, "required")) {
            size_t i;
            json_t *e;
            bool ok = json_is_array(v);
            json_array_foreach(v, i, e) ok = ok && json_is_string(e);
            if (!ok)
                rc = check_fail(errors, path, kp, "must be an array of property names");
        } else if (!strcmp(key, "properties")) {
            if (!json_is_object(v)) {
                rc = check_fail(errors, path, kp, "must be an object of schemas");
                continue;
            }
            const char *pk;
            json_t *ps;
            json_object_foreach(v, pk, ps)
            {
                char sub[200];
                snprintf(sub, sizeof sub, "%s.properties.%.60s", path, pk);
                if (job_schema_check(ps, sub, errors, depth + 1) != 0)
                    rc = -1;
            }
        } else if (!strcmp(key, "enum")) {
            if (!json_is_array(v) || json_array_size(v) == 0)
                rc = check_fail(errors, path, kp, "must be a non-empty array");
        } else if (!strcmp(key, "minimum") || !strcmp(key, "maximum")) {
            if (!json_is_number(v))
                rc = check_fail(errors, path, kp, "must be a number");
        } else if (!strcmp(key, "maxLength")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                rc = check_fail(errors, path, kp, "must be a non-negative integer");
        } else {
            rc = check_fail(errors, path, kp,
                            "is not a supported keyword (type, required, properties, enum, "
                            "minimum, maximum, maxLength)");
        }
    }
    return rc;
}

/* Characters of a UTF-8 string (jansson's strings are valid UTF-8). */
static size_t utf8_len(const char *s, size_t bytes)
{
    size_t n = 0;
    for (size_t i = 0; i < bytes; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static bool type_matches(const char *t, json_t *v)
{
    if (!strcmp(t, "object"))
        return json_is_object(v);
    if (!strcmp(t, "string"))
        return json_is_string(v);
    if (!strcmp(t, "integer"))
        return json_is_integer(v);
    if (!strcmp(t, "number"))
        return json_is_number(v);
    if (!strcmp(t, "boolean"))
        return json_is_boolean(v);
    if (!strcmp(t, "array"))
        return json_is_array(v);
    return json_is_null(v);
}

static void add_error(json_t **errors, const char *path, const char *msg)
{
    if (!*errors || json_array_size(*errors) < ERRORS_MAX)
        problem_add_error(errors, path, msg);
}

void job_schema_validate(json_t *schema, json_t *value, const char *path, json_t **errors)
{
    json_t *t = json_object_get(schema, "type");
    if (t && !type_matches(json_string_value(t), value)) {
        char msg[64];
        snprintf(msg, sizeof msg, "must be of type %s", json_string_value(t));
        add_error(errors, path, msg);
        return;
    }
    json_t *en = json_object_get(schema, "enum");
    if (en) {
        bool found = false;
        size_t i;
        json_t *e;
        json_array_foreach(en, i, e) found = found || json_equal(e, value);
        if (!found)
            add_error(errors, path, "must be one of the schema's enum values");
    }
    if (json_is_number(value)) {
        double x = json_number_value(value);
        json_t *mn = json_object_get(schema, "minimum"), *mx = json_object_get(schema, "maximum");
        if (mn && x < json_number_value(mn))
            add_error(errors, path, "is below the schema's minimum");
        if (mx && x > json_number_value(mx))
            add_error(errors, path, "is above the schema's maximum");
    }
    json_t *ml = json_object_get(schema, "maxLength");
    if (ml && json_is_string(value) &&
        utf8_len(json_string_value(value), json_string_length(value)) >
            (size_t)json_integer_value(ml))
        add_error(errors, path, "is longer than the schema's maxLength");
    if (!json_is_object(value))
        return;
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(schema, "required"), i, r)
    {
        if (!json_object_get(value, json_string_value(r))) {
            char field[200];
            snprintf(field, sizeof field, "%s.%.60s", path, json_string_value(r));
            add_error(errors, field, "is required");
        }
    }
    const char *pk;
    json_t *ps;
    json_object_foreach(json_object_get(schema, "properties"), pk, ps)
    {
        json_t *pv = json_object_get(value, pk);
        if (pv) {
            char field[200];
            snprintf(field, sizeof field, "%s.%.60s", path, pk);
            job_schema_validate(ps, pv, field, errors);
        }
    }
}

/* ---- POST /v1/jobs of an external type ------------------------------------------ */

static const struct db_stmt type_get_stmt = {
    "job_ext_type_get",
    "SELECT cost, max_attempts, payload_schema::text FROM public.job_types WHERE type = $1",
};

struct ext_check {
    struct request *req;
    const char *type;
    json_t *payload; /* borrowed from the request's body */
    job_ext_checked done;
    void *ud;
};

static void decref_cleanup(void *p)
{
    json_decref(p);
}

static void type_got(struct db_result *r, void *ud)
{
    struct ext_check *e = ud;
    struct request *req = e->req;
    if (db_failed(req, r, "job type lookup"))
        return;
    json_t *errors = NULL;
    if (PQntuples(r->res) != 1) {
        problem_add_error(&errors, "type", "is not a job type of this server (GET /v1/job-types)");
        problem_respond_errors(req, "The job is not valid.", errors);
        return;
    }
    int64_t cost = strtoll(db_result_text(r, 0, 0), NULL, 10);
    int max_attempts = atoi(db_result_text(r, 0, 1));
    const char *st = db_result_text(r, 0, 2);
    if (st) {
        json_t *schema = json_loads(st, 0, NULL);
        arena_cleanup(req->arena, decref_cleanup, schema);
        json_t *empty = e->payload ? NULL : json_object();
        job_schema_validate(schema, e->payload ? e->payload : empty, "payload", &errors);
        json_decref(empty);
        if (errors) {
            problem_respond_errors(req, "The job's payload does not match its type's schema.",
                                   errors);
            return;
        }
    }
    e->done(req, e->ud, cost, max_attempts);
}

void job_ext_check(struct request *req, const char *type, json_t *payload, job_ext_checked done,
                   void *ud)
{
    struct ext_check *e = arena_calloc(req->arena, sizeof *e);
    e->req = req;
    e->type = arena_strdup(req->arena, type);
    e->payload = payload;
    e->done = done;
    e->ud = ud;
    db_query(req->ctx->db, auth_ctx(req)->schema, &type_get_stmt, 1, &e->type, type_got, e);
}

struct ext_enqueue {
    const char *type;
    json_t *payload;
    int priority, max_attempts;
    const char *run_at;
    const struct idem_key *ik;
};

static void enqueue_checked(struct request *req, void *ud, int64_t cost, int max_attempts)
{
    struct ext_enqueue *e = ud;
    job_enqueue_send(req, e->type, e->payload, e->priority, e->run_at,
                     e->max_attempts ? e->max_attempts : max_attempts, cost, e->ik);
}

void job_ext_enqueue(struct request *req, const char *type, json_t *payload, int priority,
                     const char *run_at, int max_attempts, const struct idem_key *ik)
{
    struct ext_enqueue *e = arena_calloc(req->arena, sizeof *e);
    e->type = arena_strdup(req->arena, type);
    e->payload = payload;
    e->priority = priority;
    e->run_at = run_at;
    e->max_attempts = max_attempts;
    e->ik = ik;
    job_ext_check(req, type, payload, enqueue_checked, e);
}

/* ---- GET /v1/job-types (the declared part) ------------------------------------------ */

#define TYPE_JSON                                                                                  \
    "json_build_object('type', t.type, 'cost', t.cost, 'description', t.description,"              \
    " 'timeout_s', t.timeout_s, 'max_attempts', t.max_attempts,"                                   \
    " 'payload_schema', t.payload_schema, 'external', true)"

static const struct db_stmt types_list_stmt = {
    "job_ext_types_list",
    "SELECT coalesce(json_agg(" TYPE_JSON " ORDER BY t.type), '[]')::text"
    " FROM public.job_types t",
};

struct types_list {
    struct request *req;
    json_t *data;
};

static void types_listed(struct db_result *r, void *ud)
{
    struct types_list *tl = ud;
    if (db_failed(tl->req, r, "job types list"))
        return;
    json_t *ext = json_loads(db_result_text(r, 0, 0) ? db_result_text(r, 0, 0) : "[]", 0, NULL);
    json_array_extend(tl->data, ext);
    json_decref(ext);
    json_incref(tl->data); /* the arena cleanup drops the other reference */
    http_respond_json(tl->req, 200, json_pack("{s:o}", "data", tl->data));
}

void job_ext_types_list(struct request *req, json_t *data)
{
    struct types_list *tl = arena_calloc(req->arena, sizeof *tl);
    tl->req = req;
    tl->data = data;
    arena_cleanup(req->arena, decref_cleanup, data);
    db_query(req->ctx->db, auth_ctx(req)->schema, &types_list_stmt, 0, NULL, types_listed, tl);
}

/* ---- PUT/DELETE /v1/admin/job-types/{type} -------------------------------------------- */

static const struct db_stmt type_put_stmt = {
    "job_ext_type_put",
    "INSERT INTO public.job_types AS t (type, cost, description, timeout_s, max_attempts,"
    " payload_schema) VALUES ($1, $2::bigint, $3, $4::int, $5::int, $6::jsonb)"
    " ON CONFLICT (type) DO UPDATE SET cost = EXCLUDED.cost, description = EXCLUDED.description,"
    " timeout_s = EXCLUDED.timeout_s, max_attempts = EXCLUDED.max_attempts,"
    " payload_schema = EXCLUDED.payload_schema, updated_at = now()"
    " RETURNING " TYPE_JSON "::text",
};

static const struct db_stmt type_delete_stmt = {
    "job_ext_type_delete",
    "DELETE FROM public.job_types WHERE type = $1 RETURNING 1",
};

/* Names of built-in types, also those only enabled in tests: an external
 * type of one of these names would take its jobs from the in-process
 * workers on servers where it is enabled. */
static bool builtin_name(const char *s)
{
    return job_type_find(s) || !strcmp(s, "sleep") || !strcmp(s, "fail") ||
           !strcmp(s, "records.export") || !strcmp(s, "credits.report") ||
           !strcmp(s, "webhook.deliver");
}

static void type_put_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "job type declare"))
        return;
    db_respond_json(req, r, 0, "No such job type.");
}

void job_ext_type_put(struct request *req)
{
    const char *type = http_param(req, "type");
    if (!type || !job_ext_name_valid(type) || builtin_name(type)) {
        json_t *errors = NULL;
        problem_add_error(&errors, "type",
                          builtin_name(type ? type : "") ? "is the name of a built-in type"
                                                         : "must match ^[a-z][a-z0-9_.-]{0,63}$");
        problem_respond_errors(req, "The job type is not valid.", errors);
        return;
    }
    json_t *body = body_object(req, false);
    if (!body)
        return;
    static const char *const fields[] = {"cost",         "description",    "timeout_s",
                                         "max_attempts", "payload_schema", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    json_int_t cost = 0, timeout_s = 300, max_attempts = 3;
    body_int(body, "cost", true, 0, 1000000000, NULL, &cost, &errors);
    body_int(body, "timeout_s", false, 1, 86400, NULL, &timeout_s, &errors);
    body_int(body, "max_attempts", false, 1, 25, NULL, &max_attempts, &errors);
    const char *description = "";
    json_t *d = json_object_get(body, "description");
    if (d && !json_is_null(d)) {
        if (!json_is_string(d) || json_string_length(d) > 500)
            problem_add_error(&errors, "description", "must be a string of at most 500 bytes");
        else
            description = json_string_value(d);
    }
    const char *schema_text = NULL;
    json_t *s = json_object_get(body, "payload_schema");
    if (s && !json_is_null(s)) {
        json_t *top = json_object_get(s, "type");
        if (job_schema_check(s, "payload_schema", &errors, 0) == 0 && top &&
            strcmp(json_string_value(top), "object"))
            problem_add_error(&errors, "payload_schema.type", "must be object (payloads are)");
        if (!errors) {
            char *t = json_dumps(s, JSON_COMPACT);
            schema_text = arena_strdup(req->arena, t);
            free(t);
        }
    }
    if (errors) {
        problem_respond_errors(req, "The job type is not valid.", errors);
        return;
    }
    const char **v = arena_calloc(req->arena, 6 * sizeof *v);
    v[0] = type;
    v[1] = arena_printf(req->arena, "%lld", (long long)cost);
    v[2] = arena_strdup(req->arena, description);
    v[3] = arena_printf(req->arena, "%lld", (long long)timeout_s);
    v[4] = arena_printf(req->arena, "%lld", (long long)max_attempts);
    v[5] = schema_text;
    db_query(req->ctx->db, NULL, &type_put_stmt, 6, v, type_put_done, req);
}

static void type_deleted(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "job type delete"))
        return;
    if (PQntuples(r->res) != 1) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such declared job type.");
        return;
    }
    http_respond_empty(req, 204);
}

void job_ext_type_delete(struct request *req)
{
    const char *type = http_param(req, "type");
    if (!type || !job_ext_name_valid(type)) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such declared job type.");
        return;
    }
    const char **v = arena_calloc(req->arena, 1 * sizeof *v);
    v[0] = type;
    db_query(req->ctx->db, NULL, &type_delete_stmt, 1, v, type_deleted, req);
}

/* ---- POST /v1/jobs/{id}/retry ----------------------------------------------------------- */

/* With its audit event (the retry charges the cost again); $3/$4 actor, $5
 * IP, $6 request id. */
static const struct db_stmt retry_stmt = {
    "job_retry",
    "WITH r AS (SELECT * FROM public.tenantd_job_retry($1::uuid, $2::uuid)),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $1::uuid, $3, $4, 'job.retried', 'job', $2, $5,"
    " $6, jsonb_build_object('type', r.o_body::json->>'type', 'cost',"
    " (r.o_body::json->>'cost')::bigint) FROM r WHERE r.o_outcome = 'queued')"
    " SELECT r.o_outcome, r.o_body FROM r",
};

static void retried(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status == DB_ERROR && r->sqlstate &&
        !strcmp(r->sqlstate, CREDIT_SQLSTATE_INSUFFICIENT)) {
        problem_respond(req, PROBLEM_PAYMENT_REQUIRED,
                        "The org's balance is short of this job's cost; it stays failed.");
        return;
    }
    if (db_failed(req, r, "job retry"))
        return;
    const char *outcome = db_result_text(r, 0, 0), *body = db_result_text(r, 0, 1);
    if (outcome && !strcmp(outcome, "queued") && body) {
        http_respond(req, 202, "application/json", body, strlen(body));
    } else if (outcome && !strcmp(outcome, "conflict")) {
        problem_respond(req, PROBLEM_CONFLICT, "Only a failed job can be retried.");
    } else {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job.");
    }
}

void job_ext_retry(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such job (job ids are UUIDs).");
        return;
    }
    const char **v = arena_calloc(req->arena, 6 * sizeof *v);
    v[0] = a->org_id;
    v[1] = id;
    v[2] = auth_actor_type(a);
    v[3] = auth_actor_id(a);
    v[4] = req->client_ip;
    v[5] = req->request_id;
    db_query(req->ctx->db, a->schema, &retry_stmt, 6, v, retried, req);
}
