/*
 * `tenantd migrate up | down [N] [--tenant] | status [--json]`, and the
 * reports on a database's migration state: status for people and scripts,
 * the start-up check, and /ready's verdict.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/config.h"
#include "core/digits.h"
#include "db/migrate_internal.h"

/* ---- status and check ------------------------------------------------- */

/* What `migrate status` reports about the tenant track, from either source. */
struct tenant_stats {
    size_t total, current, behind, ahead, changed, unknown;
    size_t *have;  /* per tenant migration of the binary: schemas that applied it */
    bool recorded; /* from public.tenant_schema_versions (one query) */
};

/* One query over the recorded versions; 1 when some live schema is not
 * recorded (the caller then reads the schemas), 0, or -1. */
static int tenant_stats_recorded(struct mig_runner *r, struct tenant_stats *st)
{
    PGresult *res = mig_query(
        r->c,
        "SELECT v.version, count(*) FROM public.orgs o"
        " LEFT JOIN public.tenant_schema_versions v USING (schema_name)"
        " WHERE o.status <> 'deleted'"
        " AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = o.schema_name)"
        " GROUP BY 1",
        0, NULL, "reading the tenant schema versions", r->err, r->errlen);
    if (!res)
        return -1;
    int tl = r->ntm ? r->tm[r->ntm - 1].version : 0;
    int rc = 0;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        if (PQgetisnull(res, i, 0)) {
            rc = 1;
            break;
        }
        int v = atoi(PQgetvalue(res, i, 0));
        size_t n = (size_t)atol(PQgetvalue(res, i, 1));
        st->total += n;
        if (v == tl)
            st->current += n;
        else if (v < tl)
            st->behind += n;
        else
            st->ahead += n;
        for (size_t k = 0; k < r->ntm; k++)
            if (r->tm[k].version <= v)
                st->have[k] += n;
    }
    PQclear(res);
    st->recorded = rc == 0;
    return rc;
}

static void tenant_stats_read(const struct mig_runner *r, struct tenant_stats *st)
{
    for (size_t i = 0; i < r->tenants.n; i++) {
        const struct tenant *t = &r->tenants.t[i];
        st->total++;
        if (t->a.unknown)
            st->ahead++;
        else if (mig_tenant_current(t, r->ntm))
            st->current++;
        else
            st->behind++;
        st->changed += t->a.changed > 0;
        st->unknown += t->a.unknown > 0;
        for (size_t k = 0; k < r->ntm; k++)
            st->have[k] += mig_is_applied(&t->a, r->tm[k].version);
    }
}

static void status_json(const struct mig_runner *r, const PGresult *res,
                        const struct tenant_stats *st)
{
    json_t *cm = json_array();
    bool pending = false;
    for (size_t i = 0; i < r->ncm; i++) {
        const struct migration *m = &r->cm[i];
        int row = -1;
        for (int j = 0; res && j < PQntuples(res); j++)
            if (atoi(PQgetvalue(res, j, 0)) == m->version)
                row = j;
        json_t *o =
            json_pack("{s:i, s:s, s:s, s:b}", "version", m->version, "name", m->name, "state",
                      row < 0 ? "pending" : "applied", "compatible", m->compatible);
        if (row >= 0) {
            json_object_set_new(o, "applied_at", json_string(PQgetvalue(res, row, 3)));
            json_object_set_new(o, "changed",
                                json_boolean(strcmp(PQgetvalue(res, row, 2), m->checksum) != 0));
        }
        pending |= row < 0;
        json_array_append_new(cm, o);
    }
    for (int j = 0; res && j < PQntuples(res); j++) {
        int v = atoi(PQgetvalue(res, j, 0));
        if (v < 1 || (size_t)v > r->ncm)
            json_array_append_new(cm, json_pack("{s:i, s:s, s:s, s:s, s:b}", "version", v, "name",
                                                PQgetvalue(res, j, 1), "state", "unknown",
                                                "applied_at", PQgetvalue(res, j, 3), "compatible",
                                                PQgetvalue(res, j, 4)[0] == 't'));
    }
    json_t *tm = json_array();
    for (size_t i = 0; i < r->ntm; i++)
        json_array_append_new(tm,
                              json_pack("{s:i, s:s, s:I, s:I, s:b}", "version", r->tm[i].version,
                                        "name", r->tm[i].name, "applied", (json_int_t)st->have[i],
                                        "pending", (json_int_t)(st->total - st->have[i]),
                                        "compatible", r->tm[i].compatible));
    json_t *doc = json_pack(
        "{s:s, s:s, s:b, s:{s:i, s:o}, s:{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:o}}", "version",
        TENANTD_VERSION, "commit", config_build_commit(), "up_to_date", !pending && st->behind == 0,
        "control", "binary_version", r->ncm ? r->cm[r->ncm - 1].version : 0, "migrations", cm,
        "tenant", "binary_version", r->ntm ? r->tm[r->ntm - 1].version : 0, "schemas",
        (json_int_t)st->total, "current", (json_int_t)st->current, "behind", (json_int_t)st->behind,
        "ahead", (json_int_t)st->ahead, "changed", (json_int_t)st->changed, "unknown",
        (json_int_t)st->unknown, "recorded", st->recorded, "migrations", tm);
    char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(doc);
    fflush(stdout);
}

/* `migrate status [--json]`: every control migration with its state, then
 * how many tenant schemas have each tenant migration, from the versions
 * recorded in the control schema (one query; the schemas themselves only
 * when some are not recorded). Edited or unknown applied control
 * migrations are shown, not fatal: status is how one finds them. */
static int run_status(const char *conninfo, bool as_json, char *err, size_t errlen)
{
    struct mig_runner r = {.conninfo = conninfo,
                           .cli = true,
                           .tolerate = true,
                           .skip_tenants = true,
                           .err = err,
                           .errlen = errlen};
    int rc = mig_runner_open(&r, false);
    PGresult *res = NULL;
    struct tenant_stats st = {0};
    st.have = calloc(r.ntm ? r.ntm : 1, sizeof *st.have);
    if (!st.have)
        rc = mig_fail(err, errlen, "out of memory");
    if (rc == 0 && r.skip_tenants) {
        int k = tenant_stats_recorded(&r, &st);
        if (k < 0) {
            rc = -1;
        } else if (k > 0) {
            memset(&st, 0, offsetof(struct tenant_stats, have));
            memset(st.have, 0, (r.ntm ? r.ntm : 1) * sizeof *st.have);
            r.skip_tenants = false;
            rc = mig_tenants_read(r.c, r.tm, r.ntm, true, &r.tenants, err, errlen);
        }
    }
    if (rc == 0 && !st.recorded)
        tenant_stats_read(&r, &st);
    if (rc == 0 && (r.control.n || r.control.unknown || r.control.changed)) {
        res = mig_query(r.c,
                        "SELECT version, name, checksum, to_char(applied_at AT TIME ZONE 'UTC',"
                        " 'YYYY-MM-DD HH24:MI:SS') || ' UTC',"
                        " coalesce((pg_catalog.to_jsonb(m) ->> 'compatible')::boolean, false)"
                        " FROM public.schema_migrations m ORDER BY version",
                        0, NULL, "reading public.schema_migrations", err, errlen);
        if (!res)
            rc = -1;
    }
    if (rc == 0 && as_json) {
        status_json(&r, res, &st);
    } else if (rc == 0) {
        printf("control migrations (public):\n");
        for (size_t i = 0; i < r.ncm; i++) {
            const struct migration *m = &r.cm[i];
            int row = -1;
            for (int j = 0; res && j < PQntuples(res); j++)
                if (atoi(PQgetvalue(res, j, 0)) == m->version)
                    row = j;
            if (row < 0)
                printf("  %04d_%-30s pending\n", m->version, m->name);
            else
                printf("  %04d_%-30s applied %s%s\n", m->version, m->name, PQgetvalue(res, row, 3),
                       strcmp(PQgetvalue(res, row, 2), m->checksum)
                           ? "  CHANGED: the file differs from what was applied"
                           : "");
        }
        for (int j = 0; res && j < PQntuples(res); j++) {
            int v = atoi(PQgetvalue(res, j, 0));
            if (v < 1 || (size_t)v > r.ncm)
                printf("  %04d_%-30s applied %s  UNKNOWN: not in this binary%s\n", v,
                       PQgetvalue(res, j, 1), PQgetvalue(res, j, 3),
                       PQgetvalue(res, j, 4)[0] == 't' ? " (marked compatible)" : "");
        }
        printf("tenant migrations (%zu schema(s): %zu current, %zu behind%s):\n", st.total,
               st.current, st.behind, st.ahead ? ", some ahead" : "");
        for (size_t i = 0; i < r.ntm; i++)
            printf("  %04d_%-30s %zu applied, %zu pending\n", r.tm[i].version, r.tm[i].name,
                   st.have[i], st.total - st.have[i]);
        if (st.changed)
            printf("  CHANGED: %zu schema(s) applied a tenant migration whose file differs now\n",
                   st.changed);
        if (st.unknown)
            printf("  UNKNOWN: %zu schema(s) applied tenant migrations not in this binary\n",
                   st.unknown);
        if (st.recorded)
            printf("  (from public.tenant_schema_versions; `migrate up` verifies every schema's "
                   "checksums)\n");
        fflush(stdout);
    }
    free(st.have);
    PQclear(res);
    mig_runner_close(&r);
    return rc;
}

/* Every live org schema's recorded tenant version, summed up in one row:
 * total, unrecorded (no row yet: read those schemas themselves), behind
 * $1, the first of those, the newest version, and how many tenant
 * migrations newer than $1 up to that newest are marked compatible. */
static const char tenant_summary_sql[] =
    "SELECT count(*), count(*) FILTER (WHERE v.version IS NULL),"
    " count(*) FILTER (WHERE v.version < $1::int),"
    " min(o.schema_name) FILTER (WHERE v.version < $1::int),"
    " coalesce(max(v.version), 0),"
    " (SELECT count(*) FROM public.tenant_migrations tm WHERE tm.compatible"
    "   AND tm.version > $1::int AND tm.version <= max(v.version))"
    " FROM public.orgs o LEFT JOIN public.tenant_schema_versions v USING (schema_name)"
    " WHERE o.status <> 'deleted'"
    " AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = o.schema_name)";

struct tenant_summary {
    long total, unrecorded, behind, compatible_ahead;
    int newest;
    char first_behind[128];
};

static int tenant_summary(struct mig_runner *r, struct tenant_summary *ts)
{
    char latest[16];
    snprintf(latest, sizeof latest, "%d", r->ntm ? r->tm[r->ntm - 1].version : 0);
    const char *v[] = {latest};
    PGresult *res = mig_query(r->c, tenant_summary_sql, 1, v, "reading the tenant schema versions",
                              r->err, r->errlen);
    if (!res)
        return -1;
    ts->total = atol(PQgetvalue(res, 0, 0));
    ts->unrecorded = atol(PQgetvalue(res, 0, 1));
    ts->behind = atol(PQgetvalue(res, 0, 2));
    snprintf(ts->first_behind, sizeof ts->first_behind, "%s", PQgetvalue(res, 0, 3));
    ts->newest = atoi(PQgetvalue(res, 0, 4));
    ts->compatible_ahead = atol(PQgetvalue(res, 0, 5));
    PQclear(res);
    return 0;
}

int migrate_check(const char *conninfo, char *err, size_t errlen)
{
    struct mig_runner r = {.conninfo = conninfo,
                           .accept_ahead = true,
                           .skip_tenants = true,
                           .err = err,
                           .errlen = errlen};
    int rc = mig_runner_open(&r, false);
    int cl = r.ncm ? r.cm[r.ncm - 1].version : 0, tl = r.ntm ? r.tm[r.ntm - 1].version : 0;
    char control_found[160] = "", tenant_found[200] = "";
    if (rc == 0) {
        char list[256] = "";
        size_t pending = 0, len = 0;
        for (size_t i = 0; i < r.ncm; i++) {
            if (mig_is_applied(&r.control, r.cm[i].version))
                continue;
            if (len < sizeof list)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%04d_%s",
                                        pending ? ", " : "", r.cm[i].version, r.cm[i].name);
            pending++;
        }
        if (pending) {
            mig_fail(err, errlen, "control migrations pending: %s", list);
            rc = 1;
        } else if (r.control.ahead) {
            snprintf(control_found, sizeof control_found,
                     "control %04d, %zu compatible migration(s) ahead of this binary's %04d",
                     r.control.newest, r.control.ahead, cl);
        } else {
            snprintf(control_found, sizeof control_found, "control %04d", cl);
        }
    }
    struct tenant_summary ts = {0};
    if (rc == 0 && r.skip_tenants && tenant_summary(&r, &ts) != 0)
        rc = -1;
    if (rc == 0 && r.skip_tenants && ts.unrecorded > 0) {
        /* Schemas made some other way than signup or the runner: read them. */
        r.skip_tenants = false;
        if (mig_tenants_read(r.c, r.tm, r.ntm, false, &r.tenants, err, errlen) != 0)
            rc = -1;
    }
    if (rc == 0 && r.skip_tenants) {
        long ahead = ts.newest > tl ? ts.newest - tl : 0;
        if (ts.behind) {
            mig_fail(err, errlen, "%ld of %ld tenant schema(s) behind, e.g. %s", ts.behind,
                     ts.total, ts.first_behind);
            rc = 1;
        } else if (ahead && (ts.compatible_ahead < ahead || ahead > mig_ahead_max())) {
            mig_fail(err, errlen,
                     "org schemas are at tenant version %04d, %ld ahead of this binary's %04d, and "
                     "%s: deploy the newer tenantd",
                     ts.newest, ahead, tl,
                     ts.compatible_ahead < ahead
                         ? "not all of those migrations are marked compatible"
                         : "that is more than TENANTD_COMPATIBLE_AHEAD");
            rc = -1;
        } else {
            snprintf(tenant_found, sizeof tenant_found, "tenant %04d%s in %ld org schema(s)",
                     ahead ? ts.newest : tl, ahead ? " (compatible, ahead)" : "", ts.total);
        }
    } else if (rc == 0) {
        size_t behind = 0;
        const char *first = NULL;
        for (size_t i = 0; i < r.tenants.n; i++)
            if (!mig_tenant_current(&r.tenants.t[i], r.ntm)) {
                if (!first)
                    first = r.tenants.t[i].name;
                behind++;
            }
        if (behind) {
            mig_fail(err, errlen, "%zu of %zu tenant schema(s) behind, e.g. %s", behind,
                     r.tenants.n, first);
            rc = 1;
        } else {
            snprintf(tenant_found, sizeof tenant_found, "tenant %04d in %zu org schema(s)", tl,
                     r.tenants.n);
        }
    }
    if (rc == 0 && errlen)
        snprintf(err, errlen, "%s (%s; %s)",
                 r.control.ahead || strstr(tenant_found, "ahead") ? "accepted" : "current",
                 control_found, tenant_found);
    mig_runner_close(&r);
    return rc;
}

/* /ready's verdict on one row of MIGRATE_READY_SQL. */
int migrate_ready_verdict(const PGresult *res, char *msg, size_t msglen)
{
    int want = migrate_latest(TRACK_CONTROL);
    if (!res || PQntuples(res) != 1 || PQnfields(res) != 3 || PQgetisnull(res, 0, 0)) {
        snprintf(msg, msglen, "The database could not report its migration version.");
        return 1;
    }
    int have = atoi(PQgetvalue(res, 0, 0));
    int ahead = atoi(PQgetvalue(res, 0, 1));
    bool compatible = PQgetvalue(res, 0, 2)[0] == 't';
    if (have < want) {
        snprintf(msg, msglen,
                 "Migrations are behind: the database is at version %d, this server needs %d; "
                 "run `tenantd migrate up`.",
                 have, want);
        return 1;
    }
    if (ahead == 0) {
        snprintf(msg, msglen, "current");
        return 0;
    }
    if (compatible && ahead <= mig_ahead_max()) {
        snprintf(msg, msglen, "%d compatible migration(s) ahead", ahead);
        return 0;
    }
    snprintf(msg, msglen,
             "The database schema (version %d) is newer than this server's (%d)%s; deploy the "
             "newer server.",
             have, want,
             compatible ? " by more than TENANTD_COMPATIBLE_AHEAD compatible migrations"
                        : " by migrations not marked compatible");
    return 1;
}

/* ---- command line ----------------------------------------------------- */

static const char usage[] = "usage: tenantd migrate up | down [N] [--tenant] | status [--json]";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tenantd migrate: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s\n", usage);
    return 2;
}

/* N of `down N`: 1..10000, digits only. */
static int parse_steps(const char *s)
{
    int v = parse_digits(s, 5);
    return v >= 1 && v <= 10000 ? v : -1;
}

int migrate_cli(const char *conninfo, int argc, char **argv, int concurrency)
{
    /* main passes the words after "migrate"; tolerate the word itself too. */
    if (argc > 0 && !strcmp(argv[0], "migrate"))
        argc--, argv++;
    if (argc == 0)
        return usage_error("missing subcommand");
    char err[ERRBUF];
    int rc;
    if (!strcmp(argv[0], "status")) {
        bool as_json = argc > 1 && !strcmp(argv[1], "--json");
        if (argc > (as_json ? 2 : 1))
            return usage_error("unexpected argument '%s'", argv[as_json ? 2 : 1]);
        rc = run_status(conninfo, as_json, err, sizeof err);
    } else if (!strcmp(argv[0], "up")) {
        if (argc > 1)
            return usage_error("unexpected argument '%s'", argv[1]);
        rc = mig_run_up(conninfo, concurrency, true, err, sizeof err);
    } else if (!strcmp(argv[0], "down")) {
        int steps = 0;
        bool tenant = false;
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "--tenant") && !tenant)
                tenant = true;
            else if (steps == 0 && (steps = parse_steps(argv[i])) > 0)
                continue;
            else
                return usage_error("down: bad argument '%s' (N is a number from 1 to 10000)",
                                   argv[i]);
        }
        struct mig_runner r = {.conninfo = conninfo,
                               .concurrency = concurrency,
                               .cli = true,
                               .err = err,
                               .errlen = sizeof err};
        rc = mig_runner_open(&r, true);
        if (rc == 0)
            rc = tenant ? mig_tenants_down(&r, steps ? steps : 1)
                        : mig_control_down(&r, steps ? steps : 1);
        mig_runner_close(&r);
    } else {
        return usage_error("unknown subcommand '%s'", argv[0]);
    }
    if (rc != 0) {
        fprintf(stderr, "tenantd migrate: %s\n", err);
        return 1;
    }
    return 0;
}
