/*
 * The system module: liveness, readiness, metrics and the API's own
 * description. Every route is cheap; only /ready touches the database.
 * All are open (AUTH_NONE) except /metrics, which tells an outsider too
 * much (routes, traffic, pool state): it answers a bearer token
 * (TENANTD_METRICS_TOKEN) or, without one configured, only clients on
 * loopback that did not come through a proxy.
 */
#include "system/system.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <llhttp.h>
#include <openssl/crypto.h>

#include "app/dbhttp.h"
#include "auth/auth.h"
#include "core/config.h"
#include "core/embedded.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/procmetrics.h"
#include "core/problem.h"
#include "core/strbuf.h"
#include "db/db.h"
#include "db/migrate.h"
#include "job/job.h"
#include "system/docs.h"

static void health_get(struct request *req);
static void ready_get(struct request *req);
static void metrics_get(struct request *req);
static void openapi_get(struct request *req);
static void docs_get(struct request *req);

static const struct route system_routes[] = {
    {HTTP_GET, "/health", AUTH_NONE, health_get, "getHealth"},
    {HTTP_GET, "/ready", AUTH_NONE, ready_get, "getReady"},
    {HTTP_GET, "/metrics", AUTH_NONE, metrics_get, "getMetrics"},
    {HTTP_GET, "/openapi.json", AUTH_NONE, openapi_get, "getOpenApi"},
    {HTTP_GET, "/docs", AUTH_NONE, docs_get, "getDocs"},
    {0},
};

static int system_init(void);
static void system_shutdown(void);

const struct module system_module = {
    .name = "system",
    .routes = system_routes,
    .init = system_init,
    .shutdown = system_shutdown,
};

/* Unnamed (not prepared): the table may not exist yet, and /ready is not hot.
 */
static const struct db_stmt ready_stmt = {
    .name = NULL,
    .sql = MIGRATE_READY_SQL,
};

/* The /docs page, rendered once at init from the embedded OpenAPI document;
 * read-only while loops run. */
static char *docs_html;
static size_t docs_len;

/* Liveness: the process answers. Touches nothing else, so a slow database
 * never makes an orchestrator kill a healthy process. */
static void health_get(struct request *req)
{
    static const char body[] = "{\"status\":\"ok\"}";
    http_respond(req, 200, "application/json", body, sizeof body - 1);
}

static void ready_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status == DB_UNAVAILABLE) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unreachable.");
        return;
    }
    if (r->status == DB_ERROR) {
        if (r->sqlstate && strcmp(r->sqlstate, "42P01") == 0) {
            problem_respond(req, PROBLEM_UNAVAILABLE,
                            "The database has no migrations applied; run `tenantd migrate up`.");
            return;
        }
        log_msg(LOG_WARN, "readiness query failed: %s (%s)", r->message ? r->message : "?",
                r->sqlstate ? r->sqlstate : "?");
        problem_respond(req, PROBLEM_UNAVAILABLE,
                        "The database could not report its migration version.");
        return;
    }
    char found[256];
    if (migrate_ready_verdict(r->res, found, sizeof found) != 0) {
        problem_respond(req, PROBLEM_UNAVAILABLE, arena_strdup(req->arena, found));
        return;
    }
    /* A database ahead by compatible migrations is fine, and worth seeing
     * during a rollout: then the body says so. */
    const char *body =
        strcmp(found, "current") == 0
            ? "{\"status\":\"ready\"}"
            : arena_printf(req->arena, "{\"status\":\"ready\",\"schema\":\"%s\"}", found);
    http_respond(req, 200, "application/json", body, strlen(body));
}

/* Readiness: the database answers and the control schema is this
 * binary's, or ahead by compatible migrations (migrate_ready_verdict), and
 * no SIGTERM is pending, so a load balancer only sends traffic to servers
 * that can handle it. */
static void ready_get(struct request *req)
{
    struct db_pool *pool = db_pool_of(req);
    if (g_shutting_down) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The server is shutting down.");
        return;
    }
    if (!pool) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unreachable.");
        return;
    }
    /* Parameters live until the callback: in the request's arena. */
    const char **params = arena_alloc(req->arena, sizeof *params);
    params[0] = arena_printf(req->arena, "%d", migrate_latest(TRACK_CONTROL));
    db_query(pool, NULL, &ready_stmt, 1, params, ready_done, req);
}

/* The TCP peer is on loopback (127.0.0.0/8 or ::1). */
static bool peer_loopback(const struct request *req)
{
    unsigned char a[16];
    const char *ip = req->peer_ip ? req->peer_ip : "";
    if (inet_pton(AF_INET, ip, a) == 1)
        return a[0] == 127;
    static const unsigned char one[16] = {[15] = 1};
    return inet_pton(AF_INET6, ip, a) == 1 && memcmp(a, one, 16) == 0;
}

/* Whether the request may read /metrics; answers 401/403 when not. */
static bool metrics_allowed(struct request *req)
{
    const char *token = g_config->metrics_token;
    if (token && *token) {
        const char *h = http_header(req, "Authorization");
        size_t tl = strlen(token);
        if (h && strncasecmp(h, "Bearer ", 7) == 0 && strlen(h + 7) == tl &&
            CRYPTO_memcmp(h + 7, token, tl) == 0)
            return true;
        http_set_header(req, "WWW-Authenticate", "Bearer realm=\"metrics\"");
        problem_respond(req, PROBLEM_UNAUTHORIZED,
                        "/metrics needs the metrics bearer token (TENANTD_METRICS_TOKEN).");
        return false;
    }
    /* A proxy on the same host makes every client a loopback peer: a
     * forwarded request is never taken for a local one. */
    if (peer_loopback(req) && !http_header(req, "X-Forwarded-For") &&
        !http_header(req, "Forwarded") && !http_header(req, "X-Real-IP"))
        return true;
    problem_respond(req, PROBLEM_FORBIDDEN,
                    "/metrics answers local clients only; set TENANTD_METRICS_TOKEN to read it "
                    "from elsewhere with a bearer token.");
    return false;
}

static void metrics_get(struct request *req)
{
    if (!metrics_allowed(req))
        return;
    size_t len = 0;
    char *text = metrics_render(&len);
    if (!text) {
        problem_respond(req, PROBLEM_INTERNAL, "The metrics could not be rendered.");
        return;
    }
    /* The jobs' section is sampled from the database by src/job; auth's
     * and the process's are read at once; the build line lets a dashboard
     * show a rollout's progress. */
    const char *info = arena_printf(req->arena,
                                    "# HELP tenantd_build_info The version and git commit of "
                                    "this binary.\n# TYPE tenantd_build_info gauge\n"
                                    "tenantd_build_info{version=\"%s\",commit=\"%s\"} 1\n",
                                    TENANTD_VERSION, config_build_commit());
    char *parts[3] = {job_metrics_text(), auth_metrics_text(), procmetrics_text()};
    struct strbuf all = {text, len, len + 1}; /* metrics_render's text, grown in place */
    for (int i = 0; i < 3; i++) {
        if (parts[i])
            sb_puts(&all, parts[i]);
        free(parts[i]);
    }
    sb_puts(&all, info);
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", all.s, all.len);
    free(all.s);
}

static void openapi_get(struct request *req)
{
    http_respond(req, 200, "application/json", embedded_openapi, embedded_openapi_len);
}

static void docs_get(struct request *req)
{
    if (!docs_html) {
        problem_respond(req, PROBLEM_INTERNAL, "The documentation page is not available.");
        return;
    }
    http_respond(req, 200, "text/html; charset=utf-8", docs_html, docs_len);
}

/* Checks that the embedded OpenAPI document parses (a broken build artifact
 * must stop start-up, not surface as a bad /openapi.json) and renders /docs. */
static int system_init(void)
{
    json_error_t err;
    json_t *doc = json_loadb(embedded_openapi, embedded_openapi_len, 0, &err);
    if (!doc || !json_is_object(doc) || !json_is_object(json_object_get(doc, "paths"))) {
        log_msg(LOG_ERROR,
                "the embedded openapi.json is not a valid OpenAPI document: %s "
                "(line %d)",
                doc ? "no paths object" : err.text, doc ? 0 : err.line);
        json_decref(doc);
        return -1;
    }
    free(docs_html);
    docs_html = docs_render(doc, &docs_len);
    json_decref(doc);
    return 0;
}

static void system_shutdown(void)
{
    free(docs_html);
    docs_html = NULL;
    docs_len = 0;
}
