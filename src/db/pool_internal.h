/* Internal to the pool (src/db/pool*.c, conn.c, pipeline.c, placement.c,
 * stmtcache.c): its data structures and the calls between its files. */
#ifndef TENANTD_DB_POOL_INTERNAL_H
#define TENANTD_DB_POOL_INTERNAL_H

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "db/db.h"

#define SCHEMA_MAX 63 /* NAMEDATALEN - 1: longer names are truncated by PostgreSQL */
#define BACKOFF_START_MS 50
#define CONNECT_TIMEOUT_MS 10000 /* PQconnectPoll has no timeout of its own */
#define WATCHDOG_GRACE_MS 5000   /* beyond statement_timeout: the server is not answering */
#define RECYCLE_SCHEMAS 5000     /* default distinct schemas before a backend is replaced */
#define STATEMENT_CACHE 4000     /* default tenant statements per connection (~18 KiB each) */
#define SPILL 2                  /* slots past the affine one an org may use */
#define SLOW_US 5000             /* a service time this much beyond 8x the pool's is slow */
#define ORG_BUCKETS 256
/* db_pool_close waits at most this for queries in flight when there is no
 * statement_timeout (with one: statement_timeout + WATCHDOG_GRACE_MS). */
#define CLOSE_GRACE_MS 30000

extern const struct db_stmt db_rollback_stmt; /* also the type of internal DEALLOCATEs */

enum conn_state { CONN_CLOSED, CONN_CONNECTING, CONN_READY, CONN_BACKOFF };

/* Statements in flight and queries alive per schema, for the per-org cap. */
struct orgc {
    struct orgc *next;
    int refs;     /* queries alive (waiting or in flight) */
    int inflight; /* of them on a connection */
    char schema[SCHEMA_MAX + 1];
};

/* A tenant statement prepared on one backend for one schema as "t<id>". */
struct centry {
    struct centry *hnext;       /* hash chain */
    struct centry *prev, *next; /* LRU list, most recent first */
    const struct db_stmt *stmt;
    uint32_t hash;
    unsigned id;
    char schema[SCHEMA_MAX + 1];
};

/* One query: waiting, in flight (a segment), or done. */
struct dbq {
    struct dbq *next;
    const struct db_stmt *stmt;
    int nparams;
    const char *const *values;
    db_cb cb; /* NULL: an internal ROLLBACK or DEALLOCATE */
    void *ud;
    uint64_t deadline; /* loop time (ms) after which waiting fails */
    char schema[SCHEMA_MAX + 1];
    bool affine;                /* has an org schema: placed by rank, counted in org */
    bool tenant;                /* the statement's text holds {schema} */
    int rank[1 + SPILL], nrank; /* the slots it may use, best first */
    uint32_t shash;             /* hash of schema */
    struct orgc *org;           /* when affine */
    bool on_conn;               /* counted in org->inflight */
    char dealloc[32];           /* internal: "DEALLOCATE t<n>" */
    unsigned entry_id;          /* the cache entry its Parse creates */
    uint64_t sent_ns;
    bool has_prepare, prepare_ok;
    int step;         /* command of the segment whose results are coming */
    PGresult *result; /* the query's result */
    PGresult *error;  /* first error of the segment */
    enum db_status status;
    const char *sqlstate; /* for errors not from the server */
    char message[160];    /* for errors not from the server; copied since the PGconn may be gone */
};

/* A uv_poll on a dup of libpq's socket; freed by its close callback, which
 * also runs PQfinish when the connection is being released. */
struct pollw {
    uv_poll_t h;
    int fd;
    PGconn *finish;
    struct db_pool *pool;
};

struct conn {
    struct db_pool *pool;
    enum conn_state state;
    PGconn *pg;
    struct pollw *pw;
    int poll_events;
    dev_t sock_dev;
    ino_t sock_ino;
    uv_timer_t timer; /* connect timeout, back-off delay, or in-flight watchdog */
    uv_getaddrinfo_t gai;
    bool resolving; /* CONNECTING, waiting for gai (no PGconn yet) */
    bool writing;   /* PQflush returned 1: watch writability */
    struct dbq *head, *tail;
    int inflight;                    /* segments in head..tail */
    const struct db_stmt **prepared; /* plain statements prepared on this backend */
    int nprepared, capprepared;
    /* Tenant statements prepared on this backend (see centry). */
    struct centry **ctab;
    struct centry *lru_head, *lru_tail;
    int ncache;
    unsigned next_id;
    uint64_t last_used, last_progress;
    uint64_t last_done_ns, svc_us; /* when the last segment ended; recent service time */
    int attempts;                  /* failed connects in a row */
    /* Hashes of the schemas this backend has served: every schema touched
     * stays in its catalog caches, so after recycle_schemas the connection
     * is replaced once its pipeline is empty. */
    uint32_t *seen;
    int nseen, capseen;
    bool recycle; /* takes no more queries; replaced once empty */
};

struct db_pool {
    uv_loop_t *loop;
    char *conninfo;
    char *options;      /* libpq "options" with statement_timeout, or NULL */
    char *resolve_host; /* a host name we resolve off the loop, or NULL */
    int size, depth, wait_ms, stmt_ms, reconnect_max_ms, shed_ms;
    int cache_size, org_cap, recycle_schemas;
    unsigned ctab_mask;
    struct orgc *orgs[ORG_BUCKETS];
    struct conn *recycling; /* the one connection being replaced, or NULL */
    struct metrics *metrics;
    struct conn *conns;
    struct dbq *wait_head, *wait_tail;
    int nwaiting;
    uv_timer_t wait_timer; /* wait-queue deadlines; drain deadline once closing */
    struct dbq *done_head, *done_tail;
    uv_idle_t idle;
    int pending_polls;    /* pollw handles not yet freed */
    int pending_resolves; /* uv_getaddrinfo requests not yet called back */
    bool closing, final_close_started;
    int final_handles;
    void (*close_done)(void *ud);
    void *close_ud;
    unsigned long switches, reconnects; /* switches: kept at 0, the pool never switches */
    unsigned long hits, misses, evictions, recycles, spills;
    int g_in_use, g_idle, g_waiting; /* last values sent to metrics */
    uint64_t rng;
    /* Home loops (home.c). */
    struct db_group *group; /* NULL: no handing over */
    int gindex;
    uv_async_t home_async; /* xfers to run here, results of ours */
    int remote_out;        /* our xfers not yet answered: closing waits for them */
    unsigned long routed;
};

/* Home loops (home.c). db_home_route: true when the statement went to
 * another loop's pool (cb runs later on this loop); false: run it here. */
bool db_home_route(struct db_pool *p, const char *schema, const struct db_stmt *stmt, int nparams,
                   const char *const *values, db_cb cb, void *ud);
void db_home_attach(struct db_pool *p);
int db_group_size(const struct db_group *g);
void db_home_detach(struct db_pool *p);

/* ---- small helpers ---- */

static inline void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p)
        abort(); /* out of memory: nothing sensible left to do */
    return p;
}

static inline uint64_t now_ms(const struct db_pool *p)
{
    return uv_now(p->loop);
}

static inline uint32_t rng_next(struct db_pool *p)
{
    uint64_t x = p->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rng = x;
    return (uint32_t)(x >> 32);
}

static inline void set_message(struct dbq *q, const char *msg)
{
    snprintf(q->message, sizeof q->message, "%s", msg ? msg : "");
    size_t n = strlen(q->message); /* libpq messages end with a newline */
    while (n && (q->message[n - 1] == '\n' || q->message[n - 1] == ' '))
        q->message[--n] = 0;
}

static inline void free_q(struct dbq *q)
{
    PQclear(q->result);
    PQclear(q->error);
    free(q);
}

static inline uint32_t str_hash(const char *str)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *s = (const unsigned char *)str; *s; s++)
        h = (h ^ *s) * 16777619u;
    return h;
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* ---- stmtcache.c: plain and tenant statements prepared per connection ---- */

bool db_prepared_has(const struct conn *c, const struct db_stmt *s);
void db_prepared_add(struct conn *c, const struct db_stmt *s);
void db_prepared_remove(struct conn *c, const struct db_stmt *s);
uint32_t db_centry_hash(const struct db_stmt *s, uint32_t shash);
struct centry *db_cache_find(struct conn *c, const struct db_stmt *s, const char *schema,
                             uint32_t h);
void db_cache_touch(struct conn *c, struct centry *e);
struct centry *db_cache_add(struct conn *c, const struct db_stmt *s, const char *schema,
                            uint32_t h);
void db_cache_remove(struct conn *c, struct centry *e);
void db_cache_clear(struct conn *c);
void db_note_schema(struct conn *c, const char *schema, uint32_t h);

/* ---- placement.c: per-org counts, which connection a query goes to ---- */

void db_rank_slots(const struct db_pool *p, struct dbq *q);
struct orgc *db_org_ref(struct db_pool *p, const char *schema, uint32_t h);
void db_org_unref(struct db_pool *p, struct dbq *q);
void db_q_off_conn(struct dbq *q);
bool db_try_assign(struct db_pool *p, struct dbq *q);
void db_open_for(struct db_pool *p, const struct dbq *q);
void db_dispatch(struct db_pool *p);
bool db_overloaded(const struct db_pool *p);
void db_wait_timer_arm(struct db_pool *p);
void db_on_wait_timer(uv_timer_t *t);

/* ---- conn.c: a connection's life (socket watcher, connecting, losing it) ---- */

void db_conn_check(const struct conn *c);
void db_conn_release(struct conn *c);
void db_conn_connect(struct conn *c);
void db_conn_fail(struct conn *c, const char *why);
void db_conn_flush(struct conn *c);
void db_watchdog_arm(struct conn *c);

/* ---- pipeline.c: segments sent and their results read ---- */

void db_conn_send(struct conn *c, struct dbq *q);
void db_conn_read_results(struct conn *c);

/* ---- pool.c: completion and closing ---- */

void db_complete(struct db_pool *p, struct dbq *q);
void db_fail_q(struct db_pool *p, struct dbq *q, enum db_status st, const char *sqlstate,
               const char *msg);
void db_drain_done(struct db_pool *p);
void db_update_gauges(struct db_pool *p);
void db_maybe_finish_close(struct db_pool *p);

#endif
