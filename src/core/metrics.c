/*
 * Prometheus metrics. Each loop owns one `struct metrics` and is its only
 * writer; the scrape (any thread) reads it with relaxed atomics and sums all
 * loops. Since each value has one writer, an update is a relaxed load and a
 * relaxed store (no locked read-modify-write on the request path).
 *
 * Per-request series live in fixed open-addressing tables keyed by pointers
 * that live for the process (route patterns and method names), so after the
 * first request of each (route, method, status) nothing allocates. A full
 * table sends further new keys to one "other" series instead of growing.
 * The scrape merges series by their text, so two equal strings at different
 * addresses (or the same key on two loops) still render as one series.
 */
#include "core/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/strbuf.h"

/* Counters per (route, method, status): ~50 routes x a few statuses fit. */
#define REQ_SLOTS 1024
#define REQ_MAX_USED (REQ_SLOTS * 3 / 4)
/* Histograms per route. */
#define HIST_SLOTS 256
#define HIST_MAX_USED (HIST_SLOTS * 3 / 4)

static const double bucket_bounds[] = {.0005, .001, .0025, .005, .01, .025, .05,
                                       .1,    .25,  .5,    1,    2.5, 5,    10};
static const char *const bucket_labels[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                            "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                            "1",      "2.5",   "5",      "10"};
#define NBUCKETS (sizeof bucket_bounds / sizeof bucket_bounds[0])

/* Methods are interned to a static name so a caller's arena string is never
 * kept. */
static const char *const method_names[] = {"GET",    "POST", "PUT",     "PATCH",
                                           "DELETE", "HEAD", "OPTIONS", "other"};
#define NMETHODS (sizeof method_names / sizeof method_names[0])

static const char OTHER[] = "other";

struct req_slot {
    _Atomic(const char *) route; /* NULL: empty; published last (release) */
    unsigned char method;        /* index into method_names */
    int status;
    atomic_uint_fast64_t count;
};

struct hist_slot {
    _Atomic(const char *) route;
    atomic_uint_fast64_t buckets[NBUCKETS + 1]; /* not cumulative; last is +Inf */
    atomic_uint_fast64_t sum_ns;
};

struct metrics {
    struct metrics *next; /* registry list, append-only, guarded by registry_mu */
    int loop_index;
    struct req_slot req[REQ_SLOTS];
    unsigned req_used;              /* writer-only */
    atomic_uint_fast64_t req_other; /* requests whose key did not fit */
    struct hist_slot hist[HIST_SLOTS];
    unsigned hist_used; /* writer-only */
    struct hist_slot hist_other;
    atomic_int_fast64_t conns_open;
    atomic_int_fast64_t pool_in_use, pool_idle, pool_waiting;
    atomic_uint_fast64_t schema_switches, reconnects;
    atomic_uint_fast64_t stmt_hits, stmt_misses, stmt_evictions, recycles, spills, handed;
    atomic_int_fast64_t schemas_max, schemas_sum, schemas_conns;
    atomic_uint_fast64_t refused[METRICS_REFUSED_REASONS];
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics *registry;

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
/* Single writer: a plain load + store is enough and avoids a locked add. */
#define ADD(x, v) STORE(x, LOAD(x) + (v))

struct metrics *metrics_new(int loop_index)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (!m)
        abort();
    m->loop_index = loop_index;
    pthread_mutex_lock(&registry_mu);
    /* Appended at the tail so the scrape walks loops in creation order. */
    struct metrics **p = &registry;
    while (*p)
        p = &(*p)->next;
    *p = m;
    pthread_mutex_unlock(&registry_mu);
    return m;
}

static unsigned method_index(const char *method)
{
    if (!method)
        return NMETHODS - 1;
    for (unsigned i = 0; i < NMETHODS - 1; i++)
        if (method == method_names[i] || strcmp(method, method_names[i]) == 0)
            return i;
    return NMETHODS - 1;
}

static size_t hash_ptr(const void *p, unsigned extra)
{
    uint64_t h = (uint64_t)(uintptr_t)p * UINT64_C(0x9E3779B97F4A7C15);
    h ^= (uint64_t)extra * UINT64_C(0xC2B2AE3D27D4EB4F);
    return (size_t)(h ^ (h >> 29));
}

static void count_request(struct metrics *m, const char *route, unsigned method, int status)
{
    size_t i = hash_ptr(route, method * 1000u + (unsigned)status) & (REQ_SLOTS - 1);
    for (;;) {
        struct req_slot *s = &m->req[i];
        const char *r = atomic_load_explicit(&s->route, memory_order_relaxed);
        if (!r)
            break;
        if (r == route && s->method == method && s->status == status) {
            ADD(s->count, 1);
            return;
        }
        i = (i + 1) & (REQ_SLOTS - 1);
    }
    if (m->req_used >= REQ_MAX_USED) {
        ADD(m->req_other, 1);
        return;
    }
    struct req_slot *s = &m->req[i];
    s->method = (unsigned char)method;
    s->status = status;
    STORE(s->count, 1);
    /* The scrape reads method/status only after seeing route (acquire). */
    atomic_store_explicit(&s->route, route, memory_order_release);
    m->req_used++;
}

static struct hist_slot *hist_for(struct metrics *m, const char *route)
{
    size_t i = hash_ptr(route, 0) & (HIST_SLOTS - 1);
    for (;;) {
        struct hist_slot *s = &m->hist[i];
        const char *r = atomic_load_explicit(&s->route, memory_order_relaxed);
        if (r == route)
            return s;
        if (!r)
            break;
        i = (i + 1) & (HIST_SLOTS - 1);
    }
    if (m->hist_used >= HIST_MAX_USED)
        return &m->hist_other;
    /* The slot is all zeros: publishing the route is enough. */
    atomic_store_explicit(&m->hist[i].route, route, memory_order_release);
    m->hist_used++;
    return &m->hist[i];
}

void metrics_request(struct metrics *m, const char *route, const char *method, int status,
                     double seconds)
{
    if (!m)
        return;
    if (!route)
        route = "unmatched";
    count_request(m, route, method_index(method), status);

    struct hist_slot *h = hist_for(m, route);
    size_t b = 0;
    while (b < NBUCKETS && !(seconds <= bucket_bounds[b]))
        b++;
    ADD(h->buckets[b], 1);
    /* Clamped so the conversion stays defined (a clock jump, not a request). */
    if (seconds > 0)
        ADD(h->sum_ns, (uint_fast64_t)((seconds < 1e6 ? seconds : 1e6) * 1e9 + 0.5));
}

void metrics_conn_open(struct metrics *m, int delta)
{
    if (m)
        ADD(m->conns_open, delta);
}

void metrics_conn_refused(struct metrics *m, enum metrics_refused reason)
{
    if (m && reason < METRICS_REFUSED_REASONS)
        ADD(m->refused[reason], 1);
}

void metrics_pool(struct metrics *m, int in_use, int idle, int waiting)
{
    if (!m)
        return;
    STORE(m->pool_in_use, in_use);
    STORE(m->pool_idle, idle);
    STORE(m->pool_waiting, waiting);
}

void metrics_pool_schema_switch(struct metrics *m)
{
    if (m)
        ADD(m->schema_switches, 1);
}

void metrics_db_reconnect(struct metrics *m)
{
    if (m)
        ADD(m->reconnects, 1);
}

void metrics_db_statements(struct metrics *m, unsigned hits, unsigned misses, unsigned evictions)
{
    if (!m)
        return;
    if (hits)
        ADD(m->stmt_hits, hits);
    if (misses)
        ADD(m->stmt_misses, misses);
    if (evictions)
        ADD(m->stmt_evictions, evictions);
}

void metrics_db_recycle(struct metrics *m)
{
    if (m)
        ADD(m->recycles, 1);
}

void metrics_db_spill(struct metrics *m)
{
    if (m)
        ADD(m->spills, 1);
}

void metrics_db_handed(struct metrics *m)
{
    if (m)
        ADD(m->handed, 1);
}

void metrics_pool_schemas(struct metrics *m, int max, int sum, int conns)
{
    if (!m)
        return;
    STORE(m->schemas_max, max);
    STORE(m->schemas_sum, sum);
    STORE(m->schemas_conns, conns);
}

/* ---- rendering (scrape time only) ---- */

/* A label value per the text format: backslash, double quote and newline
 * escaped. */
static void buf_label(struct strbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_put(b, "\\\\", 2);
        else if (*s == '"')
            sb_put(b, "\\\"", 2);
        else if (*s == '\n')
            sb_put(b, "\\n", 2);
        else
            sb_put(b, s, 1);
    }
}

static void buf_header(struct strbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

struct req_row {
    const char *route;
    unsigned method;
    int status;
    uint64_t count;
};

struct hist_row {
    const char *route;
    uint64_t buckets[NBUCKETS + 1];
    uint64_t sum_ns;
};

static int req_row_cmp(const void *a, const void *b)
{
    const struct req_row *x = a, *y = b;
    int c = strcmp(x->route, y->route);
    if (c)
        return c;
    c = strcmp(method_names[x->method], method_names[y->method]);
    if (c)
        return c;
    return (x->status > y->status) - (x->status < y->status);
}

static int hist_row_cmp(const void *a, const void *b)
{
    const struct hist_row *x = a, *y = b;
    return strcmp(x->route, y->route);
}

static void read_hist(struct hist_row *row, const char *route, struct hist_slot *s)
{
    row->route = route;
    for (size_t k = 0; k <= NBUCKETS; k++)
        row->buckets[k] = LOAD(s->buckets[k]);
    row->sum_ns = LOAD(s->sum_ns);
}

/* False when out of memory for the rows. */
static bool render_requests(struct strbuf *b, struct metrics *head, size_t nloops)
{
    size_t cap = nloops * (REQ_SLOTS + 1), n = 0;
    struct req_row *rows = cap ? malloc(cap * sizeof *rows) : NULL;
    if (cap && !rows)
        return false;
    for (struct metrics *m = head; m; m = m->next) {
        for (size_t i = 0; i < REQ_SLOTS; i++) {
            struct req_slot *s = &m->req[i];
            const char *route = atomic_load_explicit(&s->route, memory_order_acquire);
            if (!route)
                continue;
            rows[n++] = (struct req_row){route, s->method, s->status, LOAD(s->count)};
        }
        uint64_t other = LOAD(m->req_other);
        if (other)
            rows[n++] = (struct req_row){OTHER, NMETHODS - 1, 0, other};
    }
    if (n)
        qsort(rows, n, sizeof *rows, req_row_cmp);
    buf_header(b, "tenantd_http_requests_total", "counter",
               "HTTP requests answered, by route pattern, method and status.");
    for (size_t i = 0; i < n;) {
        struct req_row r = rows[i++];
        while (i < n && req_row_cmp(&r, &rows[i]) == 0)
            r.count += rows[i++].count;
        sb_puts(b, "tenantd_http_requests_total{route=\"");
        buf_label(b, r.route);
        sb_printf(b, "\",method=\"%s\",status=\"", method_names[r.method]);
        if (r.status)
            sb_printf(b, "%d", r.status);
        else
            sb_puts(b, OTHER);
        sb_printf(b, "\"} %llu\n", (unsigned long long)r.count);
    }
    free(rows);
    return true;
}

static bool render_histograms(struct strbuf *b, struct metrics *head, size_t nloops)
{
    size_t cap = nloops * (HIST_SLOTS + 1), n = 0;
    struct hist_row *rows = cap ? malloc(cap * sizeof *rows) : NULL;
    if (cap && !rows)
        return false;
    for (struct metrics *m = head; m; m = m->next) {
        for (size_t i = 0; i < HIST_SLOTS; i++) {
            const char *route = atomic_load_explicit(&m->hist[i].route, memory_order_acquire);
            if (route)
                read_hist(&rows[n++], route, &m->hist[i]);
        }
        struct hist_row other;
        read_hist(&other, OTHER, &m->hist_other);
        uint64_t total = 0;
        for (size_t k = 0; k <= NBUCKETS; k++)
            total += other.buckets[k];
        if (total)
            rows[n++] = other;
    }
    if (n)
        qsort(rows, n, sizeof *rows, hist_row_cmp);
    const char *name = "tenantd_http_request_duration_seconds";
    buf_header(b, name, "histogram",
               "Time from complete request headers to the response, by route pattern.");
    for (size_t i = 0; i < n;) {
        struct hist_row r = rows[i++];
        while (i < n && strcmp(r.route, rows[i].route) == 0) {
            for (size_t k = 0; k <= NBUCKETS; k++)
                r.buckets[k] += rows[i].buckets[k];
            r.sum_ns += rows[i].sum_ns;
            i++;
        }
        /* Cumulative buckets; _count is the +Inf bucket, so the two always
         * agree even when a request lands mid-scrape. */
        uint64_t cum = 0;
        for (size_t k = 0; k <= NBUCKETS; k++) {
            cum += r.buckets[k];
            sb_printf(b, "%s_bucket{route=\"", name);
            buf_label(b, r.route);
            sb_printf(b, "\",le=\"%s\"} %llu\n", k < NBUCKETS ? bucket_labels[k] : "+Inf",
                      (unsigned long long)cum);
        }
        sb_printf(b, "%s_sum{route=\"", name);
        buf_label(b, r.route);
        sb_printf(b, "\"} %.9f\n", (double)r.sum_ns / 1e9);
        sb_printf(b, "%s_count{route=\"", name);
        buf_label(b, r.route);
        sb_printf(b, "\"} %llu\n", (unsigned long long)cum);
    }
    free(rows);
    return true;
}

char *metrics_render(size_t *len)
{
    struct strbuf b = {0};
    pthread_mutex_lock(&registry_mu);
    struct metrics *head = registry;
    size_t nloops = 0;
    int64_t conns = 0, in_use = 0, idle = 0, waiting = 0;
    uint64_t switches = 0, reconnects = 0, hits = 0, misses = 0, evictions = 0, recycles = 0;
    uint64_t spills = 0, handed = 0;
    int64_t smax = 0, ssum = 0, sconns = 0;
    uint64_t refused[METRICS_REFUSED_REASONS] = {0};
    for (struct metrics *m = head; m; m = m->next) {
        for (int i = 0; i < METRICS_REFUSED_REASONS; i++)
            refused[i] += LOAD(m->refused[i]);
        hits += LOAD(m->stmt_hits);
        misses += LOAD(m->stmt_misses);
        evictions += LOAD(m->stmt_evictions);
        recycles += LOAD(m->recycles);
        spills += LOAD(m->spills);
        handed += LOAD(m->handed);
        if (LOAD(m->schemas_max) > smax)
            smax = LOAD(m->schemas_max);
        ssum += LOAD(m->schemas_sum);
        sconns += LOAD(m->schemas_conns);
        nloops++;
        conns += LOAD(m->conns_open);
        in_use += LOAD(m->pool_in_use);
        idle += LOAD(m->pool_idle);
        waiting += LOAD(m->pool_waiting);
        switches += LOAD(m->schema_switches);
        reconnects += LOAD(m->reconnects);
    }
    bool oom = !render_requests(&b, head, nloops) || !render_histograms(&b, head, nloops);
    pthread_mutex_unlock(&registry_mu);

    buf_header(&b, "tenantd_http_connections_open", "gauge", "Open client connections.");
    sb_printf(&b, "tenantd_http_connections_open %lld\n", (long long)conns);
    buf_header(&b, "tenantd_http_connections_refused_total", "counter",
               "Connections answered 503 and closed at accept: the loop's table was full "
               "(TENANTD_MAX_CONNECTIONS) or the address held TENANTD_MAX_CONNECTIONS_PER_IP.");
    sb_printf(&b, "tenantd_http_connections_refused_total{reason=\"max_connections\"} %llu\n",
              (unsigned long long)refused[METRICS_REFUSED_FULL]);
    sb_printf(&b, "tenantd_http_connections_refused_total{reason=\"per_ip\"} %llu\n",
              (unsigned long long)refused[METRICS_REFUSED_PER_IP]);
    buf_header(&b, "tenantd_db_pool_connections", "gauge",
               "Database connections of the pools, by state.");
    sb_printf(&b, "tenantd_db_pool_connections{state=\"in_use\"} %lld\n", (long long)in_use);
    sb_printf(&b, "tenantd_db_pool_connections{state=\"idle\"} %lld\n", (long long)idle);
    buf_header(&b, "tenantd_db_pool_waiting", "gauge",
               "Queries waiting for a database connection.");
    sb_printf(&b, "tenantd_db_pool_waiting %lld\n", (long long)waiting);
    buf_header(&b, "tenantd_db_schema_switches_total", "counter",
               "Times a pooled connection changed its search_path (the pool qualifies "
               "tenant statements instead, so this stays 0).");
    sb_printf(&b, "tenantd_db_schema_switches_total %llu\n", (unsigned long long)switches);
    buf_header(&b, "tenantd_db_statement_cache_total", "counter",
               "Tenant statements: prepared one reused (hit), prepared anew (miss), "
               "deallocated to make room (eviction).");
    sb_printf(&b, "tenantd_db_statement_cache_total{result=\"hit\"} %llu\n",
              (unsigned long long)hits);
    sb_printf(&b, "tenantd_db_statement_cache_total{result=\"miss\"} %llu\n",
              (unsigned long long)misses);
    sb_printf(&b, "tenantd_db_statement_cache_total{result=\"eviction\"} %llu\n",
              (unsigned long long)evictions);
    buf_header(&b, "tenantd_db_recycles_total", "counter",
               "Database backends replaced after serving too many schemas.");
    sb_printf(&b, "tenantd_db_recycles_total %llu\n", (unsigned long long)recycles);
    buf_header(&b, "tenantd_db_spills_total", "counter",
               "Org queries placed off their org's own connection (lost, busy with "
               "their own org's work, or slowed by another org).");
    sb_printf(&b, "tenantd_db_spills_total %llu\n", (unsigned long long)spills);
    buf_header(&b, "tenantd_db_handed_over_total", "counter",
               "Org statements handed to the pool of the org's home loop (one backend caches "
               "each org).");
    sb_printf(&b, "tenantd_db_handed_over_total %llu\n", (unsigned long long)handed);
    buf_header(&b, "tenantd_db_connection_schemas", "gauge",
               "Distinct org schemas seen by open database backends: the most by one, "
               "and the mean.");
    sb_printf(&b, "tenantd_db_connection_schemas{stat=\"max\"} %lld\n", (long long)smax);
    sb_printf(&b, "tenantd_db_connection_schemas{stat=\"mean\"} %.1f\n",
              sconns ? (double)ssum / (double)sconns : 0.0);
    buf_header(&b, "tenantd_db_reconnects_total", "counter",
               "Database reconnection attempts after a lost connection.");
    sb_printf(&b, "tenantd_db_reconnects_total %llu\n", (unsigned long long)reconnects);

    if (oom || !b.s) {
        free(b.s);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.s;
}
