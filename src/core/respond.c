/*
 * Answers (core/http.h server_send, http_stream_*): written one at a time
 * per connection, in request order; a connection whose answer is not
 * drained reads nothing further. Answers not yet written count against a
 * process-wide budget of unsent bytes, beyond which the slowest readers are
 * closed.
 */
#include "core/server_internal.h"

/* Bytes of answers whose write has not completed, over all loops. Each
 * answer holds its whole arena (head and body) until then. */
static atomic_size_t unsent_total;

/* One streamed answer, in the request's arena. One write at a time: the
 * producer asks for the next chunk only when the previous one is written,
 * so a stream holds one chunk however large the answer. */
struct http_stream {
    struct request *req;
    uv_write_t w;
    char *head; /* sent with the first chunk (or by http_stream_end) */
    size_t head_len;
    bool chunked; /* HTTP/1.1; an HTTP/1.0 answer is delimited by the close */
    bool writing;
    char size_line[24];
    http_stream_cb cb;
    void *ud;
};

bool server_must_close(const struct request *req)
{
    const struct conn *c = req->conn;
    return !c || c->state == C_CLOSED || c->must_close || !c->keep_alive || c->ls->ctx.draining;
}

bool server_http10_keep_alive(const struct request *req)
{
    const struct conn *c = req->conn;
    return c && c->a->parser.http_major == 1 && c->a->parser.http_minor == 0 && c->keep_alive;
}

/* The next pipelined request, or back to reading. */
static void conn_next(struct conn *c)
{
    srv_conn_state(c, C_IDLE);
    c->dispatched = false;
    llhttp_resume(&c->a->parser);
    if (c->a->pending_len) {
        size_t n = c->a->pending_len;
        c->a->pending_len = 0;
        srv_conn_feed(c, c->a->pending, n);
    }
    if (c->state == C_IDLE && !c->peer_eof) {
        /* Waiting for the next request: hold as little as possible. */
        srv_active_give(c);
        c->idle_since = uv_now(&c->ls->loop);
        srv_idle_enter(c, &c->ls->idle);
        srv_read_on(c);
        return;
    }
    if (c->state == C_IDLE || c->state == C_HEAD || c->state == C_BODY) {
        if (c->peer_eof)
            srv_conn_close(c);
        else
            srv_read_on(c);
    }
}

/* The response is written (status 0) or failed: finish the request, then
 * the next one, linger or close. */
void srv_write_done(struct conn *c, int status)
{
    struct loop_server *ls = c->ls;
    srv_writer_unlink(c);
    if (c->req) {
        srv_finish_request(ls, c->req, c->a->status);
        c->req = NULL;
    }
    c->dispatched = false;
    if (c->state == C_CLOSED)
        return;
    if (status < 0) {
        srv_conn_close(c);
        return;
    }
    if (c->must_close || !c->keep_alive || ls->ctx.draining) {
        srv_conn_linger(c);
        return;
    }
    conn_next(c);
}

static void on_write(uv_write_t *w, int status)
{
    srv_write_done(w->data, status);
}

void srv_done_unlink(struct loop_server *ls, struct conn *c)
{
    if (c->a->done_prev)
        c->a->done_prev->a->done_next = c->a->done_next;
    else
        ls->done_head = c->a->done_next;
    if (c->a->done_next)
        c->a->done_next->a->done_prev = c->a->done_prev;
    else
        ls->done_tail = c->a->done_prev;
    c->a->done_prev = c->a->done_next = NULL;
    c->done_queued = false;
}

/* Completions of responses written whole by server_send, one loop turn
 * later as uv_write's callback would be (a handler may still touch its
 * request after answering). Only those queued before this turn run now;
 * the ones they queue (pipelined requests) wait for the next turn. */
static void on_done_idle(uv_idle_t *h)
{
    struct loop_server *ls = h->data;
    struct conn *last = ls->done_tail;
    while (ls->done_head) {
        struct conn *c = ls->done_head;
        bool was_last = c == last;
        srv_done_unlink(ls, c);
        srv_write_done(c, 0);
        if (was_last)
            break;
    }
    if (!ls->done_head)
        uv_idle_stop(h);
}

void srv_writer_unlink(struct conn *c)
{
    if (!c->a || !c->a->unsent)
        return;
    struct loop_server *ls = c->ls;
    if (c->a->wr_prev)
        c->a->wr_prev->a->wr_next = c->a->wr_next;
    else
        ls->wr_head = c->a->wr_next;
    if (c->a->wr_next)
        c->a->wr_next->a->wr_prev = c->a->wr_prev;
    else
        ls->wr_tail = c->a->wr_prev;
    c->a->wr_prev = c->a->wr_next = NULL;
    assert(ls->unsent >= c->a->unsent);
    ls->unsent -= c->a->unsent;
    atomic_fetch_sub(&unsent_total, c->a->unsent);
    c->a->unsent = 0;
}

/* An answer that did not go out at once waits in ls->wr_*, oldest first:
 * the head is the connection that has read least of what it asked for. */
static void writer_link(struct conn *c, size_t bytes)
{
    struct loop_server *ls = c->ls;
    assert(!c->a->unsent && bytes > 0);
    c->a->unsent = bytes;
    c->a->wr_prev = ls->wr_tail;
    c->a->wr_next = NULL;
    if (ls->wr_tail)
        ls->wr_tail->a->wr_next = c;
    else
        ls->wr_head = c;
    ls->wr_tail = c;
    ls->unsent += bytes;
    atomic_fetch_add(&unsent_total, bytes);
}

/*
 * Over TENANTD_MAX_UNSENT_BYTES: a loop holding more than its share closes
 * its slowest readers (oldest unfinished writes) until the process is back
 * under budget or the loop under its share. Loops only touch their own
 * connections; one that holds much trims itself the next time it answers.
 * `keep` (the answer just queued) is never closed here: one answer larger
 * than the budget still goes out.
 */
static void shed_slow_readers(struct loop_server *ls, struct conn *keep)
{
    size_t budget = (size_t)g_config->max_unsent_bytes;
    if (!budget)
        return;
    size_t share = budget / (size_t)ls->srv->nloops;
    size_t closed = 0;
    while (atomic_load(&unsent_total) > budget && ls->unsent > share && ls->wr_head &&
           ls->wr_head != keep) {
        struct conn *v = ls->wr_head;
        srv_writer_unlink(v);
        srv_conn_close(v);
        closed++;
    }
    if (closed)
        log_msg(LOG_WARN, "loop %d: closed %zu slow readers (unsent answers over %zu bytes)",
                ls->ctx.index, closed, budget);
}

void server_send(struct request *req, int status, char *head, size_t head_len, char *body,
                 size_t body_len)
{
    struct conn *c = req->conn;
    struct loop_server *ls = req->ctx->server;
    if (!c) { /* the client left while the handler ran */
        srv_finish_request(ls, req, status);
        ls->orphans--;
        srv_check_drained(ls);
        return;
    }
    if (c->state == C_CLOSED) { /* closing: handles not yet released */
        srv_finish_request(ls, req, status);
        c->req = NULL;
        return;
    }
    /* One answer per request: none is being written (a parse error is
     * answered from IDLE, HEAD or BODY, a handled request from HANDLING). */
    assert(c->dispatched && !c->a->unsent && c->state != C_WRITING && c->state != C_LINGER);
    if (server_must_close(req))
        srv_read_off(c); /* the rest is drained by srv_conn_linger */
    free(c->a->body);    /* an error answered mid-body: the rest is never read */
    c->a->body = NULL;
    c->a->body_len = c->a->body_cap = 0;
    c->a->status = status;
    srv_conn_state(c, C_WRITING);
    c->a->write_req.data = c;
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)head_len),
                     uv_buf_init(body, (unsigned)(body ? body_len : 0))};
    unsigned nb = body && body_len ? 2 : 1;
    size_t total = head_len + (nb == 2 ? body_len : 0);
    uv_buf_t *first = b;
    /* Most answers fit the socket buffer: write them here. A whole write
     * then completes through ls->done_idle rather than uv_write, whose
     * completion costs an epoll_ctl per response. The rest, or all of it
     * on EAGAIN or an error, goes through uv_write as before. */
    if (!c->cont_in_flight) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, b, nb);
        if (n >= 0 && (size_t)n == total) {
            srv_timer_clear(c);
            c->a->done_prev = ls->done_tail;
            c->a->done_next = NULL;
            if (ls->done_tail)
                ls->done_tail->a->done_next = c;
            else
                ls->done_head = c;
            ls->done_tail = c;
            c->done_queued = true;
            if (!uv_is_active((uv_handle_t *)&ls->done_idle))
                uv_idle_start(&ls->done_idle, on_done_idle);
            return;
        }
        if (n > 0) {
            size_t done = (size_t)n;
            if (done >= b[0].len) {
                done -= b[0].len;
                first = &b[1];
                nb = 1;
            }
            first->base += done;
            first->len -= done;
        }
    }
    int r = uv_write(&c->a->write_req, (uv_stream_t *)&c->tcp, first, nb, on_write);
    if (r != 0) {
        srv_finish_request(ls, req, status);
        c->req = NULL;
        srv_conn_close(c);
        return;
    }
    /* Usually written at once; otherwise a client that does not read gets
     * the idle timeout, and the answer counts against the unsent budget
     * until written. */
    if (c->tcp.write_queue_size > 0) {
        srv_timer_set(c, (uint64_t)g_config->idle_timeout_ms);
        writer_link(c, total);
        shed_slow_readers(ls, c);
    } else {
        srv_timer_clear(c);
    }
}

bool server_stream_prepare(struct request *req)
{
    struct conn *c = req->conn;
    bool chunked = !(c && c->a->parser.http_minor == 0);
    if (c && !chunked)
        c->must_close = true; /* HTTP/1.0 has no chunks: the close ends the body */
    return chunked;
}

void server_stream_head(struct request *req, char *head, size_t len, bool chunked)
{
    struct http_stream *st = arena_calloc(req->arena, sizeof *st);
    st->req = req;
    st->head = head;
    st->head_len = len;
    st->chunked = chunked;
    req->stream = st;
}

static void on_stream_write(uv_write_t *w, int status)
{
    struct http_stream *st = w->data;
    st->writing = false;
    struct conn *c = st->req->conn;
    if (c && c->state != C_CLOSED)
        srv_timer_clear(c);
    st->cb(st->req, status < 0 ? -1 : 0, st->ud);
}

void http_stream_write(struct request *req, const char *data, size_t len, http_stream_cb cb,
                       void *ud)
{
    struct http_stream *st = req->stream;
    assert(st && !st->writing && !req->responded && len > 0);
    struct conn *c = req->conn;
    st->cb = cb;
    st->ud = ud;
    st->w.data = st;
    if (!c || c->state == C_CLOSED) {
        cb(req, -1, ud); /* the client left: the producer stops */
        return;
    }
    if (req->head) {
        cb(req, 0, ud); /* HEAD: the head alone goes out at the end */
        return;
    }
    uv_buf_t b[4];
    unsigned n = 0;
    if (st->head) {
        b[n++] = uv_buf_init(st->head, (unsigned)st->head_len);
        st->head = NULL;
    }
    if (st->chunked) {
        int k = snprintf(st->size_line, sizeof st->size_line, "%zx\r\n", len);
        b[n++] = uv_buf_init(st->size_line, (unsigned)k);
    }
    b[n++] = uv_buf_init((char *)data, (unsigned)len);
    if (st->chunked)
        b[n++] = uv_buf_init("\r\n", 2);
    st->writing = true;
    if (uv_write(&st->w, (uv_stream_t *)&c->tcp, b, n, on_stream_write) != 0) {
        st->writing = false;
        srv_conn_close(c); /* orphans the request; the producer ends it */
        cb(req, -1, ud);
        return;
    }
    /* A client that stops reading is closed after the idle timeout. */
    srv_timer_set(c, (uint64_t)g_config->idle_timeout_ms);
}

void server_stream_end(struct request *req, int status, bool ok)
{
    struct http_stream *st = req->stream;
    assert(st && !st->writing);
    struct conn *c = req->conn;
    static char last[] = "0\r\n\r\n";
    if (!ok && c)
        c->must_close = true; /* no last chunk: the client sees a cut answer */
    if (st->head) {           /* nothing written yet (HEAD, or an empty stream) */
        size_t n = st->head_len;
        char *h = st->head;
        if (ok && st->chunked && !req->head) {
            h = arena_alloc(req->arena, n + sizeof last - 1);
            memcpy(h, st->head, n);
            memcpy(h + n, last, sizeof last - 1);
            n += sizeof last - 1;
        }
        server_send(req, status, h, n, NULL, 0);
        return;
    }
    if (ok && st->chunked && !req->head)
        server_send(req, status, last, sizeof last - 1, NULL, 0);
    else
        server_send(req, status, last, 0, NULL, 0);
}
