/*
 * Session routes: login, refresh, logout, me, password change.
 *
 * Login flow (states as named callbacks): find the user by email (and
 * org) -> rate limits -> verify on the password pool (against the dummy PHC
 * when there is no single match, so every failure costs the same time and
 * gets the same 401) -> start a refresh-token family in one SQL call ->
 * sign the access token. A stored hash with weaker argon2 parameters than
 * the configured ones is replaced in the background; the answer does not
 * wait for it.
 *
 * Several orgs may have a user with one email. Without `org` (body) or
 * X-Org-Name the password is checked against the oldest such account only
 * (one verification, like any login): when it matches, the answer is 409
 * `org_required` (the client knows that account's password, so nothing
 * leaks to strangers, and a newer look-alike account made by someone else
 * cannot turn the owner's org-less login into a puzzling 401); otherwise
 * the same 401 as a wrong password, whose detail says that `org` picks the
 * organization.
 *
 * Limits (auth.c, sharedlimit.c): the client's budget and the account's,
 * taken in one round trip after the lookup (keyed by the user found, so
 * another org's account with the same email neither shares nor resets it)
 * and before the password is hashed.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "auth/cache.h"
#include "auth/internal.h"
#include "auth/password.h"
#include "auth/tokens.h"
#include "core/config.h"
#include "core/log.h"
#include "core/body.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"

#define LOGIN_401                                                                                  \
    "Invalid email or password. If this email belongs to several organizations, name one "         \
    "with `org` (or X-Org-Name)."
#define REFRESH_401 "The refresh token is invalid, expired or revoked."
#define EMAIL_MAX 254

static void login_post(struct request *req);
static void refresh_post(struct request *req);
static void logout_post(struct request *req);
static void me_get(struct request *req);
static void password_post(struct request *req);

const struct route session_routes[] = {
    {HTTP_POST, "/v1/auth/login", AUTH_NONE, login_post, "login"},
    {HTTP_POST, "/v1/auth/refresh", AUTH_NONE, refresh_post, "refreshToken"},
    {HTTP_POST, "/v1/auth/logout", AUTH_NONE, logout_post, "logout"},
    {HTTP_GET, "/v1/auth/me", AUTH_ANY, me_get, "getMe"},
    {HTTP_POST, "/v1/auth/password", AUTH_USER, password_post, "changePassword"},
    {0},
};

/* LIMIT 2: one row is a match, two mean "ambiguous without org"; the
 * oldest account first. */
static const struct db_stmt login_find = {
    .name = "auth_login_find",
    .sql = "SELECT u.id, u.password_hash, o.status FROM public.users u"
           " JOIN public.orgs o ON o.id = u.org_id"
           " WHERE u.email = $1 AND o.status <> 'deleted'"
           " AND ($2::text IS NULL OR o.slug = lower($2))"
           " ORDER BY u.created_at, u.id LIMIT 2",
};

/* The sign-in's audit event commits with its refresh token (migration
 * 0010): $4 client IP, $5 request id. */
static const struct db_stmt issue_refresh = {
    .name = "auth_issue_refresh",
    .sql = "WITH r AS (SELECT public.tenantd_issue_refresh($1::uuid, $2, $3::bigint) AS j),"
           " a AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action,"
           " target_type, target_id, ip, request_id)"
           " SELECT (r.j->'org'->>'id')::uuid, 'user', $1, 'auth.login', 'user', $1, $4, $5"
           " FROM r WHERE r.j->>'status' = 'ok')"
           " SELECT j FROM r",
};

/* A failed sign-in of a known account (audit log). */
static const struct db_stmt login_failed_audit = {
    .name = "auth_login_failed_audit",
    .sql = "SELECT public.tenantd_audit(u.org_id, 'anonymous', NULL, 'auth.login_failed',"
           " 'user', u.id::text, $2, $3, '{}') FROM public.users u WHERE u.id = $1::uuid",
};

/* With TENANTD_REFRESH_REUSE_GRACE_S ($4; migration 0010): the successor
 * ($2) is derived from the presented token, so a tab that presents it again
 * within the grace names the same successor and gets it back. */
static const struct db_stmt rotate_refresh = {
    .name = "auth_rotate_refresh",
    .sql = "SELECT public.tenantd_refresh_grace($1, $2, $3::bigint, $4::bigint)",
};

/* Logout ends the whole session: every token of the family, under the
 * user's row lock so that a rotation in flight cannot slip a token past it
 * (migration 0008). */
static const struct db_stmt revoke_family = {
    .name = "auth_logout",
    .sql = "SELECT public.tenantd_logout($1)",
};

static const struct db_stmt me_user = {
    .name = "auth_me_user",
    .sql = "SELECT json_build_object('user', public.tenantd_user_json(u),"
           " 'org', public.tenantd_org_json(o))"
           " FROM public.users u JOIN public.orgs o ON o.id = u.org_id"
           " WHERE u.id = $1 AND u.org_id = $2",
};

static const struct db_stmt me_key = {
    .name = "auth_me_key",
    .sql = "SELECT json_build_object('user', NULL, 'api_key', json_build_object('id', k.id,"
           " 'name', k.name, 'role', k.role, 'prefix', k.prefix,"
           " 'created_at', public.tenantd_ts(k.created_at)),"
           " 'org', public.tenantd_org_json(o))"
           " FROM public.api_keys k JOIN public.orgs o ON o.id = k.org_id"
           " WHERE k.id = $1 AND k.org_id = $2",
};

static const struct db_stmt pw_current = {
    .name = "auth_pw_current",
    .sql = "SELECT password_hash FROM public.users WHERE id = $1 AND org_id = $2",
};

/* Only if the hash is still the one verified (a concurrent change wins);
 * the new token_version kills every access token at once, and the
 * refresh tokens go in the same statement. */
static const struct db_stmt pw_update = {
    .name = "auth_pw_update",
    .sql = "WITH u AS (UPDATE public.users SET password_hash = $3,"
           " token_version = token_version + 1, updated_at = now()"
           " WHERE id = $1 AND org_id = $2 AND password_hash = $4 RETURNING id),"
           " r AS (UPDATE public.refresh_tokens SET revoked_at = now()"
           " WHERE user_id IN (SELECT id FROM u) AND revoked_at IS NULL),"
           /* Its audit event (migration 0010): $5 client IP, $6 request id. */
           " a AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action,"
           " target_type, target_id, ip, request_id) SELECT $2::uuid, 'user', u.id::text,"
           " 'user.password_changed', 'user', u.id::text, $5, $6 FROM u)"
           " SELECT id FROM u",
};

static const struct db_stmt rehash_update = {
    .name = "auth_rehash",
    .sql = "UPDATE public.users SET password_hash = $2 WHERE id = $1 AND password_hash = $3",
};

/* ---- small helpers ---- */

/* A string field: NULL when absent/null (an error when required) or not
 * a string (always an error). */
static const char *str_field(json_t *body, const char *name, bool required, json_t **errors,
                             size_t *len)
{
    json_t *v = json_object_get(body, name);
    if (!v || json_is_null(v)) {
        if (required)
            problem_add_error(errors, name, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        problem_add_error(errors, name, "must be a string");
        return NULL;
    }
    if (len)
        *len = json_string_length(v);
    return json_string_value(v);
}

static void respond_busy(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "Too many password checks in progress; retry soon.");
}

void auth_ratelimit_headers(struct request *req, const struct ratelimit_result *r)
{
    char v[24];
    snprintf(v, sizeof v, "%u", r->limit);
    http_set_header(req, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%u", r->remaining);
    http_set_header(req, "RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%u", r->reset_s);
    http_set_header(req, "RateLimit-Reset", v);
}

void auth_ratelimit_refuse(struct request *req, const struct ratelimit_result *r, const char *what)
{
    char v[24];
    snprintf(v, sizeof v, "%u", r->retry_after_s);
    http_set_header(req, "Retry-After", v);
    auth_ratelimit_headers(req, r);
    problem_respond(
        req, PROBLEM_RATE_LIMITED,
        arena_printf(req->arena, "Too many %s; retry in %u seconds.", what, r->retry_after_s));
}

void auth_signup_limit(struct request *req, void (*go)(struct request *req, void *ud), void *ud)
{
    limit_gate(req, LIMIT_SIGNUP, NULL, "signups from this address", go, ud);
}

/* *shown becomes the tighter of itself and r, for the RateLimit headers of
 * the final answer (the client's budget and the account's). */
static void rate_show(struct ratelimit_result *shown, bool *have,
                      const struct ratelimit_result *r)
{
    if (r && (!*have || r->remaining < shown->remaining))
        *shown = *r;
    *have = *have || r;
}

/*
 * Answers 200 with a token pair from a tenantd_issue_refresh /
 * tenantd_refresh result ({"status":"ok","user","org","role",
 * "token_version"}) and the plain refresh token. Other statuses: 401/403.
 */
void auth_respond_tokens(struct request *req, PGresult *res, const char *refresh,
                         const char *fail_detail, int http_status)
{
    json_error_t err;
    json_t *j = NULL;
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        j = json_loads(PQgetvalue(res, 0, 0), 0, &err);
    const char *status = j ? json_string_value(json_object_get(j, "status")) : NULL;
    if (!status) {
        json_decref(j);
        log_msg(LOG_ERROR, "auth: token function returned no status");
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    if (strcmp(status, "ok") != 0) {
        bool suspended = strcmp(status, "suspended") == 0;
        if (strcmp(status, "reused") == 0)
            log_msg(LOG_WARN, "auth: a rotated refresh token was reused; its family is revoked");
        json_decref(j);
        if (suspended)
            problem_respond(req, PROBLEM_FORBIDDEN, "This organization is suspended.");
        else
            auth_respond_unauthorized(req, fail_detail);
        return;
    }
    json_t *user = json_object_get(j, "user"), *org = json_object_get(j, "org");
    const char *uid = json_string_value(json_object_get(user, "id"));
    const char *oid = json_string_value(json_object_get(org, "id"));
    const char *role = json_string_value(json_object_get(j, "role"));
    json_t *ver = json_object_get(j, "token_version");
    char access[JWT_SIGNED_MAX];
    if (!uid || !oid || !role || !json_is_integer(ver) ||
        auth_sign_access(uid, oid, role, json_integer_value(ver), access, sizeof access) < 0) {
        json_decref(j);
        log_msg(LOG_ERROR, "auth: cannot sign an access token");
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    json_t *out = json_pack("{s:s, s:s, s:s, s:I, s:O, s:O}", "access_token", access,
                            "refresh_token", refresh, "token_type", "Bearer", "expires_in",
                            (json_int_t)auth_access_ttl(), "user", user, "org", org);
    json_decref(j);
    if (!out) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    http_set_header(req, "Cache-Control", "no-store");
    http_respond_json(req, http_status, out);
}

static void respond_tokens(struct request *req, PGresult *res, const char *refresh,
                           const char *fail_detail)
{
    auth_respond_tokens(req, res, refresh, fail_detail, 200);
}

/* ---- background re-hash (parameters raised since the hash was made) ---- */

struct rehash {
    struct rehash *next, **pprev; /* in the loop's list; pprev NULL once orphaned */
    struct loop_ctx *ctx;
    bool in_db;
    char user_id[CACHE_ID_LEN + 1];
    char *old_phc, *new_phc;
    const char *params[3];
};

static void rehash_free(struct rehash *rh)
{
    if (rh->pprev) {
        *rh->pprev = rh->next;
        if (rh->next)
            rh->next->pprev = rh->pprev;
    }
    free(rh->old_phc);
    free(rh->new_phc);
    free(rh);
}

static void rehash_done(struct db_result *r, void *ud)
{
    struct rehash *rh = ud;
    if (r->status != DB_OK)
        log_msg(LOG_WARN, "auth: storing a re-hashed password failed; next login retries");
    rehash_free(rh);
}

static void rehash_hashed(void *ud, int status, const char *phc)
{
    struct rehash *rh = ud;
    if (status != PASSWORD_OK || !rh->ctx->db || !(rh->new_phc = strdup(phc))) {
        rehash_free(rh);
        return;
    }
    rh->in_db = true;
    rh->params[0] = rh->user_id;
    rh->params[1] = rh->new_phc;
    rh->params[2] = rh->old_phc;
    db_query(rh->ctx->db, NULL, &rehash_update, 3, rh->params, rehash_done, rh);
}

static void rehash_start(struct request *req, const char *user_id, const char *old_phc,
                         const char *pw, size_t len)
{
    struct auth_loop *st = auth_loop_state();
    if (!st)
        return;
    struct rehash *rh = calloc(1, sizeof *rh);
    if (!rh || !(rh->old_phc = strdup(old_phc))) {
        free(rh);
        return;
    }
    rh->ctx = req->ctx;
    snprintf(rh->user_id, sizeof rh->user_id, "%s", user_id);
    rh->next = st->rehashes;
    if (rh->next)
        rh->next->pprev = &rh->next;
    rh->pprev = &st->rehashes;
    st->rehashes = rh;
    if (password_hash_async(req->ctx->loop, pw, len, rehash_hashed, rh) != PASSWORD_OK)
        rehash_free(rh); /* busy: the next login tries again */
}

void session_loop_stop(struct auth_loop *st)
{
    /* After password_loop_detach: jobs still outside the database will never
     * call back (dropped), so free them; those in the database finish when
     * the pool closes, without a list to unlink from. */
    struct rehash *rh = st->rehashes;
    st->rehashes = NULL;
    while (rh) {
        struct rehash *next = rh->next;
        rh->pprev = NULL;
        rh->next = NULL;
        if (!rh->in_db)
            rehash_free(rh);
        rh = next;
    }
}

/* ---- POST /v1/auth/login ---- */

struct login {
    struct request *req;
    const char *email, *pw, *org;
    size_t pwlen;
    const char *params[5];
    char user_id[CACHE_ID_LEN + 1];
    const char *phc; /* arena copy; NULL = no single match */
    char refresh[TOKEN_REFRESH_BUFSZ];
    char refresh_hash[TOKEN_SHA256_HEX_BUFSZ];
    char ttl[24];
    struct ratelimit_result rl;
    bool have_rl;
    bool ambiguous; /* no org given, several accounts: phc is the oldest's */
    char *key;      /* the account's rate-limit key */
};

static void login_issued(struct db_result *r, void *ud)
{
    struct login *l = ud;
    if (db_failed(l->req, r, "login"))
        return;
    respond_tokens(l->req, r->res, l->refresh, LOGIN_401);
}

static void login_failed_logged(struct db_result *r, void *ud)
{
    struct login *l = ud;
    if (db_failed(l->req, r, "login"))
        return;
    auth_respond_unauthorized(l->req, LOGIN_401);
}

static void login_verified(void *ud, int status, bool ok, bool needs_rehash)
{
    struct login *l = ud;
    struct request *req = l->req;
    if (l->have_rl)
        auth_ratelimit_headers(req, &l->rl);
    if (status == PASSWORD_ECANCELED || status == PASSWORD_EBUSY) {
        respond_busy(req);
        return;
    }
    if (status != PASSWORD_OK) {
        log_msg(LOG_ERROR, "auth: password verification failed (status %d)", status);
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be checked.");
        return;
    }
    if (!ok || !l->phc) {
        if (l->phc) { /* a known account: the failure goes to its org's audit log */
            l->params[0] = l->user_id;
            l->params[1] = req->client_ip;
            l->params[2] = req->request_id;
            db_query(req->ctx->db, NULL, &login_failed_audit, 3, l->params, login_failed_logged,
                     l);
            return;
        }
        auth_respond_unauthorized(req, LOGIN_401);
        return;
    }
    if (l->ambiguous) {
        problem_respond(req, PROBLEM_ORG_REQUIRED,
                        "This email belongs to several organizations: send `org` (the "
                        "organization's slug) or X-Org-Name.");
        return;
    }
    limit_login_succeeded(req, l->key);
    if (needs_rehash)
        rehash_start(req, l->user_id, l->phc, l->pw, l->pwlen);
    if (token_refresh_new(l->refresh) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(l->refresh, strlen(l->refresh), l->refresh_hash);
    snprintf(l->ttl, sizeof l->ttl, "%lld", (long long)auth_refresh_ttl());
    l->params[0] = l->user_id;
    l->params[1] = l->refresh_hash;
    l->params[2] = l->ttl;
    l->params[3] = req->client_ip;
    l->params[4] = req->request_id;
    db_query(req->ctx->db, NULL, &issue_refresh, 5, l->params, login_issued, l);
}

static void login_key_allowed(struct request *req, void *ud, const struct ratelimit_result *r);

static void login_found(struct db_result *r, void *ud)
{
    struct login *l = ud;
    struct request *req = l->req;
    if (db_failed(req, r, "login lookup"))
        return;
    int n = PQntuples(r->res);
    if (n >= 1) {
        snprintf(l->user_id, sizeof l->user_id, "%s", PQgetvalue(r->res, 0, 0));
        l->phc = arena_strdup(req->arena, PQgetvalue(r->res, 0, 1));
        l->ambiguous = n > 1;
        assert(!l->ambiguous || !l->org); /* a slug names one org */
        l->key = arena_printf(req->arena, "u:%s", l->user_id);
    } else {
        l->key = arena_printf(req->arena, "e:%s\n%s", l->org ? l->org : "", l->email);
    }
    limit_take(req, LIMIT_LOGIN_KEY, l->key, "attempts", login_key_allowed, l);
}

static void login_key_allowed(struct request *req, void *ud, const struct ratelimit_result *r)
{
    struct login *l = ud;
    rate_show(&l->rl, &l->have_rl, r);
    /* No match: verify against the dummy, same cost. */
    int rc = password_verify_async(req->ctx->loop, l->pw, l->pwlen, l->phc, login_verified, l);
    if (rc == PASSWORD_EBUSY) {
        respond_busy(req);
    } else if (rc != PASSWORD_OK) {
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be checked.");
    }
}

static void login_post(struct request *req)
{
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    size_t elen = 0, plen = 0, olen = 0;
    const char *email = str_field(body, "email", true, &errors, &elen);
    const char *pw = str_field(body, "password", true, &errors, &plen);
    const char *org = str_field(body, "org", false, &errors, &olen);
    if (email && (elen == 0 || elen > EMAIL_MAX))
        problem_add_error(&errors, "email", "must be 1..254 characters");
    if (pw && plen > PASSWORD_MAX_LEN)
        problem_add_error(&errors, "password", "must be at most 1024 bytes");
    if (org && (olen == 0 || olen > 100))
        problem_add_error(&errors, "org", "must be an organization slug");
    if (errors) {
        problem_respond_errors(req, "The login request has invalid fields.", errors);
        return;
    }
    struct login *l = arena_calloc(req->arena, sizeof *l);
    l->req = req;
    char *lower = arena_strndup(req->arena, email, elen);
    for (char *p = lower; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    l->email = lower;
    /* The body's strings live as long as the request (arena cleanup). */
    l->pw = pw;
    l->pwlen = plen;
    l->org = org ? org : http_header(req, "X-Org-Name");
    if (strlen(lower) != elen) { /* an embedded NUL cannot be anyone's email */
        l->email = "";
    }
    /* The limits (client, account) are taken together once the account is
     * known: one round trip, still before any hashing. */
    l->params[0] = l->email;
    l->params[1] = l->org;
    db_query(req->ctx->db, NULL, &login_find, 2, l->params, login_found, l);
}

/* ---- POST /v1/auth/refresh ---- */

struct refresh {
    struct request *req;
    char next[TOKEN_REFRESH_BUFSZ];
    char old_hash[TOKEN_SHA256_HEX_BUFSZ], new_hash[TOKEN_SHA256_HEX_BUFSZ];
    char ttl[24], grace[24];
    const char *params[4];
};

static void refresh_done(struct db_result *r, void *ud)
{
    struct refresh *f = ud;
    if (db_failed(f->req, r, "refresh"))
        return;
    respond_tokens(f->req, r->res, f->next, REFRESH_401);
}

/* The refresh_token field, checked for shape; NULL after answering. */
static const char *refresh_field(struct request *req, size_t *len)
{
    json_t *body = body_object(req, false);
    if (!body)
        return NULL;
    json_t *errors = NULL;
    const char *tok = str_field(body, "refresh_token", true, &errors, len);
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return NULL;
    }
    return tok;
}

static void refresh_post(struct request *req)
{
    size_t len = 0;
    const char *tok = refresh_field(req, &len);
    if (!tok)
        return;
    if (!token_refresh_valid(tok, len)) {
        auth_respond_unauthorized(req, REFRESH_401);
        return;
    }
    struct refresh *f = arena_calloc(req->arena, sizeof *f);
    f->req = req;
    if (auth_refresh_successor(tok, len, f->next) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(tok, len, f->old_hash);
    token_sha256_hex(f->next, strlen(f->next), f->new_hash);
    snprintf(f->ttl, sizeof f->ttl, "%lld", (long long)auth_refresh_ttl());
    f->params[0] = f->old_hash;
    f->params[1] = f->new_hash;
    f->params[2] = f->ttl;
    snprintf(f->grace, sizeof f->grace, "%lld", (long long)g_config->refresh_reuse_grace_s);
    f->params[3] = f->grace;
    db_query(req->ctx->db, NULL, &rotate_refresh, 4, f->params, refresh_done, f);
}

/* ---- POST /v1/auth/logout ---- */

static void logout_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "logout"))
        return;
    http_respond_empty(req, 204);
}

static void logout_post(struct request *req)
{
    size_t len = 0;
    const char *tok = refresh_field(req, &len);
    if (!tok)
        return;
    /* Like RFC 7009: an unknown or malformed token is simply not there to
     * revoke; the answer is the same 204. */
    if (!token_refresh_valid(tok, len)) {
        http_respond_empty(req, 204);
        return;
    }
    char *hash = arena_alloc(req->arena, TOKEN_SHA256_HEX_BUFSZ);
    token_sha256_hex(tok, len, hash);
    const char **params = arena_alloc(req->arena, sizeof *params);
    params[0] = hash;
    db_query(req->ctx->db, NULL, &revoke_family, 1, params, logout_done, req);
}

/* ---- GET /v1/auth/me ---- */

static void me_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "me"))
        return;
    if (PQntuples(r->res) != 1 || PQgetisnull(r->res, 0, 0)) {
        auth_respond_unauthorized(req, "The credential is missing, invalid or expired.");
        return;
    }
    const char *v = PQgetvalue(r->res, 0, 0);
    http_respond(req, 200, "application/json", v, (size_t)PQgetlength(r->res, 0, 0));
}

static void me_get(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    const char **params = arena_alloc(req->arena, 2 * sizeof *params);
    params[0] = a->principal_id;
    params[1] = a->org_id;
    db_query(req->ctx->db, NULL, a->kind == AUTH_KIND_KEY ? &me_key : &me_user, 2, params, me_done,
             req);
}

/* ---- POST /v1/auth/password ---- */

struct pwchange {
    struct request *req;
    const char *current, *next;
    size_t current_len, next_len;
    const char *old_phc, *new_phc;
    const char *params[6];
    struct ratelimit_result rl;
    bool have_rl;
};

static void pw_updated(struct db_result *r, void *ud)
{
    struct pwchange *c = ud;
    if (db_failed(c->req, r, "password change"))
        return;
    if (PQntuples(r->res) != 1) {
        problem_respond(c->req, PROBLEM_CONFLICT,
                        "The password was changed by another request meanwhile.");
        return;
    }
    /* This process at once; the others through the trigger's NOTIFY. */
    auth_cache_forget_user(auth_ctx(c->req)->principal_id);
    http_respond_empty(c->req, 204);
}

static void pw_hashed(void *ud, int status, const char *phc)
{
    struct pwchange *c = ud;
    if (status == PASSWORD_ECANCELED || status == PASSWORD_EBUSY) {
        respond_busy(c->req);
        return;
    }
    if (status != PASSWORD_OK) {
        problem_respond(c->req, PROBLEM_INTERNAL, "The password could not be hashed.");
        return;
    }
    const struct auth_ctx *a = auth_ctx(c->req);
    c->new_phc = arena_strdup(c->req->arena, phc);
    c->params[0] = a->principal_id;
    c->params[1] = a->org_id;
    c->params[2] = c->new_phc;
    c->params[3] = c->old_phc;
    c->params[4] = c->req->client_ip;
    c->params[5] = c->req->request_id;
    db_query(c->req->ctx->db, NULL, &pw_update, 6, c->params, pw_updated, c);
}

static void pw_verified(void *ud, int status, bool ok, bool needs_rehash)
{
    (void)needs_rehash; /* the new hash uses the current parameters anyway */
    struct pwchange *c = ud;
    if (status == PASSWORD_ECANCELED || status == PASSWORD_EBUSY) {
        respond_busy(c->req);
        return;
    }
    if (status != PASSWORD_OK) {
        problem_respond(c->req, PROBLEM_INTERNAL, "The password could not be checked.");
        return;
    }
    if (!ok) {
        json_t *errors = NULL;
        problem_add_error(&errors, "current_password", "is incorrect");
        problem_respond_errors(c->req, "The current password is incorrect.", errors);
        return;
    }
    int rc = password_hash_async(c->req->ctx->loop, c->next, c->next_len, pw_hashed, c);
    if (rc == PASSWORD_EBUSY)
        respond_busy(c->req);
    else if (rc != PASSWORD_OK)
        problem_respond(c->req, PROBLEM_INTERNAL, "The password could not be hashed.");
}

static void pw_loaded(struct db_result *r, void *ud)
{
    struct pwchange *c = ud;
    if (db_failed(c->req, r, "password lookup"))
        return;
    if (PQntuples(r->res) != 1) {
        auth_respond_unauthorized(c->req, "The credential is missing, invalid or expired.");
        return;
    }
    c->old_phc = arena_strdup(c->req->arena, PQgetvalue(r->res, 0, 0));
    int rc = password_verify_async(c->req->ctx->loop, c->current, c->current_len, c->old_phc,
                                   pw_verified, c);
    if (rc == PASSWORD_EBUSY)
        respond_busy(c->req);
    else if (rc != PASSWORD_OK)
        problem_respond(c->req, PROBLEM_INTERNAL, "The password could not be checked.");
}

static void pw_key_allowed(struct request *req, void *ud, const struct ratelimit_result *r);

static void password_post(struct request *req)
{
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    struct pwchange *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->current = str_field(body, "current_password", true, &errors, &c->current_len);
    c->next = str_field(body, "new_password", true, &errors, &c->next_len);
    if (c->current && c->current_len > PASSWORD_MAX_LEN)
        problem_add_error(&errors, "current_password", "must be at most 1024 bytes");
    if (c->next && !password_length_ok(c->next_len))
        problem_add_error(&errors, "new_password", "must be 8..1024 bytes");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    /* Guessing the current password with a stolen access token is limited
     * like logins: per client IP and per user. */
    const struct auth_ctx *a = auth_ctx(req);
    limit_take(req, LIMIT_LOGIN_KEY, arena_printf(req->arena, "pw:%s", a->principal_id),
               "attempts", pw_key_allowed, c);
}

static void pw_key_allowed(struct request *req, void *ud, const struct ratelimit_result *r)
{
    struct pwchange *c = ud;
    rate_show(&c->rl, &c->have_rl, r);
    const struct auth_ctx *a = auth_ctx(req);
    c->params[0] = a->principal_id;
    c->params[1] = a->org_id;
    db_query(req->ctx->db, NULL, &pw_current, 2, c->params, pw_loaded, c);
}
