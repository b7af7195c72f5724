#include "app/dbhttp.h"

#include <string.h>

#include "core/arena.h"
#include "core/log.h"
#include "core/problem.h"

struct db_pool *db_pool_of(const struct request *req)
{
    return req->ctx ? req->ctx->db : NULL;
}

void db_respond_unavailable(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unavailable; try again shortly.");
}

void db_respond_json(struct request *req, const struct db_result *r, int col, const char *missing)
{
    const char *json = db_result_text(r, 0, col);
    if (!json) {
        problem_respond(req, PROBLEM_NOT_FOUND, missing);
        return;
    }
    http_respond(req, 200, "application/json", json, (size_t)PQgetlength(r->res, 0, col));
}

void db_respond_list(struct request *req, const struct db_result *r)
{
    const char *data = db_result_text(r, 0, 0);
    char *body = arena_printf(req->arena, "{\"data\":%s}", data ? data : "[]");
    http_respond(req, 200, "application/json", body, strlen(body));
}

void db_respond_deleted(struct request *req, const struct db_result *r, const char *missing)
{
    if (PQntuples(r->res) != 1)
        problem_respond(req, PROBLEM_NOT_FOUND, missing);
    else
        http_respond_empty(req, 204);
}

void db_respond_failure(struct request *req, const struct db_result *r, const char *what)
{
    if (r->status == DB_UNAVAILABLE) {
        db_respond_unavailable(req);
        return;
    }
    if (db_result_retryable(r)) {
        log_msg(LOG_WARN, "%s not applied: %s (%s)", what, r->message ? r->message : "?",
                r->sqlstate);
        db_respond_unavailable(req);
        return;
    }
    log_msg(LOG_ERROR, "%s failed: %s (%s)", what, r->message ? r->message : "?",
            r->sqlstate ? r->sqlstate : "?");
    problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
}

bool db_failed(struct request *req, const struct db_result *r, const char *what)
{
    if (r->status == DB_OK)
        return false;
    db_respond_failure(req, r, what);
    return true;
}
