/*
 * The system module: liveness, readiness, metrics and the API's own
 * description. Every route is cheap; only /ready touches the database.
 * All are open (AUTH_NONE) except /metrics, which tells an outsider too
 * much (routes, traffic, pool state): it answers a bearer token
 * (TENANTD_METRICS_TOKEN) or, without one configured, only clients on
 * loopback that did not come through a proxy.
 */
#include "system/system.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <llhttp.h>
#include <openssl/crypto.h>

#include "core/config.h"
#include "core/embedded.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/problem.h"
#include "db/db.h"
#include "db/migrate.h"
#include "job/job.h"

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
    struct db_pool *pool = req->ctx ? req->ctx->db : NULL;
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
    /* The jobs' section is sampled from the database by src/job; the build
     * line lets a dashboard show a rollout's progress. */
    char *jobs = job_metrics_text();
    const char *info = arena_printf(req->arena,
                                    "# HELP tenantd_build_info The version and git commit of "
                                    "this binary.\n# TYPE tenantd_build_info gauge\n"
                                    "tenantd_build_info{version=\"%s\",commit=\"%s\"} 1\n",
                                    TENANTD_VERSION, config_build_commit());
    size_t jlen = jobs ? strlen(jobs) : 0, ilen = info ? strlen(info) : 0;
    char *all = info ? realloc(text, len + jlen + ilen) : NULL;
    if (!all) {
        free(jobs);
        free(text);
        problem_respond(req, PROBLEM_INTERNAL, "The metrics could not be rendered.");
        return;
    }
    if (jlen)
        memcpy(all + len, jobs, jlen);
    memcpy(all + len + jlen, info, ilen);
    free(jobs);
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", all, len + jlen + ilen);
    free(all);
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

/* ---- the /docs page ---- */

struct html {
    char *p;
    size_t len, cap;
};

static void html_add(struct html *h, const char *s, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 16384;
        while (cap < h->len + n + 1)
            cap *= 2;
        char *p = realloc(h->p, cap);
        if (!p)
            abort(); /* start-up only: out of memory is fatal */
        h->p = p;
        h->cap = cap;
    }
    memcpy(h->p + h->len, s, n);
    h->len += n;
    h->p[h->len] = '\0';
}

static void html_raw(struct html *h, const char *s)
{
    html_add(h, s, strlen(s));
}

/* Text from the document, escaped for element content and quoted attributes. */
static void html_text(struct html *h, const char *s)
{
    if (!s)
        return;
    for (; *s; s++) {
        switch (*s) {
        case '&':
            html_raw(h, "&amp;");
            break;
        case '<':
            html_raw(h, "&lt;");
            break;
        case '>':
            html_raw(h, "&gt;");
            break;
        case '"':
            html_raw(h, "&quot;");
            break;
        case '\'':
            html_raw(h, "&#39;");
            break;
        default:
            html_add(h, s, 1);
        }
    }
}

/* An id attribute value: only [A-Za-z0-9_-], other bytes become '-'. */
static void html_id(struct html *h, const char *prefix, const char *s)
{
    html_raw(h, prefix);
    for (; s && *s; s++) {
        char c = *s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        html_add(h, ok ? &c : "-", 1);
    }
}

static const char *jstr(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* "#/components/<kind>/<Name>" -> Name, else NULL. */
static const char *ref_name(const json_t *o, const char *kind)
{
    const char *ref = jstr(o, "$ref");
    if (!ref)
        return NULL;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "#/components/%s/", kind);
    size_t n = strlen(prefix);
    return strncmp(ref, prefix, n) == 0 ? ref + n : NULL;
}

static void html_schema(struct html *h, const json_t *schema)
{
    if (!schema)
        return;
    const char *name = ref_name(schema, "schemas");
    if (name) {
        html_raw(h, "<a href=\"#");
        html_id(h, "schema-", name);
        html_raw(h, "\"><code>");
        html_text(h, name);
        html_raw(h, "</code></a>");
        return;
    }
    char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s)
        return;
    html_raw(h, "<pre>");
    html_text(h, s);
    html_raw(h, "</pre>");
    free(s);
}

static void html_content(struct html *h, const json_t *content)
{
    const char *type;
    const json_t *media;
    json_object_foreach((json_t *)content, type, media)
    {
        html_raw(h, "<div class=\"media\"><code>");
        html_text(h, type);
        html_raw(h, "</code> ");
        html_schema(h, json_object_get(media, "schema"));
        html_raw(h, "</div>");
    }
}

static void html_operation(struct html *h, const json_t *doc, const char *path, const char *method,
                           const json_t *op)
{
    const char *opid = jstr(op, "operationId");
    html_raw(h, "<section class=\"op\" id=\"");
    html_id(h, "op-", opid ? opid : path);
    html_raw(h, "\"><h3><span class=\"m m-");
    html_text(h, method);
    html_raw(h, "\">");
    for (const char *c = method; *c; c++) {
        char u = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        html_add(h, &u, 1);
    }
    html_raw(h, "</span> <code>");
    html_text(h, path);
    html_raw(h, "</code></h3>");
    if (jstr(op, "summary")) {
        html_raw(h, "<p class=\"summary\">");
        html_text(h, jstr(op, "summary"));
        html_raw(h, "</p>");
    }
    html_raw(h, "<p class=\"meta\">operationId <code>");
    html_text(h, opid ? opid : "(none)");
    html_raw(h, "</code> &middot; auth: ");
    const json_t *sec = json_object_get(op, "security");
    if (!sec)
        sec = json_object_get(doc, "security");
    if (!sec || json_array_size(sec) == 0) {
        html_raw(h, "none");
    } else {
        size_t i;
        const json_t *req;
        json_array_foreach((json_t *)sec, i, req)
        {
            const char *scheme;
            const json_t *scopes;
            if (i)
                html_raw(h, " or ");
            json_object_foreach((json_t *)req, scheme, scopes)
            {
                (void)scopes;
                html_raw(h, "<code>");
                html_text(h, scheme);
                html_raw(h, "</code>");
            }
        }
    }
    html_raw(h, "</p>");
    if (jstr(op, "description")) {
        html_raw(h, "<p>");
        html_text(h, jstr(op, "description"));
        html_raw(h, "</p>");
    }

    const json_t *params = json_object_get(op, "parameters");
    if (json_array_size(params) > 0) {
        html_raw(h, "<h4>Parameters</h4><table><tr><th>name</th><th>in</"
                    "th><th>required</th>"
                    "<th>schema</th><th>description</th></tr>");
        size_t i;
        const json_t *p;
        json_array_foreach((json_t *)params, i, p)
        {
            const char *pname = ref_name(p, "parameters");
            if (pname)
                p = json_object_get(
                    json_object_get(json_object_get(doc, "components"), "parameters"), pname);
            html_raw(h, "<tr><td><code>");
            html_text(h, jstr(p, "name"));
            html_raw(h, "</code></td><td>");
            html_text(h, jstr(p, "in"));
            html_raw(h, "</td><td>");
            html_raw(h, json_is_true(json_object_get(p, "required")) ? "yes" : "no");
            html_raw(h, "</td><td>");
            html_schema(h, json_object_get(p, "schema"));
            html_raw(h, "</td><td>");
            html_text(h, jstr(p, "description"));
            html_raw(h, "</td></tr>");
        }
        html_raw(h, "</table>");
    }

    const json_t *body = json_object_get(op, "requestBody");
    if (body) {
        html_raw(h, "<h4>Request body");
        if (json_is_true(json_object_get(body, "required")))
            html_raw(h, " (required)");
        html_raw(h, "</h4>");
        if (jstr(body, "description")) {
            html_raw(h, "<p>");
            html_text(h, jstr(body, "description"));
            html_raw(h, "</p>");
        }
        html_content(h, json_object_get(body, "content"));
    }

    html_raw(h, "<h4>Responses</h4><table><tr><th>status</th><th>description</th>"
                "<th>body</th></tr>");
    const char *status;
    const json_t *resp;
    json_object_foreach(json_object_get(op, "responses"), status, resp)
    {
        const char *rname = ref_name(resp, "responses");
        if (rname)
            resp = json_object_get(json_object_get(json_object_get(doc, "components"), "responses"),
                                   rname);
        html_raw(h, "<tr><td><code>");
        html_text(h, status);
        html_raw(h, "</code></td><td>");
        html_text(h, jstr(resp, "description"));
        html_raw(h, "</td><td>");
        html_content(h, json_object_get(resp, "content"));
        html_raw(h, "</td></tr>");
    }
    html_raw(h, "</table></section>\n");
}

static const char *const path_item_methods[] = {"get",     "put",  "post",  "delete",
                                                "options", "head", "patch", "trace"};
#define NPATH_METHODS (sizeof path_item_methods / sizeof path_item_methods[0])

/* Renders the whole page from the document; returns a malloc'd string. */
static char *docs_render(const json_t *doc, size_t *len)
{
    struct html h = {0};
    const json_t *info = json_object_get(doc, "info");
    const json_t *paths = json_object_get(doc, "paths");
    html_raw(&h, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width, "
                 "initial-scale=1\"><title>");
    html_text(&h, jstr(info, "title"));
    html_raw(&h, " API</title><style>"
                 "body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;"
                 "padding:0 1em;color:#222}"
                 "code,pre{font-family:ui-monospace,monospace;font-size:90%}"
                 "pre{background:#f6f6f6;padding:.5em;overflow:auto;margin:.2em 0}"
                 "table{border-collapse:collapse;width:100%;margin:.5em 0}"
                 "td,th{border:1px solid #ddd;padding:.3em .5em;text-align:left;"
                 "vertical-align:top}"
                 ".op{border-top:2px solid #eee;padding-top:.5em;margin-top:1.5em}"
                 ".m{display:inline-block;min-width:4.5em;color:#fff;border-radius:3px;"
                 "padding:0 .4em;text-align:center;background:#555}"
                 ".m-get{background:#2a7ae2}.m-post{background:#2e8b57}"
                 ".m-put,.m-patch{background:#c77c02}.m-delete{background:#c0392b}"
                 ".meta{color:#666;font-size:90%}.summary{font-weight:600}"
                 "nav li{list-style:none}"
                 "</style></head><body>\n<h1>");
    html_text(&h, jstr(info, "title"));
    html_raw(&h, " API <small>version ");
    html_text(&h, jstr(info, "version"));
    html_raw(&h, "</small></h1>\n");
    if (jstr(info, "summary")) {
        html_raw(&h, "<p class=\"summary\">");
        html_text(&h, jstr(info, "summary"));
        html_raw(&h, "</p>");
    }
    if (jstr(info, "description")) {
        html_raw(&h, "<p>");
        html_text(&h, jstr(info, "description"));
        html_raw(&h, "</p>");
    }
    html_raw(&h, "<p>Machine-readable description: <a "
                 "href=\"/openapi.json\">/openapi.json</a> "
                 "(OpenAPI ");
    html_text(&h, jstr(doc, "openapi"));
    html_raw(&h, ").</p>\n<nav><h2>Operations</h2><ul>\n");

    const char *path;
    const json_t *item;
    json_object_foreach((json_t *)paths, path, item)
    {
        for (size_t k = 0; k < NPATH_METHODS; k++) {
            const json_t *op = json_object_get(item, path_item_methods[k]);
            if (!op)
                continue;
            const char *opid = jstr(op, "operationId");
            html_raw(&h, "<li><a href=\"#");
            html_id(&h, "op-", opid ? opid : path);
            html_raw(&h, "\"><span class=\"m m-");
            html_raw(&h, path_item_methods[k]);
            html_raw(&h, "\">");
            for (const char *c = path_item_methods[k]; *c; c++) {
                char u = (char)(*c - 32);
                html_add(&h, &u, 1);
            }
            html_raw(&h, "</span> <code>");
            html_text(&h, path);
            html_raw(&h, "</code></a> ");
            html_text(&h, jstr(op, "summary"));
            html_raw(&h, "</li>\n");
        }
    }
    html_raw(&h, "</ul></nav>\n<h2>Endpoints</h2>\n");
    json_object_foreach((json_t *)paths, path, item)
    {
        for (size_t k = 0; k < NPATH_METHODS; k++) {
            const json_t *op = json_object_get(item, path_item_methods[k]);
            if (op)
                html_operation(&h, doc, path, path_item_methods[k], op);
        }
    }

    const json_t *components = json_object_get(doc, "components");
    const json_t *schemes = json_object_get(components, "securitySchemes");
    if (json_object_size(schemes) > 0) {
        html_raw(&h, "<h2>Authentication</h2>\n");
        const char *name;
        const json_t *scheme;
        json_object_foreach((json_t *)schemes, name, scheme)
        {
            html_raw(&h, "<p><code>");
            html_text(&h, name);
            html_raw(&h, "</code>: ");
            html_text(&h, jstr(scheme, "type"));
            if (jstr(scheme, "scheme")) {
                html_raw(&h, " ");
                html_text(&h, jstr(scheme, "scheme"));
            }
            if (jstr(scheme, "description")) {
                html_raw(&h, ". ");
                html_text(&h, jstr(scheme, "description"));
            }
            html_raw(&h, "</p>\n");
        }
    }
    const json_t *schemas = json_object_get(components, "schemas");
    if (json_object_size(schemas) > 0) {
        html_raw(&h, "<h2>Schemas</h2>\n");
        const char *name;
        const json_t *schema;
        json_object_foreach((json_t *)schemas, name, schema)
        {
            html_raw(&h, "<section id=\"");
            html_id(&h, "schema-", name);
            html_raw(&h, "\"><h3><code>");
            html_text(&h, name);
            html_raw(&h, "</code></h3>");
            if (jstr(schema, "description")) {
                html_raw(&h, "<p>");
                html_text(&h, jstr(schema, "description"));
                html_raw(&h, "</p>");
            }
            char *s = json_dumps(schema, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            if (s) {
                html_raw(&h, "<pre>");
                html_text(&h, s);
                html_raw(&h, "</pre>");
                free(s);
            }
            html_raw(&h, "</section>\n");
        }
    }
    html_raw(&h, "</body></html>\n");
    *len = h.len;
    return h.p;
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
