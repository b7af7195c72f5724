/*
 * The system module: liveness, readiness, metrics and the API's own
 * description. Every route is open (AUTH_NONE) and cheap; only /ready
 * touches the database.
 */
#include "system/system.h"

#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "core/embedded.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/problem.h"

static void health_get(struct request *req);
static void metrics_get(struct request *req);
static void openapi_get(struct request *req);

static const struct route system_routes[] = {
    {HTTP_GET, "/health", AUTH_NONE, health_get, "getHealth"},
    {HTTP_GET, "/metrics", AUTH_NONE, metrics_get, "getMetrics"},
    {HTTP_GET, "/openapi.json", AUTH_NONE, openapi_get, "getOpenApi"},
    {0},
};

const struct module system_module = {
    .name = "system",
    .routes = system_routes,
};

/* Liveness: the process answers. Touches nothing else, so a slow database
 * never makes an orchestrator kill a healthy process. */
static void health_get(struct request *req)
{
    static const char body[] = "{\"status\":\"ok\"}";
    http_respond(req, 200, "application/json", body, sizeof body - 1);
}

static void metrics_get(struct request *req)
{
    size_t len = 0;
    char *text = metrics_render(&len);
    if (!text) {
        problem_respond(req, PROBLEM_INTERNAL, "The metrics could not be rendered.");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static void openapi_get(struct request *req)
{
    http_respond(req, 200, "application/json", embedded_openapi, embedded_openapi_len);
}
