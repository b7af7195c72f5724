/*
 * The audit log's routes: GET /v1/audit-events (an org's admins) and
 * GET /v1/admin/orgs/{slug}/audit-events (the operator). Events are
 * written by the statements that make the changes (migration 0010,
 * users.c, session.c, accounts.c, resetverify.c, oidc.c, oidclink.c);
 * public.audit_events refuses UPDATE, DELETE and TRUNCATE. Newest first by
 * seq; the cursor is the last seq of a page (base64url), so events added
 * meanwhile never shift a page.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/internal.h"
#include "core/arena.h"
#include "core/http.h"
#include "core/page.h"
#include "core/rfc3339.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200

/* $1 org id, or NULL with $7 the org's slug (operator); $2 actor id, $3
 * action, $4 since, $5 cursor seq, $6 limit. Answers (page JSON, next
 * cursor seq or NULL, whether the org exists). The cursor stays an index
 * condition on the generic plan (see job_list). */
static const struct db_stmt q_audit_list = {
    "audit_list",
    "WITH org AS (SELECT o.id FROM public.orgs o WHERE o.id = $1::uuid"
    " OR ($1::uuid IS NULL AND o.slug = lower($7))),"
    " page AS (SELECT e.seq, public.tenantd_audit_json(e) AS j FROM public.audit_events e"
    " WHERE e.org_id = (SELECT id FROM org) AND ($2::text IS NULL OR e.actor_id = $2)"
    " AND ($3::text IS NULL OR e.action = $3) AND ($4::timestamptz IS NULL OR e.at >= $4)"
    " AND e.seq < coalesce($5::bigint, 9223372036854775807) ORDER BY e.seq DESC LIMIT $6::int + 1),"
    " numbered AS (SELECT p.*, row_number() OVER (ORDER BY p.seq DESC) AS n FROM page p)"
    " SELECT coalesce((SELECT json_agg(j ORDER BY n) FROM numbered WHERE n <= $6::int),"
    " '[]'::json)::text, (SELECT seq::text FROM numbered WHERE n = $6::int AND EXISTS"
    " (SELECT 1 FROM numbered WHERE n > $6::int)), EXISTS (SELECT 1 FROM org)",
};

static void listed(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status == DB_ERROR && r->sqlstate && strncmp(r->sqlstate, "22", 2) == 0) {
        json_t *errors = NULL;
        problem_add_error(&errors, "since", "must be an RFC 3339 date-time");
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return;
    }
    if (db_failed(req, r, "list audit events"))
        return;
    const char *data = db_result_text(r, 0, 0), *next = db_result_text(r, 0, 1);
    const char *exists = db_result_text(r, 0, 2);
    if (!exists || strcmp(exists, "t") != 0) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    page_respond(req, data, PAGE_KEY_SEQ, next);
}

/* A query value of at most max bytes without control characters. */
static const char *short_query(struct request *req, const char *name, size_t max, json_t **errors)
{
    const char *s = http_query(req, name);
    if (!s)
        return NULL;
    bool ok = *s && strlen(s) <= max;
    for (const unsigned char *p = (const unsigned char *)s; ok && *p; p++)
        ok = *p >= 0x20 && *p != 0x7F;
    if (!ok) {
        problem_add_error(errors, name,
                          arena_printf(req->arena, "must be 1 to %zu printable characters", max));
        return NULL;
    }
    return s;
}

static void run(struct request *req, const char *org_id, const char *slug)
{
    json_t *errors = NULL;
    const char **v = arena_calloc(req->arena, 7 * sizeof *v);
    v[0] = org_id;
    v[1] = short_query(req, "actor", 64, &errors);
    v[2] = short_query(req, "action", 100, &errors);
    v[3] = short_query(req, "since", 40, &errors);
    if (v[3] && !rfc3339_valid(v[3])) {
        problem_add_error(&errors, "since", "must be an RFC 3339 date-time");
        v[3] = NULL;
    }
    struct page pg;
    page_read(req, LIMIT_DEFAULT, LIMIT_MAX, PAGE_KEY_SEQ, &pg, &errors);
    v[4] = pg.seq;
    if (errors) {
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return;
    }
    v[5] = pg.limit_text;
    v[6] = slug;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    db_query(pool, NULL, &q_audit_list, 7, v, listed, req);
}

void audit_list(struct request *req);
void audit_list_operator(struct request *req);

void audit_list(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    run(req, a->org_id, NULL);
}

void audit_list_operator(struct request *req)
{
    const char *slug = http_param(req, "slug");
    if (!slug || !*slug || strlen(slug) > 100) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    run(req, NULL, slug);
}
