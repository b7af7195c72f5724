#ifndef TENANTD_DB_DB_H
#define TENANTD_DB_DB_H
#include <stdbool.h>
#include <libpq-fe.h>
#include <uv.h>

struct metrics;

/*
 * Async PostgreSQL for one event loop: a pool of non-blocking libpq
 * connections watched by uv_poll. Queries of several requests share a
 * connection through pipeline mode (up to pipeline_depth in flight, each
 * followed by its own sync, so one request's error never aborts another's).
 * Never blocks the loop.
 *
 * Tenant affinity: a query for an org's schema goes to the connection the
 * schema maps to by rendezvous hashing over the pool's slots, so each
 * backend sees about orgs/size schemas (PostgreSQL caches the catalogs of
 * every schema a backend touched). Tenant statements are written once with
 * a {schema} placeholder; the pool prepares the qualified text per
 * (connection, schema) and keeps a bounded LRU of them per connection. The
 * pool never changes search_path: a statement runs in an org's schema only
 * because its text names it, so no placement can run it in the wrong one.
 */
struct db_pool;

/* The pools of one process's loops (db/home.c): with a group, a tenant
 * statement runs on the pool of its schema's home loop (a hash of the schema
 * over the loops) and the other loops hand it over, so each org is cached by
 * one backend in all, not one per loop. Made before the pools, freed after
 * every pool of it closed. */
struct db_group;
struct db_group *db_group_new(int nloops);
void db_group_free(struct db_group *g);
/* The index (0 .. nloops-1) of the loop a schema's tenant statements run on. */
int db_home_of(const struct db_group *g, const char *schema);

struct db_pool_options {
    const char *conninfo;    /* libpq connection string or URI */
    int size;                /* connections at most */
    int pipeline_depth;      /* queries in flight per connection; 1 = no pipelining */
    int wait_timeout_ms;     /* a query waiting longer for a connection fails DB_UNAVAILABLE */
    int statement_timeout_ms;/* PostgreSQL statement_timeout; 0 = none */
    int reconnect_max_ms;    /* back-off ceiling between reconnect attempts */
    /* While every connection is up and full, a query that waited this long
     * for one fails DB_UNAVAILABLE, and while the oldest waiting one has, a
     * new query fails at once rather than queue (overload sheds early); 0 =
     * never. */
    int shed_wait_ms;
    int statement_cache;     /* tenant statements prepared per connection; 0 = 4000 */
    int org_inflight;        /* statements in flight per schema; 0 = pipeline_depth (at least 3) */
    int recycle_schemas;     /* distinct schemas before a backend is replaced; 0 = 5000 */
    struct metrics *metrics; /* may be NULL */
    struct db_group *group;  /* NULL: this pool serves every schema itself */
    int group_index;         /* this loop's index in group */
};

/* A statement. With a name it is prepared once per connection (lazily) and
 * run with PQsendQueryPrepared; without one it runs with PQsendQueryParams.
 * A tenant statement is one whose text names the org's schema as {schema}
 * (e.g. "SELECT ... FROM {schema}.records"): the pool puts in the quoted
 * schema of the query, so it needs a schema and no search_path. Functions
 * it calls must be qualified too (public.jsonb_merge_patch).
 * Statements are static data: `static const struct db_stmt q = {...}`. */
struct db_stmt {
    const char *name; /* unique across the program, or NULL */
    const char *sql;  /* one statement, $1.. parameters; {schema}: a tenant statement */
};

enum db_status {
    DB_OK,          /* res holds the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK) */
    DB_ERROR,       /* the statement failed: sqlstate and message set */
    DB_UNAVAILABLE, /* no connection in time, or the connection was lost */
};

struct db_result {
    enum db_status status;
    PGresult *res;        /* valid during the callback only; db frees it after, unless
                           * the callback took it (set res to NULL; then it PQclears) */
    const char *sqlstate; /* e.g. "23505"; NULL unless DB_ERROR */
    const char *message;  /* for logs only, never for clients */
};

typedef void (*db_cb)(struct db_result *r, void *ud);

/* Creates the pool on `loop` and opens connections lazily. NULL on bad options. */
struct db_pool *db_pool_new(uv_loop_t *loop, const struct db_pool_options *opts);

/* Stops accepting queries; fails queued ones with DB_UNAVAILABLE, lets the ones
 * in flight finish, closes every connection and handle, frees the pool, then
 * calls done(ud) from the loop. */
void db_pool_close(struct db_pool *pool, void (*done)(void *ud), void *ud);

/*
 * Queues one statement for `schema` (NULL = no org: any connection; a
 * schema name, never user text; quoted by db). With a schema the query goes
 * to the schema's affine connection (or a bounded fallback) and, for a
 * tenant statement, runs the text qualified with it; a tenant statement
 * without a schema fails DB_ERROR. values (text format, NULL for SQL NULL)
 * must stay valid until cb runs. cb runs exactly once, always from a later
 * loop iteration, never from inside db_query.
 */
void db_query(struct db_pool *pool, const char *schema, const struct db_stmt *stmt, int nparams,
              const char *const *values, db_cb cb, void *ud);

struct db_pool_stats {
    int connections; /* open or opening */
    int in_use;      /* with queries in flight */
    int idle;
    int waiting;     /* queries waiting for a connection */
    unsigned long schema_switches; /* search_path changes: the pool makes none */
    unsigned long reconnects;
    unsigned long stmt_hits, stmt_misses, stmt_evictions; /* tenant statement cache */
    unsigned long recycles;  /* backends replaced for having seen too many schemas */
    unsigned long spills;    /* schema queries placed off their affine connection */
    unsigned long routed;    /* tenant statements handed to their home loop's pool */
    int schemas_max;         /* most distinct schemas one open backend has seen */
    int schemas_total;       /* summed over open backends */
    int statements;          /* tenant statements prepared, summed over connections */
};
void db_pool_stats(const struct db_pool *pool, struct db_pool_stats *out);

#endif
