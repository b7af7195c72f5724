#ifndef TENANTD_CORE_ROUTER_H
#define TENANTD_CORE_ROUTER_H
#include <stddef.h>

#include "core/http.h"

/* Who may call a route; checked by the dispatch hook before the handler. */
enum auth_level {
    AUTH_NONE = 0,   /* anyone */
    AUTH_ANY,        /* any valid credential of an org: user token or API key */
    AUTH_USER,       /* a user's access token (not an API key) */
    AUTH_MEMBER,     /* member or admin of the org (user or key) */
    AUTH_ADMIN,      /* admin user or admin key */
    AUTH_ADMIN_OR_KEY, /* admin user, or any API key */
    AUTH_OPERATOR,   /* TENANTD_OPERATOR_TOKEN */
    AUTH_MEMBER_OR_OPERATOR,
    AUTH_WORKER,     /* TENANTD_WORKER_TOKEN (any org) or an API key with role worker */
};

typedef void (*route_handler)(struct request *req);

/*
 * One entry of a module's route table. pattern: "/v1/users/{id}"; a {name}
 * segment matches one non-empty path segment. A table ends with an entry
 * whose pattern is NULL (a zeroed entry).
 * operation_id is the OpenAPI operationId (must be unique).
 */
struct route {
    int method; /* HTTP_GET, HTTP_POST, ... (llhttp; HTTP_DELETE is 0) */
    const char *pattern;
    enum auth_level auth;
    route_handler handler;
    const char *operation_id;
};

/* A module: its route table and lifecycle hooks, registered once by main. */
struct module {
    const char *name;
    const struct route *routes;                 /* may be NULL */
    int (*init)(void);                          /* once, before loops start; 0 = ok */
    void (*loop_start)(struct loop_ctx *ctx);   /* per loop, on its thread */
    /* Per loop, on its thread, when it stops (modules in reverse order),
     * before its database pool closes: work still pending may answer a
     * request or queue a query. */
    void (*loop_stop)(struct loop_ctx *ctx);
    void (*drain)(void);                        /* once, when draining starts */
    void (*shutdown)(void);                     /* once, after loops stop */
};

enum router_result { ROUTER_FOUND, ROUTER_NOT_FOUND, ROUTER_METHOD_NOT_ALLOWED };

struct router;

/* Builds a router from the tables of the given modules (compiled once).
 * Returns NULL and logs when two routes collide or a pattern is malformed. */
struct router *router_new(const struct module *const *modules, size_t nmodules);
void router_free(struct router *r);

/*
 * Matches req->method and req->path. On ROUTER_FOUND sets req->route,
 * req->route_pattern and req->params (decoded into req->arena). HEAD matches
 * GET routes. On ROUTER_METHOD_NOT_ALLOWED *allow is set to an arena string
 * like "GET, HEAD, POST". A path with a NUL, "..", or a bad percent-escape in
 * a parameter is ROUTER_NOT_FOUND.
 */
enum router_result router_match(const struct router *r, struct request *req, const char **allow);

/* Calls fn for every route, in table order (for `tenantd routes` and the
 * OpenAPI check). */
void router_each(const struct router *r, void (*fn)(const struct route *rt, void *ud), void *ud);

/* "GET", "POST", ... for an llhttp method. */
const char *router_method_name(int method);

#endif
