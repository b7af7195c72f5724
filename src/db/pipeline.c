/*
 * Segments: a query becomes one "segment" on a READY connection: [Parse]
 * query Sync, so one request's error never aborts another's. Results come
 * back in send order, so each connection keeps a FIFO of segments and a
 * segment ends at its PGRES_PIPELINE_SYNC.
 *
 * No placement can run a statement in the wrong schema: the pool never
 * sets search_path; a tenant statement's text names its schema (qualify),
 * prepared per (connection, schema) under a per-connection name "t<n>" from
 * the connection's LRU (stmtcache.c). An eviction sends "DEALLOCATE t<n>"
 * as a segment of its own ahead of the query that needed the room: after
 * everything already queued that uses t<n> (results come in order), and in
 * its own implicit transaction, so if it fails (its Parse failed earlier)
 * nothing else is aborted. A Parse that fails (or is aborted) removes its
 * entry when its segment ends.
 */
#include "db/pool_internal.h"
#include "core/log.h"
#include "core/metrics.h"

const struct db_stmt db_rollback_stmt = {NULL, "ROLLBACK"};

/* Which command of its segment a query's next result belongs to. */
enum step_kind { STEP_PREPARE, STEP_QUERY, STEP_BEYOND };

static void segment_done(struct conn *c);

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

/* Makes room in c's statement cache: DEALLOCATE of the least recently used
 * entry as a segment of its own, queued ahead of the query that needs the
 * room. False when sending failed (c has failed). */
static bool cache_evict(struct conn *c)
{
    struct db_pool *p = c->pool;
    struct centry *e = c->lru_tail;
    assert(e);
    struct dbq *d = xcalloc(1, sizeof *d);
    d->stmt = &db_rollback_stmt; /* any non-tenant statement: the text is d->dealloc */
    snprintf(d->dealloc, sizeof d->dealloc, "DEALLOCATE t%u", e->id);
    db_cache_remove(c, e);
    p->evictions++;
    if (p->metrics)
        metrics_db_statements(p->metrics, 0, 0, 1);
    db_conn_send(c, d);
    return c->state == CONN_READY;
}

/* Queues q as one segment on c. Always takes q: on a send failure the
 * connection fails and q with it. */
void db_conn_send(struct conn *c, struct dbq *q)
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
        eh = db_centry_hash(s, q->shash);
        hit = s->name ? db_cache_find(c, s, q->schema, eh) : NULL;
        miss = s->name && !hit;
        if (miss && c->ncache >= p->cache_size && !cache_evict(c)) {
            db_fail_q(p, q, DB_UNAVAILABLE, NULL, "the database connection failed");
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
        db_watchdog_arm(c);
    }
    if (q->affine) {
        db_note_schema(c, q->schema, q->shash);
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
            db_cache_touch(c, hit);
            snprintf(pname, sizeof pname, "t%u", hit->id);
            p->hits++;
            if (p->metrics)
                metrics_db_statements(p->metrics, 1, 0, 0);
        } else {
            char *sql = qualify(pg, s, q->schema);
            ok = sql != NULL;
            if (ok && miss) {
                struct centry *e = db_cache_add(c, s, q->schema, eh);
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
        if (s->name && !db_prepared_has(c, s)) {
            ok = PQsendPrepare(pg, s->name, s->sql, 0, NULL);
            if (ok) {
                db_prepared_add(c, s);
                q->has_prepare = true;
            }
        }
        if (ok)
            ok = s->name
                     ? PQsendQueryPrepared(pg, s->name, q->nparams, q->values, NULL, NULL, 0)
                     : PQsendQueryParams(pg, s->sql, q->nparams, NULL, q->values, NULL, NULL, 0);
    }
    if (ok)
        ok = PQpipelineSync(pg);
    if (!ok) {
        db_conn_fail(c, PQerrorMessage(pg));
        return;
    }
    db_conn_check(c);
    db_conn_flush(c);
}

static void send_rollback(struct conn *c)
{
    struct dbq *q = xcalloc(1, sizeof *q);
    q->stmt = &db_rollback_stmt;
    db_conn_send(c, q);
}

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
    db_q_off_conn(q);
    db_conn_check(c);
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
                db_cache_find(c, q->stmt, q->schema, db_centry_hash(q->stmt, q->shash));
            if (e && e->id == q->entry_id)
                db_cache_remove(c, e);
        } else {
            db_prepared_remove(c, q->stmt);
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
    db_complete(p, q);

    if (c->inflight > 0)
        return;
    uv_timer_stop(&c->timer); /* the watchdog: nothing left to wait for */
    if (p->closing) {
        db_conn_release(c);
        c->state = CONN_CLOSED;
        db_maybe_finish_close(p);
        return;
    }
    if (c->recycle) {
        /* A fresh backend instead of one holding many schemas' catalogs,
         * reopened at once (not a failure: no back-off); p->recycling stays
         * set until it is READY, so only one slot is away at a time. */
        log_msg(LOG_DEBUG, "replacing a database connection that served %d schemas", c->nseen);
        db_conn_release(c);
        p->recycles++;
        if (p->metrics)
            metrics_db_recycle(p->metrics);
        db_conn_connect(c);
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

void db_conn_read_results(struct conn *c)
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
                db_conn_fail(c, "pipeline out of step with the server");
                return;
            }
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (!q) {
            bool fatal = st == PGRES_FATAL_ERROR;
            PQclear(r);
            db_conn_fail(c, fatal ? "the server ended the session" : "result without a query");
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
                db_conn_fail(c, "the server ended the session");
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
            db_conn_fail(c, "COPY is not supported on pooled connections");
            return;
        default:
            if (!q->error && !q->message[0])
                set_message(q, st == PGRES_EMPTY_QUERY ? "empty query" : PQresStatus(st));
            PQclear(r);
            break;
        }
    }
}
