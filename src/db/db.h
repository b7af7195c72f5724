#ifndef TENANTD_DB_DB_H
#define TENANTD_DB_DB_H
#include <stdbool.h>
#include <libpq-fe.h>
#include <uv.h>

struct metrics;

/*
 * Async PostgreSQL for one event loop: a pool of non-blocking libpq
 * connections watched by uv_poll, each bound to one schema at a time
 * (search_path "<schema>", public) and kept bound while idle so the next
 * request of the same org reuses it and its prepared statements. Queries of
 * several requests share a connection through pipeline mode (up to
 * db_pipeline_depth in flight, each followed by its own sync, so one
 * request's error never aborts another's). Never blocks the loop.
 */
struct db_pool;

struct db_pool_options {
    const char *conninfo;    /* libpq connection string or URI */
    int size;                /* connections at most */
    int pipeline_depth;      /* queries in flight per connection; 1 = no pipelining */
    int wait_timeout_ms;     /* a query waiting longer for a connection fails DB_UNAVAILABLE */
    int statement_timeout_ms;/* PostgreSQL statement_timeout; 0 = none */
    int reconnect_max_ms;    /* back-off ceiling between reconnect attempts */
    /* Every connection up and full, and the oldest waiting query waited
     * this long: a new query fails DB_UNAVAILABLE at once rather than
     * queue (overload sheds early); 0 = never. */
    int shed_wait_ms;
    struct metrics *metrics; /* may be NULL */
};

/* A statement. With a name it is prepared once per connection (lazily) and
 * run with PQsendQueryPrepared; without one it runs with PQsendQueryParams.
 * Statements are static data: `static const struct db_stmt q = {...}`. */
struct db_stmt {
    const char *name; /* unique across the program, or NULL */
    const char *sql;  /* one statement, $1.. parameters */
};

enum db_status {
    DB_OK,          /* res holds the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK) */
    DB_ERROR,       /* the statement failed: sqlstate and message set */
    DB_UNAVAILABLE, /* no connection in time, or the connection was lost */
};

struct db_result {
    enum db_status status;
    PGresult *res;        /* valid during the callback only; db frees it after */
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
 * Queues one statement on a connection bound to `schema` (NULL = "public";
 * a schema name, never user text; quoted by db). values (text format, NULL
 * for SQL NULL) must stay valid until cb runs. cb runs exactly once, always
 * from a later loop iteration, never from inside db_query.
 */
void db_query(struct db_pool *pool, const char *schema, const struct db_stmt *stmt, int nparams,
              const char *const *values, db_cb cb, void *ud);

struct db_pool_stats {
    int connections; /* open or opening */
    int in_use;      /* with queries in flight */
    int idle;
    int waiting;     /* queries waiting for a connection */
    unsigned long schema_switches;
    unsigned long reconnects;
};
void db_pool_stats(const struct db_pool *pool, struct db_pool_stats *out);

#endif
