#include "core/trace.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TRACESTATE_MAX 512

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return false;
    return true;
}

bool trace_parse(const char *v, char trace_id[TRACE_ID_HEX + 1],
                 char parent_id[TRACE_SPAN_HEX + 1], unsigned *flags)
{
    if (!v)
        return false;
    size_t n = strlen(v);
    /* version "-" trace-id "-" parent-id "-" flags; a later version may add
     * fields after another "-", version 00 may not. */
    if (n < TRACEPARENT_LEN || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return false;
    if (!lower_hex(v, 2) || !lower_hex(v + 3, TRACE_ID_HEX) ||
        !lower_hex(v + 36, TRACE_SPAN_HEX) || !lower_hex(v + 53, 2))
        return false;
    if (memcmp(v, "ff", 2) == 0)
        return false;
    if (memcmp(v, "00", 2) == 0 ? n != TRACEPARENT_LEN : (n > TRACEPARENT_LEN && v[55] != '-'))
        return false;
    if (all_zero(v + 3, TRACE_ID_HEX) || all_zero(v + 36, TRACE_SPAN_HEX))
        return false;
    memcpy(trace_id, v + 3, TRACE_ID_HEX);
    trace_id[TRACE_ID_HEX] = '\0';
    memcpy(parent_id, v + 36, TRACE_SPAN_HEX);
    parent_id[TRACE_SPAN_HEX] = '\0';
    *flags = (unsigned)strtoul((char[]){v[53], v[54], '\0'}, NULL, 16);
    return true;
}

/* Random bytes from a per-thread block, refilled from OpenSSL's CSPRNG
 * (ids for every request: one RAND_bytes call per 32 requests). */
static void random_bytes(unsigned char *out, size_t n)
{
    static _Thread_local unsigned char pool[768];
    static _Thread_local size_t left;
    while (n > 0) {
        if (left == 0) {
            if (RAND_bytes(pool, sizeof pool) != 1)
                abort(); /* no CSPRNG: nothing sensible to go on with */
            left = sizeof pool;
        }
        size_t take = n < left ? n : left;
        memcpy(out, pool + sizeof pool - left, take);
        left -= take;
        out += take;
        n -= take;
    }
}

static void random_hex(char *out, size_t hexlen)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[TRACE_ID_HEX / 2];
    do {
        random_bytes(b, hexlen / 2);
        for (size_t i = 0; i < hexlen / 2; i++) {
            out[2 * i] = hex[b[i] >> 4];
            out[2 * i + 1] = hex[b[i] & 15];
        }
    } while (all_zero(out, hexlen)); /* all zeros is invalid */
    out[hexlen] = '\0';
}

void trace_child(const char *trace_id, unsigned flags, char out[TRACEPARENT_LEN + 1])
{
    char span[TRACE_SPAN_HEX + 1];
    random_hex(span, TRACE_SPAN_HEX);
    snprintf(out, TRACEPARENT_LEN + 1, "00-%s-%s-%02x", trace_id, span, flags & 0xffu);
}

/* The value of header name when it appears exactly once; else NULL. */
static const char *single_header(const struct request *req, const char *name)
{
    const char *v = NULL;
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0) {
            if (v)
                return NULL;
            v = req->headers[i].value;
        }
    return v;
}

static bool tracestate_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TRACESTATE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

const struct trace *trace_of(struct request *req)
{
    if (req->trace)
        return req->trace;
    struct trace *t = arena_calloc(req->arena, sizeof *t);
    const char *tp = single_header(req, "traceparent");
    if (trace_parse(tp, t->trace_id, t->parent_id, &t->flags)) {
        /* Only the sampled bit is defined in version 00; others go as 0. */
        t->flags &= 1u;
        const char *ts = single_header(req, "tracestate");
        if (ts && tracestate_ok(ts))
            t->tracestate = ts;
    } else {
        random_hex(t->trace_id, TRACE_ID_HEX);
        t->parent_id[0] = '\0';
        t->flags = 0;
    }
    random_hex(t->span_id, TRACE_SPAN_HEX);
    snprintf(t->traceparent, sizeof t->traceparent, "00-%s-%s-%02x", t->trace_id, t->span_id,
             t->flags);
    req->trace = t;
    return t;
}
