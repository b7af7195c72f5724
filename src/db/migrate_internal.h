#ifndef TENANTD_DB_MIGRATE_INTERNAL_H
#define TENANTD_DB_MIGRATE_INTERNAL_H
/*
 * Shared by the migration runner's files (db/migrate*.c) only: the
 * embedded migrations (migrate_load.c), the libpq helpers and a run
 * (migrate.c), the tenant schemas (migrate_tenant.c), the command line and
 * status reports (migrate_cli.c). Blocking libpq throughout.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "db/migrate.h"

#define ERRBUF 1024

#define MIGRATIONS_COLUMNS                                                                         \
    " (version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"                       \
    " applied_at timestamptz NOT NULL DEFAULT now())"

/* "control" / "tenant": the folder under migrations/. */
extern const char *const mig_track_dir[2];

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

struct tenant {
    char *name;
    bool has_table; /* its schema_migrations exists */
    struct applied a;
};

struct tenant_list {
    struct tenant *t;
    size_t n;
};

/* The tenant phase: `concurrency` threads, each with its own connection,
 * take schemas from a shared index; one transaction per schema. */
struct mig_tenant_run {
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
    bool bodies_checked; /* a schema committed with check_function_bodies on */
    char err[ERRBUF];
};

struct mig_runner {
    const char *conninfo;
    int concurrency;
    bool cli;            /* plain lines on stdout and a progress line; else JSON logs */
    bool tolerate;       /* status: count edited or unknown migrations, do not fail */
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

/* printf into err (when given); returns -1. */
__attribute__((format(printf, 3, 4))) int mig_fail(char *err, size_t errlen, const char *fmt, ...);

/* libpq's message on one line (newlines and tabs to spaces). */
void mig_one_line(char *s);

/* The embedded migrations of a track, loaded once per process. */
int mig_builtin(enum migration_track t, const struct migration **m, size_t *n, char *err,
                size_t errlen);

/* A blocking connection with warnings logged; NULL with err filled. */
PGconn *mig_connect(const char *conninfo, char *err, size_t errlen);
/* Runs sql (no result rows wanted): 0, or -1 with err saying `what` failed. */
int mig_exec(PGconn *c, const char *sql, const char *what, char *err, size_t errlen);
/* Runs sql with n text parameters: the result (PQclear it), or NULL with err. */
PGresult *mig_query(PGconn *c, const char *sql, int n, const char *const *vals, const char *what,
                    char *err, size_t errlen);
void mig_rollback(PGconn *c);
/* malloc'd before + quoted schema + after, or NULL with err. */
char *mig_with_schema(PGconn *c, const char *schema, const char *before, const char *after,
                      char *err, size_t errlen);
int mig_set_search_path(PGconn *c, const char *schema, char *err, size_t errlen);
/* Records m in a schema_migrations (applied: sql takes $1 version, $2 name,
 * $3 checksum) or forgets it (not applied: $1 version only). */
int mig_record(PGconn *c, const char *sql, const struct migration *m, bool applied, char *err,
               size_t errlen);
double mig_now_ms(void);

/* How many compatible migrations ahead a binary accepts. */
int mig_ahead_max(void);
int mig_check_applied(const PGresult *rows, enum migration_track t, const char *where,
                      const struct migration *m, size_t nm, bool tolerate, bool accept_ahead,
                      struct applied *a, char *err, size_t errlen);
bool mig_is_applied(const struct applied *a, int version);

/* Tenant schemas (migrate_tenant.c). */
void mig_tenants_free(struct tenant_list *l);
int mig_tenants_read(PGconn *c, const struct migration *m, size_t nm, bool tolerate,
                     struct tenant_list *l, char *err, size_t errlen);
bool mig_tenant_current(const struct tenant *t, size_t nm);
int mig_tenant_run(struct mig_tenant_run *r, int concurrency, char *err, size_t errlen);

/* A run (migrate.c). */
__attribute__((format(printf, 2, 3))) void mig_say(const struct mig_runner *r, const char *fmt,
                                                   ...);
int mig_runner_open(struct mig_runner *r, bool lock);
void mig_runner_close(struct mig_runner *r);
int mig_run_up(const char *conninfo, int concurrency, bool cli, char *err, size_t errlen);
int mig_control_down(struct mig_runner *r, int steps);
int mig_tenants_down(struct mig_runner *r, int steps);

#endif
