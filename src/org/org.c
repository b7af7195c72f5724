/*
 * The org module: organization (tenant) lifecycle and the operator's view of
 * every org.
 *
 *   POST   /v1/orgs                         signup: org + schema + admin + tokens
 *   GET    /v1/org                          the caller's org
 *   PATCH  /v1/org                          rename (name, slug); the schema stays
 *   DELETE /v1/org                          drop the schema, users, keys; keep the ledger
 *   GET    /v1/orgs/{slug}                  a member's own org, or any org for the operator
 *   /v1/admin/orgs...                        operator: admin.c
 *
 * Every write is one statement: the multi-step ones call the SQL functions of
 * migrations/control/0003_org_lifecycle (tenantd_create_org,
 * tenantd_delete_org), so a failure at any step rolls the whole thing back.
 * PostgreSQL renders the org JSON (tenantd_org_json); handlers pass it
 * through. Cache invalidation across instances comes from the triggers on
 * public.orgs/users/api_keys (NOTIFY); this process also drops its own entry
 * at once so the very next request sees the change.
 *
 * Operator routes are AUTH_OPERATOR: with TENANTD_OPERATOR_TOKEN unset no
 * credential can match, so they answer 401 like any wrong token.
 */
#include "org/org.h"
#include "org/org_internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>

#include "auth/auth.h"
#include "auth/jwt.h"
#include "auth/password.h"
#include "auth/tokens.h"
#include "core/config.h"
#include "core/embedded.h"
#include "core/http.h"
#include "core/page.h"
#include "core/log.h"
#include "core/body.h"
#include "core/problem.h"
#include "core/strbuf.h"
#include "app/dbhttp.h"
#include "db/db.h"
#include "db/migrate.h"

static void orgs_create(struct request *req);
static void org_get(struct request *req);
static void org_patch(struct request *req);
static void org_delete(struct request *req);
static void org_get_by_slug(struct request *req);

static const struct route org_routes[] = {
    {HTTP_POST, "/v1/orgs", AUTH_NONE, orgs_create, "createOrg"},
    {HTTP_GET, "/v1/org", AUTH_MEMBER, org_get, "getOrg"},
    {HTTP_PATCH, "/v1/org", AUTH_ADMIN, org_patch, "updateOrg"},
    {HTTP_DELETE, "/v1/org", AUTH_ADMIN, org_delete, "deleteOrg"},
    {HTTP_GET, "/v1/orgs/{slug}", AUTH_MEMBER_OR_OPERATOR, org_get_by_slug, "getOrgBySlug"},
    {HTTP_GET, "/v1/admin/orgs", AUTH_OPERATOR, org_admin_list, "adminListOrgs"},
    {HTTP_POST, "/v1/admin/orgs/{slug}/suspend", AUTH_OPERATOR, org_admin_suspend,
     "adminSuspendOrg"},
    {HTTP_POST, "/v1/admin/orgs/{slug}/unsuspend", AUTH_OPERATOR, org_admin_unsuspend,
     "adminUnsuspendOrg"},
    {HTTP_DELETE, "/v1/admin/orgs/{slug}", AUTH_OPERATOR, org_admin_delete, "adminDeleteOrg"},
    {0},
};

static int org_init(void);
static void org_shutdown(void);

const struct module org_module = {
    .name = "org",
    .routes = org_routes,
    .init = org_init,
    .shutdown = org_shutdown,
};

#define SLUG_MIN 2
#define SLUG_MAX 50

/* ---- statements --------------------------------------------------------- */

/* One round trip: org row, schema with every tenant migration, admin user,
 * credit account (+ grant), refresh token; all or nothing. */
static const struct db_stmt create_stmt = {
    "org_create",
    "WITH c AS (SELECT * FROM public.tenantd_create_org($1, $2, $3, $4, $5, $6::bigint, $7,"
    " $8::bigint, $9::text[], $10::int[], $11::text[], $12::text[])),"
    /* The org's first audit event (migration 0010): $13 IP, $14 request id. */
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT c.o_org_id, 'user', c.o_user_id::text,"
    " 'org.created', 'org', c.o_org_id::text, $13, $14, jsonb_build_object('slug',"
    " c.o_org->>'slug', 'admin', c.o_user_id, 'credits', $6::bigint) FROM c)"
    " SELECT c.o_org, c.o_user, c.o_user_id, c.o_org_id, c.o_token_version FROM c",
};

static const struct db_stmt get_by_id_stmt = {
    "org_get_by_id",
    "SELECT public.tenantd_org_json(o) FROM public.orgs o"
    " WHERE o.id = $1::uuid AND o.status <> 'deleted'",
};

/* $2 NULL: the operator sees any live org; else only the caller's own. */
static const struct db_stmt get_by_slug_stmt = {
    "org_get_by_slug",
    "SELECT public.tenantd_org_json(o) FROM public.orgs o"
    " WHERE lower(o.slug) = $1 AND o.status <> 'deleted'"
    " AND ($2::uuid IS NULL OR o.id = $2::uuid)",
};

/* updated_at moves only when something changed; so does the audit event
 * (migration 0010; $4/$5 the actor, $6 client IP, $7 request id), in the
 * same statement. `old` sees the row as it was (one snapshot). */
static const struct db_stmt patch_stmt = {
    "org_patch",
    "WITH old AS (SELECT o.name, o.slug, o.join_policy, o.domains FROM public.orgs o"
    " WHERE o.id = $1::uuid),"
    " upd AS (UPDATE public.orgs o SET name = coalesce($2, o.name), slug = coalesce($3, o.slug),"
    " join_policy = coalesce($8, o.join_policy), domains = coalesce($9::text[], o.domains),"
    " updated_at = CASE WHEN (coalesce($2, o.name), coalesce($3, o.slug),"
    " coalesce($8, o.join_policy), coalesce($9::text[], o.domains))"
    " IS DISTINCT FROM (o.name, o.slug, o.join_policy, o.domains) THEN now() ELSE o.updated_at END"
    " WHERE o.id = $1::uuid AND o.status <> 'deleted'"
    " RETURNING o.id, o.name, o.slug, o.join_policy, o.domains,"
    " public.tenantd_org_json(o) AS j),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action,"
    " target_type, target_id, ip, request_id, details)"
    " SELECT upd.id, $4, $5, 'org.updated', 'org', upd.id::text, $6, $7,"
    " jsonb_build_object('from', jsonb_build_object('name', old.name, 'slug', old.slug,"
    " 'join_policy', old.join_policy, 'domains', old.domains),"
    " 'to', jsonb_build_object('name', upd.name, 'slug', upd.slug,"
    " 'join_policy', upd.join_policy, 'domains', upd.domains)) FROM upd, old"
    " WHERE (upd.name, upd.slug, upd.join_policy, upd.domains)"
    " IS DISTINCT FROM (old.name, old.slug, old.join_policy, old.domains))"
    " SELECT j FROM upd",
};

static const struct db_stmt delete_stmt = {
    "org_delete",
    "SELECT public.tenantd_delete_org($1::uuid)",
};

/* ---- the tenant migrations, as array literals for tenantd_create_org ---- */

/* Built once at init from the binary's embedded tenant migrations (the same
 * ones `tenantd migrate up` applies), read-only while loops run. */
static struct {
    char *sql, *versions, *names, *checksums;
} tenant_arrays;

/* Appends s as one double-quoted element of a PostgreSQL array literal:
 * inside quotes a backslash escapes the next character, so only '"' and
 * '\' need it. */
static void sb_put_array_elem(struct strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            sb_put(b, "\\", 1);
        sb_put(b, p, 1);
    }
    sb_put(b, "\"", 1);
}

static int build_tenant_arrays(void)
{
    struct migration *m = NULL;
    size_t n = 0;
    char err[256];
    if (migrations_load(embedded_migrations, TRACK_TENANT, &m, &n, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "org: tenant migrations: %s", err);
        return -1;
    }
    struct strbuf sql = {0}, ver = {0}, names = {0}, sums = {0};
    sb_puts(&sql, "{");
    sb_puts(&ver, "{");
    sb_puts(&names, "{");
    sb_puts(&sums, "{");
    for (size_t i = 0; i < n; i++) {
        const char *sep = i ? "," : "";
        char num[16];
        snprintf(num, sizeof num, "%s%d", sep, m[i].version);
        sb_puts(&ver, num);
        sb_puts(&sql, sep);
        sb_put_array_elem(&sql, m[i].up);
        sb_puts(&names, sep);
        sb_put_array_elem(&names, m[i].name);
        sb_puts(&sums, sep);
        sb_put_array_elem(&sums, m[i].checksum);
    }
    sb_puts(&sql, "}");
    sb_puts(&ver, "}");
    sb_puts(&names, "}");
    sb_puts(&sums, "}");
    free(m);
    tenant_arrays.sql = sql.s;
    tenant_arrays.versions = ver.s;
    tenant_arrays.names = names.s;
    tenant_arrays.checksums = sums.s;
    return 0;
}

bool org_tenant_migrations(const char *out[4])
{
    out[0] = tenant_arrays.sql;
    out[1] = tenant_arrays.versions;
    out[2] = tenant_arrays.names;
    out[3] = tenant_arrays.checksums;
    return tenant_arrays.sql != NULL;
}

static int org_init(void)
{
    const char *s = g_config->signup;
    if (!s || (strcmp(s, "open") != 0 && strcmp(s, "closed") != 0)) {
        log_msg(LOG_ERROR, "TENANTD_SIGNUP must be \"open\" or \"closed\", not \"%s\"", s ? s : "");
        return -1;
    }
    return build_tenant_arrays();
}

static void org_shutdown(void)
{
    free(tenant_arrays.sql);
    free(tenant_arrays.versions);
    free(tenant_arrays.names);
    free(tenant_arrays.checksums);
    memset(&tenant_arrays, 0, sizeof tenant_arrays);
}

/* ---- validation ----------------------------------------------------------- */

static bool slug_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* A copy of s with ASCII letters lowercased (slugs are case-insensitive and
 * stored lowercase); other bytes are left for org_slug_valid to refuse. */
static char *slug_lower(struct arena *a, const char *s)
{
    char *out = arena_strdup(a, s);
    for (char *p = out; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return out;
}

bool org_slug_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < SLUG_MIN || n > SLUG_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!slug_char(s[i]))
            return false;
    return true;
}

/* The slug derived from a name: ASCII letters and digits kept (lowercased),
 * every run of anything else one '-', no '-' at either end, at most 50
 * chars. May come out shorter than 2 (a name of only symbols or non-ASCII
 * letters): the caller then asks for an explicit slug. */
static char *slug_derive(struct arena *a, const char *name)
{
    char *out = arena_alloc(a, SLUG_MAX + 1);
    size_t n = 0;
    bool dash = false;
    for (const char *p = name; *p && n < SLUG_MAX; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            if (dash && n > 0 && n < SLUG_MAX)
                out[n++] = '-';
            dash = false;
            if (n < SLUG_MAX)
                out[n++] = c;
        } else {
            dash = true;
        }
    }
    while (n > 0 && out[n - 1] == '-')
        n--;
    out[n] = '\0';
    return out;
}

static char *ascii_lower(struct arena *a, const char *s)
{
    char *out = arena_strdup(a, s);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

/* ---- POST /v1/orgs ------------------------------------------------------ */

/* A signup between its steps: validated fields (pointing into the body's
 * JSON, alive as long as the arena), then the hash, then the statement. */
struct signup {
    struct request *req;
    const char *name, *slug, *email, *user_name;
    char *phc;
    char refresh[TOKEN_REFRESH_BUFSZ];
    char refresh_hash[TOKEN_SHA256_HEX_BUFSZ];
    char credits[24], ttl[24];
    const char *values[14];
};

/* Whether the request carries the operator's credential. */
static bool from_operator(const struct request *req)
{
    const char *op = g_config->operator_token;
    const char *h = http_header(req, "Authorization");
    if (!op || !*op || !h)
        return false;
    size_t len = 0;
    const char *tok = token_bearer(h, &len);
    return tok && token_equal(tok, len, op, strlen(op));
}

static void signup_done(struct db_result *r, void *ud)
{
    struct signup *s = ud;
    struct request *req = s->req;
    if (db_result_is(r, "23505")) {
        problem_respond(req, PROBLEM_SLUG_TAKEN, "That slug is already taken.");
        return;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: creating an org");
        return;
    }
    if (PQntuples(r->res) != 1 || PQnfields(r->res) != 5) {
        log_msg(LOG_ERROR, "org: tenantd_create_org returned %d rows", PQntuples(r->res));
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    const char *org = PQgetvalue(r->res, 0, 0), *user = PQgetvalue(r->res, 0, 1);
    const char *user_id = PQgetvalue(r->res, 0, 2), *org_id = PQgetvalue(r->res, 0, 3);
    int64_t ver = strtoll(PQgetvalue(r->res, 0, 4), NULL, 10);
    req->org_id = arena_strdup(req->arena, org_id);
    char access[JWT_SIGNED_MAX];
    if (auth_sign_access(user_id, org_id, "admin", ver, access, sizeof access) < 0) {
        /* The org exists; the admin can still log in with the password. */
        log_msg(LOG_ERROR, "org: cannot sign the access token of a new org");
        problem_respond(req, PROBLEM_INTERNAL,
                        "The organization was created, but no token "
                        "could be issued; log in instead.");
        return;
    }
    char *body = arena_printf(req->arena,
                              "{\"org\":%s,\"user\":%s,\"access_token\":\"%s\","
                              "\"refresh_token\":\"%s\",\"token_type\":\"Bearer\","
                              "\"expires_in\":%" PRId64 "}",
                              org, user, access, s->refresh, auth_access_ttl());
    /* Credentials in the body: never cached (RFC 6749 section 5.1). */
    http_set_header(req, "Cache-Control", "no-store");
    http_respond(req, 201, "application/json", body, strlen(body));
}

static void signup_hashed(void *ud, int status, const char *phc)
{
    struct signup *s = ud;
    struct request *req = s->req;
    if (status != PASSWORD_OK || !phc) {
        if (status == PASSWORD_ECANCELED) {
            http_set_header(req, "Retry-After", "1");
            problem_respond(req, PROBLEM_UNAVAILABLE, "The server is shutting down.");
        } else {
            log_msg(LOG_ERROR, "org: password hashing failed (%d)", status);
            problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        }
        return;
    }
    s->phc = arena_strdup(req->arena, phc);
    if (token_refresh_new(s->refresh) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(s->refresh, strlen(s->refresh), s->refresh_hash);
    snprintf(s->credits, sizeof s->credits, "%" PRId64, g_config->signup_credits);
    snprintf(s->ttl, sizeof s->ttl, "%" PRId64, auth_refresh_ttl());
    const char *v[14] = {
        s->name,
        s->slug,
        s->email,
        s->phc,
        s->user_name,
        s->credits,
        s->refresh_hash,
        s->ttl,
        tenant_arrays.sql,
        tenant_arrays.versions,
        tenant_arrays.names,
        tenant_arrays.checksums,
        req->client_ip,
        req->request_id,
    };
    memcpy(s->values, v, sizeof v);
    struct db_pool *pool = db_pool_of(req);
    if (!pool || !tenant_arrays.sql) {
        problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unavailable.");
        return;
    }
    db_query(pool, NULL, &create_stmt, 14, s->values, signup_done, s);
}

/* A string member: NULL with *err set when present but not a string (or
 * null when !nullable), NULL without an error when absent. */
static const char *string_member(json_t *obj, const char *key, bool nullable, json_t **errors,
                                 const char *field, bool *present)
{
    json_t *v = json_object_get(obj, key);
    *present = v != NULL;
    if (!v || (nullable && json_is_null(v)))
        return NULL;
    if (!json_is_string(v)) {
        problem_add_error(errors, field,
                          nullable ? "must be a string or null" : "must be a string");
        return NULL;
    }
    return json_string_value(v);
}

static void orgs_create_allowed(struct request *req, void *ud);

static void orgs_create(struct request *req)
{
    bool op = from_operator(req);
    /* With TENANTD_SIGNUP=closed only the operator may create orgs. */
    if (!op && strcmp(g_config->signup, "closed") == 0) {
        problem_respond(req, PROBLEM_FORBIDDEN,
                        "Signup is closed; only the operator can create organizations.");
        return;
    }
    /* Each org is a schema and a password hash: one address may not create
     * them by the thousand (a budget all instances share). */
    if (op)
        orgs_create_allowed(req, NULL);
    else
        auth_signup_limit(req, orgs_create_allowed, NULL);
}

static void orgs_create_allowed(struct request *req, void *ud)
{
    (void)ud;
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    bool present;
    struct signup *s = arena_calloc(req->arena, sizeof *s);
    s->req = req;
    static const char *const fields[] = {"name", "slug", "admin", NULL};
    body_unknown_fields(req, body, fields, NULL, &errors);

    s->name = string_member(body, "name", false, &errors, "name", &present);
    const char *name_why = s->name ? body_name_problem(s->name) : NULL;
    if (!present)
        problem_add_error(&errors, "name", "is required");
    else if (name_why)
        problem_add_error(&errors, "name", name_why);

    const char *slug = string_member(body, "slug", true, &errors, "slug", &present);
    if (slug) {
        s->slug = slug_lower(req->arena, slug);
        if (!org_slug_valid(s->slug))
            problem_add_error(&errors, "slug", "must be 2..50 characters of a-z, 0-9 and '-'");
    } else if (s->name && !name_why) {
        s->slug = slug_derive(req->arena, s->name);
        if (!org_slug_valid(s->slug))
            problem_add_error(&errors, "slug",
                              "cannot be derived from the name; give a slug of 2..50 "
                              "characters of a-z, 0-9 and '-'");
    }

    const char *password = NULL;
    json_t *admin = json_object_get(body, "admin");
    if (!admin) {
        problem_add_error(&errors, "admin", "is required");
    } else if (!json_is_object(admin)) {
        problem_add_error(&errors, "admin", "must be an object");
    } else {
        const char *email = string_member(admin, "email", false, &errors, "admin.email", &present);
        if (!present)
            problem_add_error(&errors, "admin.email", "is required");
        else if (email && !body_email_valid(email))
            problem_add_error(&errors, "admin.email", BODY_EMAIL_RULE);
        else if (email)
            s->email = ascii_lower(req->arena, email);

        password = string_member(admin, "password", false, &errors, "admin.password", &present);
        if (!present)
            problem_add_error(&errors, "admin.password", "is required");
        else if (password && !password_length_ok(strlen(password)))
            problem_add_error(&errors, "admin.password", "must be 8..1024 bytes");

        s->user_name = string_member(admin, "name", true, &errors, "admin.name", &present);
        const char *why = s->user_name ? body_name_problem(s->user_name) : NULL;
        if (why)
            problem_add_error(&errors, "admin.name", why);
        static const char *const admin_fields[] = {"email", "password", "name", NULL};
        body_unknown_fields(req, admin, admin_fields, "admin", &errors);
    }
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    if (!s->name || !s->slug || !s->email || !password) { /* every path above set errors */
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }

    int rc = password_hash_async(req->ctx->loop, password, strlen(password), signup_hashed, s);
    if (rc == PASSWORD_EBUSY) {
        http_set_header(req, "Retry-After", "1");
        problem_respond(req, PROBLEM_UNAVAILABLE, "The server is busy; retry shortly.");
    } else if (rc != PASSWORD_OK) {
        log_msg(LOG_ERROR, "org: cannot queue a password hash (%d)", rc);
        problem_respond(req, PROBLEM_UNAVAILABLE, "The request could not be queued.");
    }
}

/* ---- the caller's org ------------------------------------------------------ */

static void org_json_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: reading an org");
        return;
    }
    db_respond_json(req, r, 0, "No such organization.");
}

/* The caller's org id; NULL (after answering) when the credential has none,
 * which the route's auth level should already have ruled out. */
static const char *caller_org(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    if (!a || !a->org_id[0]) {
        problem_respond(req, PROBLEM_UNAUTHORIZED,
                        "This route needs an organization's credential.");
        return NULL;
    }
    return a->org_id;
}

static void org_get(struct request *req)
{
    const char *id = caller_org(req);
    if (!id)
        return;
    const char **v = arena_alloc(req->arena, sizeof *v);
    v[0] = id;
    db_query(db_pool_of(req), NULL, &get_by_id_stmt, 1, v, org_json_done, req);
}

static void patch_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_result_is(r, "23505")) {
        problem_respond(req, PROBLEM_SLUG_TAKEN, "That slug is already taken.");
        return;
    }
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: updating an org");
        return;
    }
    /* The slug is cached with the org; drop it here at once (other
     * instances hear the trigger's NOTIFY). */
    const struct auth_ctx *a = auth_ctx(req);
    if (a && a->org_id[0])
        auth_cache_forget_org(a->org_id);
    db_respond_json(req, r, 0, "No such organization.");
}

bool org_domain_valid(const char *s)
{
    bool ok = strlen(s) >= 3 && strlen(s) <= 253 && strchr(s, '.') && s[0] != '.' && s[0] != '-';
    for (const char *c = s; ok && *c; c++)
        ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.';
    return ok;
}

/* PATCH's join_policy ("invite" | "domain") and domains (up to 50 lower-case
 * DNS names; a PostgreSQL array literal of them into *domains). */
static void org_join_fields(struct request *req, json_t *body, const char **policy,
                            const char **domains, json_t **errors)
{
    json_t *p = json_object_get(body, "join_policy");
    if (p) {
        const char *s = json_string_value(p);
        if (!s || (strcmp(s, "invite") != 0 && strcmp(s, "domain") != 0))
            problem_add_error(errors, "join_policy", "must be \"invite\" or \"domain\"");
        else
            *policy = s;
    }
    json_t *d = json_object_get(body, "domains");
    if (!d)
        return;
    if (!json_is_array(d) || json_array_size(d) > 50) {
        problem_add_error(errors, "domains", "must be an array of at most 50 domain names");
        return;
    }
    size_t i;
    json_t *x;
    char *lit = arena_strdup(req->arena, "{");
    json_array_foreach(d, i, x)
    {
        const char *s = json_string_value(x);
        if (!s || !org_domain_valid(s)) {
            problem_add_error(errors, "domains",
                              "must hold lower-case domain names like example.com");
            return;
        }
        lit = arena_printf(req->arena, "%s%s%s", lit, i ? "," : "", s);
    }
    *domains = arena_printf(req->arena, "%s}", lit);
}

static void org_patch(struct request *req)
{
    const char *id = caller_org(req);
    if (!id)
        return;
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    bool has_name, has_slug;
    static const char *const fields[] = {"name", "slug", "join_policy", "domains", NULL};
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char *policy = NULL, *domains = NULL;
    org_join_fields(req, body, &policy, &domains, &errors);
    const char *name = string_member(body, "name", false, &errors, "name", &has_name);
    if (name) {
        const char *why = body_name_problem(name);
        if (why)
            problem_add_error(&errors, "name", why);
    }
    const char *slug = string_member(body, "slug", false, &errors, "slug", &has_slug);
    if (slug) {
        slug = slug_lower(req->arena, slug);
        if (!org_slug_valid(slug))
            problem_add_error(&errors, "slug", "must be 2..50 characters of a-z, 0-9 and '-'");
    }
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    const char **v = arena_alloc(req->arena, 3 * sizeof *v);
    v[0] = id;
    if (!has_name && !has_slug && !policy && !domains) {
        db_query(db_pool_of(req), NULL, &get_by_id_stmt, 1, v, org_json_done, req);
        return;
    }
    v = arena_alloc(req->arena, 9 * sizeof *v);
    v[0] = id;
    v[1] = name;
    v[2] = slug;
    const struct auth_ctx *a = auth_ctx(req);
    v[3] = a->kind == AUTH_KIND_USER ? "user" : "api_key";
    v[4] = a->principal_id[0] ? a->principal_id : NULL;
    v[5] = req->client_ip;
    v[6] = req->request_id;
    v[7] = policy;
    v[8] = domains;
    db_query(db_pool_of(req), NULL, &patch_stmt, 9, v, patch_done, req);
}

static void delete_done(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK) {
        db_respond_failure(req, r, "org: deleting an org");
        return;
    }
    if (PQntuples(r->res) != 1 || strcmp(PQgetvalue(r->res, 0, 0), "t") != 0) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return;
    }
    auth_cache_forget_org(auth_ctx(req)->org_id);
    http_respond_empty(req, 204);
}

static void org_delete(struct request *req)
{
    const char *id = caller_org(req);
    if (!id)
        return;
    const char **v = arena_alloc(req->arena, sizeof *v);
    v[0] = id;
    db_query(db_pool_of(req), NULL, &delete_stmt, 1, v, delete_done, req);
}

const char *org_slug_param(struct request *req)
{
    const char *raw = http_param(req, "slug");
    const char *slug = raw ? slug_lower(req->arena, raw) : NULL;
    if (!slug || !org_slug_valid(slug)) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
        return NULL;
    }
    return slug;
}

/* A member sees only its own org under this path; another org's slug is 404
 * like a slug that does not exist, so strangers learn nothing. */
static void org_get_by_slug(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req);
    if (!a) {
        problem_respond(req, PROBLEM_UNAUTHORIZED, "This route needs a credential.");
        return;
    }
    const char *slug = org_slug_param(req);
    if (!slug)
        return;
    const char **v = arena_alloc(req->arena, 2 * sizeof *v);
    v[0] = slug;
    v[1] = a->kind == AUTH_KIND_OPERATOR ? NULL : a->org_id;
    db_query(db_pool_of(req), NULL, &get_by_slug_stmt, 2, v, org_json_done, req);
}
