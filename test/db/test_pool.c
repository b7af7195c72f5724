/*
 * The db pool against a real PostgreSQL: a fresh database per run in the
 * shared cluster (deps/pg.sh start, or DATABASE_URL), dropped at exit.
 * Each test makes its own loop and pool, closes both, and checks that no
 * handle is left (uv_loop_close == 0); run under the ASan build for leaks.
 */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers" /* {a, b} leaves calls = 0 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <uv.h>

#include "db/db.h"

#include "dbtest.h"

/* ---- setup ---- */

static char base_url[512]; /* the cluster's maintenance database */
static char test_conninfo[1024];
static char test_db[64];
static PGconn *admin; /* blocking connection to the test database */
static bool db_created;

/* Builds a keyword=value conninfo of `url` with dbname replaced. */
static void conninfo_with_db(const char *url, const char *db, char *out, size_t outlen)
{
    char *err = NULL;
    PQconninfoOption *parsed = PQconninfoParse(url, &err);
    CHECK(parsed, "cannot parse %s: %s", url, err ? err : "?");
    size_t n = 0;
    out[0] = 0;
    for (PQconninfoOption *o = parsed; o->keyword; o++) {
        const char *v = strcmp(o->keyword, "dbname") == 0 ? db : o->val;
        if (!v || !*v)
            continue;
        n += (size_t)snprintf(out + n, outlen - n, "%s='", o->keyword);
        for (const char *s = v; *s && n + 3 < outlen; s++) {
            if (*s == '\'' || *s == '\\')
                out[n++] = '\\';
            out[n++] = *s;
        }
        n += (size_t)snprintf(out + n, outlen - n, "' ");
        CHECK(n < outlen, "conninfo too long");
    }
    PQconninfoFree(parsed);
}

static PGresult *admin_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    CHECK(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    return r;
}

static void drop_test_db(void)
{
    if (admin) {
        PQfinish(admin);
        admin = NULL;
    }
    if (!db_created)
        return;
    PGconn *root = PQconnectdb(base_url);
    if (PQstatus(root) == CONNECTION_OK) {
        char sql[160];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", test_db);
        PQclear(PQexec(root, sql));
    }
    PQfinish(root);
    db_created = false;
}

static void setup_db(void)
{
    const char *env = getenv("DATABASE_URL");
    if (env && *env) {
        snprintf(base_url, sizeof base_url, "%s", env);
    } else {
        const char *port = getenv("TENANTD_PG_PORT");
        snprintf(base_url, sizeof base_url, "postgresql://tenantd@127.0.0.1:%s/tenantd",
                 port && *port ? port : "55432");
        /* Start the shared cluster only when it is not already serving. */
        if (PQping(base_url) != PQPING_OK)
            CHECK(system(TENANTD_SOURCE_DIR "/deps/pg.sh start >/dev/null") == 0,
                  "deps/pg.sh start failed");
    }
    PGconn *root = PQconnectdb(base_url);
    CHECK(PQstatus(root) == CONNECTION_OK, "cannot connect to %s: %s", base_url,
          PQerrorMessage(root));
    snprintf(test_db, sizeof test_db, "t_dbpool_%d_%u", (int)getpid(),
             (unsigned)(uv_hrtime() % 1000000));
    char sql[160];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", test_db);
    PQclear(admin_exec(root, sql));
    db_created = true;
    atexit(drop_test_db);
    PQfinish(root);

    conninfo_with_db(base_url, test_db, test_conninfo, sizeof test_conninfo);
    admin = PQconnectdb(test_conninfo);
    CHECK(PQstatus(admin) == CONNECTION_OK, "cannot connect to the test database: %s",
          PQerrorMessage(admin));
    PQclear(admin_exec(admin, "SET client_min_messages = warning"));
    for (int i = 1; i <= 10; i++) {
        snprintf(sql, sizeof sql,
                 "CREATE SCHEMA t%d; CREATE TABLE t%d.info (name text); "
                 "INSERT INTO t%d.info VALUES ('t%d')",
                 i, i, i, i);
        PQclear(admin_exec(admin, sql));
    }
    PQclear(admin_exec(admin, "CREATE TABLE public.info (name text); "
                              "INSERT INTO public.info VALUES ('public')"));
}

/* ---- a loop per test ---- */

struct env {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps run_until from blocking forever */
    struct db_pool *pool;
    bool closed;
};

static _Thread_local bool in_db_query; /* set around db_query: callbacks must never see it */

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void env_init(struct env *e, struct db_pool_options o)
{
    memset(e, 0, sizeof *e);
    CHECK(uv_loop_init(&e->loop) == 0, "uv_loop_init");
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, on_tick, 10, 10);
    if (!o.conninfo)
        o.conninfo = test_conninfo;
    e->pool = db_pool_new(&e->loop, &o);
    CHECK(e->pool, "db_pool_new returned NULL");
}

/* Runs the loop until *counter reaches target; fails after timeout_ms. */
static void run_until(struct env *e, const int *counter, int target, int timeout_ms,
                      const char *what)
{
    uint64_t start = uv_hrtime();
    while (*counter < target) {
        uv_run(&e->loop, UV_RUN_ONCE);
        CHECK(*counter >= target || (uv_hrtime() - start) / 1000000 < (uint64_t)timeout_ms,
              "%s: only %d of %d after %d ms", what, *counter, target, timeout_ms);
    }
}

static void on_pool_closed(void *ud)
{
    ((struct env *)ud)->closed = true;
}

/* Closes the pool, then the loop; every handle must be gone. */
static void env_close(struct env *e)
{
    db_pool_close(e->pool, on_pool_closed, e);
    int closed = 0;
    uint64_t start = uv_hrtime();
    while (!e->closed) {
        uv_run(&e->loop, UV_RUN_ONCE);
        CHECK((uv_hrtime() - start) / 1000000 < 15000, "db_pool_close did not finish in 15 s");
    }
    (void)closed;
    uv_close((uv_handle_t *)&e->tick, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&e->loop) == 0, "handles left open on the loop after db_pool_close");
}

static void query(struct env *e, const char *schema, const struct db_stmt *s, int n,
                  const char *const *v, db_cb cb, void *ud)
{
    in_db_query = true;
    db_query(e->pool, schema, s, n, v, cb, ud);
    in_db_query = false;
}

static struct db_pool_options opts(int size, int depth)
{
    return (struct db_pool_options){
        .size = size,
        .pipeline_depth = depth,
        .wait_timeout_ms = 10000,
        .statement_timeout_ms = 0,
        .reconnect_max_ms = 1000,
    };
}

static const char *value(const struct db_result *r, int row, int col)
{
    CHECK(r->status == DB_OK, "expected DB_OK, got %d (%s %s)", r->status,
          r->sqlstate ? r->sqlstate : "-", r->message ? r->message : "-");
    CHECK(PQntuples(r->res) > row && PQnfields(r->res) > col, "result has %d rows, %d cols",
          PQntuples(r->res), PQnfields(r->res));
    return PQgetvalue(r->res, row, col);
}

/* ---- 1. many queries over many schemas ---- */

#define MANY 2000
struct many_q {
    int i;
    int calls;
    char schema[8];
    char param[16];
    const char *values[1];
};
static struct many_q many[MANY];
static int many_done;

/* Tenant statements: the pool puts the query's schema in for {schema}. */
static const struct db_stmt st_info = {"test_info_name", "SELECT name FROM {schema}.info"};
static const struct db_stmt st_info_param = {NULL, "SELECT name, $1::int FROM {schema}.info"};

static void many_cb(struct db_result *r, void *ud)
{
    struct many_q *m = ud;
    CHECK(!in_db_query, "callback ran inside db_query");
    m->calls++;
    CHECK(m->calls == 1, "query %d: callback ran %d times", m->i, m->calls);
    CHECK(strcmp(value(r, 0, 0), m->schema) == 0, "query %d for %s read %s", m->i, m->schema,
          value(r, 0, 0));
    if (m->i % 2)
        CHECK(strcmp(value(r, 0, 1), m->param) == 0, "query %d: param %s came back as %s", m->i,
              m->param, value(r, 0, 1));
    many_done++;
}

static void test_many_schemas(void)
{
    struct env e;
    env_init(&e, opts(4, 16));
    for (int i = 0; i < MANY; i++) {
        struct many_q *m = &many[i];
        m->i = i;
        snprintf(m->schema, sizeof m->schema, "t%d", i % 10 + 1);
        snprintf(m->param, sizeof m->param, "%d", i);
        m->values[0] = m->param;
        if (i % 2)
            query(&e, m->schema, &st_info_param, 1, m->values, many_cb, m);
        else
            query(&e, m->schema, &st_info, 0, NULL, many_cb, m);
    }
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.waiting > 0, "2000 queries on 4 connections: some must wait (waiting=%d)", s.waiting);
    run_until(&e, &many_done, MANY, 30000, "2000 queries over 10 schemas");
    db_pool_stats(e.pool, &s);
    CHECK(s.connections >= 1 && s.connections <= 4, "pool of 4 has %d connections", s.connections);
    CHECK(s.waiting == 0 && s.in_use == 0, "after all: waiting=%d in_use=%d", s.waiting, s.in_use);
    CHECK(s.schema_switches == 0, "the pool never switches search_path: %lu", s.schema_switches);
    /* st_info (named) runs for t1, t3, t5, t7, t9: prepared at least once each. */
    CHECK(s.stmt_misses >= 5 && s.stmt_hits > 0, "tenant statements: %lu misses, %lu hits",
          s.stmt_misses, s.stmt_hits);
    PGresult *r =
        admin_exec(admin, "SELECT count(*) FROM pg_stat_activity WHERE "
                          "datname = current_database() AND application_name = 'tenantd'");
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    CHECK(n >= 1 && n <= 4, "server sees %d pool connections (want 1..4)", n);
    env_close(&e);
    for (int i = 0; i < MANY; i++)
        CHECK(many[i].calls == 1, "query %d: %d callbacks", i, many[i].calls);
    printf("ok - many_schemas (%d queries, %lu prepared)\n", MANY, s.stmt_misses);
}

/* ---- 2. one error does not touch the rest of the pipeline ---- */

struct expect {
    const char *schema;
    const struct db_stmt *stmt;
    enum db_status status;
    const char *want; /* value or sqlstate */
    int calls;
};
static int expect_done;

static void expect_cb(struct db_result *r, void *ud)
{
    struct expect *x = ud;
    CHECK(!in_db_query, "callback ran inside db_query");
    x->calls++;
    CHECK(r->status == x->status, "%s: status %d, want %d (%s %s)", x->stmt->sql, r->status,
          x->status, r->sqlstate ? r->sqlstate : "-", r->message ? r->message : "-");
    if (x->status == DB_OK && x->want)
        CHECK(strcmp(value(r, 0, 0), x->want) == 0, "%s in %s: got %s, want %s", x->stmt->sql,
              x->schema, value(r, 0, 0), x->want);
    if (x->status == DB_ERROR) {
        CHECK(r->sqlstate && strcmp(r->sqlstate, x->want) == 0, "%s: sqlstate %s, want %s",
              x->stmt->sql, r->sqlstate ? r->sqlstate : "NULL", x->want);
        CHECK(r->message && *r->message, "error without a message");
        CHECK(r->res == NULL, "DB_ERROR with a result");
    }
    if (x->status == DB_UNAVAILABLE)
        CHECK(r->message && *r->message, "unavailable without a message");
    expect_done++;
}

static const struct db_stmt st_one = {NULL, "SELECT 1"};
static const struct db_stmt st_three = {NULL, "SELECT 3"};
static const struct db_stmt st_div0 = {NULL, "SELECT 1/0"};
static const struct db_stmt st_div0_named = {"test_div0", "SELECT 1/0"};
static const struct db_stmt st_bad_sql = {"test_bad", "SELECT FROM nowhere_at_all"};

static void run_expect(struct env *e, struct expect *xs, int n, const char *what)
{
    expect_done = 0;
    for (int i = 0; i < n; i++)
        query(e, xs[i].schema, xs[i].stmt, 0, NULL, expect_cb, &xs[i]);
    run_until(e, &expect_done, n, 10000, what);
    for (int i = 0; i < n; i++)
        CHECK(xs[i].calls == 1, "%s #%d: %d callbacks", what, i, xs[i].calls);
}

static void test_error_isolation(void)
{
    struct env e;
    env_init(&e, opts(1, 16));
    /* A tenant statement whose Parse fails (no such schema) leaves nothing
     * in the cache: once the schema exists, it is prepared again. */
    struct expect first[] = {
        {"t_late", &st_info, DB_ERROR, "42P01"},
        {"t1", &st_div0, DB_ERROR, "22012"},
        {"t1", &st_info, DB_OK, "t1"},
    };
    run_expect(&e, first, 3, "a failed Parse");
    PQclear(admin_exec(admin, "CREATE SCHEMA t_late; CREATE TABLE t_late.info (name text); "
                              "INSERT INTO t_late.info VALUES ('t_late')"));
    struct expect again = {"t_late", &st_info, DB_OK, "t_late"};
    run_expect(&e, &again, 1, "the same statement once the schema exists");
    PQclear(admin_exec(admin, "DROP SCHEMA t_late CASCADE"));
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.schema_switches == 0, "switches: %lu", s.schema_switches);
    static const struct db_stmt no_schema = {NULL, "SELECT 1 FROM {schema}.info"};
    struct expect unqualified = {NULL, &no_schema, DB_ERROR, "XX000"};
    run_expect(&e, &unqualified, 1, "a tenant statement without a schema");

    /* Now bound to t1: these share one pipeline on the single connection. */
    struct expect xs[] = {
        {"t1", &st_one, DB_OK, "1"},
        {"t1", &st_div0, DB_ERROR, "22012"},
        {"t1", &st_three, DB_OK, "3"},
        {"t1", &st_div0_named, DB_ERROR, "22012"},
        {"t1", &st_info, DB_OK, "t1"},
        {"t1", &st_bad_sql, DB_ERROR, "42P01"},
        {"t1", &st_div0_named, DB_ERROR, "22012"},
        {"t1", &st_info, DB_OK, "t1"},
        {"t2", &st_info, DB_OK, "t2"},
        {"a_schema_name_longer_than_the_sixty_three_bytes_postgresql_keeps_xx", &st_one, DB_ERROR,
         "42602"},
        {"t1", &st_one, DB_OK, "1"},
    };
    run_expect(&e, xs, (int)(sizeof xs / sizeof xs[0]), "errors inside a pipeline");
    db_pool_stats(e.pool, &s);
    CHECK(s.connections == 1, "pool of 1 has %d connections", s.connections);
    env_close(&e);
    printf("ok - error_isolation\n");
}

/* ---- 3. prepared statements are prepared once per connection ---- */

static const struct db_stmt st_prepared_count = {
    "test_prepared_count",
    "SELECT count(*) FROM pg_prepared_statements WHERE name = 'test_prepared_count'"};
static const struct db_stmt st_prepared_name = {"test_prepared_name",
                                                "SELECT name FROM {schema}.info"};

struct chain {
    struct env *e;
    int n, done;
    char want[8];
};

static void chain_next(struct chain *c);

static void chain_cb(struct db_result *r, void *ud)
{
    struct chain *c = ud;
    CHECK(!in_db_query, "callback ran inside db_query");
    if (c->done % 2 == 0)
        CHECK(strcmp(value(r, 0, 0), "1") == 0, "run %d: statement prepared %s times", c->done,
              value(r, 0, 0));
    else
        CHECK(strcmp(value(r, 0, 0), c->want) == 0, "run %d: named statement read %s, want %s",
              c->done, value(r, 0, 0), c->want);
    c->done++;
    if (c->done < c->n)
        chain_next(c);
}

/* Alternates the count of its own preparations with a tenant statement over
 * two schemas (prepared once per schema). */
static void chain_next(struct chain *c)
{
    const char *schema = (c->done / 2) % 2 ? "t2" : "t3";
    snprintf(c->want, sizeof c->want, "%s", schema);
    query(c->e, schema, c->done % 2 ? &st_prepared_name : &st_prepared_count, 0, NULL, chain_cb, c);
}

static void test_prepared_reuse(void)
{
    struct env e;
    env_init(&e, opts(1, 16));
    struct chain c = {.e = &e, .n = 40};
    chain_next(&c);
    run_until(&e, &c.done, c.n, 10000, "prepared statement chain");
    /* Through the pool's own backend: the counter, and the tenant statement
     * once for t2 and once for t3. */
    static const struct db_stmt all = {NULL, "SELECT count(*) FROM pg_prepared_statements"};
    struct expect x = {"t2", &all, DB_OK, "3"};
    run_expect(&e, &x, 1, "prepared statements on the backend");
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.schema_switches == 0, "switches: %lu", s.schema_switches);
    CHECK(s.stmt_misses == 2 && s.stmt_hits == 18, "misses %lu, hits %lu", s.stmt_misses,
          s.stmt_hits);
    env_close(&e);
    printf("ok - prepared_reuse\n");
}

/* ---- 4. waiting for a connection times out ---- */

static uint64_t t_unavail_ms;
static void timed_cb(struct db_result *r, void *ud)
{
    t_unavail_ms = uv_hrtime() / 1000000;
    expect_cb(r, ud);
}

static void test_wait_timeout(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 1);
    o.wait_timeout_ms = 200;
    env_init(&e, o);
    static const struct db_stmt sleep1 = {NULL, "SELECT pg_sleep(1)::text"};
    struct expect slow = {"t1", &sleep1, DB_OK, ""};
    struct expect blocked = {"t1", &st_one, DB_UNAVAILABLE, NULL};
    expect_done = 0;
    uint64_t start = uv_hrtime() / 1000000;
    query(&e, "t1", &sleep1, 0, NULL, expect_cb, &slow);
    query(&e, "t1", &st_one, 0, NULL, timed_cb, &blocked);
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.waiting >= 1, "second query should wait, waiting=%d", s.waiting);
    run_until(&e, &expect_done, 2, 5000, "wait timeout");
    uint64_t waited = t_unavail_ms - start;
    CHECK(waited >= 150 && waited < 900, "DB_UNAVAILABLE after %llu ms, want ~200",
          (unsigned long long)waited);
    db_pool_stats(e.pool, &s);
    CHECK(s.waiting == 0, "waiting=%d after the timeout", s.waiting);
    env_close(&e);
    printf("ok - wait_timeout (%llu ms)\n", (unsigned long long)waited);
}

/* ---- 5. pg_terminate_backend: in flight -> unavailable, then reconnect ---- */

static void terminate_pool_backends(uv_timer_t *t)
{
    struct db_pool_stats s;
    db_pool_stats(((struct env *)t->data)->pool, &s);
    CHECK(s.waiting == 0 && s.in_use >= 1, "all six should be in flight: waiting=%d in_use=%d",
          s.waiting, s.in_use);
    PGresult *r = admin_exec(admin, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = current_database() "
                                    "AND application_name = 'tenantd'");
    CHECK(atoi(PQgetvalue(r, 0, 0)) >= 1, "no pool backend to terminate");
    PQclear(r);
}

static void test_terminate(void)
{
    struct env e;
    env_init(&e, opts(2, 16));
    /* Warm up both connections, one per schema: the two overlap in time, so
     * each needs its own connection. */
    static const struct db_stmt warm_stmt = {NULL, "SELECT name FROM {schema}.info, pg_sleep(0.2)"};
    struct expect warm[] = {{"t4", &warm_stmt, DB_OK, "t4"}, {"t5", &warm_stmt, DB_OK, "t5"}};
    run_expect(&e, warm, 2, "warm-up");

    static const struct db_stmt slow = {"test_slow", "SELECT name FROM {schema}.info, pg_sleep(2)"};
    struct expect inflight[6];
    for (int i = 0; i < 6; i++)
        inflight[i] = (struct expect){i % 2 ? "t4" : "t5", &slow, DB_UNAVAILABLE, NULL};
    uv_timer_t kill;
    uv_timer_init(&e.loop, &kill);
    kill.data = &e;
    uv_timer_start(&kill, terminate_pool_backends, 300, 0);
    uint64_t start = uv_hrtime() / 1000000;
    run_expect(&e, inflight, 6, "queries on terminated backends");
    uint64_t took = uv_hrtime() / 1000000 - start;
    CHECK(took < 1500, "in-flight queries failed after %llu ms, not promptly",
          (unsigned long long)took);
    uv_close((uv_handle_t *)&kill, NULL);

    /* A backend killed while idle is noticed when its FATAL message
     * arrives (a query sent before that fails like one in flight). */
    for (uint64_t t0 = uv_hrtime(); uv_hrtime() - t0 < 200 * 1000000ull;)
        uv_run(&e.loop, UV_RUN_ONCE);
    /* Queued right away: they wait out the back-off and must land in the
     * right schema on the new backends. */
    struct expect after[] = {
        {"t4", &st_info, DB_OK, "t4"},
        {"t5", &st_info, DB_OK, "t5"},
        {"t6", &st_info, DB_OK, "t6"},
        {"t4", &slow, DB_OK, "t4"},
    };
    run_expect(&e, after, 4, "queries after reconnect");
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.reconnects >= 1, "reconnects=%lu", s.reconnects);
    env_close(&e);
    printf("ok - terminate (%lu reconnects)\n", s.reconnects);
}

/* ---- 6. statement_timeout ---- */

static void test_statement_timeout(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 16);
    o.statement_timeout_ms = 100;
    env_init(&e, o);
    static const struct db_stmt sleep2 = {NULL, "SELECT pg_sleep(2)"};
    static const struct db_stmt show = {NULL, "SELECT current_setting('statement_timeout') || ' ' "
                                              "|| current_setting('application_name')"};
    struct expect xs[] = {
        {"t1", &st_info, DB_OK, "t1"},
        {"t1", &sleep2, DB_ERROR, "57014"},
        {"t1", &st_info, DB_OK, "t1"},
        {"t1", &show, DB_OK, "100ms tenantd"},
    };
    run_expect(&e, xs, 4, "statement timeout");
    env_close(&e);
    printf("ok - statement_timeout\n");
}

/* ---- 7. a statement that leaves a transaction open gets a ROLLBACK ---- */

static void test_open_transaction(void)
{
    struct env e;
    env_init(&e, opts(1, 16));
    static const struct db_stmt begin = {NULL, "BEGIN"};
    static const struct db_stmt savepoint = {NULL, "SAVEPOINT x"};
    struct expect a[] = {{"t7", &begin, DB_OK, NULL}};
    run_expect(&e, a, 1, "BEGIN");
    /* SAVEPOINT works only inside a block: it must fail now. */
    struct expect b[] = {{"t7", &savepoint, DB_ERROR, "25P01"}, {"t7", &st_info, DB_OK, "t7"}};
    run_expect(&e, b, 2, "after BEGIN");
    env_close(&e);
    printf("ok - open_transaction\n");
}

/* ---- 8. close with queries in flight and waiting ---- */

static void test_close_inflight(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 1);
    env_init(&e, o);
    static const struct db_stmt sleep = {NULL, "SELECT pg_sleep(0.3)::text"};
    struct expect running = {"t1", &sleep, DB_OK, ""};
    struct expect waiting = {"t1", &st_one, DB_UNAVAILABLE, NULL};
    struct expect late = {"t1", &st_one, DB_UNAVAILABLE, NULL};
    expect_done = 0;
    query(&e, "t1", &sleep, 0, NULL, expect_cb, &running);
    query(&e, "t1", &st_one, 0, NULL, expect_cb, &waiting);
    /* Let the first one reach the server before closing. */
    struct db_pool_stats s;
    uint64_t start = uv_hrtime();
    do {
        uv_run(&e.loop, UV_RUN_ONCE);
        db_pool_stats(e.pool, &s);
        CHECK((uv_hrtime() - start) / 1000000 < 5000, "never got a connection");
    } while (s.in_use == 0);
    db_pool_close(e.pool, on_pool_closed, &e);
    query(&e, "t1", &st_one, 0, NULL, expect_cb, &late);
    CHECK(expect_done == 0 && !e.closed, "db_pool_close ran a callback synchronously");
    while (!e.closed) {
        uv_run(&e.loop, UV_RUN_ONCE);
        CHECK((uv_hrtime() - start) / 1000000 < 10000, "close did not finish");
    }
    CHECK(expect_done == 3, "close must answer every query before done: %d of 3", expect_done);
    CHECK(running.calls == 1 && waiting.calls == 1 && late.calls == 1, "callback counts");
    uv_close((uv_handle_t *)&e.tick, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&e.loop) == 0, "handles left open after close");
    printf("ok - close_inflight\n");
}

/* ---- 9. an unreachable server: unavailable in time, clean close ---- */

static void test_unreachable(void)
{
    struct env e;
    struct db_pool_options o = opts(2, 16);
    o.conninfo = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2";
    o.wait_timeout_ms = 300;
    o.reconnect_max_ms = 100;
    env_init(&e, o);
    struct expect xs[] = {{"t1", &st_one, DB_UNAVAILABLE, NULL},
                          {"t2", &st_one, DB_UNAVAILABLE, NULL}};
    uint64_t start = uv_hrtime() / 1000000;
    run_expect(&e, xs, 2, "unreachable server");
    uint64_t took = uv_hrtime() / 1000000 - start;
    CHECK(took >= 250 && took < 2000, "unavailable after %llu ms, want ~300",
          (unsigned long long)took);
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.reconnects >= 1, "retries while waiting: reconnects=%lu", s.reconnects);
    env_close(&e);

    CHECK(db_pool_new(&e.loop, &(struct db_pool_options){.conninfo = "host='unclosed",
                                                         .size = 1,
                                                         .pipeline_depth = 1,
                                                         .wait_timeout_ms = 1,
                                                         .reconnect_max_ms = 10}) == NULL,
          "a bad conninfo must be refused");
    printf("ok - unreachable (%lu reconnects)\n", s.reconnects);
}

/* ---- 10. libpq changes sockets while connecting ---- */

/* prefer-standby against two entries of the same primary: libpq connects,
 * finds no standby, closes, tries the next host, then starts over in "any"
 * mode, each time on a new socket (often with the old fd number). The pool
 * must follow every change or the connect hangs. */
static void test_socket_change(void)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(test_conninfo, &err);
    CHECK(o, "parse: %s", err ? err : "?");
    const char *host = "127.0.0.1", *port = "5432";
    for (PQconninfoOption *i = o; i->keyword; i++) {
        if (strcmp(i->keyword, "host") == 0 && i->val && *i->val)
            host = i->val;
        if (strcmp(i->keyword, "port") == 0 && i->val && *i->val)
            port = i->val;
    }
    char ci[1400];
    snprintf(ci, sizeof ci, "%s host=%s,%s port=%s,%s target_session_attrs=prefer-standby",
             test_conninfo, host, host, port, port);
    PQconninfoFree(o);

    struct env e;
    struct db_pool_options opt = opts(2, 4);
    opt.conninfo = ci;
    opt.wait_timeout_ms = 5000;
    env_init(&e, opt);
    struct expect xs[6];
    static const char *names[] = {"t1", "t2", "t3"};
    for (int i = 0; i < 6; i++)
        xs[i] = (struct expect){names[i % 3], &st_info, DB_OK, names[i % 3]};
    run_expect(&e, xs, 6, "connect through host fallbacks");
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.reconnects == 0, "fallbacks are one connect, not reconnects: %lu", s.reconnects);
    env_close(&e);
    printf("ok - socket_change\n");
}

/* ---- 11. server notices go to the JSON log ---- */

static void test_notice(void)
{
    struct env e;
    env_init(&e, opts(1, 4));
    static const struct db_stmt warn = {NULL,
                                        "DO $$BEGIN RAISE WARNING 'pool test warning'; END$$"};
    char path[] = "/tmp/tenantd-dbnotice-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    struct expect x = {"t1", &warn, DB_OK, NULL};
    run_expect(&e, &x, 1, "a statement raising a warning");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[4096] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(path);
    CHECK(n > 0 && strstr(buf, "\"level\":\"warn\"") && strstr(buf, "pool test warning"),
          "the warning should be a JSON log line, stderr had: %s", buf);
    CHECK(!strstr(buf, "WARNING:  pool test warning"), "raw libpq notice on stderr: %s", buf);
    env_close(&e);
    printf("ok - notice\n");
}

/* ---- 12. a backend that served many schemas is replaced ---- */

#define RECYCLE_RUNS 150
#define RECYCLE_AT 100
struct recycle_chain {
    struct env *e;
    int done;
    char schema[16];
    int pids[RECYCLE_RUNS];
};
static const struct db_stmt st_pid = {"test_backend_pid", "SELECT pg_backend_pid()::text"};

static void recycle_next(struct recycle_chain *c);
static void recycle_cb(struct db_result *r, void *ud)
{
    struct recycle_chain *c = ud;
    c->pids[c->done] = atoi(value(r, 0, 0));
    c->done++;
    if (c->done < RECYCLE_RUNS)
        recycle_next(c);
}

/* Each query a new schema (a plain statement: they need not exist). */
static void recycle_next(struct recycle_chain *c)
{
    snprintf(c->schema, sizeof c->schema, "nx%d", c->done);
    query(c->e, c->schema, &st_pid, 0, NULL, recycle_cb, c);
}

static void test_recycle(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 4);
    o.recycle_schemas = RECYCLE_AT;
    env_init(&e, o);
    static struct recycle_chain c;
    c.e = &e;
    recycle_next(&c);
    run_until(&e, &c.done, RECYCLE_RUNS, 20000, "queries over 150 schemas");
    int changes = 0, at = -1;
    for (int i = 1; i < RECYCLE_RUNS; i++)
        if (c.pids[i] != c.pids[i - 1]) {
            changes++;
            at = i;
        }
    CHECK(changes == 1 && at == RECYCLE_AT,
          "want one new backend after %d schemas, got %d changes (last at %d)", RECYCLE_AT, changes,
          at);
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.recycles == 1, "recycles=%lu", s.recycles);
    CHECK(s.reconnects == 0, "a planned replacement is not a reconnect: %lu", s.reconnects);
    env_close(&e);
    printf("ok - recycle (new backend at query %d)\n", at);
}

/* ---- 13. a backend that stops answering is given up on ---- */

static int stopped_pid;
static void continue_stopped(void)
{
    if (stopped_pid > 0)
        kill(stopped_pid, SIGCONT);
    stopped_pid = 0;
}

static void test_watchdog(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 4);
    o.statement_timeout_ms = 200; /* the watchdog allows statement_timeout + 5 s */
    env_init(&e, o);
    static const struct db_stmt pid = {NULL, "SELECT pg_backend_pid()::text"};
    struct expect x = {"t1", &pid, DB_OK, NULL};
    run_expect(&e, &x, 1, "backend pid");
    /* Backends of the earlier tests' pools were told to go but may still be
     * exiting on a busy machine: wait for them (at most 10 s). */
    PGresult *r = NULL;
    for (int tries = 0; tries < 200; tries++) {
        PQclear(r);
        r = admin_exec(admin, "SELECT pid FROM pg_stat_activity WHERE datname = "
                              "current_database() AND application_name = 'tenantd'");
        if (PQntuples(r) == 1)
            break;
        usleep(50 * 1000);
    }
    CHECK(PQntuples(r) == 1, "want one pool backend, see %d", PQntuples(r));
    stopped_pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    atexit(continue_stopped);
    CHECK(kill(stopped_pid, SIGSTOP) == 0, "cannot stop backend %d", stopped_pid);

    uint64_t start = uv_hrtime() / 1000000;
    struct expect hung = {"t1", &st_one, DB_UNAVAILABLE, NULL};
    run_expect(&e, &hung, 1, "a query on a frozen backend");
    uint64_t took = uv_hrtime() / 1000000 - start;
    continue_stopped();
    CHECK(took >= 5000 && took < 8000, "gave up after %llu ms, want ~5200",
          (unsigned long long)took);
    struct expect after = {"t1", &st_info, DB_OK, "t1"};
    run_expect(&e, &after, 1, "a query after giving up");
    env_close(&e);
    printf("ok - watchdog (%llu ms)\n", (unsigned long long)took);
}

/* ---- 14. a busy schema does not starve the others ---- */

struct flood {
    struct env *e;
    bool stop;
    int answered, outstanding;
};
static void flood_cb(struct db_result *r, void *ud)
{
    struct flood *f = ud;
    CHECK(r->status == DB_OK, "flood query failed: %s", r->message ? r->message : "?");
    f->answered++;
    if (f->stop) {
        f->outstanding--;
        return;
    }
    query(f->e, "t1", &st_one, 0, NULL, flood_cb, f);
}

static uint64_t starve_start;
static int starve_done;
static uint64_t starve_ms[2];
static void starve_cb(struct db_result *r, void *ud)
{
    int i = (int)(intptr_t)ud;
    CHECK(r->status == DB_OK, "query %d behind the flood: status %d (%s)", i, r->status,
          r->message ? r->message : "-");
    starve_ms[i] = uv_hrtime() / 1000000 - starve_start;
    starve_done++;
}

static void test_no_starvation(void)
{
    struct env e;
    struct db_pool_options o = opts(2, 16);
    o.wait_timeout_ms = 3000;
    env_init(&e, o);
    /* 64 queries for t1 that re-issue themselves: always more than the two
     * pipelines hold, so t1 queries are always waiting too. */
    struct flood f = {.e = &e, .outstanding = 64};
    for (int i = 0; i < 64; i++)
        query(&e, "t1", &st_one, 0, NULL, flood_cb, &f);
    run_until(&e, &f.answered, 500, 10000, "the flood getting going");
    starve_start = uv_hrtime() / 1000000;
    query(&e, "t2", &st_info, 0, NULL, starve_cb, (void *)(intptr_t)0);
    query(&e, "t3", &st_info, 0, NULL, starve_cb, (void *)(intptr_t)1);
    run_until(&e, &starve_done, 2, 5000, "t2 and t3 behind a t1 flood");
    f.stop = true;
    uint64_t wait_start = uv_hrtime();
    while (f.outstanding > 0) {
        uv_run(&e.loop, UV_RUN_ONCE);
        CHECK((uv_hrtime() - wait_start) / 1000000 < 5000, "the flood did not wind down");
    }
    CHECK(starve_ms[0] < 1000 && starve_ms[1] < 1000, "t2 after %llu ms, t3 after %llu ms",
          (unsigned long long)starve_ms[0], (unsigned long long)starve_ms[1]);
    env_close(&e);
    printf("ok - no_starvation (t2 %llu ms, t3 %llu ms)\n", (unsigned long long)starve_ms[0],
           (unsigned long long)starve_ms[1]);
}

/* ---- 15. host names are resolved off the loop ---- */

static void test_resolve(void)
{
    char ci[1200];
    snprintf(ci, sizeof ci, "%s host=localhost", test_conninfo);
    struct env e;
    struct db_pool_options o = opts(2, 4);
    o.conninfo = ci;
    env_init(&e, o);
    struct expect xs[] = {{"t8", &st_info, DB_OK, "t8"}, {"t9", &st_info, DB_OK, "t9"}};
    run_expect(&e, xs, 2, "connecting through a host name");
    env_close(&e);

    snprintf(ci, sizeof ci, "%s host=no-such-host.invalid", test_conninfo);
    o.wait_timeout_ms = 300;
    env_init(&e, o);
    struct expect bad = {"t8", &st_info, DB_UNAVAILABLE, NULL};
    run_expect(&e, &bad, 1, "a host name that does not resolve");
    env_close(&e);
    printf("ok - resolve\n");
}

/* ---- 16. affinity and the statement cache over many orgs ---- */

#define AORGS 60 /* more than pool size x cache size (3 x 8) */
#define AQUERIES 3000
static const struct db_stmt st_whoami = {
    "test_whoami", "SELECT name, pg_backend_pid()::text, $1::int FROM {schema}.info"};
static const struct db_stmt st_whoami2 = {"test_whoami2",
                                          "SELECT name || '', $1::int FROM {schema}.info"};

struct aq {
    int org, i, calls;
    char param[16];
    const char *values[1];
};
static struct aq aqs[AQUERIES];
static int a_done;
static int a_pid[AORGS + 1];
static bool a_pid_check; /* sequential phase: an org always lands on the same backend */

static void aff_cb(struct db_result *r, void *ud)
{
    struct aq *q = ud;
    char want[16];
    snprintf(want, sizeof want, "a%d", q->org);
    CHECK(++q->calls == 1, "query %d answered %d times", q->i, q->calls);
    CHECK(strcmp(value(r, 0, 0), want) == 0, "query %d of org %s read org %s", q->i, want,
          value(r, 0, 0));
    int pcol = PQnfields(r->res) == 3 ? 2 : 1;
    CHECK(strcmp(value(r, 0, pcol), q->param) == 0, "query %d: param %s came back as %s", q->i,
          q->param, value(r, 0, pcol));
    if (a_pid_check && pcol == 2) {
        int pid = atoi(value(r, 0, 1));
        CHECK(a_pid[q->org] == 0 || a_pid[q->org] == pid,
              "org a%d moved from backend %d to %d without load", q->org, a_pid[q->org], pid);
        a_pid[q->org] = pid;
    }
    a_done++;
}

static void aff_submit(struct env *e, int i, int org)
{
    struct aq *q = &aqs[i];
    char schema[16];
    *q = (struct aq){.org = org, .i = i};
    snprintf(q->param, sizeof q->param, "%d", i);
    q->values[0] = q->param;
    snprintf(schema, sizeof schema, "a%d", org);
    query(e, schema, i % 3 ? &st_whoami : &st_whoami2, 1, q->values, aff_cb, q);
}

static void test_affinity(void)
{
    char sql[256];
    for (int i = 1; i <= AORGS; i++) {
        snprintf(sql, sizeof sql,
                 "CREATE SCHEMA a%d; CREATE TABLE a%d.info (name text); "
                 "INSERT INTO a%d.info VALUES ('a%d')",
                 i, i, i, i);
        PQclear(admin_exec(admin, sql));
    }
    struct env e;
    struct db_pool_options o = opts(3, 8);
    o.statement_cache = 8;
    env_init(&e, o);
    /* Everything at once, in random order: most wait, pipelines stay full. */
    uint32_t rng = 12345;
    a_done = 0;
    for (int i = 0; i < AQUERIES; i++) {
        rng = rng * 1103515245u + 12345u;
        aff_submit(&e, i, (int)((rng >> 8) % AORGS) + 1);
    }
    run_until(&e, &a_done, AQUERIES, 60000, "concurrent queries over 60 orgs");
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    CHECK(s.schema_switches == 0, "switches: %lu", s.schema_switches);
    CHECK(s.stmt_evictions > 0, "60 orgs x 2 statements on 3 x 8 cache entries must evict");
    CHECK(s.statements <= 3 * 8, "%d statements held, cache allows 24", s.statements);
    CHECK(s.stmt_hits + s.stmt_misses == AQUERIES, "hits %lu + misses %lu != %d", s.stmt_hits,
          s.stmt_misses, AQUERIES);

    /* One at a time: no load, so every org stays on its affine backend, and
     * each backend sees only its share of the orgs. */
    unsigned long spills = s.spills;
    a_pid_check = true;
    a_done = 0;
    for (int round = 0; round < 3; round++)
        for (int org = 1; org <= AORGS; org++) {
            int i = round * AORGS + org - 1;
            aff_submit(&e, i * 3 + 1, org); /* i*3+1: always st_whoami (has the pid) */
            run_until(&e, &a_done, round * AORGS + org, 10000, "sequential queries");
        }
    a_pid_check = false;
    db_pool_stats(e.pool, &s);
    CHECK(s.spills == spills, "%lu queries left their affine backend without load",
          s.spills - spills);
    int backends = 0;
    for (int i = 1; i <= AORGS; i++) {
        bool seen = false;
        for (int j = 1; j < i && !seen; j++)
            seen = a_pid[j] == a_pid[i];
        backends += !seen;
    }
    CHECK(backends >= 2, "60 orgs all on one backend of 3");
    env_close(&e);
    printf("ok - affinity (%lu hits, %lu misses, %lu evictions, %lu spills, %d backends)\n",
           s.stmt_hits, s.stmt_misses, s.stmt_evictions, s.spills, backends);
}

/* ---- 17. an org's backend lost mid-pipeline: its queries fail, others' not ---- */

struct lost_q {
    int org;
    enum db_status status;
    char name[16];
    int calls;
};
static int lost_done;
static int lost_victim_pid;

static void lost_cb(struct db_result *r, void *ud)
{
    struct lost_q *q = ud;
    q->calls++;
    q->status = r->status;
    if (r->status == DB_OK)
        snprintf(q->name, sizeof q->name, "%s", value(r, 0, 0));
    lost_done++;
}

static void kill_victim(uv_timer_t *t)
{
    (void)t;
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", lost_victim_pid);
    PQclear(admin_exec(admin, sql));
}

static void test_affine_lost(void)
{
    struct env e;
    struct db_pool_options o = opts(4, 16);
    o.reconnect_max_ms = 200;
    env_init(&e, o);
    /* Where each org lives (schemas a1..a60 from test 16). */
    /* Twice: while the pool opens its slots lazily, an org whose slot is
     * still connecting is served by its next one. */
    for (int pass = 0; pass < 2; pass++) {
        a_pid_check = pass == 1;
        memset(a_pid, 0, sizeof a_pid);
        a_done = 0;
        for (int org = 1; org <= 20; org++) {
            aff_submit(&e, org * 3 + 1, org);
            run_until(&e, &a_done, org, 10000, "finding backends");
        }
    }
    a_pid_check = false;
    int victim = 1;
    lost_victim_pid = a_pid[victim];
    /* The victim's slow queries and its neighbours', plus quick ones of orgs
     * on other backends; the victim's backend is killed mid-pipeline. */
    static const struct db_stmt slow = {"test_lost_slow",
                                        "SELECT name FROM {schema}.info, pg_sleep(0.5)"};
    struct lost_q qs[40];
    int n = 0;
    lost_done = 0;
    char schema[16];
    for (int k = 0; k < 4; k++) {
        qs[n] = (struct lost_q){.org = victim};
        snprintf(schema, sizeof schema, "a%d", victim);
        query(&e, schema, &slow, 0, NULL, lost_cb, &qs[n++]);
    }
    int others = 0;
    for (int org = 2; org <= 20; org++) {
        if (a_pid[org] == a_pid[victim])
            continue;
        qs[n] = (struct lost_q){.org = org};
        snprintf(schema, sizeof schema, "a%d", org);
        query(&e, schema, &slow, 0, NULL, lost_cb, &qs[n++]);
        others++;
    }
    CHECK(others >= 3, "only %d orgs on other backends", others);
    uv_timer_t kill;
    uv_timer_init(&e.loop, &kill);
    uv_timer_start(&kill, kill_victim, 150, 0);
    run_until(&e, &lost_done, n, 10000, "queries around a lost backend");
    uv_close((uv_handle_t *)&kill, NULL);
    for (int i = 0; i < n; i++) {
        char want[16];
        snprintf(want, sizeof want, "a%d", qs[i].org);
        CHECK(qs[i].calls == 1, "query %d: %d callbacks", i, qs[i].calls);
        if (qs[i].org == victim)
            CHECK(qs[i].status == DB_UNAVAILABLE, "the victim's query %d: status %d", i,
                  qs[i].status);
        else
            CHECK(qs[i].status == DB_OK && strcmp(qs[i].name, want) == 0,
                  "org %s on another backend: status %d, read %s", want, qs[i].status, qs[i].name);
    }
    /* Right away the victim's next queries go to a fallback (or wait for the
     * reconnect): right schema either way. */
    struct lost_q after[6];
    lost_done = 0;
    for (int k = 0; k < 6; k++) {
        after[k] = (struct lost_q){.org = victim};
        snprintf(schema, sizeof schema, "a%d", victim);
        query(&e, schema, &st_info, 0, NULL, lost_cb, &after[k]);
    }
    run_until(&e, &lost_done, 6, 10000, "the victim's queries after the loss");
    for (int k = 0; k < 6; k++)
        CHECK(after[k].status == DB_OK && strcmp(after[k].name, "a1") == 0,
              "after the loss: status %d, read %s", after[k].status, after[k].name);
    env_close(&e);
    printf("ok - affine_lost (%d other orgs unaffected)\n", others);
}

/* ---- 18. one org's flood of slow statements: others keep their latency ---- */

struct noisy {
    struct env *e;
    bool stop;
    int outstanding, answered;
};
static const struct db_stmt st_noisy = {"test_noisy",
                                        "SELECT name FROM {schema}.info, pg_sleep(0.05)"};
static void noisy_cb(struct db_result *r, void *ud)
{
    struct noisy *f = ud;
    CHECK(r->status == DB_OK, "noisy query: %s", r->message ? r->message : "?");
    f->answered++;
    if (f->stop) {
        f->outstanding--;
        return;
    }
    query(f->e, "a1", &st_noisy, 0, NULL, noisy_cb, f);
}

static int quiet_done, quiet_slow;
static uint64_t quiet_sent, quiet_max_us;
static void quiet_cb(struct db_result *r, void *ud)
{
    (void)ud;
    CHECK(r->status == DB_OK, "quiet query failed");
    uint64_t us = (uv_hrtime() - quiet_sent) / 1000;
    if (us > quiet_max_us)
        quiet_max_us = us;
    if (us >= 40000)
        quiet_slow++; /* as long as one of the flood's sleeps: it waited behind one */

    quiet_done++;
}

/* 200 sequential quick queries over orgs a2..a41: the worst latency, and
 * in quiet_slow how many took as long as a flood statement. */
static uint64_t quiet_run(struct env *e)
{
    quiet_done = 0;
    quiet_slow = 0;
    quiet_max_us = 0;
    char schema[16];
    for (int i = 0; i < 200; i++) {
        snprintf(schema, sizeof schema, "a%d", 2 + i % 40);
        quiet_sent = uv_hrtime();
        query(e, schema, &st_info, 0, NULL, quiet_cb, NULL);
        run_until(e, &quiet_done, i + 1, 10000, "quiet queries");
    }
    return quiet_max_us;
}

static void test_noisy_neighbour(void)
{
    struct env e;
    struct db_pool_options o = opts(4, 16);
    o.org_inflight = 4;
    env_init(&e, o);
    quiet_run(&e); /* warm: every org's statement prepared */
    /* a1 wants 64 slow statements in flight; it may have 4. */
    struct noisy f = {.e = &e, .outstanding = 64};
    for (int i = 0; i < 64; i++)
        query(&e, "a1", &st_noisy, 0, NULL, noisy_cb, &f);
    run_until(&e, &f.answered, 8, 10000, "the flood getting going");
    uint64_t worst = quiet_run(&e);
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    f.stop = true;
    while (f.outstanding > 0)
        uv_run(&e.loop, UV_RUN_ONCE);
    /* With a1 on every pipeline, nearly every quiet query would wait ~50 ms
     * behind it. A count, not the worst one: on a loaded machine one query
     * may be descheduled for that long with nothing to do with the pool. */
    CHECK(quiet_slow <= 10,
          "%d of 200 quiet queries waited >= 40 ms behind the flood (worst %llu us)", quiet_slow,
          (unsigned long long)worst);
    CHECK(s.waiting >= 40, "the flood should be held back by the cap: %d waiting", s.waiting);
    env_close(&e);
    printf("ok - noisy_neighbour (worst quiet query %llu us, %d >= 40 ms)\n",
           (unsigned long long)worst, quiet_slow);
}

/* ---- 18b. overload: queries that waited the shed bound fail, not only new ones ---- */

static void test_shed_waiting(void)
{
    struct env e;
    struct db_pool_options o = opts(1, 1);
    o.shed_wait_ms = 100;
    env_init(&e, o);
    static const struct db_stmt sleep1 = {NULL, "SELECT pg_sleep(1)::text"};
    struct expect slow = {"t1", &sleep1, DB_OK, ""};
    /* Queued behind a 1 s statement on the only connection: without
     * shedding they would all be served after ~1 s. */
    struct expect queued[3];
    for (int i = 0; i < 3; i++)
        queued[i] = (struct expect){"t1", &st_one, DB_UNAVAILABLE, NULL};
    struct expect warm = {"t1", &st_one, DB_OK, "1"};
    expect_done = 0;
    query(&e, "t1", &st_one, 0, NULL, expect_cb, &warm); /* the connection is open */
    run_until(&e, &expect_done, 1, 5000, "the first query");
    uint64_t start = uv_hrtime() / 1000000;
    query(&e, "t1", &sleep1, 0, NULL, expect_cb, &slow); /* takes the connection */
    for (int i = 0; i < 3; i++)
        query(&e, "t1", &st_one, 0, NULL, expect_cb, &queued[i]);
    run_until(&e, &expect_done, 4, 5000, "the queued queries shed");
    uint64_t took = uv_hrtime() / 1000000 - start;
    CHECK(took < 900, "queued queries shed after %llu ms, want ~100 (before the slow one ends)",
          (unsigned long long)took);
    run_until(&e, &expect_done, 5, 5000, "the slow query");
    /* Not overloaded any more: served. */
    struct expect after = {"t1", &st_one, DB_OK, "1"};
    query(&e, "t1", &st_one, 0, NULL, expect_cb, &after);
    run_until(&e, &expect_done, 6, 5000, "a query after the overload");
    env_close(&e);
    printf("ok - shed_waiting (%llu ms)\n", (unsigned long long)took);
}

/* ---- 19. backends are replaced one at a time ---- */

struct rr_chain {
    struct env *e;
    int done, min_ready, finished;
    bool all_open;
    char schema[16];
};

static void rr_next(struct rr_chain *c);
static void rr_cb(struct db_result *r, void *ud)
{
    struct rr_chain *c = ud;
    (void)value(r, 0, 0);
    struct db_pool_stats s;
    db_pool_stats(c->e->pool, &s);
    int ready = s.in_use + s.idle;
    c->all_open = c->all_open || ready == 3;
    if (c->all_open && ready < c->min_ready)
        c->min_ready = ready;
    /* Until six replacements (or a bound): how many happen within a fixed
     * number of queries depends on how fast backends start on a loaded
     * machine, which is not what this test is about. */
    if (++c->done < 6000 && s.recycles < 6)
        rr_next(c);
    else
        c->finished = 1;
}

static void rr_next(struct rr_chain *c)
{
    snprintf(c->schema, sizeof c->schema, "rr%d", c->done);
    query(c->e, c->schema, &st_pid, 0, NULL, rr_cb, c);
}

static void test_recycle_one_at_a_time(void)
{
    struct env e;
    struct db_pool_options o = opts(3, 4);
    o.recycle_schemas = 40;
    env_init(&e, o);
    struct rr_chain c = {.e = &e, .min_ready = 3};
    rr_next(&c);
    run_until(&e, &c.finished, 1, 60000, "queries over new schemas until six replacements");
    struct db_pool_stats s;
    db_pool_stats(e.pool, &s);
    /* A new schema a query over 3 slots, 40 per backend: many replacements. */
    CHECK(s.recycles >= 6, "recycles=%lu", s.recycles);
    CHECK(c.all_open && c.min_ready >= 2, "at some point only %d of 3 connections were ready",
          c.min_ready);
    env_close(&e);
    printf("ok - recycle_one_at_a_time (%lu recycles)\n", s.recycles);
}

/* `db_test_pool NAME...` runs only the tests named (e.g. noisy_neighbour). */
/* ---- home loops: two loops on two threads in one group ---- */

#define HOME_SCHEMAS 10
#define HOME_BURST 400

static const struct db_stmt home_stmt = {"home_info",
                                         "SELECT name, pg_backend_pid() FROM {schema}.info"};

struct home_loop {
    uv_loop_t loop;
    uv_timer_t tick;
    struct db_pool *pool;
    pthread_t th;
    atomic_int phase;    /* main -> loop: 1 issue a burst, 2 issue a burst and close */
    int done_phase;      /* loop: the last phase it acted on */
    atomic_int answered; /* loop -> main */
    atomic_int failed;   /* DB_UNAVAILABLE answers (closing) */
    atomic_bool closed;
    int wrong;
    int pid[HOME_SCHEMAS + 1]; /* the backend that answered each schema (per loop) */
    struct db_pool_stats stats;
};

struct home_q {
    struct home_loop *hl;
    int schema;
};

static const char *home_schema(int i)
{
    static const char *const names[] = {"", "t1", "t2", "t3", "t4", "t5",
                                        "t6", "t7", "t8", "t9", "t10"};
    return names[i];
}

static void home_answered(struct db_result *r, void *ud)
{
    struct home_q *hq = ud;
    struct home_loop *hl = hq->hl;
    CHECK(!in_db_query, "callback ran inside db_query");
    if (r->status == DB_UNAVAILABLE) {
        atomic_fetch_add(&hl->failed, 1);
    } else {
        CHECK(r->status == DB_OK, "home query failed: %s", r->message ? r->message : "-");
        if (strcmp(PQgetvalue(r->res, 0, 0), home_schema(hq->schema)) != 0)
            hl->wrong++;
        int pid = atoi(PQgetvalue(r->res, 0, 1));
        if (!hl->pid[hq->schema])
            hl->pid[hq->schema] = pid;
        else if (hl->pid[hq->schema] != pid)
            hl->wrong++; /* pool of one: a schema is always served by the same backend */
    }
    free(hq);
    atomic_fetch_add(&hl->answered, 1);
}

static void home_pool_closed(void *ud)
{
    struct home_loop *hl = ud;
    uv_close((uv_handle_t *)&hl->tick, NULL);
    atomic_store(&hl->closed, true);
}

static void home_tick(uv_timer_t *t)
{
    struct home_loop *hl = t->data;
    int phase = atomic_load(&hl->phase);
    if (phase == hl->done_phase)
        return;
    if (hl->done_phase == 1 || phase == 2)
        db_pool_stats(hl->pool, &hl->stats); /* before the second burst */
    hl->done_phase = phase;
    for (int i = 0; i < HOME_BURST; i++) {
        struct home_q *hq = malloc(sizeof *hq);
        CHECK(hq, "malloc");
        hq->hl = hl;
        hq->schema = 1 + (int)(((unsigned)i * 7u + (unsigned)(uintptr_t)hl / 64u) % HOME_SCHEMAS);
        in_db_query = true;
        db_query(hl->pool, home_schema(hq->schema), &home_stmt, 0, NULL, home_answered, hq);
        in_db_query = false;
    }
    if (phase == 2)
        db_pool_close(hl->pool, home_pool_closed, hl);
}

static void *home_thread(void *arg)
{
    struct home_loop *hl = arg;
    uv_run(&hl->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void home_wait(struct home_loop *hl, int n, int answered, const char *what)
{
    uint64_t start = uv_hrtime();
    for (;;) {
        bool all = true;
        for (int i = 0; i < n; i++)
            all = all && atomic_load(&hl[i].answered) >= answered;
        if (all)
            return;
        CHECK((uv_hrtime() - start) / 1000000 < 20000, "%s: not answered in 20 s", what);
        usleep(2000);
    }
}

/* Each schema's tenant statements run on its home loop's pool: with a pool
 * of one connection per loop, every answer for a schema, from either loop,
 * comes from the same backend, and each pool's backend saw only the schemas
 * homed there. Closing both pools with handed-over queries in flight answers
 * every one exactly once and leaves no handle open. */
static void test_home_loops(void)
{
    printf("home_loops: ");
    struct db_group *g = db_group_new(2);
    CHECK(g, "db_group_new");
    static struct home_loop hl[2];
    int homed[2] = {0, 0};
    for (int s = 1; s <= HOME_SCHEMAS; s++)
        homed[db_home_of(g, home_schema(s))]++;
    CHECK(homed[0] > 0 && homed[1] > 0, "all test schemas hash to one loop");
    for (int i = 0; i < 2; i++) {
        memset(&hl[i], 0, sizeof hl[i]);
        CHECK(uv_loop_init(&hl[i].loop) == 0, "uv_loop_init");
        struct db_pool_options o = opts(1, 8);
        o.conninfo = test_conninfo;
        o.group = g;
        o.group_index = i;
        hl[i].pool = db_pool_new(&hl[i].loop, &o);
        CHECK(hl[i].pool, "db_pool_new");
        uv_timer_init(&hl[i].loop, &hl[i].tick);
        hl[i].tick.data = &hl[i];
        uv_timer_start(&hl[i].tick, home_tick, 1, 1);
    }
    struct db_pool_options bad = opts(1, 8);
    bad.conninfo = test_conninfo;
    bad.group = g;
    bad.group_index = 2;
    CHECK(!db_pool_new(&hl[0].loop, &bad), "a group index past the group was accepted");
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&hl[i].th, NULL, home_thread, &hl[i]) == 0, "pthread_create");

    for (int i = 0; i < 2; i++)
        atomic_store(&hl[i].phase, 1);
    home_wait(hl, 2, HOME_BURST, "first burst");
    for (int i = 0; i < 2; i++)
        atomic_store(&hl[i].phase, 2); /* stats, a second burst, and close at once */
    home_wait(hl, 2, 2 * HOME_BURST, "burst while closing");
    for (int i = 0; i < 2; i++) {
        CHECK(pthread_join(hl[i].th, NULL) == 0, "pthread_join");
        CHECK(atomic_load(&hl[i].closed), "loop %d ended before its pool closed", i);
        CHECK(uv_loop_close(&hl[i].loop) == 0, "handles left open on loop %d", i);
        CHECK(atomic_load(&hl[i].answered) == 2 * HOME_BURST, "loop %d: %d answers", i,
              atomic_load(&hl[i].answered));
        CHECK(hl[i].wrong == 0, "loop %d: %d answers from the wrong schema or backend", i,
              hl[i].wrong);
        CHECK(hl[i].stats.routed > 0, "loop %d handed nothing over", i);
        CHECK(hl[i].stats.schemas_total == homed[i],
              "loop %d's backend saw %d schemas, %d are homed there", i, hl[i].stats.schemas_total,
              homed[i]);
    }
    for (int s = 1; s <= HOME_SCHEMAS; s++)
        CHECK(hl[0].pid[s] == hl[1].pid[s] || !hl[0].pid[s] || !hl[1].pid[s],
              "schema %s served by two backends (%d, %d)", home_schema(s), hl[0].pid[s],
              hl[1].pid[s]);
    db_group_free(g);
    printf("ok (%d and %d schemas homed; %lu and %lu handed over; %d and %d failed while "
           "closing)\n",
           homed[0], homed[1], hl[0].stats.routed, hl[1].stats.routed,
           atomic_load(&hl[0].failed), atomic_load(&hl[1].failed));
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        {"many_schemas", test_many_schemas},
        {"error_isolation", test_error_isolation},
        {"prepared_reuse", test_prepared_reuse},
        {"wait_timeout", test_wait_timeout},
        {"terminate", test_terminate},
        {"statement_timeout", test_statement_timeout},
        {"open_transaction", test_open_transaction},
        {"close_inflight", test_close_inflight},
        {"unreachable", test_unreachable},
        {"socket_change", test_socket_change},
        {"notice", test_notice},
        {"recycle", test_recycle},
        {"watchdog", test_watchdog},
        {"no_starvation", test_no_starvation},
        {"resolve", test_resolve},
        {"affinity", test_affinity},
        {"affine_lost", test_affine_lost},
        {"noisy_neighbour", test_noisy_neighbour},
        {"shed_waiting", test_shed_waiting},
        {"recycle_one_at_a_time", test_recycle_one_at_a_time},
        {"home_loops", test_home_loops},
    };
    setvbuf(stdout, NULL, _IONBF, 0);
    setup_db();
    int ran = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        bool wanted = argc < 2;
        for (int a = 1; a < argc && !wanted; a++)
            wanted = strcmp(argv[a], tests[i].name) == 0;
        if (wanted) {
            tests[i].fn();
            ran++;
        }
    }
    drop_test_db();
    printf("%d passed, 0 failed\n", ran);
    return ran > 0 ? 0 : 1;
}
