#include "db/result.h"

#include <string.h>

#include "core/log.h"
#include "core/problem.h"

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

static void respond_unavailable(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unavailable; try again shortly.");
}

void db_respond_failure(struct request *req, const struct db_result *r, const char *what)
{
    if (r->status == DB_UNAVAILABLE) {
        respond_unavailable(req);
        return;
    }
    if (r->sqlstate && (strncmp(r->sqlstate, "57", 2) == 0 || strncmp(r->sqlstate, "40", 2) == 0)) {
        log_msg(LOG_WARN, "%s not applied: %s (%s)", what, r->message ? r->message : "?",
                r->sqlstate);
        respond_unavailable(req);
        return;
    }
    log_msg(LOG_ERROR, "%s failed: %s (%s)", what, r->message ? r->message : "?",
            r->sqlstate ? r->sqlstate : "?");
    problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
}
