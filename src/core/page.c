#include "core/page.h"

#include <stdio.h>
#include <string.h>

#include "core/b64url.h"
#include "core/log.h"
#include "core/problem.h"

#define SEQ_MAX "9223372036854775807" /* a bigint's greatest value */
#define SEQ_MAX_DIGITS (sizeof SEQ_MAX - 1)

/* The TIME_ID key: 'd' a digit, 'x' a lower-case hex digit, else itself. */
static const char time_id_shape[] =
    "dddd-dd-ddTdd:dd:dd.ddddddZ|xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
#define TIME_LEN 27
#define TIME_ID_LEN (sizeof time_id_shape - 1)
#define KEY_MAX TIME_ID_LEN

static const char *const cursor_error = "is not a cursor this server handed out";

int page_limit_parse(const char *s, int def, int max)
{
    if (!s)
        return def;
    if (*s < '1' || *s > '9')
        return -1; /* empty, a sign, a space or a leading zero */
    int v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > max)
            return -1; /* also ends long strings before v can overflow */
    }
    return v;
}

/* Two digits of t at i as a number. */
static int two(const char *t, int i)
{
    return (t[i] - '0') * 10 + (t[i + 1] - '0');
}

static bool key_valid(enum page_key kind, const char *k, size_t n)
{
    if (kind == PAGE_KEY_SEQ) {
        if (n < 1 || n > SEQ_MAX_DIGITS || k[0] == '0')
            return false;
        for (size_t i = 0; i < n; i++)
            if (k[i] < '0' || k[i] > '9')
                return false;
        return n < SEQ_MAX_DIGITS || memcmp(k, SEQ_MAX, n) <= 0;
    }
    if (n != TIME_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = time_id_shape[i];
        bool ok = c == 'd'   ? k[i] >= '0' && k[i] <= '9'
                  : c == 'x' ? (k[i] >= '0' && k[i] <= '9') || (k[i] >= 'a' && k[i] <= 'f')
                             : k[i] == c;
        if (!ok)
            return false;
    }
    /* Ranges too, so that most impossible dates stop here; the rest (Feb 30)
     * is the database's to refuse. */
    return two(k, 5) >= 1 && two(k, 5) <= 12 && two(k, 8) >= 1 && two(k, 8) <= 31 &&
           two(k, 11) <= 23 && two(k, 14) <= 59 && two(k, 17) <= 59;
}

bool page_read(struct request *req, int def, int max, enum page_key kind, struct page *p,
               json_t **errors)
{
    memset(p, 0, sizeof *p);
    bool ok = true;
    p->limit = page_limit_parse(http_query(req, "limit"), def, max);
    if (p->limit < 0) {
        problem_add_error(errors, "limit",
                          arena_printf(req->arena, "must be an integer from 1 to %d", max));
        p->limit = def;
        ok = false;
    }
    p->limit_text = arena_printf(req->arena, "%d", p->limit);
    const char *c = http_query(req, "cursor");
    if (!c)
        return ok;
    unsigned char key[KEY_MAX + 1];
    size_t len = strlen(c);
    int n = len <= B64URL_LEN(KEY_MAX) ? b64url_decode(c, len, key, KEY_MAX) : -1;
    if (n < 0 || !key_valid(kind, (const char *)key, (size_t)n)) {
        problem_add_error(errors, "cursor", cursor_error);
        return false;
    }
    if (kind == PAGE_KEY_SEQ) {
        p->seq = arena_strndup(req->arena, (const char *)key, (size_t)n);
    } else {
        p->time = arena_strndup(req->arena, (const char *)key, TIME_LEN);
        p->id =
            arena_strndup(req->arena, (const char *)key + TIME_LEN + 1, (size_t)n - TIME_LEN - 1);
    }
    return ok;
}

char *page_cursor(struct arena *a, enum page_key kind, const char *key)
{
    size_t n = strlen(key);
    if (!key_valid(kind, key, n))
        return NULL;
    char *out = arena_alloc(a, B64URL_LEN(n) + 1);
    return b64url_encode(key, n, out, B64URL_LEN(n) + 1) < 0 ? NULL : out;
}

void page_respond(struct request *req, const char *data, enum page_key kind, const char *next)
{
    const char *cursor = next ? page_cursor(req->arena, kind, next) : NULL;
    if (!data || (next && !cursor)) {
        log_msg(LOG_ERROR, "list %s: the statement answered no page or a bad position",
                req->route_pattern);
        problem_respond(req, PROBLEM_INTERNAL, "The request failed on our side.");
        return;
    }
    /* base64url needs no escaping inside a JSON string. */
    char *body =
        cursor ? arena_printf(req->arena, "{\"data\":%s,\"next_cursor\":\"%s\"}", data, cursor)
               : arena_printf(req->arena, "{\"data\":%s,\"next_cursor\":null}", data);
    http_respond_arena(req, 200, "application/json", body, strlen(body)); /* not copied again */
}

void page_respond_bad_cursor(struct request *req)
{
    json_t *errors = NULL;
    problem_add_error(&errors, "cursor", cursor_error);
    problem_respond_errors(req, "The query parameters are not valid.", errors);
}
