/*
 * GET /v1/org/export (admin): the org as application/x-ndjson, streamed.
 *
 * Line format (one JSON object per line, each with "kind"), in this order:
 *   {"kind":"tenantd-export","version":1,"exported_at":...}
 *   {"kind":"org", ...the Org resource}
 *   {"kind":"credits","balance":...,"updated_at":...}
 *   {"kind":"user", ...the User resource}            (no password hash)
 *   {"kind":"api_key", id,name,role,prefix,created_at,last_used_at,revoked_at}
 *                                                     (never the key or its hash)
 *   {"kind":"record", ...the Record resource}
 *   {"kind":"credit_transaction", ...the Transaction resource}
 *   {"kind":"job", ...the Job resource}
 * Refresh tokens are never exported.
 *
 * GET /v1/admin/orgs/{slug}/export (operator) writes the same lines, and
 * user lines carry `password_hash` as stored: the one secret the operator's
 * import (org/import.c) needs so that users keep their passwords. An org
 * admin's export never holds it.
 *
 * Never the whole org in memory: each section is read in pages by keyset
 * (an index order per table), a page bounded by rows and by bytes, and the
 * next page is asked for only once the previous one is written to the
 * client (http_stream_write), so the server holds one page per export
 * however large the org. The pages are separate statements, so an export
 * taken while the org changes is not a point-in-time snapshot; a row is
 * exported at most once (keysets only move forward).
 */
#include "org/export.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "auth/auth.h"
#include "core/arena.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "org/org.h"
#include "db/db.h"
#include "app/dbhttp.h"

static void org_export(struct request *req);
static void admin_org_export(struct request *req);

static const struct route export_routes[] = {
    {HTTP_GET, "/v1/org/export", AUTH_ADMIN, org_export, "exportOrg"},
    {HTTP_GET, "/v1/admin/orgs/{slug}/export", AUTH_OPERATOR, admin_org_export, "adminExportOrg"},
    {0},
};

const struct module org_export_module = {
    .name = "org-export",
    .routes = export_routes,
};

/* clang-format off */

/* One page of a section: rows after the keyset position $2, in `key`
 * order, at most $3 rows and, past the first row, EXPORT_PAGE_BYTES of
 * text. Answers (the page's lines, each ending in a newline, or NULL when
 * the section is done; the last row's position; the rows kept). $3 adapts
 * to the rows' size (next_limit), so that PostgreSQL renders about one
 * page of rows per statement, not 1000 large ones to keep a few. */
#define EXPORT_PAGE_BYTES "1048576"
#define SQL_PAGE(key, keytext, line, from_where)                                                   \
    "WITH page AS (SELECT " key " AS k, " keytext " AS kt, (" line ")::text AS j " from_where     \
    " ORDER BY " key " LIMIT $3::int), "                                                              \
    "n AS (SELECT p.*, row_number() OVER w AS i, sum(octet_length(p.j)) OVER w AS b FROM page p "  \
    "WINDOW w AS (ORDER BY p.k)), "                                                                \
    "kept AS (SELECT * FROM n WHERE i = 1 OR b <= " EXPORT_PAGE_BYTES ") "                         \
    "SELECT string_agg(j || E'\\n', '' ORDER BY i), (SELECT kt FROM kept ORDER BY i DESC LIMIT 1), " \
    "count(*) FROM kept"

#define SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* The head lines: version, org, credits; then the org's id and schema.
 * By $1, the caller's org id; for the operator, by $1 the slug of a live org. */
#define SQL_HEAD(where)                                                                            \
    "SELECT json_build_object('kind', 'tenantd-export', 'version', 1, 'exported_at', "            \
    SQL_TS("now()") ")::text || E'\\n' || "                                                       \
    "(jsonb_build_object('kind', 'org') || public.tenantd_org_json(o)::jsonb)::text || E'\\n' || " \
    "json_build_object('kind', 'credits', 'balance', coalesce(a.balance, 0), 'updated_at', "      \
    SQL_TS("coalesce(a.updated_at, o.created_at)") ")::text || E'\\n', o.id, o.schema_name "      \
    "FROM public.orgs o LEFT JOIN public.credit_accounts a ON a.org_id = o.id WHERE " where

static const struct db_stmt q_head = {"export_head", SQL_HEAD("o.id = $1::uuid")};
static const struct db_stmt q_head_slug = {
    "export_head_slug", SQL_HEAD("lower(o.slug) = $1 AND o.status <> 'deleted'")};

/* $1 org id, $2 position. Users by (org_id, email): the unique index. */
static const struct db_stmt q_users = {
    "export_users",
    SQL_PAGE("u.email", "u.email",
             "jsonb_build_object('kind', 'user') || public.tenantd_user_json(u)::jsonb",
             "FROM public.users u WHERE u.org_id = $1::uuid AND u.email > $2")};

/* The operator's user lines: the same, plus the stored password hash. */
static const struct db_stmt q_users_hashes = {
    "export_users_hashes",
    SQL_PAGE("u.email", "u.email",
             "jsonb_build_object('kind', 'user') || public.tenantd_user_json(u)::jsonb || "
             "jsonb_build_object('password_hash', u.password_hash)",
             "FROM public.users u WHERE u.org_id = $1::uuid AND u.email > $2")};

/* API keys by (created_at, id): api_keys_org_idx; position "<created_at as text>|<id>"
 * (text round-trips a timestamptz exactly; every pool connection has the
 * same TimeZone). */
static const struct db_stmt q_keys = {
    "export_keys",
    SQL_PAGE("(k.created_at, k.id)",
             "k.created_at::text || '|' || k.id",
             "json_build_object('kind', 'api_key', 'id', k.id, 'name', k.name, 'role', k.role, "
             "'prefix', k.prefix, 'created_at', " SQL_TS("k.created_at") ", 'last_used_at', "
             SQL_TS("k.last_used_at") ", 'revoked_at', " SQL_TS("k.revoked_at") ")",
             "FROM public.api_keys k WHERE k.org_id = $1::uuid AND (k.created_at, k.id) > "
             "(split_part($2, '|', 1)::timestamptz, "
             "split_part($2, '|', 2)::uuid)")};

/* Records by id (the primary key), in the org's schema. $1 unused (the
 * schema names the org), kept so every page statement takes ($1, $2, $3). */
static const struct db_stmt q_records = {
    "export_records",
    SQL_PAGE("r.id", "r.id::text",
             "json_build_object('kind', 'record', 'id', r.id, 'collection', r.collection, "
             "'data', r.data, 'version', r.version, 'created_at', " SQL_TS("r.created_at") ", "
             "'updated_at', " SQL_TS("r.updated_at") ")",
             "FROM {schema}.records r WHERE $1::uuid IS NOT NULL AND r.id > $2::uuid")};

/* The ledger and jobs by seq: their (org_id, seq) indexes. */
static const struct db_stmt q_ledger = {
    "export_ledger",
    SQL_PAGE("t.seq", "t.seq::text",
             "jsonb_build_object('kind', 'credit_transaction') || "
             "public.tenantd_credit_tx_json(t)::jsonb",
             "FROM public.credit_transactions t WHERE t.org_id = $1::uuid AND t.seq > $2::bigint")};

static const struct db_stmt q_jobs = {
    "export_jobs",
    SQL_PAGE("j.seq", "j.seq::text",
             "jsonb_build_object('kind', 'job') || public.tenantd_job_json(j)::jsonb",
             "FROM public.jobs j WHERE j.org_id = $1::uuid AND j.seq > $2::bigint")};

/* clang-format on */

/* The sections after the head, in order, with each keyset's start. */
static const struct section {
    const struct db_stmt *stmt;
    bool tenant; /* runs in the org's schema */
    const char *start;
} sections[] = {
    {&q_users, false, ""},
    {&q_keys, false, "-infinity|00000000-0000-0000-0000-000000000000"},
    {&q_records, true, "00000000-0000-0000-0000-000000000000"},
    {&q_ledger, false, "0"},
    {&q_jobs, false, "0"},
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

/* An export in flight. States: HEAD (the first query; nothing sent yet, so
 * a failure is an ordinary problem answer), then section by section: a
 * query, then the write of its page, until a section answers no page. */
struct export_op {
    struct request *req;
    const char *schema;
    char org_id[37];
    size_t section; /* index into sections[]; NSECTIONS when done */
    char *page;     /* the page being written (malloc'd), or NULL */
    char *after;    /* the current section's position (malloc'd) */
    const char *values[3];
    int limit; /* rows asked for per page (adaptive) */
    char limit_text[12];
    bool hashes;  /* the operator's export: user lines carry password_hash */
    bool started; /* the head of the answer is out */
    unsigned long long bytes;
};

static void export_free(void *p)
{
    struct export_op *op = p;
    free(op->page);
    free(op->after);
}

static void next_page(struct export_op *op);

static void fail(struct export_op *op, const struct db_result *r)
{
    log_msg(LOG_ERROR, "org export of %s failed in section %zu: %s (%s)", op->org_id, op->section,
            r && r->message ? r->message : "database unavailable",
            r && r->sqlstate ? r->sqlstate : "-");
    if (op->started) {
        http_stream_end(op->req, false); /* the client sees a cut answer */
        return;
    }
    if (r)
        db_respond_failure(op->req, r, "org export");
    else
        db_respond_unavailable(op->req);
}

static void written(struct request *req, int status, void *ud)
{
    (void)req;
    struct export_op *op = ud;
    free(op->page);
    op->page = NULL;
    if (status < 0) {
        log_msg(LOG_INFO, "org export of %s: the client left after %llu bytes", op->org_id,
                op->bytes);
        http_stream_end(op->req, false);
        return;
    }
    next_page(op);
}

/* Writes the text of a result cell (copied: the result dies with the
 * callback), then continues with `written`. */
static void send_text(struct export_op *op, const char *text)
{
    size_t len = strlen(text);
    op->page = malloc(len ? len : 1);
    if (!op->page) {
        http_stream_end(op->req, false);
        return;
    }
    memcpy(op->page, text, len);
    op->bytes += len;
    http_stream_write(op->req, op->page, len, written, op);
}

#define PAGE_ROWS_MAX 1000
#define PAGE_ROWS_FIRST 100

/* Rows to ask for next: about a page's bytes at the last page's row size. */
static int next_limit(size_t bytes, long rows)
{
    size_t avg = rows > 0 ? bytes / (size_t)rows : 1;
    size_t n = 1048576 / (avg ? avg : 1);
    return n < 1 ? 1 : n > PAGE_ROWS_MAX ? PAGE_ROWS_MAX : (int)n;
}

static void page_done(struct db_result *r, void *ud)
{
    struct export_op *op = ud;
    if (r->status != DB_OK) {
        fail(op, r);
        return;
    }
    const char *lines = db_result_text(r, 0, 0), *pos = db_result_text(r, 0, 1);
    if (!lines || !pos) { /* the section is done */
        op->section++;
        op->limit = PAGE_ROWS_FIRST;
        free(op->after);
        op->after = NULL;
        next_page(op);
        return;
    }
    const char *rows = db_result_text(r, 0, 2);
    op->limit = next_limit(strlen(lines), rows ? strtol(rows, NULL, 10) : 1);
    char *after = strdup(pos);
    if (!after) {
        http_stream_end(op->req, false);
        return;
    }
    free(op->after);
    op->after = after;
    send_text(op, lines);
}

static void next_page(struct export_op *op)
{
    assert(op->started && !op->page);
    if (op->section >= NSECTIONS) {
        log_msg(LOG_INFO, "org export of %s: %llu bytes", op->org_id, op->bytes);
        http_stream_end(op->req, true);
        return;
    }
    const struct section *s = &sections[op->section];
    const struct db_stmt *stmt = s->stmt == &q_users && op->hashes ? &q_users_hashes : s->stmt;
    struct db_pool *pool = db_pool_of(op->req);
    if (!pool) {
        fail(op, NULL);
        return;
    }
    op->values[0] = op->org_id;
    op->values[1] = op->after ? op->after : s->start;
    snprintf(op->limit_text, sizeof op->limit_text, "%d", op->limit);
    op->values[2] = op->limit_text;
    db_query(pool, s->tenant ? op->schema : NULL, stmt, 3, op->values, page_done, op);
}

static void head_done(struct db_result *r, void *ud)
{
    struct export_op *op = ud;
    struct request *req = op->req;
    if (r->status != DB_OK) {
        fail(op, r);
        return;
    }
    const char *head = db_result_text(r, 0, 0);
    if (!head) {
        if (op->hashes)
            problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        else
            problem_respond(req, PROBLEM_UNAUTHORIZED,
                            "The credential's organization no longer exists.");
        return;
    }
    if (op->hashes) { /* the slug named it: take its id and schema */
        const char *id = db_result_text(r, 0, 1), *schema = db_result_text(r, 0, 2);
        assert(id && schema && strlen(id) == sizeof op->org_id - 1);
        memcpy(op->org_id, id, sizeof op->org_id);
        op->schema = arena_strdup(req->arena, schema);
    }
    http_set_header(req, "Content-Disposition", "attachment; filename=\"org-export.ndjson\"");
    http_stream_begin(req, 200, "application/x-ndjson");
    op->started = true;
    op->limit = PAGE_ROWS_FIRST;
    if (req->head) {
        http_stream_end(req, true);
        return;
    }
    send_text(op, head);
}

static void org_export(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    struct export_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->schema = a->schema;
    memcpy(op->org_id, a->org_id, sizeof op->org_id);
    arena_cleanup(req->arena, export_free, op);
    op->values[0] = op->org_id;
    db_query(pool, NULL, &q_head, 1, op->values, head_done, op);
}

/* Slugs are stored lower-case; a malformed one names no org. */
static void admin_org_export(struct request *req)
{
    const char *raw = http_param(req, "slug");
    char *slug = raw ? arena_strdup(req->arena, raw) : NULL;
    for (char *p = slug; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (!slug || !org_slug_valid(slug)) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    struct export_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->hashes = true;
    arena_cleanup(req->arena, export_free, op);
    op->values[0] = slug;
    db_query(pool, NULL, &q_head_slug, 1, op->values, head_done, op);
}
