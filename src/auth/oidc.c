/*
 * Sign-in with OIDC (README "Accounts"): the routes of the sign-in flow,
 * authorization code + PKCE (S256), `state` and `nonce`. What sign-in and
 * linking (oidclink.c) share is in oidcflow.c; the calls to the provider
 * (discovery, JWKS, token endpoint) in oidcprovider.c; id_token checks in
 * oidcverify.c.
 *
 *   start:    provider, org, redirect_uri (allow-list) -> a flow row
 *             (state hashed, verifier, nonce) -> 302 to the provider
 *   callback: the flow (once) -> code exchange + id_token verification (pool)
 *             -> tenantd_oidc_sign_in (linked identity | invitation | domain)
 *             -> 302 to redirect_uri?code=<one-time code>
 *   exchange: the one-time code (once) -> tokens
 * A flow started by a signed-in user to link an identity (oidclink.c) comes
 * back through the same callback, which hands it to the frontend instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llhttp.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <uv.h>

#include "auth/internal.h"
#include "auth/oidc_internal.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"

/* ---- routes ------------------------------------------------------------------- */

static const struct db_stmt q_flow_insert = {
    "oidc_flow_insert",
    "INSERT INTO public.oidc_flows (state_hash, provider, org_id, redirect_uri, code_verifier,"
    " nonce, invitation_hash, expires_at) SELECT $1, $2, o.id, $3, $4, $5, $6,"
    " now() + make_interval(secs => $7::int) FROM public.orgs o"
    " WHERE o.slug = lower($8) AND o.status = 'active' RETURNING 1",
};

/* A sign-in flow, claimed once: (verifier, nonce, false, NULL). A link flow
 * (oidc_internal.h) is not claimed here but by the user who started it
 * (oidclink.c): (NULL, NULL, true, redirect_uri). No row: unknown, used or
 * expired. Of two callbacks of one state, the second updates nothing. */
static const struct db_stmt q_flow_claim = {
    "oidc_flow_claim",
    "WITH f AS (SELECT x.state_hash, x.redirect_uri, EXISTS (SELECT 1 FROM public.oidc_codes c"
    " WHERE c.code_hash = '" OIDC_LINK_KEY_PREFIX "' || x.state_hash) AS link"
    " FROM public.oidc_flows x WHERE x.state_hash = $1 AND x.provider = $2"
    " AND x.used_at IS NULL AND x.expires_at > now()),"
    " claimed AS (UPDATE public.oidc_flows x SET used_at = now() FROM f"
    " WHERE x.state_hash = f.state_hash AND NOT f.link AND x.used_at IS NULL"
    " RETURNING x.code_verifier, x.nonce)"
    " SELECT c.code_verifier, c.nonce, f.link, CASE WHEN f.link THEN f.redirect_uri END"
    " FROM f LEFT JOIN claimed c ON true WHERE f.link OR c.nonce IS NOT NULL",
};

static const struct db_stmt q_sign_in = {
    "oidc_sign_in",
    "SELECT public.tenantd_oidc_sign_in($1, $2, $3, $4, $5::boolean, $6, $7, $8, $9, $10)",
};

static const struct db_stmt q_exchange = {
    "oidc_exchange",
    "SELECT public.tenantd_oidc_exchange($1, $2, $3::bigint, $4, $5)",
};

static void flow_inserted(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    if (oidc_flow_row(f, r, "oidc start", PROBLEM_NOT_FOUND, "No such active organization."))
        oidc_redirect_to(f->req, oidc_authorization_url(f->req, f));
}

static void oidc_start(struct request *req)
{
    struct provider *p = oidc_provider_of(req);
    if (!p)
        return;
    json_t *errors = NULL;
    const char *org = http_query(req, "org"), *ru = http_query(req, "redirect_uri");
    const char *inv = http_query(req, "invitation");
    if (!org || !*org || strlen(org) > 100)
        problem_add_error(&errors, "org", "is required (the organization's slug)");
    if (!ru || !oidc_redirect_allowed(ru))
        problem_add_error(&errors, "redirect_uri", "must be one of TENANTD_OIDC_REDIRECT_URIS");
    unsigned char raw[33];
    if (inv && token_b64url_decode(inv, strlen(inv), raw, sizeof raw) != 32)
        problem_add_error(&errors, "invitation", "is not an invitation token");
    if (errors) {
        problem_respond_errors(req, "The query parameters are not valid.", errors);
        return;
    }
    struct flow *f = oidc_flow_start(req, p);
    if (!f)
        return;
    char *inv_hash = NULL;
    if (inv) {
        inv_hash = arena_alloc(req->arena, TOKEN_SHA256_HEX_BUFSZ);
        token_sha256_hex(inv, strlen(inv), inv_hash);
    }
    f->v[0] = f->state_hash;
    f->v[1] = p->name;
    f->v[2] = ru;
    f->v[3] = f->verifier;
    f->v[4] = f->nonce;
    f->v[5] = inv_hash;
    f->v[6] = arena_printf(req->arena, "%d", OIDC_FLOW_TTL_S);
    f->v[7] = org;
    oidc_flow_discover(f, &q_flow_insert, 8, flow_inserted);
}

static void signed_in(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    struct request *req = f->req;
    if (db_result_is(r, "23505")) {
        problem_respond(req, PROBLEM_CONFLICT,
                        "A user with this email exists in the organization; sign in with the "
                        "password, then link this provider (POST /v1/auth/oidc/{provider}/link).");
        return;
    }
    if (db_failed(req, r, "oidc sign-in"))
        return;
    const char *s = db_result_text(r, 0, 0);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    if (!j) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    arena_cleanup(req->arena, (void (*)(void *))json_decref, j);
    const char *status = json_string_value(json_object_get(j, "status"));
    const char *ru = json_string_value(json_object_get(j, "redirect_uri"));
    if (status && !strcmp(status, "ok") && ru) {
        oidc_redirect_to(req,
                         arena_printf(req->arena, "%s%scode=%s", ru, strchr(ru, '?') ? "&" : "?",
                                      f->state /* reused buffer: the one-time code */));
    } else if (ru) {
        oidc_redirect_to(req, arena_printf(req->arena, "%s%serror=access_denied", ru,
                                           strchr(ru, '?') ? "&" : "?"));
    } else {
        problem_respond(req, PROBLEM_TOKEN_INVALID, "This sign-in attempt is unknown or expired.");
    }
}

/* A refused answer of the provider (forged or stale id_token, failed code
 * exchange) is a failed sign-in of the flow's org: $1 state hash, $2
 * reason, $3 IP, $4 request id. */
static const struct db_stmt q_refused_audit = {
    "oidc_refused_audit",
    "INSERT INTO public.audit_events (org_id, actor_type, action, target_type, target_id, ip,"
    " request_id, details) SELECT f.org_id, 'anonymous', 'auth.login_failed', 'oidc',"
    " f.provider, $3, $4, jsonb_build_object('reason', $2::text) FROM public.oidc_flows f"
    " WHERE f.state_hash = $1",
};

static void refused_logged(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (r->status != DB_OK)
        log_msg(LOG_WARN, "oidc: the failed sign-in could not be audited");
    problem_respond(req, PROBLEM_UNAUTHORIZED, "The identity provider's answer was refused.");
}

static void callback_done(struct flow *f)
{
    struct request *req = f->req;
    if (f->failed) {
        log_msg(LOG_WARN, "oidc %s: sign-in refused: %s", f->p->name, f->err);
        f->v[0] = f->state_hash;
        f->v[1] = arena_strdup(req->arena, f->err[0] ? f->err : "refused");
        f->v[2] = req->client_ip;
        f->v[3] = req->request_id;
        db_query(req->ctx->db, NULL, &q_refused_audit, 4, f->v, refused_logged, req);
        return;
    }
    /* A one-time code for the frontend (kept in f->state, now spent). */
    if (!oidc_rand_b64(f->state, sizeof f->state)) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    char *code_hash = arena_alloc(req->arena, TOKEN_SHA256_HEX_BUFSZ);
    token_sha256_hex(f->state, strlen(f->state), code_hash);
    /* An OIDC-made user has no password (OIDC_NO_PASSWORD_SUFFIX). */
    unsigned char salt[16];
    char s64[32];
    RAND_bytes(salt, sizeof salt);
    EVP_EncodeBlock((unsigned char *)s64, salt, sizeof salt);
    s64[22] = '\0';
    f->v[0] = f->state_hash;
    f->v[1] = f->p->name;
    f->v[2] = arena_strdup(req->arena, f->sub);
    f->v[3] = f->email ? arena_strdup(req->arena, f->email) : NULL;
    f->v[4] = f->email_verified ? "true" : "false";
    f->v[5] = f->name ? arena_strdup(req->arena, f->name) : NULL;
    f->v[6] =
        arena_printf(req->arena, "$argon2id$v=19$m=19456,t=2,p=1$%s" OIDC_NO_PASSWORD_SUFFIX, s64);
    f->v[7] = code_hash;
    f->v[8] = req->client_ip;
    f->v[9] = req->request_id;
    db_query(req->ctx->db, NULL, &q_sign_in, 10, f->v, signed_in, f);
}

static void flow_claimed(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    struct request *req = f->req;
    if (!oidc_flow_row(f, r, "oidc callback", PROBLEM_TOKEN_INVALID,
                       "This sign-in attempt is unknown, used or expired."))
        return;
    if (!strcmp(PQgetvalue(r->res, 0, 2), "t")) {
        /* A link: back to the frontend, whose signed-in user completes it
         * (POST /v1/auth/oidc/{provider}/link/complete). */
        const char *ru = PQgetvalue(r->res, 0, 3);
        struct arena *a = req->arena;
        oidc_redirect_to(req,
                         arena_printf(a, "%s%slink_provider=%s&link_state=%s&link_code=%s", ru,
                                      strchr(ru, '?') ? "&" : "?", f->p->name,
                                      oidc_url_escape(a, f->state), oidc_url_escape(a, f->code)));
        return;
    }
    oidc_flow_verify(f, r, callback_done);
}

static void oidc_callback(struct request *req)
{
    struct provider *p = oidc_provider_of(req);
    if (!p)
        return;
    const char *state = http_query(req, "state"), *code = http_query(req, "code");
    if (!state || strlen(state) != 43 || !code || !*code || strlen(code) > 2048) {
        problem_respond(req, PROBLEM_TOKEN_INVALID, "This sign-in attempt is unknown or expired.");
        return;
    }
    struct flow *f = oidc_flow_returned(req, p, state, code);
    f->v[0] = f->state_hash;
    f->v[1] = p->name;
    db_query(req->ctx->db, NULL, &q_flow_claim, 2, f->v, flow_claimed, f);
}

struct exch {
    struct request *req;
    char refresh[TOKEN_REFRESH_BUFSZ], refresh_hash[TOKEN_SHA256_HEX_BUFSZ],
        code_hash[TOKEN_SHA256_HEX_BUFSZ];
    const char *v[5];
};

static void exchanged(struct db_result *r, void *ud)
{
    struct exch *x = ud;
    if (db_failed(x->req, r, "oidc exchange"))
        return;
    const char *s = db_result_text(r, 0, 0);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    const char *status = json_string_value(json_object_get(j, "status"));
    bool invalid = status && !strcmp(status, "invalid");
    json_decref(j);
    if (invalid) {
        problem_respond(x->req, PROBLEM_TOKEN_INVALID, "This code is unknown, used or expired.");
        return;
    }
    auth_respond_tokens(x->req, r->res, x->refresh, "This code is not valid.", 200);
}

static void oidc_exchange(struct request *req)
{
    json_t *body = body_object(req, false);
    if (!body)
        return;
    json_t *errors = NULL;
    static const char *const fields[] = {"code", NULL};
    body_unknown_fields(req, body, fields, NULL, &errors);
    const char *code = json_string_value(json_object_get(body, "code"));
    if (!code)
        problem_add_error(&errors, "code", "is required");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    struct exch *x = arena_calloc(req->arena, sizeof *x);
    x->req = req;
    if (token_refresh_new(x->refresh) != 0) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    token_sha256_hex(x->refresh, strlen(x->refresh), x->refresh_hash);
    token_sha256_hex(code, strlen(code), x->code_hash);
    x->v[0] = x->code_hash;
    x->v[1] = x->refresh_hash;
    x->v[2] = arena_printf(req->arena, "%lld", (long long)auth_refresh_ttl());
    x->v[3] = req->client_ip;
    x->v[4] = req->request_id;
    db_query(req->ctx->db, NULL, &q_exchange, 5, x->v, exchanged, x);
}

static const struct route oidc_routes[] = {
    {HTTP_GET, "/v1/auth/oidc/{provider}/start", AUTH_NONE, oidc_start, "oidcStart"},
    {HTTP_GET, "/v1/auth/oidc/{provider}/callback", AUTH_NONE, oidc_callback, "oidcCallback"},
    {HTTP_POST, "/v1/auth/oidc/exchange", AUTH_NONE, oidc_exchange, "oidcExchange"},
    {HTTP_POST, "/v1/auth/oidc/{provider}/link", AUTH_USER, oidc_link_start, "oidcLinkStart"},
    {HTTP_POST, "/v1/auth/oidc/{provider}/link/complete", AUTH_USER, oidc_link_complete,
     "oidcLinkComplete"},
    {HTTP_DELETE, "/v1/auth/oidc/{provider}/link", AUTH_USER, oidc_unlink, "oidcUnlink"},
    {0},
};

const struct module oidc_module = {
    .name = "oidc",
    .routes = oidc_routes,
    .init = oidc_providers_init,
};
