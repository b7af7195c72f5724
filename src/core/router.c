/*
 * The router: the modules' route tables compiled once into pre-split
 * segments, matched linearly (about fifty routes: a scan over a few hundred
 * bytes beats any tree at that size).
 *
 * Path policy (what router_match accepts):
 *   - the path starts with '/'; "/" alone is the root (zero segments);
 *   - no empty segment anywhere: "//x" and a trailing slash ("/v1/users/")
 *     do not match "/v1/users" (404, no redirect: an API client should send
 *     the exact path, and one canonical URL keeps caches and metrics simple);
 *   - no "." or ".." segment, raw or percent-encoded;
 *   - only RFC 3986 path characters (unreserved, sub-delims, ':', '@', '%');
 *   - a percent-escape must be '%' and two hex digits and must not decode to
 *     NUL or '/'; literal segments compare byte for byte without decoding
 *     (patterns never contain '%'), parameters are decoded into req->arena.
 * Anything else is ROUTER_NOT_FOUND.
 *
 * Precedence: among routes whose pattern matches the path and whose method
 * matches (HEAD also matches GET), the most specific wins: the one with a
 * literal at the leftmost position where the two differ (so /v1/orgs/mine
 * beats /v1/orgs/{slug}). An explicit HEAD route beats a GET one. When some
 * pattern matches the path but none of those routes takes the method, the
 * answer is ROUTER_METHOD_NOT_ALLOWED with Allow the union of their methods.
 */
#include "core/router.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "core/arena.h"
#include "core/hex.h"
#include "core/log.h"

/* Longest pattern we compile, in segments; longer request paths cannot match. */
#define ROUTER_MAX_SEGS 16
/* Hash slots for literal-only patterns (a power of two, well above their
 * number). */
#define STATIC_SLOTS 256
/* Methods fit in a 64-bit mask (llhttp numbers them 0..45). */
#define ROUTER_MAX_METHOD 63

struct seg {
    const char *s; /* literal text (points into the pattern), or the parameter name */
    uint16_t len;
    bool param;
    char *name; /* a parameter's name, NUL-terminated (owned), so matching never copies it */
};

struct croute {
    const struct route *rt;
    uint32_t first; /* index of its first segment in router.segs */
    uint16_t nsegs;
    uint16_t nparams;
    uint32_t specificity; /* bit (31 - i) set when segment i is a literal */
};

struct router {
    struct croute *routes;
    size_t nroutes;
    struct seg *segs;
    size_t nsegs;
    /* Route indexes grouped by segment count, table order kept within a
     * group: a path of n segments is only compared with
     * by_nsegs[group[n] .. group[n + 1]). */
    uint32_t *by_nsegs;
    uint32_t group[ROUTER_MAX_SEGS + 2];
    /* Routes without parameters, by their whole pattern text: a path equal
     * to one is matched with a hash lookup (no literal-only route can be
     * beaten by a route with a parameter). Slots hold a route index + 1 (0:
     * empty), one per pattern; same_next chains the routes (methods) that
     * share it, as index + 1. */
    uint32_t static_slots[STATIC_SLOTS];
    uint32_t *same_next;
};

/* A segment of the request path, not decoded. */
struct span {
    const char *s;
    size_t len;
};

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static bool is_sub_delim_or_pchar(unsigned char c)
{
    return c == '!' || c == '$' || c == '&' || c == '\'' || c == '(' || c == ')' || c == '*' ||
           c == '+' || c == ',' || c == ';' || c == '=' || c == ':' || c == '@';
}

static bool is_pchar(unsigned char c)
{
    return is_unreserved(c) || is_sub_delim_or_pchar(c);
}

static bool is_dot_segment(const char *s, size_t len)
{
    return (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.');
}

const char *router_method_name(int method)
{
    switch (method) {
#define ROUTER_METHOD_CASE(num, name, string)                                                      \
    case num:                                                                                      \
        return #string;
        HTTP_ALL_METHOD_MAP(ROUTER_METHOD_CASE)
#undef ROUTER_METHOD_CASE
    default:
        return "UNKNOWN";
    }
}

static bool valid_method(int method)
{
    if (method < 0 || method > ROUTER_MAX_METHOD)
        return false;
    return strcmp(router_method_name(method), "UNKNOWN") != 0;
}

static size_t count_routes(const struct route *t)
{
    size_t n = 0;
    /* A table ends with a zeroed entry. Its method cannot be the marker:
     * HTTP_DELETE is 0 in llhttp, so the pattern is. */
    while (t && t[n].pattern)
        n++;
    return n;
}

/* Splits and checks one pattern, appending its segments to r->segs.
 * Returns false (logged) when it is malformed. */
static bool compile_pattern(struct router *r, struct croute *cr, const char *module)
{
    const char *p = cr->rt->pattern;
    const char *why = NULL;
    cr->first = (uint32_t)r->nsegs;
    cr->nsegs = 0;
    cr->nparams = 0;
    cr->specificity = 0;

    if (p[0] != '/') {
        why = "must start with '/'";
        goto bad;
    }
    if (p[1] == '\0')
        return true; /* the root */
    const char *s = p + 1;
    for (;;) {
        const char *end = strchr(s, '/');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len == 0) {
            why = "has an empty segment or a trailing slash";
            goto bad;
        }
        if (cr->nsegs == ROUTER_MAX_SEGS) {
            why = "has too many segments";
            goto bad;
        }
        struct seg *sg = &r->segs[r->nsegs];
        if (s[0] == '{') {
            if (len < 3 || s[len - 1] != '}') {
                why = "has a malformed {parameter}";
                goto bad;
            }
            for (size_t i = 1; i < len - 1; i++) {
                unsigned char c = (unsigned char)s[i];
                bool ok = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (i > 1 && c >= '0' && c <= '9');
                if (!ok) {
                    why = "has a parameter name that is not an identifier";
                    goto bad;
                }
            }
            if (cr->nparams == HTTP_MAX_PARAMS) {
                why = "has too many parameters";
                goto bad;
            }
            sg->s = s + 1;
            sg->len = (uint16_t)(len - 2);
            sg->param = true;
            sg->name = NULL;
            for (uint32_t i = cr->first; i < r->nsegs; i++)
                if (r->segs[i].param && r->segs[i].len == sg->len &&
                    memcmp(r->segs[i].s, sg->s, sg->len) == 0) {
                    why = "repeats a parameter name";
                    goto bad;
                }
            sg->name = strndup(sg->s, sg->len);
            if (!sg->name)
                abort();
            cr->nparams++;
        } else {
            for (size_t i = 0; i < len; i++)
                if (!is_pchar((unsigned char)s[i])) {
                    why = "has a character that is not allowed in a literal segment";
                    goto bad;
                }
            if (is_dot_segment(s, len)) {
                why = "has a '.' or '..' segment";
                goto bad;
            }
            if (len > UINT16_MAX) {
                why = "has a segment that is too long";
                goto bad;
            }
            sg->s = s;
            sg->len = (uint16_t)len;
            sg->param = false;
            sg->name = NULL;
            cr->specificity |= UINT32_C(1) << (31 - cr->nsegs);
        }
        r->nsegs++;
        cr->nsegs++;
        if (!end)
            return true;
        s = end + 1;
    }
bad:
    log_msg(LOG_ERROR, "route %s %s of module %s %s", router_method_name(cr->rt->method), p, module,
            why);
    return false;
}

/* Two routes collide when they take the same method and match the same
 * paths: same segment count, parameters in the same places, equal literals. */
static bool same_shape(const struct router *r, const struct croute *a, const struct croute *b)
{
    if (a->nsegs != b->nsegs || a->specificity != b->specificity)
        return false;
    for (uint16_t i = 0; i < a->nsegs; i++) {
        const struct seg *x = &r->segs[a->first + i], *y = &r->segs[b->first + i];
        if (x->param)
            continue; /* y is a parameter too: the specificities are equal */
        if (x->len != y->len || memcmp(x->s, y->s, x->len) != 0)
            return false;
    }
    return true;
}

static uint32_t hash_path(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int split_path(const char *path, struct span *out);

/* Fills static_slots and same_next; false when there are too many. */
static bool index_static_routes(struct router *r)
{
    r->same_next = calloc(r->nroutes ? r->nroutes : 1, sizeof *r->same_next);
    if (!r->same_next)
        abort();
    size_t used = 0;
    for (size_t i = 0; i < r->nroutes; i++) {
        const struct croute *cr = &r->routes[i];
        struct span segs[ROUTER_MAX_SEGS];
        /* Only patterns that a request path can equal byte for byte. */
        if (cr->nparams || split_path(cr->rt->pattern, segs) != (int)cr->nsegs)
            continue;
        const char *pat = cr->rt->pattern;
        size_t len = strlen(pat);
        uint32_t h = hash_path(pat, len) & (STATIC_SLOTS - 1);
        for (;;) {
            uint32_t v = r->static_slots[h];
            if (!v) {
                if (++used > STATIC_SLOTS / 2) {
                    log_msg(LOG_ERROR, "too many routes without parameters (max %d)",
                            STATIC_SLOTS / 2);
                    return false;
                }
                r->static_slots[h] = (uint32_t)i + 1;
                break;
            }
            if (strcmp(r->routes[v - 1].rt->pattern, pat) == 0) {
                /* Appended, so the chain keeps table order. */
                uint32_t *tail = &r->static_slots[h];
                while (*tail)
                    tail = &r->same_next[*tail - 1];
                *tail = (uint32_t)i + 1;
                break;
            }
            h = (h + 1) & (STATIC_SLOTS - 1);
        }
    }
    return true;
}

/* The literal-only route for req's exact path and method, or NULL (then
 * the full match decides: a route with a parameter may take the method, or
 * the answer is 405). */
static const struct croute *match_static(const struct router *r, const struct request *req)
{
    const char *path = req->path;
    size_t len = strlen(path);
    uint32_t h = hash_path(path, len) & (STATIC_SLOTS - 1);
    for (;;) {
        uint32_t v = r->static_slots[h];
        if (!v)
            return NULL;
        const char *pat = r->routes[v - 1].rt->pattern;
        if (strncmp(pat, path, len) == 0 && pat[len] == '\0')
            break;
        h = (h + 1) & (STATIC_SLOTS - 1);
    }
    const struct croute *as_get = NULL;
    for (uint32_t v = r->static_slots[h]; v; v = r->same_next[v - 1]) {
        const struct croute *cr = &r->routes[v - 1];
        if (cr->rt->method == req->method)
            return cr; /* an exact method beats HEAD-as-GET */
        if (req->method == HTTP_HEAD && cr->rt->method == HTTP_GET)
            as_get = cr;
    }
    return as_get;
}

struct router *router_new(const struct module *const *modules, size_t nmodules)
{
    size_t n = 0, maxsegs = 0;
    for (size_t m = 0; m < nmodules; m++) {
        size_t k = count_routes(modules[m]->routes);
        n += k;
        for (size_t i = 0; i < k; i++) {
            /* Upper bound on segments: one per '/'. */
            for (const char *p = modules[m]->routes[i].pattern; *p; p++)
                maxsegs += *p == '/';
        }
    }
    struct router *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->routes = calloc(n ? n : 1, sizeof *r->routes);
    r->segs = calloc(maxsegs ? maxsegs : 1, sizeof *r->segs);
    if (!r->routes || !r->segs)
        abort();

    for (size_t m = 0; m < nmodules; m++) {
        const struct route *t = modules[m]->routes;
        size_t k = count_routes(t);
        for (size_t i = 0; i < k; i++) {
            struct croute *cr = &r->routes[r->nroutes];
            cr->rt = &t[i];
            if (!valid_method(t[i].method)) {
                log_msg(LOG_ERROR, "route %s of module %s has an unknown method %d", t[i].pattern,
                        modules[m]->name, t[i].method);
                goto fail;
            }
            if (!t[i].handler) {
                log_msg(LOG_ERROR, "route %s %s of module %s has no handler",
                        router_method_name(t[i].method), t[i].pattern, modules[m]->name);
                goto fail;
            }
            if (!compile_pattern(r, cr, modules[m]->name))
                goto fail;
            for (size_t j = 0; j < r->nroutes; j++) {
                const struct croute *o = &r->routes[j];
                if (o->rt->method == cr->rt->method && same_shape(r, o, cr)) {
                    log_msg(LOG_ERROR, "route %s %s of module %s collides with %s",
                            router_method_name(cr->rt->method), cr->rt->pattern, modules[m]->name,
                            o->rt->pattern);
                    goto fail;
                }
            }
            r->nroutes++;
        }
    }
    r->by_nsegs = calloc(r->nroutes ? r->nroutes : 1, sizeof *r->by_nsegs);
    if (!r->by_nsegs)
        abort();
    uint32_t k = 0;
    for (int ns = 0; ns <= ROUTER_MAX_SEGS; ns++) {
        r->group[ns] = k;
        for (size_t i = 0; i < r->nroutes; i++)
            if (r->routes[i].nsegs == ns)
                r->by_nsegs[k++] = (uint32_t)i;
    }
    r->group[ROUTER_MAX_SEGS + 1] = k;
    if (!index_static_routes(r))
        goto fail;
    return r;
fail:
    router_free(r);
    return NULL;
}

void router_free(struct router *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nsegs; i++)
        free(r->segs[i].name);
    free(r->routes);
    free(r->segs);
    free(r->by_nsegs);
    free(r->same_next);
    free(r);
}

void router_each(const struct router *r, void (*fn)(const struct route *rt, void *ud), void *ud)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nroutes; i++)
        fn(r->routes[i].rt, ud);
}

/* Splits the request path into segments and checks it against the policy at
 * the top of this file. Returns the segment count, or -1 when it cannot match. */
static int split_path(const char *path, struct span *out)
{
    if (!path || path[0] != '/')
        return -1;
    if (path[1] == '\0')
        return 0;
    int n = 0;
    const char *s = path + 1;
    for (;;) {
        size_t len = 0;
        bool escaped = false;
        while (s[len] && s[len] != '/') {
            unsigned char c = (unsigned char)s[len];
            if (c == '%') {
                int hi = hex_digit((unsigned char)s[len + 1]);
                int lo = hi < 0 ? -1 : hex_digit((unsigned char)s[len + 2]);
                if (lo < 0)
                    return -1;
                int v = hi * 16 + lo;
                if (v == 0 || v == '/')
                    return -1;
                escaped = true;
                len += 3;
                continue;
            }
            if (!is_pchar(c))
                return -1;
            len++;
        }
        if (len == 0 || n == ROUTER_MAX_SEGS)
            return -1;
        if (is_dot_segment(s, len))
            return -1;
        if (escaped) {
            /* "%2e%2E" and ".%2e" are dot segments too once decoded. */
            size_t dots = 0, i = 0;
            bool only_dots = true;
            while (i < len && only_dots) {
                if (s[i] == '.') {
                    i++;
                } else if (s[i] == '%' && s[i + 1] == '2' && (s[i + 2] == 'e' || s[i + 2] == 'E')) {
                    i += 3;
                } else {
                    only_dots = false;
                    break;
                }
                dots++;
            }
            if (only_dots && dots <= 2)
                return -1;
        }
        out[n].s = s;
        out[n].len = len;
        n++;
        if (s[len] == '\0')
            return n;
        s += len + 1;
    }
}

static bool path_matches(const struct router *r, const struct croute *cr, const struct span *segs,
                         int n)
{
    if (cr->nsegs != n)
        return false;
    for (int i = 0; i < n; i++) {
        const struct seg *sg = &r->segs[cr->first + (uint32_t)i];
        if (sg->param)
            continue;
        if (sg->len != segs[i].len || memcmp(sg->s, segs[i].s, sg->len) != 0)
            return false;
    }
    return true;
}

/* Decodes an already validated segment into the arena. */
static const char *decode(struct arena *a, const struct span *sp)
{
    char *out = arena_alloc(a, sp->len + 1);
    size_t o = 0;
    for (size_t i = 0; i < sp->len; i++) {
        if (sp->s[i] == '%') {
            out[o++] = (char)(hex_digit((unsigned char)sp->s[i + 1]) * 16 +
                              hex_digit((unsigned char)sp->s[i + 2]));
            i += 2;
        } else {
            out[o++] = sp->s[i];
        }
    }
    out[o] = '\0';
    return out;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "GET, HEAD, POST": the methods of mask, sorted by name, in the arena. */
static const char *allow_string(struct arena *a, uint64_t mask)
{
    if (mask & (UINT64_C(1) << HTTP_GET))
        mask |= UINT64_C(1) << HTTP_HEAD;
    const char *names[ROUTER_MAX_METHOD + 1] = {0};
    size_t n = 0, total = 1;
    for (int m = 0; m <= ROUTER_MAX_METHOD; m++)
        if (mask & (UINT64_C(1) << m)) {
            names[n] = router_method_name(m);
            total += strlen(names[n]) + 2;
            n++;
        }
    qsort(names, n, sizeof names[0], cmp_str);
    char *out = arena_alloc(a, total);
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        if (i) {
            memcpy(p, ", ", 2);
            p += 2;
        }
        size_t l = strlen(names[i]);
        memcpy(p, names[i], l);
        p += l;
    }
    *p = '\0';
    return out;
}

enum router_result router_match(const struct router *r, struct request *req, const char **allow)
{
    req->route = NULL;
    req->route_pattern = "unmatched";
    req->nparams = 0;
    if (allow)
        *allow = NULL;
    if (!r || !req->path)
        return ROUTER_NOT_FOUND;

    const struct croute *st = match_static(r, req);
    if (st) {
        req->route = st->rt;
        req->route_pattern = st->rt->pattern;
        return ROUTER_FOUND;
    }

    struct span segs[ROUTER_MAX_SEGS];
    int n = split_path(req->path, segs);
    if (n < 0)
        return ROUTER_NOT_FOUND;

    const struct croute *best = NULL;
    uint64_t best_score = 0, allowed = 0;
    bool path_found = false;
    for (uint32_t k = r->group[n]; k < r->group[n + 1]; k++) {
        const struct croute *cr = &r->routes[r->by_nsegs[k]];
        if (!path_matches(r, cr, segs, n))
            continue;
        path_found = true;
        int m = cr->rt->method;
        allowed |= UINT64_C(1) << m;
        bool exact = m == req->method;
        if (!exact && !(req->method == HTTP_HEAD && m == HTTP_GET))
            continue;
        /* Specificity first; at equal specificity an exact method (an
         * explicit HEAD route) beats HEAD-as-GET. */
        uint64_t score = ((uint64_t)cr->specificity << 1) | (exact ? 1 : 0);
        if (!best || score > best_score) {
            best = cr;
            best_score = score;
        }
    }
    if (!best) {
        if (!path_found)
            return ROUTER_NOT_FOUND;
        if (allow)
            *allow = allow_string(req->arena, allowed);
        return ROUTER_METHOD_NOT_ALLOWED;
    }

    for (uint16_t i = 0; i < best->nsegs; i++) {
        const struct seg *sg = &r->segs[best->first + i];
        if (!sg->param)
            continue;
        struct path_param *pp = &req->params[req->nparams++];
        pp->name = sg->name;
        pp->value = decode(req->arena, &segs[i]);
    }
    req->route = best->rt;
    req->route_pattern = best->rt->pattern;
    return ROUTER_FOUND;
}
