/*
 * The job-type table: what each type costs (from the configuration), how its
 * payload is checked at enqueue (422 with one entry per bad field), and the
 * handler a worker runs. Handlers run on worker threads with a blocking
 * libpq connection of their own, so they may block (within the attempt's
 * deadline); they never touch an event loop.
 *
 *   records.export   a collection of the org's records into the result, or
 *                    its count and checksum when larger than max_records
 *   credits.report   the org's ledger by day and type over a date range
 *   webhook.deliver  POST JSON to an allowed http(s):// URL, HMAC-SHA256 signed
 *   sleep, fail      test types (TENANTD_TEST_JOBS=1)
 *
 * This file is the enqueue side (the table, every type's payload check) and
 * the two test types' few-line handlers. The other handlers have files of
 * their own: reports.c (records.export, credits.report: they read the org's
 * data), webhook.c (webhook.deliver) over httpclient.c (its outbound
 * HTTP/1.1 client), email.c (email.send).
 */
#include "job/internal.h"
#include "job/httpclient.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/config.h"
#include "core/problem.h"
#include "job/email.h"
#include "record/record.h"

static void export_validate(json_t *p, json_t **errors);
static void report_validate(json_t *p, json_t **errors);
static void webhook_validate(json_t *p, json_t **errors);
static void sleep_validate(json_t *p, json_t **errors);
static enum job_outcome sleep_run(struct job_run *run);
static void fail_validate(json_t *p, json_t **errors);
static enum job_outcome fail_run(struct job_run *run);

static int64_t cost_export(void)
{
    return g_config->job_cost_records_export;
}
static int64_t cost_report(void)
{
    return g_config->job_cost_credits_report;
}
static int64_t cost_webhook(void)
{
    return g_config->job_cost_webhook_deliver;
}
static int64_t cost_sleep(void)
{
    return g_config->job_cost_sleep;
}
static int64_t cost_fail(void)
{
    return g_config->job_cost_fail;
}

static const struct job_type job_types[] = {
    {"records.export",
     "Exports a collection of the org's records into the job's result (payload: collection, "
     "max_records); larger collections give their count and a SHA-256 checksum only.",
     false, cost_export, export_validate, job_export_run},
    {"credits.report",
     "Credit usage by day and by transaction type over a date range (payload: from, to as "
     "YYYY-MM-DD, UTC, at most 366 days).",
     false, cost_report, report_validate, job_report_run},
    {"webhook.deliver",
     "POSTs a JSON body to an http:// or https:// URL on a host the server allows, signed with "
     "HMAC-SHA256 (header X-Tenantd-Signature: t=<unix time>,v1=<hex of HMAC(secret, "
     "t + \".\" + body)>); 2xx succeeds, 408/429/5xx and network errors retry (payload: url, "
     "secret, body).",
     false, cost_webhook, webhook_validate, job_webhook_run},
    {"email.send",
     "System job: sends one mail the server queued (invitations, password resets, email "
     "verification) over SMTP; never billed, retried like other jobs. Not accepted at "
     "POST /v1/jobs.",
     false, email_cost, email_validate, email_run},
    {"sleep", "Test job: waits payload.ms milliseconds (0..600000, default 0).", true, cost_sleep,
     sleep_validate, sleep_run},
    {"fail",
     "Test job: fails its first payload.fail_attempts attempts (every attempt when absent) with "
     "payload.message, then succeeds.",
     true, cost_fail, fail_validate, fail_run},
};
#define NTYPES (sizeof job_types / sizeof job_types[0])

static bool enabled(const struct job_type *t)
{
    return !t->test_only || (g_config && g_config->test_jobs);
}

const struct job_type *job_type_find(const char *type)
{
    for (size_t i = 0; i < NTYPES; i++)
        if (!strcmp(job_types[i].type, type) && enabled(&job_types[i]))
            return &job_types[i];
    return NULL;
}

/* Queued by the server only (email.send): not listed in GET /v1/job-types. */
static bool system_type(const struct job_type *t)
{
    return t->run == email_run;
}

const struct job_type *job_type_at(size_t i)
{
    for (size_t k = 0; k < NTYPES; k++)
        if (enabled(&job_types[k]) && !system_type(&job_types[k]) && i-- == 0)
            return &job_types[k];
    return NULL;
}

uint64_t job_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- payload checks ------------------------------------------------------ */

static void add_error(json_t **errors, const char *key, const char *message)
{
    char field[128];
    snprintf(field, sizeof field, "payload.%s", key);
    problem_add_error(errors, field, message);
}

/* Every member must be one of `known`: a typo is an error, not a default. */
static void known_fields(json_t *p, const char *const *known, json_t **errors)
{
    const char *key;
    json_t *v;
    json_object_foreach(p, key, v)
    {
        bool ok = false;
        for (const char *const *k = known; *k; k++)
            ok = ok || !strcmp(*k, key);
        if (!ok) {
            char field[160];
            snprintf(field, sizeof field, "payload.%.100s", key);
            problem_add_error(errors, field, "is not a field of this job type");
        }
    }
}

/* An optional integer member within [min, max]; *out keeps its default. */
static void int_member(json_t *p, const char *key, int64_t min, int64_t max, int64_t *out,
                       json_t **errors)
{
    json_t *v = json_object_get(p, key);
    if (!v)
        return;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char msg[96];
        snprintf(msg, sizeof msg, "must be an integer from %lld to %lld", (long long)min,
                 (long long)max);
        add_error(errors, key, msg);
        return;
    }
    *out = json_integer_value(v);
}

#define EXPORT_MAX_DEFAULT JOB_EXPORT_MAX_DEFAULT
#define EXPORT_MAX_LIMIT 10000

static void export_validate(json_t *p, json_t **errors)
{
    static const char *const known[] = {"collection", "max_records", NULL};
    known_fields(p, known, errors);
    json_t *c = json_object_get(p, "collection");
    if (!c)
        add_error(errors, "collection", "is required");
    else if (!json_is_string(c) || !record_collection_valid(json_string_value(c)))
        add_error(errors, "collection", "must be " RECORD_COLLECTION_RULE);
    int64_t m = EXPORT_MAX_DEFAULT;
    int_member(p, "max_records", 0, EXPORT_MAX_LIMIT, &m, errors);
}

/* "YYYY-MM-DD" of a real date -> days since 1970-01-01; -1 when not one. */
static long date_days(const char *s)
{
    int y, m, d;
    char tail;
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-' ||
        sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3)
        return -1;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)s[i]))
            return -1;
    if (y < 1970 || y > 9999 || m < 1 || m > 12 || d < 1)
        return -1;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[m - 1] + (m == 2 && leap))
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    return (long)(timegm(&tm) / 86400);
}

static void report_validate(json_t *p, json_t **errors)
{
    static const char *const known[] = {"from", "to", NULL};
    known_fields(p, known, errors);
    long days[2] = {-1, -1};
    const char *names[2] = {"from", "to"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(p, names[i]);
        if (!v)
            add_error(errors, names[i], "is required");
        else if (!json_is_string(v) || (days[i] = date_days(json_string_value(v))) < 0)
            add_error(errors, names[i], "must be a date YYYY-MM-DD");
    }
    if (days[0] >= 0 && days[1] >= 0) {
        if (days[1] < days[0])
            add_error(errors, "to", "must not be before from");
        else if (days[1] - days[0] > 365)
            add_error(errors, "to", "must be at most 366 days after from (inclusive)");
    }
}

/* An IPv4 literal that the worker would refuse anyway is refused at
 * enqueue (names are checked when they are resolved, at run time). */
static bool literal_ok(const char *host)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if ((g_config && g_config->webhook_allow_private) ||
        inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return true;
    return job_addr_public((const struct sockaddr *)&sa);
}

static void webhook_validate(json_t *p, json_t **errors)
{
    static const char *const known[] = {"url", "secret", "body", NULL};
    known_fields(p, known, errors);
    json_t *u = json_object_get(p, "url");
    struct job_http_url url;
    const char *why;
    if (!u)
        add_error(errors, "url", "is required");
    else if (!json_is_string(u) || job_http_url_parse(json_string_value(u), &url, &why) != 0)
        add_error(errors, "url", json_is_string(u) ? why : "must be a string");
    else if (!job_webhook_allowed(url.host, url.port))
        add_error(errors, "url", "names a host this server may not call (TENANTD_WEBHOOK_ALLOW)");
    else if (!literal_ok(url.host))
        add_error(errors, "url",
                  "names a non-public address (TENANTD_WEBHOOK_ALLOW_PRIVATE is off)");
    json_t *s = json_object_get(p, "secret");
    if (!s)
        add_error(errors, "secret", "is required");
    else if (!json_is_string(s) || json_string_length(s) < 16 || json_string_length(s) > 256)
        add_error(errors, "secret", "must be a string of 16..256 bytes");
}

static void sleep_validate(json_t *p, json_t **errors)
{
    static const char *const known[] = {"ms", NULL};
    known_fields(p, known, errors);
    int64_t ms = 0;
    int_member(p, "ms", 0, 600000, &ms, errors);
}

static void fail_validate(json_t *p, json_t **errors)
{
    static const char *const known[] = {"message", "fail_attempts", NULL};
    known_fields(p, known, errors);
    int64_t n = 0;
    int_member(p, "fail_attempts", 0, 25, &n, errors);
    json_t *m = json_object_get(p, "message");
    if (m && (!json_is_string(m) || json_string_length(m) > 500))
        add_error(errors, "message", "must be a string of at most 500 bytes");
}

/* ---- test types ------------------------------------------------------------ */

static enum job_outcome sleep_run(struct job_run *run)
{
    json_t *v = json_object_get(run->payload, "ms");
    int64_t ms = v ? json_integer_value(v) : 0;
    switch (job_run_wait(run, job_now_ns() + (uint64_t)ms * 1000000u)) {
    case JOB_WAIT_STOP:
        return JOB_STOPPED;
    case JOB_WAIT_DEADLINE:
        snprintf(run->error, sizeof run->error, "timed out");
        return JOB_RETRY;
    case JOB_WAIT_DONE:
        break;
    }
    char res[64];
    snprintf(res, sizeof res, "{\"slept_ms\":%lld}", (long long)ms);
    run->result = strdup(res);
    if (!run->result)
        abort();
    return JOB_OK;
}

static enum job_outcome fail_run(struct job_run *run)
{
    json_t *n = json_object_get(run->payload, "fail_attempts");
    if (!n || run->attempt <= json_integer_value(n)) {
        const char *m = json_string_value(json_object_get(run->payload, "message"));
        snprintf(run->error, sizeof run->error, "%s", m ? m : "failed on purpose");
        return JOB_RETRY;
    }
    char res[64];
    snprintf(res, sizeof res, "{\"attempt\":%d}", run->attempt);
    run->result = strdup(res);
    if (!run->result)
        abort();
    return JOB_OK;
}
