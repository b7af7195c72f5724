#include "core/cors.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/list.h"
#include "core/problem.h"

#define ALLOW_METHODS "GET, HEAD, POST, PUT, PATCH, DELETE"
#define ALLOW_HEADERS                                                                              \
    "Authorization, Content-Type, Idempotency-Key, If-Match, If-None-Match, X-Org-Name, "          \
    "X-Request-Id, traceparent, tracestate"
/* What a frontend needs to read besides the CORS-safelisted headers. */
#define EXPOSE_HEADERS                                                                             \
    "X-Request-Id, ETag, Location, Retry-After, RateLimit-Limit, RateLimit-Remaining, "            \
    "RateLimit-Reset, Idempotent-Replayed, traceresponse"
#define MAX_AGE_S "600"
#define MAX_REQUEST_HEADERS_LEN 1024

/* scheme "://" host [":" port], nothing else (RFC 6454's serialisation). */
static bool origin_ok(const char *s, size_t n)
{
    const char *sep = NULL;
    for (size_t i = 0; i + 3 <= n && !sep; i++)
        if (memcmp(s + i, "://", 3) == 0)
            sep = s + i;
    if (!sep || sep == s)
        return false;
    for (const char *c = s; c < sep; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (c > s && ((*c >= '0' && *c <= '9') || *c == '+' || *c == '-' || *c == '.'))))
            return false;
    const char *c = sep + 3, *end = s + n;
    if (c < end && *c == '[') { /* an IPv6 address */
        const char *start = ++c;
        while (c < end && (isxdigit((unsigned char)*c) || *c == ':' || *c == '.'))
            c++;
        if (c == start || c == end || *c != ']')
            return false;
        c++;
    } else {
        const char *start = c;
        while (c < end && (isalnum((unsigned char)*c) || *c == '.' || *c == '-'))
            c++;
        if (c == start)
            return false;
    }
    if (c == end)
        return true;
    if (*c != ':' || ++c == end)
        return false;
    for (; c < end; c++)
        if (!isdigit((unsigned char)*c))
            return false;
    return true;
}

struct bad_ud {
    char *bad;
    size_t badlen;
    int entries;
};

static bool entry_bad(const char *s, size_t n, void *ud)
{
    struct bad_ud *b = ud;
    b->entries++;
    if ((n == 1 && *s == '*') || origin_ok(s, n))
        return false;
    snprintf(b->bad, b->badlen, "%.*s", (int)(n > 200 ? 200 : n), s);
    return true;
}

bool cors_origins_valid(const char *list, char *bad, size_t badlen)
{
    struct bad_ud b = {bad, badlen, 0};
    if (list_each(list, entry_bad, &b))
        return false;
    if (b.entries == 0) {
        snprintf(bad, badlen, "%s", list);
        return false;
    }
    return true;
}

struct match_ud {
    const char *origin;
    bool any;
};

static bool entry_matches(const char *s, size_t n, void *ud)
{
    struct match_ud *m = ud;
    if (n == 1 && *s == '*') {
        m->any = true;
        return true;
    }
    /* Browsers send origins lower-case; a configured capital is forgiven. */
    return strlen(m->origin) == n && strncasecmp(m->origin, s, n) == 0;
}

/* A list of header names (tokens) separated by commas and spaces. */
static bool header_list_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_REQUEST_HEADERS_LEN)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~, \t", *s)))
            return false;
    return true;
}

static bool method_allowed(const char *m)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (strcmp(m, methods[i]) == 0) /* methods are case-sensitive */
            return true;
    return false;
}

bool cors_handle(struct request *req)
{
    const char *list = g_config->cors_origins;
    if (!list)
        return false;
    const char *origin = http_header(req, "Origin");
    const char *want = strcmp(req->method_str, "OPTIONS") == 0
                           ? http_header(req, "Access-Control-Request-Method")
                           : NULL;
    if (!origin)
        return false;
    struct match_ud m = {origin, false};
    bool allowed = list_each(list, entry_matches, &m);
    if (want) {
        if (!allowed) {
            problem_respond(req, PROBLEM_FORBIDDEN,
                            "This origin may not call the API (TENANTD_CORS_ORIGINS).");
            return true;
        }
        if (!method_allowed(want)) {
            problem_respond(req, PROBLEM_FORBIDDEN,
                            "The method asked for is not allowed across origins.");
            return true;
        }
    }
    if (!allowed)
        return false; /* answered as usual; the browser keeps it from the page */
    http_set_header(req, "Access-Control-Allow-Origin", m.any ? "*" : origin);
    if (!m.any)
        http_set_header(req, "Vary", "Origin");
    if (!want) {
        http_set_header(req, "Access-Control-Expose-Headers", EXPOSE_HEADERS);
        return false;
    }
    /* Preflight. Any request header the page asks for may come: the server
     * ignores what it does not know, and credentials are never cookies. */
    const char *headers = http_header(req, "Access-Control-Request-Headers");
    http_set_header(req, "Access-Control-Allow-Methods", ALLOW_METHODS);
    http_set_header(req, "Access-Control-Allow-Headers",
                    headers && header_list_ok(headers) ? headers : ALLOW_HEADERS);
    http_set_header(req, "Access-Control-Max-Age", MAX_AGE_S);
    http_respond_empty(req, 204);
    return true;
}
