/* Internal to the HTTP server (core/server.c, http1.c, http1_parse.c,
 * respond.c): a connection, a loop and the calls between those files. */
#ifndef TENANTD_CORE_SERVER_INTERNAL_H
#define TENANTD_CORE_SERVER_INTERNAL_H

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

extern llhttp_settings_t srv_parser_settings;

/* ---- http1_parse.c: a request's head and body through llhttp, request ids ---- */

const char *srv_new_request_id(struct arena *a);
bool srv_sane_request_id(const char *s);
int srv_reject(struct conn *c, enum problem p, const char *detail);
bool srv_scan_head(struct conn *c, const unsigned char *p, size_t n);
void srv_init_parser_settings(void);

/* ---- http1.c: a connection's life: states, reading, dispatch, closing ---- */

void srv_conn_state(struct conn *c, enum conn_state next);
struct conn *srv_conn_of_idle(struct qnode *n);
void srv_idle_enter(struct conn *c, struct queue *q);
const char *srv_peer_name(const struct conn *c);
void srv_free_active(uv_handle_t *h);
void srv_active_take(struct conn *c);
void srv_active_give(struct conn *c);
void srv_timer_set(struct conn *c, uint64_t ms);
void srv_body_timer(struct conn *c);
void srv_timer_clear(struct conn *c);
void srv_read_off(struct conn *c);
void *srv_xrealloc(void *p, size_t n);
void srv_buf_append(char **buf, size_t *len, size_t *cap, const char *data, size_t n);
void srv_new_request(struct conn *c);
void srv_finish_request(struct loop_server *ls, struct request *req, int status);
void srv_drop_request(struct conn *c);
void srv_conn_feed(struct conn *c, const char *data, size_t len);
void srv_read_on(struct conn *c);
void srv_conn_close(struct conn *c);
void srv_conn_linger(struct conn *c);

/* ---- respond.c: answers, their writing and the budget of unsent bytes ---- */

void srv_write_done(struct conn *c, int status);
void srv_done_unlink(struct loop_server *ls, struct conn *c);
void srv_writer_unlink(struct conn *c);

/* ---- server.c: loops, accepting, draining ---- */

void srv_refuse(struct loop_server *ls);
void srv_check_drained(struct loop_server *ls);

#endif
