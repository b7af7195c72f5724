/*
 * Accounts: invitations, password reset and email verification (README
 * "Accounts"; openapi.accounts.json). This file holds the module (its route
 * table), the helpers of the routes that mail links, and the invitation
 * routes; password reset and email verification are in resetverify.c, the
 * mails in accountmail.c, the audit-log routes in audit.c. All make
 * accounts_module.
 *
 * Links mailed to people carry a token of 32 random bytes (base64url, 43
 * chars) stored only as hex SHA-256 with an expiry; each route is one SQL
 * function of migration 0010 that changes the rows, queues the mail (an
 * email.send job) and writes the audit event in one transaction, and that
 * uses a token at most once even under concurrent requests.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/accounts_internal.h"
#include "auth/internal.h"
#include "auth/password.h"
#include "auth/tokens.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "app/pagelist.h"
#include "job/email.h"

static void invitations_create(struct request *req);
static void invitations_list(struct request *req);
static void invitations_revoke(struct request *req);
static void invitations_accept(struct request *req);
void audit_list(struct request *req);
void audit_list_operator(struct request *req);

const struct route accounts_routes[] = {
    {HTTP_POST, "/v1/invitations", AUTH_ADMIN, invitations_create, "createInvitation"},
    {HTTP_GET, "/v1/invitations", AUTH_ADMIN, invitations_list, "listInvitations"},
    {HTTP_DELETE, "/v1/invitations/{id}", AUTH_ADMIN, invitations_revoke, "revokeInvitation"},
    {HTTP_POST, "/v1/invitations/accept", AUTH_NONE, invitations_accept, "acceptInvitation"},
    {HTTP_POST, "/v1/auth/password-reset", AUTH_NONE, acct_reset_request, "requestPasswordReset"},
    {HTTP_POST, "/v1/auth/password-reset/confirm", AUTH_NONE, acct_reset_confirm,
     "confirmPasswordReset"},
    {HTTP_POST, "/v1/auth/verify-email", AUTH_USER, acct_verify_request,
     "requestEmailVerification"},
    {HTTP_POST, "/v1/auth/verify-email/confirm", AUTH_NONE, acct_verify_confirm,
     "confirmEmailVerification"},
    {HTTP_GET, "/v1/audit-events", AUTH_ADMIN, audit_list, "listAuditEvents"},
    {HTTP_GET, "/v1/admin/orgs/{slug}/audit-events", AUTH_OPERATOR, audit_list_operator,
     "adminListOrgAuditEvents"},
    {0},
};

/* Names where mail goes, once at start. */
static int accounts_init(void)
{
    const char *dir = email_dir();
    if (dir)
        log_msg(LOG_INFO, "mail: TENANTD_SMTP_URL is not set; mails are written as files under %s",
                dir);
    else if (g_config->smtp_url && *g_config->smtp_url)
        log_msg(LOG_INFO, "mail: sending through the SMTP server of TENANTD_SMTP_URL");
    else
        log_msg(LOG_WARN, "mail: neither TENANTD_SMTP_URL nor TENANTD_MAIL_DIR is set; mails "
                          "(invitations, password resets) wait until one is");
    return 0;
}

const struct module accounts_module = {
    .name = "accounts",
    .routes = accounts_routes,
    .init = accounts_init,
};

/* ---- SQL (functions of control migration 0010) ---------------------------- */

static const struct db_stmt q_inv_create = {
    "acct_inv_create",
    "SELECT public.tenantd_invitation_create($1::uuid, $2, $3, $4, $5::bigint, $6, $7, $8, $9,"
    " $10, $11, $12)",
};

static const struct db_stmt q_inv_list = {
    "acct_inv_list",
    SQL_ORG_PAGE("public.invitations", "i", "public.tenantd_invitation_json(i)",
                 "AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()"),
};

static const struct db_stmt q_inv_revoke = {
    "acct_inv_revoke",
    "WITH r AS (UPDATE public.invitations i SET revoked_at = now() WHERE i.id = $2::uuid"
    " AND i.org_id = $1::uuid AND i.accepted_at IS NULL AND i.revoked_at IS NULL"
    " RETURNING i.id, i.email),"
    " a AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $1::uuid, $3, $4, 'invitation.revoked',"
    " 'invitation', r.id::text, $5, $6, jsonb_build_object('email', r.email) FROM r)"
    " SELECT count(*)::int FROM r",
};

static const struct db_stmt q_inv_accept = {
    "acct_inv_accept",
    "SELECT public.tenantd_invitation_accept($1, $2, $3, $4, $5::bigint, $6, $7)",
};

#define LINK_TOKEN_BYTES 32
#define LINK_TOKEN_LEN TOKEN_B64URL_LEN(LINK_TOKEN_BYTES) /* 43 */

/* ---- helpers ------------------------------------------------------------------ */

bool acct_link_token_new(struct request *req, char **token, char **hash)
{
    *token = arena_alloc(req->arena, LINK_TOKEN_LEN + 1);
    *hash = arena_alloc(req->arena, TOKEN_SHA256_HEX_BUFSZ);
    if (token_random_b64url(LINK_TOKEN_BYTES, *token, LINK_TOKEN_LEN + 1) != LINK_TOKEN_LEN) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return false;
    }
    token_sha256_hex(*token, LINK_TOKEN_LEN, *hash);
    return true;
}

/* Whether s has the shape of a link token (no database lookup otherwise). */
static bool link_token_shape(const char *s, size_t len)
{
    unsigned char raw[LINK_TOKEN_BYTES + 1];
    return len == LINK_TOKEN_LEN &&
           token_b64url_decode(s, len, raw, sizeof raw) == LINK_TOKEN_BYTES;
}

void acct_respond_token_invalid(struct request *req, const char *status)
{
    const char *detail = !strcmp(status, "used")
                             ? "This link was already used; each link works once."
                         : !strcmp(status, "expired") ? "This link has expired; ask for a new one."
                         : !strcmp(status, "revoked") ? "This invitation was withdrawn."
                                                      : "This link is not valid.";
    problem_respond(req, PROBLEM_TOKEN_INVALID, detail);
}

const char *acct_str_field(json_t *body, const char *name, bool required, json_t **errors,
                           size_t *len)
{
    const char *s = body_string(body, name, required, 0, SIZE_MAX, NULL, errors);
    if (s && len)
        *len = strlen(s);
    return s;
}

const char *acct_lower_dup(struct arena *a, const char *s)
{
    char *low = arena_strdup(a, s);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return low;
}

/* The caller as an audit actor. */
static void actor_of(const struct auth_ctx *a, const char **type, const char **id)
{
    *type = a->kind == AUTH_KIND_USER ? "user" : a->kind == AUTH_KIND_KEY ? "api_key" : "operator";
    *id = a->principal_id[0] ? a->principal_id : NULL;
}

void acct_client_budget(struct request *req, void (*go)(struct request *req, void *ud), void *ud)
{
    limit_gate(req, LIMIT_LOGIN_IP, NULL, "requests from this client; try again later", go, ud);
}

bool acct_link_request_ok(struct request *req, json_t *errors, const char *token, size_t tlen)
{
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return false;
    }
    if (!link_token_shape(token, tlen)) {
        acct_respond_token_invalid(req, "invalid");
        return false;
    }
    return true;
}

static void respond_busy(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "The server is busy; try again shortly.");
}

bool acct_hash_failed(struct request *req, int status, const char *phc)
{
    if (status == PASSWORD_EBUSY || status == PASSWORD_ECANCELED) {
        respond_busy(req);
        return true;
    }
    if (status != PASSWORD_OK || !phc) {
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
        return true;
    }
    return false;
}

/* The JSON object a function returned in column 0 (freed with the
 * request), or NULL after answering 500. */
static json_t *result_json(struct request *req, struct db_result *r, const char *what)
{
    const char *s = db_result_text(r, 0, 0);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    if (!j) {
        log_msg(LOG_ERROR, "accounts: %s returned no JSON", what);
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return NULL;
    }
    arena_cleanup(req->arena, (void (*)(void *))json_decref, j);
    return j;
}

void acct_org_query(struct request *req, const struct db_stmt *stmt, int n,
                    const char *const *values, db_cb cb, void *ud)
{
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    db_query(pool, NULL, stmt, n, values, cb, ud);
}

const char *acct_ttl_text(struct request *req, int64_t s)
{
    return arena_printf(req->arena, "%lld", (long long)s);
}

/* ---- POST /v1/invitations -------------------------------------------------------- */

static void inv_created(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "create invitation"))
        return;
    json_t *j = result_json(req, r, "tenantd_invitation_create");
    if (!j)
        return;
    const char *status = json_string_value(json_object_get(j, "status"));
    if (status && !strcmp(status, "member_exists")) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "A user with this email already belongs to the organization.");
        return;
    }
    json_t *inv = json_object_get(j, "invitation");
    const char *id = json_string_value(json_object_get(inv, "id"));
    if (!status || strcmp(status, "ok") != 0 || !id) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    http_set_header(req, "Location", arena_printf(req->arena, "/v1/invitations/%s", id));
    http_respond_json(req, 201, json_incref(inv));
}

static void invitations_create(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"email", "role", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char *email = acct_str_field(body, "email", true, &errors, NULL);
    if (email && !body_email_valid(email)) {
        problem_add_error(&errors, "email", BODY_EMAIL_RULE);
        email = NULL;
    }
    const char *role = "member";
    json_t *rv = json_object_get(body, "role");
    if (rv && !json_is_null(rv)) {
        role = json_string_value(rv);
        if (!role || (strcmp(role, "admin") != 0 && strcmp(role, "member") != 0)) {
            problem_add_error(&errors, "role", "must be \"admin\" or \"member\"");
            role = NULL;
        }
    }
    if (errors) {
        problem_respond_errors(req, "The invitation has invalid fields.", errors);
        return;
    }
    char *token, *hash;
    if (!acct_link_token_new(req, &token, &hash))
        return;
    email = acct_lower_dup(req->arena, email);
    struct acct_mail m =
        acct_mail_render(req->arena, ACCT_MAIL_INVITATION, a->slug ? a->slug : "", token, role);
    const char *atype, *aid;
    actor_of(a, &atype, &aid);
    const char **v = arena_alloc(req->arena, 12 * sizeof *v);
    v[0] = a->org_id;
    v[1] = email;
    v[2] = role;
    v[3] = hash;
    v[4] = acct_ttl_text(req, g_config->invitation_ttl_s);
    v[5] = atype;
    v[6] = aid;
    v[7] = req->client_ip;
    v[8] = req->request_id;
    v[9] = m.subject;
    v[10] = m.text;
    v[11] = m.html;
    acct_org_query(req, &q_inv_create, 12, v, inv_created, req);
}

/* ---- GET /v1/invitations, DELETE /v1/invitations/{id} ------------------------------ */

static void invitations_list(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (a)
        page_list(req, a->schema, a->org_id, &q_inv_list);
}

static void inv_revoked(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "revoke invitation"))
        return;
    const char *n = db_result_text(r, 0, 0);
    if (!n || !strcmp(n, "0")) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such pending invitation.");
        return;
    }
    http_respond_empty(req, 204);
}

static void invitations_revoke(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such pending invitation.");
        return;
    }
    const char *atype, *aid;
    actor_of(a, &atype, &aid);
    const char **v = arena_alloc(req->arena, 6 * sizeof *v);
    v[0] = a->org_id;
    v[1] = acct_lower_dup(req->arena, id);
    v[2] = atype;
    v[3] = aid;
    v[4] = req->client_ip;
    v[5] = req->request_id;
    acct_org_query(req, &q_inv_revoke, 6, v, inv_revoked, req);
}

/* ---- POST /v1/invitations/accept ------------------------------------------------- */

struct accept {
    struct request *req;
    const char *pw, *name;
    size_t pwlen;
    char hash[TOKEN_SHA256_HEX_BUFSZ];
    char refresh[TOKEN_REFRESH_BUFSZ], refresh_hash[TOKEN_SHA256_HEX_BUFSZ];
    const char *v[7];
};

static void accept_done(struct db_result *r, void *ud)
{
    struct accept *c = ud;
    struct request *req = c->req;
    if (db_result_is(r, "23505")) { /* a user with the email appeared meanwhile */
        problem_respond(req, PROBLEM_CONFLICT,
                        "A user with this email already belongs to the organization.");
        return;
    }
    if (db_failed(req, r, "accept invitation"))
        return;
    json_t *j = result_json(req, r, "tenantd_invitation_accept");
    if (!j)
        return;
    const char *status = json_string_value(json_object_get(j, "status"));
    if (!status) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
    } else if (!strcmp(status, "member_exists")) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "A user with this email already belongs to the organization.");
    } else if (!strcmp(status, "suspended")) {
        problem_respond(req, PROBLEM_FORBIDDEN, "This organization is suspended.");
    } else if (strcmp(status, "ok") != 0) {
        acct_respond_token_invalid(req, status);
    } else {
        auth_respond_tokens(req, r->res, c->refresh, "This link is not valid.", 201);
    }
}

static void accept_hashed(void *ud, int status, const char *phc)
{
    struct accept *c = ud;
    struct request *req = c->req;
    if (acct_hash_failed(req, status, phc))
        return;
    if (token_refresh_new(c->refresh) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(c->refresh, strlen(c->refresh), c->refresh_hash);
    c->v[0] = c->hash;
    c->v[1] = arena_strdup(req->arena, phc);
    c->v[2] = c->name;
    c->v[3] = c->refresh_hash;
    c->v[4] = acct_ttl_text(req, auth_refresh_ttl());
    c->v[5] = req->client_ip;
    c->v[6] = req->request_id;
    db_query(req->ctx->db, NULL, &q_inv_accept, 7, c->v, accept_done, c);
}

/* Starts hashing pw for c, or answers. */
void acct_hash_start(struct request *req, const char *pw, size_t len, password_hash_cb cb, void *ud)
{
    int rc = password_hash_async(req->ctx->loop, pw, len, cb, ud);
    if (rc == PASSWORD_EBUSY)
        respond_busy(req);
    else if (rc != PASSWORD_OK)
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
}

static void accept_allowed(struct request *req, void *ud);

static void invitations_accept(struct request *req)
{
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"token", "password", "name", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    size_t tlen = 0, plen = 0;
    const char *token = acct_str_field(body, "token", true, &errors, &tlen);
    const char *pw = acct_str_field(body, "password", true, &errors, &plen);
    const char *name = acct_str_field(body, "name", false, &errors, NULL);
    if (pw && !password_length_ok(plen))
        problem_add_error(&errors, "password", "must be 8 to 1024 bytes");
    const char *name_why = name ? body_name_problem(name) : NULL;
    if (name_why)
        problem_add_error(&errors, "name", name_why);
    if (!acct_link_request_ok(req, errors, token, tlen))
        return;
    struct accept *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->name = name;
    c->pw = pw;
    c->pwlen = plen;
    token_sha256_hex(token, tlen, c->hash);
    acct_client_budget(req, accept_allowed, c);
}

static void accept_allowed(struct request *req, void *ud)
{
    struct accept *c = ud;
    acct_hash_start(req, c->pw, c->pwlen, accept_hashed, c);
}
