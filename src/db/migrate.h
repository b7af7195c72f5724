#ifndef TENANTD_DB_MIGRATE_H
#define TENANTD_DB_MIGRATE_H
#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>

/*
 * Migrations compiled into the binary (migrations/control and
 * migrations/tenant, files NNNN_name.up.sql and NNNN_name.down.sql).
 * Control migrations apply to `public`; tenant migrations to every org's
 * schema. Each schema records what it has applied in its own
 * schema_migrations (version, name, checksum, applied_at); an applied
 * migration whose file changed since is an error. The runner uses blocking
 * libpq: it runs from the command line and at start-up, never on a loop.
 */

enum migration_track { TRACK_CONTROL, TRACK_TENANT };

struct migration {
    int version;
    const char *name;   /* "orgs" for 0001_orgs.up.sql; static */
    const char *up;     /* SQL text */
    const char *down;   /* SQL text, or NULL when there is no .down.sql */
    char checksum[65];  /* hex SHA-256 of `up` */
    bool compatible;    /* `up` starts with the line MIGRATION_COMPATIBLE_MARK */
};

/*
 * Expand/contract deploys: a migration whose .up.sql begins with this line
 * only adds what older binaries ignore (a table, a nullable column, a
 * function). The binary applying it records that in the database, and an
 * older binary accepts a database up to TENANTD_COMPATIBLE_AHEAD such
 * migrations ahead of it (any other newer migration: refused).
 */
#define MIGRATION_COMPATIBLE_MARK "-- tenantd: compatible"

/* A file name of the form NNNN_name.(up|down).sql: fills version, name (up
 * to namelen) and *is_up; returns 0, or -1 when the name does not fit. */
int migration_parse_name(const char *file, int *version, char *name, size_t namelen, bool *is_up);

/* Hex SHA-256 of text. */
void migration_checksum(const char *text, size_t len, char out[65]);

/*
 * The sorted migrations of a track from `files` (an embedded_file list
 * ending in a zeroed entry). Fails (-1, message in err) on a bad name, a
 * duplicate version, a down without an up, or a gap in numbering. *out is
 * malloc'd (free it); strings point into the files.
 */
struct embedded_file;
int migrations_load(const struct embedded_file *files, enum migration_track track,
                    struct migration **out, size_t *n, char *err, size_t errlen);

/* The newest version of a track in this binary (0 when none). */
int migrate_latest(enum migration_track track);

/* `tenantd migrate up | down [N] [--tenant] | status [--json]`. Returns the exit code. */
int migrate_cli(const char *conninfo, int argc, char **argv, int concurrency);

/* Applies every pending migration (control, then each tenant schema).
 * Returns 0, or -1 with err filled. */
int migrate_up(const char *conninfo, int concurrency, char *err, size_t errlen);

/* 0 when the schema is current, or ahead by at most TENANTD_COMPATIBLE_AHEAD
 * compatible migrations (err then says what was found, e.g. "current
 * (control 0009, tenant 0002, 3 org schemas)"); 1 when it is behind; -1 on
 * error (cannot connect, an applied migration was edited, or the database is
 * ahead by migrations this binary may not run on), with err filled. Reads
 * the tenant versions recorded in the control schema (one query), each org
 * schema only when some are not recorded there. */
int migrate_check(const char *conninfo, char *err, size_t errlen);

/*
 * /ready: MIGRATE_READY_SQL takes $1 = this binary's newest control
 * version and returns one row (newest applied version, how many applied
 * are newer than $1, whether all of those are marked compatible); it works
 * before and after the `compatible` column exists. migrate_ready_verdict
 * judges that row: 0 ready (msg says what was found), 1 not (msg is the
 * problem's detail).
 */
#define MIGRATE_READY_SQL                                                                          \
    "SELECT coalesce(max(version), 0), count(*) FILTER (WHERE version > $1),"                      \
    " coalesce(bool_and(coalesce((pg_catalog.to_jsonb(m) ->> 'compatible')::boolean, false))"      \
    " FILTER (WHERE version > $1), true) FROM public.schema_migrations m"
int migrate_ready_verdict(const PGresult *res, char *msg, size_t msglen);

#endif
