/*
 * POST /v1/users/import (admin): up to USERS_IMPORT_MAX users of another
 * system with their password hashes, in one statement, all or nothing.
 *
 * Every entry is checked before anything is written: a bad email, name or
 * role, or a password_hash of no known format (auth/hashimport.h), is a 422
 * naming the entry (`users[3].password_hash`). Emails already in the org
 * are skipped (counted in `skipped`, never overwritten: an import must not
 * take over an account), as are repeats within the request.
 */
#include "auth/userimport.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "auth/auth.h"
#include "auth/hashimport.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"
#include "idem/idem.h"

#define USERS_IMPORT_MAX 1000
#define HASH_MAX_LEN 512

static void users_import(struct request *req);

static const struct route userimport_routes[] = {
    {HTTP_POST, "/v1/users/import", AUTH_ADMIN, users_import, "importUsers"},
    {0},
};

const struct module userimport_module = {
    .name = "users-import",
    .routes = userimport_routes,
};

/* $1 org id, $2 the checked users as a JSON array of {email, name, role,
 * password_hash}; $3/$4 actor, $5 IP, $6 request id of the audit events
 * (one user.created per user inserted, migration 0010). Answers the number
 * inserted and their ids and emails. */
static const struct db_stmt q_import = {
    "users_import",
    "WITH ins AS (INSERT INTO public.users (org_id, email, name, role, password_hash) "
    "SELECT $1::uuid, x.u ->> 'email', x.u ->> 'name', x.u ->> 'role', x.u ->> 'password_hash' "
    "FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS x(u, n) ORDER BY x.n "
    "ON CONFLICT (org_id, email) DO NOTHING RETURNING id, email, role), "
    "aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type, "
    "target_id, ip, request_id, details) SELECT $1::uuid, $3, $4, 'user.created', 'user', "
    "ins.id::text, $5, $6, jsonb_build_object('email', ins.email, 'role', ins.role, 'via', "
    "'import') FROM ins) "
    "SELECT count(*), coalesce(json_agg(json_build_object('id', id, 'email', email) "
    "ORDER BY email), '[]')::text FROM ins"};

struct import_op {
    struct request *req;
    struct idem_claim *claim;
    const char *values[6];
    size_t total;
};

/* One entry checked into a new JSON object; NULL with errors added. */
static json_t *take_user(struct request *req, json_t *u, size_t i, json_t **errors)
{
    const char *at = arena_printf(req->arena, "users[%zu]", i);
    if (!json_is_object(u)) {
        problem_add_error(errors, at, "must be an object");
        return NULL;
    }
    static const char *const allowed[] = {"email", "name", "role", "password_hash", NULL};
    int before = *errors ? (int)json_array_size(*errors) : 0;
    body_unknown_fields(req, u, allowed, at, errors);
    json_t *email = json_object_get(u, "email"), *name = json_object_get(u, "name"),
           *role = json_object_get(u, "role"), *hash = json_object_get(u, "password_hash");
    const char *e = json_string_value(email);
    if (!e || strlen(e) != json_string_length(email) || !body_email_valid(e))
        problem_add_error(errors, arena_printf(req->arena, "%s.email", at), BODY_EMAIL_RULE);
    const char *ns = json_string_value(name);
    if (name && !json_is_null(name) &&
        (!ns || strlen(ns) != json_string_length(name) || body_name_problem(ns)))
        problem_add_error(
            errors, arena_printf(req->arena, "%s.name", at),
            "must be 1 to 100 characters, not only spaces, without control characters, or null");
    const char *r = role && !json_is_null(role) ? json_string_value(role) : "member";
    if (!r || (strcmp(r, "admin") != 0 && strcmp(r, "member") != 0))
        problem_add_error(errors, arena_printf(req->arena, "%s.role", at),
                          "must be \"admin\" or \"member\"");
    const char *h = json_string_value(hash);
    if (!h || strlen(h) != json_string_length(hash) || strlen(h) > HASH_MAX_LEN ||
        hash_kind_of(h) == HASH_UNKNOWN)
        problem_add_error(errors, arena_printf(req->arena, "%s.password_hash", at),
                          "must be an argon2id PHC string, a bcrypt hash ($2a$, $2b$, $2y$) or a "
                          "Django pbkdf2_sha256 hash");
    if ((*errors ? (int)json_array_size(*errors) : 0) != before)
        return NULL;
    char *low = arena_strdup(req->arena, e);
    for (char *p = low; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    json_t *o = json_object();
    json_object_set_new(o, "email", json_string(low));
    json_object_set(o, "name", name && json_is_string(name) ? name : json_null());
    json_object_set_new(o, "role", json_string(r));
    json_object_set(o, "password_hash", hash);
    return o;
}

static void import_done(struct db_result *r, void *ud)
{
    struct import_op *op = ud;
    struct request *req = op->req;
    if (r->status != DB_OK) {
        if (r->status == DB_UNAVAILABLE)
            http_set_header(req, "Retry-After", "1");
        else
            log_msg(LOG_ERROR, "users import failed: %s (%s)", r->message ? r->message : "?",
                    r->sqlstate ? r->sqlstate : "?");
        idem_problem(req, op->claim,
                     r->status == DB_UNAVAILABLE ? PROBLEM_UNAVAILABLE : PROBLEM_INTERNAL,
                     r->status == DB_UNAVAILABLE ? "The database is unavailable; try again shortly."
                                                 : "The request could not be completed.");
        return;
    }
    const char *n = db_result_text(r, 0, 0), *users = db_result_text(r, 0, 1);
    long imported = n ? strtol(n, NULL, 10) : -1;
    if (imported < 0 || (size_t)imported > op->total || !users) {
        log_msg(LOG_ERROR, "users import: unexpected result shape");
        idem_problem(req, op->claim, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    char *body = arena_printf(req->arena, "{\"imported\":%ld,\"skipped\":%zu,\"users\":%s}",
                              imported, op->total - (size_t)imported, users);
    idem_respond(req, op->claim, 201, "application/json", body, strlen(body));
}

static void import_proceed(struct request *req, struct idem_claim *claim, void *ud)
{
    struct import_op *op = ud;
    op->claim = claim;
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        idem_problem(req, claim, PROBLEM_UNAVAILABLE,
                     "The database is unavailable; try again shortly.");
        return;
    }
    db_query(pool, NULL, &q_import, 6, op->values, import_done, op);
}

static void free_text(void *p)
{
    free(p);
}

static void users_import(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    json_t *errors = NULL;
    static const char *const allowed[] = {"users", NULL};
    body_unknown_fields(req, body, allowed, NULL, &errors);
    json_t *users = json_object_get(body, "users");
    size_t n = json_array_size(users);
    if (!json_is_array(users) || n < 1 || n > USERS_IMPORT_MAX) {
        problem_add_error(&errors, "users", "must be an array of 1 to 1000 users");
        problem_respond_errors(req, "The users are not valid.", errors);
        return;
    }
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *u = take_user(req, json_array_get(users, i), i, &errors);
        if (u)
            json_array_append_new(out, u);
        if (errors && json_array_size(errors) >= 20)
            break; /* enough to fix the file; the answer stays small */
    }
    if (errors) {
        json_decref(out);
        problem_respond_errors(req, "The users are not valid.", errors);
        return;
    }
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    if (!text) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    arena_cleanup(req->arena, free_text, text);
    struct import_op *op = arena_calloc(req->arena, sizeof *op);
    op->req = req;
    op->values[0] = a->org_id;
    op->values[1] = text;
    op->values[2] = auth_actor_type(a);
    op->values[3] = auth_actor_id(a);
    op->values[4] = req->client_ip;
    op->values[5] = req->request_id;
    op->total = n;
    idem_claim(req, a->org_id, import_proceed, op);
}
