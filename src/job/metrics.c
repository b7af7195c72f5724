/*
 * The jobs section of /metrics (job.h). Jobs run in every process (and in
 * external workers), so the figures that matter are the database's: the
 * job listener thread samples them every SAMPLE_MS with one aggregate query
 * per table and keeps the rendered text; a scrape only copies it. The
 * worker API calls of this process are counted here too.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "core/log.h"
#include "job/internal.h"
#include "job/job.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *sampled; /* the database part, malloc'd */
static atomic_ullong api_calls[JOB_API__COUNT][2];

static const char *const api_names[JOB_API__COUNT] = {"claim", "heartbeat", "complete", "fail"};

void job_metrics_api(enum job_api_op op, bool ok)
{
    atomic_fetch_add_explicit(&api_calls[op][ok ? 1 : 0], 1, memory_order_relaxed);
}

struct text {
    char *p;
    size_t len, cap;
    bool oom;
};

static void add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if (t->p && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = true;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
}

/* Label values come from the database (job types: [a-z0-9_.-]; statuses and
 * outcomes: our own words); quotes and backslashes are dropped anyway. */
static const char *label(const char *s, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 1 < len; i++)
        if (s[i] != '"' && s[i] != '\\' && s[i] != '\n')
            buf[j++] = s[i];
    buf[j] = '\0';
    return buf;
}

void job_metrics_sample(PGconn *c)
{
    PGresult *jobs = PQexec(c, "SELECT type, status, count(*), coalesce(sum(attempts), 0)"
                               " FROM public.jobs GROUP BY type, status ORDER BY type, status");
    PGresult *ticks = PQexec(c, "SELECT outcome, count(*) FROM public.schedule_ticks"
                                " GROUP BY outcome ORDER BY outcome");
    PGresult *events = PQexec(c, "SELECT status, count(*) FROM public.jobs"
                                 " WHERE type = 'webhook.deliver' AND payload ? 'event_id'"
                                 " GROUP BY status ORDER BY status");
    if (PQresultStatus(jobs) != PGRES_TUPLES_OK || PQresultStatus(ticks) != PGRES_TUPLES_OK ||
        PQresultStatus(events) != PGRES_TUPLES_OK) {
        log_msg(LOG_DEBUG, "job metrics: sample failed: %s", PQerrorMessage(c));
        PQclear(jobs);
        PQclear(ticks);
        PQclear(events);
        return;
    }
    struct text t = {0};
    char a[80], b[40];
    add(&t, "# HELP tenantd_jobs Jobs in the database by type and status (queued: the queue "
            "depth).\n# TYPE tenantd_jobs gauge\n");
    for (int i = 0; i < PQntuples(jobs); i++)
        add(&t, "tenantd_jobs{type=\"%s\",status=\"%s\"} %s\n",
            label(PQgetvalue(jobs, i, 0), a, sizeof a), label(PQgetvalue(jobs, i, 1), b, sizeof b),
            PQgetvalue(jobs, i, 2));
    add(&t, "# HELP tenantd_job_attempts Attempts claimed (by any worker) of the jobs in the "
            "database, by type and status.\n# TYPE tenantd_job_attempts gauge\n");
    for (int i = 0; i < PQntuples(jobs); i++)
        add(&t, "tenantd_job_attempts{type=\"%s\",status=\"%s\"} %s\n",
            label(PQgetvalue(jobs, i, 0), a, sizeof a), label(PQgetvalue(jobs, i, 1), b, sizeof b),
            PQgetvalue(jobs, i, 3));
    add(&t, "# HELP tenantd_schedule_ticks Schedule ticks fired, by outcome.\n"
            "# TYPE tenantd_schedule_ticks gauge\n");
    for (int i = 0; i < PQntuples(ticks); i++)
        add(&t, "tenantd_schedule_ticks{outcome=\"%s\"} %s\n",
            label(PQgetvalue(ticks, i, 0), a, sizeof a), PQgetvalue(ticks, i, 1));
    add(&t, "# HELP tenantd_event_deliveries Event webhook deliveries, by status.\n"
            "# TYPE tenantd_event_deliveries gauge\n");
    for (int i = 0; i < PQntuples(events); i++)
        add(&t, "tenantd_event_deliveries{status=\"%s\"} %s\n",
            label(PQgetvalue(events, i, 0), a, sizeof a), PQgetvalue(events, i, 1));
    PQclear(jobs);
    PQclear(ticks);
    PQclear(events);
    if (t.oom) {
        free(t.p);
        return;
    }
    pthread_mutex_lock(&mu);
    free(sampled);
    sampled = t.p;
    pthread_mutex_unlock(&mu);
}

char *job_metrics_text(void)
{
    struct text t = {0};
    pthread_mutex_lock(&mu);
    if (sampled)
        add(&t, "%s", sampled);
    pthread_mutex_unlock(&mu);
    add(&t, "# HELP tenantd_worker_api_calls_total Worker API calls of this process, by "
            "operation and result.\n# TYPE tenantd_worker_api_calls_total counter\n");
    for (int op = 0; op < JOB_API__COUNT; op++)
        for (int ok = 0; ok < 2; ok++)
            add(&t, "tenantd_worker_api_calls_total{op=\"%s\",result=\"%s\"} %llu\n", api_names[op],
                ok ? "ok" : "refused",
                (unsigned long long)atomic_load_explicit(&api_calls[op][ok], memory_order_relaxed));
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    return t.p;
}

void job_metrics_free(void)
{
    pthread_mutex_lock(&mu);
    free(sampled);
    sampled = NULL;
    pthread_mutex_unlock(&mu);
}
