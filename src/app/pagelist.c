/* Paged lists of an org's rows (pagelist.h). */
#include "app/pagelist.h"

#include <string.h>

#include "app/dbhttp.h"
#include "core/arena.h"
#include "core/page.h"
#include "core/problem.h"

/* The page as PostgreSQL answers it (JSON array, last position or NULL). */
static void listed(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        if (r->status == DB_ERROR && r->sqlstate && strncmp(r->sqlstate, "22", 2) == 0) {
            page_respond_bad_cursor(req); /* the right shape, an impossible date (month 13) */
            return;
        }
        db_respond_failure(req, r, "list");
        return;
    }
    page_respond(req, db_result_text(r, 0, 0), PAGE_KEY_TIME_ID, db_result_text(r, 0, 1));
}

void page_list(struct request *req, const char *schema, const char *org_id,
               const struct db_stmt *stmt)
{
    struct page pg;
    json_t *errors = NULL;
    if (!page_read(req, PAGE_LIST_DEFAULT, PAGE_LIST_MAX, PAGE_KEY_TIME_ID, &pg, &errors)) {
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return;
    }
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    const char **v = arena_alloc(req->arena, 4 * sizeof *v);
    v[0] = org_id;
    v[1] = pg.time;
    v[2] = pg.id;
    v[3] = pg.limit_text;
    db_query(pool, schema, stmt, 4, v, listed, req);
}
