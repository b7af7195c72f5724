#ifndef TENANTD_CORE_HTTP_H
#define TENANTD_CORE_HTTP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>

#include "core/arena.h"

struct route;
struct router;
struct trace;
struct metrics;

/*
 * One event loop and what hangs off it. TENANTD_THREADS of them run, each on
 * its own thread, sharing nothing. `db` is owned by db/ (core never looks
 * inside); `metrics` by core/metrics.
 */
struct db_pool;  /* opaque here: core uses neither the database */
struct auth_ctx; /* nor the authentication of a request */

struct loop_ctx {
    uv_loop_t *loop;
    int index;               /* 0 .. threads-1 */
    struct db_pool *db;      /* set by the loop_start hook (db/db.h) */
    struct metrics *metrics; /* this loop's counters */
    const struct router *router;
    bool draining; /* shutdown started: no new work */
    void *server;  /* private to the server (core/server_internal.h) */
};

struct http_header {
    const char *name;  /* as sent, NUL-terminated */
    const char *value; /* trimmed of surrounding spaces/tabs, NUL-terminated */
};

struct path_param {
    const char *name;
    const char *value; /* percent-decoded, NUL-terminated */
};

#define HTTP_MAX_PARAMS 8

/*
 * A parsed request. All memory hangs off `arena`, freed when the response has
 * been written (or the connection died). A handler must eventually call
 * exactly one of http_respond*() / problem_respond*(), synchronously or from
 * a later callback; the request stays valid until then even if the client
 * has gone away (the answer is then dropped).
 */
struct request {
    struct arena *arena;
    struct loop_ctx *ctx;
    int method;             /* llhttp's enum llhttp_method (HTTP_GET, ...) */
    const char *method_str; /* "GET", ... */
    const char *target;     /* raw request target */
    const char *path;       /* target up to '?', not decoded */
    const char *query;      /* after '?', or NULL */
    struct http_header *headers;
    size_t nheaders;
    char *body; /* NUL-terminated (the NUL is not counted) */
    size_t body_len;
    const char *request_id; /* the client's sane X-Request-Id, or a new one */
    const char *client_ip;  /* the client, per TENANTD_TRUSTED_PROXIES (core/proxy.h) */
    const char *peer_ip;    /* the TCP peer, whatever X-Forwarded-For says */
    const struct trace *trace; /* W3C trace context: core/trace.h trace_of() */

    /* Filled by the router. */
    const struct route *route;
    const char *route_pattern; /* for logs and metrics; "unmatched" when none */
    struct path_param params[HTTP_MAX_PARAMS];
    int nparams;

    /* Filled by the module that authenticated the request (auth/auth.h). */
    struct auth_ctx *auth;
    const char *org_id; /* for the access log, when known */

    uint64_t start_ns; /* uv_hrtime() when the headers were complete */
    bool head;         /* HEAD: answer like GET without the body */

    /* Response headers added with http_set_header; private otherwise. */
    struct http_out_header {
        const char *name, *value;
        struct http_out_header *next;
    } * out_headers;
    void *conn;                 /* private to the server (core/server_internal.h) */
    struct http_stream *stream; /* a streamed answer in progress (http_stream_begin) */
    int stream_status;
    bool responded;
};

/* Case-insensitive header lookup; NULL when absent. */
const char *http_header(const struct request *req, const char *name);
/* A path parameter by name; NULL when absent. */
const char *http_param(const struct request *req, const char *name);
/* A query parameter, percent-decoded ('+' is a space), in the arena; NULL when absent. */
const char *http_query(const struct request *req, const char *name);

/* Adds a response header (both strings copied into the arena). */
void http_set_header(struct request *req, const char *name, const char *value);

/*
 * Sends the response. Copies body (once); adds Content-Length, Content-Type (when
 * non-NULL), Date, X-Request-Id and Connection as needed, logs the access
 * line and counts metrics. For HEAD the body is left out but its length kept.
 * Calling it twice is a bug (aborts).
 */
void http_respond(struct request *req, int status, const char *content_type, const char *body,
                  size_t len);
/*
 * http_respond without the copy: body must stay valid until req->arena is
 * freed (it lies in the arena, or an arena_cleanup frees it), and a large
 * one is written from there. For large answers (lists), so that they are
 * never held twice.
 */
void http_respond_arena(struct request *req, int status, const char *content_type, char *body,
                        size_t len);
/* Serializes json (compact) as application/json and responds; steals the
 * reference to json. */
void http_respond_json(struct request *req, int status, json_t *json);
/* Responds with no body (204, 304, ...). */
void http_respond_empty(struct request *req, int status);

/*
 * Streamed answers, for bodies too large to hold (an org export): the head
 * goes out with Transfer-Encoding: chunked (HTTP/1.0: no length, and the
 * connection closes after the body), then one chunk at a time.
 *
 * http_stream_begin takes status, content type and the headers set so far.
 * http_stream_write writes data[0..len) (len > 0; it must stay valid until
 * cb runs) as one chunk; cb(req, status, ud) runs once, later, after it is
 * written (status 0) or when the client is gone (status < 0: stop
 * producing). One write at a time; the next only after cb. A client that
 * reads nothing for TENANTD_IDLE_TIMEOUT_MS is closed.
 * http_stream_end finishes the answer exactly once, after begin and with no
 * write pending: ok true sends the last chunk, ok false cuts the answer
 * (the connection closes without it, so the client can tell an incomplete
 * body from a complete one). The request is logged and freed after it.
 */
struct http_stream;
typedef void (*http_stream_cb)(struct request *req, int status, void *ud);
void http_stream_begin(struct request *req, int status, const char *content_type);
void http_stream_write(struct request *req, const char *data, size_t len, http_stream_cb cb,
                       void *ud);
void http_stream_end(struct request *req, bool ok);

/* The standard reason phrase for a status ("OK", "Not Found", ...). */
const char *http_status_text(int status);

/*
 * The server. `hooks` let main wire in what core must not know about:
 * loop_start runs on each loop's thread before it accepts (opens the DB
 * pool), loop_stop when the loop drains (closes it; must call done(ctx)
 * once everything it owns is closed), and dispatch runs for every matched
 * route (auth check, then the handler).
 */
struct server_hooks {
    void (*loop_start)(struct loop_ctx *ctx);
    void (*loop_stop)(struct loop_ctx *ctx, void (*done)(struct loop_ctx *ctx));
    void (*dispatch)(struct request *req);
    /* On the main thread, once, when a signal starts the drain: background
     * work starts stopping too, so the two drains overlap. May be NULL. */
    void (*draining)(void);
};

/*
 * Binds cfg->listen on `threads` loops (SO_REUSEPORT) and serves until
 * SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish for
 * up to drain_timeout_ms, and returns 0. Returns -1 with a logged message if
 * the address cannot be bound.
 */
int server_run(const struct router *router, const struct server_hooks *hooks);

/* How many event loops server_run starts (TENANTD_THREADS, 0: one per core). */
int server_loop_count(void);

#endif
