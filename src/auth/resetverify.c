/*
 * Password reset and email verification (README "Accounts"): the routes
 * that mail a one-time link (POST /v1/auth/password-reset,
 * /v1/auth/verify-email) and the ones that take it back (.../confirm). Part
 * of accounts_module (accounts.c lists the routes and holds the helpers
 * they share with invitations).
 *
 * Password reset answers 202 whether or not the account exists, after the
 * same single statement either way, so neither the answer nor its timing
 * tells who has an account.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth/accounts_internal.h"
#include "auth/cache.h"
#include "auth/internal.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/problem.h"
#include "app/dbhttp.h"

/* ---- SQL (functions of control migration 0010) ---------------------------- */

static const struct db_stmt q_token_request = {
    "acct_token_request",
    "SELECT public.tenantd_account_token_request($1, $2::uuid, $3, $4, $5, $6::bigint, $7, $8,"
    " $9, $10, $11)",
};

static const struct db_stmt q_token_use = {
    "acct_token_use",
    "SELECT public.tenantd_account_token_use($1, $2, $3, $4, $5)",
};

/* ---- password reset and email verification ------------------------------------------- */

static void token_requested(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "mail a link"))
        return;
    /* Whether a mail went out is not said (no account enumeration). */
    static const char body[] =
        "{\"message\":\"If the account exists, a mail with a link is on its way.\"}";
    http_respond(req, 202, "application/json", body, sizeof body - 1);
}

struct reset_ask {
    const char *email, *org; /* the body's, alive with the request */
};
static void reset_allowed(struct request *req, void *ud);

/* q_token_request's 11 values: the link's kind, for a user (by id) or an
 * email of an org (by slug), its token hash and lifetime, the request, and
 * the mail to queue with it. */
static const char **token_request_values(struct request *req, const char *kind,
                                         const char *user_id, const char *email,
                                         const char *org, const char *hash, int64_t ttl_s,
                                         const struct acct_mail *m)
{
    const char **v = arena_alloc(req->arena, 11 * sizeof *v);
    v[0] = kind;
    v[1] = user_id;
    v[2] = email;
    v[3] = org;
    v[4] = hash;
    v[5] = acct_ttl_text(req, ttl_s);
    v[6] = req->client_ip;
    v[7] = req->request_id;
    v[8] = m->subject;
    v[9] = m->text;
    v[10] = m->html;
    return v;
}

void acct_reset_request(struct request *req)
{
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"email", "org", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    size_t olen = 0;
    const char *email = acct_str_field(body, "email", true, &errors, NULL);
    const char *org = acct_str_field(body, "org", true, &errors, &olen);
    if (email && !body_email_valid(email))
        problem_add_error(&errors, "email", BODY_EMAIL_RULE);
    if (org && (olen == 0 || olen > 100))
        problem_add_error(&errors, "org", "must be an organization slug");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    struct reset_ask *a = arena_alloc(req->arena, sizeof *a);
    a->email = email;
    a->org = org;
    acct_client_budget(req, reset_allowed, a);
}

static void reset_allowed(struct request *req, void *ud)
{
    const struct reset_ask *a = ud;
    const char *email = a->email, *org = a->org;
    char *token, *hash;
    if (!acct_link_token_new(req, &token, &hash))
        return;
    org = acct_lower_dup(req->arena, org);
    struct acct_mail m = acct_mail_render(req->arena, ACCT_MAIL_PASSWORD_RESET, org, token, NULL);
    const char **v = token_request_values(req, "password_reset", NULL,
                                          acct_lower_dup(req->arena, email), org, hash,
                                          g_config->password_reset_ttl_s, &m);
    db_query(req->ctx->db, NULL, &q_token_request, 11, v, token_requested, req);
}

void acct_verify_request(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    if (!a || a->kind != AUTH_KIND_USER) {
        problem_respond(req, PROBLEM_FORBIDDEN, "Only a user can verify an email address.");
        return;
    }
    char *token, *hash;
    if (!acct_link_token_new(req, &token, &hash))
        return;
    struct acct_mail m =
        acct_mail_render(req->arena, ACCT_MAIL_VERIFY_EMAIL, a->slug ? a->slug : "", token, NULL);
    const char **v = token_request_values(req, "verify_email", a->principal_id, NULL, NULL, hash,
                                          g_config->verify_email_ttl_s, &m);
    acct_org_query(req, &q_token_request, 11, v, token_requested, req);
}

struct use {
    struct request *req;
    char hash[TOKEN_SHA256_HEX_BUFSZ];
    const char *v[5];
    const char *pw; /* reset: the new password (the body's) */
    size_t pwlen;
    bool reset;
};

static void token_used(struct db_result *r, void *ud)
{
    struct use *u = ud;
    struct request *req = u->req;
    if (db_failed(req, r, "use a link"))
        return;
    const char *status = db_result_text(r, 0, 0);
    if (!status) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    if (strncmp(status, "ok ", 3) != 0) {
        acct_respond_token_invalid(req, status);
        return;
    }
    /* This process at once; the others through the users trigger's NOTIFY. */
    auth_cache_forget_user(status + 3);
    http_respond_empty(req, 204);
}

static void reset_hashed(void *ud, int status, const char *phc)
{
    struct use *u = ud;
    struct request *req = u->req;
    if (acct_hash_failed(req, status, phc))
        return;
    u->v[2] = arena_strdup(req->arena, phc);
    db_query(req->ctx->db, NULL, &q_token_use, 5, u->v, token_used, u);
}

/* Both confirm routes: the token's shape, then (reset) the new password's
 * hash, then one statement. */
static void confirm_allowed(struct request *req, void *ud);

static void confirm(struct request *req, bool reset)
{
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const reset_fields[] = {"token", "new_password", NULL};
    static const char *const verify_fields[] = {"token", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, reset ? reset_fields : verify_fields, NULL, &errors);
    size_t tlen = 0, plen = 0;
    const char *token = acct_str_field(body, "token", true, &errors, &tlen);
    const char *pw = reset ? acct_str_field(body, "new_password", true, &errors, &plen) : NULL;
    if (pw && !password_length_ok(plen))
        problem_add_error(&errors, "new_password", "must be 8 to 1024 bytes");
    if (!acct_link_request_ok(req, errors, token, tlen))
        return;
    struct use *u = arena_calloc(req->arena, sizeof *u);
    u->req = req;
    token_sha256_hex(token, tlen, u->hash);
    u->v[0] = reset ? "password_reset" : "verify_email";
    u->v[1] = u->hash;
    u->v[2] = NULL;
    u->v[3] = req->client_ip;
    u->v[4] = req->request_id;
    u->reset = reset;
    u->pw = pw;
    u->pwlen = plen;
    acct_client_budget(req, confirm_allowed, u);
}

static void confirm_allowed(struct request *req, void *ud)
{
    struct use *u = ud;
    if (u->reset)
        acct_hash_start(req, u->pw, u->pwlen, reset_hashed, u);
    else
        db_query(req->ctx->db, NULL, &q_token_use, 5, u->v, token_used, u);
}

void acct_reset_confirm(struct request *req)
{
    confirm(req, true);
}

void acct_verify_confirm(struct request *req)
{
    confirm(req, false);
}
