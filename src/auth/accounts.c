/*
 * Accounts: invitations, password reset and email verification (README
 * "Accounts"; API.md). The audit-log routes live in audit.c; both tables
 * make accounts_module.
 *
 * Links mailed to people carry a token of 32 random bytes (base64url, 43
 * chars) stored only as hex SHA-256 with an expiry; each route is one SQL
 * function of migration 0010 that changes the rows, queues the mail (an
 * email.send job) and writes the audit event in one transaction, and that
 * uses a token at most once even under concurrent requests.
 *
 * Password reset answers 202 whether or not the account exists, after the
 * same single statement either way, so neither the answer nor its timing
 * tells who has an account.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/cache.h"
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
#include "job/email.h"

static void invitations_create(struct request *req);
static void invitations_list(struct request *req);
static void invitations_revoke(struct request *req);
static void invitations_accept(struct request *req);
static void reset_request(struct request *req);
static void reset_confirm(struct request *req);
static void verify_request(struct request *req);
static void verify_confirm(struct request *req);
void audit_list(struct request *req);
void audit_list_operator(struct request *req);

const struct route accounts_routes[] = {
    {HTTP_POST, "/v1/invitations", AUTH_ADMIN, invitations_create, "createInvitation"},
    {HTTP_GET, "/v1/invitations", AUTH_ADMIN, invitations_list, "listInvitations"},
    {HTTP_DELETE, "/v1/invitations/{id}", AUTH_ADMIN, invitations_revoke, "revokeInvitation"},
    {HTTP_POST, "/v1/invitations/accept", AUTH_NONE, invitations_accept, "acceptInvitation"},
    {HTTP_POST, "/v1/auth/password-reset", AUTH_NONE, reset_request, "requestPasswordReset"},
    {HTTP_POST, "/v1/auth/password-reset/confirm", AUTH_NONE, reset_confirm,
     "confirmPasswordReset"},
    {HTTP_POST, "/v1/auth/verify-email", AUTH_USER, verify_request, "requestEmailVerification"},
    {HTTP_POST, "/v1/auth/verify-email/confirm", AUTH_NONE, verify_confirm,
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
    "SELECT coalesce(json_agg(public.tenantd_invitation_json(i) ORDER BY i.created_at, i.id),"
    " '[]')::text FROM public.invitations i WHERE i.org_id = $1::uuid AND i.accepted_at IS NULL"
    " AND i.revoked_at IS NULL AND i.expires_at > now()",
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

static const struct db_stmt q_token_request = {
    "acct_token_request",
    "SELECT public.tenantd_account_token_request($1, $2::uuid, $3, $4, $5, $6::bigint, $7, $8,"
    " $9, $10, $11)",
};

static const struct db_stmt q_token_use = {
    "acct_token_use",
    "SELECT public.tenantd_account_token_use($1, $2, $3, $4, $5)",
};

/* ---- mails ------------------------------------------------------------------ */

#define LINK_TOKEN_BYTES 32
#define LINK_TOKEN_LEN TOKEN_B64URL_LEN(LINK_TOKEN_BYTES) /* 43 */

enum mail_kind { MAIL_INVITATION, MAIL_PASSWORD_RESET, MAIL_VERIFY_EMAIL };

/* The templates: %1$s is the organization, %2$s the link, %3$s the role
 * (invitations). In the HTML part every value is HTML-escaped. Each
 * plain-text part has its link on a line of its own. */
static const struct mail_template {
    const char *path; /* the frontend page, under TENANTD_PUBLIC_URL */
    const char *subject, *text, *html;
} templates[] = {
    [MAIL_INVITATION] =
        {"/invitations/accept", "You are invited to join %1$s",
         "Hello,\n\nYou have been invited to join the organization %1$s as %3$s.\n\n"
         "Accept the invitation here (the link works once):\n\n%2$s\n\n"
         "If you did not expect this invitation, you can ignore this mail.\n",
         "<!doctype html><html><body><p>Hello,</p><p>You have been invited to join the "
         "organization <b>%1$s</b> as %3$s.</p><p><a href=\"%2$s\">Accept the invitation</a> "
         "(the link works once).</p><p>If you did not expect this invitation, you can ignore "
         "this mail.</p></body></html>"},
    [MAIL_PASSWORD_RESET] =
        {"/password-reset", "Reset your password for %1$s",
         "Hello,\n\nSomeone asked to reset the password of your account in %1$s.\n\n"
         "Choose a new password here (the link works once, for a short time):\n\n%2$s\n\n"
         "If you did not ask for this, ignore this mail: your password stays as it is.\n",
         "<!doctype html><html><body><p>Hello,</p><p>Someone asked to reset the password of "
         "your account in <b>%1$s</b>.</p><p><a href=\"%2$s\">Choose a new password</a> (the "
         "link works once, for a short time).</p><p>If you did not ask for this, ignore this "
         "mail: your password stays as it is.</p></body></html>"},
    [MAIL_VERIFY_EMAIL] =
        {"/verify-email", "Confirm your email address for %1$s",
         "Hello,\n\nPlease confirm that this is your email address for %1$s:\n\n%2$s\n\n"
         "If you did not ask for this, you can ignore this mail.\n",
         "<!doctype html><html><body><p>Hello,</p><p>Please confirm that this is your email "
         "address for <b>%1$s</b>:</p><p><a href=\"%2$s\">Confirm my email address</a></p>"
         "<p>If you did not ask for this, you can ignore this mail.</p></body></html>"},
};

static const char *html_escape(struct arena *a, const char *s)
{
    size_t n = 0;
    for (const char *p = s; *p; p++)
        n += strchr("<>&\"'", *p) ? 6 : 1;
    char *out = arena_alloc(a, n + 1), *o = out;
    for (const char *p = s; *p; p++) {
        const char *e = *p == '<'    ? "&lt;"
                        : *p == '>'  ? "&gt;"
                        : *p == '&'  ? "&amp;"
                        : *p == '"'  ? "&quot;"
                        : *p == '\'' ? "&#39;"
                                     : NULL;
        if (e) {
            memcpy(o, e, strlen(e));
            o += strlen(e);
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

struct mail {
    const char *subject, *text, *html;
};

/* The mail of `kind` for org (its slug) and token, into the arena. */
static struct mail mail_render(struct arena *a, enum mail_kind kind, const char *org,
                               const char *token, const char *role)
{
    const struct mail_template *t = &templates[kind];
    const char *base = g_config->public_url ? g_config->public_url : "";
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    const char *link = arena_printf(a, "%.*s%s?token=%s", (int)blen, base, t->path, token);
    const char *r = role ? role : "";
    /* The formats are the constant templates above. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    struct mail m = {
        .subject = arena_printf(a, t->subject, org, link, r),
        .text = arena_printf(a, t->text, org, link, r),
        .html =
            arena_printf(a, t->html, html_escape(a, org), html_escape(a, link), html_escape(a, r)),
    };
#pragma GCC diagnostic pop
    return m;
}

/* ---- helpers ------------------------------------------------------------------ */

/* A new link token and its hash. False after answering 500. */
static bool link_token_new(struct request *req, char **token, char **hash)
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

static void respond_token_invalid(struct request *req, const char *status)
{
    const char *detail = !strcmp(status, "used")
                             ? "This link was already used; each link works once."
                         : !strcmp(status, "expired") ? "This link has expired; ask for a new one."
                         : !strcmp(status, "revoked") ? "This invitation was withdrawn."
                                                      : "This link is not valid.";
    problem_respond(req, PROBLEM_TOKEN_INVALID, detail);
}

/* A string field of body: NULL when absent (an error when required), an
 * error when not a string or holding a NUL. */
static const char *str_field(json_t *body, const char *name, bool required, json_t **errors,
                             size_t *len)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        if (required)
            problem_add_error(errors, name, "is required");
        return NULL;
    }
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        problem_add_error(errors, name, "must be a string without NUL characters");
        return NULL;
    }
    if (len)
        *len = json_string_length(v);
    return json_string_value(v);
}

static const char *lower_dup(struct arena *a, const char *s)
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

/* The per-client budget of logins (shared by all instances) also covers
 * these unauthenticated routes (each costs an argon2 hash or a mail): go
 * runs when it allows, else 429. */
static void client_budget(struct request *req, void (*go)(struct request *req, void *ud), void *ud)
{
    limit_gate(req, LIMIT_LOGIN_IP, NULL, "requests from this client; try again later", go, ud);
}

/* The common gate of the routes that take a link's token: the fields'
 * errors (422), then the token's shape (400 token_invalid, no query). False
 * when answered; the caller then asks client_budget. */
static bool link_request_ok(struct request *req, json_t *errors, const char *token, size_t tlen)
{
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return false;
    }
    if (!link_token_shape(token, tlen)) {
        respond_token_invalid(req, "invalid");
        return false;
    }
    return true;
}

static void respond_busy(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "The server is busy; try again shortly.");
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

static void org_query(struct request *req, const struct db_stmt *stmt, int n,
                      const char *const *values, db_cb cb, void *ud)
{
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    db_query(pool, NULL, stmt, n, values, cb, ud);
}

static const char *ttl_text(struct request *req, int64_t s)
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
    const char *email = str_field(body, "email", true, &errors, NULL);
    if (email && !body_email_valid(email)) {
        problem_add_error(&errors, "email",
                          "must be a valid email address of at most 254 characters");
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
    if (!link_token_new(req, &token, &hash))
        return;
    email = lower_dup(req->arena, email);
    struct mail m = mail_render(req->arena, MAIL_INVITATION, a->slug ? a->slug : "", token, role);
    const char *atype, *aid;
    actor_of(a, &atype, &aid);
    const char **v = arena_alloc(req->arena, 12 * sizeof *v);
    v[0] = a->org_id;
    v[1] = email;
    v[2] = role;
    v[3] = hash;
    v[4] = ttl_text(req, g_config->invitation_ttl_s);
    v[5] = atype;
    v[6] = aid;
    v[7] = req->client_ip;
    v[8] = req->request_id;
    v[9] = m.subject;
    v[10] = m.text;
    v[11] = m.html;
    org_query(req, &q_inv_create, 12, v, inv_created, req);
}

/* ---- GET /v1/invitations, DELETE /v1/invitations/{id} ------------------------------ */

static void inv_listed(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (!db_failed(req, r, "list invitations"))
        db_respond_list(req, r);
}

static void invitations_list(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char **v = arena_alloc(req->arena, sizeof *v);
    v[0] = a->org_id;
    org_query(req, &q_inv_list, 1, v, inv_listed, req);
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
    v[1] = lower_dup(req->arena, id);
    v[2] = atype;
    v[3] = aid;
    v[4] = req->client_ip;
    v[5] = req->request_id;
    org_query(req, &q_inv_revoke, 6, v, inv_revoked, req);
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
        respond_token_invalid(req, status);
    } else {
        auth_respond_tokens(req, r->res, c->refresh, "This link is not valid.", 201);
    }
}

static void accept_hashed(void *ud, int status, const char *phc)
{
    struct accept *c = ud;
    struct request *req = c->req;
    if (status == PASSWORD_EBUSY || status == PASSWORD_ECANCELED) {
        respond_busy(req);
        return;
    }
    if (status != PASSWORD_OK || !phc) {
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
        return;
    }
    if (token_refresh_new(c->refresh) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(c->refresh, strlen(c->refresh), c->refresh_hash);
    c->v[0] = c->hash;
    c->v[1] = arena_strdup(req->arena, phc);
    c->v[2] = c->name;
    c->v[3] = c->refresh_hash;
    c->v[4] = ttl_text(req, auth_refresh_ttl());
    c->v[5] = req->client_ip;
    c->v[6] = req->request_id;
    db_query(req->ctx->db, NULL, &q_inv_accept, 7, c->v, accept_done, c);
}

/* Starts hashing pw for c, or answers. */
static void hash_start(struct request *req, const char *pw, size_t len, password_hash_cb cb,
                       void *ud)
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
    const char *token = str_field(body, "token", true, &errors, &tlen);
    const char *pw = str_field(body, "password", true, &errors, &plen);
    const char *name = str_field(body, "name", false, &errors, NULL);
    if (pw && !password_length_ok(plen))
        problem_add_error(&errors, "password", "must be 8 to 1024 bytes");
    const char *name_why = name ? body_name_problem(name) : NULL;
    if (name_why)
        problem_add_error(&errors, "name", name_why);
    if (!link_request_ok(req, errors, token, tlen))
        return;
    struct accept *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->name = name;
    c->pw = pw;
    c->pwlen = plen;
    token_sha256_hex(token, tlen, c->hash);
    client_budget(req, accept_allowed, c);
}

static void accept_allowed(struct request *req, void *ud)
{
    struct accept *c = ud;
    hash_start(req, c->pw, c->pwlen, accept_hashed, c);
}

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

static void reset_request(struct request *req)
{
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"email", "org", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    size_t olen = 0;
    const char *email = str_field(body, "email", true, &errors, NULL);
    const char *org = str_field(body, "org", true, &errors, &olen);
    if (email && !body_email_valid(email))
        problem_add_error(&errors, "email",
                          "must be a valid email address of at most 254 characters");
    if (org && (olen == 0 || olen > 100))
        problem_add_error(&errors, "org", "must be an organization slug");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    struct reset_ask *a = arena_alloc(req->arena, sizeof *a);
    a->email = email;
    a->org = org;
    client_budget(req, reset_allowed, a);
}

static void reset_allowed(struct request *req, void *ud)
{
    const struct reset_ask *a = ud;
    const char *email = a->email, *org = a->org;
    char *token, *hash;
    if (!link_token_new(req, &token, &hash))
        return;
    org = lower_dup(req->arena, org);
    struct mail m = mail_render(req->arena, MAIL_PASSWORD_RESET, org, token, NULL);
    const char **v = arena_alloc(req->arena, 11 * sizeof *v);
    v[0] = "password_reset";
    v[1] = NULL;
    v[2] = lower_dup(req->arena, email);
    v[3] = org;
    v[4] = hash;
    v[5] = ttl_text(req, g_config->password_reset_ttl_s);
    v[6] = req->client_ip;
    v[7] = req->request_id;
    v[8] = m.subject;
    v[9] = m.text;
    v[10] = m.html;
    db_query(req->ctx->db, NULL, &q_token_request, 11, v, token_requested, req);
}

static void verify_request(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    if (!a || a->kind != AUTH_KIND_USER) {
        problem_respond(req, PROBLEM_FORBIDDEN, "Only a user can verify an email address.");
        return;
    }
    char *token, *hash;
    if (!link_token_new(req, &token, &hash))
        return;
    struct mail m = mail_render(req->arena, MAIL_VERIFY_EMAIL, a->slug ? a->slug : "", token, NULL);
    const char **v = arena_alloc(req->arena, 11 * sizeof *v);
    v[0] = "verify_email";
    v[1] = a->principal_id;
    v[2] = NULL;
    v[3] = NULL;
    v[4] = hash;
    v[5] = ttl_text(req, g_config->verify_email_ttl_s);
    v[6] = req->client_ip;
    v[7] = req->request_id;
    v[8] = m.subject;
    v[9] = m.text;
    v[10] = m.html;
    org_query(req, &q_token_request, 11, v, token_requested, req);
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
        respond_token_invalid(req, status);
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
    if (status == PASSWORD_EBUSY || status == PASSWORD_ECANCELED) {
        respond_busy(req);
        return;
    }
    if (status != PASSWORD_OK || !phc) {
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
        return;
    }
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
    const char *token = str_field(body, "token", true, &errors, &tlen);
    const char *pw = reset ? str_field(body, "new_password", true, &errors, &plen) : NULL;
    if (pw && !password_length_ok(plen))
        problem_add_error(&errors, "new_password", "must be 8 to 1024 bytes");
    if (!link_request_ok(req, errors, token, tlen))
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
    client_budget(req, confirm_allowed, u);
}

static void confirm_allowed(struct request *req, void *ud)
{
    struct use *u = ud;
    if (u->reset)
        hash_start(req, u->pw, u->pwlen, reset_hashed, u);
    else
        db_query(req->ctx->db, NULL, &q_token_use, 5, u->v, token_used, u);
}

static void reset_confirm(struct request *req)
{
    confirm(req, true);
}

static void verify_confirm(struct request *req)
{
    confirm(req, false);
}
