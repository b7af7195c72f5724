#ifndef TENANTD_APP_PAGELIST_H
#define TENANTD_APP_PAGELIST_H
/* Paged lists of an org's rows: the SQL of one page and its route. The
 * rule for every list (?limit=, ?cursor=, {data, next_cursor}) is
 * core/page.h's; this is the common case of rows ordered by
 * (created_at, id), cursor shape PAGE_KEY_TIME_ID. */
#include "core/http.h"
#include "db/db.h"

/* SQL reads better laid out by hand. */
/* clang-format off */
/*
 * One page of `table alias` rows of the org $1, ordered by (created_at, id),
 * both ascending so that rows inserted later land after every cursor
 * already handed out; `json` renders a row, `extra_where` ("AND ...")
 * narrows them. $2/$3 are the cursor (NULL for the first page), $4 the page
 * size. Answers the page as a JSON array and, when more rows follow, the
 * last row's position.
 */
#define SQL_ORG_PAGE(table, alias, json, extra_where)                                              \
    "WITH page AS (SELECT " alias ".id, " alias ".created_at, " json " AS j FROM " table " "      \
    alias " WHERE " alias ".org_id = $1::uuid " extra_where " AND ($2::timestamptz IS NULL OR ("  \
    alias ".created_at, " alias ".id) > ($2::timestamptz, $3::uuid)) ORDER BY " alias            \
    ".created_at, " alias ".id LIMIT $4::int + 1), "                                              \
    "numbered AS (SELECT p.*, row_number() OVER (ORDER BY p.created_at, p.id) AS n FROM page p) " \
    "SELECT coalesce((SELECT json_agg(j ORDER BY n) FROM numbered WHERE n <= $4::int), "          \
    "'[]'::json)::text, (SELECT public.tenantd_ts(created_at) || '|' || id FROM numbered WHERE "  \
    "n = $4::int AND EXISTS (SELECT 1 FROM numbered WHERE n > $4::int))"
/* clang-format on */

#define PAGE_LIST_DEFAULT 20
#define PAGE_LIST_MAX 100

/* Reads ?limit= (default 20, at most 100) and ?cursor=, runs stmt (an
 * SQL_ORG_PAGE) for org_id in schema's pool placement, and answers the page
 * (422 for a bad limit or cursor, 503/500 for the database). */
void page_list(struct request *req, const char *schema, const char *org_id,
               const struct db_stmt *stmt);

#endif
