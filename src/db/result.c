#include "db/result.h"

#include <string.h>

const char *db_result_text(const struct db_result *r, int row, int col)
{
    if (!r->res || PQntuples(r->res) <= row || PQnfields(r->res) <= col ||
        PQgetisnull(r->res, row, col))
        return NULL;
    return PQgetvalue(r->res, row, col);
}

bool db_result_is(const struct db_result *r, const char *sqlstate)
{
    return r->status == DB_ERROR && r->sqlstate && strcmp(r->sqlstate, sqlstate) == 0;
}

bool db_result_retryable(const struct db_result *r)
{
    return r->status == DB_UNAVAILABLE || (r->sqlstate && (strncmp(r->sqlstate, "57", 2) == 0 ||
                                                           strncmp(r->sqlstate, "40", 2) == 0));
}
