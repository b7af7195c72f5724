#ifndef TENANTD_AUTH_AUTH_H
#define TENANTD_AUTH_AUTH_H
#include <stdbool.h>
#include <stdint.h>

#include "core/http.h"
#include "core/router.h"

/*
 * The auth module's public face: who is calling (struct auth_ctx), the
 * dispatch hook main.c installs (checks the route's auth level, then runs
 * its handler), the process-wide cache of orgs/users/keys kept current by
 * LISTEN/NOTIFY, and the narrow calls the org module needs at signup.
 */

enum auth_kind { AUTH_KIND_USER, AUTH_KIND_KEY, AUTH_KIND_OPERATOR };
/* ROLE_WORKER: an API key (or TENANTD_WORKER_TOKEN) for the worker API only. */
enum auth_role { ROLE_MEMBER, ROLE_ADMIN, ROLE_WORKER };

struct auth_ctx {
    enum auth_kind kind;
    enum auth_role role;      /* from the cache, never from the token */
    char org_id[37];          /* empty for the operator */
    char principal_id[37];    /* user id or API key id; empty for the operator */
    const char *schema;       /* "tenant_<hex>", in the request arena; NULL for the operator */
    const char *slug;         /* the org's current slug, in the request arena */
};

/* The caller of an authenticated route; NULL on AUTH_NONE routes. */
static inline const struct auth_ctx *auth_ctx(const struct request *req)
{
    return req->auth;
}

/* The caller as an audit event's actor (public.audit_events, migration
 * 0010): its type, and its id (NULL for the operator). */
static inline const char *auth_actor_type(const struct auth_ctx *a)
{
    return a->kind == AUTH_KIND_USER ? "user" : a->kind == AUTH_KIND_KEY ? "api_key" : "operator";
}
static inline const char *auth_actor_id(const struct auth_ctx *a)
{
    return a->principal_id[0] ? a->principal_id : NULL;
}

/*
 * main.c's dispatch hook: authenticates the request as the route's auth
 * level asks (401 without a valid credential, 403 for a wrong role, a
 * suspended org or an X-Org-Name naming another org), fills req->auth and
 * req->org_id, then calls the handler. May finish asynchronously (cache
 * miss -> one query).
 */
void auth_dispatch(struct request *req);

/* One signup for the request's client IP (TENANTD_SIGNUP_LIMIT an hour,
 * shared by all instances on the database): calls go(req, ud), now or
 * later, with RateLimit headers set (none when the limit is off), or
 * answers 429 with Retry-After and never calls go. */
void auth_signup_limit(struct request *req, void (*go)(struct request *req, void *ud), void *ud);

/* The caller's org credential (user or API key), or NULL after answering
 * 403 for an operator or org-less credential on an org route. */
const struct auth_ctx *auth_org_caller(struct request *req);

/* Routes /v1/auth/...; init starts the
 * password pool and the cache listener, shutdown stops them. */
extern const struct module auth_module;

/* Routes /v1/users... and /v1/api-keys... (both in src/auth/users.c). */
extern const struct module users_module;

/* Invitations, password reset, email verification and the audit log
 * (src/auth/accounts.c, resetverify.c, accountmail.c, audit.c; README
 * "Accounts"). */
extern const struct module accounts_module;
/* Sign-in with OIDC and identity links (src/auth/oidc.c, oidclink.c, over
 * oidcflow.c, oidcprovider.c, oidcverify.c). */
extern const struct module oidc_module;

/* The auth section of /metrics (malloc'd text, the caller frees; NULL when
 * out of memory): the password hash queue's depth and refusals, and the
 * rate limits' refusals by limit. */
char *auth_metrics_text(void);

/* Drops cached entries at once in this process (others learn through
 * NOTIFY, which the database triggers send). */
void auth_cache_forget_org(const char *org_id);
void auth_cache_forget_user(const char *user_id);
/* The same for an API key, by its 8-char lookup prefix (after a delete). */
void auth_cache_forget_key(const char *prefix);

/*
 * Signs an access token for a user (claims sub, org, role, ver) into out
 * (JWT_SIGNED_MAX bytes). Returns the length, or -1.
 */
int auth_sign_access(const char *user_id, const char *org_id, const char *role, int64_t ver,
                     char *out, size_t outlen);

/* Seconds an access token lives (TENANTD_ACCESS_TTL_S), for expires_in. */
int64_t auth_access_ttl(void);
int64_t auth_refresh_ttl(void);

#endif
