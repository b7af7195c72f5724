#ifndef TENANTD_APP_DBHTTP_H
#define TENANTD_APP_DBHTTP_H
/* app/ joins core/ (HTTP) and db/ for the modules: neither of those two may
 * know the other, so the answers to database results live a layer above. */
#include <stdbool.h>

#include "core/http.h"
#include "db/db.h"
#include "db/result.h"

/* The request's loop pool, or NULL off a loop. */
struct db_pool *db_pool_of(const struct request *req);

/* 503 with Retry-After: the database is away; nothing was done. */
void db_respond_unavailable(struct request *req);

/* 200 with the JSON text of row 0's column col, or 404 with `missing` when
 * the result has no such row or the cell is NULL. */
void db_respond_json(struct request *req, const struct db_result *r, int col, const char *missing);

/* 200 {"data": <row 0, column 0>}: the cell is a JSON array built by
 * PostgreSQL (json_agg), NULL for none. */
void db_respond_list(struct request *req, const struct db_result *r);

/* 204 when the statement touched (returned) one row, else 404 with
 * `missing`: for DELETE ... RETURNING on an id the caller's org owns. */
void db_respond_deleted(struct request *req, const struct db_result *r, const char *missing);

/*
 * Answers a failed statement: 503 with Retry-After when the database is
 * away, or when the statement was cancelled (class 57: statement timeout,
 * shutdown) or lost a serialization/deadlock race (class 40) — nothing was
 * applied and a retry may succeed; otherwise 500, logged with `what`. Never
 * puts SQL or the server's message in the answer.
 */
void db_respond_failure(struct request *req, const struct db_result *r, const char *what);

/* For callbacks: false when r is DB_OK; else answers it with
 * db_respond_failure and returns true. */
bool db_failed(struct request *req, const struct db_result *r, const char *what);

#endif
