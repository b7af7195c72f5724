/*
 * The migration runner: loads the migrations compiled into the binary,
 * applies or reverts them with blocking libpq (command line and start-up
 * only, never on an event loop), and reports their state.
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

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <stddef.h>

#include "core/config.h"
#include "core/embedded.h"
#include "core/log.h"

/* Key of the session-level advisory lock that one run holds from start to
 * end; any fixed bigint works as long as every tenantd uses the same. */
#define LOCK_KEY "7346519082413377"

#define NAME_MAX_LEN 128
#define ERRBUF 1024

#define MIGRATIONS_COLUMNS                                                                         \
    " (version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"                       \
    " applied_at timestamptz NOT NULL DEFAULT now())"

static const char *const track_dir[] = {[TRACK_CONTROL] = "control", [TRACK_TENANT] = "tenant"};

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
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
static void one_line(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r')
            *p = ' ';
    size_t n = strlen(s);
    while (n && s[n - 1] == ' ')
        s[--n] = '\0';
}

/* ---- names, checksums, loading ---------------------------------------- */

int migration_parse_name(const char *file, int *version, char *name, size_t namelen, bool *is_up)
{
    if (!file)
        return -1;
    const char *p = file;
    long v = 0;
    int digits = 0;
    while (isdigit((unsigned char)*p)) {
        if (++digits > 9) /* keeps v inside int */
            return -1;
        v = v * 10 + (*p++ - '0');
    }
    if (digits < 4 || v < 1 || *p != '_')
        return -1;
    const char *start = ++p;
    while (islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')
        p++;
    size_t len = (size_t)(p - start);
    bool up;
    if (!strcmp(p, ".up.sql"))
        up = true;
    else if (!strcmp(p, ".down.sql"))
        up = false;
    else
        return -1;
    if (len == 0 || len >= namelen)
        return -1;
    memcpy(name, start, len);
    name[len] = '\0';
    *version = (int)v;
    *is_up = up;
    return 0;
}

void migration_checksum(const char *text, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    if (!EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        abort(); /* SHA-256 cannot fail short of a broken OpenSSL */
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

struct loaded_file {
    int version;
    bool up;
    char name[NAME_MAX_LEN];
    const struct embedded_file *f;
};

static int cmp_loaded(const void *a, const void *b)
{
    const struct loaded_file *x = a, *y = b;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    if (x->up != y->up)
        return x->up ? -1 : 1; /* the up file first in each version */
    return strcmp(x->f->name, y->f->name);
}

int migrations_load(const struct embedded_file *files, enum migration_track track,
                    struct migration **out, size_t *n, char *err, size_t errlen)
{
    const char *dir = track_dir[track];
    *out = NULL;
    *n = 0;
    size_t nfiles = 0;
    for (const struct embedded_file *f = files; f->name; f++)
        if (f->track && !strcmp(f->track, dir))
            nfiles++;
    if (nfiles == 0)
        return 0;

    struct loaded_file *lf = calloc(nfiles, sizeof *lf);
    if (!lf)
        return fail(err, errlen, "out of memory");
    size_t k = 0;
    for (const struct embedded_file *f = files; f->name; f++) {
        if (!f->track || strcmp(f->track, dir))
            continue;
        if (migration_parse_name(f->name, &lf[k].version, lf[k].name, sizeof lf[k].name,
                                 &lf[k].up) != 0) {
            free(lf);
            return fail(err, errlen,
                        "migrations/%s/%s: bad file name (expected NNNN_name.up.sql or "
                        "NNNN_name.down.sql, name in a-z0-9_)",
                        dir, f->name);
        }
        lf[k++].f = f;
    }
    qsort(lf, nfiles, sizeof *lf, cmp_loaded);

    /* Checks pairs and numbering, and sizes the one block that holds the
     * array followed by the names, so the caller frees a single pointer. */
    size_t count = 0, names = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const struct loaded_file *x = &lf[i];
        const struct loaded_file *prev = i ? &lf[i - 1] : NULL;
        int rc = 0;
        if (prev && prev->version == x->version) {
            if (x->up || !prev->up)
                rc = fail(err, errlen, "migrations/%s: duplicate version %04d (%s and %s)", dir,
                          x->version, prev->f->name, x->f->name);
            else if (strcmp(prev->name, x->name))
                rc = fail(err, errlen,
                          "migrations/%s: duplicate version %04d (%s and %s name different "
                          "migrations)",
                          dir, x->version, prev->f->name, x->f->name);
            else if (i >= 2 && lf[i - 2].version == x->version)
                rc = fail(err, errlen, "migrations/%s: duplicate version %04d (%s)", dir,
                          x->version, x->f->name);
        } else if (!x->up) {
            rc = fail(err, errlen, "migrations/%s/%s: a .down.sql without its .up.sql", dir,
                      x->f->name);
        } else {
            if (x->version != (int)count + 1)
                rc = fail(err, errlen,
                          "migrations/%s: version %04d is missing (numbering must run 0001, "
                          "0002, ... without gaps; found %s)",
                          dir, (int)count + 1, x->f->name);
            count++;
            names += strlen(x->name) + 1;
        }
        if (rc) {
            free(lf);
            return rc;
        }
    }

    struct migration *m = malloc(count * sizeof *m + names);
    if (!m) {
        free(lf);
        return fail(err, errlen, "out of memory");
    }
    char *np = (char *)(m + count);
    size_t j = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const struct loaded_file *x = &lf[i];
        if (x->up) {
            size_t len = strlen(x->name) + 1;
            memcpy(np, x->name, len);
            m[j].version = x->version;
            m[j].name = np;
            m[j].up = x->f->data;
            m[j].down = NULL;
            migration_checksum(x->f->data, x->f->len, m[j].checksum);
            size_t ml = strlen(MIGRATION_COMPATIBLE_MARK);
            m[j].compatible = x->f->len >= ml &&
                              !memcmp(x->f->data, MIGRATION_COMPATIBLE_MARK, ml) &&
                              (x->f->len == ml || isspace((unsigned char)x->f->data[ml]));
            np += len;
            j++;
        } else {
            m[j - 1].down = x->f->data;
        }
    }
    free(lf);
    *out = m;
    *n = count;
    return 0;
}

/* The embedded migrations, loaded once per process: they never change and
 * /ready asks for the latest version on every probe. */
static struct {
    pthread_once_t once;
    int rc;
    char err[512];
    struct migration *m[2];
    size_t n[2];
} builtin = {.once = PTHREAD_ONCE_INIT};

static void builtin_load(void)
{
    for (int t = TRACK_CONTROL; t <= TRACK_TENANT; t++)
        if (migrations_load(embedded_migrations, (enum migration_track)t, &builtin.m[t],
                            &builtin.n[t], builtin.err, sizeof builtin.err) != 0) {
            builtin.rc = -1;
            return;
        }
}

static int builtin_get(enum migration_track t, const struct migration **m, size_t *n, char *err,
                       size_t errlen)
{
    pthread_once(&builtin.once, builtin_load);
    if (builtin.rc != 0)
        return fail(err, errlen, "migrations built into this binary are broken: %s", builtin.err);
    *m = builtin.m[t];
    *n = builtin.n[t];
    return 0;
}

int migrate_latest(enum migration_track track)
{
    const struct migration *m = NULL;
    size_t n = 0;
    /* A broken embedded list cannot happen in a tested build (unit test). */
    if (builtin_get(track, &m, &n, NULL, 0) != 0 || n == 0)
        return 0;
    return m[n - 1].version;
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
    one_line(msg);
    log_msg(LOG_WARN, "database: %s", msg);
}

static PGconn *db_open(const char *conninfo, char *err, size_t errlen)
{
    const char *const keys[] = {"fallback_application_name", "dbname", NULL};
    const char *const vals[] = {"tenantd migrate", conninfo, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c) {
        fail(err, errlen, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        one_line(msg);
        fail(err, errlen, "cannot connect to the database: %s", msg);
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
        one_line(out);
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
    one_line(out);
}

/* Runs sql (simple protocol, may hold several statements); 0 on success. */
static int exec_sql(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
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
    return fail(err, errlen, "%s: %s", what, msg);
}

/* One parameterised statement; the result (owned by the caller) or NULL. */
static PGresult *query(PGconn *c, const char *sql, int n, const char *const *vals, const char *what,
                       char *err, size_t errlen)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return res;
    char msg[ERRBUF];
    result_error(c, res, NULL, msg, sizeof msg);
    PQclear(res);
    fail(err, errlen, "%s: %s", what, msg);
    return NULL;
}

static void rollback(PGconn *c)
{
    PQclear(PQexec(c, "ROLLBACK"));
}

/* before || "schema" || after, malloc'd. Schema names reach SQL only
 * through PQescapeIdentifier. NULL with err on failure. */
static char *with_schema(PGconn *c, const char *schema, const char *before, const char *after,
                         char *err, size_t errlen)
{
    char *q = PQescapeIdentifier(c, schema, strlen(schema));
    if (!q) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        one_line(msg);
        fail(err, errlen, "bad schema name: %s", msg);
        return NULL;
    }
    size_t a = strlen(before), b = strlen(q), d = strlen(after);
    char *s = malloc(a + b + d + 1);
    if (s) {
        memcpy(s, before, a);
        memcpy(s + a, q, b);
        memcpy(s + a + b, after, d + 1);
    } else {
        fail(err, errlen, "out of memory");
    }
    PQfreemem(q);
    return s;
}

/* Sets the transaction's search_path to "<schema>", public. */
static int set_search_path(PGconn *c, const char *schema, char *err, size_t errlen)
{
    char *path = with_schema(c, schema, "", ", public", err, errlen);
    if (!path)
        return -1;
    const char *v[] = {path};
    PGresult *r = query(c, "SELECT pg_catalog.set_config('search_path', $1, true)", 1, v,
                        "setting search_path", err, errlen);
    free(path);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* Inserts the row that says m is applied in schema's schema_migrations. */
static int record_applied(PGconn *c, const char *insert_sql, const struct migration *m, char *err,
                          size_t errlen)
{
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *v[] = {ver, m->name, m->checksum};
    PGresult *r = query(c, insert_sql, 3, v, "recording the migration", err, errlen);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

static int record_reverted(PGconn *c, const char *delete_sql, const struct migration *m, char *err,
                           size_t errlen)
{
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *v[] = {ver};
    PGresult *r = query(c, delete_sql, 1, v, "forgetting the migration", err, errlen);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* ---- what a schema has applied ---------------------------------------- */

/* Applied versions of one schema, ascending, with their checksums checked
 * against the binary. */
struct applied {
    int *versions;
    size_t n;
    size_t unknown; /* status only: applied versions this binary lacks */
    size_t changed; /* status only: applied files edited since */
    size_t ahead;   /* check only: newer versions, all marked compatible */
    int newest;     /* the newest applied version */
};

/* How many compatible migrations ahead a binary accepts. */
static int ahead_max(void)
{
    return g_config ? (int)g_config->compatible_ahead : 3;
}

/* Fills a from rows (version, checksum[, compatible]) and checks each
 * against m: an unknown version or a changed file is an error naming it,
 * unless `tolerate` (status), which counts them instead. With
 * `accept_ahead` (the start-up check), newer versions marked compatible are
 * counted in a->ahead, and more than ahead_max() of them is the error. */
static int check_applied(const PGresult *rows, enum migration_track t, const char *where,
                         const struct migration *m, size_t nm, bool tolerate, bool accept_ahead,
                         struct applied *a, char *err, size_t errlen)
{
    int nr = PQntuples(rows);
    a->versions = nr ? malloc((size_t)nr * sizeof *a->versions) : NULL;
    a->n = a->unknown = a->changed = a->ahead = 0;
    a->newest = 0;
    if (nr && !a->versions)
        return fail(err, errlen, "out of memory");
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
            if ((int)++a->ahead > ahead_max())
                return fail(err, errlen,
                            "%s is %zu or more compatible migrations ahead of this binary (it "
                            "knows up to %04d; TENANTD_COMPATIBLE_AHEAD is %d): deploy the newer "
                            "tenantd",
                            where, a->ahead, nm ? m[nm - 1].version : 0, ahead_max());
            continue;
        }
        if (v < 1 || (size_t)v > nm)
            return fail(err, errlen,
                        "%s has %s migration %04d applied, which this binary does not have "
                        "(it knows up to %04d)%s: run a newer tenantd",
                        where, track_dir[t], v, nm ? m[nm - 1].version : 0,
                        accept_ahead ? " and which is not marked compatible" : "");
        const struct migration *x = &m[v - 1];
        if (strcmp(sum, x->checksum) && tolerate)
            a->changed++;
        else if (strcmp(sum, x->checksum))
            return fail(err, errlen,
                        "migrations/%s/%04d_%s.up.sql differs from the one applied in %s "
                        "(checksum mismatch): an applied migration must not be edited; restore "
                        "it and add a new migration instead",
                        track_dir[t], x->version, x->name, where);
        a->versions[a->n++] = v;
    }
    return 0;
}

static bool is_applied(const struct applied *a, int version)
{
    for (size_t i = 0; i < a->n; i++)
        if (a->versions[i] == version)
            return true;
    return false;
}

/* ---- tenant schemas --------------------------------------------------- */

struct tenant {
    char *name;
    bool has_table; /* its schema_migrations exists */
    struct applied a;
};

struct tenant_list {
    struct tenant *t;
    size_t n;
};

static void tenants_free(struct tenant_list *l)
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
    PGresult *r = query(c, "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", 1, v,
                        "looking for the schema", NULL, 0);
    bool gone = r && PQntuples(r) == 0;
    PQclear(r);
    return gone;
}

static int tenant_read_one(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                           struct tenant *t, char *err, size_t errlen);

/* Lists the live orgs' schemas (when public.orgs exists yet) and reads and
 * checks what each has applied. */
static int tenants_read(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                        struct tenant_list *l, char *err, size_t errlen)
{
    l->t = NULL;
    l->n = 0;
    PGresult *r = query(c, "SELECT pg_catalog.to_regclass('public.orgs') IS NOT NULL", 0, NULL,
                        "looking for public.orgs", err, errlen);
    if (!r)
        return -1;
    bool has_orgs = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!has_orgs)
        return 0;
    r = query(
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
        return fail(err, errlen, "out of memory");
    }
    for (int i = 0; i < nr; i++) {
        struct tenant *t = &l->t[l->n];
        t->name = strdup(PQgetvalue(r, i, 0));
        if (!t->name) {
            PQclear(r);
            return fail(err, errlen, "out of memory");
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
    char *sql = with_schema(c, t->name, "SELECT version, checksum FROM ",
                            ".schema_migrations ORDER BY version", err, errlen);
    if (!sql)
        return -1;
    char what[200], where[200];
    snprintf(what, sizeof what, "reading %s.schema_migrations", t->name);
    snprintf(where, sizeof where, "schema %s", t->name);
    PGresult *r = query(c, sql, 0, NULL, what, err, errlen);
    free(sql);
    if (!r)
        return schema_gone(c, t->name) ? 1 : -1;
    int rc = check_applied(r, TRACK_TENANT, where, m, nm, tolerate, false, &t->a, err, errlen);
    PQclear(r);
    return rc;
}

static bool tenant_current(const struct tenant *t, size_t nm)
{
    return t->a.n == nm; /* applied versions are known and distinct */
}

/* Applies to schema every tenant migration not in `a` (NULL: none applied),
 * inside the transaction open on c; creates its schema_migrations first. */
static int tenant_apply(PGconn *c, const char *schema, const struct migration *m, size_t nm,
                        const struct applied *a, char *err, size_t errlen)
{
    int rc = -1;
    char *create = with_schema(c, schema, "CREATE TABLE IF NOT EXISTS ",
                               ".schema_migrations" MIGRATIONS_COLUMNS, err, errlen);
    char *insert = with_schema(c, schema, "INSERT INTO ",
                               ".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                               err, errlen);
    if (!create || !insert)
        goto out;
    if (set_search_path(c, schema, err, errlen) ||
        exec_sql(c, create, "creating schema_migrations", err, errlen))
        goto out;
    for (size_t i = 0; i < nm; i++) {
        if (a && is_applied(a, m[i].version))
            continue;
        char what[200];
        snprintf(what, sizeof what, "tenant/%04d_%s.up.sql", m[i].version, m[i].name);
        if (exec_sql(c, m[i].up, what, err, errlen) ||
            record_applied(c, insert, &m[i], err, errlen))
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
    char *del = with_schema(c, schema, "DELETE FROM ", ".schema_migrations WHERE version = $1", err,
                            errlen);
    if (!del)
        return -1;
    int rc = set_search_path(c, schema, err, errlen);
    for (size_t i = a->n; rc == 0 && i > 0 && (int)(a->n - i) < steps; i--) {
        const struct migration *x = &m[a->versions[i - 1] - 1];
        char what[200];
        snprintf(what, sizeof what, "tenant/%04d_%s.down.sql", x->version, x->name);
        rc = exec_sql(c, x->down, what, err, errlen);
        if (rc == 0)
            rc = record_reverted(c, del, x, err, errlen);
    }
    free(del);
    return rc;
}

/* The tenant phase: `concurrency` threads, each with its own connection,
 * take schemas from a shared index; one transaction per schema. */
struct tenant_run {
    const char *conninfo;
    const struct migration *m;
    size_t nm;
    bool down;
    int steps;
    struct tenant **todo;
    size_t ntodo;
    bool tty;             /* a \r progress line on the terminal */
    bool cli;             /* else: progress as JSON log lines */
    bool record_versions; /* public.tenant_schema_versions exists */
    double t0, last_report;

    pthread_mutex_t mu;
    size_t next, done, gone;
    bool failed;
    char err[ERRBUF];
};

static void tenant_fail(struct tenant_run *r, const char *schema, const char *msg)
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

static int tenant_one(PGconn *c, const struct tenant_run *r, const struct tenant *t, char *err,
                      size_t errlen)
{
    if (exec_sql(c, "BEGIN", "BEGIN", err, errlen))
        return -1;
    int rc = r->down ? tenant_revert(c, t->name, r->m, &t->a, r->steps, err, errlen)
                     : tenant_apply(c, t->name, r->m, r->nm, &t->a, err, errlen);
    if (rc == 0 && r->record_versions) {
        /* In the schema's own transaction: the record never disagrees with it. */
        const char *v[] = {t->name};
        PGresult *res = query(c,
                              "INSERT INTO public.tenant_schema_versions (schema_name, version)"
                              " VALUES ($1, public.tenantd_tenant_version_of($1))"
                              " ON CONFLICT (schema_name) DO UPDATE"
                              " SET version = EXCLUDED.version, updated_at = now()",
                              1, v, "recording the schema's version", err, errlen);
        rc = res ? 0 : -1;
        PQclear(res);
    }
    if (rc == 0)
        rc = exec_sql(c, "COMMIT", "COMMIT", err, errlen);
    if (rc)
        rollback(c);
    return rc;
}

static double now_ms(void);

/* Progress of a long run where nobody sees a \r line (CI logs, kubectl logs,
 * a Job): done/total, rate and ETA every PROGRESS_EVERY_MS. Called with
 * r->mu held. */
#define PROGRESS_EVERY_MS 5000.0
static void tenant_progress(struct tenant_run *r)
{
    if (r->tty) {
        fprintf(stderr, "\rtenant schemas: %zu/%zu", r->done, r->ntodo);
        fflush(stderr);
        return;
    }
    double now = now_ms();
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
    struct tenant_run *r = arg;
    char err[ERRBUF];
    PGconn *c = db_open(r->conninfo, err, sizeof err);
    if (!c) {
        tenant_fail(r, NULL, err);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&r->mu);
        struct tenant *t = NULL;
        if (!r->failed && r->next < r->ntodo)
            t = r->todo[r->next++];
        pthread_mutex_unlock(&r->mu);
        if (!t)
            break;
        bool gone = false;
        if (tenant_one(c, r, t, err, sizeof err) != 0) {
            gone = schema_gone(c, t->name);
            if (!gone) {
                tenant_fail(r, t->name, err);
                break;
            }
        }
        pthread_mutex_lock(&r->mu);
        r->done++;
        r->gone += gone;
        tenant_progress(r);
        pthread_mutex_unlock(&r->mu);
    }
    PQfinish(c);
    return NULL;
}

static int tenant_run(struct tenant_run *r, int concurrency, char *err, size_t errlen)
{
    if (r->ntodo == 0)
        return 0;
    size_t nthreads = concurrency < 1 ? 1 : (size_t)concurrency;
    if (nthreads > r->ntodo)
        nthreads = r->ntodo;
    pthread_t *th = calloc(nthreads, sizeof *th);
    if (!th)
        return fail(err, errlen, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    r->t0 = r->last_report = now_ms();
    size_t started = 0;
    while (started < nthreads && pthread_create(&th[started], NULL, tenant_worker, r) == 0)
        started++;
    if (started == 0)
        tenant_worker(r); /* no thread to be had: do the work here */
    for (size_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&r->mu);
    free(th);
    if (r->tty)
        fputc('\n', stderr);
    if (r->failed)
        return fail(err, errlen,
                    "%s (%zu of %zu schemas done; the rest are untouched, rerun to "
                    "resume)",
                    r->err, r->done, r->ntodo);
    return 0;
}

/* ---- a run ------------------------------------------------------------ */

struct runner {
    const char *conninfo;
    int concurrency;
    bool cli;      /* plain lines on stdout and a progress line; else JSON logs */
    bool tolerate; /* status: count edited or unknown migrations, do not fail */
    bool accept_ahead;   /* the start-up check: compatible newer migrations are fine */
    bool skip_tenants;   /* do not read every org schema (check, status: one query) */
    bool versions_table; /* public.tenant_schema_versions exists (control 0009) */
    PGconn *c;
    const struct migration *cm, *tm;
    size_t ncm, ntm;
    struct applied control;
    struct tenant_list tenants;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static void say(const struct runner *r, const char *fmt, ...)
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

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Connects, loads the embedded migrations, and (when `lock`) takes the
 * advisory lock and makes public.schema_migrations. Then reads what control
 * and every tenant schema have applied, checking every checksum: any
 * mismatch fails here, before anything changes. */
static int runner_open(struct runner *r, bool lock)
{
    if (builtin_get(TRACK_CONTROL, &r->cm, &r->ncm, r->err, r->errlen) ||
        builtin_get(TRACK_TENANT, &r->tm, &r->ntm, r->err, r->errlen))
        return -1;
    r->c = db_open(r->conninfo, r->err, r->errlen);
    if (!r->c)
        return -1;
    if (lock) {
        PGresult *res = query(r->c, "SELECT pg_try_advisory_lock(" LOCK_KEY ")", 0, NULL,
                              "taking the migration lock", r->err, r->errlen);
        if (!res)
            return -1;
        bool got = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (!got) {
            say(r, "another migration run holds the lock; waiting for it to finish");
            res = query(r->c, "SELECT pg_advisory_lock(" LOCK_KEY ")", 0, NULL,
                        "waiting for the migration lock", r->err, r->errlen);
            if (!res)
                return -1;
            PQclear(res);
        }
        if (exec_sql(r->c, "CREATE TABLE IF NOT EXISTS public.schema_migrations" MIGRATIONS_COLUMNS,
                     "creating public.schema_migrations", r->err, r->errlen))
            return -1;
    } else {
        PGresult *res =
            query(r->c, "SELECT pg_catalog.to_regclass('public.schema_migrations') IS NULL", 0,
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
    PGresult *res = query(r->c,
                          "SELECT version, checksum,"
                          " coalesce((pg_catalog.to_jsonb(m) ->> 'compatible')::boolean, false),"
                          " pg_catalog.to_regclass('public.tenant_schema_versions') IS NOT NULL"
                          " FROM public.schema_migrations m ORDER BY version",
                          0, NULL, "reading public.schema_migrations", r->err, r->errlen);
    if (!res)
        return -1;
    int rc = check_applied(res, TRACK_CONTROL, "the database", r->cm, r->ncm, r->tolerate,
                           r->accept_ahead, &r->control, r->err, r->errlen);
    r->versions_table = PQntuples(res) > 0 && PQgetvalue(res, 0, 3)[0] == 't';
    PQclear(res);
    if (rc)
        return -1;
    if (r->skip_tenants && r->versions_table)
        return 0;
    r->skip_tenants = false;
    return tenants_read(r->c, r->tm, r->ntm, r->tolerate, &r->tenants, r->err, r->errlen);
}

static void runner_close(struct runner *r)
{
    if (r->c)
        PQfinish(r->c); /* also releases the advisory lock */
    r->c = NULL;
    free(r->control.versions);
    r->control.versions = NULL;
    tenants_free(&r->tenants);
}

/* Once control 0009 exists: which applied control migrations are marked
 * compatible, and the tenant track's list with its marks, for older
 * binaries to judge a database ahead of them. Also notes that the tenant
 * versions table now exists, for the tenant phase. */
static int record_marks(struct runner *r)
{
    PGresult *res =
        query(r->c, "SELECT pg_catalog.to_regclass('public.tenant_schema_versions') IS NOT NULL", 0,
              NULL, "looking for public.tenant_schema_versions", r->err, r->errlen);
    if (!res)
        return -1;
    r->versions_table = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!r->versions_table)
        return 0;
    /* Room for hundreds of migrations a track; refused beyond, never cut. */
    char cv[4096] = "{", tv[4096] = "{", tn[8192] = "{", tc[4096] = "{";
    if (r->ncm > 500 || r->ntm > 500)
        return fail(r->err, r->errlen, "more than 500 migrations in a track: raise the buffers");
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
    res = query(
        r->c,
        "UPDATE public.schema_migrations SET compatible = (version = ANY ($1::int[]))"
        " WHERE version <= $2::int AND compatible IS DISTINCT FROM (version = ANY ($1::int[]))",
        2, v1, "recording compatible migrations", r->err, r->errlen);
    if (!res)
        return -1;
    PQclear(res);
    const char *v2[] = {tv, tn, tc};
    res = query(r->c,
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

static int control_up(struct runner *r)
{
    size_t applied = 0;
    for (size_t i = 0; i < r->ncm; i++) {
        const struct migration *m = &r->cm[i];
        if (is_applied(&r->control, m->version))
            continue;
        char what[200];
        snprintf(what, sizeof what, "control/%04d_%s.up.sql", m->version, m->name);
        double t0 = now_ms();
        if (exec_sql(r->c, "BEGIN", "BEGIN", r->err, r->errlen))
            return -1;
        PGresult *res = query(r->c, "SELECT pg_catalog.set_config('search_path', 'public', true)",
                              0, NULL, "setting search_path", r->err, r->errlen);
        int rc = res ? 0 : -1;
        PQclear(res);
        if (rc == 0)
            rc = exec_sql(r->c, m->up, what, r->err, r->errlen);
        if (rc == 0)
            rc = record_applied(r->c,
                                "INSERT INTO public.schema_migrations (version, name, checksum)"
                                " VALUES ($1, $2, $3)",
                                m, r->err, r->errlen);
        if (rc == 0)
            rc = exec_sql(r->c, "COMMIT", "COMMIT", r->err, r->errlen);
        if (rc) {
            rollback(r->c);
            return -1;
        }
        applied++;
        say(r, "control: applied %04d_%s (%.0f ms)", m->version, m->name, now_ms() - t0);
    }
    if (applied == 0)
        say(r, "control: up to date (version %04d)", r->ncm ? r->cm[r->ncm - 1].version : 0);
    return record_marks(r);
}

static int tenants_up(struct runner *r)
{
    struct tenant_run t = {.conninfo = r->conninfo, .m = r->tm, .nm = r->ntm};
    t.todo = r->tenants.n ? calloc(r->tenants.n, sizeof *t.todo) : NULL;
    if (r->tenants.n && !t.todo)
        return fail(r->err, r->errlen, "out of memory");
    for (size_t i = 0; i < r->tenants.n; i++)
        if (!tenant_current(&r->tenants.t[i], r->ntm))
            t.todo[t.ntodo++] = &r->tenants.t[i];
    t.tty = r->cli && t.ntodo > 0 && isatty(STDERR_FILENO);
    t.cli = r->cli;
    t.record_versions = r->versions_table;
    double t0 = now_ms();
    int rc = tenant_run(&t, r->concurrency, r->err, r->errlen);
    free(t.todo);
    if (rc)
        return -1;
    if (r->versions_table) {
        /* Deleted orgs' schemas are gone: forget their versions. */
        PGresult *gone = query(r->c,
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
            query(r->c,
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
    say(r, "tenant schemas: %zu migrated, %zu already current%s (version %04d, %.0f ms)",
        t.ntodo - t.gone, r->tenants.n - t.ntodo, t.gone ? ", some dropped meanwhile" : "",
        r->ntm ? r->tm[r->ntm - 1].version : 0, now_ms() - t0);
    return 0;
}

static int run_up(const char *conninfo, int concurrency, bool cli, char *err, size_t errlen)
{
    struct runner r = {
        .conninfo = conninfo, .concurrency = concurrency, .cli = cli, .err = err, .errlen = errlen};
    int rc = runner_open(&r, true);
    if (rc == 0)
        rc = control_up(&r);
    if (rc == 0)
        rc = tenants_up(&r);
    runner_close(&r);
    return rc;
}

int migrate_up(const char *conninfo, int concurrency, char *err, size_t errlen)
{
    return run_up(conninfo, concurrency, false, err, errlen);
}

static int control_down(struct runner *r, int steps)
{
    struct applied *a = &r->control;
    if (a->n == 0) {
        say(r, "control: nothing to revert");
        return 0;
    }
    /* Refuse before touching anything when one of them cannot be reverted. */
    for (size_t i = a->n, k = 0; i > 0 && (int)k < steps; i--, k++) {
        const struct migration *m = &r->cm[a->versions[i - 1] - 1];
        if (!m->down)
            return fail(r->err, r->errlen,
                        "cannot revert control %04d_%s: migrations/control has no "
                        "%04d_%s.down.sql; nothing was reverted",
                        m->version, m->name, m->version, m->name);
    }
    for (size_t i = a->n, k = 0; i > 0 && (int)k < steps; i--, k++) {
        const struct migration *m = &r->cm[a->versions[i - 1] - 1];
        char what[200];
        snprintf(what, sizeof what, "control/%04d_%s.down.sql", m->version, m->name);
        if (exec_sql(r->c, "BEGIN", "BEGIN", r->err, r->errlen))
            return -1;
        PGresult *res = query(r->c, "SELECT pg_catalog.set_config('search_path', 'public', true)",
                              0, NULL, "setting search_path", r->err, r->errlen);
        int rc = res ? 0 : -1;
        PQclear(res);
        if (rc == 0)
            rc = exec_sql(r->c, m->down, what, r->err, r->errlen);
        if (rc == 0)
            rc = record_reverted(r->c, "DELETE FROM public.schema_migrations WHERE version = $1", m,
                                 r->err, r->errlen);
        if (rc == 0)
            rc = exec_sql(r->c, "COMMIT", "COMMIT", r->err, r->errlen);
        if (rc) {
            rollback(r->c);
            return -1;
        }
        say(r, "control: reverted %04d_%s", m->version, m->name);
    }
    if ((size_t)steps > a->n)
        say(r, "control: only %zu migration(s) were applied; all reverted", a->n);
    return 0;
}

static int tenants_down(struct runner *r, int steps)
{
    struct tenant_run t = {
        .conninfo = r->conninfo, .m = r->tm, .nm = r->ntm, .down = true, .steps = steps};
    t.todo = r->tenants.n ? calloc(r->tenants.n, sizeof *t.todo) : NULL;
    if (r->tenants.n && !t.todo)
        return fail(r->err, r->errlen, "out of memory");
    for (size_t i = 0; i < r->tenants.n; i++) {
        struct tenant *x = &r->tenants.t[i];
        if (x->a.n == 0)
            continue;
        for (size_t j = x->a.n, k = 0; j > 0 && (int)k < steps; j--, k++) {
            const struct migration *m = &r->tm[x->a.versions[j - 1] - 1];
            if (!m->down) {
                free(t.todo);
                return fail(r->err, r->errlen,
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
    int rc = tenant_run(&t, r->concurrency, r->err, r->errlen);
    free(t.todo);
    if (rc)
        return -1;
    say(r, "tenant schemas: reverted the last %d migration(s) in %zu schema(s), %zu had none",
        steps, t.ntodo, r->tenants.n - t.ntodo);
    return 0;
}

/* ---- status and check ------------------------------------------------- */

/* What `migrate status` reports about the tenant track, from either source. */
struct tenant_stats {
    size_t total, current, behind, ahead, changed, unknown;
    size_t *have;  /* per tenant migration of the binary: schemas that applied it */
    bool recorded; /* from public.tenant_schema_versions (one query) */
};

/* One query over the recorded versions; 1 when some live schema is not
 * recorded (the caller then reads the schemas), 0, or -1. */
static int tenant_stats_recorded(struct runner *r, struct tenant_stats *st)
{
    PGresult *res = query(
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

static void tenant_stats_read(const struct runner *r, struct tenant_stats *st)
{
    for (size_t i = 0; i < r->tenants.n; i++) {
        const struct tenant *t = &r->tenants.t[i];
        st->total++;
        if (t->a.unknown)
            st->ahead++;
        else if (tenant_current(t, r->ntm))
            st->current++;
        else
            st->behind++;
        st->changed += t->a.changed > 0;
        st->unknown += t->a.unknown > 0;
        for (size_t k = 0; k < r->ntm; k++)
            st->have[k] += is_applied(&t->a, r->tm[k].version);
    }
}

static void status_json(const struct runner *r, const PGresult *res, const struct tenant_stats *st)
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
    struct runner r = {.conninfo = conninfo,
                       .cli = true,
                       .tolerate = true,
                       .skip_tenants = true,
                       .err = err,
                       .errlen = errlen};
    int rc = runner_open(&r, false);
    PGresult *res = NULL;
    struct tenant_stats st = {0};
    st.have = calloc(r.ntm ? r.ntm : 1, sizeof *st.have);
    if (!st.have)
        rc = fail(err, errlen, "out of memory");
    if (rc == 0 && r.skip_tenants) {
        int k = tenant_stats_recorded(&r, &st);
        if (k < 0) {
            rc = -1;
        } else if (k > 0) {
            memset(&st, 0, offsetof(struct tenant_stats, have));
            memset(st.have, 0, (r.ntm ? r.ntm : 1) * sizeof *st.have);
            r.skip_tenants = false;
            rc = tenants_read(r.c, r.tm, r.ntm, true, &r.tenants, err, errlen);
        }
    }
    if (rc == 0 && !st.recorded)
        tenant_stats_read(&r, &st);
    if (rc == 0 && (r.control.n || r.control.unknown || r.control.changed)) {
        res = query(r.c,
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
    runner_close(&r);
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

static int tenant_summary(struct runner *r, struct tenant_summary *ts)
{
    char latest[16];
    snprintf(latest, sizeof latest, "%d", r->ntm ? r->tm[r->ntm - 1].version : 0);
    const char *v[] = {latest};
    PGresult *res = query(r->c, tenant_summary_sql, 1, v, "reading the tenant schema versions",
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
    struct runner r = {.conninfo = conninfo,
                       .accept_ahead = true,
                       .skip_tenants = true,
                       .err = err,
                       .errlen = errlen};
    int rc = runner_open(&r, false);
    int cl = r.ncm ? r.cm[r.ncm - 1].version : 0, tl = r.ntm ? r.tm[r.ntm - 1].version : 0;
    char control_found[160] = "", tenant_found[200] = "";
    if (rc == 0) {
        char list[256] = "";
        size_t pending = 0, len = 0;
        for (size_t i = 0; i < r.ncm; i++) {
            if (is_applied(&r.control, r.cm[i].version))
                continue;
            if (len < sizeof list)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%04d_%s",
                                        pending ? ", " : "", r.cm[i].version, r.cm[i].name);
            pending++;
        }
        if (pending) {
            fail(err, errlen, "control migrations pending: %s", list);
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
        if (tenants_read(r.c, r.tm, r.ntm, false, &r.tenants, err, errlen) != 0)
            rc = -1;
    }
    if (rc == 0 && r.skip_tenants) {
        long ahead = ts.newest > tl ? ts.newest - tl : 0;
        if (ts.behind) {
            fail(err, errlen, "%ld of %ld tenant schema(s) behind, e.g. %s", ts.behind, ts.total,
                 ts.first_behind);
            rc = 1;
        } else if (ahead && (ts.compatible_ahead < ahead || ahead > ahead_max())) {
            fail(err, errlen,
                 "org schemas are at tenant version %04d, %ld ahead of this binary's %04d, and "
                 "%s: deploy the newer tenantd",
                 ts.newest, ahead, tl,
                 ts.compatible_ahead < ahead ? "not all of those migrations are marked compatible"
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
            if (!tenant_current(&r.tenants.t[i], r.ntm)) {
                if (!first)
                    first = r.tenants.t[i].name;
                behind++;
            }
        if (behind) {
            fail(err, errlen, "%zu of %zu tenant schema(s) behind, e.g. %s", behind, r.tenants.n,
                 first);
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
    runner_close(&r);
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
    if (compatible && ahead <= ahead_max()) {
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

/* ---- org creation ----------------------------------------------------- */

int migrate_tenant_schema(PGconn *conn, const char *schema, char *err, size_t errlen)
{
    const struct migration *m = NULL;
    size_t nm = 0;
    if (builtin_get(TRACK_TENANT, &m, &nm, err, errlen))
        return -1;
    /* Outside a transaction each statement would commit alone and a failure
     * would leave a half-made schema behind. */
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return fail(err, errlen, "creating a tenant schema needs an open transaction (BEGIN)");
    PGresult *res = query(conn, "SELECT pg_catalog.current_setting('search_path')", 0, NULL,
                          "reading search_path", err, errlen);
    if (!res)
        return -1;
    char *saved = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!saved)
        return fail(err, errlen, "out of memory");
    char *create = with_schema(conn, schema, "CREATE SCHEMA ", "", err, errlen);
    int rc = create ? 0 : -1;
    if (rc == 0)
        rc = exec_sql(conn, create, "creating the schema", err, errlen);
    free(create);
    if (rc == 0)
        rc = tenant_apply(conn, schema, m, nm, NULL, err, errlen);
    if (rc == 0) {
        /* Restore for the rest of the caller's transaction; local, so the
         * session's own value comes back at commit either way. */
        const char *v[] = {saved};
        res = query(conn, "SELECT pg_catalog.set_config('search_path', $1, true)", 1, v,
                    "restoring search_path", err, errlen);
        rc = res ? 0 : -1;
        PQclear(res);
    }
    free(saved);
    return rc;
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
    if (!*s || strlen(s) > 5)
        return -1;
    int v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -1;
        v = v * 10 + (*p - '0');
    }
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
        rc = run_up(conninfo, concurrency, true, err, sizeof err);
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
        struct runner r = {.conninfo = conninfo,
                           .concurrency = concurrency,
                           .cli = true,
                           .err = err,
                           .errlen = sizeof err};
        rc = runner_open(&r, true);
        if (rc == 0)
            rc = tenant ? tenants_down(&r, steps ? steps : 1) : control_down(&r, steps ? steps : 1);
        runner_close(&r);
    } else {
        return usage_error("unknown subcommand '%s'", argv[0]);
    }
    if (rc != 0) {
        fprintf(stderr, "tenantd migrate: %s\n", err);
        return 1;
    }
    return 0;
}
