/*
 * The async PostgreSQL pool (contract in db/db.h): creating, querying,
 * completion, stats and closing. The pool's parts:
 *   conn.c       a connection's state machine: CLOSED -> CONNECTING (driven
 *                by PQconnectPoll on a uv_poll) -> READY (non-blocking,
 *                pipeline mode) -> on loss BACKOFF (timer) -> CONNECTING;
 *   pipeline.c   a query as a segment of a READY connection's pipeline and
 *                its results;
 *   placement.c  which connection a query goes to (tenant affinity, the
 *                per-org cap, waiting and shedding);
 *   stmtcache.c  the statements prepared per connection (LRU) and the
 *                schemas each backend has seen (recycling);
 *   home.c       handing a tenant statement to its schema's home loop's
 *                pool, and its result back (one backend per org in all).
 * pool_internal.h holds the structures they share.
 *
 * Every callback runs from the done list, drained at the end of a poll
 * callback or from a uv_idle: never from inside db_query or db_pool_close.
 */
#include <arpa/inet.h>

#include "db/pool_internal.h"
#include "core/log.h"
#include "core/metrics.h"

static void on_idle(uv_idle_t *h);

void db_complete(struct db_pool *p, struct dbq *q)
{
    assert(!q->on_conn);
    db_org_unref(p, q);
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

void db_fail_q(struct db_pool *p, struct dbq *q, enum db_status st, const char *sqlstate,
               const char *msg)
{
    PQclear(q->result);
    q->result = NULL;
    PQclear(q->error);
    q->error = NULL;
    q->status = st;
    q->sqlstate = sqlstate;
    set_message(q, msg);
    db_complete(p, q);
}

/* Runs the callbacks of finished queries. Callbacks may call db_query or
 * db_pool_close; neither runs a callback itself, so this never nests. */
void db_drain_done(struct db_pool *p)
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
        if (q->status == DB_OK && !r.res)
            q->result = NULL; /* taken by the callback */
        free_q(q);
    }
    if (!p->final_close_started && uv_is_active((uv_handle_t *)&p->idle))
        uv_idle_stop(&p->idle);
}

void db_update_gauges(struct db_pool *p)
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

static void on_idle(uv_idle_t *h)
{
    struct db_pool *p = h->data;
    db_drain_done(p);
    db_update_gauges(p);
    db_maybe_finish_close(p);
}

static void pool_free(struct db_pool *p)
{
    for (int i = 0; i < p->size; i++) {
        db_cache_clear(&p->conns[i]);
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
    db_drain_done(p);
    void (*done)(void *) = p->close_done;
    void *ud = p->close_ud;
    pool_free(p);
    if (done)
        done(ud);
}

/* Once every connection is closed and every callback has run, closes the
 * pool's own handles; the last close frees the pool. */
void db_maybe_finish_close(struct db_pool *p)
{
    if (!p->closing || p->final_close_started || p->pending_polls > 0 || p->pending_resolves > 0 ||
        p->done_head || p->remote_out > 0)
        return;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state != CONN_CLOSED)
            return;
    p->final_close_started = true;
    p->final_handles = p->size + 2;
    if (p->group) {
        db_home_detach(p);
        p->final_handles++;
        uv_close((uv_handle_t *)&p->home_async, on_final_closed);
    }
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
        db_fail_q(p, q, DB_UNAVAILABLE, NULL, "the database pool is closing");
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
        db_conn_release(c);
        c->state = CONN_CLOSED;
    }
    if (busy) {
        uint64_t grace = p->stmt_ms > 0 ? (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS : CLOSE_GRACE_MS;
        uv_timer_start(&p->wait_timer, db_on_wait_timer, grace, 0);
    }
    db_update_gauges(p);
    /* Callbacks of failed waiters run from the idle handle; the rest follows
     * from there and from the poll handles' close callbacks. */
    db_maybe_finish_close(p);
}

/* The "options" to connect with: the conninfo's own plus plan_cache_mode and
 * statement_timeout. Returns -1 when conninfo is invalid. */
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
    /* Generic plans from the first execution: with thousands of orgs each
     * (connection, org) statement runs only a few times, and PostgreSQL
     * would plan each of its first five executions anew (custom plans)
     * before settling on the generic one it plans once. Unnamed statements
     * get generic plans too; a statement whose plan must see a value (the
     * records filter) carries it in its text (record/record.c). */
    size_t n = (existing ? strlen(existing) : 0) + 96;
    *out = xcalloc(1, n);
    int len = snprintf(*out, n, "%s%s-c plan_cache_mode=force_generic_plan",
                       existing ? existing : "", existing ? " " : "");
    if (stmt_ms > 0)
        snprintf(*out + len, n - (size_t)len, " -c statement_timeout=%d", stmt_ms);
    *resolve = host_to_resolve(opts);
    PQconninfoFree(opts);
    return 0;
}

struct db_pool *db_pool_new(uv_loop_t *loop, const struct db_pool_options *o)
{
    if (!loop || !o || !o->conninfo || o->size < 1 || o->pipeline_depth < 1 ||
        o->wait_timeout_ms < 1 || o->statement_timeout_ms < 0 || o->reconnect_max_ms < 1 ||
        o->statement_cache < 0 || o->org_inflight < 0 || o->recycle_schemas < 0 ||
        (o->group && (o->group_index < 0 || o->group_index >= db_group_size(o->group))))
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
    /* Default: a pipeline's worth, and with pipelining off still one
     * statement on each slot the org may use. */
    int nrank = p->size < 1 + SPILL ? p->size : 1 + SPILL;
    p->org_cap = o->org_inflight ? o->org_inflight : (p->depth > nrank ? p->depth : nrank);
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
    if (o->group) {
        p->group = o->group;
        p->gindex = o->group_index;
        db_home_attach(p);
    }
    db_update_gauges(p);
    return p;
}

void db_query(struct db_pool *p, const char *schema, const struct db_stmt *stmt, int nparams,
              const char *const *values, db_cb cb, void *ud)
{
    if (!p || !cb)
        abort(); /* a programming error, not input */
    bool tenant = stmt && stmt->sql && strstr(stmt->sql, "{schema}") != NULL;
    /* Only tenant statements go home: they are what a backend caches per
     * org (catalogs, plans); the rest run wherever they were asked. */
    if (tenant && p->group && !p->closing && schema &&
        db_home_route(p, schema, stmt, nparams, values, cb, ud))
        return;
    struct dbq *q = xcalloc(1, sizeof *q);
    q->tenant = tenant;
    q->stmt = stmt;
    q->nparams = nparams;
    q->values = values;
    q->cb = cb;
    q->ud = ud;
    if (!schema)
        schema = "public";
    size_t len = strlen(schema);
    if (len == 0 || len > SCHEMA_MAX) {
        db_fail_q(p, q, DB_ERROR, "42602", "invalid schema name");
        return;
    }
    memcpy(q->schema, schema, len + 1);
    if (!stmt || !stmt->sql || nparams < 0 || (nparams > 0 && !values) ||
        (tenant && strcmp(schema, "public") == 0)) {
        db_fail_q(p, q, DB_ERROR, "XX000", "invalid statement");
        return;
    }
    if (p->closing) {
        db_fail_q(p, q, DB_UNAVAILABLE, NULL, "the database pool is closing");
        return;
    }
    q->shash = str_hash(q->schema);
    if (strcmp(q->schema, "public") != 0) {
        q->affine = true;
        db_rank_slots(p, q);
        q->org = db_org_ref(p, q->schema, q->shash);
    }
    /* Waiting queries had first pick of any room already (db_dispatch runs after
     * every change), so taking room now does not jump the queue. */
    if (!db_try_assign(p, q)) {
        if (db_overloaded(p)) {
            db_fail_q(p, q, DB_UNAVAILABLE, NULL, "the database is overloaded");
            db_update_gauges(p);
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
        if (p->wait_head == q)
            db_wait_timer_arm(p);
        db_open_for(p, q);
    }
    db_update_gauges(p);
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
    out->routed = p->routed;
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
