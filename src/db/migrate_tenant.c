/*
 * The tenant track of a migration run: reads what each org schema has
 * applied, and applies or reverts with `concurrency` threads, one
 * transaction per schema, with progress on the terminal or in the log.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "db/migrate_internal.h"

/* ---- tenant schemas --------------------------------------------------- */

void mig_tenants_free(struct tenant_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->t[i].name);
        free(l->t[i].a.versions);
    }
    free(l->t);
    l->t = NULL;
    l->n = 0;
}

/* An org deleted while the run was going drops its schema: that is no
 * failure, there is simply nothing left to migrate. */
static bool schema_gone(PGconn *c, const char *schema)
{
    const char *v[] = {schema};
    PGresult *r = mig_query(c, "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", 1, v,
                            "looking for the schema", NULL, 0);
    bool gone = r && PQntuples(r) == 0;
    PQclear(r);
    return gone;
}

static int tenant_read_one(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                           struct tenant *t, char *err, size_t errlen);

/* Lists the live orgs' schemas (when public.orgs exists yet) and reads and
 * checks what each has applied. */
int mig_tenants_read(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                     struct tenant_list *l, char *err, size_t errlen)
{
    l->t = NULL;
    l->n = 0;
    PGresult *r = mig_query(c, "SELECT pg_catalog.to_regclass('public.orgs') IS NOT NULL", 0, NULL,
                            "looking for public.orgs", err, errlen);
    if (!r)
        return -1;
    bool has_orgs = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!has_orgs)
        return 0;
    r = mig_query(
        c,
        "SELECT o.schema_name, EXISTS (SELECT 1 FROM pg_catalog.pg_tables t"
        " WHERE t.schemaname = o.schema_name AND t.tablename = 'schema_migrations')"
        " FROM public.orgs o"
        " WHERE o.status <> 'deleted'"
        " AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = o.schema_name)"
        " ORDER BY o.schema_name",
        0, NULL, "listing tenant schemas", err, errlen);
    if (!r)
        return -1;
    int nr = PQntuples(r);
    l->t = nr ? calloc((size_t)nr, sizeof *l->t) : NULL;
    if (nr && !l->t) {
        PQclear(r);
        return mig_fail(err, errlen, "out of memory");
    }
    for (int i = 0; i < nr; i++) {
        struct tenant *t = &l->t[l->n];
        t->name = strdup(PQgetvalue(r, i, 0));
        if (!t->name) {
            PQclear(r);
            return mig_fail(err, errlen, "out of memory");
        }
        t->has_table = PQgetvalue(r, i, 1)[0] == 't';
        l->n++;
    }
    PQclear(r);

    for (size_t i = 0; i < l->n; i++) {
        struct tenant *t = &l->t[i];
        if (!t->has_table)
            continue;
        int rc = tenant_read_one(c, m, nm, tolerate, t, err, errlen);
        if (rc > 0) { /* gone: drop it from the list */
            free(t->name);
            memmove(t, t + 1, (l->n - i - 1) * sizeof *t);
            l->n--;
            i--; /* unsigned wrap is defined; the loop's i++ brings it back */
        } else if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* Reads one schema's schema_migrations into t and checks it: 0, 1 when the
 * schema was dropped meanwhile, -1 with err. */
static int tenant_read_one(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                           struct tenant *t, char *err, size_t errlen)
{
    char *sql = mig_with_schema(c, t->name, "SELECT version, checksum FROM ",
                                ".schema_migrations ORDER BY version", err, errlen);
    if (!sql)
        return -1;
    char what[200], where[200];
    snprintf(what, sizeof what, "reading %s.schema_migrations", t->name);
    snprintf(where, sizeof where, "schema %s", t->name);
    PGresult *r = mig_query(c, sql, 0, NULL, what, err, errlen);
    free(sql);
    if (!r)
        return schema_gone(c, t->name) ? 1 : -1;
    int rc = mig_check_applied(r, TRACK_TENANT, where, m, nm, tolerate, false, &t->a, err, errlen);
    PQclear(r);
    return rc;
}

bool mig_tenant_current(const struct tenant *t, size_t nm)
{
    return t->a.n == nm; /* applied versions are known and distinct */
}

/* Applies to schema every tenant migration not in `a` (NULL: none applied),
 * inside the transaction open on c; creates its schema_migrations first. */
static int tenant_apply(PGconn *c, const char *schema, const struct migration *m, size_t nm,
                        const struct applied *a, char *err, size_t errlen)
{
    int rc = -1;
    char *create = mig_with_schema(c, schema, "CREATE TABLE IF NOT EXISTS ",
                                   ".schema_migrations" MIGRATIONS_COLUMNS, err, errlen);
    char *insert = mig_with_schema(
        c, schema, "INSERT INTO ",
        ".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", err, errlen);
    if (!create || !insert)
        goto out;
    if (mig_set_search_path(c, schema, err, errlen) ||
        mig_exec(c, create, "creating schema_migrations", err, errlen))
        goto out;
    for (size_t i = 0; i < nm; i++) {
        if (a && mig_is_applied(a, m[i].version))
            continue;
        char what[200];
        snprintf(what, sizeof what, "tenant/%04d_%s.up.sql", m[i].version, m[i].name);
        if (mig_exec(c, m[i].up, what, err, errlen) ||
            mig_record(c, insert, &m[i], true, err, errlen))
            goto out;
    }
    rc = 0;
out:
    free(create);
    free(insert);
    return rc;
}

/* Reverts the last `steps` applied migrations of schema in the transaction open on c. */
static int tenant_revert(PGconn *c, const char *schema, const struct migration *m,
                         const struct applied *a, int steps, char *err, size_t errlen)
{
    char *del = mig_with_schema(c, schema, "DELETE FROM ", ".schema_migrations WHERE version = $1",
                                err, errlen);
    if (!del)
        return -1;
    int rc = mig_set_search_path(c, schema, err, errlen);
    for (size_t i = a->n; rc == 0 && i > 0 && (int)(a->n - i) < steps; i--) {
        const struct migration *x = &m[a->versions[i - 1] - 1];
        char what[200];
        snprintf(what, sizeof what, "tenant/%04d_%s.down.sql", x->version, x->name);
        rc = mig_exec(c, x->down, what, err, errlen);
        if (rc == 0)
            rc = mig_record(c, del, x, false, err, errlen);
    }
    free(del);
    return rc;
}

static void tenant_fail(struct mig_tenant_run *r, const char *schema, const char *msg)
{
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = true;
        if (schema)
            snprintf(r->err, sizeof r->err, "tenant schema %s: %s", schema, msg);
        else
            snprintf(r->err, sizeof r->err, "%s", msg);
    }
    pthread_mutex_unlock(&r->mu);
}

/* Function bodies: every schema of a run gets the same migration text, and
 * schemas are alike, so a body that compiled in one compiles in all. After
 * the first schema commits, the rest skip PostgreSQL's body check as
 * pg_dump's restores do: checking a body resolves the names it calls, and a
 * name every org schema defines (0002's jsonb_merge_patch) is one list of
 * all of them, rebuilt after each change: orgs squared over a run (17 ms
 * vs 1.3 ms a schema at 10,000 orgs). */
static int tenant_one(PGconn *c, const struct mig_tenant_run *r, const struct tenant *t,
                      bool skip_bodies, char *err, size_t errlen)
{
    if (mig_exec(c, "BEGIN", "BEGIN", err, errlen))
        return -1;
    if (skip_bodies && mig_exec(c, "SET LOCAL check_function_bodies = off", "SET", err, errlen)) {
        mig_rollback(c);
        return -1;
    }
    int rc = r->down ? tenant_revert(c, t->name, r->m, &t->a, r->steps, err, errlen)
                     : tenant_apply(c, t->name, r->m, r->nm, &t->a, err, errlen);
    if (rc == 0 && r->record_versions) {
        /* In the schema's own transaction: the record never disagrees with it. */
        const char *v[] = {t->name};
        PGresult *res = mig_query(c,
                                  "INSERT INTO public.tenant_schema_versions (schema_name, version)"
                                  " VALUES ($1, public.tenantd_tenant_version_of($1))"
                                  " ON CONFLICT (schema_name) DO UPDATE"
                                  " SET version = EXCLUDED.version, updated_at = now()",
                                  1, v, "recording the schema's version", err, errlen);
        rc = res ? 0 : -1;
        PQclear(res);
    }
    if (rc == 0)
        rc = mig_exec(c, "COMMIT", "COMMIT", err, errlen);
    if (rc)
        mig_rollback(c);
    return rc;
}

/* Progress of a long run where nobody sees a \r line (CI logs, kubectl logs,
 * a Job): done/total, rate and ETA every PROGRESS_EVERY_MS. Called with
 * r->mu held. */
#define PROGRESS_EVERY_MS 5000.0
static void tenant_progress(struct mig_tenant_run *r)
{
    if (r->tty) {
        fprintf(stderr, "\rtenant schemas: %zu/%zu", r->done, r->ntodo);
        fflush(stderr);
        return;
    }
    double now = mig_now_ms();
    if (now - r->last_report < PROGRESS_EVERY_MS || r->done == r->ntodo)
        return;
    r->last_report = now;
    double rate = (double)r->done * 1000.0 / (now - r->t0 > 1 ? now - r->t0 : 1);
    double eta = rate > 0 ? (double)(r->ntodo - r->done) / rate : 0;
    char line[200];
    snprintf(line, sizeof line, "tenant schemas: %zu/%zu (%.0f%%), %.1f/s, ETA %.0f s", r->done,
             r->ntodo, 100.0 * (double)r->done / (double)r->ntodo, rate, eta);
    if (r->cli) {
        fprintf(stderr, "%s\n", line);
        fflush(stderr);
    } else {
        log_msg(LOG_INFO, "%s", line);
    }
}

static void *tenant_worker(void *arg)
{
    struct mig_tenant_run *r = arg;
    char err[ERRBUF];
    PGconn *c = mig_connect(r->conninfo, err, sizeof err);
    if (!c) {
        tenant_fail(r, NULL, err);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&r->mu);
        struct tenant *t = NULL;
        if (!r->failed && r->next < r->ntodo)
            t = r->todo[r->next++];
        bool skip_bodies = r->bodies_checked;
        pthread_mutex_unlock(&r->mu);
        if (!t)
            break;
        bool gone = false, ok = tenant_one(c, r, t, skip_bodies, err, sizeof err) == 0;
        if (!ok) {
            gone = schema_gone(c, t->name);
            if (!gone) {
                tenant_fail(r, t->name, err);
                break;
            }
        }
        pthread_mutex_lock(&r->mu);
        r->done++;
        r->gone += gone;
        r->bodies_checked |= ok;
        /* Each schema is taken once and finished once, by one thread. */
        assert(r->gone <= r->done && r->done <= r->next && r->next <= r->ntodo);
        tenant_progress(r);
        pthread_mutex_unlock(&r->mu);
    }
    PQfinish(c);
    return NULL;
}

int mig_tenant_run(struct mig_tenant_run *r, int concurrency, char *err, size_t errlen)
{
    if (r->ntodo == 0)
        return 0;
    size_t nthreads = concurrency < 1 ? 1 : (size_t)concurrency;
    if (nthreads > r->ntodo)
        nthreads = r->ntodo;
    pthread_t *th = calloc(nthreads, sizeof *th);
    if (!th)
        return mig_fail(err, errlen, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    r->t0 = r->last_report = mig_now_ms();
    size_t started = 0;
    while (started < nthreads && pthread_create(&th[started], NULL, tenant_worker, r) == 0)
        started++;
    if (started == 0)
        tenant_worker(r); /* no thread to be had: do the work here */
    for (size_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r->mu);
    free(th);
    /* All threads joined: every schema was done unless one failed. */
    assert(r->failed || (r->done == r->ntodo && r->next == r->ntodo));
    if (r->tty)
        fputc('\n', stderr);
    if (r->failed)
        return mig_fail(err, errlen,
                        "%s (%zu of %zu schemas done; the rest are untouched, rerun to "
                        "resume)",
                        r->err, r->done, r->ntodo);
    return 0;
}
