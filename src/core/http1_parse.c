/*
 * A request's head and body through llhttp: the callbacks collect and
 * validate, never dispatch (http1.c dispatches once the message is
 * complete). They also make the checks llhttp 8.1 does not (obs-fold,
 * space before the colon, duplicate Content-Length/Transfer-Encoding/Host;
 * see ARCHITECTURE's pitfalls), and give each request its id.
 */
#include "core/server_internal.h"

#include <openssl/crypto.h>

/* Request ids must be unique, not secret. Each thread draws a random
 * 64-bit prefix and a random start once (RAND_bytes), then counts: the
 * prefix separates threads (and runs), the counter requests, and only the
 * counter's 16 hex digits are formatted per request. */
static _Thread_local char rid_prefix[20]; /* "xxxxxxxx-xxxx-4xxx-" */
static _Thread_local uint64_t rid_next;
static _Thread_local bool rid_seeded;
static const char hex_digits[] = "0123456789abcdef";

llhttp_settings_t srv_parser_settings;

static int on_message_complete(llhttp_t *p);

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
const char *srv_new_request_id(struct arena *a)
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
bool srv_sane_request_id(const char *s)
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

int srv_reject(struct conn *c, enum problem p, const char *detail)
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
        return srv_reject(c, PROBLEM_HEADERS_TOO_LARGE, "The request's header block is too large.");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    srv_drop_request(c); /* none should remain; keeps the invariant cheap */
    srv_new_request(c);
    srv_conn_state(c, C_HEAD);
    srv_timer_set(c, (uint64_t)g_config->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (!c->a->url_started) {
        c->a->url_started = true;
        /* llhttp 8.1 accepts several spaces after the method. */
        if (byte_before(c, at, 2) == ' ')
            return srv_reject(c, PROBLEM_BAD_REQUEST, "The request line is malformed.");
    }
    if (check_head_size(c, at + len))
        return HPE_USER;
    srv_buf_append(&c->a->span, &c->a->span_len, &c->a->span_cap, at, len);
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->req->target = arena_strndup(c->req->arena, c->a->span ? c->a->span : "", c->a->span_len);
    c->a->span_len = 0;
    return 0;
}

/* A piece of a header name or value: kept in span, or, in trailers,
 * counted against the header limit and dropped. */
static int header_piece(struct conn *c, const char *at, size_t len)
{
    if (c->state == C_BODY) { /* trailer: checked and counted, not kept */
        c->a->trailer_bytes += len;
        if (c->a->trailer_bytes > (size_t)g_config->max_header_bytes)
            return srv_reject(c, PROBLEM_HEADERS_TOO_LARGE,
                              "The request's trailers are too large.");
        return 0;
    }
    if (check_head_size(c, at + len))
        return HPE_USER;
    srv_buf_append(&c->a->span, &c->a->span_len, &c->a->span_cap, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* llhttp 8.1 keeps a space before the colon in the name; RFC 9112
     * says to srv_reject it (a proxy might read the line differently). */
    for (size_t i = 0; i < len; i++)
        if (at[i] == ' ' || at[i] == '\t')
            return srv_reject(c, PROBLEM_BAD_REQUEST, "A header name contains whitespace.");
    return header_piece(c, at, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->state == C_BODY)
        return 0;
    if (c->a->span_len == 0)
        return srv_reject(c, PROBLEM_BAD_REQUEST, "A header name is empty.");
    c->a->field = arena_strndup(c->req->arena, c->a->span, c->a->span_len);
    c->a->field_len = c->a->span_len;
    c->a->span_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    /* llhttp 8.1 joins an obs-fold continuation line (CRLF then SP/HT) to the
     * value; such a piece starts right after a LF. RFC 9112 5.2: srv_reject. */
    if (len > 0 && byte_before(c, at, 1) == '\n')
        return srv_reject(c, PROBLEM_BAD_REQUEST,
                          "Folded header lines (obs-fold) are not accepted.");
    for (size_t i = 0; i < len; i++)
        if (at[i] == '\r' || at[i] == '\n' || at[i] == '\0')
            return srv_reject(c, PROBLEM_BAD_REQUEST, "A header value contains CR, LF or NUL.");
    return header_piece(c, at, len);
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

/* Whether the request's Authorization is "Bearer <TENANTD_OPERATOR_TOKEN>",
 * compared in constant time. Only a hint for the body limit: the route's
 * own authentication still decides who may call it. */
static bool operator_bearer(const struct request *req)
{
    const char *op = g_config->operator_token, *h = http_header(req, "Authorization");
    if (!op || !*op || !h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    for (h += 7; *h == ' '; h++)
        ;
    size_t n = strlen(h), m = strlen(op);
    while (n && h[n - 1] == ' ')
        n--;
    return n == m && CRYPTO_memcmp(h, op, m) == 0;
}

/* The body limit for req: TENANTD_MAX_BATCH_BODY_BYTES on the bulk routes
 * (batch record create, user import, org import), whose bodies carry up to
 * 1000 items or a whole org, else TENANTD_MAX_BODY_BYTES. Decided from the
 * path before routing, since the body is refused while it arrives. The org
 * import is the operator's: anyone else gets the normal limit, so that no
 * stranger makes the server hold many MiB before its 401. */
static size_t body_limit(const struct request *req)
{
    size_t normal = (size_t)g_config->max_body_bytes;
    if (req->method != HTTP_POST)
        return normal;
    const char *p = req->path;
    size_t n = strlen(p), sfx = sizeof "/records/batch" - 1;
    bool bulk = strcmp(p, "/v1/users/import") == 0 ||
                (strcmp(p, "/v1/admin/orgs/import") == 0 && operator_bearer(req)) ||
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
    req->request_id = rid && srv_sane_request_id(rid) ? rid : srv_new_request_id(req->arena);

    /* llhttp accepts 0.9 and 2.0 in the version; only 1.x is HTTP/1. */
    if (p->http_major != 1 || p->http_minor > 1) {
        srv_reject(c, PROBLEM_BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 are supported.");
        return -1;
    }
    /* Smuggling guards on top of llhttp's own (it already refuses CL with TE,
     * differing duplicate CLs and "chunked" not last). */
    if (c->a->cl_count > 1) {
        srv_reject(c, PROBLEM_BAD_REQUEST, "Content-Length appears more than once.");
        return -1;
    }
    if (c->a->te_count) {
        if (c->a->te_count > 1 || strcasecmp(c->a->te_value, "chunked") != 0 ||
            p->http_minor == 0) {
            srv_reject(c, PROBLEM_BAD_REQUEST,
                       "Transfer-Encoding must be exactly \"chunked\" (HTTP/1.1 only).");
            return -1;
        }
        if (c->a->cl_count) {
            srv_reject(c, PROBLEM_BAD_REQUEST,
                       "Content-Length and Transfer-Encoding both present.");
            return -1;
        }
    }
    if (c->a->host_count > 1) {
        srv_reject(c, PROBLEM_BAD_REQUEST, "Host appears more than once.");
        return -1;
    }
    if (!split_target(req)) {
        srv_reject(c, PROBLEM_BAD_REQUEST, "The request target is not valid.");
        return -1;
    }
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
    c->a->body_max = body_limit(req);
    if (has_cl && p->content_length > (uint64_t)c->a->body_max) {
        srv_reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
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
        c->a->body = srv_xrealloc(c->a->body, first);
        c->a->body_cap = first;
        c->a->body_len = 0;
        srv_conn_state(c, C_BODY);
        c->a->body_deadline = uv_now(&c->ls->loop) + (uint64_t)g_config->body_timeout_ms;
        srv_body_timer(c);
    } else {
        srv_conn_state(c, C_BODY); /* on_message_complete follows at once */
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
        return srv_reject(c, PROBLEM_HEADERS_TOO_LARGE,
                          "The request's chunk extensions are too large.");
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    struct conn *c = p->data;
    /* p->content_length is the announced chunk size: refuse early. */
    if (p->content_length > (uint64_t)(c->a->body_max - c->a->body_len))
        return srv_reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (c->a->body_len + len > c->a->body_max)
        return srv_reject(c, PROBLEM_PAYLOAD_TOO_LARGE, "The request body is too large.");
    srv_buf_append(&c->a->body, &c->a->body_len, &c->a->body_cap, at, len);
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
        c->a->body[c->a->body_len] = '\0'; /* srv_buf_append keeps room for it */
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
    srv_conn_state(c, C_HANDLING);
    srv_timer_clear(c);
    return HPE_PAUSED; /* one request at a time; the rest waits in c->a->pending */
}

/*
 * llhttp 8.1 folds an obs-fold continuation line (CRLF then SP/HT) into the
 * value, and after an empty value skips it as whitespace, so no callback can
 * see it. RFC 9112 5.2 lets a server reject it, and we must: a proxy in
 * front may read the line differently. Strict llhttp insists on CRLF, so the
 * head ends at the first CRLFCRLF; any LF followed by SP/HT before it is a
 * fold. Returns false when one is found.
 */
bool srv_scan_head(struct conn *c, const unsigned char *p, size_t n)
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

void srv_init_parser_settings(void)
{
    llhttp_settings_init(&srv_parser_settings);
    srv_parser_settings.on_message_begin = on_message_begin;
    srv_parser_settings.on_url = on_url;
    srv_parser_settings.on_url_complete = on_url_complete;
    srv_parser_settings.on_header_field = on_header_field;
    srv_parser_settings.on_header_field_complete = on_header_field_complete;
    srv_parser_settings.on_header_value = on_header_value;
    srv_parser_settings.on_header_value_complete = on_header_value_complete;
    srv_parser_settings.on_headers_complete = on_headers_complete;
    srv_parser_settings.on_chunk_header = on_chunk_header;
    srv_parser_settings.on_chunk_extension_name = on_chunk_extension;
    srv_parser_settings.on_chunk_extension_value = on_chunk_extension;
    srv_parser_settings.on_body = on_body;
    srv_parser_settings.on_message_complete = on_message_complete;
}
