#ifndef TENANTD_DB_RESULT_H
#define TENANTD_DB_RESULT_H
#include <stdbool.h>

#include "db/db.h"

/* Reading a db_result. The HTTP answers to results live in app/dbhttp.h:
 * db/ also serves the migration runner and the workers, and speaks no HTTP. */

/* The text of (row, col), or NULL when the result has no such cell or it is
 * SQL NULL. Valid during the db callback only. */
const char *db_result_text(const struct db_result *r, int row, int col);

/* True when the statement failed with this SQLSTATE (e.g. "23505"). */
bool db_result_is(const struct db_result *r, const char *sqlstate);

/* True when the statement was not applied and a retry may succeed: the
 * database is away, the statement was cancelled (class 57: statement
 * timeout, shutdown) or lost a serialization/deadlock race (class 40). */
bool db_result_retryable(const struct db_result *r);

#endif
