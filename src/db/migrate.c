/*
 * The migration runner: loads the migrations compiled into the binary,
 * applies or reverts them with blocking libpq (command line and start-up
 * only, never on an event loop). Loading lives in migrate_load.c, the
 * tenant schemas in migrate_tenant.c, the command line and status reports
 * in migrate_cli.c.
 *
 * Layout in the database: public.schema_migrations records the control
 * track; <tenant>.schema_migrations records the tenant track of each org
 * schema. A session advisory lock on the control connection serialises
 * whole runs across processes. Control migrations commit one by one; each
 * tenant schema gets all its pending migrations in one transaction, so a
 * crash leaves every schema fully migrated or untouched and a rerun resumes.
 *
 * Migration files must not contain their own BEGIN/COMMIT: the runner owns
 * the transaction, and a COMMIT inside a file would break that guarantee.
 */
#include "db/migrate.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "db/migrate_internal.h"

/* Key of the session-level advisory lock that one run holds from start to
 * end; any fixed bigint works as long as every tenantd uses the same. */
#define LOCK_KEY "7346519082413377"

const char *const mig_track_dir[2] = {[TRACK_CONTROL] = "control", [TRACK_TENANT] = "tenant"};

int mig_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* libpq messages end in newlines and indent hints with tabs; one line reads
 * better in a log and in a terminal. */
void mig_one_line(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r')
            *p = ' ';
    size_t n = strlen(s);
    while (n && s[n - 1] == ' ')
        s[--n] = '\0';
}

/* ---- libpq helpers ---------------------------------------------------- */

/* Warnings from migrations matter; NOTICEs ("already exists, skipping") do not. */
static void notice_receiver(void *arg, const PGresult *res)
{
    (void)arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev && (!strcmp(sev, "NOTICE") || !strcmp(sev, "DEBUG") || !strcmp(sev, "LOG") ||
                !strcmp(sev, "INFO")))
        return;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
    mig_one_line(msg);
    log_msg(LOG_WARN, "database: %s", msg);
}

PGconn *mig_connect(const char *conninfo, char *err, size_t errlen)
{
    const char *const keys[] = {"fallback_application_name", "dbname", NULL};
    const char *const vals[] = {"tenantd migrate", conninfo, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c) {
        mig_fail(err, errlen, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        mig_one_line(msg);
        mig_fail(err, errlen, "cannot connect to the database: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeReceiver(c, notice_receiver, NULL);
    return c;
}

/* Line of the 1-based character `pos` in text (UTF-8). */
static int line_of(const char *text, long pos)
{
    int line = 1;
    long ch = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p & 0xC0) == 0x80)
            continue;
        if (++ch >= pos)
            break;
        if (*p == '\n')
            line++;
    }
    return line;
}

/* A failed result as one line: severity, message, detail, and the line in
 * `sql` when the server gave a position. */
static void result_error(PGconn *c, const PGresult *res, const char *sql, char *out, size_t outlen)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!primary) {
        snprintf(out, outlen, "%s", PQerrorMessage(c));
        mig_one_line(out);
        if (!*out)
            snprintf(out, outlen, "unexpected result from the database");
        return;
    }
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
    char where[32] = "";
    if (pos && sql)
        snprintf(where, sizeof where, " (line %d)", line_of(sql, strtol(pos, NULL, 10)));
    snprintf(out, outlen, "%s: %s%s%s%s", sev ? sev : "ERROR", primary, detail ? "; " : "",
             detail ? detail : "", where);
    mig_one_line(out);
}

/* Runs sql (simple protocol, may hold several statements); 0 on success. */
int mig_exec(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(res);
        return 0;
    }
    char msg[ERRBUF];
    result_error(c, res, sql, msg, sizeof msg);
    PQclear(res);
    return mig_fail(err, errlen, "%s: %s", what, msg);
}

/* One parameterised statement; the result (owned by the caller) or NULL. */
PGresult *mig_query(PGconn *c, const char *sql, int n, const char *const *vals, const char *what,
                    char *err, size_t errlen)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    char msg[ERRBUF];
    result_error(c, res, NULL, msg, sizeof msg);
    PQclear(res);
    mig_fail(err, errlen, "%s: %s", what, msg);
    return NULL;
}

void mig_rollback(PGconn *c)
{
    PQclear(PQexec(c, "ROLLBACK"));
}

/* before || "schema" || after, malloc'd. Schema names reach SQL only
 * through PQescapeIdentifier. NULL with err on failure. */
char *mig_with_schema(PGconn *c, const char *schema, const char *before, const char *after,
                      char *err, size_t errlen)
{
    char *q = PQescapeIdentifier(c, schema, strlen(schema));
    if (!q) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        mig_one_line(msg);
        mig_fail(err, errlen, "bad schema name: %s", msg);
        return NULL;
    }
    size_t a = strlen(before), b = strlen(q), d = strlen(after);
    char *s = malloc(a + b + d + 1);
    if (s) {
        memcpy(s, before, a);
        memcpy(s + a, q, b);
        memcpy(s + a + b, after, d + 1);
    } else {
        mig_fail(err, errlen, "out of memory");
    }
    PQfreemem(q);
    return s;
}

/* Sets the transaction's search_path to "<schema>", public. */
int mig_set_search_path(PGconn *c, const char *schema, char *err, size_t errlen)
{
    char *path = mig_with_schema(c, schema, "", ", public", err, errlen);
    if (!path)
        return -1;
    const char *v[] = {path};
    PGresult *r = mig_query(c, "SELECT pg_catalog.set_config('search_path', $1, true)", 1, v,
                            "setting search_path", err, errlen);
    free(path);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* Records m in a schema_migrations (applied: sql takes $1 version, $2 name,
 * $3 checksum) or forgets it (reverted: sql takes $1 version only). */
int mig_record(PGconn *c, const char *sql, const struct migration *m, bool applied, char *err,
               size_t errlen)
{
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *v[] = {ver, m->name, m->checksum};
    PGresult *r =
        mig_query(c, sql, applied ? 3 : 1, v,
                  applied ? "recording the migration" : "forgetting the migration", err, errlen);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* ---- what a schema has applied ---------------------------------------- */

/* How many compatible migrations ahead a binary accepts. */
int mig_ahead_max(void)
{
    return g_config ? (int)g_config->compatible_ahead : 3;
}

/* Fills a from rows (version, checksum[, compatible]) and checks each
 * against m: an unknown version or a changed file is an error naming it,
 * unless `tolerate` (status), which counts them instead. With
 * `accept_ahead` (the start-up check), newer versions marked compatible are
 * counted in a->ahead, and more than mig_ahead_max() of them is the error. */
int mig_check_applied(const PGresult *rows, enum migration_track t, const char *where,
                      const struct migration *m, size_t nm, bool tolerate, bool accept_ahead,
                      struct applied *a, char *err, size_t errlen)
{
    int nr = PQntuples(rows);
    a->versions = nr ? malloc((size_t)nr * sizeof *a->versions) : NULL;
    a->n = a->unknown = a->changed = a->ahead = 0;
    a->newest = 0;
    if (nr && !a->versions)
        return mig_fail(err, errlen, "out of memory");
    for (int i = 0; i < nr; i++) {
        int v = atoi(PQgetvalue(rows, i, 0));
        const char *sum = PQgetvalue(rows, i, 1);
        if (v > a->newest)
            a->newest = v;
        if ((v < 1 || (size_t)v > nm) && tolerate) {
            a->unknown++;
            continue;
        }
        if (v > (int)nm && accept_ahead && PQnfields(rows) > 2 &&
            PQgetvalue(rows, i, 2)[0] == 't') {
            if ((int)++a->ahead > mig_ahead_max())
                return mig_fail(
                    err, errlen,
                    "%s is %zu or more compatible migrations ahead of this binary (it "
                    "knows up to %04d; TENANTD_COMPATIBLE_AHEAD is %d): deploy the newer "
                    "tenantd",
                    where, a->ahead, nm ? m[nm - 1].version : 0, mig_ahead_max());
            continue;
        }
        if (v < 1 || (size_t)v > nm)
            return mig_fail(err, errlen,
                            "%s has %s migration %04d applied, which this binary does not have "
                            "(it knows up to %04d)%s: run a newer tenantd",
                            where, mig_track_dir[t], v, nm ? m[nm - 1].version : 0,
                            accept_ahead ? " and which is not marked compatible" : "");
        const struct migration *x = &m[v - 1];
        if (strcmp(sum, x->checksum) && tolerate)
            a->changed++;
        else if (strcmp(sum, x->checksum))
            return mig_fail(err, errlen,
                            "migrations/%s/%04d_%s.up.sql differs from the one applied in %s "
                            "(checksum mismatch): an applied migration must not be edited; restore "
                            "it and add a new migration instead",
                            mig_track_dir[t], x->version, x->name, where);
        assert(a->n < (size_t)nr); /* one slot per row */
        a->versions[a->n++] = v;
    }
    return 0;
}

bool mig_is_applied(const struct applied *a, int version)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->versions[i] == version)
            return true;
    return false;
}

/* ---- a run ------------------------------------------------------------ */

__attribute__((format(printf, 2, 3))) void mig_say(const struct mig_runner *r, const char *fmt, ...)
{
    char buf[ERRBUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (r->cli) {
        printf("%s\n", buf);
        fflush(stdout);
    } else {
        log_msg(LOG_INFO, "%s", buf);
    }
}

double mig_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Connects, loads the embedded migrations, and (when `lock`) takes the
 * advisory lock and makes public.schema_migrations. Then reads what control
 * and every tenant schema have applied, checking every checksum: any
 * mismatch fails here, before anything changes. */
int mig_runner_open(struct mig_runner *r, bool lock)
{
    if (mig_builtin(TRACK_CONTROL, &r->cm, &r->ncm, r->err, r->errlen) ||
        mig_builtin(TRACK_TENANT, &r->tm, &r->ntm, r->err, r->errlen))
        return -1;
    r->c = mig_connect(r->conninfo, r->err, r->errlen);
    if (!r->c)
        return -1;
    if (lock) {
        PGresult *res = mig_query(r->c, "SELECT pg_try_advisory_lock(" LOCK_KEY ")", 0, NULL,
                                  "taking the migration lock", r->err, r->errlen);
        if (!res)
            return -1;
        bool got = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (!got) {
            mig_say(r, "another migration run holds the lock; waiting for it to finish");
            res = mig_query(r->c, "SELECT pg_advisory_lock(" LOCK_KEY ")", 0, NULL,
                            "waiting for the migration lock", r->err, r->errlen);
            if (!res)
                return -1;
            PQclear(res);
        }
        if (mig_exec(r->c, "CREATE TABLE IF NOT EXISTS public.schema_migrations" MIGRATIONS_COLUMNS,
                     "creating public.schema_migrations", r->err, r->errlen))
            return -1;
    } else {
        PGresult *res =
            mig_query(r->c, "SELECT pg_catalog.to_regclass('public.schema_migrations') IS NULL", 0,
                      NULL, "looking for public.schema_migrations", r->err, r->errlen);
        if (!res)
            return -1;
        bool missing = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (missing) {
            r->skip_tenants = false; /* nothing recorded to read either */
            return 0;                /* nothing applied anywhere: no orgs table either */
        }
    }
    /* `compatible` through to_jsonb: the column exists only from control
     * 0009 on, and this must read databases before and after it. */
    PGresult *res =
        mig_query(r->c,
                  "SELECT version, checksum,"
                  " coalesce((pg_catalog.to_jsonb(m) ->> 'compatible')::boolean, false),"
                  " pg_catalog.to_regclass('public.tenant_schema_versions') IS NOT NULL"
                  " FROM public.schema_migrations m ORDER BY version",
                  0, NULL, "reading public.schema_migrations", r->err, r->errlen);
    if (!res)
        return -1;
    int rc = mig_check_applied(res, TRACK_CONTROL, "the database", r->cm, r->ncm, r->tolerate,
                               r->accept_ahead, &r->control, r->err, r->errlen);
    r->versions_table = PQntuples(res) > 0 && PQgetvalue(res, 0, 3)[0] == 't';
    PQclear(res);
    if (rc)
        return -1;
    if (r->skip_tenants && r->versions_table)
        return 0;
    r->skip_tenants = false;
    return mig_tenants_read(r->c, r->tm, r->ntm, r->tolerate, &r->tenants, r->err, r->errlen);
}

void mig_runner_close(struct mig_runner *r)
{
    if (r->c)
        PQfinish(r->c); /* also releases the advisory lock */
    r->c = NULL;
    free(r->control.versions);
    r->control.versions = NULL;
    mig_tenants_free(&r->tenants);
}

/* Once control 0009 exists: which applied control migrations are marked
 * compatible, and the tenant track's list with its marks, for older
 * binaries to judge a database ahead of them. Also notes that the tenant
 * versions table now exists, for the tenant phase. */
static int record_marks(struct mig_runner *r)
{
    PGresult *res = mig_query(
        r->c, "SELECT pg_catalog.to_regclass('public.tenant_schema_versions') IS NOT NULL", 0, NULL,
        "looking for public.tenant_schema_versions", r->err, r->errlen);
    if (!res)
        return -1;
    r->versions_table = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!r->versions_table)
        return 0;
    /* Room for hundreds of migrations a track; refused beyond, never cut. */
    char cv[4096] = "{", tv[4096] = "{", tn[8192] = "{", tc[4096] = "{";
    if (r->ncm > 500 || r->ntm > 500)
        return mig_fail(r->err, r->errlen,
                        "more than 500 migrations in a track: raise the buffers");
    size_t a = 1;
    for (size_t i = 0; i < r->ncm && a < sizeof cv - 16; i++)
        if (r->cm[i].compatible)
            a +=
                (size_t)snprintf(cv + a, sizeof cv - a, "%s%d", a > 1 ? "," : "", r->cm[i].version);
    snprintf(cv + a, sizeof cv - a, "}");
    size_t b = 1, c = 1, d = 1;
    for (size_t i = 0; i < r->ntm && b < sizeof tv - 16 && c < sizeof tn - 140; i++) {
        /* Names are [a-z0-9_]+ (migration_parse_name): no quoting needed. */
        b += (size_t)snprintf(tv + b, sizeof tv - b, "%s%d", i ? "," : "", r->tm[i].version);
        c += (size_t)snprintf(tn + c, sizeof tn - c, "%s%s", i ? "," : "", r->tm[i].name);
        d += (size_t)snprintf(tc + d, sizeof tc - d, "%s%s", i ? "," : "",
                              r->tm[i].compatible ? "t" : "f");
    }
    snprintf(tv + b, sizeof tv - b, "}");
    snprintf(tn + c, sizeof tn - c, "}");
    snprintf(tc + d, sizeof tc - d, "}");
    char latest[16];
    snprintf(latest, sizeof latest, "%d", r->ncm ? r->cm[r->ncm - 1].version : 0);
    const char *v1[] = {cv, latest};
    res = mig_query(
        r->c,
        "UPDATE public.schema_migrations SET compatible = (version = ANY ($1::int[]))"
        " WHERE version <= $2::int AND compatible IS DISTINCT FROM (version = ANY ($1::int[]))",
        2, v1, "recording compatible migrations", r->err, r->errlen);
    if (!res)
        return -1;
    PQclear(res);
    const char *v2[] = {tv, tn, tc};
    res = mig_query(r->c,
                    "INSERT INTO public.tenant_migrations (version, name, compatible)"
                    " SELECT * FROM unnest($1::int[], $2::text[], $3::boolean[])"
                    " ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name,"
                    " compatible = EXCLUDED.compatible",
                    3, v2, "recording the tenant migrations", r->err, r->errlen);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

/* Applies (up) or reverts one control migration in its own transaction,
 * with its schema_migrations row; 0, or -1 with r->err (rolled back). */
static int control_step(struct mig_runner *r, const struct migration *m, bool up)
{
    char what[200];
    snprintf(what, sizeof what, "control/%04d_%s.%s.sql", m->version, m->name, up ? "up" : "down");
    if (mig_exec(r->c, "BEGIN", "BEGIN", r->err, r->errlen))
        return -1;
    PGresult *res = mig_query(r->c, "SELECT pg_catalog.set_config('search_path', 'public', true)",
                              0, NULL, "setting search_path", r->err, r->errlen);
    int rc = res ? 0 : -1;
    PQclear(res);
    if (rc == 0)
        rc = mig_exec(r->c, up ? m->up : m->down, what, r->err, r->errlen);
    if (rc == 0)
        rc = mig_record(r->c,
                        up ? "INSERT INTO public.schema_migrations (version, name, checksum)"
                             " VALUES ($1, $2, $3)"
                           : "DELETE FROM public.schema_migrations WHERE version = $1",
                        m, up, r->err, r->errlen);
    if (rc == 0)
        rc = mig_exec(r->c, "COMMIT", "COMMIT", r->err, r->errlen);
    if (rc)
        mig_rollback(r->c);
    return rc;
}

static int control_up(struct mig_runner *r)
{
    size_t applied = 0;
    for (size_t i = 0; i < r->ncm; i++) {
        const struct migration *m = &r->cm[i];
        if (mig_is_applied(&r->control, m->version))
            continue;
        double t0 = mig_now_ms();
        if (control_step(r, m, true))
            return -1;
        applied++;
        mig_say(r, "control: applied %04d_%s (%.0f ms)", m->version, m->name, mig_now_ms() - t0);
    }
    if (applied == 0)
        mig_say(r, "control: up to date (version %04d)", r->ncm ? r->cm[r->ncm - 1].version : 0);
    return record_marks(r);
}

static int tenants_up(struct mig_runner *r)
{
    struct mig_tenant_run t = {.conninfo = r->conninfo, .m = r->tm, .nm = r->ntm};
    t.todo = r->tenants.n ? calloc(r->tenants.n, sizeof *t.todo) : NULL;
    if (r->tenants.n && !t.todo)
        return mig_fail(r->err, r->errlen, "out of memory");
    for (size_t i = 0; i < r->tenants.n; i++)
        if (!mig_tenant_current(&r->tenants.t[i], r->ntm))
            t.todo[t.ntodo++] = &r->tenants.t[i];
    t.tty = r->cli && t.ntodo > 0 && isatty(STDERR_FILENO);
    t.cli = r->cli;
    t.record_versions = r->versions_table;
    double t0 = mig_now_ms();
    int rc = mig_tenant_run(&t, r->concurrency, r->err, r->errlen);
    free(t.todo);
    if (rc)
        return -1;
    if (r->versions_table) {
        /* Deleted orgs' schemas are gone: forget their versions. */
        PGresult *gone = mig_query(r->c,
                                   "DELETE FROM public.tenant_schema_versions v WHERE NOT EXISTS"
                                   " (SELECT 1 FROM pg_catalog.pg_namespace n"
                                   " WHERE n.nspname = v.schema_name)",
                                   0, NULL, "forgetting dropped schemas", r->err, r->errlen);
        if (!gone)
            return -1;
        PQclear(gone);
        /* Current schemas that no one recorded yet (made before control
         * 0009 or by hand): one statement, nothing to do when none. */
        PGresult *res =
            mig_query(r->c,
                      "INSERT INTO public.tenant_schema_versions (schema_name, version)"
                      " SELECT o.schema_name, public.tenantd_tenant_version_of(o.schema_name)"
                      " FROM public.orgs o WHERE o.status <> 'deleted'"
                      " AND NOT EXISTS (SELECT 1 FROM public.tenant_schema_versions v"
                      " WHERE v.schema_name = o.schema_name)"
                      " AND public.tenantd_tenant_version_of(o.schema_name) IS NOT NULL"
                      " ON CONFLICT (schema_name) DO NOTHING",
                      0, NULL, "recording tenant schema versions", r->err, r->errlen);
        if (!res)
            return -1;
        PQclear(res);
    }
    mig_say(r, "tenant schemas: %zu migrated, %zu already current%s (version %04d, %.0f ms)",
            t.ntodo - t.gone, r->tenants.n - t.ntodo, t.gone ? ", some dropped meanwhile" : "",
            r->ntm ? r->tm[r->ntm - 1].version : 0, mig_now_ms() - t0);
    return 0;
}

int mig_run_up(const char *conninfo, int concurrency, bool cli, char *err, size_t errlen)
{
    struct mig_runner r = {
        .conninfo = conninfo, .concurrency = concurrency, .cli = cli, .err = err, .errlen = errlen};
    int rc = mig_runner_open(&r, true);
    if (rc == 0)
        rc = control_up(&r);
    if (rc == 0)
        rc = tenants_up(&r);
    mig_runner_close(&r);
    return rc;
}

int migrate_up(const char *conninfo, int concurrency, char *err, size_t errlen)
{
    return mig_run_up(conninfo, concurrency, false, err, errlen);
}

int mig_control_down(struct mig_runner *r, int steps)
{
    struct applied *a = &r->control;
    if (a->n == 0) {
        mig_say(r, "control: nothing to revert");
        return 0;
    }
    /* Refuse before touching anything when one of them cannot be reverted. */
    for (size_t i = a->n, k = 0; i > 0 && (int)k < steps; i--, k++) {
        const struct migration *m = &r->cm[a->versions[i - 1] - 1];
        if (!m->down)
            return mig_fail(r->err, r->errlen,
                            "cannot revert control %04d_%s: migrations/control has no "
                            "%04d_%s.down.sql; nothing was reverted",
                            m->version, m->name, m->version, m->name);
    }
    for (size_t i = a->n, k = 0; i > 0 && (int)k < steps; i--, k++) {
        const struct migration *m = &r->cm[a->versions[i - 1] - 1];
        if (control_step(r, m, false))
            return -1;
        mig_say(r, "control: reverted %04d_%s", m->version, m->name);
    }
    if ((size_t)steps > a->n)
        mig_say(r, "control: only %zu migration(s) were applied; all reverted", a->n);
    return 0;
}

int mig_tenants_down(struct mig_runner *r, int steps)
{
    struct mig_tenant_run t = {
        .conninfo = r->conninfo, .m = r->tm, .nm = r->ntm, .down = true, .steps = steps};
    t.todo = r->tenants.n ? calloc(r->tenants.n, sizeof *t.todo) : NULL;
    if (r->tenants.n && !t.todo)
        return mig_fail(r->err, r->errlen, "out of memory");
    for (size_t i = 0; i < r->tenants.n; i++) {
        struct tenant *x = &r->tenants.t[i];
        if (x->a.n == 0)
            continue;
        for (size_t j = x->a.n, k = 0; j > 0 && (int)k < steps; j--, k++) {
            const struct migration *m = &r->tm[x->a.versions[j - 1] - 1];
            if (!m->down) {
                free(t.todo);
                return mig_fail(r->err, r->errlen,
                                "cannot revert tenant %04d_%s: migrations/tenant has no "
                                "%04d_%s.down.sql; nothing was reverted",
                                m->version, m->name, m->version, m->name);
            }
        }
        t.todo[t.ntodo++] = x;
    }
    t.tty = r->cli && t.ntodo > 0 && isatty(STDERR_FILENO);
    t.cli = r->cli;
    t.record_versions = r->versions_table;
    int rc = mig_tenant_run(&t, r->concurrency, r->err, r->errlen);
    free(t.todo);
    if (rc)
        return -1;
    mig_say(r, "tenant schemas: reverted the last %d migration(s) in %zu schema(s), %zu had none",
            steps, t.ntodo, r->tenants.n - t.ntodo);
    return 0;
}
