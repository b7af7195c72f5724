/*
 * Home loops: each event loop has its own pool, so without this every org
 * would be served by one backend per loop, and each of those backends would
 * keep the org's catalogs and plans (PostgreSQL caches per backend). A group
 * links the pools of one process; a tenant statement runs on the pool of its
 * schema's home loop (a hash of the schema over the loops), and a loop that
 * is not the home hands it over:
 *
 *   origin loop                         home loop
 *   db_query -> xfer (values copied) -> inbox + uv_async
 *                                       db_query on its own pool
 *                                       result taken (PGresult moves)
 *   cb(result) <- back list + uv_async <-
 *
 * Each pool has one slot: a mutex, its inbox (xfers to run here), its back
 * list (results of xfers it sent) and its uv_async. Order of shutdown: a
 * closing pool keeps its slot open, still running what arrives (its pool
 * fails it, closing) and taking results back, until none of the xfers it
 * sent is out; only then does it close the slot, fail what arrived last back
 * to its senders, and close the async. So a result always finds its origin's
 * slot open, and a sender that finds a slot closed runs the query itself.
 * uv_async_send is called under the target slot's mutex, and the slot is
 * closed under it, so no send reaches a closed handle.
 */
#include <pthread.h>

#include "core/metrics.h"
#include "db/pool_internal.h"

struct xfer {
    struct xfer *next;
    struct db_pool *origin;
    int home;
    const struct db_stmt *stmt;
    int nparams;
    const char **values; /* into buf */
    db_cb cb;
    void *ud;
    enum db_status status;
    PGresult *res;
    char sqlstate[6];
    char message[160];
    char schema[SCHEMA_MAX + 1];
    _Alignas(void *) char buf[]; /* values[nparams], then their texts */
};

struct slot {
    pthread_mutex_t mu;
    struct db_pool *pool; /* NULL: no pool, or closed */
    struct xfer *in_head, *in_tail;
    struct xfer *back_head, *back_tail;
};

struct db_group {
    int n;
    struct slot slots[];
};

struct db_group *db_group_new(int nloops)
{
    if (nloops < 1)
        return NULL;
    struct db_group *g = xcalloc(1, sizeof *g + (size_t)nloops * sizeof g->slots[0]);
    g->n = nloops;
    for (int i = 0; i < nloops; i++)
        pthread_mutex_init(&g->slots[i].mu, NULL);
    return g;
}

void db_group_free(struct db_group *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n; i++)
        if (g->slots[i].pool)
            return; /* a loop never closed its pool (abandoned at exit): keep it all */
    for (int i = 0; i < g->n; i++) {
        assert(!g->slots[i].in_head && !g->slots[i].back_head);
        pthread_mutex_destroy(&g->slots[i].mu);
    }
    free(g);
}

int db_group_size(const struct db_group *g)
{
    return g->n;
}

int db_home_of(const struct db_group *g, const char *schema)
{
    uint64_t x = mix64(((uint64_t)str_hash(schema) << 32) ^ 0xc2b2ae3d27d4eb4fULL);
    return (int)(x % (uint64_t)g->n);
}

static void push(struct xfer **head, struct xfer **tail, struct xfer *x)
{
    x->next = NULL;
    if (*tail)
        (*tail)->next = x;
    else
        *head = x;
    *tail = x;
}

/* Hands the result back to the xfer's origin (whose slot stays open while
 * any xfer of it is out). */
static void send_back(struct db_group *g, struct xfer *x)
{
    struct slot *s = &g->slots[x->origin->gindex];
    pthread_mutex_lock(&s->mu);
    assert(s->pool == x->origin);
    push(&s->back_head, &s->back_tail, x);
    uv_async_send(&x->origin->home_async);
    pthread_mutex_unlock(&s->mu);
}

static void fail_back(struct db_group *g, struct xfer *x, const char *msg)
{
    x->status = DB_UNAVAILABLE;
    snprintf(x->message, sizeof x->message, "%s", msg);
    send_back(g, x);
}

bool db_home_route(struct db_pool *p, const char *schema, const struct db_stmt *stmt, int nparams,
                   const char *const *values, db_cb cb, void *ud)
{
    struct db_group *g = p->group;
    size_t len = strlen(schema);
    if (len == 0 || len > SCHEMA_MAX || nparams < 0 || (nparams > 0 && !values))
        return false; /* the local pool answers the error */
    int home = db_home_of(g, schema);
    if (home == p->gindex)
        return false;
    size_t need = (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
        need += values[i] ? strlen(values[i]) + 1 : 0;
    struct xfer *x = xcalloc(1, sizeof *x + need);
    x->origin = p;
    x->home = home;
    x->stmt = stmt;
    x->nparams = nparams;
    x->cb = cb;
    x->ud = ud;
    memcpy(x->schema, schema, len + 1);
    x->values = (const char **)(void *)x->buf;
    char *w = x->buf + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++) {
        if (!values[i]) {
            x->values[i] = NULL;
            continue;
        }
        size_t n = strlen(values[i]) + 1;
        memcpy(w, values[i], n);
        x->values[i] = w;
        w += n;
    }
    struct slot *s = &g->slots[home];
    pthread_mutex_lock(&s->mu);
    bool open = s->pool != NULL;
    if (open) {
        push(&s->in_head, &s->in_tail, x);
        uv_async_send(&s->pool->home_async);
    }
    pthread_mutex_unlock(&s->mu);
    if (!open) { /* that loop is not serving (yet, or any more): run it here */
        free(x);
        return false;
    }
    p->remote_out++;
    p->routed++;
    metrics_db_handed(p->metrics); /* NULL-safe */
    return true;
}

/* On the home loop: the query ran; keep its result for the origin. */
static void home_done(struct db_result *r, void *ud)
{
    struct xfer *x = ud;
    x->status = r->status;
    if (r->status == DB_OK) {
        x->res = r->res;
        r->res = NULL; /* the origin's now: the pool does not clear it */
    } else {
        snprintf(x->sqlstate, sizeof x->sqlstate, "%s", r->sqlstate ? r->sqlstate : "");
        snprintf(x->message, sizeof x->message, "%s", r->message ? r->message : "");
    }
    send_back(x->origin->group, x);
}

/* On the origin loop: the callback the module gave, with the result. */
static void deliver(struct db_pool *p, struct xfer *x)
{
    struct db_result r = {.status = x->status};
    if (x->status == DB_OK) {
        r.res = x->res;
    } else {
        r.sqlstate = x->status == DB_ERROR ? (x->sqlstate[0] ? x->sqlstate : "XX000") : NULL;
        r.message = x->message;
    }
    assert(p->remote_out > 0);
    p->remote_out--;
    x->cb(&r, x->ud);
    PQclear(r.res); /* NULL when the callback took it */
    free(x);
}

static void on_async(uv_async_t *h)
{
    struct db_pool *p = h->data;
    struct slot *s = &p->group->slots[p->gindex];
    pthread_mutex_lock(&s->mu);
    struct xfer *in = s->in_head, *back = s->back_head;
    s->in_head = s->in_tail = s->back_head = s->back_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (in) {
        struct xfer *next = in->next;
        /* Its home is here, so this pool runs it (or fails it, closing). */
        db_query(p, in->schema, in->stmt, in->nparams, in->values, home_done, in);
        in = next;
    }
    while (back) {
        struct xfer *next = back->next;
        deliver(p, back);
        back = next;
    }
    db_maybe_finish_close(p);
}

void db_home_attach(struct db_pool *p)
{
    uv_async_init(p->loop, &p->home_async, on_async);
    p->home_async.data = p;
    struct slot *s = &p->group->slots[p->gindex];
    pthread_mutex_lock(&s->mu);
    assert(!s->pool);
    s->pool = p;
    pthread_mutex_unlock(&s->mu);
}

/* Closing, with no xfer of ours out: the slot closes; what arrived since the
 * last look is failed back to its senders. The async is closed by the caller. */
void db_home_detach(struct db_pool *p)
{
    assert(p->remote_out == 0);
    struct slot *s = &p->group->slots[p->gindex];
    pthread_mutex_lock(&s->mu);
    s->pool = NULL;
    struct xfer *in = s->in_head;
    s->in_head = s->in_tail = NULL;
    assert(!s->back_head); /* nothing of ours was out */
    pthread_mutex_unlock(&s->mu);
    while (in) {
        struct xfer *next = in->next;
        fail_back(p->group, in, "the database pool is closing");
        in = next;
    }
}
