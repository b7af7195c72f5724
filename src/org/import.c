/*
 * POST /v1/admin/orgs/import (operator): re-creates an org from an export
 * (GET /v1/admin/orgs/{slug}/export, org/export.c) in this database, ids
 * kept, all or nothing.
 *
 * Two passes. Here, before anything is written, every line is parsed (one
 * at a time, so the server holds the body and one line's JSON) and checked
 * for its kind and fields, as strictly as the routes that made the rows
 * check them: a line that is not a JSON object is 400, a wrong field 422
 * naming the line (`line 7.password_hash`). Then one statement,
 * public.tenantd_import_org (control migration 0013), checks what needs the
 * database (slug taken, ids present, ids repeating, the ledger's sums) and
 * writes the org, schema, users, keys, records, ledger and jobs, or nothing.
 *
 * The body is bounded by TENANTD_MAX_BATCH_BODY_BYTES when it comes with the
 * operator token, else by the normal limit (server.c's body_limit), and the
 * statement by TENANTD_DB_STATEMENT_TIMEOUT_MS.
 */
#include "org/import.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>
#include <uv.h>

#include "app/dbhttp.h"
#include "auth/hashimport.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/rfc3339.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "db/result.h"
#include "idem/idem.h"
#include "org/export.h"
#include "org/org.h"
#include "record/record.h"

static void admin_org_import(struct request *req);

static const struct route import_routes[] = {
    {HTTP_POST, "/v1/admin/orgs/import", AUTH_OPERATOR, admin_org_import, "adminImportOrg"},
    {0},
};

const struct module org_import_module = {
    .name = "org-import",
    .routes = import_routes,
};

static const struct db_stmt q_import = {
    "org_import",
    "SELECT o_outcome, o_status, o_headers, o_body, o_line, o_detail"
    " FROM public.tenantd_import_org($1, $2::text[], $3::int[], $4::text[], $5::text[],"
    " $6, $7, $8, $9)",
};

/* A 422's list stays readable; the first errors say what is wrong. */
#define MAX_ERRORS 20
#define TEXT_MAX_CHARS 1000 /* descriptions, job errors and the like */

/* ---- field checks --------------------------------------------------------- */

enum ftype {
    F_UUID,
    F_TEXT,   /* a string */
    F_INT,    /* an integer */
    F_TS,     /* RFC 3339 date-time */
    F_OBJECT, /* a JSON object */
    F_ARRAY,
    F_BOOL,
    F_ANY,
};

struct field {
    const char *name;
    enum ftype type;
    bool nullable; /* null, or left out */
};

#define FIELDS_END {NULL, F_ANY, false}

static const struct field head_fields[] = {
    {"kind", F_TEXT, false}, {"version", F_INT, false}, {"exported_at", F_TS, true}, FIELDS_END};
static const struct field org_fields[] = {
    {"kind", F_TEXT, false},       {"id", F_UUID, false},         {"name", F_TEXT, false},
    {"slug", F_TEXT, false},       {"status", F_TEXT, false},     {"join_policy", F_TEXT, false},
    {"domains", F_ARRAY, false},   {"created_at", F_TS, false},   {"updated_at", F_TS, false},
    FIELDS_END};
static const struct field credits_fields[] = {
    {"kind", F_TEXT, false}, {"balance", F_INT, false}, {"updated_at", F_TS, false}, FIELDS_END};
static const struct field user_fields[] = {
    {"kind", F_TEXT, false},        {"id", F_UUID, false},
    {"email", F_TEXT, false},       {"name", F_TEXT, true},
    {"role", F_TEXT, false},        {"avatar_url", F_TEXT, true},
    {"email_verified_at", F_TS, true}, {"identities", F_ARRAY, true},
    {"created_at", F_TS, false},    {"updated_at", F_TS, false},
    {"password_hash", F_TEXT, false}, FIELDS_END};
static const struct field key_fields[] = {
    {"kind", F_TEXT, false},       {"id", F_UUID, false},        {"name", F_TEXT, false},
    {"role", F_TEXT, false},       {"prefix", F_TEXT, false},    {"created_at", F_TS, false},
    {"last_used_at", F_TS, true},  {"revoked_at", F_TS, true},   FIELDS_END};
static const struct field record_fields[] = {
    {"kind", F_TEXT, false},     {"id", F_UUID, false},         {"collection", F_TEXT, false},
    {"data", F_OBJECT, false},   {"version", F_INT, false},     {"created_at", F_TS, false},
    {"updated_at", F_TS, false}, FIELDS_END};
static const struct field tx_fields[] = {
    {"kind", F_TEXT, false},          {"id", F_UUID, false},       {"amount", F_INT, false},
    {"type", F_TEXT, false},          {"balance_after", F_INT, false}, {"job_id", F_UUID, true},
    {"description", F_TEXT, true},    {"reference", F_TEXT, true}, {"created_at", F_TS, false},
    FIELDS_END};
static const struct field job_fields[] = {
    {"kind", F_TEXT, false},         {"id", F_UUID, false},          {"type", F_TEXT, false},
    {"status", F_TEXT, false},       {"payload", F_OBJECT, false},   {"result", F_ANY, true},
    {"error", F_TEXT, true},         {"priority", F_INT, false},     {"attempts", F_INT, false},
    {"max_attempts", F_INT, false},  {"cost", F_INT, false},         {"progress", F_INT, true},
    {"cancel_requested", F_BOOL, true}, {"run_at", F_TS, false},     {"created_at", F_TS, false},
    {"started_at", F_TS, true},      {"finished_at", F_TS, true},    FIELDS_END};

/* What a pass over the document learns, and its errors. */
struct check {
    const char *body;
    size_t len;
    int bad;          /* 400: a line that is no JSON object, or a body of none */
    char detail[160]; /* the 400's detail */
    json_t *errors; /* NULL while none */
    size_t nerrors;
    size_t line;    /* 1-based, of the line being checked */
    char org_id[37];
    size_t users, keys, records, txs, jobs;
};

static void add_error(struct check *c, const char *field, const char *message)
{
    if (c->nerrors++ >= MAX_ERRORS)
        return;
    char name[96];
    if (field)
        snprintf(name, sizeof name, "line %zu.%s", c->line, field);
    else
        snprintf(name, sizeof name, "line %zu", c->line);
    problem_add_error(&c->errors, name, message);
}

static bool uuid_text(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char ch = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-')
                return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                     (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return true;
}

static bool one_of(const char *s, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcmp(s, *allowed) == 0)
            return true;
    return false;
}

static int depth(const json_t *v)
{
    int d = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            int e = depth(x);
            if (e > d)
                d = e;
        }
        return d + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int e = depth(x);
            if (e > d)
                d = e;
        }
        return d + 1;
    }
    return 0;
}

/* Display text: at most `max` characters, no control characters. */
static bool text_ok(const char *s, size_t max, bool allow_empty)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            n++;
        if (*p < 0x20 || *p == 0x7F || (*p == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F))
            return false;
    }
    return (allow_empty || n >= 1) && n <= max;
}

/* Checks obj against fields (types, nulls, unknown names); true when the
 * kind's own rules may run (every known field has its type). */
static bool check_fields(struct check *c, json_t *obj, const struct field *fields)
{
    bool ok = true;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        const struct field *f = fields;
        while (f->name && strcmp(f->name, k) != 0)
            f++;
        if (!f->name) {
            char name[80];
            snprintf(name, sizeof name, "%.64s", k);
            add_error(c, name, "is not a field of this kind of line");
        }
    }
    for (const struct field *f = fields; f->name; f++) {
        v = json_object_get(obj, f->name);
        if (!v || json_is_null(v)) {
            if (!f->nullable) {
                add_error(c, f->name, "is required");
                ok = false;
            }
            continue;
        }
        const char *s = json_string_value(v);
        const char *why = NULL;
        switch (f->type) {
        case F_UUID:
            why = s && uuid_text(s) ? NULL : "must be a UUID";
            break;
        case F_TEXT:
            why = s && strlen(s) == json_string_length(v) ? NULL : "must be a string";
            break;
        case F_INT:
            why = json_is_integer(v) ? NULL : "must be an integer";
            break;
        case F_TS:
            why = s && rfc3339_valid(s) ? NULL : "must be an RFC 3339 date-time";
            break;
        case F_OBJECT:
            why = json_is_object(v) ? NULL : "must be an object";
            break;
        case F_ARRAY:
            why = json_is_array(v) ? NULL : "must be an array";
            break;
        case F_BOOL:
            why = json_is_boolean(v) ? NULL : "must be true or false";
            break;
        case F_ANY:
            break;
        }
        if (why) {
            add_error(c, f->name, why);
            ok = false;
        }
    }
    return ok;
}

static const char *str(json_t *obj, const char *name)
{
    return json_string_value(json_object_get(obj, name));
}

static json_int_t num(json_t *obj, const char *name)
{
    return json_integer_value(json_object_get(obj, name));
}

static void check_org(struct check *c, json_t *o)
{
    const char *why = body_name_problem(str(o, "name"));
    if (why)
        add_error(c, "name", why);
    /* Slugs are case-insensitive and kept lower-case (SQL lowers it too). */
    char slug[64];
    snprintf(slug, sizeof slug, "%s", strlen(str(o, "slug")) < sizeof slug ? str(o, "slug") : "");
    for (char *p = slug; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (!org_slug_valid(slug))
        add_error(c, "slug", "must be 2..50 characters of a-z, 0-9 and '-'");
    static const char *const statuses[] = {"active", "suspended", NULL};
    if (!one_of(str(o, "status"), statuses))
        add_error(c, "status", "must be \"active\" or \"suspended\"");
    static const char *const policies[] = {"invite", "domain", NULL};
    if (!one_of(str(o, "join_policy"), policies))
        add_error(c, "join_policy", "must be \"invite\" or \"domain\"");
    json_t *d = json_object_get(o, "domains"), *x;
    size_t i;
    bool ok = json_array_size(d) <= 50;
    json_array_foreach(d, i, x) ok = ok && json_is_string(x) && org_domain_valid(json_string_value(x));
    if (!ok)
        add_error(c, "domains", "must hold at most 50 lower-case domain names like example.com");
    memcpy(c->org_id, str(o, "id"), sizeof c->org_id);
}

static void check_user(struct check *c, json_t *u)
{
    const char *email = str(u, "email");
    bool lower = true;
    for (const char *p = email; *p; p++)
        lower = lower && !(*p >= 'A' && *p <= 'Z');
    if (!body_email_valid(email) || !lower)
        add_error(c, "email", "must be a valid lower-case email address");
    const char *name = str(u, "name");
    const char *why = name ? body_name_problem(name) : NULL;
    if (why)
        add_error(c, "name", why);
    static const char *const roles[] = {"admin", "member", NULL};
    if (!one_of(str(u, "role"), roles))
        add_error(c, "role", "must be \"admin\" or \"member\"");
    const char *avatar = str(u, "avatar_url");
    if (avatar && !text_ok(avatar, 2048, false))
        add_error(c, "avatar_url", "must be at most 2048 characters without control characters");
    if (hash_kind_of(str(u, "password_hash")) == HASH_UNKNOWN)
        add_error(c, "password_hash",
                  "is not an argon2id, bcrypt or Django PBKDF2-SHA256 hash tenantd can verify");
    json_t *ids = json_object_get(u, "identities"), *x;
    size_t i;
    bool ok = json_array_size(ids) <= 100;
    json_array_foreach(ids, i, x)
    {
        const char *p = str(x, "provider"), *s = str(x, "subject");
        ok = ok && json_is_object(x) && json_object_size(x) == 2 && p && s &&
             text_ok(p, 64, false) && text_ok(s, 255, false);
    }
    if (!ok)
        add_error(c, "identities", "must be a list of {provider, subject} strings");
    c->users++;
}

static void check_key(struct check *c, json_t *k)
{
    const char *name_why = body_name_problem(str(k, "name"));
    if (name_why)
        add_error(c, "name", name_why);
    static const char *const roles[] = {"admin", "member", "worker", NULL};
    if (!one_of(str(k, "role"), roles))
        add_error(c, "role", "must be \"admin\", \"member\" or \"worker\"");
    const char *p = str(k, "prefix");
    bool ok = strlen(p) >= 4 && strlen(p) <= 64;
    for (; ok && *p; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '-' || *p == '_';
    if (!ok)
        add_error(c, "prefix", "must be 4..64 characters of A-Z, a-z, 0-9, '-' and '_'");
    c->keys++;
}

static void check_record(struct check *c, json_t *r)
{
    if (!record_collection_valid(str(r, "collection")))
        add_error(c, "collection", "must be " RECORD_COLLECTION_RULE);
    if (depth(json_object_get(r, "data")) > RECORD_MAX_DEPTH)
        add_error(c, "data", "is nested too deeply");
    if (num(r, "version") < 1)
        add_error(c, "version", "must be at least 1");
    c->records++;
}

#define AMOUNT_MAX INT64_C(1000000000000000000) /* far inside bigint: sums cannot overflow */

static void check_tx(struct check *c, json_t *t)
{
    const char *type = str(t, "type");
    json_int_t amount = num(t, "amount"), after = num(t, "balance_after");
    static const char *const types[] = {"grant", "spend", "deduction", "refund", "adjustment", NULL};
    if (!one_of(type, types)) {
        add_error(c, "type", "must be grant, spend, deduction, refund or adjustment");
    } else {
        bool up = strcmp(type, "grant") == 0 || strcmp(type, "refund") == 0;
        bool down = strcmp(type, "spend") == 0 || strcmp(type, "deduction") == 0;
        if (amount < -AMOUNT_MAX || amount > AMOUNT_MAX || (up && amount <= 0) ||
            (down && amount >= 0))
            add_error(c, "amount", "must be an integer of the sign its type has (grants and "
                                   "refunds add, spends and deductions take away)");
    }
    if (after < 0 || after > AMOUNT_MAX)
        add_error(c, "balance_after", "must not be negative");
    const char *d = str(t, "description"), *r = str(t, "reference");
    if (d && !text_ok(d, TEXT_MAX_CHARS, true))
        add_error(c, "description", "must be at most 1000 characters");
    if (r && !text_ok(r, TEXT_MAX_CHARS, true))
        add_error(c, "reference", "must be at most 1000 characters");
    c->txs++;
}

static void check_job(struct check *c, json_t *j)
{
    if (!text_ok(str(j, "type"), 100, false))
        add_error(c, "type", "must be 1 to 100 characters");
    static const char *const statuses[] = {"queued", "running", "succeeded", "failed", "cancelled",
                                           NULL};
    if (!one_of(str(j, "status"), statuses))
        add_error(c, "status", "must be queued, running, succeeded, failed or cancelled");
    json_int_t pr = num(j, "priority"), at = num(j, "attempts"), max = num(j, "max_attempts");
    if (pr < 0 || pr > 9)
        add_error(c, "priority", "must be 0..9");
    if (at < 0 || at > 1000000)
        add_error(c, "attempts", "must be 0..1000000");
    if (max < 1 || max > 25)
        add_error(c, "max_attempts", "must be 1..25");
    json_int_t cost = num(j, "cost");
    if (cost < 0 || cost > AMOUNT_MAX)
        add_error(c, "cost", "must not be negative");
    json_t *p = json_object_get(j, "progress");
    if (p && !json_is_null(p) && (num(j, "progress") < 0 || num(j, "progress") > 100))
        add_error(c, "progress", "must be 0..100");
    if (depth(json_object_get(j, "payload")) > RECORD_MAX_DEPTH ||
        depth(json_object_get(j, "result")) > RECORD_MAX_DEPTH)
        add_error(c, "payload", "is nested too deeply");
    const char *e = str(j, "error");
    if (e && strlen(e) > 65536)
        add_error(c, "error", "must be at most 65536 bytes");
    c->jobs++;
}

/* One line (len bytes, without its newline). false when it is no JSON
 * object (c->bad set): nothing after it can be read as lines. */
static bool check_line(struct check *c, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *obj = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj || !json_is_object(obj)) {
        json_decref(obj);
        c->bad = 400;
        snprintf(c->detail, sizeof c->detail,
                 "Line %zu is not a JSON object (with unique keys): the body is an export, one "
                 "JSON object per line; nothing was imported.",
                 c->line);
        return false;
    }
    const char *kind = str(obj, "kind");
    /* The head has fixed places: line 1 the version, 2 the org, 3 the credits. */
    static const char *const head[] = {"tenantd-export", "org", "credits"};
    if (c->line <= 3) {
        if (!kind || strcmp(kind, head[c->line - 1]) != 0) {
            char msg[64];
            snprintf(msg, sizeof msg, "must be \"%s\" on line %zu", head[c->line - 1], c->line);
            add_error(c, "kind", msg);
        } else if (c->line == 1) {
            json_t *v = json_object_get(obj, "version");
            if (!json_is_integer(v) || json_integer_value(v) != ORG_EXPORT_VERSION)
                add_error(c, "version",
                          "is not an export version this server reads (it reads version 1)");
            else
                check_fields(c, obj, head_fields);
        } else if (c->line == 2) {
            if (check_fields(c, obj, org_fields))
                check_org(c, obj);
        } else if (check_fields(c, obj, credits_fields) && num(obj, "balance") < 0) {
            add_error(c, "balance", "must not be negative");
        }
    } else if (!kind) {
        add_error(c, "kind", "is required");
    } else if (strcmp(kind, "user") == 0) {
        if (check_fields(c, obj, user_fields))
            check_user(c, obj);
    } else if (strcmp(kind, "api_key") == 0) {
        if (check_fields(c, obj, key_fields))
            check_key(c, obj);
    } else if (strcmp(kind, "record") == 0) {
        if (check_fields(c, obj, record_fields))
            check_record(c, obj);
    } else if (strcmp(kind, "credit_transaction") == 0) {
        if (check_fields(c, obj, tx_fields))
            check_tx(c, obj);
    } else if (strcmp(kind, "job") == 0) {
        if (check_fields(c, obj, job_fields))
            check_job(c, obj);
    } else {
        add_error(c, "kind",
                  "must be user, api_key, record, credit_transaction or job after line 3");
    }
    json_decref(obj);
    return true;
}

/* Checks the whole body (on a thread of libuv's pool: nothing here touches
 * the request or its arena). Leaves c->bad or c->errors set when the import
 * may not go on. */
static void check_document(struct check *c)
{
    if (!c->body || c->len == 0) {
        c->bad = 400;
        snprintf(c->detail, sizeof c->detail,
                 "The body is empty: send an export, one JSON object per line.");
        return;
    }
    if (memchr(c->body, '\0', c->len)) {
        c->bad = 400;
        snprintf(c->detail, sizeof c->detail, "The body holds a NUL byte; nothing was imported.");
        return;
    }
    const char *p = c->body, *end = c->body + c->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t n = (size_t)(stop - p);
        if (n && p[n - 1] == '\r')
            n--;
        c->line++;
        if (n == 0) {
            c->bad = 400;
            snprintf(c->detail, sizeof c->detail, "Line %zu is empty; nothing was imported.",
                     c->line);
            return;
        }
        if (!check_line(c, p, n))
            return;
        /* A wrong version: the rest is in a shape this server does not know. */
        if (c->line == 1 && c->nerrors)
            return;
        p = nl ? nl + 1 : end;
    }
    if (!c->nerrors && c->line < 3) {
        c->line++;
        add_error(c, NULL, "is missing: an export starts with the version, org and credits lines");
    }
}

/* ---- the statement -------------------------------------------------------- */

struct import_op {
    uv_work_t work; /* the check, off the loop */
    struct request *req;
    struct check c;
    uint64_t start_ns;
    const char *values[9];
};

static void import_done(struct db_result *r, void *ud)
{
    struct import_op *op = ud;
    struct request *req = op->req;
    double ms = (double)(uv_hrtime() - op->start_ns) / 1e6;
    if (r->status == DB_ERROR && r->sqlstate && strcmp(r->sqlstate, "23505") == 0) {
        /* A concurrent request took an id or the slug after the checks, or
         * the ledger charges (refunds) one run of a job twice. */
        log_msg(LOG_INFO, "org import of %s: a unique key: %s", op->c.org_id,
                r->message ? r->message : "-");
        problem_respond(req, PROBLEM_CONFLICT,
                        "An id or the slug of the export was taken while it was imported, or its "
                        "ledger charges one run of a job twice; nothing was imported.");
        return;
    }
    if (r->status == DB_ERROR && r->sqlstate &&
        (strncmp(r->sqlstate, "22", 2) == 0 || strncmp(r->sqlstate, "23", 2) == 0)) {
        /* Values this server's checks let through and PostgreSQL refuses
         * (a date like February 30). */
        log_msg(LOG_INFO, "org import of %s refused by the database: %s (%s)", op->c.org_id,
                r->message ? r->message : "-", r->sqlstate);
        problem_respond(req, PROBLEM_VALIDATION_FAILED,
                        "The export holds a value the database refuses (such as a date that "
                        "does not exist); nothing was imported.");
        return;
    }
    if (db_failed(req, r, "org import"))
        return;
    const char *outcome = db_result_text(r, 0, 0);
    if (idem_answer(req, outcome, db_result_text(r, 0, 1), db_result_text(r, 0, 2),
                    db_result_text(r, 0, 3)))
        return;
    const char *line = db_result_text(r, 0, 4), *detail = db_result_text(r, 0, 5);
    const char *body = db_result_text(r, 0, 3);
    if (outcome && strcmp(outcome, "executed") == 0 && body) {
        log_msg(LOG_INFO,
                "org import of %s: done in %.0f ms (%zu users, %zu API keys, %zu records, %zu "
                "ledger rows, %zu jobs)",
                op->c.org_id, ms, op->c.users, op->c.keys, op->c.records, op->c.txs, op->c.jobs);
        http_respond(req, 201, "application/json", body, strlen(body));
        return;
    }
    log_msg(LOG_INFO, "org import of %s refused: %s at line %s", op->c.org_id,
            outcome ? outcome : "-", line ? line : "-");
    const char *what = detail ? detail : "the export does not fit this database";
    if (outcome && strcmp(outcome, "invalid") == 0) {
        json_t *errors = NULL;
        problem_add_error(&errors, arena_printf(req->arena, "line %s", line ? line : "?"), what);
        problem_respond_errors(req, "The export contradicts itself; nothing was imported.", errors);
    } else if (outcome && (strcmp(outcome, "conflict") == 0 || strcmp(outcome, "slug_taken") == 0)) {
        problem_respond(req, strcmp(outcome, "slug_taken") == 0 ? PROBLEM_SLUG_TAKEN
                                                                  : PROBLEM_CONFLICT,
                        arena_printf(req->arena, "Line %s: %s; nothing was imported.",
                                     line ? line : "?", what));
    } else {
        db_respond_failure(
            req, &(struct db_result){.status = DB_ERROR, .message = "unexpected outcome"},
            "org import");
    }
}

static void check_work(uv_work_t *w)
{
    struct import_op *op = (struct import_op *)w;
    check_document(&op->c);
}

/* Back on the loop: answer the check's verdict, or run the statement. */
static void checked(uv_work_t *w, int status)
{
    struct import_op *op = (struct import_op *)w;
    struct request *req = op->req;
    struct check *c = &op->c;
    if (status != 0 || c->bad) {
        json_decref(c->errors);
        c->errors = NULL;
        if (status != 0)
            problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        else
            problem_respond(req, PROBLEM_BAD_REQUEST, arena_strdup(req->arena, c->detail));
        return;
    }
    if (c->nerrors) {
        json_t *errors = c->errors;
        c->errors = NULL;
        problem_respond_errors(
            req,
            arena_printf(req->arena, "The export has %zu problem%s%s; nothing was imported.",
                         c->nerrors, c->nerrors == 1 ? "" : "s",
                         c->nerrors > MAX_ERRORS ? " (the first 20 are listed)" : ""),
            errors);
        return;
    }
    log_msg(LOG_INFO,
            "org import of %s: %zu lines checked in %.0f ms (%zu users, %zu API keys, %zu "
            "records, %zu ledger rows, %zu jobs)",
            c->org_id, c->line, (double)(uv_hrtime() - op->start_ns) / 1e6, c->users, c->keys,
            c->records, c->txs, c->jobs);
    /* The operator's key is scoped to the org the export names. */
    struct idem_key k;
    if (idem_read(req, "", &k) < 0)
        return;
    const char *tenant[4];
    struct db_pool *pool = db_pool_of(req);
    if (!pool || !org_tenant_migrations(tenant)) {
        db_respond_unavailable(req);
        return;
    }
    op->values[0] = req->body;
    for (int i = 0; i < 4; i++)
        op->values[1 + i] = tenant[i];
    op->values[5] = k.key;
    op->values[6] = k.hash;
    op->values[7] = req->client_ip;
    op->values[8] = req->request_id;
    db_query(pool, NULL, &q_import, 9, op->values, import_done, op);
}

/* Parsing a body of many MiB takes a while (about 40 ms per MiB): on the
 * thread pool, so the loop serves other requests meanwhile. The request
 * lives until it is answered, which only `checked` starts. */
static void admin_org_import(struct request *req)
{
    struct import_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->c.body = req->body;
    op->c.len = req->body_len;
    op->start_ns = uv_hrtime();
    if (uv_queue_work(req->ctx->loop, &op->work, check_work, checked) != 0)
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
}
