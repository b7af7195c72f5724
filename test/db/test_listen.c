/*
 * db_listen_wait against the real PostgreSQL: a notification that arrived
 * while the listening connection ran another statement (the listener
 * threads also reap, tick and sample on it) is queued inside libpq, not on
 * the socket; it must be reported at once, not after the next one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "db/listen.h"

#include "dbtest.h"

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType s = PQresultStatus(r);
    CHECK(s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void count(const PGnotify *n, void *ud)
{
    if (!strcmp(n->relname, "tenantd_test_listen"))
        ++*(int *)ud;
}

int main(void)
{
    char url[512];
    const char *env = getenv("DATABASE_URL");
    if (env && *env) {
        snprintf(url, sizeof url, "%s", env);
    } else {
        const char *port = getenv("TENANTD_PG_PORT");
        snprintf(url, sizeof url, "postgresql://tenantd@127.0.0.1:%s/tenantd",
                 port && *port ? port : "55432");
        if (PQping(url) != PQPING_OK)
            CHECK(system(TENANTD_SOURCE_DIR "/deps/pg.sh start >/dev/null") == 0,
                  "deps/pg.sh start failed");
    }
    PGconn *l = PQconnectdb(url), *s = PQconnectdb(url);
    CHECK(PQstatus(l) == CONNECTION_OK && PQstatus(s) == CONNECTION_OK, "connect: %s",
          PQerrorMessage(l));
    exec_ok(l, "LISTEN tenantd_test_listen");

    /* Nothing sent: the time runs out. */
    int n = 0;
    double t0 = now_ms();
    CHECK(db_listen_wait(l, -1, 100, count, &n) == 0 && n == 0, "woke with nothing sent");
    CHECK(now_ms() - t0 >= 90, "returned before the timeout");

    /* Sent while idle: on the socket. */
    exec_ok(s, "NOTIFY tenantd_test_listen");
    t0 = now_ms();
    CHECK(db_listen_wait(l, -1, 5000, count, &n) == DB_LISTEN_NOTIFIED && n == 1,
          "idle notification not reported (n=%d)", n);

    /* Sent while the listener runs a statement: queued inside libpq. */
    for (int round = 0; round < 3; round++) {
        exec_ok(s, "NOTIFY tenantd_test_listen");
        usleep(50 * 1000);
        exec_ok(l, "SELECT 1"); /* reads the notification with its answer */
        n = 0;
        t0 = now_ms();
        int f = db_listen_wait(l, -1, 2000, count, &n);
        double took = now_ms() - t0;
        CHECK(f == DB_LISTEN_NOTIFIED && n == 1 && took < 500,
              "round %d: a notification queued during a statement was reported after %.0f ms "
              "(flags %d, n=%d)",
              round, took, f, n);
    }

    /* The wake fd. */
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    CHECK(write(p[1], "x", 1) == 1, "write");
    CHECK(db_listen_wait(l, p[0], 2000, count, &n) == DB_LISTEN_WOKEN, "wake fd not reported");

    /* A lost connection. */
    char sql[80];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", PQbackendPID(l));
    exec_ok(s, sql);
    /* The server's goodbye and the end of the stream may come in two reads. */
    int f = 0;
    for (int i = 0; i < 5 && !(f & DB_LISTEN_LOST); i++)
        f = db_listen_wait(l, -1, 2000, count, &n);
    CHECK(f & DB_LISTEN_LOST, "lost connection not reported");
    PQfinish(l);
    PQfinish(s);
    close(p[0]);
    close(p[1]);
    puts("ok");
    return 0;
}
