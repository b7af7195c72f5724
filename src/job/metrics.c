/*
 * The jobs section of /metrics (job.h). Jobs run in every process (and in
 * external workers), so the figures that matter are the database's: the
 * job listener thread samples them every SAMPLE_MS with one aggregate query
 * over the live jobs and keeps the rendered text; a scrape only copies it.
 * What grows for good (finished jobs, schedule ticks) is counted by the
 * process that did it instead, as are the worker API calls.
 */
#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "core/log.h"
#include "core/strbuf.h"
#include "job/internal.h"
#include "job/job.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *sampled; /* the database part, malloc'd */
static atomic_ullong api_calls[JOB_API__COUNT][2];
static atomic_ullong completion_sets; /* statements that carried completions together */
static atomic_ullong claim_sets;      /* statements that carried claims together */

static const char *const api_names[JOB_API__COUNT] = {"claim", "heartbeat", "complete", "fail"};

void job_metrics_api(enum job_api_op op, bool ok)
{
    atomic_fetch_add_explicit(&api_calls[op][ok ? 1 : 0], 1, memory_order_relaxed);
}

void job_metrics_completion_set(void)
{
    atomic_fetch_add_explicit(&completion_sets, 1, memory_order_relaxed);
}

void job_metrics_claim_set(void)
{
    atomic_fetch_add_explicit(&claim_sets, 1, memory_order_relaxed);
}

/* Per-type counters. Types are declared at run time, so the table grows as
 * types are seen, up to TYPES_MAX; later ones are counted as "other" so that
 * the series stay bounded. Names: job_ext_name_valid or built-in. */
#define TYPES_MAX 128
#define TYPE_LEN 65
struct type_counts {
    char type[TYPE_LEN];
    unsigned long long n[JOB_VIA__COUNT][JOB_COUNT__COUNT];
};
static pthread_mutex_t count_mu = PTHREAD_MUTEX_INITIALIZER;
static struct type_counts counts[TYPES_MAX + 1]; /* the last: "other" */
static size_t ncounts;

static const char *const via_names[JOB_VIA__COUNT] = {"in_process", "http"};
static const char *const fail_names[JOB_COUNT__COUNT] = {
    [JOB_COUNT_FAIL_RETRY] = "retry",
    [JOB_COUNT_FAIL_FAILED] = "failed",
    [JOB_COUNT_FAIL_CANCELLED] = "cancelled",
    [JOB_COUNT_FAIL_LOST] = "lease_lost",
};

/* The slot named `name` in a bounded table of max + 1 entries of `stride`
 * bytes, each starting with its name (name_len bytes): found, else taken
 * from the *used ones, else the last, named "other". Under count_mu. */
static size_t slot(void *table, size_t stride, size_t name_len, size_t *used, size_t max,
                   const char *name)
{
    char *base = table;
    size_t i = 0;
    while (i < *used && strcmp(base + i * stride, name) != 0)
        i++;
    if (i < *used)
        return i;
    if (*used < max && strlen(name) < name_len) {
        snprintf(base + i * stride, name_len, "%s", name);
        return (*used)++;
    }
    snprintf(base + max * stride, name_len, "other");
    return max;
}

void job_metrics_count(const char *type, enum job_via via, enum job_count what)
{
    assert(via < JOB_VIA__COUNT && what < JOB_COUNT__COUNT);
    pthread_mutex_lock(&count_mu);
    size_t i = slot(counts, sizeof counts[0], TYPE_LEN, &ncounts, TYPES_MAX, type);
    counts[i].n[via][what]++;
    pthread_mutex_unlock(&count_mu);
}

/* Schedule tick outcomes: the tick function's own words, a handful; any
 * beyond TICK_OUTCOMES_MAX are counted as "other". */
#define TICK_OUTCOMES_MAX 16
#define TICK_OUTCOME_LEN 48
static struct {
    char outcome[TICK_OUTCOME_LEN];
    unsigned long long n;
} ticks[TICK_OUTCOMES_MAX + 1]; /* the last: "other"; under count_mu */
static size_t nticks;

void job_metrics_schedule_ticks(const char *outcome, int n)
{
    if (n <= 0)
        return;
    pthread_mutex_lock(&count_mu);
    size_t i = slot(ticks, sizeof ticks[0], TICK_OUTCOME_LEN, &nticks, TICK_OUTCOMES_MAX, outcome);
    ticks[i].n += (unsigned long long)n;
    pthread_mutex_unlock(&count_mu);
}

enum job_count job_metrics_fail_outcome(const char *status)
{
    if (!status || !status[0])
        return JOB_COUNT_FAIL_LOST;
    if (!strcmp(status, "queued"))
        return JOB_COUNT_FAIL_RETRY;
    if (!strcmp(status, "cancelled"))
        return JOB_COUNT_FAIL_CANCELLED;
    return JOB_COUNT_FAIL_FAILED;
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
    /* Live jobs only, each part read through the partial index that holds
     * it: the jobs table keeps every job ever run, and counting it all by
     * status was a full scan every 5 s in every process (~200 ms of the
     * database's time at 1,000,000 jobs, growing for good). Finished jobs
     * are counted as they finish, by the *_total counters. */
    PGresult *jobs = PQexec(
        c, "SELECT type, status, count(*), coalesce(sum(attempts), 0), count(*) FILTER (WHERE ev)"
           " FROM (SELECT type, status, attempts, false AS ev FROM public.jobs"
           " WHERE status = 'queued' AND external"
           " UNION ALL SELECT type, status, attempts, type = 'webhook.deliver' AND payload ?"
           " 'event_id' FROM public.jobs WHERE status = 'queued' AND NOT external"
           " UNION ALL SELECT type, status, attempts, type = 'webhook.deliver' AND payload ?"
           " 'event_id' FROM public.jobs WHERE status = 'running') j"
           " GROUP BY type, status ORDER BY type, status");
    if (PQresultStatus(jobs) != PGRES_TUPLES_OK) {
        log_msg(LOG_DEBUG, "job metrics: sample failed: %s", PQerrorMessage(c));
        PQclear(jobs);
        return;
    }
    struct strbuf t = {0};
    char a[80], b[40];
    sb_printf(&t, "# HELP tenantd_jobs Jobs queued (the queue depth) and running, by type and "
                  "status.\n# TYPE tenantd_jobs gauge\n");
    for (int i = 0; i < PQntuples(jobs); i++)
        sb_printf(&t, "tenantd_jobs{type=\"%s\",status=\"%s\"} %s\n",
                  label(PQgetvalue(jobs, i, 0), a, sizeof a),
                  label(PQgetvalue(jobs, i, 1), b, sizeof b), PQgetvalue(jobs, i, 2));
    sb_printf(&t, "# HELP tenantd_job_attempts Attempts claimed (by any worker) of the jobs queued "
                  "and running, by type and status.\n# TYPE tenantd_job_attempts gauge\n");
    for (int i = 0; i < PQntuples(jobs); i++)
        sb_printf(&t, "tenantd_job_attempts{type=\"%s\",status=\"%s\"} %s\n",
                  label(PQgetvalue(jobs, i, 0), a, sizeof a),
                  label(PQgetvalue(jobs, i, 1), b, sizeof b), PQgetvalue(jobs, i, 3));
    sb_printf(&t, "# HELP tenantd_event_deliveries Event webhook deliveries queued and running, by "
                  "status.\n# TYPE tenantd_event_deliveries gauge\n");
    for (int i = 0; i < PQntuples(jobs); i++)
        if (strcmp(PQgetvalue(jobs, i, 0), "webhook.deliver") == 0)
            sb_printf(&t, "tenantd_event_deliveries{status=\"%s\"} %s\n",
                      label(PQgetvalue(jobs, i, 1), b, sizeof b), PQgetvalue(jobs, i, 4));
    PQclear(jobs);
    pthread_mutex_lock(&mu);
    free(sampled);
    sampled = t.s;
    pthread_mutex_unlock(&mu);
}

/* The per-type counters: a series for every type and worker kind seen. */
static void add_counts(struct strbuf *t)
{
    static const struct {
        const char *name, *help;
        enum job_count first, last;
    } fam[] = {
        {"tenantd_jobs_claimed_total", "Jobs claimed by this process's workers", JOB_COUNT_CLAIMED,
         JOB_COUNT_CLAIMED},
        {"tenantd_jobs_completed_total", "Jobs completed by this process's workers",
         JOB_COUNT_COMPLETED, JOB_COUNT_COMPLETED},
        {"tenantd_jobs_failed_total",
         "Failed attempts of this process's workers, by what became of the job",
         JOB_COUNT_FAIL_RETRY, JOB_COUNT_FAIL_LOST},
    };
    char a[80];
    pthread_mutex_lock(&count_mu);
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        sb_printf(t,
                  "# HELP %s %s (in_process: worker threads; http: the worker API), by type.\n"
                  "# TYPE %s counter\n",
                  fam[f].name, fam[f].help, fam[f].name);
        for (size_t i = 0; i <= TYPES_MAX; i++) {
            if (i >= ncounts && i < TYPES_MAX)
                continue;
            for (int via = 0; via < JOB_VIA__COUNT; via++) {
                bool seen = false;
                for (int w = 0; w < JOB_COUNT__COUNT; w++)
                    seen = seen || counts[i].n[via][w];
                if (!seen)
                    continue;
                label(counts[i].type, a, sizeof a);
                for (enum job_count w = fam[f].first; w <= fam[f].last; w++) {
                    if (fam[f].first == fam[f].last)
                        sb_printf(t, "%s{type=\"%s\",worker=\"%s\"} %llu\n", fam[f].name, a,
                                  via_names[via], counts[i].n[via][w]);
                    else
                        sb_printf(t, "%s{type=\"%s\",worker=\"%s\",outcome=\"%s\"} %llu\n",
                                  fam[f].name, a, via_names[via], fail_names[w],
                                  counts[i].n[via][w]);
                }
            }
        }
    }
    sb_printf(t, "# HELP tenantd_schedule_ticks_total Schedule ticks this process fired, by "
                 "outcome.\n# TYPE tenantd_schedule_ticks_total counter\n");
    for (size_t i = 0; i <= TICK_OUTCOMES_MAX; i++) /* slots never taken hold 0 */
        if (ticks[i].n)
            sb_printf(t, "tenantd_schedule_ticks_total{outcome=\"%s\"} %llu\n",
                      label(ticks[i].outcome, a, sizeof a), ticks[i].n);
    pthread_mutex_unlock(&count_mu);
}

char *job_metrics_counts_line(void)
{
    struct strbuf t = {0};
    sb_printf(&t, "%s", "");
    pthread_mutex_lock(&count_mu);
    for (size_t i = 0; i <= TYPES_MAX; i++) {
        if (i >= ncounts && i < TYPES_MAX)
            continue;
        for (int via = 0; via < JOB_VIA__COUNT; via++) {
            const unsigned long long *n = counts[i].n[via];
            if (!n[JOB_COUNT_CLAIMED] && !n[JOB_COUNT_COMPLETED])
                continue;
            sb_printf(&t, "%s%s(%s) claimed=%llu completed=%llu", t.len ? " " : "", counts[i].type,
                      via_names[via], n[JOB_COUNT_CLAIMED], n[JOB_COUNT_COMPLETED]);
            for (int w = JOB_COUNT_FAIL_RETRY; w <= JOB_COUNT_FAIL_LOST; w++)
                sb_printf(&t, " failed_%s=%llu", fail_names[w], n[w]);
        }
    }
    for (size_t i = 0; i <= TICK_OUTCOMES_MAX; i++)
        if (ticks[i].n)
            sb_printf(&t, "%sschedule_ticks(%s)=%llu", t.len ? " " : "", ticks[i].outcome,
                      ticks[i].n);
    pthread_mutex_unlock(&count_mu);
    return t.s;
}

char *job_metrics_text(void)
{
    struct strbuf t = {0};
    pthread_mutex_lock(&mu);
    if (sampled)
        sb_puts(&t, sampled);
    pthread_mutex_unlock(&mu);
    sb_printf(&t, "# HELP tenantd_worker_api_calls_total Worker API calls of this process, by "
                  "operation and result.\n# TYPE tenantd_worker_api_calls_total counter\n");
    for (int op = 0; op < JOB_API__COUNT; op++)
        for (int ok = 0; ok < 2; ok++)
            sb_printf(
                &t, "tenantd_worker_api_calls_total{op=\"%s\",result=\"%s\"} %llu\n", api_names[op],
                ok ? "ok" : "refused",
                (unsigned long long)atomic_load_explicit(&api_calls[op][ok], memory_order_relaxed));
    sb_printf(&t,
              "# HELP tenantd_worker_completion_sets_total Statements that carried this "
              "process's worker completions to the database (completions arriving together "
              "share one).\n# TYPE tenantd_worker_completion_sets_total counter\n"
              "tenantd_worker_completion_sets_total %llu\n",
              (unsigned long long)atomic_load_explicit(&completion_sets, memory_order_relaxed));
    sb_printf(&t,
              "# HELP tenantd_worker_claim_sets_total Statements that carried this process's "
              "worker claims to the database (claims of one org and types arriving together "
              "share one).\n# TYPE tenantd_worker_claim_sets_total counter\n"
              "tenantd_worker_claim_sets_total %llu\n",
              (unsigned long long)atomic_load_explicit(&claim_sets, memory_order_relaxed));
    add_counts(&t);
    return t.s;
}

void job_metrics_free(void)
{
    pthread_mutex_lock(&mu);
    free(sampled);
    sampled = NULL;
    pthread_mutex_unlock(&mu);
}
