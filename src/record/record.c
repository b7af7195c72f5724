/*
 * Per-org records: /v1/collections/{collection}/records[/{id}].
 *
 * The hottest path of the server, so every request is exactly one prepared
 * statement, and PostgreSQL renders the response JSON; C only validates
 * input and passes text through. Every statement is a tenant statement
 * ({schema}.records): the pool prepares it per org on the org's affine
 * connection and never relies on search_path (db/db.h).
 *
 * Bodies are not parsed in C: a small scanner checks that the text is one
 * JSON object nested at most RECORD_MAX_DEPTH deep, and PostgreSQL's jsonb
 * input does the full validation (any syntax error is a 22xxx error,
 * answered 400). This keeps every valid JSON number (jansson refuses
 * integers beyond 64 bits), costs no allocation per value, and the text
 * that is stored is the text that was checked.
 *
 * Invalid collection names and ids that are not UUIDs answer 404: such a
 * path can never name a record (the detail says why). Another org's ids are
 * indistinguishable from ids that do not exist, since every statement runs
 * in the caller's own schema.
 *
 * Versions: every record starts at version 1 and each PUT/PATCH adds one;
 * the ETag is the version in quotes. If-Match is checked inside the UPDATE's
 * WHERE, so of concurrent writers holding the same ETag exactly one wins
 * (the others re-check the updated row after its lock and find another
 * version: 412).
 */
#include "record/record.h"

#include <assert.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "auth/auth.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/http.h"
#include "core/page.h"
#include "core/log.h"
#include "core/problem.h"
#include "app/dbhttp.h"
#include "db/db.h"
#include "idem/idem.h"

static void records_create(struct request *req);
static void records_list(struct request *req);
static void records_get(struct request *req);
static void records_replace(struct request *req);
static void records_patch(struct request *req);
static void records_delete(struct request *req);

#define COLL "/v1/collections/{collection}/records"
static const struct route record_routes[] = {
    {HTTP_POST, COLL, AUTH_MEMBER, records_create, "createRecord"},
    {HTTP_GET, COLL, AUTH_MEMBER, records_list, "listRecords"},
    {HTTP_GET, COLL "/{id}", AUTH_MEMBER, records_get, "getRecord"},
    {HTTP_PUT, COLL "/{id}", AUTH_MEMBER, records_replace, "replaceRecord"},
    {HTTP_PATCH, COLL "/{id}", AUTH_MEMBER, records_patch, "patchRecord"},
    {HTTP_DELETE, COLL "/{id}", AUTH_MEMBER, records_delete, "deleteRecord"},
    {0},
};
#undef COLL

const struct module record_module = {
    .name = "records",
    .routes = record_routes,
};

/* ---- SQL ---------------------------------------------------------------- */

/* clang-format off */

/* {schema} is the caller's org schema, put in by the pool (tenant
 * migration 0001 made its records table); jsonb_merge_patch is public's
 * (control migration 0007), so nothing depends on search_path.
 *
 * RFC 3339 UTC times are rendered with to_char inline rather than with
 * public.tenantd_ts: that SQL function is inlined at plan time, which parses
 * its body again on every plan, and a statement is planned once per
 * (connection, org). Same text either way. */
#define SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define SQL_RECORD_JSON(r)                                                                         \
    "json_build_object('id', " r ".id, 'collection', " r ".collection, 'data', " r ".data, "       \
    "'version', " r ".version, 'created_at', " SQL_TS(r ".created_at") ", "                        \
    "'updated_at', " SQL_TS(r ".updated_at") ")"

/* $1 collection, $2 data. Answers (id, version, record). */
static const struct db_stmt q_create = {
    "records_create",
    "INSERT INTO {schema}.records AS r (collection, data) VALUES ($1, $2::jsonb) "
    "RETURNING r.id, r.version, " SQL_RECORD_JSON("r") "::text"};

/* $1 id, $2 collection. Answers (version, record). */
static const struct db_stmt q_get = {
    "records_get",
    "SELECT r.version, " SQL_RECORD_JSON("r") "::text FROM {schema}.records r "
    "WHERE r.id = $1::uuid AND r.collection = $2"};

/*
 * One page, newest first: rows strictly after the cursor ($2 created_at, $3
 * id; the first page passes +infinity and the greatest uuid) in (created_at
 * DESC, id DESC) order, which the listing index serves as a range scan.
 * Rows inserted later sort before any cursor already handed out, so pages
 * never shift under inserts. $4 page size. Answers the page as a JSON array
 * and, when more rows follow, the last row's position "<UTC time to the
 * microsecond>|<id>" (core/page.h's PAGE_KEY_TIME_ID).
 */
/* A page also ends once its records pass LIST_PAGE_BYTES (the first record
 * always counts), so that no answer is unbounded: `kept` is the page. */
#define LIST_PAGE_BYTES "4194304"
#define SQL_LIST_HEAD                                                                              \
    "WITH page AS (SELECT r.id, r.created_at, " SQL_RECORD_JSON("r") " AS j FROM {schema}.records r "       \
    "WHERE r.collection = $1 AND (r.created_at, r.id) < ($2::timestamptz, $3::uuid) "
#define SQL_LIST_TAIL                                                                              \
    " ORDER BY r.created_at DESC, r.id DESC LIMIT $4::int + 1), "                                  \
    "numbered AS (SELECT p.*, row_number() OVER w AS n, sum(octet_length(p.j::text)) OVER w AS b " \
    "FROM page p WINDOW w AS (ORDER BY p.created_at DESC, p.id DESC)), "                           \
    "kept AS (SELECT * FROM numbered WHERE n <= $4::int AND (n = 1 OR b <= " LIST_PAGE_BYTES ")) " \
    "SELECT coalesce((SELECT json_agg(j ORDER BY n) FROM kept), "                                  \
    "'[]'::json)::text, (SELECT " SQL_TS("created_at") " || '|' || id::text "                      \
    "FROM kept WHERE n = (SELECT max(n) FROM kept) AND EXISTS "         \
    "(SELECT 1 FROM numbered WHERE n > (SELECT max(n) FROM kept)))"

static const struct db_stmt q_list = {"records_list", SQL_LIST_HEAD SQL_LIST_TAIL};

/* The filtered list: the filter's JSON and the page size are in the
 * statement's text, so that PostgreSQL plans it knowing both. tenantd's
 * connections plan generically (db/pool.c), unnamed statements too, and a
 * generic plan cannot tell a filter that keeps 1 record in 100,000 (the GIN
 * index, then a sort: 0.3 ms a page) from one that keeps most (the listing
 * index): it took the listing index and read the whole collection (21 ms a
 * page). The filter is checked JSON, inside a dollar quote: '$' can only
 * stand inside its strings and goes as \u0024, so nothing ends the quote
 * early; "{schema}" (only inside strings too) goes as \u007bschema}, so
 * that the pool's qualifying leaves it alone. `limit` is the page size the
 * page reader printed ("%d"). Unnamed: each filter is its own text. */
static const struct db_stmt *list_filter_stmt(struct request *req, const char *filter,
                                              const char *limit)
{
    static const char head[] = SQL_LIST_HEAD "AND r.data @> $f$", tail[] = "$f$::jsonb" SQL_LIST_TAIL,
                      param[] = "$4::int";
    /* Each filter byte takes at most 6; a page size (1..100) is shorter
     * than the parameter it replaces. */
    assert(strlen(limit) < sizeof param - 1);
    size_t n = sizeof head + 6 * strlen(filter) + sizeof tail;
    struct db_stmt *st = arena_alloc(req->arena, sizeof *st);
    char *sql = arena_alloc(req->arena, n), *o = sql;
    memcpy(o, head, sizeof head - 1);
    o += sizeof head - 1;
    for (const char *p = filter; *p; p++) {
        if (*p == '$') {
            memcpy(o, "\\u0024", 6);
            o += 6;
        } else if (strncmp(p, "{schema}", 8) == 0) {
            memcpy(o, "\\u007b", 6);
            o += 6;
        } else {
            *o++ = *p;
        }
    }
    for (const char *t = tail, *at; *t; t = at + sizeof param - 1) {
        at = strstr(t, param);
        size_t k = at ? (size_t)(at - t) : strlen(t);
        memcpy(o, t, k);
        o += k;
        if (!at)
            break;
        o = stpcpy(o, limit);
    }
    *o = '\0';
    assert((size_t)(o - sql) < n);
    st->name = NULL;
    st->sql = sql;
    return st;
}

/*
 * Writes: $1 id, $2 collection, $3 the new data or the merge patch, $4 the
 * If-Match versions as a bigint[] (NULL: no precondition). Answer (version,
 * record) when written; else (NULL, NULL, exists) so that a stale ETag (412)
 * and a missing record (404) are told apart in the same round trip.
 */
#define SQL_WRITE(set)                                                                             \
    "WITH w AS (UPDATE {schema}.records r SET " set ", version = r.version + 1, updated_at = now() "        \
    "WHERE r.id = $1::uuid AND r.collection = $2 AND ($4::bigint[] IS NULL OR "                    \
    "r.version = ANY ($4::bigint[])) RETURNING r.version, " SQL_RECORD_JSON("r") "::text AS j) "   \
    "SELECT w.version, w.j, true FROM w UNION ALL "                                                \
    "SELECT NULL, NULL, EXISTS (SELECT 1 FROM {schema}.records x WHERE x.id = $1::uuid AND "                \
    "x.collection = $2) WHERE NOT EXISTS (SELECT 1 FROM w)"

static const struct db_stmt q_replace = {"records_replace", SQL_WRITE("data = $3::jsonb")};
static const struct db_stmt q_patch = {
    "records_patch", SQL_WRITE("data = public.jsonb_merge_patch(r.data, $3::jsonb)")};

/* $1 id, $2 collection, $3 If-Match versions or NULL. Answers (deleted, exists). */
static const struct db_stmt q_delete = {
    "records_delete",
    "WITH d AS (DELETE FROM {schema}.records r WHERE r.id = $1::uuid AND r.collection = $2 AND "
    "($3::bigint[] IS NULL OR r.version = ANY ($3::bigint[])) RETURNING r.id) "
    "SELECT EXISTS (SELECT 1 FROM d), EXISTS (SELECT 1 FROM {schema}.records x "
    "WHERE x.id = $1::uuid AND x.collection = $2)",
};

/* clang-format on */

/* ---- input checks ------------------------------------------------------- */

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX 100
#define ETAG_MAX_TAGS 16

int record_collection_valid(const char *name)
{
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= RECORD_COLLECTION_MAX;
}

enum shape { SHAPE_OBJECT, SHAPE_NOT_OBJECT, SHAPE_TOO_DEEP, SHAPE_NUL, SHAPE_TRAILING };

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Whether s[0..len) looks like one JSON object nested at most max_depth
 * deep: the first token is '{', brackets outside strings never go deeper
 * than max_depth, and nothing but whitespace follows the bracket that
 * closes the object. Strings are skipped with their escapes, so brackets in
 * them do not count. The rest of the syntax is PostgreSQL's to check.
 */
static enum shape json_object_shape(const char *s, size_t len, int max_depth)
{
    if (memchr(s, '\0', len))
        return SHAPE_NUL; /* libpq takes C strings: text after a NUL would vanish */
    size_t i = 0;
    while (i < len && json_ws(s[i]))
        i++;
    if (i == len || s[i] != '{')
        return SHAPE_NOT_OBJECT;
    int depth = 0;
    for (; i < len; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth)
                return SHAPE_TOO_DEEP;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) {
                for (i++; i < len; i++)
                    if (!json_ws(s[i]))
                        return SHAPE_TRAILING;
                return SHAPE_OBJECT;
            }
        }
    }
    /* Unclosed: PostgreSQL reports it as invalid JSON. */
    return SHAPE_OBJECT;
}

/* Answers 400 unless text is one JSON object of acceptable depth; `what`
 * names it in the detail ("The body", "The filter"). */
static bool check_object(struct request *req, const char *text, size_t len, const char *what)
{
    switch (json_object_shape(text, len, RECORD_MAX_DEPTH)) {
    case SHAPE_OBJECT:
        return true;
    case SHAPE_TOO_DEEP:
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        arena_printf(req->arena,
                                     "%s is nested deeper than %d levels of objects and arrays.",
                                     what, RECORD_MAX_DEPTH));
        return false;
    case SHAPE_NUL:
    case SHAPE_TRAILING:
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        arena_printf(req->arena, "%s is not valid JSON.", what));
        return false;
    case SHAPE_NOT_OBJECT:
    default:
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        arena_printf(req->arena, "%s must be a JSON object.", what));
        return false;
    }
}

const char *record_path_collection(struct request *req)
{
    const char *c = http_param(req, "collection");
    if (!c || !record_collection_valid(c)) {
        problem_respond(req, PROBLEM_NOT_FOUND,
                        "No such collection: collection names are " RECORD_COLLECTION_RULE ".");
        return NULL;
    }
    return c;
}

/* The {id} parameter lower-cased, or NULL after answering 404. */
static const char *path_id(struct request *req)
{
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such record.");
        return NULL;
    }
    char *low = arena_strdup(req->arena, id);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return low;
}

/*
 * Parses an If-Match / If-None-Match value: "*", or a comma-separated list
 * of entity-tags (RFC 9110 section 8.8.3: [W/]"etagc*"). Sets *any for "*";
 * appends to versions (at most ETAG_MAX_TAGS) the tags that can match one
 * of our ETags: decimal versions, weak ones only when `weak_ok` (If-Match
 * compares strongly). False when the value is malformed.
 */
static bool parse_etags(const char *h, bool weak_ok, bool *any, long long *versions, int *n)
{
    *any = false;
    *n = 0;
    const char *p = h;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '*') {
        for (p++; *p == ' ' || *p == '\t'; p++)
            ;
        *any = true;
        return *p == '\0';
    }
    bool seen = false;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            return seen;
        bool weak = false;
        if (p[0] == 'W' && p[1] == '/') {
            weak = true;
            p += 2;
        }
        if (*p != '"')
            return false;
        const char *start = ++p;
        /* etagc = %x21 / %x23-7E / obs-text */
        while (*p && *p != '"') {
            unsigned char c = (unsigned char)*p;
            if (c < 0x21 || c == 0x7F)
                return false;
            p++;
        }
        if (*p != '"')
            return false;
        size_t len = (size_t)(p - start);
        p++;
        seen = true;
        bool digits = len >= 1 && len <= 18;
        for (size_t i = 0; digits && i < len; i++)
            digits = start[i] >= '0' && start[i] <= '9';
        if (digits && (!weak || weak_ok) && *n < ETAG_MAX_TAGS)
            versions[(*n)++] = strtoll(start, NULL, 10);
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != ',' && *p != '\0')
            return false;
    }
}

/*
 * The If-Match header as a bigint[] literal for the write statements: NULL
 * with *ok when absent or "*" (the record need only exist); "{}" when no tag
 * can match (412 if the record exists). *ok false after answering 400.
 */
static const char *if_match_param(struct request *req, bool *ok)
{
    *ok = true;
    const char *h = http_header(req, "If-Match");
    if (!h)
        return NULL;
    bool any;
    long long v[ETAG_MAX_TAGS];
    int n;
    if (!parse_etags(h, false, &any, v, &n)) {
        *ok = false;
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        "If-Match must be \"*\" or a list of entity tags such as \"3\".");
        return NULL;
    }
    if (any)
        return NULL;
    char buf[ETAG_MAX_TAGS * 21 + 3];
    size_t off = 0;
    buf[off++] = '{';
    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%lld", i ? "," : "", v[i]);
    buf[off++] = '}';
    buf[off] = '\0';
    return arena_strdup(req->arena, buf);
}

/* ?limit= and ?cursor= into values v[1..3] of the list statements (v[0] is
 * the collection); with ?filter=, the filter and the limit go into the
 * statement's text (list_filter_stmt). Returns the statement to run, or NULL after
 * answering 422 (limit, cursor) or 400 (filter). */
static const struct db_stmt *list_params(struct request *req, const char **v)
{
    json_t *errors = NULL;
    struct page pg;
    if (!page_read(req, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, PAGE_KEY_TIME_ID, &pg, &errors)) {
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return NULL;
    }
    /* The first page starts after the greatest possible position. */
    v[1] = pg.time ? pg.time : "infinity";
    v[2] = pg.id ? pg.id : "ffffffff-ffff-ffff-ffff-ffffffffffff";
    v[3] = pg.limit_text;
    const char *f = http_query(req, "filter");
    if (!f)
        return &q_list;
    if (!check_object(req, f, strlen(f), "The filter"))
        return NULL;
    return list_filter_stmt(req, f, pg.limit_text);
}

/* ---- database answers --------------------------------------------------- */

/* Answers a failed statement. Data exceptions (class 22: invalid JSON text,
 * bad UTF-8, an impossible cursor date) come only from the client's text, so
 * they are that text's fault: `what` says which ("The body", "The filter",
 * NULL for none). A vanished schema means the org was deleted meanwhile. */
static void respond_failure_claimed(struct request *req, struct idem_claim *claim,
                                    const struct db_result *r, const char *what, const char *op)
{
    if (r->status == DB_UNAVAILABLE) {
        http_set_header(req, "Retry-After", "1");
        idem_problem(req, claim, PROBLEM_UNAVAILABLE,
                     "The database is unavailable; try again shortly.");
        return;
    }
    const char *st = r->sqlstate ? r->sqlstate : "";
    if (what && strncmp(st, "22", 2) == 0) {
        idem_problem(req, claim, PROBLEM_BAD_REQUEST,
                     arena_printf(req->arena, "%s is not valid JSON.", what));
        return;
    }
    if (strcmp(st, "42P01") == 0 || strcmp(st, "3F000") == 0) {
        idem_problem(req, claim, PROBLEM_UNAUTHORIZED,
                     "The credential's organization no longer exists.");
        return;
    }
    log_msg(LOG_ERROR, "%s failed: %s (%s)", op, r->message ? r->message : "?", st[0] ? st : "?");
    idem_problem(req, claim, PROBLEM_INTERNAL, "The request could not be completed.");
}

static void respond_failure(struct request *req, const struct db_result *r, const char *what,
                            const char *op)
{
    respond_failure_claimed(req, NULL, r, what, op);
}

static void internal(struct request *req, struct idem_claim *claim, const char *op)
{
    log_msg(LOG_ERROR, "%s: unexpected result shape", op);
    idem_problem(req, claim, PROBLEM_INTERNAL, "The request could not be completed.");
}

static void set_etag(struct request *req, const char *version)
{
    http_set_header(req, "ETag", arena_printf(req->arena, "\"%s\"", version));
}

static void query(struct request *req, const struct auth_ctx *a, const struct db_stmt *stmt, int n,
                  const char **values, db_cb cb, void *ud)
{
    struct db_pool *pool = req->ctx ? req->ctx->db : NULL;
    if (!pool) {
        http_set_header(req, "Retry-After", "1");
        problem_respond(req, PROBLEM_UNAVAILABLE,
                        "The database is unavailable; try again shortly.");
        return;
    }
    db_query(pool, a->schema, stmt, n, (const char *const *)values, cb, ud);
}

/* ---- POST .../records --------------------------------------------------- */

/* A create in flight: the request and its Idempotency-Key claim (NULL when
 * the request has no key). */
struct create_op {
    struct request *req;
    struct idem_claim *claim;
    const char *values[2];
};

static void create_done(struct db_result *r, void *ud)
{
    struct create_op *op = ud;
    struct request *req = op->req;
    if (r->status != DB_OK) {
        respond_failure_claimed(req, op->claim, r, "The body", "create record");
        return;
    }
    const char *id = db_result_text(r, 0, 0), *ver = db_result_text(r, 0, 1),
               *j = db_result_text(r, 0, 2);
    if (!id || !ver || !j) {
        internal(req, op->claim, "create record");
        return;
    }
    http_set_header(req, "Location",
                    arena_printf(req->arena, "/v1/collections/%s/records/%s",
                                 http_param(req, "collection"), id));
    set_etag(req, ver);
    idem_respond(req, op->claim, 201, "application/json", j, strlen(j));
}

/* Runs once the Idempotency-Key (if any) is claimed: the insert itself. */
static void create_proceed(struct request *req, struct idem_claim *claim, void *ud)
{
    struct create_op *op = ud;
    op->claim = claim;
    query(req, auth_ctx(req), &q_create, 2, op->values, create_done, op);
}

/* POST accepts Idempotency-Key (API.md) in idem's two-step form: the key is
 * claimed, then the record inserted, then the answer stored under the key.
 * A crash between insert and store can, after the claim's lease, create the
 * record a second time; records carry no money, so that is acceptable. */
static void records_create(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    const char *coll = a ? record_path_collection(req) : NULL;
    if (!coll)
        return;
    if (!check_object(req, req->body ? req->body : "", req->body ? req->body_len : 0, "The body"))
        return;
    struct create_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->values[0] = coll;
    op->values[1] = req->body;
    idem_claim(req, a->org_id, create_proceed, op);
}

/* ---- GET .../records ---------------------------------------------------- */

static void list_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        if (r->status == DB_ERROR && r->sqlstate &&
            (strcmp(r->sqlstate, "22007") == 0 || strcmp(r->sqlstate, "22008") == 0)) {
            /* A cursor of the right shape but an impossible date (Feb 30):
             * datetime errors, where bad JSON in the filter is 22P02. */
            page_respond_bad_cursor(req);
            return;
        }
        respond_failure(req, r, "The filter", "list records");
        return;
    }
    page_respond(req, db_result_text(r, 0, 0), PAGE_KEY_TIME_ID, db_result_text(r, 0, 1));
}

static void records_list(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    const char *coll = a ? record_path_collection(req) : NULL;
    if (!coll)
        return;
    const char **v = arena_calloc(req->arena, 4 * sizeof *v);
    v[0] = coll;
    const struct db_stmt *stmt = list_params(req, v);
    if (!stmt)
        return;
    query(req, a, stmt, stmt == &q_list ? 4 : 3, v, list_done, req);
}

/* ---- GET .../records/{id} ----------------------------------------------- */

static void get_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        respond_failure(req, r, NULL, "get record");
        return;
    }
    const char *ver = db_result_text(r, 0, 0), *j = db_result_text(r, 0, 1);
    if (!ver || !j) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such record.");
        return;
    }
    set_etag(req, ver);
    const char *inm = http_header(req, "If-None-Match");
    if (inm) {
        bool any;
        long long v[ETAG_MAX_TAGS];
        int n;
        /* A malformed If-None-Match is ignored: the full answer is always safe. */
        if (parse_etags(inm, true, &any, v, &n)) {
            long long cur = strtoll(ver, NULL, 10);
            bool match = any;
            for (int i = 0; i < n && !match; i++)
                match = v[i] == cur;
            if (match) {
                http_respond_empty(req, 304);
                return;
            }
        }
    }
    http_respond(req, 200, "application/json", j, strlen(j));
}

static void records_get(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    const char *coll = a ? record_path_collection(req) : NULL;
    const char *id = coll ? path_id(req) : NULL;
    if (!id)
        return;
    const char **v = arena_alloc(req->arena, 2 * sizeof *v);
    v[0] = id;
    v[1] = coll;
    query(req, a, &q_get, 2, v, get_done, req);
}

/* ---- PUT / PATCH .../records/{id} --------------------------------------- */

static void write_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        respond_failure(req, r, "The body",
                        req->method == HTTP_PUT ? "replace record" : "patch record");
        return;
    }
    const char *ver = db_result_text(r, 0, 0), *j = db_result_text(r, 0, 1),
               *exists = db_result_text(r, 0, 2);
    if (ver && j) {
        set_etag(req, ver);
        http_respond(req, 200, "application/json", j, strlen(j));
    } else if (exists && exists[0] == 't') {
        problem_respond(req, PROBLEM_PRECONDITION_FAILED,
                        "The record has changed since the version in If-Match; fetch it again.");
    } else {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such record.");
    }
}

static void run_write(struct request *req, const struct db_stmt *stmt, const char *what)
{
    const struct auth_ctx *a = auth_org_caller(req);
    const char *coll = a ? record_path_collection(req) : NULL;
    const char *id = coll ? path_id(req) : NULL;
    if (!id)
        return;
    if (!check_object(req, req->body ? req->body : "", req->body ? req->body_len : 0, what))
        return;
    bool ok;
    const char *versions = if_match_param(req, &ok);
    if (!ok)
        return;
    const char **v = arena_alloc(req->arena, 4 * sizeof *v);
    v[0] = id;
    v[1] = coll;
    v[2] = req->body;
    v[3] = versions;
    query(req, a, stmt, 4, v, write_done, req);
}

static void records_replace(struct request *req)
{
    run_write(req, &q_replace, "The body");
}

/* RFC 7396: the body is a merge patch; only an object can keep `data` an
 * object, so any other patch is refused (400) rather than replacing it. */
static void records_patch(struct request *req)
{
    run_write(req, &q_patch, "The merge patch");
}

/* ---- DELETE .../records/{id} -------------------------------------------- */

static void delete_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        respond_failure(req, r, NULL, "delete record");
        return;
    }
    const char *deleted = db_result_text(r, 0, 0), *exists = db_result_text(r, 0, 1);
    if (deleted && deleted[0] == 't')
        http_respond_empty(req, 204);
    else if (exists && exists[0] == 't')
        problem_respond(req, PROBLEM_PRECONDITION_FAILED,
                        "The record has changed since the version in If-Match; fetch it again.");
    else
        problem_respond(req, PROBLEM_NOT_FOUND, "No such record.");
}

static void records_delete(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    const char *coll = a ? record_path_collection(req) : NULL;
    const char *id = coll ? path_id(req) : NULL;
    if (!id)
        return;
    bool ok;
    const char *versions = if_match_param(req, &ok);
    if (!ok)
        return;
    const char **v = arena_alloc(req->arena, 3 * sizeof *v);
    v[0] = id;
    v[1] = coll;
    v[2] = versions;
    query(req, a, &q_delete, 3, v, delete_done, req);
}
