/*
 * The HTTP/1.1 server: one libuv loop per thread, each with its own
 * SO_REUSEPORT listening socket; llhttp parses; one request at a time per
 * connection (pipelined requests wait in the connection's buffer, so
 * answers go out in order); graceful drain on SIGTERM/SIGINT.
 *
 * A connection moves through these states:
 *   IDLE      waiting for a request's first byte (idle or first-request timer)
 *   HEAD      request line and headers arriving (header timer since 1st byte)
 *   BODY      body arriving (idle timer, restarted by every read)
 *   HANDLING  request complete, with the handler; not reading
 *   WRITING   response being written (idle timer against slow readers)
 *   LINGER    error or Connection: close answered; FIN sent, the client's
 *             leftovers read and dropped briefly so they cause no RST that
 *             could destroy the answer in flight
 *   CLOSED    handles closing
 */
#include <assert.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>
#include <openssl/rand.h>

#include "core/config.h"
#include "core/connset.h"
#include "core/cors.h"
#include "core/http.h"
#include "core/http_internal.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/problem.h"
#include "core/proxy.h"
#include "core/router.h"
#include "core/thread.h"

#define READ_BUF_SIZE 65536
#define LINGER_MS 1000
#define REQUEST_ID_MAX 128

enum conn_state { C_IDLE, C_HEAD, C_BODY, C_HANDLING, C_WRITING, C_LINGER, C_CLOSED };

struct loop_server;

/*
 * What a connection needs only while a request is under way: its timer,
 * the parser and its accumulators, the write and shutdown requests and the
 * pipelined bytes. A keep-alive connection waiting for its next request
 * gives it back to the loop's pool (and holds only struct conn, ~0.4 KiB);
 * the next request's first bytes take one again.
 */
struct active {
    uv_timer_t timer; /* data: the connection using it */
    struct active *next_free;
    uv_shutdown_t shutdown_req;
    uv_write_t write_req; /* the response; one at a time */
    llhttp_t parser;
    int status; /* of the response being written */
    /* On ls->done_* while done_queued (see server_send). */
    struct conn *done_prev, *done_next;
    /* An answer still being written: its size, and its place on ls->wr_*
     * (oldest first), for the budget of unsent bytes. */
    size_t unsent;
    struct conn *wr_prev, *wr_next;
    /* Timeouts are lazy (see timer_set): the loop time at which the
     * connection is closed (0: none), and when the timer fires (0: idle). */
    uint64_t deadline, timer_due;

    /* Bytes after a complete request, kept until its answer is written. */
    char *pending;
    size_t pending_len, pending_cap;

    /* Where the parser is in the raw input, for the checks llhttp 8.1 does
     * not make itself (obs-fold, space before the colon). */
    const char *chunk;  /* start of the buffer given to llhttp_execute */
    char prev_byte;     /* last byte of the previous buffer */
    size_t head_before; /* header bytes of this request before `chunk` */
    enum { SCAN_BEFORE, SCAN_HEAD, SCAN_DONE } scan; /* raw obs-fold scan of the head */
    uint32_t scan_tail;                              /* its last four bytes */

    /* The request's accumulators. */
    char *span; /* a URL, header name or value arriving in pieces */
    size_t span_len, span_cap;
    bool url_started;
    const char *field; /* current header name, in the arena */
    size_t field_len;
    size_t headers_cap;
    size_t trailer_bytes, ext_bytes;
    uint64_t body_deadline; /* loop time by which the whole body must be in */
    int cl_count, te_count, host_count;
    const char *te_value, *expect;
    char *body;
    size_t body_len, body_cap;
    size_t body_max; /* this request's body limit (body_limit) */

    /* Set by a parser callback that rejects the request. */
    bool failed;
    enum problem problem;
    const char *detail;
};

struct conn {
    uv_tcp_t tcp;
    struct loop_server *ls;
    struct conn *prev, *next;
    struct active *a;    /* NULL only while idle between requests, or closed */
    struct request *req; /* the request being parsed or handled */
    enum conn_state state;
    int open_handles;
    bool reading;
    bool keep_alive;     /* decided when a request completes */
    bool must_close;     /* an error, or the server drains */
    bool dispatched;     /* c->req is with its handler */
    bool peer_eof;       /* the client half-closed while its request ran */
    bool cont_in_flight; /* a 100 Continue write whose callback is still due */
    /* Queued on ls->done_* when the response went out whole at once (see
     * server_send). */
    bool done_queued;
    bool ip_counted; /* ip_key counted in ls->ips */
    bool have_ip;
    uint8_t ip_key[16]; /* the peer address (IPv4 as IPv4-mapped IPv6) */
    /* While in C_IDLE: on ls->fresh (no request yet; header timer) or
     * ls->idle (kept alive; closed by the loop's sweep at idle_since +
     * TENANTD_IDLE_TIMEOUT_MS), oldest first. */
    struct qnode idle_node;
    struct queue *idleq;
    uint64_t idle_since;
};

struct server;

struct loop_server {
    struct loop_ctx ctx;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop_async;
    uv_timer_t drain_timer;
    uv_idle_t done_idle; /* runs write completions queued by server_send */
    struct conn *done_head, *done_tail;
    struct conn *wr_head, *wr_tail; /* answers not yet written, oldest first */
    size_t unsent;                  /* their bytes */
    uv_thread_t thread;
    const struct server_hooks *hooks;
    struct server *srv;
    int fd;
    char *readbuf; /* shared by the loop's connections: each read is parsed at once */
    struct conn *conns;
    size_t nconns;
    size_t nclosing;             /* of nconns, closed but handles not yet released */
    struct queue idle;           /* kept-alive connections waiting for a request, oldest first */
    struct queue fresh;          /* new connections that have not begun a request, oldest first */
    uv_timer_t idle_timer;       /* closes ls->idle's connections past the idle timeout */
    struct active *free_actives; /* the pool of struct active */
    size_t nfree_actives;
    struct ipcount ips; /* open connections per peer address */
    size_t orphans;     /* requests whose client left before the handler answered */
    bool listening, stopping;
    uint64_t last_refusal_log;
};

struct server {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    uv_timer_t delay_timer; /* TENANTD_SHUTDOWN_DELAY_MS */
    uv_async_t exited;
    atomic_int nexited;
    int nloops;
    bool stopping;
    struct loop_server *loops;
    const struct server_hooks *hooks;
};

static llhttp_settings_t parser_settings;

static void conn_close(struct conn *c);
static void conn_respond_error(struct conn *c);
static void check_drained(struct loop_server *ls);
static void write_done(struct conn *c, int status);
static void done_unlink(struct loop_server *ls, struct conn *c);
static void writer_unlink(struct conn *c);

/* ---- request ids ---- */

/* Request ids must be unique, not secret. Each thread draws a random
 * 64-bit prefix and a random start once (RAND_bytes), then counts: the
 * prefix separates threads (and runs), the counter requests, and only the
 * counter's 16 hex digits are formatted per request. */
static _Thread_local char rid_prefix[20]; /* "xxxxxxxx-xxxx-4xxx-" */
static _Thread_local uint64_t rid_next;
static _Thread_local bool rid_seeded;
static const char hex_digits[] = "0123456789abcdef";

static void rid_seed(void)
{
    uint64_t r[2];
    if (RAND_bytes((unsigned char *)r, sizeof r) != 1) {
        r[0] = uv_hrtime() ^ (uint64_t)(uintptr_t)&rid_next;
        r[1] = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
    }
    uint64_t hi = (r[0] & 0xFFFFFFFFFFFF0FFFull) | 0x0000000000004000ull; /* version 4 */
    char *o = rid_prefix;
    for (int i = 0; i < 16; i++) {
        if (i == 8 || i == 12)
            *o++ = '-';
        *o++ = hex_digits[(hi >> (60 - 4 * i)) & 15];
    }
    *o++ = '-';
    *o = '\0';
    rid_next = r[1];
    rid_seeded = true;
}

/* The 8 hex digits of v (lowercase), without a loop: each nibble is spread
 * to a byte, then '0' or 'a' - 10 is added to all bytes at once. */
static void hex8(uint32_t v, char *out)
{
    uint64_t x = v;
    x = ((x & 0xFFFF0000ull) << 16) | (x & 0x0000FFFFull);
    x = ((x & 0x0000FF000000FF00ull) << 8) | (x & 0x000000FF000000FFull);
    x = ((x & 0x00F000F000F000F0ull) << 4) | (x & 0x000F000F000F000Full);
    uint64_t letters = ((x + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
    x += 0x3030303030303030ull + letters * (uint64_t)('a' - '0' - 10);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    x = __builtin_bswap64(x); /* most significant digit first in memory */
#endif
    memcpy(out, &x, 8);
}

/* A UUID v4-shaped id in the arena (formatted by hand: this runs for every
 * request). */
static const char *new_request_id(struct arena *a)
{
    if (!rid_seeded)
        rid_seed();
    uint64_t lo = (rid_next++ & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull; /* variant */
    char digits[16];
    hex8((uint32_t)(lo >> 32), digits);
    hex8((uint32_t)lo, digits + 8);
    char *out = arena_alloc(a, 37);
    memcpy(out, rid_prefix, 19);
    memcpy(out + 19, digits, 4);
    out[23] = '-';
    memcpy(out + 24, digits + 4, 12);
    out[36] = '\0';
    return out;
}

/* A client's X-Request-Id is kept only if it is safe to log and echo. */
static bool sane_request_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (n >= REQUEST_ID_MAX ||
            !((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return false;
    }
    return n > 0;
}

/* ---- connection states ---- */

/* Every state change goes through here, so that a transition the design
 * does not have trips an assert (Debug and ASan builds). A parse error is
 * answered (WRITING) from IDLE, HEAD or BODY. */
static void conn_state(struct conn *c, enum conn_state next)
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

static struct conn *conn_of_idle(struct qnode *n)
{
    return (struct conn *)(void *)((char *)n - offsetof(struct conn, idle_node));
}

static void on_idle_timer(uv_timer_t *t);

/* The connection waits for a request: newest on q (ls->fresh or ls->idle). */
static void idle_enter(struct conn *c, struct queue *q)
{
    assert(c->state == C_IDLE && !c->idleq);
    queue_push(q, &c->idle_node);
    c->idleq = q;
    struct loop_server *ls = c->ls;
    if (q == &ls->idle && !uv_is_active((uv_handle_t *)&ls->idle_timer))
        uv_timer_start(&ls->idle_timer, on_idle_timer, (uint64_t)g_config->idle_timeout_ms, 0);
}

/* The peer address for logs (a thread's buffer, valid until the next call). */
static const char *peer_name(const struct conn *c)
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

/* ---- the pool of struct active ---- */

#define ACTIVE_POOL_MAX 64 /* kept for reuse per loop; more are freed */
#define SPAN_KEEP 1024     /* a pooled span buffer up to this size is kept */

static void free_active(uv_handle_t *h)
{
    struct active *a = (struct active *)(void *)h; /* the timer is its start */
    free(a->span);
    free(a);
}

/* Gives c a struct active (pooled, or new), its parser fresh. */
static void active_take(struct conn *c)
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
    llhttp_init(&a->parser, HTTP_REQUEST, &parser_settings);
    a->parser.data = c;
    c->a = a;
}

/* Takes c's struct active back (no request under way, no write or
 * shutdown in flight): buffers released, into the pool or freed. */
static void active_give(struct conn *c)
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
        uv_close((uv_handle_t *)&a->timer, free_active);
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
        struct conn *c = conn_of_idle(ls->idle.head);
        if (c->idle_since + timeout > now) {
            uv_timer_start(t, on_idle_timer, c->idle_since + timeout - now, 0);
            return;
        }
        conn_close(c);
    }
}

/* ---- small helpers ---- */

static void read_on(struct conn *c);

static void on_timer(uv_timer_t *t);

/* Sets the connection's one timeout to ms from now. Every request moves it
 * a few times, so c->a->timer is only restarted when it would fire too late;
 * firing early, it re-arms itself for the rest (on_timer). */
static void timer_set(struct conn *c, uint64_t ms)
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
static void body_timer(struct conn *c)
{
    uint64_t now = uv_now(&c->ls->loop), ms = (uint64_t)g_config->idle_timeout_ms;
    uint64_t left = c->a->body_deadline > now ? c->a->body_deadline - now : 0;
    timer_set(c, left < ms ? left : ms);
}

/* No timeout (a handler runs, or an answer went out whole). */
static void timer_clear(struct conn *c)
{
    c->a->deadline = 0;
}

static void read_off(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        log_msg(LOG_ERROR, "out of memory");
        abort();
    }
    return q;
}

/* Appends to a malloc'd growable buffer. */
static void buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + n + 1)
            ncap *= 2;
        *buf = xrealloc(*buf, ncap);
        *cap = ncap;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
}

/* The byte k positions before `at` in the input stream, or -1 when it is no
 * longer at hand. */
static int byte_before(const struct conn *c, const char *at, size_t k)
{
    if ((size_t)(at - c->a->chunk) >= k)
        return (unsigned char)at[-(ptrdiff_t)k];
    if (k == 1 && at == c->a->chunk)
        return (unsigned char)c->a->prev_byte;
    return -1;
}

static int reject(struct conn *c, enum problem p, const char *detail)
{
    if (!c->a->failed) {
        c->a->failed = true;
        c->a->problem = p;
        c->a->detail = detail;
    }
    llhttp_set_error_reason(&c->a->parser, detail);
    return HPE_USER;
}

/* The header block so far, up to `end` in the current buffer. */
static int check_head_size(struct conn *c, const char *end)
{
    if (c->state != C_HEAD)
        return 0;
    size_t n = c->a->head_before + (size_t)(end - c->a->chunk);
    if (n > (size_t)g_config->max_header_bytes)
        return reject(c, PROBLEM_HEADERS_TOO_LARGE, "The request's header block is too large.");
    return 0;
}

/* ---- the request's lifetime ---- */

static void new_request(struct conn *c)
{
    struct arena *a = arena_new();
    struct request *req = arena_calloc(a, sizeof *req);
    req->arena = a;
    req->ctx = &c->ls->ctx;
    req->conn = c;
    req->method_str = "-";
    req->target = "";
    req->path = "";
    req->client_ip = req->peer_ip = arena_strdup(a, peer_name(c));
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
static void finish_request(struct loop_server *ls, struct request *req, int status)
{
    uint64_t now = uv_hrtime();
    if (!req->start_ns)
        req->start_ns = now;
    double secs = (double)(now - req->start_ns) / 1e9;
    const char *route = req->route_pattern ? req->route_pattern : "unmatched";
    if (!req->request_id)
        req->request_id = new_request_id(req->arena);
    log_request(req->request_id, req->method_str, route, req->path, status, secs * 1000.0,
                req->client_ip, req->org_id);
    if (ls->ctx.metrics)
        metrics_request(ls->ctx.metrics, route, req->method_str, status, secs);
    arena_free(req->arena);
}

/* Drops the request being parsed (never dispatched) and its body. */
static void drop_request(struct conn *c)
{
    if (c->req) {
        arena_free(c->req->arena);
        c->req = NULL;
    }
    free(c->a->body);
    c->a->body = NULL;
    c->a->body_len = c->a->body_cap = 0;
}

/* ---- llhttp callbacks: collect, validate, never dispatch ---- */

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    drop_request(c); /* none should remain; keeps the invariant cheap */
    new_request(c);
    conn_state(c, C_HEAD);
    timer_set(c, (uint64_t)g_config->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->a->url_started) {
        c->a->url_started = true;
        /* llhttp 8.1 accepts several spaces after the method. */
        if (byte_before(c, at, 2) == ' ')
            return reject(c, PROBLEM_BAD_REQUEST, "The request line is malformed.");
    }
    if (check_head_size(c, at + len))
        return HPE_USER;
    buf_append(&c->a->span, &c->a->span_len, &c->a->span_cap, at, len);
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->req->target = arena_strndup(c->req->arena, c->a->span ? c->a->span : "", c->a->span_len);
    c->a->span_len = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* llhttp 8.1 keeps a space before the colon in the name; RFC 9112
     * says to reject it (a proxy might read the line differently). */
    for (size_t i = 0; i < len; i++)
        if (at[i] == ' ' || at[i] == '\t')
            return reject(c, PROBLEM_BAD_REQUEST, "A header name contains whitespace.");
    if (c->state == C_BODY) { /* trailer: checked and counted, not kept */
        c->a->trailer_bytes += len;
        if (c->a->trailer_bytes > (size_t)g_config->max_header_bytes)
            return reject(c, PROBLEM_HEADERS_TOO_LARGE, "The request's trailers are too large.");
        return 0;
    }
    if (check_head_size(c, at + len))
        return HPE_USER;
    buf_append(&c->a->span, &c->a->span_len, &c->a->span_cap, at, len);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->state == C_BODY)
        return 0;
    if (c->a->span_len == 0)
        return reject(c, PROBLEM_BAD_REQUEST, "A header name is empty.");
    c->a->field = arena_strndup(c->req->arena, c->a->span, c->a->span_len);
    c->a->field_len = c->a->span_len;
    c->a->span_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* llhttp 8.1 joins an obs-fold continuation line (CRLF then SP/HT) to the
     * value; such a piece starts right after a LF. RFC 9112 5.2: reject. */
    if (len > 0 && byte_before(c, at, 1) == '\n')
        return reject(c, PROBLEM_BAD_REQUEST, "Folded header lines (obs-fold) are not accepted.");
    for (size_t i = 0; i < len; i++)
        if (at[i] == '\r' || at[i] == '\n' || at[i] == '\0')
            return reject(c, PROBLEM_BAD_REQUEST, "A header value contains CR, LF or NUL.");
    if (c->state == C_BODY) {
        c->a->trailer_bytes += len;
        if (c->a->trailer_bytes > (size_t)g_config->max_header_bytes)
            return reject(c, PROBLEM_HEADERS_TOO_LARGE, "The request's trailers are too large.");
        return 0;
    }
    if (check_head_size(c, at + len))
        return HPE_USER;
    buf_append(&c->a->span, &c->a->span_len, &c->a->span_cap, at, len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->state == C_BODY)
        return 0;
    struct request *req = c->req;
    const char *v = c->a->span ? c->a->span : "";
    size_t n = c->a->span_len;
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (req->nheaders == c->a->headers_cap) {
        size_t ncap = c->a->headers_cap ? c->a->headers_cap * 2 : 16;
        struct http_header *h = arena_alloc(req->arena, ncap * sizeof *h);
        if (req->nheaders)
            memcpy(h, req->headers, req->nheaders * sizeof *h);
        req->headers = h;
        c->a->headers_cap = ncap;
    }
    struct http_header *h = &req->headers[req->nheaders++];
    h->name = c->a->field ? c->a->field : "";
    h->value = arena_strndup(req->arena, v, n);
    size_t name_len = c->a->field ? c->a->field_len : 0;
    c->a->span_len = 0;
    c->a->field = NULL;

    /* By length first: most headers are none of these. */
    switch (name_len) {
    case 14:
        if (strcasecmp(h->name, "content-length") == 0)
            c->a->cl_count++;
        break;
    case 17:
        if (strcasecmp(h->name, "transfer-encoding") == 0) {
            c->a->te_count++;
            c->a->te_value = h->value;
        }
        break;
    case 4:
        if (strcasecmp(h->name, "host") == 0)
            c->a->host_count++;
        break;
    case 6:
        if (strcasecmp(h->name, "expect") == 0)
            c->a->expect = h->value;
        break;
    default:
        break;
    }
    return 0;
}

static void continue_written(uv_write_t *w, int status)
{
    (void)status;
    struct conn *c = w->data;
    c->cont_in_flight = false;
}

/* Splits the target into path and query. Origin-form ("/a?b") is the norm;
 * absolute-form ("http://host/a") must be accepted too (RFC 9112 3.2.2);
 * "*" only with OPTIONS. */
static bool split_target(struct request *req)
{
    const char *t = req->target;
    if (t[0] != '/') {
        if (strcmp(t, "*") == 0 && req->method == HTTP_OPTIONS) {
            req->path = "*";
            return true;
        }
        size_t skip;
        if (strncasecmp(t, "http://", 7) == 0)
            skip = 7;
        else if (strncasecmp(t, "https://", 8) == 0)
            skip = 8;
        else
            return false;
        t += skip;
        const char *slash = strpbrk(t, "/?");
        if (slash == t)
            return false; /* no authority */
        if (!slash)
            t = "/";
        else if (*slash == '?')
            t = arena_printf(req->arena, "/%s", slash);
        else
            t = slash;
    }
    const char *q = strchr(t, '?');
    if (q) {
        req->path = arena_strndup(req->arena, t, (size_t)(q - t));
        req->query = q + 1;
    } else {
        req->path = t;
    }
    return true;
}

/* The body limit for req: TENANTD_MAX_BATCH_BODY_BYTES on the bulk routes
 * (batch record create, user import, org import), whose bodies carry up to
 * 1000 items or a whole org, else TENANTD_MAX_BODY_BYTES. Decided from the
 * path before routing, since the body is refused while it arrives. */
static size_t body_limit(const struct request *req)
{
    size_t normal = (size_t)g_config->max_body_bytes;
    if (req->method != HTTP_POST)
        return normal;
    const char *p = req->path;
    size_t n = strlen(p), sfx = sizeof "/records/batch" - 1;
    bool bulk = strcmp(p, "/v1/users/import") == 0 || strcmp(p, "/v1/admin/orgs/import") == 0 ||
                (strncmp(p, "/v1/collections/", 16) == 0 && n > 16 + sfx &&
                 strcmp(p + n - sfx, "/records/batch") == 0);
    size_t batch = (size_t)g_config->max_batch_body_bytes;
    return bulk && batch > normal ? batch : normal;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct request *req = c->req;
    req->start_ns = uv_hrtime();
    req->method = p->method;
    req->method_str = llhttp_method_name((llhttp_method_t)p->method);
    req->head = p->method == HTTP_HEAD;
    const char *rid = http_header(req, "X-Request-Id");
    req->request_id = rid && sane_request_id(rid) ? rid : new_request_id(req->arena);

    /* llhttp accepts 0.9 and 2.0 in the version; only 1.x is HTTP/1. */
    if (p->http_major != 1 || p->http_minor > 1) {
        reject(c, PROBLEM_BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 are supported.");
        return -1;
    }
    /* Smuggling guards on top of llhttp's own (it already refuses CL with TE,
     * differing duplicate CLs and "chunked" not last). */
    if (c->a->cl_count > 1) {
        reject(c, PROBLEM_BAD_REQUEST, "Content-Length appears more than once.");
        return -1;
    }
    if (c->a->te_count) {
        if (c->a->te_count > 1 || strcasecmp(c->a->te_value, "chunked") != 0 ||
            p->http_minor == 0) {
            reject(c, PROBLEM_BAD_REQUEST,
                   "Transfer-Encoding must be exactly \"chunked\" (HTTP/1.1 only).");
            return -1;
        }
        if (c->a->cl_count) {
            reject(c, PROBLEM_BAD_REQUEST, "Content-Length and Transfer-Encoding both present.");
            return -1;
        }
    }
    if (c->a->host_count > 1) {
        reject(c, PROBLEM_BAD_REQUEST, "Host appears more than once.");
        return -1;
    }
    if (!split_target(req)) {
        reject(c, PROBLEM_BAD_REQUEST, "The request target is not valid.");
        return -1;
    }
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
    c->a->body_max = body_limit(req);
    if (has_cl && p->content_length > (uint64_t)c->a->body_max) {
        reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
        return -1;
    }
    if (chunked || (has_cl && p->content_length > 0)) {
        if (c->a->expect && p->http_minor == 1 && strcasecmp(c->a->expect, "100-continue") == 0) {
            static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            uv_buf_t b = uv_buf_init(cont, sizeof cont - 1);
            uv_write_t *w = arena_alloc(req->arena, sizeof *w);
            w->data = c;
            /* Ordered before the final answer's write, whose callback is
             * what frees the arena; server_send takes no shortcut while
             * this callback is due. */
            if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, continue_written) == 0)
                c->cont_in_flight = true;
            else
                log_msg(LOG_DEBUG, "could not send 100 Continue");
        }
        size_t first = has_cl ? (size_t)p->content_length + 1 : 16384;
        if (first > 65536)
            first = 65536; /* grow as bytes arrive, not as the client promises */
        c->a->body = xrealloc(c->a->body, first);
        c->a->body_cap = first;
        c->a->body_len = 0;
        conn_state(c, C_BODY);
        c->a->body_deadline = uv_now(&c->ls->loop) + (uint64_t)g_config->body_timeout_ms;
        body_timer(c);
    } else {
        conn_state(c, C_BODY); /* on_message_complete follows at once */
    }
    return 0;
}

/* Chunk extensions are parsed and dropped; llhttp 8.1 puts no bound on
 * them, so their bytes count against the header limit, like trailers. */
static int on_chunk_extension(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    struct conn *c = p->data;
    c->a->ext_bytes += len;
    if (c->a->ext_bytes > (size_t)g_config->max_header_bytes)
        return reject(c, PROBLEM_HEADERS_TOO_LARGE,
                      "The request's chunk extensions are too large.");
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    struct conn *c = p->data;
    /* p->content_length is the announced chunk size: refuse early. */
    if (p->content_length > (uint64_t)(c->a->body_max - c->a->body_len))
        return reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->a->body_len + len > c->a->body_max)
        return reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
    buf_append(&c->a->body, &c->a->body_len, &c->a->body_cap, at, len);
    return 0;
}

static void free_body(void *p)
{
    free(p);
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct request *req = c->req;
    if (c->a->body) {
        c->a->body[c->a->body_len] = '\0'; /* buf_append keeps room for it */
        arena_cleanup(req->arena, free_body, c->a->body);
        req->body = c->a->body;
        req->body_len = c->a->body_len;
        c->a->body = NULL;
        c->a->body_len = c->a->body_cap = 0;
    } else {
        req->body = arena_calloc(req->arena, 1);
        req->body_len = 0;
    }
    /* Upgrade / CONNECT leave the parser in another protocol: answer, then
     * close. */
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    conn_state(c, C_HANDLING);
    timer_clear(c);
    return HPE_PAUSED; /* one request at a time; the rest waits in c->a->pending */
}

/* ---- reading and dispatch ---- */

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
        c->a->pending = xrealloc(c->a->pending, n);
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

/*
 * llhttp 8.1 folds an obs-fold continuation line (CRLF then SP/HT) into the
 * value, and after an empty value skips it as whitespace, so no callback can
 * see it. RFC 9112 5.2 lets a server reject it, and we must: a proxy in
 * front may read the line differently. Strict llhttp insists on CRLF, so the
 * head ends at the first CRLFCRLF; any LF followed by SP/HT before it is a
 * fold. Returns false when one is found.
 */
static bool scan_head(struct conn *c, const unsigned char *p, size_t n)
{
    if (c->state == C_IDLE)
        c->a->scan = SCAN_BEFORE;
    else if (c->state != C_HEAD)
        return true;
    if (c->a->scan == SCAN_DONE || n == 0)
        return true;
    size_t i = 0;
    if (c->a->scan == SCAN_BEFORE) {
        while (i < n && (p[i] == '\r' || p[i] == '\n'))
            i++; /* empty lines before a request are allowed */
        if (i == n)
            return true;
        c->a->scan = SCAN_HEAD;
        c->a->scan_tail = 0;
    } else if ((c->a->scan_tail & 0xFF) == '\n' && (p[0] == ' ' || p[0] == '\t')) {
        return false; /* the previous buffer ended with the LF */
    }
    /* Only LFs matter: jump from one to the next. The head's bytes in this
     * buffer start at `start`; c->a->scan_tail holds the ones before. */
    const size_t start = i;
    const uint32_t before = c->a->scan_tail;
    while (i < n) {
        const unsigned char *lf = memchr(p + i, '\n', n - i);
        if (!lf)
            break;
        size_t j = (size_t)(lf - p);
        uint32_t t = before; /* the four bytes ending at the LF */
        for (size_t k = j >= start + 3 ? j - 3 : start; k <= j; k++)
            t = (t << 8) | p[k];
        if (t == 0x0D0A0D0Au) {
            c->a->scan = SCAN_DONE;
            return true;
        }
        if (j + 1 < n && (p[j + 1] == ' ' || p[j + 1] == '\t'))
            return false;
        i = j + 1;
    }
    uint32_t t = before;
    for (size_t k = n >= start + 4 ? n - 4 : start; k < n; k++)
        t = (t << 8) | p[k];
    c->a->scan_tail = t;
    return true;
}

/* Parses data. Returns with the connection reading for more, handling a
 * request (rest kept in c->a->pending), or answering an error. */
static void conn_feed(struct conn *c, const char *data, size_t len)
{
    c->a->chunk = data;
    if (c->state == C_IDLE)
        c->a->head_before = 0;
    if (!scan_head(c, (const unsigned char *)data, len)) {
        reject(c, PROBLEM_BAD_REQUEST, "Folded header lines (obs-fold) are not accepted.");
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
                reject(c, PROBLEM_HEADERS_TOO_LARGE, "The request's header block is too large.");
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
        log_msg(LOG_DEBUG, "bad request from %s: %s (%s)", peer_name(c), llhttp_errno_name(err),
                c->a->parser.reason ? c->a->parser.reason : "");
    conn_respond_error(c);
}

/* Answers a request the parser rejected, then closes. */
static void conn_respond_error(struct conn *c)
{
    enum problem p = c->a->failed ? c->a->problem : PROBLEM_BAD_REQUEST;
    const char *detail = c->a->failed ? c->a->detail : "The request is not valid HTTP/1.1.";
    read_off(c);
    c->must_close = true;
    c->keep_alive = false;
    if (!c->req)
        new_request(c);
    struct request *req = c->req;
    if (!req->request_id) {
        const char *rid = http_header(req, "X-Request-Id");
        req->request_id = rid && sane_request_id(rid) ? rid : new_request_id(req->arena);
    }
    if (p == PROBLEM_BAD_REQUEST)
        log_msg(LOG_DEBUG, "rejected a request from %s: %s", peer_name(c), detail);
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
            read_off(c);
            return;
        }
        /* Requests are never delimited by EOF: a half-received one is
         * dropped. */
        conn_close(c);
        return;
    }
    switch (c->state) {
    case C_LINGER:
        return; /* discarded */
    case C_HANDLING:
    case C_WRITING:
        /* Pipelined bytes wait for their turn; past one buffer's worth the
         * socket stops being read (backpressure). */
        buf_append(&c->a->pending, &c->a->pending_len, &c->a->pending_cap, buf->base,
                   (size_t)nread);
        if (c->a->pending_len >= READ_BUF_SIZE)
            read_off(c);
        return;
    case C_BODY:
        body_timer(c);
        break;
    case C_IDLE:
        if (!c->a)
            active_take(c); /* a kept-alive connection's next request */
        break;
    case C_HEAD:
        break;
    default:
        return; /* not reading in other states */
    }
    conn_feed(c, buf->base, (size_t)nread);
}

static void read_on(struct conn *c)
{
    if (!c->reading && c->state != C_CLOSED) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
        else
            conn_close(c);
    }
}

/* ---- closing ---- */

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct loop_server *ls = c->ls;
    writer_unlink(c); /* normally done by the cancelled write's callback */
    assert(!c->done_queued && !(c->a && c->a->unsent) && !c->idleq);
    assert(ls->nclosing > 0);
    ls->nclosing--;
    if (c->ip_counted)
        ipcount_del(&ls->ips, c->ip_key);
    if (c->req) {
        if (c->dispatched && !c->req->responded) {
            /* The handler still runs; it answers into the void later. */
            log_msg(LOG_DEBUG, "client %s left before request %s was answered", peer_name(c),
                    c->req->request_id ? c->req->request_id : "-");
            c->req->conn = NULL;
            ls->orphans++;
            c->req = NULL;
        } else {
            drop_request(c);
        }
    }
    active_give(c); /* its write and shutdown callbacks have run */
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
    check_drained(ls);
}

static void conn_close(struct conn *c)
{
    if (c->state == C_CLOSED)
        return;
    conn_state(c, C_CLOSED);
    c->ls->nclosing++;
    c->reading = false;
    if (c->done_queued) { /* written: finish it now, as uv_write's callback would */
        done_unlink(c->ls, c);
        write_done(c, 0);
    }
    if (c->a)
        uv_timer_stop(&c->a->timer);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    struct conn *c = r->data;
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c);
}

/* Sends FIN after the answer, then reads and drops what the client still
 * sends until it closes or LINGER_MS passes, so the kernel does not answer
 * unread bytes with an RST that could destroy the response in flight. */
static void conn_linger(struct conn *c)
{
    conn_state(c, C_LINGER);
    c->a->shutdown_req.data = c;
    if (uv_shutdown(&c->a->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    timer_set(c, LINGER_MS);
    read_on(c);
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
                peer_name(c));
    conn_close(c);
}

/* ---- responses ---- */

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
    conn_state(c, C_IDLE);
    c->dispatched = false;
    llhttp_resume(&c->a->parser);
    if (c->a->pending_len) {
        size_t n = c->a->pending_len;
        c->a->pending_len = 0;
        conn_feed(c, c->a->pending, n);
    }
    if (c->state == C_IDLE && !c->peer_eof) {
        /* Waiting for the next request: hold as little as possible. */
        active_give(c);
        c->idle_since = uv_now(&c->ls->loop);
        idle_enter(c, &c->ls->idle);
        read_on(c);
        return;
    }
    if (c->state == C_IDLE || c->state == C_HEAD || c->state == C_BODY) {
        if (c->peer_eof)
            conn_close(c);
        else
            read_on(c);
    }
}

/* The response is written (status 0) or failed: finish the request, then
 * the next one, linger or close. */
static void write_done(struct conn *c, int status)
{
    struct loop_server *ls = c->ls;
    writer_unlink(c);
    if (c->req) {
        finish_request(ls, c->req, c->a->status);
        c->req = NULL;
    }
    c->dispatched = false;
    if (c->state == C_CLOSED)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->must_close || !c->keep_alive || ls->ctx.draining) {
        conn_linger(c);
        return;
    }
    conn_next(c);
}

static void on_write(uv_write_t *w, int status)
{
    write_done(w->data, status);
}

static void done_unlink(struct loop_server *ls, struct conn *c)
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
        done_unlink(ls, c);
        write_done(c, 0);
        if (was_last)
            break;
    }
    if (!ls->done_head)
        uv_idle_stop(h);
}

/* ---- the budget of unsent answers ---- */

/* Bytes of answers whose write has not completed, over all loops. Each
 * answer holds its whole arena (head and body) until then. */
static atomic_size_t unsent_total;

static void writer_unlink(struct conn *c)
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
        writer_unlink(v);
        conn_close(v);
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
        finish_request(ls, req, status);
        ls->orphans--;
        check_drained(ls);
        return;
    }
    if (c->state == C_CLOSED) { /* closing: handles not yet released */
        finish_request(ls, req, status);
        c->req = NULL;
        return;
    }
    /* One answer per request: none is being written (a parse error is
     * answered from IDLE, HEAD or BODY, a handled request from HANDLING). */
    assert(c->dispatched && !c->a->unsent && c->state != C_WRITING && c->state != C_LINGER);
    if (server_must_close(req))
        read_off(c);  /* the rest is drained by conn_linger */
    free(c->a->body); /* an error answered mid-body: the rest is never read */
    c->a->body = NULL;
    c->a->body_len = c->a->body_cap = 0;
    c->a->status = status;
    conn_state(c, C_WRITING);
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
            timer_clear(c);
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
        finish_request(ls, req, status);
        c->req = NULL;
        conn_close(c);
        return;
    }
    /* Usually written at once; otherwise a client that does not read gets
     * the idle timeout, and the answer counts against the unsent budget
     * until written. */
    if (c->tcp.write_queue_size > 0) {
        timer_set(c, (uint64_t)g_config->idle_timeout_ms);
        writer_link(c, total);
        shed_slow_readers(ls, c);
    } else {
        timer_clear(c);
    }
}

/* ---- streamed answers (core/http.h http_stream_*) ---- */

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
        timer_clear(c);
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
        conn_close(c); /* orphans the request; the producer ends it */
        cb(req, -1, ud);
        return;
    }
    /* A client that stops reading is closed after the idle timeout. */
    timer_set(c, (uint64_t)g_config->idle_timeout_ms);
}

void server_stream_end(struct request *req, int status, bool ok)
{
    struct http_stream *st = req->stream;
    assert(st && !st->writing);
    struct conn *c = req->conn;
    static char last[] = "0\r\n\r\n";
    if (!ok && c)
        c->must_close = true; /* no last chunk: the client sees a cut answer */
    if (st->head) { /* nothing written yet (HEAD, or an empty stream) */
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

/* ---- accepting ---- */

#define REFUSAL_BODY                                                                               \
    "{\"type\":\"https://tenantd.dev/problems/unavailable\",\"title\":\"Service Unavailable\","    \
    "\"status\":503,\"detail\":\"Too many open connections.\",\"code\":\"unavailable\"}"
static char refusal[512]; /* built once by server_run */
static size_t refusal_len;

static void init_refusal(void)
{
    int n = snprintf(refusal, sizeof refusal,
                     "HTTP/1.1 503 Service Unavailable\r\n"
                     "Content-Type: application/problem+json\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "Retry-After: 1\r\n"
                     "\r\n%s",
                     sizeof REFUSAL_BODY - 1, REFUSAL_BODY);
    refusal_len = n > 0 && (size_t)n < sizeof refusal ? (size_t)n : 0;
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* Over max_connections: answer 503 at once and close, so the client sees a
 * clean refusal instead of a hang. */
static void refuse(struct loop_server *ls)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        abort();
    uv_tcp_init(&ls->loop, t);
    if (uv_accept((uv_stream_t *)&ls->listener, (uv_stream_t *)t) == 0) {
        uv_buf_t b = uv_buf_init(refusal, (unsigned)refusal_len);
        (void)uv_try_write((uv_stream_t *)t, &b, 1);
    }
    uv_close((uv_handle_t *)t, free_handle);
    uint64_t now = uv_now(&ls->loop);
    if (now - ls->last_refusal_log >= 1000 || !ls->last_refusal_log) {
        ls->last_refusal_log = now;
        log_msg(LOG_WARN, "loop %d: connection refused, %zu open (max %lld)", ls->ctx.index,
                ls->nconns, (long long)g_config->max_connections);
    }
}

/* Refuses a connection already accepted into c (not yet set up): 503 and
 * close, like refuse(). */
static void refuse_accepted(struct loop_server *ls, struct conn *c, const char *why)
{
    uv_buf_t b = uv_buf_init(refusal, (unsigned)refusal_len);
    (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    uv_close((uv_handle_t *)&c->tcp, free_handle); /* c is the handle's start */
    uint64_t now = uv_now(&ls->loop);
    if (now - ls->last_refusal_log >= 1000 || !ls->last_refusal_log) {
        ls->last_refusal_log = now;
        log_msg(LOG_WARN, "loop %d: connection from %s refused: %s", ls->ctx.index, peer_name(c),
                why);
    }
}

/*
 * A new client. When the table (TENANTD_MAX_CONNECTIONS per loop) is full,
 * the connection that has waited longest for a request is closed to make
 * room; only when none waits is the new one refused (503). Before that, a
 * peer address already holding TENANTD_MAX_CONNECTIONS_PER_IP connections
 * of this loop is refused, so that one address cannot take the table. The
 * peer is the TCP peer: behind a proxy that is the proxy (the client named
 * by X-Forwarded-For is only known once a request arrives).
 */
static void on_connection(uv_stream_t *server, int status)
{
    struct loop_server *ls = server->data;
    if (status < 0) {
        log_msg(LOG_WARN, "accept failed: %s", uv_strerror(status));
        return;
    }
    if (ls->ctx.draining)
        return;
    size_t max = (size_t)g_config->max_connections;
    assert(ls->nconns >= ls->nclosing);
    if (ls->nconns - ls->nclosing >= max && !ls->idle.head && !ls->fresh.head) {
        refuse(ls);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->ls = ls;
    uv_tcp_init(&ls->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, free_handle); /* c is the handle's start */
        return;
    }
    struct sockaddr_storage sa;
    int salen = sizeof sa;
    bool have_peer = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0;
    if (have_peer) {
        if (ipcount_key((struct sockaddr *)&sa, c->ip_key)) {
            c->have_ip = true;
            size_t cap = (size_t)g_config->max_connections_per_ip;
            if (!ipcount_add(&ls->ips, c->ip_key, cap)) {
                refuse_accepted(ls, c, "too many connections from this address");
                return;
            }
            c->ip_counted = true;
        }
    }
    if (ls->nconns - ls->nclosing >= max) {
        /* Full: the longest-waiting connection makes room. */
        struct conn *oldest = conn_of_idle(ls->idle.head ? ls->idle.head : ls->fresh.head);
        log_msg(LOG_DEBUG, "loop %d: table full, closing the idle connection from %s",
                ls->ctx.index, peer_name(oldest));
        conn_close(oldest);
    }
    c->open_handles = 1;
    c->next = ls->conns;
    if (ls->conns)
        ls->conns->prev = c;
    ls->conns = c;
    ls->nconns++;
    if (ls->ctx.metrics)
        metrics_conn_open(ls->ctx.metrics, +1);
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = C_IDLE;
    active_take(c);
    idle_enter(c, &ls->fresh);
    /* A new connection must start its request promptly. */
    timer_set(c, (uint64_t)g_config->header_timeout_ms);
    read_on(c);
}

/* ---- draining and stopping a loop ---- */

static void on_loop_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void loop_done(struct loop_ctx *ctx)
{
    struct loop_server *ls = ctx->server;
    uv_close((uv_handle_t *)&ls->stop_async, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->drain_timer, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->done_idle, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->idle_timer, on_loop_handle_closed);
    while (ls->free_actives) {
        struct active *a = ls->free_actives;
        ls->free_actives = a->next_free;
        ls->nfree_actives--;
        uv_close((uv_handle_t *)&a->timer, free_active);
    }
}

static void begin_stop(struct loop_server *ls)
{
    if (ls->stopping)
        return;
    ls->stopping = true;
    uv_timer_stop(&ls->drain_timer);
    if (ls->hooks->loop_stop)
        ls->hooks->loop_stop(&ls->ctx, loop_done);
    else
        loop_done(&ls->ctx);
}

static void check_drained(struct loop_server *ls)
{
    if (ls->ctx.draining && !ls->stopping && ls->nconns == 0 && ls->orphans == 0)
        begin_stop(ls);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct loop_server *ls = t->data;
    if (ls->nconns || ls->orphans)
        log_msg(LOG_WARN, "loop %d: drain timeout, closing %zu connections", ls->ctx.index,
                ls->nconns);
    for (struct conn *c = ls->conns; c; c = c->next)
        conn_close(c);
    begin_stop(ls);
}

static void start_drain(struct loop_server *ls)
{
    if (ls->ctx.draining)
        return;
    ls->ctx.draining = true;
    if (ls->listening) {
        uv_close((uv_handle_t *)&ls->listener, on_loop_handle_closed);
        ls->listening = false;
    }
    for (struct conn *c = ls->conns; c; c = c->next) {
        if (c->state == C_IDLE || c->state == C_LINGER)
            conn_close(c);
        else
            c->must_close = true;
    }
    uv_timer_start(&ls->drain_timer, on_drain_timeout, (uint64_t)g_config->drain_timeout_ms, 0);
    check_drained(ls);
}

static void on_stop_async(uv_async_t *a)
{
    start_drain(a->data);
}

static void loop_thread(void *arg)
{
    struct loop_server *ls = arg;
    thread_name("loop-%u", (unsigned)ls->ctx.index);
    ls->ctx.metrics = metrics_new(ls->ctx.index);
    if (ls->hooks->loop_start)
        ls->hooks->loop_start(&ls->ctx);
    uv_tcp_init(&ls->loop, &ls->listener);
    ls->listener.data = ls;
    int r = uv_tcp_open(&ls->listener, ls->fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&ls->listener, SOMAXCONN, on_connection);
    if (r == 0) {
        ls->listening = true;
    } else {
        log_msg(LOG_ERROR, "loop %d cannot listen: %s", ls->ctx.index, uv_strerror(r));
        uv_close((uv_handle_t *)&ls->listener, on_loop_handle_closed);
        start_drain(ls);
    }
    uv_run(&ls->loop, UV_RUN_DEFAULT);
    ipcount_free(&ls->ips);
    if (ls->orphans)
        log_msg(LOG_WARN, "loop %d: %zu requests never answered", ls->ctx.index, ls->orphans);
    if (uv_loop_close(&ls->loop) != 0)
        log_msg(LOG_WARN, "loop %d ended with open handles", ls->ctx.index);
    atomic_fetch_add(&ls->srv->nexited, 1);
    uv_async_send(&ls->srv->exited);
}

/* ---- the main thread ---- */

static void drain_all(struct server *srv)
{
    log_msg(LOG_INFO, "draining (up to %lld ms)", (long long)g_config->drain_timeout_ms);
    for (int i = 0; i < srv->nloops; i++)
        uv_async_send(&srv->loops[i].stop_async);
    if (srv->hooks->draining)
        srv->hooks->draining();
}

static void on_delay_over(uv_timer_t *t)
{
    drain_all(t->data);
}

/* With TENANTD_SHUTDOWN_DELAY_MS, the first signal only makes /ready fail
 * (g_shutting_down) while serving goes on, so a load balancer has time to
 * notice and stop sending before the listener closes; a second signal cuts
 * the delay short. */
static void on_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;
    if (srv->stopping) {
        if (uv_is_active((uv_handle_t *)&srv->delay_timer)) {
            log_msg(LOG_INFO, "signal %d: delay cut short", signum);
            uv_timer_stop(&srv->delay_timer);
            drain_all(srv);
            return;
        }
        log_msg(LOG_INFO, "signal %d: already shutting down", signum);
        return;
    }
    srv->stopping = true;
    g_shutting_down = true;
    if (g_config->shutdown_delay_ms > 0) {
        log_msg(LOG_INFO, "signal %d: /ready answers 503; serving %lld ms more, then draining",
                signum, (long long)g_config->shutdown_delay_ms);
        uv_timer_start(&srv->delay_timer, on_delay_over, (uint64_t)g_config->shutdown_delay_ms, 0);
        return;
    }
    log_msg(LOG_INFO, "signal %d: draining (up to %lld ms)", signum,
            (long long)g_config->drain_timeout_ms);
    for (int i = 0; i < srv->nloops; i++)
        uv_async_send(&srv->loops[i].stop_async);
    if (srv->hooks->draining)
        srv->hooks->draining();
}

static void on_loop_exited(uv_async_t *a)
{
    struct server *srv = a->data;
    if (atomic_load(&srv->nexited) < srv->nloops)
        return;
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->delay_timer, NULL);
    uv_close((uv_handle_t *)&srv->exited, NULL);
}

/* Parses "host:port" or "[v6]:port" into an address. */
static int parse_listen(const char *spec, struct sockaddr_storage *out, socklen_t *outlen)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        if (strchr(host, ':'))
            return -1; /* IPv6 needs brackets */
        port = colon + 1;
    }
    char *end;
    errno = 0;
    long pn = strtol(port, &end, 10);
    if (errno || *end || end == port || pn < 1 || pn > 65535)
        return -1;
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || !res)
        return -1;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int open_listener(const struct sockaddr_storage *sa, socklen_t len)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (sa->ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)sa, len) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void init_parser_settings(void)
{
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_url_complete = on_url_complete;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_field_complete = on_header_field_complete;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_header_value_complete = on_header_value_complete;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_chunk_header = on_chunk_header;
    parser_settings.on_chunk_extension_name = on_chunk_extension;
    parser_settings.on_chunk_extension_value = on_chunk_extension;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
}

int server_run(const struct router *router, const struct server_hooks *hooks)
{
    const struct config *cfg = g_config;
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error code, not a death */
    init_parser_settings();
    init_refusal();

    int n = (int)cfg->threads;
    if (n <= 0)
        n = (int)uv_available_parallelism();
    if (n <= 0)
        n = 1;

    struct sockaddr_storage sa;
    socklen_t salen;
    if (!cfg->listen || parse_listen(cfg->listen, &sa, &salen) != 0) {
        log_msg(LOG_ERROR, "TENANTD_LISTEN \"%s\" is not host:port or [ipv6]:port",
                cfg->listen ? cfg->listen : "");
        return -1;
    }
    /* Bind every loop's socket here, so a taken port fails the start. */
    int *fds = calloc((size_t)n, sizeof *fds);
    if (!fds)
        abort();
    for (int i = 0; i < n; i++) {
        fds[i] = open_listener(&sa, salen);
        if (fds[i] < 0) {
            log_msg(LOG_ERROR, "cannot listen on %s: %s", cfg->listen, strerror(errno));
            for (int j = 0; j < i; j++)
                close(fds[j]);
            free(fds);
            return -1;
        }
    }

    struct server srv = {.nloops = n, .hooks = hooks};
    atomic_init(&srv.nexited, 0);
    srv.loops = calloc((size_t)n, sizeof *srv.loops);
    if (!srv.loops)
        abort();
    uv_loop_init(&srv.loop);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_signal_init(&srv.loop, &srv.sigint);
    srv.sigterm.data = srv.sigint.data = &srv;
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv.sigint, on_signal, SIGINT);
    uv_timer_init(&srv.loop, &srv.delay_timer);
    srv.delay_timer.data = &srv;
    uv_async_init(&srv.loop, &srv.exited, on_loop_exited);
    srv.exited.data = &srv;

    for (int i = 0; i < n; i++) {
        struct loop_server *ls = &srv.loops[i];
        uv_loop_init(&ls->loop);
        ls->ctx.loop = &ls->loop;
        ls->ctx.index = i;
        ls->ctx.router = router;
        ls->ctx.server = ls;
        ls->hooks = hooks;
        ls->srv = &srv;
        ls->fd = fds[i];
        ls->readbuf = malloc(READ_BUF_SIZE);
        if (!ls->readbuf)
            abort();
        uv_async_init(&ls->loop, &ls->stop_async, on_stop_async);
        ls->stop_async.data = ls;
        uv_timer_init(&ls->loop, &ls->drain_timer);
        ls->drain_timer.data = ls;
        uv_idle_init(&ls->loop, &ls->done_idle);
        ls->done_idle.data = ls;
        uv_timer_init(&ls->loop, &ls->idle_timer);
        ls->idle_timer.data = ls;
    }
    for (int i = 0; i < n; i++)
        if (uv_thread_create(&srv.loops[i].thread, loop_thread, &srv.loops[i]) != 0) {
            log_msg(LOG_ERROR, "cannot start loop thread %d", i);
            abort();
        }
    log_msg(LOG_INFO, "listening on %s with %d loop%s", cfg->listen, n, n == 1 ? "" : "s");

    uv_run(&srv.loop, UV_RUN_DEFAULT);
    for (int i = 0; i < n; i++) {
        uv_thread_join(&srv.loops[i].thread);
        free(srv.loops[i].readbuf);
    }
    uv_loop_close(&srv.loop);
    free(srv.loops);
    free(fds);
    log_msg(LOG_INFO, "stopped");
    return 0;
}
