/*
 * The list, get and delete routes of an org's own rows (schedules,
 * webhooks): the same three answers for each kind, so one copy here and a
 * table per kind (struct job_rows) in its file.
 */
#include <string.h>

#include "auth/auth.h"
#include "core/arena.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "app/pagelist.h"
#include "job/internal.h"

struct rows_call {
    struct request *req;
    const struct job_rows *k;
};

static struct rows_call *call(struct request *req, const struct job_rows *k)
{
    struct rows_call *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->k = k;
    return c;
}

static void got(struct db_result *r, void *ud)
{
    struct rows_call *c = ud;
    if (!db_failed(c->req, r, c->k->get_label))
        db_respond_json(c->req, r, 0, c->k->missing);
}

static void deleted(struct db_result *r, void *ud)
{
    struct rows_call *c = ud;
    if (!db_failed(c->req, r, c->k->delete_label))
        db_respond_deleted(c->req, r, c->k->missing);
}

void job_rows_list(struct request *req, const struct job_rows *k)
{
    const struct auth_ctx *a = auth_ctx(req);
    page_list(req, a->schema, a->org_id, k->list);
}

static void by_id(struct request *req, const struct job_rows *k, const struct db_stmt *stmt,
                  void (*cb)(struct db_result *r, void *ud))
{
    job_org_row_query(req, stmt, cb, call(req, k), k->bad_id);
}

void job_rows_get(struct request *req, const struct job_rows *k)
{
    by_id(req, k, k->get, got);
}

void job_rows_delete(struct request *req, const struct job_rows *k)
{
    by_id(req, k, k->del, deleted);
}
