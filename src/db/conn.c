/*
 * A pool connection's life (see pool.c for the parts of the pool). Each
 * connection is a small state machine: CLOSED -> CONNECTING (driven by
 * PQconnectPoll on a uv_poll; a host name is resolved off the loop first)
 * -> READY (non-blocking, pipeline mode) -> on loss BACKOFF (timer, with
 * jitter) -> CONNECTING again. A closed slot is opened when a query needs
 * it (lazily). Queries in flight on a lost connection fail DB_UNAVAILABLE.
 *
 * The uv_poll watches a dup() of libpq's socket: libpq closes its socket
 * itself when the server goes away (and may swap sockets while connecting),
 * and a watcher on a closed, possibly reused fd number is undefined. The dup
 * keeps the file description alive until our handle is closed; socket
 * changes are detected by inode, not by fd number (a new socket often gets
 * the old number).
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db/pool_internal.h"
#include "core/log.h"
#include "core/metrics.h"

#define MAX_ADDRS 8 /* addresses of a resolved host name tried in turn */

static void on_conn_timer(uv_timer_t *t);
static void on_poll(uv_poll_t *h, int status, int events);

/* Invariants of a connection (Debug/ASan builds): the segment FIFO holds
 * `inflight` queries, tail last, each counted in its org; the cache holds
 * ncache entries, at most the pool's bound. */
void db_conn_check(const struct conn *c)
{
#ifndef NDEBUG
    int n = 0;
    const struct dbq *last = NULL;
    for (const struct dbq *q = c->head; q; q = q->next) {
        assert(q->on_conn == (q->org != NULL));
        assert(!q->org || q->org->inflight > 0);
        last = q;
        n++;
    }
    assert(n == c->inflight && last == c->tail);
    assert(c->ncache >= 0 && c->ncache <= c->pool->cache_size);
    assert((c->lru_head == NULL) == (c->ncache == 0));
#else
    (void)c;
#endif
}

static void pollw_closed(uv_handle_t *h)
{
    struct pollw *pw = (struct pollw *)h;
    struct db_pool *p = pw->pool;
    close(pw->fd);
    if (pw->finish)
        PQfinish(pw->finish);
    free(pw);
    p->pending_polls--;
    db_maybe_finish_close(p);
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
void db_conn_release(struct conn *c)
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
    db_cache_clear(c);
    c->next_id = 0;
    c->svc_us = 0;
    if (c->nseen)
        memset(c->seen, 0, (size_t)c->capseen * sizeof *c->seen);
    c->nseen = 0;
    c->recycle = false;
    uv_timer_stop(&c->timer);
}

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
        db_conn_fail(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, NULL);
    /* libpq: behave as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
    if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_WRITABLE) != 0) {
        db_conn_fail(c, "cannot watch the connection's socket");
        return;
    }
    uv_timer_start(&c->timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct conn *c = req->data;
    struct db_pool *p = c->pool;
    p->pending_resolves--;
    c->resolving = false;
    if (p->closing || c->state != CONN_CONNECTING) {
        uv_freeaddrinfo(res);
        db_maybe_finish_close(p);
        return;
    }
    if (status < 0 || !res) {
        char msg[320];
        snprintf(msg, sizeof msg, "cannot resolve \"%s\": %s", p->resolve_host,
                 status < 0 ? uv_strerror(status) : "no address");
        uv_freeaddrinfo(res);
        db_conn_fail(c, msg);
        db_update_gauges(p);
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
        db_conn_fail(c, "the host name has no IP address");
    else
        conn_start(c, hosts, addrs);
    free(hosts);
}

/* Connects a slot; a host name is first resolved on libuv's thread pool,
 * since libpq would resolve it synchronously, blocking the loop. */
void db_conn_connect(struct conn *c)
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
        db_conn_fail(c, uv_strerror(rc));
        return;
    }
    c->resolving = true;
    p->pending_resolves++;
}

static void conn_ready(struct conn *c)
{
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        db_conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_READABLE) != 0) {
        db_conn_fail(c, "cannot watch the connection's socket");
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
            db_conn_fail(c, "cannot watch the connection's socket");
        break;
    case PGRES_POLLING_WRITING:
        if (conn_watch_socket(c) != 0 || conn_set_poll(c, UV_WRITABLE) != 0)
            db_conn_fail(c, "cannot watch the connection's socket");
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    default:
        db_conn_fail(c, PQerrorMessage(c->pg));
        break;
    }
}

/* The connection is unusable: every query on it fails DB_UNAVAILABLE, the
 * backend is released, and a reconnect is scheduled with back-off (or the
 * slot just closes when the pool is closing). */
void db_conn_fail(struct conn *c, const char *why)
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
        db_q_off_conn(q);
        db_fail_q(p, q, DB_UNAVAILABLE, NULL, msg);
        q = next;
    }
    if (p->recycling == c)
        p->recycling = NULL;
    db_conn_release(c);
    if (p->closing) {
        c->state = CONN_CLOSED;
        db_maybe_finish_close(p);
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

void db_conn_flush(struct conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) {
        db_conn_fail(c, PQerrorMessage(c->pg));
        return;
    }
    c->writing = r == 1;
    if (conn_set_poll(c, UV_READABLE | (c->writing ? UV_WRITABLE : 0)) != 0)
        db_conn_fail(c, "cannot watch the connection's socket");
}

void db_watchdog_arm(struct conn *c)
{
    struct db_pool *p = c->pool;
    if (p->stmt_ms > 0 && !uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, on_conn_timer, (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS, 0);
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
        db_conn_connect(c);
        break;
    case CONN_CONNECTING:
        db_conn_fail(c, "timed out connecting to the database");
        break;
    case CONN_READY: {
        if (c->inflight == 0)
            break;
        uint64_t limit = (uint64_t)p->stmt_ms + WATCHDOG_GRACE_MS;
        uint64_t idle = now_ms(p) - c->last_progress;
        if (idle >= limit)
            db_conn_fail(c, "the database stopped answering");
        else
            uv_timer_start(&c->timer, on_conn_timer, limit - idle, 0);
        break;
    }
    case CONN_CLOSED:
        break;
    }
    db_update_gauges(p);
}

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
                db_conn_fail(c, PQerrorMessage(c->pg));
            else
                db_conn_read_results(c);
        }
        /* While output is pending, any event is a chance to flush (libpq docs). */
        if (c->state == CONN_READY && c->writing)
            db_conn_flush(c);
        else if (c->state == CONN_READY && conn_set_poll(c, UV_READABLE) != 0)
            db_conn_fail(c, "cannot watch the connection's socket");
        if (c->state == CONN_READY) {
            PGnotify *n;
            while ((n = PQnotifies(c->pg)))
                PQfreemem(n);
        }
    }
    db_dispatch(p);
    db_drain_done(p);
    db_update_gauges(p);
    db_maybe_finish_close(p);
}
