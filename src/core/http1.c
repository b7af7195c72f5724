/*
 * An HTTP/1.1 connection (see server.c for the server's parts). It moves
 * through these states:
 *   IDLE      waiting for a request's first byte (idle or first-request timer)
 *   HEAD      request line and headers arriving (header timer since 1st byte)
 *   BODY      body arriving (idle timer, restarted by every read)
 *   HANDLING  request complete, with the handler; not reading
 *   WRITING   response being written (idle timer against slow readers)
 *   LINGER    error or Connection: close answered; FIN sent, the client's
 *             leftovers read and dropped briefly so they cause no RST that
 *             could destroy the answer in flight
 *   CLOSED    handles closing
 * While a request is under way it holds a struct active from the loop's
 * pool; an idle keep-alive connection holds only struct conn.
 */
#include "core/server_internal.h"
#include "core/strbuf.h"
#include "core/trace.h"

#define ACTIVE_POOL_MAX 64 /* kept for reuse per loop; more are freed */
#define SPAN_KEEP 1024     /* a pooled span buffer up to this size is kept */

static void on_idle_timer(uv_timer_t *t);
static void conn_respond_error(struct conn *c);
static void on_timer(uv_timer_t *t);

/* Every state change goes through here, so that a transition the design
 * does not have trips an assert (Debug and ASan builds). A parse error is
 * answered (WRITING) from IDLE, HEAD or BODY. */
void srv_conn_state(struct conn *c, enum conn_state next)
{
#ifndef NDEBUG
    static const unsigned allowed[] = {
        [C_IDLE] = 1u << C_HEAD | 1u << C_WRITING | 1u << C_CLOSED,
        [C_HEAD] = 1u << C_BODY | 1u << C_WRITING | 1u << C_CLOSED,
        [C_BODY] = 1u << C_HANDLING | 1u << C_WRITING | 1u << C_CLOSED,
        [C_HANDLING] = 1u << C_WRITING | 1u << C_CLOSED,
        [C_WRITING] = 1u << C_IDLE | 1u << C_LINGER | 1u << C_CLOSED,
        [C_LINGER] = 1u << C_CLOSED,
        [C_CLOSED] = 0,
    };
    assert(allowed[c->state] & (1u << next));
#endif
    c->state = next;
    /* Only a connection waiting for a request may be taken for a new one. */
    if (next != C_IDLE && c->idleq) {
        queue_remove(c->idleq, &c->idle_node);
        c->idleq = NULL;
    }
}

struct conn *srv_conn_of_idle(struct qnode *n)
{
    return (struct conn *)(void *)((char *)n - offsetof(struct conn, idle_node));
}

/* The connection waits for a request: newest on q (ls->fresh or ls->idle). */
void srv_idle_enter(struct conn *c, struct queue *q)
{
    assert(c->state == C_IDLE && !c->idleq);
    queue_push(q, &c->idle_node);
    c->idleq = q;
    struct loop_server *ls = c->ls;
    if (q == &ls->idle && !uv_is_active((uv_handle_t *)&ls->idle_timer))
        uv_timer_start(&ls->idle_timer, on_idle_timer, (uint64_t)g_config->idle_timeout_ms, 0);
}

/* The peer address for logs (a thread's buffer, valid until the next call). */
const char *srv_peer_name(const struct conn *c)
{
    static _Thread_local char buf[INET6_ADDRSTRLEN];
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!c->have_ip)
        return "-";
    if (memcmp(c->ip_key, v4mapped, sizeof v4mapped) == 0)
        inet_ntop(AF_INET, c->ip_key + 12, buf, sizeof buf);
    else
        inet_ntop(AF_INET6, c->ip_key, buf, sizeof buf);
    return buf;
}

void srv_free_active(uv_handle_t *h)
{
    struct active *a = (struct active *)(void *)h; /* the timer is its start */
    free(a->span);
    free(a);
}

/* Gives c a struct active (pooled, or new), its parser fresh. */
void srv_active_take(struct conn *c)
{
    assert(!c->a && c->state != C_CLOSED);
    struct loop_server *ls = c->ls;
    struct active *a = ls->free_actives;
    if (a) {
        ls->free_actives = a->next_free;
        ls->nfree_actives--;
    } else {
        a = calloc(1, sizeof *a);
        if (!a)
            abort();
        uv_timer_init(&ls->loop, &a->timer);
    }
    a->next_free = NULL;
    a->timer.data = c;
    llhttp_init(&a->parser, HTTP_REQUEST, &srv_parser_settings);
    a->parser.data = c;
    c->a = a;
}

/* Takes c's struct active back (no request under way, no write or
 * shutdown in flight): buffers released, into the pool or freed. */
void srv_active_give(struct conn *c)
{
    struct active *a = c->a;
    if (!a)
        return;
    struct loop_server *ls = c->ls;
    c->a = NULL;
    uv_timer_stop(&a->timer);
    a->timer.data = NULL;
    free(a->pending);
    free(a->body);
    char *span = a->span;
    size_t span_cap = a->span_cap;
    if (span_cap > SPAN_KEEP || ls->stopping || ls->nfree_actives >= ACTIVE_POOL_MAX) {
        free(span);
        span = NULL;
        span_cap = 0;
    }
    /* Everything after the timer back to zero, as calloc gave it. */
    memset((char *)a + sizeof a->timer, 0, sizeof *a - sizeof a->timer);
    a->span = span;
    a->span_cap = span_cap;
    if (ls->stopping || ls->nfree_actives >= ACTIVE_POOL_MAX) {
        uv_close((uv_handle_t *)&a->timer, srv_free_active);
        return;
    }
    a->next_free = ls->free_actives;
    ls->free_actives = a;
    ls->nfree_actives++;
}

/* Closes the kept-alive connections idle for TENANTD_IDLE_TIMEOUT_MS: all
 * wait the same time, so ls->idle's head is always the first due. */
static void on_idle_timer(uv_timer_t *t)
{
    struct loop_server *ls = t->data;
    uint64_t now = uv_now(&ls->loop), timeout = (uint64_t)g_config->idle_timeout_ms;
    while (ls->idle.head) {
        struct conn *c = srv_conn_of_idle(ls->idle.head);
        if (c->idle_since + timeout > now) {
            uv_timer_start(t, on_idle_timer, c->idle_since + timeout - now, 0);
            return;
        }
        srv_conn_close(c);
    }
}

/* Sets the connection's one timeout to ms from now. Every request moves it
 * a few times, so c->a->timer is only restarted when it would fire too late;
 * firing early, it re-arms itself for the rest (on_timer). */
void srv_timer_set(struct conn *c, uint64_t ms)
{
    uint64_t due = uv_now(&c->ls->loop) + ms;
    c->a->deadline = due;
    if (c->a->timer_due && c->a->timer_due <= due)
        return;
    uv_timer_start(&c->a->timer, on_timer, ms, 0);
    c->a->timer_due = due;
}

/* While a body arrives: a read must come within the idle timeout, and the
 * whole body within TENANTD_BODY_TIMEOUT_MS of the headers (reads do not
 * move that), so that a trickle cannot hold the connection forever. */
void srv_body_timer(struct conn *c)
{
    uint64_t now = uv_now(&c->ls->loop), ms = (uint64_t)g_config->idle_timeout_ms;
    uint64_t left = c->a->body_deadline > now ? c->a->body_deadline - now : 0;
    srv_timer_set(c, left < ms ? left : ms);
}

/* No timeout (a handler runs, or an answer went out whole). */
void srv_timer_clear(struct conn *c)
{
    c->a->deadline = 0;
}

void srv_read_off(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void *srv_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        log_msg(LOG_ERROR, "out of memory");
        abort();
    }
    return q;
}

/* Appends to a malloc'd growable buffer (core/strbuf's growth, kept
 * NUL-terminated). */
void srv_buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    struct strbuf b = {*buf, *len, *cap};
    sb_put(&b, data, n);
    *buf = b.s;
    *len = b.len;
    *cap = b.cap;
}

void srv_new_request(struct conn *c)
{
    struct arena *a = arena_new();
    struct request *req = arena_calloc(a, sizeof *req);
    req->arena = a;
    req->ctx = &c->ls->ctx;
    req->conn = c;
    req->method_str = "-";
    req->target = "";
    req->path = "";
    req->client_ip = req->peer_ip = arena_strdup(a, srv_peer_name(c));
    c->req = req;
    c->a->span_len = 0;
    c->a->url_started = false;
    c->a->field = NULL;
    c->a->headers_cap = 0;
    c->a->trailer_bytes = 0;
    c->a->ext_bytes = 0;
    c->a->cl_count = c->a->te_count = c->a->host_count = 0;
    c->a->te_value = c->a->expect = NULL;
    c->a->body_len = 0;
    c->dispatched = false;
}

/* Logs, counts and frees a request whose answer is done (written, failed,
 * or dropped because the client left). */
void srv_finish_request(struct loop_server *ls, struct request *req, int status)
{
    uint64_t now = uv_hrtime();
    if (!req->start_ns)
        req->start_ns = now;
    double secs = (double)(now - req->start_ns) / 1e9;
    const char *route = req->route_pattern ? req->route_pattern : "unmatched";
    if (!req->request_id)
        req->request_id = srv_new_request_id(req->arena);
    log_request(req->request_id, req->method_str, route, req->path, status, secs * 1000.0,
                req->client_ip, req->org_id, trace_of(req)->trace_id);
    if (ls->ctx.metrics)
        metrics_request(ls->ctx.metrics, route, req->method_str, status, secs);
    arena_free(req->arena);
}

/* Drops the request being parsed (never dispatched) and its body. */
void srv_drop_request(struct conn *c)
{
    if (c->req) {
        arena_free(c->req->arena);
        c->req = NULL;
    }
    free(c->a->body);
    c->a->body = NULL;
    c->a->body_len = c->a->body_cap = 0;
}

static void keep_pending(struct conn *c, const char *from, size_t n)
{
    if (n == 0) {
        c->a->pending_len = 0;
        return;
    }
    if (c->a->pending && from >= c->a->pending && from < c->a->pending + c->a->pending_cap) {
        memmove(c->a->pending, from, n);
        c->a->pending_len = n;
        return;
    }
    if (n > c->a->pending_cap) {
        c->a->pending = srv_xrealloc(c->a->pending, n);
        c->a->pending_cap = n;
    }
    memcpy(c->a->pending, from, n);
    c->a->pending_len = n;
}

static void dispatch(struct conn *c)
{
    struct request *req = c->req;
    struct loop_server *ls = c->ls;
    c->dispatched = true;
    proxies_resolve(req);
    if (cors_handle(req))
        return;
    const char *allow = NULL;
    enum router_result r =
        ls->ctx.router ? router_match(ls->ctx.router, req, &allow) : ROUTER_NOT_FOUND;
    switch (r) {
    case ROUTER_FOUND:
        if (ls->hooks->dispatch)
            ls->hooks->dispatch(req);
        else
            req->route->handler(req);
        break;
    case ROUTER_METHOD_NOT_ALLOWED:
        if (allow)
            http_set_header(req, "Allow", allow);
        problem_respond(req, PROBLEM_METHOD_NOT_ALLOWED,
                        "This route does not support the request's method.");
        break;
    default:
        problem_respond(req, PROBLEM_NOT_FOUND, "No route matches the request's path.");
        break;
    }
}

/* Parses data. Returns with the connection reading for more, handling a
 * request (rest kept in c->a->pending), or answering an error. */
void srv_conn_feed(struct conn *c, const char *data, size_t len)
{
    c->a->chunk = data;
    if (c->state == C_IDLE)
        c->a->head_before = 0;
    if (!srv_scan_head(c, (const unsigned char *)data, len)) {
        srv_reject(c, PROBLEM_BAD_REQUEST, "Folded header lines (obs-fold) are not accepted.");
        conn_respond_error(c);
        return;
    }
    llhttp_errno_t err = llhttp_execute(&c->a->parser, data, len);
    const char *end = err == HPE_OK ? data + len : llhttp_get_error_pos(&c->a->parser);
    if (!end || end < data || end > data + len)
        end = data + len;
    if (end > data)
        c->a->prev_byte = end[-1];
    if (err == HPE_OK) {
        if (c->state == C_HEAD) {
            c->a->head_before += len;
            if (c->a->head_before > (size_t)g_config->max_header_bytes) {
                srv_reject(c, PROBLEM_HEADERS_TOO_LARGE,
                           "The request's header block is too large.");
                conn_respond_error(c);
            }
        }
        return;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && c->state == C_HANDLING) {
        keep_pending(c, end, (size_t)(data + len - end));
        dispatch(c);
        return;
    }
    if (!c->a->failed)
        log_msg(LOG_DEBUG, "bad request from %s: %s (%s)", srv_peer_name(c), llhttp_errno_name(err),
                c->a->parser.reason ? c->a->parser.reason : "");
    conn_respond_error(c);
}

/* Answers a request the parser rejected, then closes. */
static void conn_respond_error(struct conn *c)
{
    enum problem p = c->a->failed ? c->a->problem : PROBLEM_BAD_REQUEST;
    const char *detail = c->a->failed ? c->a->detail : "The request is not valid HTTP/1.1.";
    srv_read_off(c);
    c->must_close = true;
    c->keep_alive = false;
    if (!c->req)
        srv_new_request(c);
    struct request *req = c->req;
    if (!req->request_id) {
        const char *rid = http_header(req, "X-Request-Id");
        req->request_id = rid && srv_sane_request_id(rid) ? rid : srv_new_request_id(req->arena);
    }
    if (p == PROBLEM_BAD_REQUEST)
        log_msg(LOG_DEBUG, "rejected a request from %s: %s", srv_peer_name(c), detail);
    c->dispatched = true; /* the answer below is the request's one answer */
    problem_respond(req, p, detail);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    buf->base = c->ls->readbuf;
    buf->len = READ_BUF_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && (c->state == C_HANDLING || c->state == C_WRITING)) {
            /* Half-close after a request: answer it (and any complete
             * pipelined ones), then close. */
            c->peer_eof = true;
            srv_read_off(c);
            return;
        }
        /* Requests are never delimited by EOF: a half-received one is
         * dropped. */
        srv_conn_close(c);
        return;
    }
    switch (c->state) {
    case C_LINGER:
        return; /* discarded */
    case C_HANDLING:
    case C_WRITING:
        /* Pipelined bytes wait for their turn; past one buffer's worth the
         * socket stops being read (backpressure). */
        srv_buf_append(&c->a->pending, &c->a->pending_len, &c->a->pending_cap, buf->base,
                       (size_t)nread);
        if (c->a->pending_len >= READ_BUF_SIZE)
            srv_read_off(c);
        return;
    case C_BODY:
        srv_body_timer(c);
        break;
    case C_IDLE:
        if (!c->a)
            srv_active_take(c); /* a kept-alive connection's next request */
        break;
    case C_HEAD:
        break;
    default:
        return; /* not reading in other states */
    }
    srv_conn_feed(c, buf->base, (size_t)nread);
}

void srv_read_on(struct conn *c)
{
    if (!c->reading && c->state != C_CLOSED) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
        else
            srv_conn_close(c);
    }
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct loop_server *ls = c->ls;
    srv_writer_unlink(c); /* normally done by the cancelled write's callback */
    assert(!c->done_queued && !(c->a && c->a->unsent) && !c->idleq);
    assert(ls->nclosing > 0);
    ls->nclosing--;
    if (c->ip_counted)
        ipcount_del(&ls->ips, c->ip_key);
    if (c->req) {
        if (c->dispatched && !c->req->responded) {
            /* The handler still runs; it answers into the void later. */
            log_msg(LOG_DEBUG, "client %s left before request %s was answered", srv_peer_name(c),
                    c->req->request_id ? c->req->request_id : "-");
            c->req->conn = NULL;
            ls->orphans++;
            c->req = NULL;
        } else {
            srv_drop_request(c);
        }
    }
    srv_active_give(c); /* its write and shutdown callbacks have run */
    if (c->prev)
        c->prev->next = c->next;
    else
        ls->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ls->nconns--;
    if (ls->ctx.metrics)
        metrics_conn_open(ls->ctx.metrics, -1);
    free(c);
    srv_check_drained(ls);
}

void srv_conn_close(struct conn *c)
{
    if (c->state == C_CLOSED)
        return;
    srv_conn_state(c, C_CLOSED);
    c->ls->nclosing++;
    c->reading = false;
    if (c->done_queued) { /* written: finish it now, as uv_write's callback would */
        srv_done_unlink(c->ls, c);
        srv_write_done(c, 0);
    }
    if (c->a)
        uv_timer_stop(&c->a->timer);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    struct conn *c = r->data;
    if (status < 0 && status != UV_ECANCELED)
        srv_conn_close(c);
}

/* Sends FIN after the answer, then reads and drops what the client still
 * sends until it closes or LINGER_MS passes, so the kernel does not answer
 * unread bytes with an RST that could destroy the response in flight. */
void srv_conn_linger(struct conn *c)
{
    srv_conn_state(c, C_LINGER);
    c->a->shutdown_req.data = c;
    if (uv_shutdown(&c->a->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        srv_conn_close(c);
        return;
    }
    srv_timer_set(c, LINGER_MS);
    srv_read_on(c);
}

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (!c || !c->a)
        return;
    c->a->timer_due = 0;
    if (!c->a->deadline)
        return;
    uint64_t now = uv_now(&c->ls->loop);
    if (now < c->a->deadline) { /* moved since armed */
        uv_timer_start(&c->a->timer, on_timer, c->a->deadline - now, 0);
        c->a->timer_due = c->a->deadline;
        return;
    }
    if (c->state == C_HEAD)
        log_msg(LOG_DEBUG, "closing a connection from %s: headers not complete in time",
                srv_peer_name(c));
    srv_conn_close(c);
}
