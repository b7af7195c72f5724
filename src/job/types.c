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
 */
#include "job/internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>

#include "auth/tokens.h"
#include "core/config.h"
#include "core/list.h"
#include "core/log.h"
#include "core/problem.h"
#include "job/email.h"
#include "record/record.h"

static void export_validate(json_t *p, json_t **errors);
static enum job_outcome export_run(struct job_run *run);
static void report_validate(json_t *p, json_t **errors);
static enum job_outcome report_run(struct job_run *run);
static void webhook_validate(json_t *p, json_t **errors);
static enum job_outcome webhook_run(struct job_run *run);
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
     false, cost_export, export_validate, export_run},
    {"credits.report",
     "Credit usage by day and by transaction type over a date range (payload: from, to as "
     "YYYY-MM-DD, UTC, at most 366 days).",
     false, cost_report, report_validate, report_run},
    {"webhook.deliver",
     "POSTs a JSON body to an http:// or https:// URL on a host the server allows, signed with "
     "HMAC-SHA256 (header X-Tenantd-Signature: t=<unix time>,v1=<hex of HMAC(secret, "
     "t + \".\" + body)>); 2xx succeeds, 408/429/5xx and network errors retry (payload: url, "
     "secret, body).",
     false, cost_webhook, webhook_validate, webhook_run},
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

#define EXPORT_MAX_DEFAULT 1000
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

/* ---- webhook URLs and the allow list -------------------------------------- */

struct url {
    bool tls;
    char host[256];
    int port;
    char path[2048];
};

/* http(s)://host[:port][/path]: host a DNS name or IPv4 address; no user
 * info, no fragment, no spaces or control characters. 0, or -1 with *why. */
static int url_parse(const char *s, struct url *u, const char **why)
{
    *why = "must be an http:// or https:// URL of at most 2048 characters";
    if (strlen(s) > 2048)
        return -1;
    if (strncasecmp(s, "https://", 8) == 0)
        u->tls = true;
    else if (strncasecmp(s, "http://", 7) == 0)
        u->tls = false;
    else
        return -1;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= 0x20 || *c >= 0x7F || *c == '#')
            return -1;
    const char *h = s + (u->tls ? 8 : 7);
    size_t hl = strcspn(h, ":/?");
    if (hl == 0 || hl >= sizeof u->host) {
        *why = "must name a host";
        return -1;
    }
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '.' && h[i] != '-') {
            *why = "must name a host by DNS name or IPv4 address (no user info)";
            return -1;
        }
    memcpy(u->host, h, hl);
    u->host[hl] = '\0';
    const char *r = h + hl;
    u->port = u->tls ? 443 : 80;
    if (*r == ':') {
        char *end;
        long port = strtol(r + 1, &end, 10);
        if (end == r + 1 || port < 1 || port > 65535 || (*end && *end != '/' && *end != '?')) {
            *why = "must have a port from 1 to 65535";
            return -1;
        }
        u->port = (int)port;
        r = end;
    }
    snprintf(u->path, sizeof u->path, "%s%s", *r == '/' ? "" : "/", r);
    return 0;
}

struct allow_ud {
    const char *host;
    int port;
};

/* One TENANTD_WEBHOOK_ALLOW entry, "host" or "host:port": a match? An
 * entry without a port allows the web's ports only (443 and 80), never
 * every port of the host (an allowed name must not reach its SSH, database
 * or admin ports). */
static bool allow_matches(const char *s, size_t n, void *ud)
{
    const struct allow_ud *a = ud;
    char entry[300];
    if (n >= sizeof entry)
        return false;
    memcpy(entry, s, n);
    entry[n] = '\0';
    char *colon = strrchr(entry, ':');
    if (colon) {
        *colon = '\0';
        char *end;
        long eport = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || eport < 1 || eport > 65535)
            return false;
        return !strcasecmp(entry, a->host) && eport == a->port;
    }
    return !strcasecmp(entry, a->host) && (a->port == 443 || a->port == 80);
}

bool job_webhook_allowed(const char *host, int port)
{
    const char *list = g_config ? g_config->webhook_allow : NULL;
    struct allow_ud a = {host, port};
    return list && list_each(list, allow_matches, &a);
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
    struct url url;
    const char *why;
    if (!u)
        add_error(errors, "url", "is required");
    else if (!json_is_string(u) || url_parse(json_string_value(u), &url, &why) != 0)
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

/* ---- handlers that read the database ---------------------------------------- */

/* Runs one read-only statement in a transaction bounded by the attempt's
 * deadline (statement_timeout), with the org's schema first on the path.
 * Returns the first column of the single row as malloc'd text, or NULL with
 * run->error set; *retry says whether another attempt could help. */
static char *db_read(struct job_run *run, const char *sql, int n, const char *const *values,
                     bool *retry)
{
    *retry = true;
    uint64_t now = job_now_ns();
    if (now >= run->deadline_ns) {
        snprintf(run->error, sizeof run->error, "timed out");
        return NULL;
    }
    char timeout[32], *path = NULL, *out = NULL;
    snprintf(timeout, sizeof timeout, "%llu",
             (unsigned long long)((run->deadline_ns - now) / 1000000u + 1));
    char *ident = PQescapeIdentifier(run->conn, run->schema, strlen(run->schema));
    if (!ident) {
        snprintf(run->error, sizeof run->error, "database unavailable");
        return NULL;
    }
    size_t plen = strlen(ident) + 16;
    path = malloc(plen);
    if (!path)
        abort();
    snprintf(path, plen, "%s, public", ident);
    PQfreemem(ident);

    PGresult *r = PQexec(run->conn, "BEGIN READ ONLY");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok) {
        const char *v[] = {path, timeout};
        r = PQexecParams(run->conn,
                         "SELECT pg_catalog.set_config('search_path', $1, true),"
                         " pg_catalog.set_config('statement_timeout', $2, true)",
                         2, NULL, v, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
    }
    if (ok) {
        r = PQexecParams(run->conn, sql, n, NULL, values, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            out = strdup(PQgetvalue(r, 0, 0));
            if (!out)
                abort();
        } else {
            const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            if (state && !strcmp(state, "57014")) {
                snprintf(run->error, sizeof run->error, "timed out");
            } else if (state && (!strcmp(state, "3F000") || !strcmp(state, "42P01"))) {
                snprintf(run->error, sizeof run->error, "the org's data is gone");
                *retry = false;
            } else {
                log_msg(LOG_WARN, "job %s: query failed: %s", run->id, PQresultErrorMessage(r));
                snprintf(run->error, sizeof run->error, "database error");
            }
        }
        PQclear(r);
    } else {
        snprintf(run->error, sizeof run->error, "database unavailable");
    }
    r = PQexec(run->conn, "ROLLBACK"); /* read only: nothing to keep */
    PQclear(r);
    free(path);
    return out;
}

/* The checksum covers id, version and data of every record in id order, so
 * two exports agree exactly when the collections do. */
static const char export_sql[] =
    "SELECT json_build_object('collection', $1::text, 'count', count(*),"
    " 'checksum', encode(sha256(convert_to(coalesce(string_agg(r.id::text || ':' || r.version"
    " || ':' || r.data::text, E'\\n' ORDER BY r.id), ''), 'UTF8')), 'hex'),"
    " 'truncated', count(*) > $2::int,"
    " 'records', CASE WHEN count(*) <= $2::int THEN coalesce(json_agg(json_build_object("
    "'id', r.id, 'data', r.data, 'version', r.version,"
    " 'created_at', public.tenantd_ts(r.created_at), 'updated_at', public.tenantd_ts(r.updated_at))"
    " ORDER BY r.id), '[]'::json) END)::text"
    " FROM records r WHERE r.collection = $1";

static enum job_outcome export_run(struct job_run *run)
{
    const char *coll = json_string_value(json_object_get(run->payload, "collection"));
    json_t *m = json_object_get(run->payload, "max_records");
    char max[24];
    snprintf(max, sizeof max, "%lld",
             m ? (long long)json_integer_value(m) : (long long)EXPORT_MAX_DEFAULT);
    const char *v[] = {coll ? coll : "", max};
    bool retry;
    run->result = db_read(run, export_sql, 2, v, &retry);
    return run->result ? JOB_OK : retry ? JOB_RETRY : JOB_FAIL;
}

static const char report_sql[] =
    "WITH s AS (SELECT (t.created_at AT TIME ZONE 'UTC')::date AS day, t.type,"
    " count(*) AS n, sum(t.amount) AS amount FROM public.credit_transactions t"
    " WHERE t.org_id = $1::uuid AND t.created_at >= $2::date::timestamp AT TIME ZONE 'UTC'"
    " AND t.created_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC' GROUP BY 1, 2)"
    " SELECT json_build_object('from', $2::text, 'to', $3::text,"
    " 'days', coalesce((SELECT json_agg(json_build_object('date', to_char(s.day, 'YYYY-MM-DD'),"
    " 'type', s.type, 'count', s.n, 'amount', s.amount) ORDER BY s.day, s.type) FROM s),"
    " '[]'::json),"
    " 'totals', coalesce((SELECT json_object_agg(x.type, json_build_object('count', x.n,"
    " 'amount', x.amount) ORDER BY x.type) FROM (SELECT s.type, sum(s.n) AS n,"
    " sum(s.amount) AS amount FROM s GROUP BY s.type) x), '{}'::json))::text";

static enum job_outcome report_run(struct job_run *run)
{
    const char *v[] = {run->org_id, json_string_value(json_object_get(run->payload, "from")),
                       json_string_value(json_object_get(run->payload, "to"))};
    if (!v[1] || !v[2]) {
        snprintf(run->error, sizeof run->error, "payload lacks from/to");
        return JOB_FAIL;
    }
    bool retry;
    run->result = db_read(run, report_sql, 3, v, &retry);
    return run->result ? JOB_OK : retry ? JOB_RETRY : JOB_FAIL;
}

/* ---- webhook.deliver: a small blocking HTTP/1.1 client --------------------- */

static int remaining_ms(uint64_t deadline)
{
    uint64_t now = job_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now) / 1000000u) + 1;
}

/* Whether an address is on the public Internet: not loopback, private
 * (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254),
 * CGNAT, multicast, documentation, reserved, or an IPv6 form that embeds
 * an IPv4 address (mapped, NAT64, 6to4, Teredo), which could lead back to
 * any of those. */
static bool ipv4_public(const unsigned char a[4])
{
    uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    static const struct {
        uint32_t net, mask;
    } blocked[] = {
        {0x00000000u, 0xff000000u}, /* 0.0.0.0/8 this network */
        {0x0a000000u, 0xff000000u}, /* 10/8 */
        {0x64400000u, 0xffc00000u}, /* 100.64/10 CGNAT */
        {0x7f000000u, 0xff000000u}, /* 127/8 loopback */
        {0xa9fe0000u, 0xffff0000u}, /* 169.254/16 link-local */
        {0xac100000u, 0xfff00000u}, /* 172.16/12 */
        {0xc0000000u, 0xffffff00u}, /* 192.0.0/24 IETF */
        {0xc0000200u, 0xffffff00u}, /* 192.0.2/24 documentation */
        {0xc0a80000u, 0xffff0000u}, /* 192.168/16 */
        {0xc6120000u, 0xfffe0000u}, /* 198.18/15 benchmarking */
        {0xc6336400u, 0xffffff00u}, /* 198.51.100/24 documentation */
        {0xcb007100u, 0xffffff00u}, /* 203.0.113/24 documentation */
        {0xe0000000u, 0xe0000000u}, /* 224/3: multicast, reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof blocked / sizeof blocked[0]; i++)
        if ((v & blocked[i].mask) == blocked[i].net)
            return false;
    return true;
}

bool job_addr_public(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_public((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->sa_family != AF_INET6)
        return false;
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if ((a[0] & 0xe0) != 0x20) /* only 2000::/3 is global unicast */
        return false;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) /* 2001:db8::/32 */
        return false;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) /* 2001::/32 Teredo */
        return false;
    if (a[0] == 0x20 && a[1] == 0x02) /* 2002::/16 6to4 */
        return false;
    return true;
}

/*
 * Connects to one of host:port's addresses before deadline; fd or -1 with
 * the reason in err. The name is resolved once, every address is checked
 * (non-public ones are skipped unless TENANTD_WEBHOOK_ALLOW_PRIVATE), and
 * the socket connects to the very address checked: a name that resolves
 * differently the next time (DNS rebinding) cannot slip an internal
 * address past the check. Connection failures all read the same ("cannot
 * connect"): refused, unreachable or timed out would tell a tenant which
 * ports of an allowed host are open.
 */
static int connect_to(const char *host, int port, uint64_t deadline, bool *refused, char *err,
                      size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    *refused = false;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s", host);
        return -1;
    }
    bool allow_private = g_config && g_config->webhook_allow_private;
    int fd = -1, tried = 0;
    for (ai = res; ai && fd < 0; ai = ai->ai_next) {
        if (!allow_private && !job_addr_public(ai->ai_addr))
            continue;
        tried++;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (poll(&pfd, 1, remaining_ms(deadline)) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    if (tried == 0) {
        *refused = true;
        snprintf(err, errlen,
                 "host %s resolves to no public address (loopback, private and link-local "
                 "addresses are refused; TENANTD_WEBHOOK_ALLOW_PRIVATE)",
                 host);
    } else {
        snprintf(err, errlen, "cannot connect to %s:%d", host, port);
    }
    return -1;
}

/* ---- webhook.deliver over TLS ---------------------------------------------- */

/* One client context for every worker thread (an SSL_CTX may be shared once
 * set up): the system's CAs plus TENANTD_WEBHOOK_CA_FILE, TLS 1.2 at least,
 * the peer's certificate and name always verified. */
static struct {
    pthread_once_t once;
    SSL_CTX *ctx;
    char err[300];
} tls = {.once = PTHREAD_ONCE_INIT};

static void tls_init(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c) {
        snprintf(tls.err, sizeof tls.err, "cannot make a TLS context");
        return;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    /* A receiver that closes after its answer without close_notify is the
     * norm for "Connection: close"; the answer is complete by then. */
    SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_default_verify_paths(c); /* no system store: the CA file alone */
    const char *ca = g_config ? g_config->webhook_ca_file : NULL;
    if (ca && SSL_CTX_load_verify_locations(c, ca, NULL) != 1) {
        char e[160];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        ERR_clear_error();
        snprintf(tls.err, sizeof tls.err, "cannot load TENANTD_WEBHOOK_CA_FILE %s: %s", ca, e);
        SSL_CTX_free(c);
        return;
    }
    ERR_clear_error();
    tls.ctx = c;
}

static SSL_CTX *tls_ctx(void)
{
    pthread_once(&tls.once, tls_init);
    return tls.ctx;
}

int job_webhook_tls_check(void)
{
    if (tls_ctx())
        return 0;
    log_msg(LOG_ERROR, "webhook.deliver: %s", tls.err);
    return -1;
}

/* A webhook's connection: plain TCP, or TLS over it. */
struct wconn {
    int fd;
    SSL *ssl;
};

/* Waits, until deadline, for what the last TLS call wanted; 0, or -1. */
static int tls_wait(int fd, int want, uint64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
    int ms = remaining_ms(deadline);
    return ms > 0 && poll(&pfd, 1, ms) == 1 ? 0 : -1;
}

/* TLS handshake with u's host, its certificate checked against the name
 * (or the IPv4 address) in the URL. 0, or -1 with the reason in err. */
static int tls_handshake(struct wconn *c, const struct url *u, uint64_t deadline, char *err,
                         size_t errlen)
{
    SSL_CTX *ctx = tls_ctx();
    if (!ctx) {
        snprintf(err, errlen, "%s", tls.err);
        return -1;
    }
    c->ssl = SSL_new(ctx);
    struct in_addr ip;
    bool ok = c->ssl && SSL_set_fd(c->ssl, c->fd) == 1;
    if (ok && inet_pton(AF_INET, u->host, &ip) == 1)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->host) == 1;
    else if (ok) /* SNI is for names only */
        ok = SSL_set_tlsext_host_name(c->ssl, u->host) == 1 && SSL_set1_host(c->ssl, u->host) == 1;
    if (!ok) {
        ERR_clear_error();
        snprintf(err, errlen, "cannot set up TLS for %s", u->host);
        return -1;
    }
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (tls_wait(c->fd, e, deadline) == 0)
                continue;
            snprintf(err, errlen, "TLS handshake with %s:%d timed out", u->host, u->port);
            return -1;
        }
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            snprintf(err, errlen, "TLS: the certificate of %s:%d is not trusted: %s", u->host,
                     u->port, X509_verify_cert_error_string(v));
        } else {
            char why[160] = "the connection was closed";
            unsigned long le = ERR_get_error();
            if (le)
                ERR_error_string_n(le, why, sizeof why);
            snprintf(err, errlen, "TLS handshake with %s:%d failed: %s", u->host, u->port, why);
        }
        ERR_clear_error();
        return -1;
    }
}

static int send_all(struct wconn *c, const char *p, size_t n, uint64_t deadline)
{
    while (n > 0 && c->ssl) {
        ERR_clear_error();
        int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
            tls_wait(c->fd, e, deadline) != 0) {
            ERR_clear_error();
            return -1;
        }
    }
    int fd = c->fd;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, remaining_ms(deadline)) != 1)
            return -1;
    }
    return 0;
}

/* Some bytes: > 0 read, 0 the peer closed (or failed), -1 the deadline
 * passed. */
static ssize_t recv_some(struct wconn *c, char *buf, size_t cap, uint64_t deadline)
{
    for (;;) {
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
            if (r > 0)
                return r;
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                ERR_clear_error();
                return 0;
            }
            if (tls_wait(c->fd, e, deadline) != 0)
                return -1;
            continue;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int ms = remaining_ms(deadline);
        if (ms <= 0 || poll(&pfd, 1, ms) != 1)
            return -1;
        ssize_t r = recv(c->fd, buf, cap, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        return r < 0 ? 0 : r;
    }
}

/* Reads until the end of the response's status line and headers (or the
 * peer closes); returns the status code, or -1. */
static int read_status(struct wconn *c, uint64_t deadline)
{
    char buf[8192];
    size_t len = 0;
    while (len < sizeof buf - 1) {
        ssize_t r = recv_some(c, buf + len, sizeof buf - 1 - len, deadline);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, "\r\n"))
            break; /* the status line is all we need */
    }
    buf[len] = '\0';
    int major, minor, status;
    if (sscanf(buf, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 || status > 599)
        return -1;
    return status;
}

static enum job_outcome webhook_run(struct job_run *run)
{
    const char *u = json_string_value(json_object_get(run->payload, "url"));
    const char *secret = json_string_value(json_object_get(run->payload, "secret"));
    struct url url;
    const char *why;
    if (!u || !secret || url_parse(u, &url, &why) != 0) {
        snprintf(run->error, sizeof run->error, "bad payload");
        return JOB_FAIL;
    }
    /* Checked again here: this worker's allow list is the one that counts,
     * and a refused host is never connected to. */
    if (!job_webhook_allowed(url.host, url.port)) {
        snprintf(run->error, sizeof run->error,
                 "host %s:%d is not allowed by this worker's TENANTD_WEBHOOK_ALLOW", url.host,
                 url.port);
        return JOB_FAIL;
    }
    json_t *b = json_object_get(run->payload, "body"), *empty = NULL;
    if (!b)
        b = empty = json_object();
    char *body = json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(empty);
    if (!body)
        abort();

    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    size_t slen = strlen(ts) + 1 + strlen(body);
    char *signed_text = malloc(slen + 1);
    if (!signed_text)
        abort();
    snprintf(signed_text, slen + 1, "%s.%s", ts, body);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)signed_text, slen, mac,
         &maclen);
    free(signed_text);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);

    /* Event deliveries (events.c) name their event: receivers drop a
     * retried delivery of an event they already have. */
    const char *event = json_string_value(json_object_get(run->payload, "event_id"));
    char event_h[64] = "";
    if (event && token_uuid_valid(event, strlen(event)))
        snprintf(event_h, sizeof event_h, "X-Tenantd-Event: %s\r\n", event);

    char trace_h[TRACE_HEADERS_MAX] = "";
    job_trace_headers(run, trace_h, sizeof trace_h);

    size_t blen = strlen(body);
    size_t hcap = strlen(url.path) + strlen(url.host) + 2 * maclen + 576 + sizeof trace_h;
    char *head = malloc(hcap);
    if (!head)
        abort();
    char port[8] = ""; /* the scheme's own port goes unsaid, as browsers do */
    if (url.port != (url.tls ? 443 : 80))
        snprintf(port, sizeof port, ":%d", url.port);
    int hlen = snprintf(head, hcap,
                        "POST %s HTTP/1.1\r\nHost: %s%s\r\nUser-Agent: tenantd-webhook/1\r\n"
                        "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                        "X-Tenantd-Signature: t=%s,v1=%s\r\nX-Tenantd-Job: %s\r\n"
                        "X-Tenantd-Attempt: %d\r\n%s%sConnection: close\r\n\r\n",
                        url.path, url.host, port, blen, ts, hex, run->id, run->attempt, event_h,
                        trace_h);

    uint64_t deadline = job_now_ns() + (uint64_t)g_config->webhook_timeout_ms * 1000000u;
    if (deadline > run->deadline_ns)
        deadline = run->deadline_ns;
    enum job_outcome out = JOB_RETRY;
    bool refused = false;
    struct wconn c = {
        connect_to(url.host, url.port, deadline, &refused, run->error, sizeof run->error), NULL};
    if (refused) { /* this worker's policy: no contact was made, refunded */
        free(head);
        free(body);
        return JOB_FAIL;
    }
    /* From here on a failure is the receiver's (its name, its address, its
     * certificate, its answer or its silence): the delivery was attempted,
     * so the cost is not refunded (SECURITY.md, 10.7). */
    run->keep_charge = true;
    if (c.fd >= 0 &&
        (!url.tls || tls_handshake(&c, &url, deadline, run->error, sizeof run->error) == 0)) {
        int status = -1;
        if (send_all(&c, head, (size_t)hlen, deadline) == 0 &&
            send_all(&c, body, blen, deadline) == 0)
            status = read_status(&c, deadline);
        if (status < 0) {
            snprintf(run->error, sizeof run->error, "no HTTP answer from %s:%d in time", url.host,
                     url.port);
        } else {
            char res[96];
            snprintf(res, sizeof res, "{\"status\":%d,\"attempt\":%d}", status, run->attempt);
            run->result = strdup(res);
            if (!run->result)
                abort();
            if (status >= 200 && status < 300) {
                out = JOB_OK;
            } else {
                snprintf(run->error, sizeof run->error, "the receiver answered %d", status);
                out = (status == 408 || status == 429 || status >= 500) ? JOB_RETRY : JOB_FAIL;
            }
        }
    }
    if (c.ssl) {
        SSL_shutdown(c.ssl); /* close_notify if it fits; never waited for */
        SSL_free(c.ssl);
        ERR_clear_error();
    }
    if (c.fd >= 0)
        close(c.fd);
    free(head);
    free(body);
    return out;
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
