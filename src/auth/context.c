/*
 * Request authentication: auth_dispatch, main.c's dispatch hook. Finds the
 * credential (operator token, API key or access token), resolves who it
 * belongs to through the process-wide cache (one query on a miss), checks
 * the org's status, X-Org-Name and the route's auth level, then runs the
 * handler. Every refusal of a credential is the same generic 401; why it
 * was refused goes to the debug log only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth/cache.h"
#include "auth/internal.h"
#include "auth/tokens.h"
#include "core/config.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"

#define GENERIC_401 "The credential is missing, invalid or expired."

/* A user and their org in one round trip; fills both cache entries. */
static const struct db_stmt user_load = {
    .name = "auth_user_load",
    .sql = "SELECT u.org_id, u.role, u.token_version, o.status, o.schema_name, o.slug"
           " FROM public.users u JOIN public.orgs o ON o.id = u.org_id WHERE u.id = $1",
};

static const struct db_stmt key_load = {
    .name = "auth_key_load",
    .sql = "SELECT k.id, k.org_id, k.role, k.key_hash, k.revoked_at IS NOT NULL,"
           " o.status, o.schema_name, o.slug"
           " FROM public.api_keys k JOIN public.orgs o ON o.id = k.org_id WHERE k.prefix = $1",
};

static const struct db_stmt org_load = {
    .name = "auth_org_load",
    .sql = "SELECT status, schema_name, slug FROM public.orgs WHERE id = $1",
};

/* last_used_at is refreshed when a key is loaded from the database, i.e.
 * about once per cache TTL (30 s) per process, not on every request. */
static const struct db_stmt key_touch = {
    .name = "auth_key_touch",
    .sql = "UPDATE public.api_keys SET last_used_at = now() WHERE id = $1",
};

struct touch {
    char id[CACHE_ID_LEN + 1];
    const char *param;
};

static void key_touched(struct db_result *r, void *ud)
{
    if (r->status == DB_ERROR)
        log_msg(LOG_WARN, "auth: updating an API key's last use failed: %s",
                r->message ? r->message : "?");
    free(ud);
}

/* Fire and forget: the request does not wait for it. */
static void key_touch_start(struct db_pool *pool, const char *id)
{
    struct touch *t = malloc(sizeof *t);
    if (!t)
        return;
    snprintf(t->id, sizeof t->id, "%s", id);
    t->param = t->id;
    db_query(pool, NULL, &key_touch, 1, &t->param, key_touched, t);
}

/* One authentication in progress (request arena). */
struct authn {
    struct request *req;
    enum auth_kind kind;
    char principal[CACHE_ID_LEN + 1]; /* user id or API key id */
    char org_id[CACHE_ID_LEN + 1];
    enum auth_role role;
    int64_t ver; /* token's ver claim */
    char prefix[TOKEN_API_KEY_PREFIX_LEN + 1];
    char key_hash[TOKEN_SHA256_HEX_BUFSZ];
    struct cache_org org;
    uint64_t epoch;
    const char *param; /* query parameter, kept alive until the callback */
};

void auth_respond_unauthorized(struct request *req, const char *detail)
{
    http_set_header(req, "WWW-Authenticate", "Bearer realm=\"tenantd\"");
    problem_respond(req, PROBLEM_UNAUTHORIZED, detail);
}

int auth_role_parse(const char *s)
{
    if (s && strcmp(s, "admin") == 0)
        return ROLE_ADMIN;
    if (s && strcmp(s, "member") == 0)
        return ROLE_MEMBER;
    if (s && strcmp(s, "worker") == 0)
        return ROLE_WORKER;
    return -1;
}

const char *auth_role_name(enum auth_role r)
{
    return r == ROLE_ADMIN ? "admin" : r == ROLE_WORKER ? "worker" : "member";
}

static int org_status_parse(const char *s)
{
    if (strcmp(s, "active") == 0)
        return ORG_ACTIVE;
    if (strcmp(s, "suspended") == 0)
        return ORG_SUSPENDED;
    return ORG_DELETED;
}

/* Copies a text column into buf; false when NULL or too long. */
static bool col(PGresult *res, int row, int c, char *buf, size_t len)
{
    if (PQgetisnull(res, row, c))
        return false;
    const char *v = PQgetvalue(res, row, c);
    size_t n = strlen(v);
    if (n >= len)
        return false;
    memcpy(buf, v, n + 1);
    return true;
}

/* Reads (status, schema, slug) at columns c, c+1, c+2. */
static bool org_cols(PGresult *res, int c, struct cache_org *o)
{
    char status[16];
    if (!col(res, 0, c, status, sizeof status) ||
        !col(res, 0, c + 1, o->schema, sizeof o->schema) ||
        !col(res, 0, c + 2, o->slug, sizeof o->slug))
        return false;
    o->status = org_status_parse(status);
    return true;
}

/* 0 when the caller may use the route, else the problem to answer. */
static int level_check(enum auth_level level, enum auth_kind kind, enum auth_role role)
{
    bool op = kind == AUTH_KIND_OPERATOR;
    /* A worker credential may call the worker API and nothing else. */
    if (role == ROLE_WORKER || level == AUTH_WORKER)
        return role == ROLE_WORKER && level == AUTH_WORKER ? 0 : PROBLEM_FORBIDDEN;
    switch (level) {
    case AUTH_NONE:
    case AUTH_MEMBER_OR_OPERATOR:
        return 0;
    case AUTH_WORKER:
        return PROBLEM_FORBIDDEN;
    case AUTH_OPERATOR:
        return op ? 0 : PROBLEM_FORBIDDEN;
    case AUTH_ANY:
    case AUTH_MEMBER:
        return op ? PROBLEM_FORBIDDEN : 0;
    case AUTH_USER:
        return kind == AUTH_KIND_USER ? 0 : PROBLEM_FORBIDDEN;
    case AUTH_ADMIN:
        return !op && role == ROLE_ADMIN ? 0 : PROBLEM_FORBIDDEN;
    case AUTH_ADMIN_OR_KEY:
        return kind == AUTH_KIND_KEY || (kind == AUTH_KIND_USER && role == ROLE_ADMIN)
                   ? 0
                   : PROBLEM_FORBIDDEN;
    }
    return PROBLEM_FORBIDDEN;
}

static void run(struct request *req, struct auth_ctx *ctx)
{
    int p = level_check(req->route->auth, ctx->kind, ctx->role);
    if (p) {
        problem_respond(req, (enum problem)p,
                        ctx->kind == AUTH_KIND_OPERATOR
                            ? "The operator credential cannot call this route."
                            : "Your role does not allow this operation.");
        return;
    }
    req->auth = ctx;
    req->route->handler(req);
}

static void org_allowed(struct request *req, void *ud);

/* Principal and org known: the org's state, X-Org-Name, the org's budget,
 * then the level. */
static void finish(struct authn *a)
{
    struct request *req = a->req;
    if (a->org.status == ORG_DELETED) {
        log_msg(LOG_DEBUG, "auth: org %s is deleted", a->org_id);
        auth_respond_unauthorized(req, GENERIC_401);
        return;
    }
    if (a->org.status == ORG_SUSPENDED) {
        problem_respond(req, PROBLEM_FORBIDDEN, "This organization is suspended.");
        return;
    }
    const char *want = http_header(req, "X-Org-Name");
    if (want && strcasecmp(want, a->org.slug) != 0) {
        problem_respond(req, PROBLEM_FORBIDDEN,
                        "X-Org-Name names another organization than the credential's.");
        return;
    }
    /* One org's traffic must not starve the others' share of the database
     * (a budget shared by all instances, mostly from a local lease). */
    limit_gate(req, LIMIT_ORG, a->org_id, "requests for this organization", org_allowed, a);
}

static void org_allowed(struct request *req, void *ud)
{
    struct authn *a = ud;
    struct auth_ctx *ctx = arena_calloc(req->arena, sizeof *ctx);
    ctx->kind = a->kind;
    ctx->role = a->role;
    memcpy(ctx->org_id, a->org_id, sizeof ctx->org_id);
    memcpy(ctx->principal_id, a->principal, sizeof ctx->principal_id);
    ctx->schema = arena_strdup(req->arena, a->org.schema);
    ctx->slug = arena_strdup(req->arena, a->org.slug);
    req->org_id = ctx->org_id;
    run(req, ctx);
}

static void org_loaded(struct db_result *r, void *ud)
{
    struct authn *a = ud;
    if (db_failed(a->req, r, "auth: credential lookup"))
        return;
    if (PQntuples(r->res) != 1 || !org_cols(r->res, 0, &a->org)) {
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    cache_put_org(a->org_id, &a->org, a->epoch);
    finish(a);
}

/* Principal resolved; the org may still need a load. */
static void with_org(struct authn *a)
{
    if (cache_get_org(a->org_id, &a->org)) {
        finish(a);
        return;
    }
    a->epoch = cache_epoch();
    a->param = a->org_id;
    db_query(db_pool_of(a->req), NULL, &org_load, 1, &a->param, org_loaded, a);
}

/* The user's cached or loaded state against the token's claims. */
static void check_user(struct authn *a, const struct cache_user *u)
{
    if (strcmp(u->org_id, a->org_id) != 0 || u->token_version != a->ver) {
        log_msg(LOG_DEBUG, "auth: token of user %s is stale (version or org)", a->principal);
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    a->role = u->role; /* the cache's, not the token's: demotions apply at once */
    with_org(a);
}

static void user_loaded(struct db_result *r, void *ud)
{
    struct authn *a = ud;
    if (db_failed(a->req, r, "auth: credential lookup"))
        return;
    struct cache_user u = {0};
    char role[16], ver[24];
    if (PQntuples(r->res) != 1 || !col(r->res, 0, 0, u.org_id, sizeof u.org_id) ||
        !col(r->res, 0, 1, role, sizeof role) || !col(r->res, 0, 2, ver, sizeof ver) ||
        !org_cols(r->res, 3, &a->org)) {
        log_msg(LOG_DEBUG, "auth: user %s does not exist", a->principal);
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    u.role = auth_role_parse(role) == ROLE_ADMIN ? ROLE_ADMIN : ROLE_MEMBER;
    u.token_version = strtoll(ver, NULL, 10);
    cache_put_user(a->principal, &u, a->epoch);
    cache_put_org(u.org_id, &a->org, a->epoch);
    if (strcmp(u.org_id, a->org_id) != 0 || u.token_version != a->ver) {
        log_msg(LOG_DEBUG, "auth: token of user %s is stale (version or org)", a->principal);
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    a->role = u.role;
    finish(a);
}

/* False after answering 401 (the request may be gone then: touch nothing). */
static bool check_key(struct authn *a, const struct cache_key *k)
{
    if (k->revoked ||
        !token_equal(k->key_hash, strlen(k->key_hash), a->key_hash, strlen(a->key_hash))) {
        log_msg(LOG_DEBUG, "auth: API key %s revoked or wrong secret", a->prefix);
        auth_respond_unauthorized(a->req, GENERIC_401);
        return false;
    }
    memcpy(a->principal, k->id, sizeof a->principal);
    memcpy(a->org_id, k->org_id, sizeof a->org_id);
    a->role = k->role;
    return true;
}

static void key_loaded(struct db_result *r, void *ud)
{
    struct authn *a = ud;
    if (db_failed(a->req, r, "auth: credential lookup"))
        return;
    struct cache_key k = {0};
    char role[16], revoked[8];
    if (PQntuples(r->res) != 1 || !col(r->res, 0, 0, k.id, sizeof k.id) ||
        !col(r->res, 0, 1, k.org_id, sizeof k.org_id) || !col(r->res, 0, 2, role, sizeof role) ||
        !col(r->res, 0, 3, k.key_hash, sizeof k.key_hash) ||
        !col(r->res, 0, 4, revoked, sizeof revoked) || !org_cols(r->res, 5, &a->org)) {
        log_msg(LOG_DEBUG, "auth: no API key with prefix %s", a->prefix);
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    int kr = auth_role_parse(role);
    k.role = kr == ROLE_ADMIN || kr == ROLE_WORKER ? (enum auth_role)kr : ROLE_MEMBER;
    k.revoked = revoked[0] == 't';
    cache_put_key(a->prefix, &k, a->epoch);
    cache_put_org(k.org_id, &a->org, a->epoch);
    if (check_key(a, &k)) {
        key_touch_start(db_pool_of(a->req), k.id);
        finish(a);
    }
}

static void auth_key(struct authn *a, const char *tok, size_t len)
{
    if (token_api_key_parse(tok, len, a->prefix) != 0) {
        log_msg(LOG_DEBUG, "auth: malformed API key");
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    a->kind = AUTH_KIND_KEY;
    token_sha256_hex(tok, len, a->key_hash);
    struct cache_key k;
    if (cache_get_key(a->prefix, &k)) {
        if (check_key(a, &k))
            with_org(a);
        return;
    }
    a->epoch = cache_epoch();
    a->param = a->prefix;
    db_query(db_pool_of(a->req), NULL, &key_load, 1, &a->param, key_loaded, a);
}

static void auth_jwt(struct authn *a, const char *tok, size_t len)
{
    struct jwt_claims c;
    enum jwt_error e = jwt_verify(auth_jwt_key(), tok, len, (int64_t)time(NULL), &c);
    if (e != JWT_OK) {
        log_msg(LOG_DEBUG, "auth: access token refused: %s", jwt_strerror(e));
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    /* Signed by us, but checked anyway before they reach SQL. */
    if (!token_uuid_valid(c.sub, strlen(c.sub)) || !token_uuid_valid(c.org, strlen(c.org))) {
        auth_respond_unauthorized(a->req, GENERIC_401);
        return;
    }
    a->kind = AUTH_KIND_USER;
    memcpy(a->principal, c.sub, sizeof a->principal);
    memcpy(a->org_id, c.org, sizeof a->org_id);
    a->ver = c.ver;
    struct cache_user u;
    if (cache_get_user(a->principal, &u)) {
        check_user(a, &u);
        return;
    }
    a->epoch = cache_epoch();
    a->param = a->principal;
    db_query(db_pool_of(a->req), NULL, &user_load, 1, &a->param, user_loaded, a);
}

void auth_dispatch(struct request *req)
{
    if (req->route->auth == AUTH_NONE) {
        req->route->handler(req);
        return;
    }
    const char *h = http_header(req, "Authorization");
    if (!h) {
        auth_respond_unauthorized(req,
                                  "This route needs a credential: Authorization: Bearer <token>.");
        return;
    }
    size_t len = 0;
    const char *tok = token_bearer(h, &len);
    if (!tok) {
        auth_respond_unauthorized(req, GENERIC_401);
        return;
    }
    const char *op = g_config ? g_config->operator_token : NULL;
    if (!op && req->route->auth == AUTH_OPERATOR) {
        /* No operator token configured: the operator routes are off. */
        auth_respond_unauthorized(req, "Operator routes are disabled on this server.");
        return;
    }
    /* The operator's worker token: the worker API of every org. */
    const char *wt = g_config ? g_config->worker_token : NULL;
    if (req->route->auth == AUTH_WORKER && wt && token_equal(tok, len, wt, strlen(wt))) {
        struct auth_ctx *ctx = arena_calloc(req->arena, sizeof *ctx);
        ctx->kind = AUTH_KIND_OPERATOR;
        ctx->role = ROLE_WORKER;
        run(req, ctx);
        return;
    }
    if (op && token_equal(tok, len, op, strlen(op))) {
        struct auth_ctx *ctx = arena_calloc(req->arena, sizeof *ctx);
        ctx->kind = AUTH_KIND_OPERATOR;
        ctx->role = ROLE_ADMIN;
        run(req, ctx);
        return;
    }
    struct authn *a = arena_calloc(req->arena, sizeof *a);
    a->req = req;
    if (!db_pool_of(req)) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unreachable.");
        return;
    }
    if (token_is_api_key(tok, len))
        auth_key(a, tok, len);
    else
        auth_jwt(a, tok, len);
}

const struct auth_ctx *auth_org_caller(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    if (!a || a->kind == AUTH_KIND_OPERATOR || a->org_id[0] == '\0' || !a->schema ||
        !a->schema[0]) {
        problem_respond(req, PROBLEM_FORBIDDEN,
                        "This route needs a credential of an organization.");
        return NULL;
    }
    return a;
}
