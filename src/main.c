/* tenantd: command line and the wiring of modules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/http.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/problem.h"
#include "core/router.h"
#include "db/db.h"
#include "db/migrate.h"
#include "auth/auth.h"
#include "org/org.h"
#include "record/record.h"
#include "record/batch.h"
#include "auth/userimport.h"
#include "org/export.h"
#include "credit/credit.h"
#include "job/job.h"
#include "system/system.h"

/* Every module of the program; the router is built from their tables. */
static const struct module *const modules[] = {
    &system_module,
    &auth_module,
    &users_module,
    &org_module,
    &record_module,
    &record_batch_module,
    &userimport_module,
    &org_export_module,
    &credit_module,
    &job_module,
};
#define NMODULES (sizeof modules / sizeof modules[0])

static void loop_start(struct loop_ctx *ctx)
{
    const struct config *c = g_config;
    struct db_pool_options o = {
        .conninfo = c->database_url,
        .size = (int)c->db_pool_size,
        .pipeline_depth = (int)c->db_pipeline_depth,
        .wait_timeout_ms = (int)c->db_wait_timeout_ms,
        .statement_timeout_ms = (int)c->db_statement_timeout_ms,
        .reconnect_max_ms = (int)c->db_reconnect_max_ms,
        .shed_wait_ms = (int)c->db_shed_wait_ms,
        .statement_cache = (int)c->db_statement_cache,
        .org_inflight = (int)c->db_org_inflight,
        .metrics = ctx->metrics,
    };
    ctx->db = db_pool_new(ctx->loop, &o);
    if (!ctx->db) {
        log_msg(LOG_ERROR, "cannot create the database pool");
        abort();
    }
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->loop_start)
            modules[i]->loop_start(ctx);
}

struct stop_state {
    struct loop_ctx *ctx;
    void (*done)(struct loop_ctx *ctx);
};

static void pool_closed(void *ud)
{
    struct stop_state *s = ud;
    s->done(s->ctx);
    free(s);
}

static void loop_stop(struct loop_ctx *ctx, void (*done)(struct loop_ctx *ctx))
{
    struct stop_state *s = malloc(sizeof *s);
    if (!s)
        abort();
    s->ctx = ctx;
    s->done = done;
    /* Before the pool closes: pending password work may still answer
     * requests or queue a query. */
    auth_loop_stop(ctx);
    db_pool_close(ctx->db, pool_closed, s);
}

/* Background work (job workers) drains while the loops drain, so a
 * shutdown takes one drain timeout, not one after the other. */
static void modules_drain(void)
{
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->drain)
            modules[i]->drain();
}

static int cmd_serve(const struct config *cfg)
{
    char err[512];
    if (cfg->migrate_on_start) {
        if (migrate_up(cfg->database_url, (int)cfg->migrate_concurrency, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "migration failed: %s", err);
            return 1;
        }
    } else {
        int rc = migrate_check(cfg->database_url, err, sizeof err);
        if (rc < 0) {
            log_msg(LOG_ERROR, "cannot check migrations: %s", err);
            return 1;
        }
        if (rc > 0) {
            log_msg(LOG_ERROR,
                    "the database schema is behind this binary (%s); run `tenantd migrate up` "
                    "or start with `tenantd serve --migrate`",
                    err);
            return 1;
        }
    }
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->init && modules[i]->init() != 0) {
            log_msg(LOG_ERROR, "module %s failed to start", modules[i]->name);
            return 1;
        }
    struct router *router = router_new(modules, NMODULES);
    if (!router)
        return 1;
    struct server_hooks hooks = {.loop_start = loop_start, .loop_stop = loop_stop,
                                 .dispatch = auth_dispatch, .draining = modules_drain};
    int rc = server_run(router, &hooks);
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->shutdown)
            modules[i]->shutdown();
    router_free(router);
    return rc == 0 ? 0 : 1;
}

static void print_route(const struct route *rt, void *ud)
{
    (void)ud;
    printf("%s %s %s\n", router_method_name(rt->method), rt->pattern,
           rt->operation_id ? rt->operation_id : "-");
}

/* `tenantd routes`: the compiled route table, one "METHOD pattern operationId"
 * a line; the OpenAPI test compares it with /openapi.json. */
static int cmd_routes(void)
{
    struct router *router = router_new(modules, NMODULES);
    if (!router)
        return 1;
    router_each(router, print_route, NULL);
    router_free(router);
    return 0;
}

int main(int argc, char **argv)
{
    static struct config cfg;
    char err[512];
    int rc = config_load(&cfg, argc, argv, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "tenantd: %s\n(see tenantd --help)\n", err);
        return 2;
    }
    if (rc > 0 || !cfg.command) {
        if (rc > 0 && cfg.command && strcmp(cfg.command, "version") == 0) {
            printf("tenantd %s\n", TENANTD_VERSION);
            return 0;
        }
        config_usage(rc > 0 ? stdout : stderr);
        return rc > 0 ? 0 : 2;
    }
    g_config = &cfg;
    log_set_level(log_level_parse(cfg.log_level));

    if (strcmp(cfg.command, "serve") == 0)
        return cmd_serve(&cfg);
    if (strcmp(cfg.command, "migrate") == 0)
        return migrate_cli(cfg.database_url, cfg.argc, cfg.argv, (int)cfg.migrate_concurrency);
    if (strcmp(cfg.command, "worker") == 0)
        return job_worker_main(cfg.argc, cfg.argv);
    if (strcmp(cfg.command, "routes") == 0)
        return cmd_routes();
    fprintf(stderr, "tenantd: unknown command '%s' (see tenantd --help)\n", cfg.command);
    return 2;
}
