/* tenantd: command line and the wiring of modules. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

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
#include "org/import.h"
#include "credit/credit.h"
#include "idem/idem.h"
#include "job/job.h"
#include "system/system.h"

/* Every module of the program, in init and loop_start order (loop_stop
 * runs in reverse); the router is built from their tables. */
/* clang-format off */
static const struct module *const modules[] = {
    &system_module,
    &idem_module, /* before the modules whose routes take Idempotency-Key */
    &auth_module,
    &users_module,
    &accounts_module,
    &oidc_module,
    &org_module,
    &record_module,
    &record_batch_module,
    &userimport_module,
    &org_export_module,
    &org_import_module,
    &credit_module,
    &job_module,
};
/* clang-format on */
#define NMODULES (sizeof modules / sizeof modules[0])

/* The pools of every loop, for home-loop handing over (db/db.h); NULL with
 * one loop or TENANTD_DB_HOME_LOOPS=0. */
static struct db_group *db_group;

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
        .recycle_schemas = (int)c->db_recycle_schemas,
        .metrics = ctx->metrics,
        .group = db_group,
        .group_index = ctx->index,
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
    for (size_t i = NMODULES; i-- > 0;)
        if (modules[i]->loop_stop)
            modules[i]->loop_stop(ctx);
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

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* "host:port" of a connection string for the log, never its password:
 * only the host and port fields are read out of the parsed options. */
static void db_where(const char *conninfo, char *out, size_t outlen)
{
    const char *host = NULL, *hostaddr = NULL, *port = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (!strcmp(o->keyword, "host"))
            host = o->val;
        else if (!strcmp(o->keyword, "hostaddr"))
            hostaddr = o->val;
        else if (!strcmp(o->keyword, "port"))
            port = o->val;
    }
    if (!host)
        host = hostaddr ? hostaddr : getenv("PGHOST");
    if (!port)
        port = getenv("PGPORT");
    snprintf(out, outlen, "%s:%s", host && *host ? host : "local socket",
             port && *port ? port : "5432");
    PQconninfoFree(opts);
}

/*
 * Waits for the database before anything else talks to it: containers and
 * pods often start before PostgreSQL accepts connections. Retries with
 * back-off (100 ms doubling to 2 s) for TENANTD_DB_STARTUP_TIMEOUT_MS,
 * logging where it connects (host and port, never the password). 0, or -1
 * after logging why.
 */
static int wait_for_database(const struct config *cfg)
{
    char where[300];
    db_where(cfg->database_url, where, sizeof where);
    double deadline = mono_ms() + (double)cfg->db_startup_timeout_ms;
    int delay = 100, attempt = 0;
    for (;;) {
        attempt++;
        const char *const keys[] = {"fallback_application_name", "connect_timeout", "dbname", NULL};
        const char *const vals[] = {"tenantd", "5", cfg->database_url, NULL};
        PGconn *c = PQconnectdbParams(keys, vals, 1);
        if (c && PQstatus(c) == CONNECTION_OK) {
            PQfinish(c);
            if (attempt > 1)
                log_msg(LOG_INFO, "database at %s answers (attempt %d)", where, attempt);
            return 0;
        }
        char msg[512];
        snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\t')
                *p = ' ';
        size_t n = strlen(msg);
        while (n && msg[n - 1] == ' ')
            msg[--n] = '\0';
        double left = deadline - mono_ms();
        if (left <= 0) {
            log_msg(LOG_ERROR,
                    "cannot connect to the database at %s after %d attempt(s) in %lld ms: %s",
                    where, attempt, (long long)cfg->db_startup_timeout_ms, msg);
            return -1;
        }
        int wait = (double)delay < left ? delay : (int)left;
        log_msg(LOG_WARN, "database at %s not reachable yet (%s); retrying in %d ms", where, msg,
                wait);
        usleep((useconds_t)wait * 1000);
        delay = delay * 2 > 2000 ? 2000 : delay * 2;
    }
}

/* "host:port" / "[v6]:port" of TENANTD_LISTEN as an address. 0 or -1. */
static int listen_addr(const char *spec, struct addrinfo **out)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    size_t hl = (size_t)(colon - spec);
    const char *h = spec;
    if (hl >= 2 && spec[0] == '[' && colon[-1] == ']')
        h++, hl -= 2;
    memcpy(host, h, hl);
    host[hl] = '\0';
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM};
    return getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, out) == 0 ? 0 : -1;
}

/*
 * The loops bind with SO_REUSEPORT so that they share the port; that would
 * also let a second tenantd share it silently (and take half the traffic).
 * A bind without SO_REUSEPORT fails while anyone holds the address, so it
 * tells: refused unless TENANTD_REUSEPORT=1 asks for sharing. SO_REUSEADDR
 * keeps TIME_WAIT leftovers of a previous run from counting. 0, or -1.
 */
static int check_listener_free(const struct config *cfg)
{
    if (cfg->reuseport)
        return 0;
    struct addrinfo *ai = NULL;
    if (listen_addr(cfg->listen, &ai) != 0 || !ai)
        return 0; /* the server reports a bad address itself */
    int rc = 0;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
        (ai->ai_family != AF_INET6 ||
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) == 0) &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE) {
        log_msg(LOG_ERROR,
                "cannot listen on %s: address already in use (another tenantd?); stop it, pick "
                "another TENANTD_LISTEN, or set TENANTD_REUSEPORT=1 to share the port with it",
                cfg->listen);
        rc = -1;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

/* Says what the start-up schema check found; non-zero when serving must not start. */
static int check_schema(const struct config *cfg)
{
    char err[512];
    if (cfg->migrate_on_start) {
        /* An old replica restarting with --migrate during a rollout finds
         * the database ahead: nothing for it to apply, and migrate_up would
         * refuse a newer database; serve as without --migrate. */
        if (migrate_check(cfg->database_url, err, sizeof err) == 0 &&
            strncmp(err, "accepted", 8) == 0) {
            log_msg(LOG_INFO, "database schema: %s; nothing to migrate", err);
            return 0;
        }
        if (migrate_up(cfg->database_url, (int)cfg->migrate_concurrency, err, sizeof err) != 0) {
            log_msg(LOG_ERROR, "migration failed: %s", err);
            return 1;
        }
        return 0;
    }
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
    log_msg(LOG_INFO, "database schema: %s", err);
    return 0;
}

static int cmd_serve(const struct config *cfg)
{
    if (check_listener_free(cfg) != 0 || wait_for_database(cfg) != 0)
        return 1;
    if (check_schema(cfg) != 0)
        return 1;
    for (size_t i = 0; i < NMODULES; i++)
        if (modules[i]->init && modules[i]->init() != 0) {
            log_msg(LOG_ERROR, "module %s failed to start", modules[i]->name);
            return 1;
        }
    struct router *router = router_new(modules, NMODULES);
    if (!router)
        return 1;
    struct server_hooks hooks = {.loop_start = loop_start,
                                 .loop_stop = loop_stop,
                                 .dispatch = auth_dispatch,
                                 .draining = modules_drain};
    int nloops = server_loop_count();
    db_group = cfg->db_home_loops && nloops > 1 ? db_group_new(nloops) : NULL;
    int rc = server_run(router, &hooks);
    db_group_free(db_group); /* every loop's pool has closed */
    db_group = NULL;
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

/*
 * `tenantd healthcheck [--ready]`: GET /health (or /ready) from the server
 * on TENANTD_LISTEN (a wildcard host means this host's loopback), for
 * container health checks and probes without curl in the image. Exit 0 on
 * 200, 1 otherwise, within about 2 seconds.
 */
static int cmd_healthcheck(const struct config *cfg)
{
    const char *path = "/health";
    for (int i = 0; i < cfg->argc; i++) {
        if (!strcmp(cfg->argv[i], "--ready")) {
            path = "/ready";
        } else {
            fprintf(stderr, "tenantd healthcheck: unexpected argument '%s'\n", cfg->argv[i]);
            return 2;
        }
    }
    struct addrinfo *ai = NULL;
    if (listen_addr(cfg->listen, &ai) != 0 || !ai) {
        fprintf(stderr, "tenantd healthcheck: TENANTD_LISTEN '%s' is not host:port\n", cfg->listen);
        return 1;
    }
    struct sockaddr_storage sa;
    memcpy(&sa, ai->ai_addr, ai->ai_addrlen);
    socklen_t salen = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (sa.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY))
            in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr))
            in6->sin6_addr = in6addr_loopback;
    }
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 2};
    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tenantd-healthcheck\r\n"
                     "Connection: close\r\n\r\n",
                     path);
    ssize_t got = -1;
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 &&
        connect(fd, (struct sockaddr *)&sa, salen) == 0 && send(fd, buf, (size_t)n, 0) == n) {
        /* The status line is all we need; it comes in the first segment. */
        got = recv(fd, buf, sizeof buf - 1, 0);
    }
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (got <= 0) {
        fprintf(stderr, "tenantd healthcheck: %s: no answer (%s)\n", cfg->listen,
                got == 0 ? "connection closed" : strerror(e));
        return 1;
    }
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0) {
        char *eol = strpbrk(buf, "\r\n");
        if (eol)
            *eol = '\0';
        fprintf(stderr, "tenantd healthcheck: %s%s: %s\n", cfg->listen, path, buf);
        return 1;
    }
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
            printf("tenantd %s (commit %s)\n", TENANTD_VERSION, config_build_commit());
            return 0;
        }
        config_usage(rc > 0 ? stdout : stderr);
        return rc > 0 ? 0 : 2;
    }
    g_config = &cfg;
    log_set_level(log_level_parse(cfg.log_level));
    config_warn_unknown();

    if (strcmp(cfg.command, "serve") == 0)
        return cmd_serve(&cfg);
    if (strcmp(cfg.command, "migrate") == 0) {
        if (wait_for_database(&cfg) != 0)
            return 1;
        return migrate_cli(cfg.database_url, cfg.argc, cfg.argv, (int)cfg.migrate_concurrency);
    }
    if (strcmp(cfg.command, "worker") == 0) {
        if (wait_for_database(&cfg) != 0)
            return 1;
        return job_worker_main(cfg.argc, cfg.argv);
    }
    if (strcmp(cfg.command, "healthcheck") == 0)
        return cmd_healthcheck(&cfg);
    if (strcmp(cfg.command, "routes") == 0)
        return cmd_routes();
    fprintf(stderr, "tenantd: unknown command '%s' (see tenantd --help)\n", cfg.command);
    return 2;
}
