/*
 * Users and API keys of an org: /v1/users here, /v1/api-keys in apikeys.c
 * (one route table, below).
 *
 * Every handler validates its input, then runs exactly one statement on the
 * loop's pool; PostgreSQL renders the JSON that goes back. Every statement
 * filters by the caller's org_id (from the credential, never from the
 * request), and every id from the URL must be a UUID, else 404, so another
 * org's ids are indistinguishable from ids that do not exist.
 *
 * "The last admin can be neither demoted nor deleted" is enforced inside the
 * same statement as the change: a CTE locks the org's admin rows FOR UPDATE
 * (in id order, so two such statements never deadlock) and the change only
 * applies while more than one admin row is still locked. In READ COMMITTED
 * the second of two concurrent demotions waits for the first, re-reads the
 * rows it locks and sees one admin fewer, so both can never pass.
 */
#include "auth/auth.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/cache.h"
#include "auth/password.h"
#include "auth/tokens.h"
#include "auth/users_internal.h"
#include "core/arena.h"
#include "core/http.h"
#include "core/page.h"
#include "core/log.h"
#include "core/body.h"
#include "core/problem.h"
#include "app/dbhttp.h"
#include "db/db.h"

static void users_list(struct request *req);
static void users_create(struct request *req);
static void users_get(struct request *req);
static void users_update(struct request *req);
static void users_delete(struct request *req);

static const struct route users_routes[] = {
    {HTTP_GET, "/v1/users", AUTH_MEMBER, users_list, "listUsers"},
    {HTTP_POST, "/v1/users", AUTH_ADMIN, users_create, "createUser"},
    {HTTP_GET, "/v1/users/{id}", AUTH_MEMBER, users_get, "getUser"},
    /* Members may edit themselves (name, avatar_url, email): checked in the handler. */
    {HTTP_PATCH, "/v1/users/{id}", AUTH_MEMBER, users_update, "updateUser"},
    {HTTP_DELETE, "/v1/users/{id}", AUTH_ADMIN, users_delete, "deleteUser"},
    {HTTP_POST, "/v1/api-keys", AUTH_ADMIN, apikeys_create, "createApiKey"},
    {HTTP_GET, "/v1/api-keys", AUTH_ADMIN, apikeys_list, "listApiKeys"},
    {HTTP_DELETE, "/v1/api-keys/{id}", AUTH_ADMIN, apikeys_delete, "deleteApiKey"},
    {0},
};

const struct module users_module = {
    .name = "users",
    .routes = users_routes,
};

/* SQL reads better laid out by hand. */
/* clang-format off */
/* ---- SQL ---------------------------------------------------------------- */

static const struct db_stmt q_users_list = {
    "users_list", SQL_ORG_PAGE("public.users", "u", SQL_USER_JSON("u"), ""),
};

static const struct db_stmt q_users_get = {
    "users_get",
    "SELECT " SQL_USER_JSON("u") "::text FROM public.users u "
    "WHERE u.id = $2::uuid AND u.org_id = $1::uuid",
};

static const struct db_stmt q_users_create = {
    "users_create",
    "WITH ins AS (INSERT INTO public.users AS u (org_id, email, name, role, password_hash) "
    "VALUES ($1::uuid, $2, $3, $4, $5) RETURNING u.id, u.email, u.role, " SQL_USER_JSON("u")
    "::text AS j), "
    SQL_AUDIT("ins", "6", "7", "8", "9", "user.created", "user",
              "jsonb_build_object('email', ins.email, 'role', ins.role)", "")
    " SELECT id, j FROM ins",
};

/* The org's admins, locked in id order: the last-admin rule's guard. */
#define SQL_LOCK_ADMINS                                                                            \
    "admins AS (SELECT a.id FROM public.users a WHERE a.org_id = $1::uuid AND a.role = 'admin' "  \
    "ORDER BY a.id FOR UPDATE)"

/*
 * $3 name given, $4 name; $5 email or NULL (keep); $6 role or NULL (keep);
 * $7 avatar_url given, $8 avatar_url. An email change revokes the user's
 * refresh tokens in the same statement. Answers (found, old role, user JSON
 * or NULL when refused by the last-admin rule).
 */
static const struct db_stmt q_users_update = {
    "users_update",
    "WITH target AS (SELECT t.id, t.email, t.role FROM public.users t "
    "WHERE t.id = $2::uuid AND t.org_id = $1::uuid), " SQL_LOCK_ADMINS ", "
    "upd AS (UPDATE public.users u SET "
    "name = CASE WHEN $3::bool THEN $4 ELSE u.name END, "
    "email = coalesce($5, u.email), role = coalesce($6, u.role), "
    "avatar_url = CASE WHEN $7::bool THEN $8 ELSE u.avatar_url END, updated_at = now() "
    "WHERE u.id = $2::uuid AND u.org_id = $1::uuid AND (coalesce($6, u.role) = 'admin' "
    "OR u.role <> 'admin' OR (SELECT count(*) FROM admins) > 1) "
    "RETURNING u.id, u.email, u.role, " SQL_USER_JSON("u") "::text AS j), "
    "revoked AS (UPDATE public.refresh_tokens r SET revoked_at = now() FROM upd, target "
    "WHERE r.user_id = upd.id AND r.org_id = $1::uuid AND r.revoked_at IS NULL "
    "AND upd.email <> target.email RETURNING r.id), "
    SQL_AUDIT("upd", "9", "10", "11", "12", "user.role_changed", "user",
              "jsonb_build_object('from', (SELECT role FROM target), 'to', upd.role)",
              "WHERE upd.role <> (SELECT role FROM target)")
    ", " SQL_AUDIT_AS("aud_email", "upd", "9", "10", "11", "12", "user.email_changed", "user",
                   "jsonb_build_object('from', (SELECT email FROM target), 'to', upd.email)",
                   "WHERE upd.email <> (SELECT email FROM target)")
    " "
    "SELECT (SELECT count(*) FROM target)::int, (SELECT role FROM target), "
    "(SELECT j FROM upd)",
};

/* Answers (found, old role, deleted). Refresh tokens go by cascade. */
static const struct db_stmt q_users_delete = {
    "users_delete",
    "WITH target AS (SELECT t.id, t.role FROM public.users t "
    "WHERE t.id = $2::uuid AND t.org_id = $1::uuid), " SQL_LOCK_ADMINS ", "
    "del AS (DELETE FROM public.users u WHERE u.id = $2::uuid AND u.org_id = $1::uuid "
    "AND (u.role <> 'admin' OR (SELECT count(*) FROM admins) > 1) RETURNING u.id, u.email), "
    SQL_AUDIT("del", "3", "4", "5", "6", "user.removed", "user",
              "jsonb_build_object('email', del.email)", "")
    " "
    "SELECT (SELECT count(*) FROM target)::int, (SELECT role FROM target), "
    "(SELECT count(*) FROM del)::int",
};

/* clang-format on */

/* ---- helpers ------------------------------------------------------------ */

#define AVATAR_URL_MAX 2048

/* The {id} path parameter when it is a UUID (lower-cased into the arena),
 * else NULL after answering 404. */
const char *users_path_uuid(struct request *req, const char *what)
{
    const char *id = http_param(req, "id");
    if (!id || !token_uuid_valid(id, strlen(id))) {
        problem_respond(req, PROBLEM_NOT_FOUND, arena_printf(req->arena, "No such %s.", what));
        return NULL;
    }
    char *low = arena_strdup(req->arena, id);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return low;
}

/* An email from JSON value v, lower-cased into the arena (emails are
 * stored lowercase), or NULL with an error added. */
static const char *take_email(struct request *req, json_t *v, const char *field, json_t **errors)
{
    if (!json_is_string(v)) {
        problem_add_error(errors, field, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v) || !body_email_valid(s)) {
        problem_add_error(errors, field, BODY_EMAIL_RULE);
        return NULL;
    }
    char *low = arena_strdup(req->arena, s);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return low;
}

const char *users_take_role(json_t *v, const char *field, json_t **errors)
{
    const char *s = json_string_value(v);
    if (!s || (strcmp(s, "admin") != 0 && strcmp(s, "member") != 0)) {
        problem_add_error(errors, field, "must be \"admin\" or \"member\"");
        return NULL;
    }
    return s;
}

/* An absolute http(s) URL of at most 2048 bytes without spaces or controls. */
static const char *take_avatar_url(json_t *v, json_t **errors)
{
    const char *s = json_string_value(v);
    bool ok = s && strlen(s) == json_string_length(v) && strlen(s) <= AVATAR_URL_MAX;
    if (ok) {
        size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
        ok = scheme && s[scheme] != '\0' && s[scheme] != '/';
        for (const unsigned char *p = (const unsigned char *)s; ok && *p; p++)
            if (*p <= 0x20 || *p >= 0x7F)
                ok = false;
    }
    if (!ok) {
        problem_add_error(errors, "avatar_url",
                          "must be an http or https URL of at most 2048 characters, or null");
        return NULL;
    }
    return s;
}

/* Runs stmt with the org's schema as the connection's binding (every
 * statement here is schema-qualified, so this only spares a switch). */
static void org_query(struct request *req, const struct auth_ctx *a, const struct db_stmt *stmt,
                      int n, const char *const *values, db_cb cb, void *ud)
{
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        db_respond_unavailable(req);
        return;
    }
    db_query(pool, a->schema, stmt, n, values, cb, ud);
}

/* org_query with the audit parameters appended after values: the actor
 * (type, id), the client IP and the request id (SQL_AUDIT). */
void users_audited_query(struct request *req, const struct auth_ctx *a, const struct db_stmt *stmt,
                         int n, const char *const *values, db_cb cb, void *ud)
{
    const char **v = arena_alloc(req->arena, (size_t)(n + 4) * sizeof *v);
    memcpy(v, values, (size_t)n * sizeof *v);
    v[n] = a->kind == AUTH_KIND_USER ? "user" : a->kind == AUTH_KIND_KEY ? "api_key" : "operator";
    v[n + 1] = a->principal_id[0] ? a->principal_id : NULL;
    v[n + 2] = req->client_ip;
    v[n + 3] = req->request_id;
    org_query(req, a, stmt, n + 4, v, cb, ud);
}

bool users_insert_failed(struct request *req, struct db_result *r, const char *what)
{
    if (db_result_is(r, "23503")) {
        /* The org went away between authentication and the insert. */
        problem_respond(req, PROBLEM_UNAUTHORIZED,
                        "The credential's organization no longer exists.");
        return true;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, what);
        return true;
    }
    return false;
}

/* ---- lists -------------------------------------------------------------- */

void users_run_list(struct request *req, const struct db_stmt *stmt)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (a)
        page_list(req, a->schema, a->org_id, stmt);
}

static void users_list(struct request *req)
{
    users_run_list(req, &q_users_list);
}

/* ---- GET /v1/users/{id} ------------------------------------------------- */

static void user_get_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "get user");
        return;
    }
    db_respond_json(req, r, 0, "No such user.");
}

static void users_get(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *id = users_path_uuid(req, "user");
    if (!id)
        return;
    const char **v = arena_alloc(req->arena, 2 * sizeof *v);
    v[0] = a->org_id;
    v[1] = id;
    org_query(req, a, &q_users_get, 2, v, user_get_done, req);
}

/* ---- POST /v1/users ----------------------------------------------------- */

struct user_create {
    struct request *req;
    const struct auth_ctx *a;
    const char *values[5]; /* org_id, email, name, role, password_hash */
};

static void user_create_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_result_is(r, "23505")) {
        problem_respond(req, PROBLEM_EMAIL_TAKEN,
                        "A user with this email already exists in the organization.");
        return;
    }
    if (users_insert_failed(req, r, "create user"))
        return;
    const char *id = db_result_text(r, 0, 0), *json = db_result_text(r, 0, 1);
    if (!id || !json) {
        db_respond_failure(req, &(struct db_result){.status = DB_ERROR, .message = "no row"},
                           "create user");
        return;
    }
    http_set_header(req, "Location", arena_printf(req->arena, "/v1/users/%s", id));
    http_respond(req, 201, "application/json", json, strlen(json));
}

static void user_hashed(void *ud, int status, const char *phc)
{
    struct user_create *c = ud;
    struct request *req = c->req;
    if (status == PASSWORD_EBUSY || status == PASSWORD_ECANCELED) {
        http_set_header(req, "Retry-After", "1");
        problem_respond(req, PROBLEM_UNAVAILABLE, "The server is busy; try again shortly.");
        return;
    }
    if (status != PASSWORD_OK || !phc) {
        log_msg(LOG_ERROR, "password hash failed (%d)", status);
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
        return;
    }
    c->values[4] = arena_strdup(req->arena, phc);
    users_audited_query(req, c->a, &q_users_create, 5, c->values, user_create_done, req);
}

static void users_create(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"email", "password", "name", "role", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);

    const char *email = NULL, *name = NULL, *role = "member";
    json_t *v = json_object_get(body, "email");
    if (!v)
        problem_add_error(&errors, "email", "is required");
    else
        email = take_email(req, v, "email", &errors);

    const char *pw = NULL;
    size_t pwlen = 0;
    v = json_object_get(body, "password");
    if (!v) {
        problem_add_error(&errors, "password", "is required");
    } else if (!json_is_string(v)) {
        problem_add_error(&errors, "password", "must be a string");
    } else {
        pw = json_string_value(v);
        pwlen = json_string_length(v);
        if (strlen(pw) != pwlen) {
            problem_add_error(&errors, "password", "must not contain NUL characters");
            pw = NULL;
        } else if (!password_length_ok(pwlen)) {
            problem_add_error(&errors, "password", "must be 8 to 1024 bytes");
            pw = NULL;
        }
    }

    name = body_name(body, "name", false, &errors);

    v = json_object_get(body, "role");
    if (v)
        role = users_take_role(v, "role", &errors);

    if (errors) {
        problem_respond_errors(req, "Some fields are not valid.", errors);
        return;
    }
    struct user_create *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->a = a;
    c->values[0] = a->org_id;
    c->values[1] = email;
    c->values[2] = name ? arena_strdup(req->arena, name) : NULL;
    c->values[3] = role;
    if (!req->ctx) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The server is shutting down.");
        return;
    }
    int rc = password_hash_async(req->ctx->loop, pw, pwlen, user_hashed, c);
    if (rc == PASSWORD_EBUSY) {
        http_set_header(req, "Retry-After", "1");
        problem_respond(req, PROBLEM_UNAVAILABLE, "The server is busy; try again shortly.");
    } else if (rc != PASSWORD_OK) {
        log_msg(LOG_ERROR, "password hash could not be queued (%d)", rc);
        problem_respond(req, PROBLEM_INTERNAL, "The password could not be stored.");
    }
}

/* ---- PATCH /v1/users/{id} ----------------------------------------------- */

struct user_update {
    struct request *req;
    const char *id;
    bool demote; /* role "member" asked */
};

static void user_update_done(struct db_result *r, void *ud)
{
    struct user_update *u = ud;
    struct request *req = u->req;
    if (db_result_is(r, "23505")) {
        problem_respond(req, PROBLEM_EMAIL_TAKEN,
                        "Another user of the organization has this email.");
        return;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "update user");
        return;
    }
    const char *found = db_result_text(r, 0, 0), *old_role = db_result_text(r, 0, 1);
    const char *json = db_result_text(r, 0, 2);
    if (json) {
        /* Role and email live in this process's cache: drop it now; other
         * processes hear the database trigger's NOTIFY. */
        auth_cache_forget_user(u->id);
        http_respond(req, 200, "application/json", json, strlen(json));
    } else if (found && strcmp(found, "1") == 0 && u->demote && old_role &&
               strcmp(old_role, "admin") == 0) {
        problem_respond(req, PROBLEM_LAST_ADMIN,
                        "This is the organization's last admin: make another user admin first.");
    } else {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such user.");
    }
}

static void users_update(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *id = users_path_uuid(req, "user");
    if (!id)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    bool self = a->kind == AUTH_KIND_USER && strcasecmp(a->principal_id, id) == 0;
    if (a->role != ROLE_ADMIN) {
        if (!self) {
            problem_respond(req, PROBLEM_FORBIDDEN, "Only an admin may change another user.");
            return;
        }
        if (json_object_get(body, "role")) {
            problem_respond(req, PROBLEM_FORBIDDEN, "Only an admin may change a role.");
            return;
        }
    }
    static const char *const fields[] = {"name", "email", "role", "avatar_url", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);

    const char **vals = arena_calloc(req->arena, 8 * sizeof *vals);
    vals[0] = a->org_id;
    vals[1] = id;
    vals[2] = "f";
    vals[6] = "f";
    json_t *v;
    if (json_object_get(body, "name")) {
        vals[2] = "t"; /* null clears the name */
        const char *name = body_name(body, "name", false, &errors);
        vals[3] = name ? arena_strdup(req->arena, name) : NULL;
    }
    if ((v = json_object_get(body, "email")))
        vals[4] = take_email(req, v, "email", &errors);
    if ((v = json_object_get(body, "role")))
        vals[5] = users_take_role(v, "role", &errors);
    if ((v = json_object_get(body, "avatar_url"))) {
        vals[6] = "t";
        if (!json_is_null(v)) {
            const char *url = take_avatar_url(v, &errors);
            vals[7] = url ? arena_strdup(req->arena, url) : NULL;
        }
    }
    if (errors) {
        problem_respond_errors(req, "Some fields are not valid.", errors);
        return;
    }
    struct user_update *u = arena_calloc(req->arena, sizeof *u);
    u->req = req;
    u->id = id;
    u->demote = vals[5] && strcmp(vals[5], "member") == 0;
    users_audited_query(req, a, &q_users_update, 8, vals, user_update_done, u);
}

/* ---- DELETE /v1/users/{id} ---------------------------------------------- */

struct user_delete {
    struct request *req;
    const char *id;
};

static void user_delete_done(struct db_result *r, void *ud)
{
    struct user_delete *d = ud;
    struct request *req = d->req;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "delete user");
        return;
    }
    const char *found = db_result_text(r, 0, 0), *old_role = db_result_text(r, 0, 1);
    const char *deleted = db_result_text(r, 0, 2);
    if (deleted && strcmp(deleted, "1") == 0) {
        auth_cache_forget_user(d->id);
        http_respond_empty(req, 204);
    } else if (found && strcmp(found, "1") == 0 && old_role && strcmp(old_role, "admin") == 0) {
        problem_respond(req, PROBLEM_LAST_ADMIN,
                        "This is the organization's last admin: make another user admin first, "
                        "or delete the organization.");
    } else {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such user.");
    }
}

static void users_delete(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *id = users_path_uuid(req, "user");
    if (!id)
        return;
    struct user_delete *d = arena_calloc(req->arena, sizeof *d);
    d->req = req;
    d->id = id;
    const char **v = arena_alloc(req->arena, 2 * sizeof *v);
    v[0] = a->org_id;
    v[1] = id;
    users_audited_query(req, a, &q_users_delete, 2, v, user_delete_done, d);
}
