/*
 * An org's API keys: /v1/api-keys (routes in users.c's table). A key is
 * shown once, at creation; only its SHA-256 is stored, with an 8-character
 * prefix in clear for the lookup. Deleting revokes.
 */
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "auth/auth.h"
#include "auth/cache.h"
#include "auth/tokens.h"
#include "auth/users_internal.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "app/dbhttp.h"
#include "db/db.h"

/* SQL reads better laid out by hand. */
/* clang-format off */
/* The ApiKey resource (never the key or its hash) from an api_keys row `k`. */
#define SQL_KEY_JSON(k)                                                                            \
    "json_build_object('id', " k ".id, 'name', " k ".name, 'role', " k ".role, 'prefix', " k     \
    ".prefix, 'created_at', " SQL_TS(k ".created_at") ", 'last_used_at', " SQL_TS(             \
        k ".last_used_at") ")"

static const struct db_stmt q_keys_create = {
    "keys_create",
    "WITH ins AS (INSERT INTO public.api_keys AS k (org_id, name, role, prefix, key_hash) "
    "VALUES ($1::uuid, $2, $3, $4, $5) RETURNING k.id, k.name, k.role, " SQL_KEY_JSON("k")
    "::text AS j), "
    SQL_AUDIT("ins", "6", "7", "8", "9", "api_key.created", "api_key",
              "jsonb_build_object('name', ins.name, 'role', ins.role)", "")
    " SELECT id, j FROM ins",
};

static const struct db_stmt q_keys_list = {
    "keys_list", SQL_ORG_PAGE("public.api_keys", "k", SQL_KEY_JSON("k"), "AND k.revoked_at IS NULL"),
};

/* Revoked rather than deleted, so that an audit can still tell which key did
 * what; the auth lookup refuses a revoked key. */
static const struct db_stmt q_keys_delete = {
    "keys_delete",
    "WITH upd AS (UPDATE public.api_keys k SET revoked_at = now() "
    "WHERE k.id = $2::uuid AND k.org_id = $1::uuid AND k.revoked_at IS NULL "
    "RETURNING k.id, k.prefix, k.name), "
    SQL_AUDIT("upd", "3", "4", "5", "6", "api_key.revoked", "api_key",
              "jsonb_build_object('name', upd.name)", "")
    " SELECT prefix FROM upd",
};

/* clang-format on */

void apikeys_list(struct request *req)
{
    users_run_list(req, &q_keys_list);
}

struct key_create {
    struct request *req;
    const struct auth_ctx *a;
    const char *values[5]; /* org_id, name, role, prefix, key_hash */
    char key[TOKEN_API_KEY_BUFSZ];
    char prefix[TOKEN_API_KEY_PREFIX_LEN + 1];
    char hash[TOKEN_SHA256_HEX_BUFSZ];
    int attempts;
};

static void key_wipe(void *p)
{
    struct key_create *k = p;
    OPENSSL_cleanse(k->key, sizeof k->key);
}

static void key_insert(struct key_create *k);

static void key_create_done(struct db_result *r, void *ud)
{
    struct key_create *k = ud;
    struct request *req = k->req;
    /* The only unique column a new key can collide on is its random prefix
     * (1 in 36^8): draw again, a few times at most. */
    if (db_result_is(r, "23505") && ++k->attempts < 3) {
        key_insert(k);
        return;
    }
    if (users_insert_failed(req, r, "create API key"))
        return;
    const char *id = db_result_text(r, 0, 0), *json = db_result_text(r, 0, 1);
    json_t *obj = json ? json_loads(json, 0, NULL) : NULL;
    if (!id || !json_is_object(obj)) {
        json_decref(obj);
        db_respond_failure(req, &(struct db_result){.status = DB_ERROR, .message = "no row"},
                           "create API key");
        return;
    }
    /* The key itself never went to the database (not even as a parameter,
     * where statement logging could keep it): it joins the answer here. */
    json_object_set_new(obj, "key", json_string(k->key));
    http_set_header(req, "Location", arena_printf(req->arena, "/v1/api-keys/%s", id));
    http_set_header(req, "Cache-Control", "no-store");
    http_respond_json(req, 201, obj);
}

static void key_insert(struct key_create *k)
{
    struct request *req = k->req;
    if (token_api_key_new(k->key, k->prefix) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "No key could be generated.");
        return;
    }
    token_sha256_hex(k->key, strlen(k->key), k->hash);
    k->values[3] = k->prefix;
    k->values[4] = k->hash;
    users_audited_query(req, k->a, &q_keys_create, 5, k->values, key_create_done, k);
}

void apikeys_create(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    json_t *body = body_object(req, true);
    if (!body)
        return;
    static const char *const fields[] = {"name", "role", NULL};
    json_t *errors = NULL;
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char *name = NULL, *role = "member";
    name = body_name(body, "name", true, &errors);
    json_t *v;
    if ((v = json_object_get(body, "role"))) {
        /* An API key may also be a worker's: the worker API of its org only. */
        if (json_is_string(v) && !strcmp(json_string_value(v), "worker"))
            role = "worker";
        else if (json_is_string(v) && strcmp(json_string_value(v), "admin") &&
                 strcmp(json_string_value(v), "member"))
            problem_add_error(&errors, "role", "must be \"admin\", \"member\" or \"worker\"");
        else
            role = users_take_role(v, "role", &errors);
    }
    if (errors) {
        problem_respond_errors(req, "Some fields are not valid.", errors);
        return;
    }
    struct key_create *k = arena_calloc(req->arena, sizeof *k);
    arena_cleanup(req->arena, key_wipe, k);
    k->req = req;
    k->a = a;
    k->values[0] = a->org_id;
    k->values[1] = arena_strdup(req->arena, name);
    k->values[2] = role;
    key_insert(k);
}

static void key_delete_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "delete API key");
        return;
    }
    const char *prefix = db_result_text(r, 0, 0);
    if (!prefix) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such API key.");
        return;
    }
    /* Effective at once here; other processes hear the trigger's NOTIFY. */
    cache_invalidate(arena_printf(req->arena, "key:%s", prefix));
    http_respond_empty(req, 204);
}

void apikeys_delete(struct request *req)
{
    const struct auth_ctx *a = auth_org_caller(req);
    if (!a)
        return;
    const char *id = users_path_uuid(req, "API key");
    if (!id)
        return;
    const char **v = arena_alloc(req->arena, 2 * sizeof *v);
    v[0] = a->org_id;
    v[1] = id;
    users_audited_query(req, a, &q_keys_delete, 2, v, key_delete_done, req);
}
