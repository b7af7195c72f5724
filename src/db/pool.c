/*
 * The async PostgreSQL pool (contract in db/db.h).
 *
 * Each connection is a small state machine: CLOSED -> CONNECTING (driven by
 * PQconnectPoll on a uv_poll) -> READY (non-blocking, pipeline mode) ->
 * on loss BACKOFF (timer) -> CONNECTING again. A query becomes one
 * "segment" on a READY connection: [Parse] query Sync. Results come back in
 * send order, so each connection keeps a FIFO of segments and a segment ends
 * at its PGRES_PIPELINE_SYNC.
 *
 * Placement (tenant affinity). A query with a schema ranks the slots by
 * rendezvous hash of (schema, slot) and may use the first 1 + SPILL of
 * them, the same ones in every loop and process. It takes the first of them
 * that is READY, and waits (FIFO, bounded by the wait timeout) when that
 * one's pipeline is full: a moment's queue is no reason to show another
 * backend the org's schema. So:
 *  - lost (BACKOFF), reconnecting (CONNECTING) or retiring (recycle): the
 *    slot is passed over and the next ranked slot serves the org until it is
 *    back; the queries in flight on a lost one fail DB_UNAVAILABLE (they may
 *    or may not have run: callers answer 503), nothing else is touched.
 *  - busy because of another org: an org below half its cap passes over a
 *    slot holding statements of an org at half its cap or more (a flood), or
 *    one whose recent service time is many times the other connections'
 *    (conn_avoid), to the next ranked slot that is not; if all its slots are
 *    so, it takes the first. An org at half its cap or more never passes
 *    over for that reason: it would carry its flood to more orgs.
 *  - a closed slot is opened when a query needs it (lazily).
 * An org may have at most org_inflight statements in flight per pool; more
 * wait. Queries without a schema take the usable connection with the
 * shortest queue, avoided ones last.
 *
 * No placement can run a statement in the wrong schema: the pool never
 * sets search_path; a tenant statement's text names its schema, prepared
 * per (connection, schema) under a per-connection name "t<n>" from an LRU of
 * at most statement_cache entries. An eviction sends "DEALLOCATE t<n>" as a
 * segment of its own ahead of the query that needed the room: after
 * everything already queued that uses t<n> (results come in order), and in
 * its own implicit transaction, so if it fails (its Parse failed earlier)
 * nothing else is aborted. A Parse that fails (or is aborted) removes its
 * entry when its segment ends.
 *
 * Every backend caches the catalogs of each schema it touched; a connection
 * that has seen recycle_schemas distinct schemas stops taking queries, and
 * once empty is closed and reopened at once. One connection at a time, so
 * its orgs spill to their next slots for a connect's time.
 *
 * The uv_poll watches a dup() of libpq's socket: libpq closes its socket
 * itself when the server goes away (and may swap sockets while connecting),
 * and a watcher on a closed, possibly reused fd number is undefined. The dup
 * keeps the file description alive until our handle is closed; socket
 * changes are detected by inode, not by fd number (a new socket often gets
 * the old number).
 *
 * Every callback runs from the done list, drained at the end of a poll
 * callback or from a uv_idle: never from inside db_query or db_pool_close.
 */
#include "db/db.h"

#include <arpa/inet.h>
#include <assert.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"

#define SCHEMA_MAX 63 /* NAMEDATALEN - 1: longer names are truncated by PostgreSQL */
#define BACKOFF_START_MS 50
#define CONNECT_TIMEOUT_MS 10000   /* PQconnectPoll has no timeout of its own */
#define WATCHDOG_GRACE_MS 5000     /* beyond statement_timeout: the server is not answering */
#define RECYCLE_SCHEMAS 5000      /* default distinct schemas before a backend is replaced */
#define STATEMENT_CACHE 4000      /* default tenant statements per connection (~18 KiB each) */
#define SPILL 2                   /* slots past the affine one an org may use */
#define SLOW_US 5000              /* a service time this much beyond 8x the pool's is slow */
#define ORG_BUCKETS 256
/* db_pool_close waits at most this for queries in flight when there is no
 * statement_timeout (with one: statement_timeout + WATCHDOG_GRACE_MS). */
#define CLOSE_GRACE_MS 30000

static const struct db_stmt rollback_stmt = {NULL, "ROLLBACK"};

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
    bool affine;        /* has an org schema: placed by rank, counted in org */
    bool tenant;        /* the statement's text holds {schema} */
    int rank[1 + SPILL], nrank; /* the slots it may use, best first */
    uint32_t shash;     /* hash of schema */
    struct orgc *org;   /* when affine */
    bool on_conn;       /* counted in org->inflight */
    char dealloc[32];   /* internal: "DEALLOCATE t<n>" */
    unsigned entry_id;  /* the cache entry its Parse creates */
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
    bool resolving;  /* CONNECTING, waiting for gai (no PGconn yet) */
    bool writing;  /* PQflush returned 1: watch writability */
    struct dbq *head, *tail;
    int inflight; /* segments in head..tail */
    const struct db_stmt **prepared; /* plain statements prepared on this backend */
    int nprepared, capprepared;
    /* Tenant statements prepared on this backend (see centry). */
    struct centry **ctab;
    struct centry *lru_head, *lru_tail;
    int ncache;
    unsigned next_id;
    uint64_t last_used, last_progress;
    uint64_t last_done_ns, svc_us; /* when the last segment ended; recent service time */
    int attempts; /* failed connects in a row */
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
};

static void on_poll(uv_poll_t *h, int status, int events);
static void on_conn_timer(uv_timer_t *t);
static void conn_fail(struct conn *c, const char *why);
static void maybe_finish_close(struct db_pool *p);

/* ---- small helpers ---- */

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p)
        abort(); /* out of memory: nothing sensible left to do */
    return p;
}

static uint64_t now_ms(const struct db_pool *p)
{
    return uv_now(p->loop);
}

static uint32_t rng_next(struct db_pool *p)
{
    uint64_t x = p->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rng = x;
    return (uint32_t)(x >> 32);
}

static void set_message(struct dbq *q, const char *msg)
{
    snprintf(q->message, sizeof q->message, "%s", msg ? msg : "");
    size_t n = strlen(q->message); /* libpq messages end with a newline */
    while (n && (q->message[n - 1] == '\n' || q->message[n - 1] == ' '))
        q->message[--n] = 0;
}

static void free_q(struct dbq *q)
{
    PQclear(q->result);
    PQclear(q->error);
    free(q);
}

static bool prepared_has(const struct conn *c, const struct db_stmt *s)
{
    for (int i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == s)
            return true;
    return false;
}

static void prepared_add(struct conn *c, const struct db_stmt *s)
{
    if (c->nprepared == c->capprepared) {
        int cap = c->capprepared ? c->capprepared * 2 : 16;
        const struct db_stmt **n = realloc(c->prepared, (size_t)cap * sizeof *n);
        if (!n)
            abort();
        c->prepared = n;
        c->capprepared = cap;
    }
    c->prepared[c->nprepared++] = s;
}

static void prepared_remove(struct conn *c, const struct db_stmt *s)
{
    for (int i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == s) {
            c->prepared[i] = c->prepared[--c->nprepared];
            return;
        }
}

static uint32_t str_hash(const char *str)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *s = (const unsigned char *)str; *s; s++)
        h = (h ^ *s) * 16777619u;
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* The 1 + SPILL slots of a schema by rendezvous (highest random weight)
 * hashing: the same for every pool of the same size, and growing the pool
 * moves only the schemas whose best slot is a new one. */
static void rank_slots(const struct db_pool *p, struct dbq *q)
{
    int n = p->size < 1 + SPILL ? p->size : 1 + SPILL;
    uint64_t w[1 + SPILL];
    q->nrank = 0;
    for (int i = 0; i < p->size; i++) {
        uint64_t x = mix64(((uint64_t)q->shash << 32) ^ (uint64_t)(unsigned)i ^ 0x9e3779b97f4a7c15ULL);
        int k;
        if (q->nrank < n)
            k = q->nrank++;
        else if (x > w[n - 1])
            k = n - 1;
        else
            continue;
        while (k > 0 && w[k - 1] < x) {
            w[k] = w[k - 1];
            q->rank[k] = q->rank[k - 1];
            k--;
        }
        w[k] = x;
        q->rank[k] = i;
    }
    assert(q->nrank == n);
}

/* ---- per-org counts ---- */

static struct orgc *org_ref(struct db_pool *p, const char *schema, uint32_t h)
{
    struct orgc **b = &p->orgs[h % ORG_BUCKETS];
    for (struct orgc *o = *b; o; o = o->next)
        if (strcmp(o->schema, schema) == 0) {
            o->refs++;
            return o;
        }
    struct orgc *o = xcalloc(1, sizeof *o);
    snprintf(o->schema, sizeof o->schema, "%s", schema);
    o->refs = 1;
    o->next = *b;
    *b = o;
    return o;
}

static void org_unref(struct db_pool *p, struct dbq *q)
{
    struct orgc *o = q->org;
    if (!o)
        return;
    q->org = NULL;
    assert(o->refs > 0 && o->inflight <= o->refs);
    if (--o->refs > 0)
        return;
    assert(o->inflight == 0);
    for (struct orgc **b = &p->orgs[str_hash(o->schema) % ORG_BUCKETS]; *b; b = &(*b)->next)
        if (*b == o) {
            *b = o->next;
            break;
        }
    free(o);
}

/* q leaves its connection's FIFO. */
static void q_off_conn(struct dbq *q)
{
    if (q->on_conn) {
        assert(q->org && q->org->inflight > 0);
        q->org->inflight--;
        q->on_conn = false;
    }
}

/* ---- the tenant statement cache of a connection ---- */

static uint32_t centry_hash(const struct db_stmt *s, uint32_t shash)
{
    return (uint32_t)mix64(((uint64_t)(uintptr_t)s << 16) ^ shash);
}

static struct centry *cache_find(struct conn *c, const struct db_stmt *s, const char *schema,
                                 uint32_t h)
{
    for (struct centry *e = c->ctab[h & c->pool->ctab_mask]; e; e = e->hnext)
        if (e->hash == h && e->stmt == s && strcmp(e->schema, schema) == 0)
            return e;
    return NULL;
}

static void lru_unlink(struct conn *c, struct centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct conn *c, struct centry *e)
{
    e->prev = NULL;
    e->next = c->lru_head;
    if (c->lru_head)
        c->lru_head->prev = e;
    else
        c->lru_tail = e;
    c->lru_head = e;
}

static struct centry *cache_add(struct conn *c, const struct db_stmt *s, const char *schema,
                                uint32_t h)
{
    struct centry *e = xcalloc(1, sizeof *e);
    e->stmt = s;
    e->hash = h;
    e->id = ++c->next_id;
    snprintf(e->schema, sizeof e->schema, "%s", schema);
    struct centry **b = &c->ctab[h & c->pool->ctab_mask];
    e->hnext = *b;
    *b = e;
    lru_push(c, e);
    c->ncache++;
    return e;
}

static void cache_remove(struct conn *c, struct centry *e)
{
    for (struct centry **b = &c->ctab[e->hash & c->pool->ctab_mask]; *b; b = &(*b)->hnext)
        if (*b == e) {
            *b = e->hnext;
            break;
        }
    lru_unlink(c, e);
    c->ncache--;
    assert(c->ncache >= 0);
    free(e);
}

static void cache_clear(struct conn *c)
{
    while (c->lru_head)
        cache_remove(c, c->lru_head);
    assert(c->ncache == 0 && !c->lru_tail);
}

static void note_schema(struct conn *c, const char *schema, uint32_t h)
{
    h |= 1; /* 0 marks an empty slot */
    if (c->nseen * 2 >= c->capseen) {
        int cap = c->capseen ? c->capseen * 2 : 64;
        uint32_t *n = xcalloc((size_t)cap, sizeof *n);
        for (int i = 0; i < c->capseen; i++) {
            if (!c->seen[i])
                continue;
            int j = (int)(c->seen[i] & (uint32_t)(cap - 1));
            while (n[j])
                j = (j + 1) & (cap - 1);
            n[j] = c->seen[i];
        }
        free(c->seen);
        c->seen = n;
        c->capseen = cap;
    }
    int i = (int)(h & (uint32_t)(c->capseen - 1));
    while (c->seen[i]) {
        if (c->seen[i] == h)
            return;
        i = (i + 1) & (c->capseen - 1);
    }
    c->seen[i] = h;
    c->nseen++;
}

/* ---- completion: every callback goes through here ---- */

static void on_idle(uv_idle_t *h);

static void complete(struct db_pool *p, struct dbq *q)
{
    assert(!q->on_conn);
    org_unref(p, q);
    if (!q->cb) { /* internal statement: nobody to tell */
        free_q(q);
        return;
    }
    q->next = NULL;
    if (p->done_tail)
        p->done_tail->next = q;
    else
        p->done_head = q;
    p->done_tail = q;
    if (!p->final_close_started && !uv_is_active((uv_handle_t *)&p->idle))
        uv_idle_start(&p->idle, on_idle);
}

static void fail_q(struct db_pool *p, struct dbq *q, enum db_status st, const char *sqlstate,
                   const char *msg)
{
    PQclear(q->result);
    q->result = NULL;
    PQclear(q->error);
    q->error = NULL;
    q->status = st;
    q->sqlstate = sqlstate;
    set_message(q, msg);
    complete(p, q);
}

/* Runs the callbacks of finished queries. Callbacks may call db_query or
 * db_pool_close; neither runs a callback itself, so this never nests. */
static void drain_done(struct db_pool *p)
{
    struct dbq *q;
    while ((q = p->done_head)) {
        p->done_head = q->next;
        if (!p->done_head)
            p->done_tail = NULL;
        struct db_result r = {.status = q->status};
        if (q->status == DB_OK) {
            r.res = q->result;
        } else if (q->status == DB_ERROR && q->error) {
            r.sqlstate = PQresultErrorField(q->error, PG_DIAG_SQLSTATE);
            r.message = PQresultErrorField(q->error, PG_DIAG_MESSAGE_PRIMARY);
            if (!r.sqlstate)
                r.sqlstate = "XX000";
            if (!r.message)
                r.message = PQresultErrorMessage(q->error);
        } else {
            r.sqlstate = q->status == DB_ERROR ? (q->sqlstate ? q->sqlstate : "XX000") : NULL;
            r.message = q->message;
        }
        q->cb(&r, q->ud);
        free_q(q);
    }
    if (!p->final_close_started && uv_is_active((uv_handle_t *)&p->idle))
        uv_idle_stop(&p->idle);
}

static void update_gauges(struct db_pool *p)
{
    if (!p->metrics)
        return;
    int in_use = 0, idle = 0, smax = 0, ssum = 0;
    for (int i = 0; i < p->size; i++) {
        const struct conn *c = &p->conns[i];
        if (c->state != CONN_READY)
            continue;
        if (c->inflight)
            in_use++;
        else
            idle++;
        ssum += c->nseen;
        if (c->nseen > smax)
            smax = c->nseen;
    }
    metrics_pool_schemas(p->metrics, smax, ssum, in_use + idle);
    if (in_use == p->g_in_use && idle == p->g_idle && p->nwaiting == p->g_waiting)
        return;
    p->g_in_use = in_use;
    p->g_idle = idle;
    p->g_waiting = p->nwaiting;
    metrics_pool(p->metrics, in_use, idle, p->nwaiting);
}

/* ---- the socket watcher ---- */

static void pollw_closed(uv_handle_t *h)
{
    struct pollw *pw = (struct pollw *)h;
    struct db_pool *p = pw->pool;
    close(pw->fd);
    if (pw->finish)
        PQfinish(pw->finish);
    free(pw);
    p->pending_polls--;
    maybe_finish_close(p);
}

/* Stops the watcher now (no event reaches it any more) and frees it, and
 * PQfinish(finish) when given, once libuv has let go of the handle. */
static void pollw_release(struct db_pool *p, struct pollw *pw, PGconn *finish)
{
    uv_poll_stop(&pw->h);
    pw->finish = finish;
    uv_close((uv_handle_t *)&pw->h, pollw_closed);
}

/* Makes sure the watcher is on libpq's current socket; 0, or -1 on error. */
static int conn_watch_socket(struct conn *c)
{
    struct db_pool *p = c->pool;
    int fd = PQsocket(c->pg);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return -1;
    if (c->pw && st.st_ino == c->sock_ino && st.st_dev == c->sock_dev)
        return 0;
    if (c->pw) {
        pollw_release(p, c->pw, NULL);
        c->pw = NULL;
    }
    struct pollw *pw = xcalloc(1, sizeof *pw);
    pw->pool = p;
    pw->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (pw->fd < 0) {
        free(pw);
        return -1;
    }
    if (uv_poll_init(p->loop, &pw->h, pw->fd) != 0) {
        close(pw->fd);
        free(pw);
        return -1;
    }
    pw->h.data = c;
    p->pending_polls++;
    c->pw = pw;
    c->sock_dev = st.st_dev;
    c->sock_ino = st.st_ino;
    c->poll_events = 0;
    return 0;
}

static int conn_set_poll(struct conn *c, int events)
{
    if (events == c->poll_events)
        return 0;
    int rc = uv_poll_start(&c->pw->h, events, on_poll);
    if (rc == 0)
        c->poll_events = events;
    return rc;
}

/* Stops watching, hands the PGconn to the watcher's close callback for
 * PQfinish, and forgets per-backend state. */
static void conn_release(struct conn *c)
{
    if (c->pw)
        pollw_release(c->pool, c->pw, c->pg);
    else if (c->pg)
        PQfinish(c->pg);
    c->pw = NULL;
    c->pg = NULL;
    c->poll_events = 0;
    c->writing = false;
    c->nprepared = 0;
    cache_clear(c);
    c->next_id = 0;
    c->svc_us = 0;
    if (c->nseen)
        memset(c->seen, 0, (size_t)c->capseen * sizeof *c->seen);
    c->nseen = 0;
    c->recycle = false;
    uv_timer_stop(&c->timer);
}

/* ---- connecting ---- */

/* Server notices go to the log, not to libpq's default of raw lines on
 * stderr (which would break the JSON log). */
static void on_notice(void *arg, const PGresult *r)
{
    (void)arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    bool warning = sev && strcmp(sev, "WARNING") == 0;
    log_msg(warning ? LOG_WARN : LOG_DEBUG, "database %s: %s", sev ? sev : "notice",
            msg ? msg : "");
}

/* Starts libpq's non-blocking connect; `hosts`/`addrs` (comma lists of
 * equal length) replace the conninfo's host when we resolved it. */
static void conn_start(struct conn *c, const char *hosts, const char *addrs)
{
    struct db_pool *p = c->pool;
    /* application_name first so the conninfo may override it; what follows
     * dbname overrides the conninfo (options already holds its own). */
    const char *kw[6] = {"application_name", "dbname"};
    const char *val[6] = {"tenantd", p->conninfo};
    int n = 2;
    if (hosts) {
        kw[n] = "host";
        val[n++] = hosts;
        kw[n] = "hostaddr";
        val[n++] = addrs;
    }
    if (p->options) {
        kw[n] = "options";
        val[n++] = p->options;
    }
    kw[n] = val[n] = NULL;
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, NULL);
    /* libpq: behave as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
    if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_WRITABLE) != 0) {
        conn_fail(c, "cannot watch the connection's socket");
        return;
    }
    uv_timer_start(&c->timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
}

#define MAX_ADDRS 8

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct conn *c = req->data;
    struct db_pool *p = c->pool;
    p->pending_resolves--;
    c->resolving = false;
    if (p->closing || c->state != CONN_CONNECTING) {
        uv_freeaddrinfo(res);
        maybe_finish_close(p);
        return;
    }
    if (status < 0 || !res) {
        char msg[320];
        snprintf(msg, sizeof msg, "cannot resolve \"%s\": %s", p->resolve_host,
                 status < 0 ? uv_strerror(status) : "no address");
        uv_freeaddrinfo(res);
        conn_fail(c, msg);
        update_gauges(p);
        return;
    }
    /* Every address, as libpq would try them; the name stays as host for
     * TLS verification and messages. */
    size_t hlen = strlen(p->resolve_host) + 1;
    char *hosts = xcalloc(MAX_ADDRS, hlen);
    char addrs[MAX_ADDRS * (INET6_ADDRSTRLEN + 1)] = "";
    int n = 0;
    for (struct addrinfo *ai = res; ai && n < MAX_ADDRS; ai = ai->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        const void *a = ai->ai_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            !inet_ntop(ai->ai_family, a, ip, sizeof ip))
            continue;
        if (n) {
            strcat(hosts, ",");
            strcat(addrs, ",");
        }
        strcat(hosts, p->resolve_host);
        strcat(addrs, ip);
        n++;
    }
    uv_freeaddrinfo(res);
    if (n == 0)
        conn_fail(c, "the host name has no IP address");
    else
        conn_start(c, hosts, addrs);
    free(hosts);
}

/* Connects a slot; a host name is first resolved on libuv's thread pool,
 * since libpq would resolve it synchronously, blocking the loop. */
static void conn_connect(struct conn *c)
{
    struct db_pool *p = c->pool;
    c->state = CONN_CONNECTING;
    if (!p->resolve_host) {
        conn_start(c, NULL, NULL);
        return;
    }
    const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->gai.data = c;
    int rc = uv_getaddrinfo(p->loop, &c->gai, on_resolved, p->resolve_host, NULL, &hints);
    if (rc != 0) {
        conn_fail(c, uv_strerror(rc));
        return;
    }
    c->resolving = true;
    p->pending_resolves++;
}

static void conn_ready(struct conn *c)
{
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_READABLE) != 0) {
        conn_fail(c, "cannot watch the connection's socket");
        return;
    }
    uv_timer_stop(&c->timer);
    if (c->pool->recycling == c)
        c->pool->recycling = NULL;
    if (c->attempts > 0)
        log_msg(LOG_INFO, "database connection restored after %d failed attempt(s)", c->attempts);
    c->state = CONN_READY;
    c->attempts = 0;
    c->last_used = now_ms(c->pool);
}

static void conn_connect_step(struct conn *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_READABLE) != 0)
            conn_fail(c, "cannot watch the connection's socket");
        break;
    case PGRES_POLLING_WRITING:
        if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_WRITABLE) != 0)
            conn_fail(c, "cannot watch the connection's socket");
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    default:
        conn_fail(c, PQerrorMessage(c->pg));
        break;
    }
}

/* ---- losing a connection ---- */

/* The connection is unusable: every query on it fails DB_UNAVAILABLE, the
 * backend is released, and a reconnect is scheduled with back-off (or the
 * slot just closes when the pool is closing). */
static void conn_fail(struct conn *c, const char *why)
{
    struct db_pool *p = c->pool;
    char msg[160];
    snprintf(msg, sizeof msg, "%s", why && *why ? why : "connection lost");
    msg[strcspn(msg, "\n")] = 0;
    if (c->state == CONN_READY)
        log_msg(LOG_WARN, "database connection lost: %s", msg);
    else if (c->state == CONN_CONNECTING && c->attempts == 0)
        log_msg(LOG_WARN, "cannot connect to the database: %s", msg);

    struct dbq *q = c->head;
    c->head = c->tail = NULL;
    c->inflight = 0;
    while (q) {
        struct dbq *next = q->next;
        q_off_conn(q);
        fail_q(p, q, DB_UNAVAILABLE, NULL, msg);
        q = next;
    }
    if (p->recycling == c)
        p->recycling = NULL;
    conn_release(c);
    if (p->closing) {
        c->state = CONN_CLOSED;
        maybe_finish_close(p);
        return;
    }
    c->state = CONN_BACKOFF;
    int shift = c->attempts < 16 ? c->attempts : 16;
    uint64_t delay = (uint64_t)BACKOFF_START_MS << shift;
    if (delay > (uint64_t)p->reconnect_max_ms)
        delay = (uint64_t)p->reconnect_max_ms;
    /* Jitter in [delay/2, delay] so loops and processes do not reconnect in step. */
    delay = delay / 2 + rng_next(p) % (delay / 2 + 1);
    c->attempts++;
    uv_timer_start(&c->timer, on_conn_timer, delay, 0);
}

/* ---- sending ---- */

static void conn_flush(struct conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) {
        conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    c->writing = r == 1;
    if (conn_set_poll(c, UV_READABLE | (c->writing ? UV_WRITABLE : 0)) != 0)
        conn_fail(c, "cannot watch the connection's socket");
}

static void watchdog_arm(struct conn *c)
{
    struct db_pool *p = c->pool;
    if (p->stmt_ms > 0 && !uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, on_conn_timer, (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS, 0);
}

/* The text of tenant statement s with {schema} replaced by the quoted
 * schema, malloc'd; NULL when quoting fails. */
static char *qualify(PGconn *pg, const struct db_stmt *s, const char *schema)
{
    static const char token[] = "{schema}";
    char *id = PQescapeIdentifier(pg, schema, strlen(schema));
    if (!id)
        return NULL;
    size_t idlen = strlen(id), n = 0;
    for (const char *t = s->sql; (t = strstr(t, token)); t += sizeof token - 1)
        n++;
    size_t len = strlen(s->sql) + n * idlen + 1;
    char *out = xcalloc(1, len), *o = out;
    const char *from = s->sql, *t;
    while ((t = strstr(from, token))) {
        memcpy(o, from, (size_t)(t - from));
        o += t - from;
        memcpy(o, id, idlen);
        o += idlen;
        from = t + sizeof token - 1;
    }
    strcpy(o, from);
    PQfreemem(id);
    return out;
}

static void conn_send(struct conn *c, struct dbq *q);

/* Makes room in c's statement cache: DEALLOCATE of the least recently used
 * entry as a segment of its own, queued ahead of the query that needs the
 * room. False when sending failed (c has failed). */
static bool cache_evict(struct conn *c)
{
    struct db_pool *p = c->pool;
    struct centry *e = c->lru_tail;
    assert(e);
    struct dbq *d = xcalloc(1, sizeof *d);
    d->stmt = &rollback_stmt; /* any non-tenant statement: the text is d->dealloc */
    snprintf(d->dealloc, sizeof d->dealloc, "DEALLOCATE t%u", e->id);
    cache_remove(c, e);
    p->evictions++;
    if (p->metrics)
        metrics_db_statements(p->metrics, 0, 0, 1);
    conn_send(c, d);
    return c->state == CONN_READY;
}

/* Queues q as one segment on c. Always takes q: on a send failure the
 * connection fails and q with it. */
static void conn_send(struct conn *c, struct dbq *q)
{
    struct db_pool *p = c->pool;
    PGconn *pg = c->pg;
    const struct db_stmt *s = q->stmt;
    bool tenant = q->tenant;
    char pname[16] = "";
    struct centry *hit = NULL;
    bool miss = false;
    uint32_t eh = 0;

    if (tenant && !q->dealloc[0]) {
        eh = centry_hash(s, q->shash);
        hit = s->name ? cache_find(c, s, q->schema, eh) : NULL;
        miss = s->name && !hit;
        if (miss && c->ncache >= p->cache_size && !cache_evict(c)) {
            fail_q(p, q, DB_UNAVAILABLE, NULL, "the database connection failed");
            return;
        }
    }

    q->next = NULL;
    q->step = 0;
    q->has_prepare = false;
    q->sent_ns = uv_hrtime();
    if (c->tail)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    if (q->org) {
        q->org->inflight++;
        q->on_conn = true;
    }
    if (c->inflight++ == 0) {
        c->last_progress = now_ms(p);
        c->last_done_ns = q->sent_ns;
        watchdog_arm(c);
    }
    if (q->affine) {
        note_schema(c, q->schema, q->shash);
        if (c->nseen >= p->recycle_schemas && !c->recycle && !p->recycling) {
            c->recycle = true; /* replaced once empty (segment_done) */
            p->recycling = c;
        }
    }

    int ok = 1;
    if (q->dealloc[0]) {
        ok = PQsendQueryParams(pg, q->dealloc, 0, NULL, NULL, NULL, NULL, 0);
    } else if (tenant) {
        if (hit) {
            lru_unlink(c, hit);
            lru_push(c, hit);
            snprintf(pname, sizeof pname, "t%u", hit->id);
            p->hits++;
            if (p->metrics)
                metrics_db_statements(p->metrics, 1, 0, 0);
        } else {
            char *sql = qualify(pg, s, q->schema);
            ok = sql != NULL;
            if (ok && miss) {
                struct centry *e = cache_add(c, s, q->schema, eh);
                q->entry_id = e->id;
                snprintf(pname, sizeof pname, "t%u", e->id);
                ok = PQsendPrepare(pg, pname, sql, 0, NULL);
                q->has_prepare = true;
                p->misses++;
                if (p->metrics)
                    metrics_db_statements(p->metrics, 0, 1, 0);
            } else if (ok) {
                ok = PQsendQueryParams(pg, sql, q->nparams, NULL, q->values, NULL, NULL, 0);
            }
            free(sql);
        }
        if (ok && s->name)
            ok = PQsendQueryPrepared(pg, pname, q->nparams, q->values, NULL, NULL, 0);
    } else {
        if (s->name && !prepared_has(c, s)) {
            ok = PQsendPrepare(pg, s->name, s->sql, 0, NULL);
            if (ok) {
                prepared_add(c, s);
                q->has_prepare = true;
            }
        }
        if (ok)
            ok = s->name ? PQsendQueryPrepared(pg, s->name, q->nparams, q->values, NULL, NULL, 0)
                         : PQsendQueryParams(pg, s->sql, q->nparams, NULL, q->values, NULL, NULL,
                                             0);
    }
    if (ok)
        ok = PQpipelineSync(pg);
    if (!ok) {
        conn_fail(c, PQerrorMessage(pg));
        return;
    }
    conn_flush(c);
}

static void send_rollback(struct conn *c)
{
    struct dbq *q = xcalloc(1, sizeof *q);
    q->stmt = &rollback_stmt;
    conn_send(c, q);
}

/* ---- receiving ---- */

enum step_kind { STEP_PREPARE, STEP_QUERY, STEP_BEYOND };

static enum step_kind step_kind(const struct dbq *q)
{
    int k = q->step;
    if (q->has_prepare && k-- == 0)
        return STEP_PREPARE;
    return k == 0 ? STEP_QUERY : STEP_BEYOND;
}

/* The head segment got its sync: hand the query its outcome. */
static void segment_done(struct conn *c)
{
    struct db_pool *p = c->pool;
    struct dbq *q = c->head;
    assert(q && c->inflight > 0);
    c->head = q->next;
    if (!c->head)
        c->tail = NULL;
    c->inflight--;
    assert((c->inflight == 0) == (c->head == NULL));
    q_off_conn(q);
    c->last_used = c->last_progress = now_ms(p);
    /* Service time: from when the server could start on it (sent, or the
     * previous segment done) to its end; an average over the last ~8. */
    uint64_t now_ns = uv_hrtime();
    uint64_t from = q->sent_ns > c->last_done_ns ? q->sent_ns : c->last_done_ns;
    c->svc_us = (c->svc_us * 7 + (now_ns - from) / 1000) / 8;
    c->last_done_ns = now_ns;

    bool failed = q->error || q->message[0] || !q->result;
    /* A Parse that failed or was skipped (an earlier error aborted the
     * segment) left nothing prepared on the backend. */
    if (q->has_prepare && !q->prepare_ok) {
        if (q->tenant) {
            struct centry *e =
                cache_find(c, q->stmt, q->schema, centry_hash(q->stmt, q->shash));
            if (e && e->id == q->entry_id)
                cache_remove(c, e);
        } else {
            prepared_remove(c, q->stmt);
        }
    }

    if (failed) {
        q->status = DB_ERROR;
        PQclear(q->result);
        q->result = NULL;
        if (!q->error && !q->message[0])
            set_message(q, "the statement returned no result");
    } else {
        q->status = DB_OK;
    }
    complete(p, q);

    if (c->inflight > 0)
        return;
    uv_timer_stop(&c->timer); /* the watchdog: nothing left to wait for */
    if (p->closing) {
        conn_release(c);
        c->state = CONN_CLOSED;
        maybe_finish_close(p);
        return;
    }
    if (c->recycle) {
        /* A fresh backend instead of one holding many schemas' catalogs,
         * reopened at once (not a failure: no back-off); p->recycling stays
         * set until it is READY, so only one slot is away at a time. */
        log_msg(LOG_DEBUG, "replacing a database connection that served %d schemas", c->nseen);
        conn_release(c);
        p->recycles++;
        if (p->metrics)
            metrics_db_recycle(p->metrics);
        conn_connect(c);
        return;
    }
    /* A statement that left a transaction block open (or failed inside one)
     * would poison every later request on this backend. */
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        send_rollback(c);
}

static bool is_fatal(const PGresult *r)
{
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static void conn_read_results(struct conn *c)
{
    while (c->state == CONN_READY && !PQisBusy(c->pg)) {
        struct dbq *q = c->head;
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            if (!q)
                break; /* nothing in flight: libpq is idle */
            /* NULL ends one command's results; one per command, never for a sync. */
            /* The NULL after the last command leaves step at the segment's
             * command count; only the sync may follow. */
            q->step++;
            if (q->step > q->has_prepare + 1) {
                conn_fail(c, "pipeline out of step with the server");
                return;
            }
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (!q) {
            bool fatal = st == PGRES_FATAL_ERROR;
            PQclear(r);
            conn_fail(c, fatal ? "the server ended the session" : "result without a query");
            return;
        }
        switch (st) {
        case PGRES_PIPELINE_SYNC:
            PQclear(r);
            segment_done(c);
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
            if (step_kind(q) == STEP_QUERY && !q->error) {
                PQclear(q->result);
                q->result = r;
            } else {
                if (step_kind(q) == STEP_PREPARE)
                    q->prepare_ok = true;
                PQclear(r);
            }
            break;
        case PGRES_FATAL_ERROR:
            /* Session-ending errors (pg_terminate_backend, shutdown) mean the
             * connection is gone: everything on it is unavailable, not failed. */
            if (is_fatal(r) || PQstatus(c->pg) == CONNECTION_BAD) {
                PQclear(r);
                conn_fail(c, "the server ended the session");
                return;
            }
            if (!q->error)
                q->error = r;
            else
                PQclear(r);
            break;
        case PGRES_PIPELINE_ABORTED:
            PQclear(r);
            if (!q->error && !q->message[0])
                set_message(q, "aborted by an earlier error in the pipeline");
            break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(r);
            conn_fail(c, "COPY is not supported on pooled connections");
            return;
        default:
            if (!q->error && !q->message[0])
                set_message(q, st == PGRES_EMPTY_QUERY ? "empty query" : PQresStatus(st));
            PQclear(r);
            break;
        }
    }
}

/* ---- placing queries ---- */

static bool conn_usable(const struct db_pool *p, const struct conn *c)
{
    return c->state == CONN_READY && !c->recycle && c->inflight < p->depth;
}

/* Whether org o is flooding: at least half its cap in flight. */
static bool org_heavy(const struct db_pool *p, const struct orgc *o)
{
    return o && o->inflight * 2 >= p->org_cap;
}

/* Whether a query of org `self` should pass over c: another org floods it
 * (its statements would run first, however slow), or c is abnormally slow,
 * many times the recent service time of the pool's other connections (not
 * a longer queue: pipelining is the point; nor a pace the whole pool
 * shares, like commits waiting for the disk). Slowness of the org's own
 * making is no reason to spread it to more orgs. */
static bool conn_avoid(const struct db_pool *p, const struct conn *c, const struct orgc *self)
{
    bool others = false;
    for (const struct dbq *q = c->head; q; q = q->next) {
        if (q->org == self)
            continue;
        if (org_heavy(p, q->org))
            return true;
        others = true;
    }
    if (!others)
        return false;
    uint64_t sum = 0;
    int n = 0;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state == CONN_READY && &p->conns[i] != c) {
            sum += p->conns[i].svc_us;
            n++;
        }
    return n > 0 && c->svc_us > 8 * (sum / (uint64_t)n) + SLOW_US;
}

/* The connection q should go to now, or NULL (it waits). */
static struct conn *choose(struct db_pool *p, const struct dbq *q)
{
    if (!q->affine) {
        /* No org: the shortest queue, an avoidable connection last. */
        struct conn *best = NULL;
        bool best_slow = false;
        for (int i = 0; i < p->size; i++) {
            struct conn *c = &p->conns[i];
            if (!conn_usable(p, c))
                continue;
            bool slow = conn_avoid(p, c, NULL);
            if (!best || (best_slow && !slow) ||
                (slow == best_slow && c->inflight < best->inflight)) {
                best = c;
                best_slow = slow;
            }
        }
        return best;
    }
    if (q->org && q->org->inflight >= p->org_cap)
        return NULL; /* the org has its share in flight: wait for one of them */
    /* The first slot in rank order that is READY (a lost, reconnecting or
     * retiring one is passed over). An org well below its cap also passes
     * over one another org floods or slows (conn_avoid); an org near its
     * cap stays, rather than putting its
     * statements in front of the orgs of its other slots. A full pipeline
     * that is moving is waited for, not passed over: spilling for a moment's
     * queue would show every backend every org over time. */
    bool light = !q->org || q->org->inflight * 2 < p->org_cap;
    struct conn *slow = NULL, *opening = NULL;
    for (int i = 0; i < q->nrank; i++) {
        struct conn *c = &p->conns[q->rank[i]];
        if ((c->state == CONN_CLOSED || c->state == CONN_CONNECTING) && !opening)
            opening = c;
        if (c->state != CONN_READY || c->recycle)
            continue;
        if (light && conn_avoid(p, c, q->org)) {
            if (!slow)
                slow = c;
            continue;
        }
        return c->inflight < p->depth ? c : NULL;
    }
    if (slow && opening) {
        /* Slots open lazily: a slow first slot is when the org's next one
         * is worth opening, and worth a connect's wait. */
        if (opening->state == CONN_CLOSED)
            conn_connect(opening);
        if (opening->state == CONN_CONNECTING)
            return NULL;
    }
    return slow && slow->inflight < p->depth ? slow : NULL;
}

/* Puts q on a connection if one can take it now. */
static bool try_assign(struct db_pool *p, struct dbq *q)
{
    struct conn *c = choose(p, q);
    if (!c)
        return false;
    if (q->affine && c != &p->conns[q->rank[0]])
        p->spills++;

    conn_send(c, q);
    return true;
}

/* Opens a slot for a query that cannot be placed: its first ranked slot
 * that is closed, unless one of its slots is connecting already. */
static void open_for(struct db_pool *p, const struct dbq *q)
{
    int n = q->affine ? q->nrank : p->size;
    struct conn *closed = NULL;
    for (int i = 0; i < n; i++) {
        struct conn *c = &p->conns[q->affine ? q->rank[i] : i];
        if (c->state == CONN_CONNECTING)
            return;
        if (c->state == CONN_CLOSED && !closed)
            closed = c;
        if (c->state == CONN_READY && !c->recycle && c->inflight < p->depth)
            return; /* it will be placed there (the org is at its cap) */
    }
    if (closed)
        conn_connect(closed);
}

static bool room_any(const struct db_pool *p)
{
    for (int i = 0; i < p->size; i++)
        if (conn_usable(p, &p->conns[i]))
            return true;
    return false;
}

/* Serves the wait queue, oldest first, while some connection has room (a
 * long queue is not walked in vain); opens slots the queries need. */
static void dispatch(struct db_pool *p)
{
    if (p->closing)
        return;
    struct dbq *prev = NULL, *q = p->wait_head;
    int looked = 0;
    while (q) {
        struct dbq *next = q->next; /* conn_send reuses q->next once it takes q */
        if (room_any(p) && try_assign(p, q)) {
            if (prev)
                prev->next = next;
            else
                p->wait_head = next;
            if (p->wait_tail == q)
                p->wait_tail = prev;
            p->nwaiting--;
        } else {
            if (looked++ < 64)
                open_for(p, q);
            else if (!room_any(p))
                break;
            prev = q;
        }
        q = next;
    }
}

/* Shedding (shed_wait_ms): the queue is not draining in time although every
 * connection is up and full (depth queries in flight), so a new query would only wait longer and
 * make the served ones slower; it fails at once (the caller answers 503
 * with Retry-After). Not while connections are down or still opening: then
 * queries wait for them as before. */
static bool overloaded(const struct db_pool *p)
{
    if (!p->shed_ms || !p->wait_head)
        return false;
    uint64_t queued_at = p->wait_head->deadline - (uint64_t)p->wait_ms;
    if (now_ms(p) - queued_at < (uint64_t)p->shed_ms)
        return false;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state != CONN_READY || p->conns[i].inflight < p->depth)
            return false; /* down, opening, or with room (waits for a schema switch) */
    return true;
}

/* ---- timers ---- */

static void on_wait_timer(uv_timer_t *t)
{
    struct db_pool *p = t->data;
    uint64_t now = now_ms(p);
    if (p->closing) {
        /* Drain deadline passed: stop waiting for queries in flight. */
        for (int i = 0; i < p->size; i++)
            if (p->conns[i].state == CONN_READY)
                conn_fail(&p->conns[i], "the pool closed before the query finished");
    } else {
        struct dbq *q;
        while ((q = p->wait_head) && q->deadline <= now) {
            p->wait_head = q->next;
            if (!p->wait_head)
                p->wait_tail = NULL;
            p->nwaiting--;
            fail_q(p, q, DB_UNAVAILABLE, NULL, "no database connection became free in time");
        }
        if (p->wait_head)
            uv_timer_start(t, on_wait_timer, p->wait_head->deadline - now, 0);
    }
    update_gauges(p);
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    struct db_pool *p = c->pool;
    switch (c->state) {
    case CONN_BACKOFF:
        p->reconnects++;
        if (p->metrics)
            metrics_db_reconnect(p->metrics);
        conn_connect(c);
        break;
    case CONN_CONNECTING:
        conn_fail(c, "timed out connecting to the database");
        break;
    case CONN_READY: {
        if (c->inflight == 0)
            break;
        uint64_t limit = (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS;
        uint64_t idle = now_ms(p) - c->last_progress;
        if (idle >= limit)
            conn_fail(c, "the database stopped answering");
        else
            uv_timer_start(&c->timer, on_conn_timer, limit - idle, 0);
        break;
    }
    case CONN_CLOSED:
        break;
    }
    update_gauges(p);
}

/* ---- the poll callback: where results arrive ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    struct db_pool *p = c->pool;
    /* An error (EPOLLERR, reported as UV_EBADF) stops the handle; libpq reads
     * the socket's error itself and says what happened, e.g. an asynchronous
     * "connection refused" after which it tries the next host. */
    if (status < 0)
        c->poll_events = 0;
    if (c->state == CONN_CONNECTING) {
        conn_connect_step(c);
    } else if (c->state == CONN_READY) {
        if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) {
            if (!PQconsumeInput(c->pg))
                conn_fail(c, PQerrorMessage(c->pg));
            else
                conn_read_results(c);
        }
        /* While output is pending, any event is a chance to flush (libpq docs). */
        if (c->state == CONN_READY && c->writing)
            conn_flush(c);
        else if (c->state == CONN_READY && conn_set_poll(c, UV_READABLE) != 0)
            conn_fail(c, "cannot watch the connection's socket");
        if (c->state == CONN_READY) {
            PGnotify *n;
            while ((n = PQnotifies(c->pg)))
                PQfreemem(n);
        }
    }
    dispatch(p);
    drain_done(p);
    update_gauges(p);
    maybe_finish_close(p);
}

static void on_idle(uv_idle_t *h)
{
    struct db_pool *p = h->data;
    drain_done(p);
    update_gauges(p);
    maybe_finish_close(p);
}

/* ---- closing ---- */

static void pool_free(struct db_pool *p)
{
    for (int i = 0; i < p->size; i++) {
        cache_clear(&p->conns[i]);
        free(p->conns[i].ctab);
        free(p->conns[i].prepared);
        free(p->conns[i].seen);
    }
    for (int i = 0; i < ORG_BUCKETS; i++)
        assert(!p->orgs[i]); /* every query was answered */
    free(p->conns);
    free(p->conninfo);
    free(p->options);
    free(p->resolve_host);
    free(p);
}

static void on_final_closed(uv_handle_t *h)
{
    struct db_pool *p = h->data;
    if (--p->final_handles > 0)
        return;
    /* Queries attempted while the handles closed still get their answer. */
    drain_done(p);
    void (*done)(void *) = p->close_done;
    void *ud = p->close_ud;
    pool_free(p);
    if (done)
        done(ud);
}

/* Once every connection is closed and every callback has run, closes the
 * pool's own handles; the last close frees the pool. */
static void maybe_finish_close(struct db_pool *p)
{
    if (!p->closing || p->final_close_started || p->pending_polls > 0 || p->pending_resolves > 0 ||
        p->done_head)
        return;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state != CONN_CLOSED)
            return;
    p->final_close_started = true;
    p->final_handles = p->size + 2;
    for (int i = 0; i < p->size; i++) {
        p->conns[i].timer.data = p;
        uv_close((uv_handle_t *)&p->conns[i].timer, on_final_closed);
    }
    uv_close((uv_handle_t *)&p->wait_timer, on_final_closed);
    uv_close((uv_handle_t *)&p->idle, on_final_closed);
}

void db_pool_close(struct db_pool *p, void (*done)(void *ud), void *ud)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    p->close_done = done;
    p->close_ud = ud;

    struct dbq *q = p->wait_head;
    p->wait_head = p->wait_tail = NULL;
    p->nwaiting = 0;
    while (q) {
        struct dbq *next = q->next;
        fail_q(p, q, DB_UNAVAILABLE, NULL, "the database pool is closing");
        q = next;
    }
    uv_timer_stop(&p->wait_timer);

    bool busy = false;
    for (int i = 0; i < p->size; i++) {
        struct conn *c = &p->conns[i];
        if (c->state == CONN_READY && c->inflight > 0) {
            busy = true; /* closes when its pipeline drains */
            continue;
        }
        if (c->resolving) /* its callback still comes (ECANCELED if in time) */
            uv_cancel((uv_req_t *)&c->gai);
        conn_release(c);
        c->state = CONN_CLOSED;
    }
    if (busy) {
        uint64_t grace = p->stmt_ms > 0 ? (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS : CLOSE_GRACE_MS;
        uv_timer_start(&p->wait_timer, on_wait_timer, grace, 0);
    }
    update_gauges(p);
    /* Callbacks of failed waiters run from the idle handle; the rest follows
     * from there and from the poll handles' close callbacks. */
    maybe_finish_close(p);
}

/* ---- creating, querying, stats ---- */

/* The "options" to connect with: the conninfo's own plus statement_timeout;
 * NULL when there is nothing to add. Returns -1 when conninfo is invalid. */
static bool is_ip(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The conninfo's single host name when it needs resolving: not a socket
 * folder, not an IP, not a list, and no hostaddr given. */
static char *host_to_resolve(const PQconninfoOption *opts)
{
    const char *host = NULL, *hostaddr = NULL;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    if (!host || !*host || (hostaddr && *hostaddr) || host[0] == '/' || host[0] == '@' ||
        strchr(host, ',') || is_ip(host))
        return NULL;
    char *h = strdup(host);
    if (!h)
        abort();
    return h;
}

static int build_options(const char *conninfo, int stmt_ms, char **out, char **resolve)
{
    *out = NULL;
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        if (err)
            log_msg(LOG_ERROR, "invalid database connection string: %s", err);
        PQfreemem(err);
        return -1;
    }
    const char *existing = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "options") == 0 && o->val && *o->val)
            existing = o->val;
    if (stmt_ms > 0) {
        size_t n = (existing ? strlen(existing) : 0) + 64;
        *out = xcalloc(1, n);
        snprintf(*out, n, "%s%s-c statement_timeout=%d", existing ? existing : "",
                 existing ? " " : "", stmt_ms);
    }
    *resolve = host_to_resolve(opts);
    PQconninfoFree(opts);
    return 0;
}

struct db_pool *db_pool_new(uv_loop_t *loop, const struct db_pool_options *o)
{
    if (!loop || !o || !o->conninfo || o->size < 1 || o->pipeline_depth < 1 ||
        o->wait_timeout_ms < 1 || o->statement_timeout_ms < 0 || o->reconnect_max_ms < 1 ||
        o->statement_cache < 0 || o->org_inflight < 0 || o->recycle_schemas < 0)
        return NULL;
    struct db_pool *p = xcalloc(1, sizeof *p);
    if (build_options(o->conninfo, o->statement_timeout_ms, &p->options, &p->resolve_host) != 0) {
        free(p);
        return NULL;
    }
    p->conninfo = strdup(o->conninfo);
    if (!p->conninfo)
        abort();
    p->loop = loop;
    p->size = o->size;
    p->depth = o->pipeline_depth;
    p->wait_ms = o->wait_timeout_ms;
    p->shed_ms = o->shed_wait_ms > 0 ? o->shed_wait_ms : 0;
    p->stmt_ms = o->statement_timeout_ms;
    p->reconnect_max_ms =
        o->reconnect_max_ms < BACKOFF_START_MS ? BACKOFF_START_MS : o->reconnect_max_ms;
    p->cache_size = o->statement_cache ? o->statement_cache : STATEMENT_CACHE;
    p->org_cap = o->org_inflight ? o->org_inflight : p->depth;
    p->recycle_schemas = o->recycle_schemas ? o->recycle_schemas : RECYCLE_SCHEMAS;
    unsigned buckets = 16;
    while (buckets < (unsigned)p->cache_size * 2 && buckets < (1u << 20))
        buckets *= 2;
    p->ctab_mask = buckets - 1;
    p->metrics = o->metrics;
    p->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)p ^ 0x9e3779b97f4a7c15ULL;
    p->g_in_use = p->g_idle = p->g_waiting = -1;
    p->conns = xcalloc((size_t)p->size, sizeof *p->conns);
    for (int i = 0; i < p->size; i++) {
        struct conn *c = &p->conns[i];
        c->pool = p;
        c->ctab = xcalloc(buckets, sizeof *c->ctab);
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
    }
    uv_timer_init(loop, &p->wait_timer);
    p->wait_timer.data = p;
    uv_idle_init(loop, &p->idle);
    p->idle.data = p;
    update_gauges(p);
    return p;
}

void db_query(struct db_pool *p, const char *schema, const struct db_stmt *stmt, int nparams,
              const char *const *values, db_cb cb, void *ud)
{
    if (!p || !cb)
        abort(); /* a programming error, not input */
    struct dbq *q = xcalloc(1, sizeof *q);
    q->stmt = stmt;
    q->nparams = nparams;
    q->values = values;
    q->cb = cb;
    q->ud = ud;
    if (!schema)
        schema = "public";
    size_t len = strlen(schema);
    if (len == 0 || len > SCHEMA_MAX) {
        fail_q(p, q, DB_ERROR, "42602", "invalid schema name");
        return;
    }
    memcpy(q->schema, schema, len + 1);
    if (!stmt || !stmt->sql || nparams < 0 || (nparams > 0 && !values) ||
        ((q->tenant = strstr(stmt->sql, "{schema}") != NULL) && strcmp(schema, "public") == 0)) {
        fail_q(p, q, DB_ERROR, "XX000", "invalid statement");
        return;
    }
    if (p->closing) {
        fail_q(p, q, DB_UNAVAILABLE, NULL, "the database pool is closing");
        return;
    }
    q->shash = str_hash(q->schema);
    if (strcmp(q->schema, "public") != 0) {
        q->affine = true;
        rank_slots(p, q);
        q->org = org_ref(p, q->schema, q->shash);
    }
    /* Waiting queries had first pick of any room already (dispatch runs after
     * every change), so taking room now does not jump the queue. */
    if (!try_assign(p, q)) {
        if (overloaded(p)) {
            fail_q(p, q, DB_UNAVAILABLE, NULL, "the database is overloaded");
            update_gauges(p);
            return;
        }
        q->deadline = now_ms(p) + (uint64_t)p->wait_ms;
        q->next = NULL;
        if (p->wait_tail)
            p->wait_tail->next = q;
        else
            p->wait_head = q;
        p->wait_tail = q;
        p->nwaiting++;
        if (!uv_is_active((uv_handle_t *)&p->wait_timer))
            uv_timer_start(&p->wait_timer, on_wait_timer, (uint64_t)p->wait_ms, 0);
        open_for(p, q);
    }
    update_gauges(p);
}

void db_pool_stats(const struct db_pool *p, struct db_pool_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < p->size; i++) {
        const struct conn *c = &p->conns[i];
        if (c->state == CONN_CONNECTING || c->state == CONN_READY)
            out->connections++;
        if (c->state == CONN_READY) {
            if (c->inflight)
                out->in_use++;
            else
                out->idle++;
        }
    }
    out->waiting = p->nwaiting;
    out->schema_switches = p->switches;
    out->stmt_hits = p->hits;
    out->stmt_misses = p->misses;
    out->stmt_evictions = p->evictions;
    out->recycles = p->recycles;
    out->spills = p->spills;
    for (int i = 0; i < p->size; i++) {
        const struct conn *c = &p->conns[i];
        if (c->state != CONN_READY)
            continue;
        out->schemas_total += c->nseen;
        if (c->nseen > out->schemas_max)
            out->schemas_max = c->nseen;
        out->statements += c->ncache;
    }
    out->reconnects = p->reconnects;
}
