/*
 * The operator's view of every org (routes in org.c's table):
 *
 *   GET    /v1/admin/orgs                   every org with its balance, paged
 *   POST   /v1/admin/orgs/{slug}/suspend
 *   POST   /v1/admin/orgs/{slug}/unsuspend
 *   DELETE /v1/admin/orgs/{slug}            tenantd_delete_org, as DELETE /v1/org
 *
 * AUTH_OPERATOR: with TENANTD_OPERATOR_TOKEN unset no credential can match.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "auth/auth.h"
#include "core/http.h"
#include "core/page.h"
#include "core/problem.h"
#include "core/strbuf.h"
#include "app/dbhttp.h"
#include "db/db.h"
#include "org/org_internal.h"

#define LIST_LIMIT_DEFAULT 20
#define LIST_LIMIT_MAX 100

static const struct db_stmt admin_delete_stmt = {
    "org_admin_delete",
    "SELECT o.id, public.tenantd_delete_org(o.id) FROM public.orgs o"
    " WHERE lower(o.slug) = $1 AND o.status <> 'deleted'",
};

static const struct db_stmt admin_status_stmt = {
    "org_admin_status",
    "WITH old AS (SELECT o.status FROM public.orgs o WHERE lower(o.slug) = $1"
    " AND o.status <> 'deleted'),"
    " upd AS (UPDATE public.orgs o SET status = $2,"
    " updated_at = CASE WHEN o.status = $2 THEN o.updated_at ELSE now() END"
    " WHERE lower(o.slug) = $1 AND o.status <> 'deleted'"
    " RETURNING o.id, public.tenantd_org_json(o) AS j),"
    /* The audit event of a real change (migration 0010): $3 client IP, $4 request id. */
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, action, target_type,"
    " target_id, ip, request_id, details)"
    " SELECT upd.id, 'operator', CASE $2 WHEN 'suspended' THEN 'org.suspended'"
    " ELSE 'org.unsuspended' END, 'org', upd.id::text, $3, $4, '{}' FROM upd, old"
    " WHERE old.status <> $2)"
    " SELECT id, j FROM upd",
};

/* Keyset pagination on (created_at, id), oldest first, so pages are stable
 * under inserts. $1/$2 the cursor (NULL for the first page), $3 the page
 * size plus one (to know whether another page follows), $4 a status filter
 * (NULL: every org that is not deleted). */
static const struct db_stmt admin_list_stmt = {
    "org_admin_list",
    "SELECT json_build_object('id', o.id, 'name', o.name, 'slug', o.slug, 'status', o.status,"
    " 'join_policy', o.join_policy, 'domains', to_json(o.domains),"
    " 'created_at', public.tenantd_ts(o.created_at),"
    " 'updated_at', public.tenantd_ts(o.updated_at), 'balance', coalesce(a.balance, 0)),"
    " public.tenantd_ts(o.created_at), o.id"
    " FROM public.orgs o LEFT JOIN public.credit_accounts a ON a.org_id = o.id"
    " WHERE CASE WHEN $4::text IS NULL THEN o.status <> 'deleted' ELSE o.status = $4 END"
    " AND ($1::timestamptz IS NULL OR (o.created_at, o.id) > ($1::timestamptz, $2::uuid))"
    " ORDER BY o.created_at, o.id LIMIT $3::int",
};

static void admin_status_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: changing an org's status");
        return;
    }
    if (PQntuples(r->res) == 1)
        auth_cache_forget_org(PQgetvalue(r->res, 0, 0));
    db_respond_json(req, r, 1, "No such organization.");
}

static void admin_set_status(struct request *req, const char *status)
{
    const char *slug = org_slug_param(req);
    if (!slug)
        return;
    const char **v = arena_alloc(req->arena, 4 * sizeof *v);
    v[0] = slug;
    v[1] = status;
    v[2] = req->client_ip;
    v[3] = req->request_id;
    db_query(db_pool_of(req), NULL, &admin_status_stmt, 4, v, admin_status_done, req);
}

void org_admin_suspend(struct request *req)
{
    admin_set_status(req, "suspended");
}

void org_admin_unsuspend(struct request *req)
{
    admin_set_status(req, "active");
}

static void admin_delete_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: deleting an org");
        return;
    }
    if (PQntuples(r->res) != 1 || strcmp(PQgetvalue(r->res, 0, 1), "t") != 0) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    auth_cache_forget_org(PQgetvalue(r->res, 0, 0));
    http_respond_empty(req, 204);
}

void org_admin_delete(struct request *req)
{
    const char *slug = org_slug_param(req);
    if (!slug)
        return;
    const char **v = arena_alloc(req->arena, sizeof *v);
    v[0] = slug;
    db_query(db_pool_of(req), NULL, &admin_delete_stmt, 1, v, admin_delete_done, req);
}

struct list_state {
    struct request *req;
    int limit;
    char fetch[16];
    const char *values[4];
};

static void admin_list_done(struct db_result *r, void *ud)
{
    struct list_state *st = ud;
    struct request *req = st->req;
    if (r->status != DB_OK) {
        if (r->status == DB_ERROR && r->sqlstate && strncmp(r->sqlstate, "22", 2) == 0)
            page_respond_bad_cursor(req); /* the right shape, an impossible date (Feb 30) */
        else
            db_respond_failure(req, r, "org: listing orgs");
        return;
    }
    int rows = PQntuples(r->res);
    int shown = rows > st->limit ? st->limit : rows;
    struct strbuf b = {0};
    sb_puts(&b, "{\"data\":[");
    for (int i = 0; i < shown; i++) {
        if (i)
            sb_puts(&b, ",");
        sb_put(&b, PQgetvalue(r->res, i, 0), (size_t)PQgetlength(r->res, i, 0));
    }
    sb_puts(&b, "],\"next_cursor\":");
    const char *next = NULL;
    if (rows > st->limit && shown > 0)
        next = page_cursor(req->arena, PAGE_KEY_TIME_ID,
                           arena_printf(req->arena, "%s|%s", PQgetvalue(r->res, shown - 1, 1),
                                        PQgetvalue(r->res, shown - 1, 2)));
    if (next) {
        sb_puts(&b, "\"");
        sb_puts(&b, next);
        sb_puts(&b, "\"}");
    } else {
        sb_puts(&b, "null}");
    }
    http_respond(req, 200, "application/json", b.s, b.len);
    free(b.s);
}

void org_admin_list(struct request *req)
{
    struct list_state *st = arena_calloc(req->arena, sizeof *st);
    st->req = req;
    json_t *errors = NULL;
    struct page pg;
    page_read(req, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, PAGE_KEY_TIME_ID, &pg, &errors);
    st->limit = pg.limit;
    const char *status = http_query(req, "status");
    if (status && strcmp(status, "active") != 0 && strcmp(status, "suspended") != 0 &&
        strcmp(status, "deleted") != 0)
        problem_add_error(&errors, "status", "must be active, suspended or deleted");
    if (errors) {
        problem_respond_errors(req, "The query has invalid parameters.", errors);
        return;
    }
    snprintf(st->fetch, sizeof st->fetch, "%d", st->limit + 1);
    st->values[0] = pg.time;
    st->values[1] = pg.id;
    st->values[2] = st->fetch;
    st->values[3] = status;
    db_query(db_pool_of(req), NULL, &admin_list_stmt, 4, st->values, admin_list_done, st);
}
