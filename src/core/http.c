/*
 * Request helpers and response serialization. The connection side (write,
 * keep-alive, logging after the write) lives in core/respond.c; the two meet
 * in core/http_internal.h.
 */
#include "core/http.h"
#include "core/trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/hex.h"
#include "core/http_internal.h"
#include "core/log.h"

const char *http_header(const struct request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

const char *http_param(const struct request *req, const char *name)
{
    for (int i = 0; i < req->nparams; i++)
        if (strcmp(req->params[i].name, name) == 0)
            return req->params[i].value;
    return NULL;
}

/* Decodes s[0..n) form-style ('+' is a space) into out (room for n + 1).
 * A bad escape, or one that would give a NUL (which would silently cut the
 * C string), is kept literally. */
static size_t form_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            out[o++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && hex_digit(s[i + 1]) >= 0 &&
                   hex_digit(s[i + 2]) >= 0 && (hex_digit(s[i + 1]) | hex_digit(s[i + 2])) != 0) {
            out[o++] = (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return o;
}

const char *http_query(const struct request *req, const char *name)
{
    if (!req->query)
        return NULL;
    size_t name_len = strlen(name);
    const char *p = req->query;
    while (*p) {
        const char *end = strchr(p, '&');
        if (!end)
            end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *key_end = eq ? eq : end;
        size_t key_len = (size_t)(key_end - p);
        /* Names are compared decoded; they are short, so decode into a
         * scratch copy only when they could match. */
        if (key_len >= name_len && key_len <= 3 * name_len) {
            char *key = arena_alloc(req->arena, key_len + 1);
            size_t kl = form_decode(p, key_len, key);
            if (kl == name_len && memcmp(key, name, name_len) == 0) {
                const char *v = eq ? eq + 1 : end;
                size_t vlen = (size_t)(end - v);
                char *out = arena_alloc(req->arena, vlen + 1);
                form_decode(v, vlen, out);
                return out;
            }
        }
        if (!*end)
            break;
        p = end + 1;
    }
    return NULL;
}

/* A header name must be an RFC 9110 token; values must not contain CR, LF
 * or NUL (response splitting). */
static bool token_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool valid_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!token_char((unsigned char)*s))
            return false;
    return true;
}

static bool valid_value(const char *s)
{
    return s[strcspn(s, "\r\n")] == '\0';
}

void http_set_header(struct request *req, const char *name, const char *value)
{
    if (!name || !value || !valid_name(name) || !valid_value(value)) {
        /* A handler bug, never client input: drop it rather than split the
         * response. */
        log_msg(LOG_ERROR, "dropping invalid response header %s",
                name && valid_name(name) ? name : "?");
        return;
    }
    struct http_out_header *h = arena_alloc(req->arena, sizeof *h);
    h->name = arena_strdup(req->arena, name);
    h->value = arena_strdup(req->arena, value);
    h->next = NULL;
    struct http_out_header **tail = &req->out_headers;
    while (*tail)
        tail = &(*tail)->next;
    *tail = h;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* The IMF-fixdate of now, recomputed at most once a second per thread. */
static const char *date_now(void)
{
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[40];
    time_t now = time(NULL);
    if (now != cached_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(cached, sizeof cached, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached_sec = now;
    }
    return cached;
}

struct out {
    char *p;
    size_t n;
};

static void put(struct out *o, const char *s, size_t n)
{
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Decimal digits of v, without printf (this runs for every response). */
static void put_uint(struct out *o, size_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof tmp - i);
}

static void put_header(struct out *o, const char *name, const char *value)
{
    puts_(o, name);
    put(o, ": ", 2);
    puts_(o, value);
    put(o, "\r\n", 2);
}

/* Bodies up to this size are copied behind the head and go out in one
 * buffer; larger ones are written from where they lie (see respond). */
#define COPY_BODY_MAX 16384

/*
 * Serializes the head and hands head and body to the server. `owned`: the
 * body stays valid until the request's arena is freed, so a large one is
 * written in place; otherwise it is copied (into the head's buffer when
 * small, alone when large, so never twice).
 */
static void respond_head(struct request *req, int status, const char *content_type,
                         const char *body, size_t len, bool owned, int stream);

static void respond(struct request *req, int status, const char *content_type, const char *body,
                    size_t len, bool owned)
{
    respond_head(req, status, content_type, body, len, owned, 0);
}

void http_stream_begin(struct request *req, int status, const char *content_type)
{
    bool chunked = server_stream_prepare(req);
    respond_head(req, status, content_type, NULL, 0, false, chunked ? 1 : 2);
}

void http_stream_end(struct request *req, bool ok)
{
    if (req->responded || !req->stream) {
        log_msg(LOG_ERROR, "http_stream_end without a stream for request %s",
                req->request_id ? req->request_id : "?");
        abort();
    }
    req->responded = true;
    server_stream_end(req, req->stream_status, ok);
}

/* stream: 0 a whole answer; 1 the head of a chunked stream; 2 the head of a
 * stream delimited by the close (HTTP/1.0). */
static void respond_head(struct request *req, int status, const char *content_type,
                         const char *body, size_t len, bool owned, int stream)
{
    if (req->responded || req->stream) {
        log_msg(LOG_ERROR, "http_respond called twice for request %s",
                req->request_id ? req->request_id : "?");
        abort();
    }
    if (!stream)
        req->responded = true; /* a stream is answered by http_stream_end */
    if (status < 200 || status > 999)
        status = 500; /* 1xx are sent by the server itself, never as a final answer */
    /* RFC 9110: no content for 204 and 304, and no Content-Length for 204. */
    bool no_content = status == 204 || status == 304;
    if (no_content || !body)
        len = 0;
    if (content_type && !valid_value(content_type))
        content_type = NULL;
    bool close = server_must_close(req);
    bool ka10 = !close && server_http10_keep_alive(req);
    const char *reason = http_status_text(status);
    const char *rid = req->request_id;

    size_t reason_len = strlen(reason);
    size_t ct_len = content_type ? strlen(content_type) : 0;
    size_t rid_len = rid ? strlen(rid) : 0;
    const struct trace *tr = trace_of(req);
    size_t cap = 64 + reason_len + 40 /* Date */ + 32 /* Content-Length */ +
                 (content_type ? 16 + ct_len : 0) + (rid ? 16 + rid_len : 0) +
                 32 /* Connection */ + 20 + TRACEPARENT_LEN /* traceresponse */ + 2;
    for (const struct http_out_header *h = req->out_headers; h; h = h->next)
        cap += strlen(h->name) + strlen(h->value) + 4;
    bool send_body = !req->head && len > 0;
    bool inline_body = send_body && len <= COPY_BODY_MAX;
    if (inline_body)
        cap += len;

    struct out o = {arena_alloc(req->arena, cap), 0};
    put(&o, "HTTP/1.1 ", 9);
    put_uint(&o, (size_t)status);
    put(&o, " ", 1);
    put(&o, reason, reason_len);
    put(&o, "\r\nDate: ", 8);
    puts_(&o, date_now());
    if (content_type && !no_content) {
        put(&o, "\r\nContent-Type: ", 16);
        put(&o, content_type, ct_len);
    }
    if (stream == 1) {
        put(&o, "\r\nTransfer-Encoding: chunked", 28);
    } else if (!no_content && !stream) {
        put(&o, "\r\nContent-Length: ", 18);
        put_uint(&o, len);
    }
    if (rid) {
        put(&o, "\r\nX-Request-Id: ", 16);
        put(&o, rid, rid_len);
    }
    put(&o, "\r\ntraceresponse: ", 17);
    put(&o, tr->traceparent, TRACEPARENT_LEN);
    put(&o, "\r\n", 2);
    if (close)
        put_header(&o, "Connection", "close");
    else if (ka10)
        put_header(&o, "Connection", "keep-alive");
    for (const struct http_out_header *h = req->out_headers; h; h = h->next)
        put_header(&o, h->name, h->value);
    put(&o, "\r\n", 2);
    if (stream) {
        req->stream_status = status;
        server_stream_head(req, o.p, o.n, stream == 1);
        return;
    }
    if (inline_body) {
        put(&o, body, len);
        server_send(req, status, o.p, o.n, NULL, 0);
        return;
    }
    if (!send_body) {
        server_send(req, status, o.p, o.n, NULL, 0);
        return;
    }
    char *b = (char *)body;
    if (!owned) {
        b = arena_alloc(req->arena, len);
        memcpy(b, body, len);
    }
    server_send(req, status, o.p, o.n, b, len);
}

void http_respond(struct request *req, int status, const char *content_type, const char *body,
                  size_t len)
{
    respond(req, status, content_type, body, len, false);
}

void http_respond_arena(struct request *req, int status, const char *content_type, char *body,
                        size_t len)
{
    respond(req, status, content_type, body, len, true);
}

void http_respond_json(struct request *req, int status, json_t *json)
{
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    if (!text) {
        static const char fallback[] =
            "{\"type\":\"https://tenantd.dev/problems/internal\",\"title\":\"Internal Server "
            "Error\",\"status\":500,\"detail\":\"The response could not be encoded.\","
            "\"code\":\"internal\"}";
        log_msg(LOG_ERROR, "json_dumps failed for a %d response", status);
        http_respond(req, 500, "application/problem+json", fallback, sizeof fallback - 1);
        return;
    }
    /* jansson's buffer is handed over, not copied: it is freed with the
     * arena once written. */
    arena_cleanup(req->arena, free, text);
    http_respond_arena(req, status, "application/json", text, strlen(text));
}

void http_respond_empty(struct request *req, int status)
{
    http_respond(req, status, NULL, NULL, 0);
}
