/*
 * The pool across a PostgreSQL restart, on a private cluster (own folder
 * and port, made with deps/pg.sh and removed at exit): the shared cluster
 * must never be stopped. While the server is down every query fails
 * DB_UNAVAILABLE within the wait timeout (none hangs), the pool keeps
 * retrying with back-off, and once the server is back queries succeed again
 * in the right schema without any help.
 */
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <uv.h>

#include "db/db.h"

#include "dbtest.h"

static char tmpdir[256];
static char pg_env[512]; /* "TENANTD_PG_DIR=... TENANTD_PG_PORT=..." for deps/pg.sh */
static int port;
static bool cluster_made;

static int pg_sh(const char *cmd)
{
    char line[1024];
    snprintf(line, sizeof line, "%s %s/deps/pg.sh %s >/dev/null 2>&1", pg_env, TENANTD_SOURCE_DIR,
             cmd);
    return system(line);
}

static void cleanup(void)
{
    if (!cluster_made)
        return;
    cluster_made = false;
    pg_sh("stop");
    char line[600];
    snprintf(line, sizeof line, "rm -rf '%s'", tmpdir);
    if (system(line) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
              getsockname(s, (struct sockaddr *)&a, &len) == 0,
          "cannot find a free port");
    close(s);
    return ntohs(a.sin_port);
}

/* ---- the loop ---- */

static uv_loop_t loop;
static struct db_pool *pool;
static int answered, ok, unavailable, other;
static char last_name[32];

/* A tenant statement: the pool puts the schema in for {schema}. */
static const struct db_stmt st_name = {"restart_name", "SELECT name FROM {schema}.info"};

static void on_result(struct db_result *r, void *ud)
{
    (void)ud;
    answered++;
    if (r->status == DB_OK) {
        ok++;
        snprintf(last_name, sizeof last_name, "%s", PQgetvalue(r->res, 0, 0));
    } else if (r->status == DB_UNAVAILABLE) {
        unavailable++;
        CHECK(r->message && *r->message, "DB_UNAVAILABLE without a message");
    } else {
        other++;
        fprintf(stderr, "unexpected DB_ERROR %s: %s\n", r->sqlstate, r->message);
    }
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* One query for schema "r1"; runs the loop until it is answered. Returns
 * its status and how long it took. */
static enum db_status one_query(uint64_t *ms)
{
    int before = answered, ok_before = ok, unav_before = unavailable;
    uint64_t start = uv_hrtime();
    db_query(pool, "r1", &st_name, 0, NULL, on_result, NULL);
    while (answered == before) {
        uv_run(&loop, UV_RUN_ONCE);
        CHECK((uv_hrtime() - start) / 1000000 < 10000, "a query hung for 10 s");
    }
    *ms = (uv_hrtime() - start) / 1000000;
    if (ok > ok_before)
        return DB_OK;
    if (unavailable > unav_before)
        return DB_UNAVAILABLE;
    return DB_ERROR;
}

static bool closed;
static void on_closed(void *ud)
{
    (void)ud;
    closed = true;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tenantd-dbrestart-XXXXXX");
    CHECK(mkdtemp(tmpdir), "mkdtemp");
    cluster_made = true;
    atexit(cleanup);
    chmod(tmpdir, 0755); /* as root, pg.sh runs PostgreSQL as `postgres` */
    port = free_port();
    snprintf(pg_env, sizeof pg_env, "TENANTD_PG_DIR='%s/pg' TENANTD_PG_PORT=%d", tmpdir, port);
    CHECK(pg_sh("start") == 0, "cannot start a private cluster in %s", tmpdir);

    char url[256];
    snprintf(url, sizeof url, "postgresql://tenantd@127.0.0.1:%d/tenantd", port);
    PGconn *admin = PQconnectdb(url);
    CHECK(PQstatus(admin) == CONNECTION_OK, "%s", PQerrorMessage(admin));
    PGresult *r = PQexec(admin, "CREATE SCHEMA r1; CREATE TABLE r1.info (name text); "
                                "INSERT INTO r1.info VALUES ('r1')");
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQerrorMessage(admin));
    PQclear(r);
    PQfinish(admin);

    CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    struct db_pool_options o = {
        .conninfo = url,
        .size = 2,
        .pipeline_depth = 8,
        .wait_timeout_ms = 500,
        .statement_timeout_ms = 5000,
        .reconnect_max_ms = 300,
    };
    pool = db_pool_new(&loop, &o);
    CHECK(pool, "db_pool_new");

    uint64_t ms;
    CHECK(one_query(&ms) == DB_OK && strcmp(last_name, "r1") == 0, "first query: %s", last_name);
    printf("ok - up: answered in %llu ms\n", (unsigned long long)ms);

    CHECK(pg_sh("stop") == 0, "cannot stop the private cluster");
    /* The pool learns of the shutdown from the socket; every query now
     * fails within the wait timeout, repeatedly, and never hangs. */
    for (int i = 0; i < 5; i++) {
        enum db_status st = one_query(&ms);
        CHECK(st == DB_UNAVAILABLE, "query %d while down: status %d", i, st);
        CHECK(ms < 2000, "query %d while down took %llu ms", i, (unsigned long long)ms);
    }
    struct db_pool_stats s;
    db_pool_stats(pool, &s);
    CHECK(s.reconnects >= 2, "the pool must keep retrying while down: reconnects=%lu",
          s.reconnects);
    printf("ok - down: DB_UNAVAILABLE, %lu reconnect attempts so far\n", s.reconnects);

    CHECK(pg_sh("start") == 0, "cannot restart the private cluster");
    uint64_t back_start = uv_hrtime();
    enum db_status st;
    do {
        st = one_query(&ms);
        CHECK((uv_hrtime() - back_start) / 1000000 < 10000, "no DB_OK within 10 s of the restart");
    } while (st != DB_OK);
    CHECK(strcmp(last_name, "r1") == 0, "after the restart read %s", last_name);
    for (int i = 0; i < 20; i++)
        CHECK(one_query(&ms) == DB_OK, "query %d after the restart failed", i);
    printf("ok - back: DB_OK %llu ms after the restart\n",
           (unsigned long long)((uv_hrtime() - back_start) / 1000000));
    CHECK(other == 0, "%d queries failed with DB_ERROR", other);

    db_pool_close(pool, on_closed, NULL);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0, "handles left open after db_pool_close");
    cleanup();
    printf("3 passed, 0 failed\n");
    return 0;
}
