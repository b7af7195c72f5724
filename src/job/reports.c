/*
 * The handlers of records.export and credits.report (types.c lists them):
 * one read-only statement each, on the worker's blocking connection, in a
 * transaction bounded by the attempt's deadline. Apart from the type table
 * because they are the only handlers that read an org's data.
 */
#include "job/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

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

enum job_outcome job_export_run(struct job_run *run)
{
    const char *coll = json_string_value(json_object_get(run->payload, "collection"));
    json_t *m = json_object_get(run->payload, "max_records");
    char max[24];
    snprintf(max, sizeof max, "%lld",
             m ? (long long)json_integer_value(m) : (long long)JOB_EXPORT_MAX_DEFAULT);
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

enum job_outcome job_report_run(struct job_run *run)
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
