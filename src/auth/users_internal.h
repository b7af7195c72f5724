#ifndef TENANTD_AUTH_USERS_INTERNAL_H
#define TENANTD_AUTH_USERS_INTERNAL_H
#include <stdbool.h>

#include <jansson.h>

#include "auth/auth.h"
#include "core/http.h"
#include "db/db.h"
#include "app/pagelist.h"

/*
 * What users.c (/v1/users, the route table) and apikeys.c (/v1/api-keys)
 * share: the SQL building blocks and the request helpers.
 */

/* SQL reads better laid out by hand. */
/* clang-format off */
/* RFC 3339 UTC text and the User resource: SQL functions of migration
 * 0002 (public.tenantd_ts, public.tenantd_user_json), so every route renders
 * them alike. */
#define SQL_TS(col) "public.tenantd_ts(" col ")"
#define SQL_USER_JSON(u) "public.tenantd_user_json(" u ")"


/*
 * The audit event of a change, written by the changing statement itself
 * (migration 0010): a CTE inserting one row per row of `from` (none when
 * the change did nothing). $a..$a+3 are audited_query's actor type, actor
 * id, client IP and request id.
 */
#define SQL_AUDIT(from, a, b, c, d, action, target_type, details, where)                            \
    SQL_AUDIT_AS("aud", from, a, b, c, d, action, target_type, details, where)
#define SQL_AUDIT_AS(name, from, a, b, c, d, action, target_type, details, where)                  \
    name " AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type, " \
    "target_id, ip, request_id, details) SELECT $1::uuid, $" a ", $" b ", '" action "', "          \
    "'" target_type "', " from ".id::text, $" c ", $" d ", " details " FROM " from " " where ")"

/* clang-format on */

/* The {id} path parameter when it is a UUID (lower-cased into the arena),
 * else NULL after answering 404 "No such <what>.". */
const char *users_path_uuid(struct request *req, const char *what);

/* "admin" or "member" from JSON value v, or NULL with an error added. */
const char *users_take_role(json_t *v, const char *field, json_t **errors);

/* Runs stmt (n values) with the audit parameters appended after values: the
 * actor (type, id), the client IP and the request id (SQL_AUDIT). */
void users_audited_query(struct request *req, const struct auth_ctx *a, const struct db_stmt *stmt,
                         int n, const char *const *values, db_cb cb, void *ud);

/* True after answering when an insert into the caller's org failed: 401
 * when the org went away between authentication and the insert, else as
 * db_respond_failure(what). False when r is fine. */
bool users_insert_failed(struct request *req, struct db_result *r, const char *what);

/* Answers one page of stmt (an SQL_ORG_PAGE over the caller's org). */
void users_run_list(struct request *req, const struct db_stmt *stmt);

/* The /v1/api-keys handlers (apikeys.c). */
void apikeys_create(struct request *req);
void apikeys_list(struct request *req);
void apikeys_delete(struct request *req);

#endif
