/*
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
 */
#include "db/pool_internal.h"

#include "core/metrics.h"

/* The 1 + SPILL slots of a schema by rendezvous (highest random weight)
 * hashing: the same for every pool of the same size, and growing the pool
 * moves only the schemas whose best slot is a new one. */
void db_rank_slots(const struct db_pool *p, struct dbq *q)
{
    int n = p->size < 1 + SPILL ? p->size : 1 + SPILL;
    uint64_t w[1 + SPILL];
    q->nrank = 0;
    for (int i = 0; i < p->size; i++) {
        uint64_t x =
            mix64(((uint64_t)q->shash << 32) ^ (uint64_t)(unsigned)i ^ 0x9e3779b97f4a7c15ULL);
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

struct orgc *db_org_ref(struct db_pool *p, const char *schema, uint32_t h)
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

void db_org_unref(struct db_pool *p, struct dbq *q)
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
void db_q_off_conn(struct dbq *q)
{
    if (q->on_conn) {
        assert(q->org && q->org->inflight > 0);
        q->org->inflight--;
        q->on_conn = false;
    }
}

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
     * statements in front of the orgs of its other slots. A pipeline full
     * of other orgs' work is waited for, not passed over: spilling for a
     * moment's queue would show every backend every org over time; one
     * holding the org's own statements too is passed over (a busy org may
     * use its next slots). */
    bool light = !q->org || q->org->inflight * 2 < p->org_cap;
    struct conn *slow = NULL, *opening = NULL;
    for (int i = 0; i < q->nrank; i++) {
        struct conn *c = &p->conns[q->rank[i]];
        /* Slots open lazily: one passed over because it was never opened
         * (or was closed) opens now, so the org is back on it soon. */
        if (c->state == CONN_CLOSED)
            db_conn_connect(c);
        if (c->state == CONN_CONNECTING && !opening)
            opening = c;
        if (c->state != CONN_READY || c->recycle)
            continue;
        if (light && conn_avoid(p, c, q->org)) {
            if (!slow)
                slow = c;
            continue;
        }
        if (c->inflight < p->depth)
            return c;
        /* Full of the org's own work: it is busy, and may use its next
         * slot. Full of other orgs' work: wait for room here. */
        bool own = false;
        for (const struct dbq *x = c->head; x && !own; x = x->next)
            own = x->org == q->org;
        if (!own)
            return NULL;
    }
    if (slow && opening)
        return NULL; /* a slot of the org's is opening: worth a connect's wait */
    return slow && slow->inflight < p->depth ? slow : NULL;
}

/* Puts q on a connection if one can take it now. */
bool db_try_assign(struct db_pool *p, struct dbq *q)
{
    struct conn *c = choose(p, q);
    if (!c)
        return false;
    if (q->affine && c != &p->conns[q->rank[0]]) {
        p->spills++;
        metrics_db_spill(p->metrics); /* NULL-safe */
    }

    db_conn_send(c, q);
    return true;
}

/* Opens a slot for a query that cannot be placed: its first ranked slot
 * that is closed, unless one of its slots is connecting already. */
void db_open_for(struct db_pool *p, const struct dbq *q)
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
        db_conn_connect(closed);
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
void db_dispatch(struct db_pool *p)
{
    if (p->closing)
        return;
    struct dbq *prev = NULL, *q = p->wait_head;
    int looked = 0;
    while (q) {
        struct dbq *next = q->next; /* db_conn_send reuses q->next once it takes q */
        if (room_any(p) && db_try_assign(p, q)) {
            if (prev)
                prev->next = next;
            else
                p->wait_head = next;
            if (p->wait_tail == q)
                p->wait_tail = prev;
            p->nwaiting--;
        } else {
            if (looked++ < 64)
                db_open_for(p, q);
            else if (!room_any(p))
                break;
            prev = q;
        }
        q = next;
    }
}

/* Every connection up and full (depth queries in flight). */
static bool all_full(const struct db_pool *p)
{
    for (int i = 0; i < p->size; i++)
        if (p->conns[i].state != CONN_READY || p->conns[i].inflight < p->depth)
            return false; /* down, opening, or with room (waits for a schema switch) */
    return true;
}

static uint64_t queued_at(const struct db_pool *p, const struct dbq *q)
{
    return q->deadline - (uint64_t)p->wait_ms;
}

/* Shedding (shed_wait_ms): the queue is not draining in time although every
 * connection is up and full, so a new query would only wait longer and
 * make the served ones slower; it fails at once (the caller answers 503
 * with Retry-After). Queries already waiting that long fail too (the wait
 * timer), so a served query never waited much past the bound, however far
 * over capacity the load is: refusing only new ones still served everything
 * that arrived in the bound's window, one after another (at 5x, a served
 * p99 of 1.5 s with a 100 ms bound). Not while connections are down or
 * still opening: then queries wait for them as before. */
bool db_overloaded(const struct db_pool *p)
{
    if (!p->shed_ms || !p->wait_head)
        return false;
    if (now_ms(p) - queued_at(p, p->wait_head) < (uint64_t)p->shed_ms)
        return false;
    return all_full(p);
}

/* Arms the wait timer for the oldest waiting query: its deadline, or when
 * it will have waited shed_wait_ms. */
void db_wait_timer_arm(struct db_pool *p)
{
    const struct dbq *q = p->wait_head;
    if (!q) {
        uv_timer_stop(&p->wait_timer);
        return;
    }
    uint64_t now = now_ms(p), due = q->deadline;
    if (p->shed_ms) {
        uint64_t shed_at = queued_at(p, q) + (uint64_t)p->shed_ms;
        if (shed_at <= now) /* it waited that long, but the pool was not full: look again */
            shed_at = now + (p->shed_ms / 4 > 5 ? (uint64_t)p->shed_ms / 4 : 5);
        if (shed_at < due)
            due = shed_at;
    }
    uv_timer_start(&p->wait_timer, db_on_wait_timer, due > now ? due - now : 0, 0);
}

void db_on_wait_timer(uv_timer_t *t)
{
    struct db_pool *p = t->data;
    uint64_t now = now_ms(p);
    if (p->closing) {
        /* Drain deadline passed: stop waiting for queries in flight. */
        for (int i = 0; i < p->size; i++)
            if (p->conns[i].state == CONN_READY)
                db_conn_fail(&p->conns[i], "the pool closed before the query finished");
    } else {
        bool full = p->shed_ms && all_full(p);
        struct dbq *q;
        while ((q = p->wait_head)) {
            bool expired = q->deadline <= now;
            if (!expired && !(full && now - queued_at(p, q) >= (uint64_t)p->shed_ms))
                break;
            p->wait_head = q->next;
            if (!p->wait_head)
                p->wait_tail = NULL;
            p->nwaiting--;
            db_fail_q(p, q, DB_UNAVAILABLE, NULL,
                      expired ? "no database connection became free in time"
                              : "the database is overloaded");
        }
        db_wait_timer_arm(p);
    }
    db_update_gauges(p);
}
