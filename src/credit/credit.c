/*
 * Credits: balance, ledger, metered spend and the operator's grants and
 * adjustments.
 *
 * Every write is ONE statement calling a SQL function of migration 0006
 * (tenantd_credit_spend / tenantd_credit_admin, both built on
 * tenantd_credit_apply): the account UPDATE ... WHERE balance + amount >= 0,
 * the ledger INSERT and, when the request has an Idempotency-Key, the key's
 * stored answer commit together or not at all. A short balance raises
 * SQLSTATE TD402 and rolls everything back, so a 402 changes nothing (not
 * even the key: a retry after a top-up spends). PostgreSQL renders the
 * Transaction JSON; handlers pass it through, and replays send the very same
 * text.
 *
 * Every statement is schema-qualified and runs on connections bound to
 * "public" (schema NULL): requests of all orgs then share connections and
 * their pipelines, instead of each org needing a connection bound to its
 * own schema (with 100 busy orgs and 8 connections, almost every request
 * would wait for a connection to be switched; measured 3x slower).
 *
 * Operator adjustments that would take a balance below zero answer 409
 * (conflict with the org's state; 402 would tell the operator to pay).
 */
#include "credit/credit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/auth.h"
#include "core/arena.h"
#include "core/config.h"
#include "core/http.h"
#include "core/page.h"
#include "core/log.h"
#include "core/body.h"
#include "core/problem.h"
#include "app/dbhttp.h"
#include "idem/idem.h"

static void credits_get(struct request *req);
static void credits_list(struct request *req);
static void credits_spend(struct request *req);
static void admin_credits(struct request *req);

static const struct route credit_routes[] = {
    {HTTP_GET, "/v1/credits", AUTH_MEMBER, credits_get, "getCredits"},
    {HTTP_GET, "/v1/credits/transactions", AUTH_MEMBER, credits_list, "listCreditTransactions"},
    {HTTP_POST, "/v1/credits/spend", AUTH_ADMIN_OR_KEY, credits_spend, "spendCredits"},
    {HTTP_POST, "/v1/admin/orgs/{slug}/credits", AUTH_OPERATOR, admin_credits,
     "adminAdjustCredits"},
    {0},
};

const struct module credit_module = {
    .name = "credit",
    .routes = credit_routes,
};

/* ---- SQL ---------------------------------------------------------------- */

/* An org without an account row (only orgs made outside signup) has 0. */
static const struct db_stmt q_balance = {
    "credit_balance",
    "SELECT json_build_object('balance', coalesce(a.balance, 0), 'updated_at', "
    "public.tenantd_ts(coalesce(a.updated_at, o.created_at)))::text "
    "FROM public.orgs o LEFT JOIN public.credit_accounts a ON a.org_id = o.id "
    "WHERE o.id = $1::uuid",
};

/* Newest first by seq (the org's order of balance changes); $2 the cursor
 * (seq of the last row shown, NULL first), $3 the page size. Answers the
 * page as a JSON array and, when more rows follow, the seq to go on from.
 * The cursor stays an index condition on the generic plan (see job_list). */
static const struct db_stmt q_list = {
    "credit_list",
    "WITH page AS (SELECT t.seq, public.tenantd_credit_tx_json(t) AS j "
    "FROM public.credit_transactions t WHERE t.org_id = $1::uuid "
    "AND t.seq < coalesce($2::bigint, 9223372036854775807) ORDER BY t.seq DESC LIMIT $3::int + 1), "
    "shown AS (SELECT p.seq, p.j FROM page p ORDER BY p.seq DESC LIMIT $3::int) "
    "SELECT coalesce((SELECT json_agg(s.j ORDER BY s.seq DESC) FROM shown s), '[]'::json)::text, "
    "CASE WHEN (SELECT count(*) FROM page) > $3::int THEN (SELECT min(s.seq) FROM shown s) END",
};

static const struct db_stmt q_spend = {
    "credit_spend",
    /* The audit event (migration 0010; $7/$8 actor, $9 IP, $10 request id)
     * of a first execution only, not of a replay, in the same statement. */
    "WITH s AS (SELECT * FROM public.tenantd_credit_spend($1::uuid, $2::bigint, $3, $4, $5, $6)), "
    "aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type, "
    "target_id, ip, request_id, details) SELECT $1::uuid, $7, $8, 'credits.spent', "
    "'credit_transaction', s.o_body::json->>'id', $9, $10, jsonb_build_object('amount', "
    "$2::bigint) "
    "FROM s WHERE s.o_outcome = 'executed') "
    "SELECT s.o_outcome, s.o_status, s.o_headers::text, s.o_body FROM s",
};

static const struct db_stmt q_admin = {
    "credit_admin",
    /* As q_spend's: $6 IP, $7 request id; the actor is the operator. */
    "WITH s AS (SELECT * FROM public.tenantd_credit_admin($1, $2::bigint, $3, $4, $5)), "
    "aud AS (INSERT INTO public.audit_events (org_id, actor_type, action, target_type, "
    "target_id, ip, request_id, details) SELECT o.id, 'operator', CASE WHEN $2::bigint >= 0 "
    "THEN 'credits.granted' ELSE 'credits.adjusted' END, 'credit_transaction', "
    "s.o_body::json->>'id', $6, $7, jsonb_build_object('amount', $2::bigint) "
    "FROM s JOIN public.orgs o ON lower(o.slug) = lower($1) AND o.status <> 'deleted' "
    "WHERE s.o_outcome = 'executed') "
    "SELECT s.o_outcome, s.o_status, s.o_headers::text, s.o_body FROM s",
};

/* ---- limits ------------------------------------------------------------- */

#define AMOUNT_MAX INT64_C(1000000000000000) /* 10^15: far from bigint overflow */
#define DESCRIPTION_MAX_CHARS 1000
#define REFERENCE_MAX_CHARS 255
#define SLUG_MAX 100
#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX 100

/* ---- helpers ------------------------------------------------------------ */

/* The integer field `amount` within [min, max] and != 0 (a change of
 * nothing is a mistake), or false with an error added. */
static bool take_amount(json_t *obj, int64_t min, int64_t max, const char *message, int64_t *out,
                        json_t **errors)
{
    json_int_t n = 0;
    if (body_int(obj, "amount", true, min, max, message, &n, errors) != 1)
        return false;
    if (n == 0) {
        problem_add_error(errors, "amount", message);
        return false;
    }
    *out = (int64_t)n;
    return true;
}

/* ---- GET /v1/credits ---------------------------------------------------- */

static void balance_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "credit balance");
        return;
    }
    db_respond_json(req, r, 0, "No such organization.");
}

static void credits_get(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    const char **v = arena_alloc(req->arena, sizeof *v);
    v[0] = a->org_id;
    db_query(pool, NULL, &q_balance, 1, v, balance_done, req);
}

/* ---- GET /v1/credits/transactions --------------------------------------- */

static void list_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "credit list");
        return;
    }
    page_respond(req, db_result_text(r, 0, 0), PAGE_KEY_SEQ, db_result_text(r, 0, 1));
}

static void credits_list(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *errors = NULL;
    struct page pg;
    if (!page_read(req, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, PAGE_KEY_SEQ, &pg, &errors)) {
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return;
    }
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    const char **v = arena_alloc(req->arena, 3 * sizeof *v);
    v[0] = a->org_id;
    v[1] = pg.seq;
    v[2] = pg.limit_text;
    db_query(pool, NULL, &q_list, 3, v, list_done, req);
}

/* ---- the two writes ------------------------------------------------------ */

/* Answers a write's outcome row: the new Transaction (201), or what the
 * Idempotency-Key says (replay, 409, 422). */
static void write_answer(struct request *req, const struct db_result *r, const char *what)
{
    const char *outcome = db_result_text(r, 0, 0);
    if (idem_answer(req, outcome, db_result_text(r, 0, 1), db_result_text(r, 0, 2),
                    db_result_text(r, 0, 3)))
        return;
    const char *body = db_result_text(r, 0, 3);
    if (!outcome || strcmp(outcome, "executed") != 0 || !body) {
        db_respond_failure(
            req, &(struct db_result){.status = DB_ERROR, .message = "unexpected outcome"}, what);
        return;
    }
    http_respond(req, 201, "application/json", body, strlen(body));
}

static void spend_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_result_is(r, CREDIT_SQLSTATE_INSUFFICIENT)) {
        problem_respond(req, PROBLEM_PAYMENT_REQUIRED,
                        "The organization's credit balance is lower than the amount; nothing was "
                        "spent.");
        return;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "credit spend");
        return;
    }
    write_answer(req, r, "credit spend");
}

/* POST /v1/credits/spend {amount, description?, reference?}. */
static void credits_spend(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"amount", "description", "reference", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    int64_t amount = 0;
    take_amount(body, 1, AMOUNT_MAX, "must be an integer from 1 to 10^15", &amount, &errors);
    const char *description = body_string(body, "description", false, 0, DESCRIPTION_MAX_CHARS,
                                          "must be at most 1000 characters", &errors);
    const char *reference = body_string(body, "reference", false, 1, REFERENCE_MAX_CHARS,
                                        "must be 1 to 255 characters", &errors);
    if (errors) {
        problem_respond_errors(req, "The spend is not valid.", errors);
        return;
    }
    /* Only now, after validation: a rejected request does not use the key. */
    struct idem_key k;
    if (idem_read(req, a->org_id, &k) < 0)
        return;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    const char **v = arena_alloc(req->arena, 10 * sizeof *v);
    v[0] = a->org_id;
    v[1] = arena_printf(req->arena, "%" PRId64, amount);
    v[2] = description;
    v[3] = reference;
    v[4] = k.key;
    v[5] = k.hash;
    v[6] = a->kind == AUTH_KIND_USER ? "user" : "api_key";
    v[7] = a->principal_id[0] ? a->principal_id : NULL;
    v[8] = req->client_ip;
    v[9] = req->request_id;
    db_query(pool, NULL, &q_spend, 10, v, spend_done, req);
}

static void admin_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_result_is(r, CREDIT_SQLSTATE_INSUFFICIENT)) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "The adjustment would take the organization's balance below zero; "
                        "nothing changed.");
        return;
    }
    if (db_result_is(r, "22003")) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "The grant would take the balance beyond the largest value it can hold; "
                        "nothing changed.");
        return;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "credit adjustment");
        return;
    }
    const char *outcome = db_result_text(r, 0, 0);
    if (outcome && strcmp(outcome, "not_found") == 0) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    write_answer(req, r, "credit adjustment");
}

/* POST /v1/admin/orgs/{slug}/credits {amount, description?}: amount > 0 is
 * a grant, < 0 an adjustment. */
static void admin_credits(struct request *req)
{
    const char *slug = http_param(req, "slug");
    if (!slug || strlen(slug) > SLUG_MAX) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"amount", "description", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    int64_t amount = 0;
    take_amount(body, -AMOUNT_MAX, AMOUNT_MAX, "must be a non-zero integer from -10^15 to 10^15",
                &amount, &errors);
    const char *description = body_string(body, "description", false, 0, DESCRIPTION_MAX_CHARS,
                                          "must be at most 1000 characters", &errors);
    if (errors) {
        problem_respond_errors(req, "The credit change is not valid.", errors);
        return;
    }
    /* The operator's keys are scoped to the target org, which SQL resolves
     * from the slug; idem_read only checks the header and hashes. */
    struct idem_key k;
    if (idem_read(req, "", &k) < 0)
        return;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    const char **v = arena_alloc(req->arena, 7 * sizeof *v);
    v[0] = slug;
    v[1] = arena_printf(req->arena, "%" PRId64, amount);
    v[2] = description;
    v[3] = k.key;
    v[4] = k.hash;
    v[5] = req->client_ip;
    v[6] = req->request_id;
    db_query(pool, NULL, &q_admin, 7, v, admin_done, req);
}
