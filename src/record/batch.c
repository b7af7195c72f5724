/*
 * POST /v1/collections/{collection}/records/batch: 1..RECORD_BATCH_MAX
 * records in one statement, all or nothing.
 *
 * The validation is the single create's: each record is one JSON object
 * nested at most RECORD_MAX_DEPTH deep, and PostgreSQL's jsonb input checks
 * the syntax. The depth is checked here, on the text (a scanner, as in
 * record.c, so that every JSON number PostgreSQL accepts is accepted); the
 * body's shape and each record's type are checked by the statement itself,
 * which inserts nothing unless every record passes, and names the first bad
 * record's index (0-based, as in the request) otherwise.
 *
 * The body limit for this route is TENANTD_MAX_BATCH_BODY_BYTES (the parser,
 * core/http1_parse.c, reads it when it sees the path), since 1000 records do not fit in 1 MiB.
 */
#include "record/batch.h"

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
#include "db/db.h"
#include "app/dbhttp.h"
#include "idem/idem.h"
#include "record/record.h"

static void records_batch(struct request *req);

static const struct route batch_routes[] = {
    {HTTP_POST, "/v1/collections/{collection}/records/batch", AUTH_MEMBER, records_batch,
     "createRecordsBatch"},
    {0},
};

const struct module record_batch_module = {
    .name = "records-batch",
    .routes = batch_routes,
};

/* clang-format off */
#define SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/*
 * $1 collection, $2 the body. `chk` is 0 when the body is fit, else a
 * negative reason (-1 not an object, -2 no `records` array, -3 a count
 * outside 1..1000, -4 another top-level field) or the 1-based position of
 * the first record that is not an object. The ids are drawn before the
 * insert so that the answer lists the records in the request's order.
 * Answers (chk, the records as a JSON array or NULL).
 */
static const struct db_stmt q_batch = {
    "records_batch",
    "WITH b AS (SELECT $2::jsonb AS j), "
    "chk AS (SELECT CASE "
    "WHEN jsonb_typeof(b.j) <> 'object' THEN -1 "
    "WHEN jsonb_typeof(b.j -> 'records') IS DISTINCT FROM 'array' THEN -2 "
    "WHEN jsonb_array_length(b.j -> 'records') NOT BETWEEN 1 AND " RECORD_BATCH_MAX_STR " THEN -3 "
    "WHEN EXISTS (SELECT 1 FROM jsonb_object_keys(b.j) k WHERE k <> 'records') THEN -4 "
    "ELSE coalesce((SELECT min(x.n) FROM jsonb_array_elements(b.j -> 'records') WITH ORDINALITY "
    "x(v, n) WHERE jsonb_typeof(x.v) <> 'object'), 0) END AS c FROM b), "
    "e AS MATERIALIZED (SELECT gen_random_uuid() AS id, x.v, x.n FROM b, chk, "
    "jsonb_array_elements(CASE WHEN chk.c = 0 THEN b.j -> 'records' ELSE '[]'::jsonb END) "
    "WITH ORDINALITY x(v, n)), "
    "ins AS (INSERT INTO {schema}.records AS r (id, collection, data) "
    "SELECT e.id, $1, e.v FROM e ORDER BY e.n "
    "RETURNING r.id, r.collection, r.data, r.version, r.created_at, r.updated_at) "
    "SELECT chk.c, (SELECT json_agg(json_build_object('id', i.id, 'collection', i.collection, "
    "'data', i.data, 'version', i.version, 'created_at', " SQL_TS("i.created_at") ", "
    "'updated_at', " SQL_TS("i.updated_at") ") ORDER BY e.n) FROM ins i JOIN e ON e.id = i.id)::text "
    "FROM chk"};
/* clang-format on */

enum { SCAN_FIT = -1, SCAN_NUL = -2, SCAN_TOO_DEEP = -3 };

/*
 * Scans the body's text for the first record nested deeper than
 * RECORD_MAX_DEPTH: records are the values of the array under the top-level
 * key "records" (compared as written, so an escaped spelling is not seen;
 * the whole body's depth is bounded anyway). Returns the record's 0-based
 * index, SCAN_FIT, SCAN_NUL (libpq takes C strings) or SCAN_TOO_DEEP when
 * something outside the records nests too deep.
 */
static long scan_depth(const char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return SCAN_NUL;
    int depth = 0;
    bool expect_key = false, key_is_records = false, in_records = false;
    long index = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '"') {
            size_t start = i + 1;
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            if (depth == 1 && expect_key) {
                key_is_records = i - start == 7 && memcmp(s + start, "records", 7) == 0;
                expect_key = false;
            }
        } else if (c == '{' || c == '[') {
            depth++;
            if (depth > RECORD_MAX_DEPTH + 2)
                return in_records ? index : SCAN_TOO_DEEP;
            if (depth == 1)
                expect_key = c == '{';
            else if (depth == 2 && c == '[' && key_is_records) {
                in_records = true;
                index = 0;
            }
        } else if (c == '}' || c == ']') {
            depth--;
            if (depth <= 1)
                in_records = false;
        } else if (c == ',') {
            if (depth == 1)
                expect_key = true;
            else if (depth == 2 && in_records)
                index++;
        }
    }
    return SCAN_FIT;
}

struct batch_op {
    struct request *req;
    struct idem_claim *claim;
    const char *values[2];
};

static void batch_invalid(struct request *req, struct idem_claim *claim, const char *field,
                          const char *message)
{
    json_t *errors = NULL;
    problem_add_error(&errors, field, message);
    if (claim) {
        /* Answered through the claim: a retry with this key and body gets
         * the same 422 (nothing was stored either time). */
        json_t *body = problem_body(PROBLEM_VALIDATION_FAILED, "The records are not valid.",
                                    req->request_id, errors);
        char *text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        if (!text) {
            idem_problem(req, claim, PROBLEM_INTERNAL, "The request could not be completed.");
            return;
        }
        idem_respond(req, claim, 422, "application/problem+json", text, strlen(text));
        free(text);
        return;
    }
    problem_respond_errors(req, "The records are not valid.", errors);
}

static void batch_done(struct db_result *r, void *ud)
{
    struct batch_op *op = ud;
    struct request *req = op->req;
    if (r->status != DB_OK) {
        const char *st = r->sqlstate ? r->sqlstate : "";
        if (r->status == DB_ERROR && strncmp(st, "22", 2) == 0) {
            idem_problem(req, op->claim, PROBLEM_BAD_REQUEST, "The body is not valid JSON.");
            return;
        }
        if (db_result_is(r, "42P01") || db_result_is(r, "3F000")) {
            idem_problem(req, op->claim, PROBLEM_UNAUTHORIZED,
                         "The credential's organization no longer exists.");
            return;
        }
        if (r->status == DB_UNAVAILABLE)
            http_set_header(req, "Retry-After", "1");
        idem_problem(req, op->claim,
                     r->status == DB_UNAVAILABLE ? PROBLEM_UNAVAILABLE : PROBLEM_INTERNAL,
                     r->status == DB_UNAVAILABLE ? "The database is unavailable; try again shortly."
                                                 : "The request could not be completed.");
        if (r->status != DB_UNAVAILABLE)
            log_msg(LOG_ERROR, "batch create failed: %s (%s)", r->message ? r->message : "?", st);
        return;
    }
    const char *chk = db_result_text(r, 0, 0), *j = db_result_text(r, 0, 1);
    long c = chk ? strtol(chk, NULL, 10) : -99;
    if (c == -1) {
        idem_problem(req, op->claim, PROBLEM_BAD_REQUEST, "The body must be a JSON object.");
    } else if (c == -2) {
        batch_invalid(req, op->claim, "records", "is required: an array of JSON objects");
    } else if (c == -3) {
        batch_invalid(req, op->claim, "records", "must hold 1 to " RECORD_BATCH_MAX_STR " records");
    } else if (c == -4) {
        batch_invalid(req, op->claim, "body", "has fields other than `records`");
    } else if (c > 0) {
        batch_invalid(req, op->claim, arena_printf(req->arena, "records[%ld]", c - 1),
                      "must be a JSON object");
    } else if (c == 0 && j) {
        char *body = arena_printf(req->arena, "{\"data\":%s}", j);
        idem_respond(req, op->claim, 201, "application/json", body, strlen(body));
    } else {
        log_msg(LOG_ERROR, "batch create: unexpected result shape");
        idem_problem(req, op->claim, PROBLEM_INTERNAL, "The request could not be completed.");
    }
}

static void batch_proceed(struct request *req, struct idem_claim *claim, void *ud)
{
    struct batch_op *op = ud;
    op->claim = claim;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        idem_problem(req, claim, PROBLEM_UNAVAILABLE,
                     "The database is unavailable; try again shortly.");
        return;
    }
    db_query(pool, auth_ctx(req)->schema, &q_batch, 2, op->values, batch_done, op);
}

static void records_batch(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *coll = record_path_collection(req);
    if (!coll)
        return;
    long d = scan_depth(req->body ? req->body : "", req->body ? req->body_len : 0);
    if (d == SCAN_NUL) {
        problem_respond(req, PROBLEM_BAD_REQUEST, "The body is not valid JSON.");
        return;
    }
    if (d == SCAN_TOO_DEEP) {
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        arena_printf(req->arena, "The body is nested deeper than %d levels.",
                                     RECORD_MAX_DEPTH + 2));
        return;
    }
    if (d >= 0) {
        json_t *errors = NULL;
        problem_add_error(&errors, arena_printf(req->arena, "records[%ld]", d),
                          arena_printf(req->arena,
                                       "is nested deeper than %d levels of objects and arrays",
                                       RECORD_MAX_DEPTH));
        problem_respond_errors(req, "The records are not valid.", errors);
        return;
    }
    struct batch_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->values[0] = coll;
    op->values[1] = req->body;
    idem_claim(req, a->org_id, batch_proceed, op);
}
