/*
 * A signed-in user links an OIDC identity to their account, and unlinks it
 * (README "Accounts"). The link uses the sign-in's flow (oidcflow.c):
 *
 *   POST   /v1/auth/oidc/{provider}/link {redirect_uri}
 *          -> a flow row, bound to the caller by a row of oidc_codes
 *             (OIDC_LINK_KEY_PREFIX) -> 200 {authorization_url}
 *   GET    .../callback (the provider sends the browser back)
 *          -> 302 redirect_uri?link_provider=&link_state=&link_code=
 *   POST   /v1/auth/oidc/{provider}/link/complete {state, code}
 *          -> only the user who started the flow claims it -> code exchange
 *             and id_token verification -> identity linked -> 200 User
 *   DELETE /v1/auth/oidc/{provider}/link -> 204
 *
 * Why the last step is the signed-in user's own request and not the
 * callback: a callback URL someone else obtained (their account at the
 * provider, the flow they started) must never link *their* identity to the
 * account of whoever opens it, nor the opener's identity to theirs. Here
 * the flow is claimed only with the access token of the user who started
 * it, so a foreign callback links nothing.
 *
 * An identity (provider, subject) belongs to at most one user of an org
 * (a unique key), and a user has at most one identity of a provider (checked
 * by the linking statement; two links of one user completing at the same
 * moment could both pass: a unique key on (user, provider) needs a
 * migration). A user without a
 * password (OIDC_NO_PASSWORD_SUFFIX) cannot unlink their last identity:
 * they could not sign in any more (a password reset would still work).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "app/dbhttp.h"
#include "auth/internal.h"
#include "auth/oidc_internal.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"

#define CODE_MAX 2048

/* $1 state hash, $2 provider, $3 redirect_uri, $4 verifier, $5 nonce, $6
 * TTL, $7 org id, $8 user id: the flow and the row binding it to the user,
 * together. Answers one row when the user's org is active. */
static const struct db_stmt q_link_flow = {
    "oidc_link_flow",
    "WITH f AS (INSERT INTO public.oidc_flows (state_hash, provider, org_id, redirect_uri,"
    " code_verifier, nonce, expires_at) SELECT $1, $2, o.id, $3, $4, $5,"
    " now() + make_interval(secs => $6::int) FROM public.orgs o"
    " WHERE o.id = $7::uuid AND o.status = 'active' RETURNING org_id, expires_at),"
    " b AS (INSERT INTO public.oidc_codes (code_hash, org_id, user_id, expires_at)"
    " SELECT '" OIDC_LINK_KEY_PREFIX "' || $1, f.org_id, $8::uuid, f.expires_at FROM f"
    " RETURNING 1) SELECT 1 FROM b",
};

/* $1 state hash, $2 provider, $3 user id, $4 org id: the flow, claimed
 * once, and only by the user it is bound to (its binding goes with it).
 * Answers (verifier, nonce), or no row. */
static const struct db_stmt q_link_claim = {
    "oidc_link_claim",
    "WITH f AS (UPDATE public.oidc_flows x SET used_at = now() WHERE x.state_hash = $1"
    " AND x.provider = $2 AND x.org_id = $4::uuid AND x.used_at IS NULL"
    " AND x.expires_at > now() AND EXISTS (SELECT 1 FROM public.oidc_codes c"
    " WHERE c.code_hash = '" OIDC_LINK_KEY_PREFIX "' || $1 AND c.user_id = $3::uuid"
    " AND c.org_id = $4::uuid) RETURNING x.code_verifier, x.nonce),"
    " b AS (DELETE FROM public.oidc_codes c WHERE c.code_hash = '" OIDC_LINK_KEY_PREFIX "' || $1"
    " AND EXISTS (SELECT 1 FROM f) RETURNING 1)"
    " SELECT code_verifier, nonce FROM f",
};

/* $1 user id, $2 org id, $3 provider, $4 subject, $5 email (claim), $6 IP,
 * $7 request id. Answers (outcome, user JSON with the identity): linked |
 * already (this user's already) | taken (another user's) | provider (the
 * user has another identity of this provider) | gone (no such user). */
static const struct db_stmt q_link = {
    "oidc_link",
    "WITH u AS (SELECT x.id FROM public.users x WHERE x.id = $1::uuid AND x.org_id = $2::uuid),"
    " taken AS (SELECT i.user_id FROM public.user_identities i WHERE i.org_id = $2::uuid"
    " AND i.provider = $3 AND i.subject = $4),"
    " mine AS (SELECT 1 FROM public.user_identities i WHERE i.user_id = $1::uuid"
    " AND i.provider = $3),"
    " ins AS (INSERT INTO public.user_identities (org_id, user_id, provider, subject)"
    " SELECT $2::uuid, u.id, $3, $4 FROM u WHERE NOT EXISTS (SELECT 1 FROM taken)"
    " AND NOT EXISTS (SELECT 1 FROM mine) ON CONFLICT DO NOTHING RETURNING id),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $2::uuid, 'user', $1, 'user.identity_linked',"
    " 'user', $1, $6, $7, jsonb_build_object('provider', $3::text, 'subject', $4::text, 'email',"
    " $5::text) FROM ins)"
    " SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM u) THEN 'gone'"
    " WHEN EXISTS (SELECT 1 FROM ins) THEN 'linked'"
    " WHEN (SELECT user_id FROM taken) = $1::uuid THEN 'already'"
    " WHEN EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM taken) THEN 'provider'"
    " ELSE 'taken' END,"
    /* The statement's snapshot does not show its own insert: added here. */
    " (SELECT (to_jsonb(public.tenantd_user_json(x)) || jsonb_build_object('identities',"
    " (to_jsonb(public.tenantd_user_json(x)) -> 'identities') || CASE WHEN EXISTS"
    " (SELECT 1 FROM ins) THEN jsonb_build_array(jsonb_build_object('provider', $3::text,"
    " 'subject', $4::text)) ELSE '[]'::jsonb END))::text FROM public.users x"
    " WHERE x.id = $1::uuid)",
};

/* $1 user id, $2 org id, $3 provider, $4 IP, $5 request id. The user row
 * and their other identities are locked so that the last-method rule sees
 * the identities as they are. Answers (unlinked, had one). */
static const struct db_stmt q_unlink = {
    "oidc_unlink",
    "WITH u AS (SELECT x.id, right(x.password_hash, 44) <> '" OIDC_NO_PASSWORD_SUFFIX "'"
    " AS has_password FROM public.users x WHERE x.id = $1::uuid AND x.org_id = $2::uuid"
    " FOR UPDATE),"
    /* Locked, so that of two unlinks at once the later finds the row the
     * earlier deleted gone, not as its snapshot had it. */
    " other AS (SELECT o.id FROM public.user_identities o JOIN u ON o.user_id = u.id"
    " WHERE o.provider <> $3 FOR UPDATE OF o),"
    " del AS (DELETE FROM public.user_identities i USING u WHERE i.user_id = u.id"
    " AND i.provider = $3 AND (u.has_password OR EXISTS (SELECT 1 FROM other))"
    " RETURNING i.subject),"
    " aud AS (INSERT INTO public.audit_events (org_id, actor_type, actor_id, action, target_type,"
    " target_id, ip, request_id, details) SELECT $2::uuid, 'user', $1, 'user.identity_unlinked',"
    " 'user', $1, $4, $5, jsonb_build_object('provider', $3::text, 'subject', del.subject)"
    " FROM del)"
    " SELECT (SELECT count(*) FROM del)::int, EXISTS (SELECT 1 FROM public.user_identities i"
    " WHERE i.user_id = $1::uuid AND i.provider = $3)",
};

/* ---- POST /v1/auth/oidc/{provider}/link ------------------------------------- */

static void link_flow_inserted(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    struct request *req = f->req;
    if (!oidc_flow_row(f, r, "oidc link start", PROBLEM_FORBIDDEN,
                       "The organization is not active."))
        return;
    json_t *j = json_pack("{s:s}", "authorization_url", oidc_authorization_url(req, f));
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    http_set_header(req, "Cache-Control", "no-store");
    http_respond(req, 200, "application/json", body, strlen(body));
    free(body);
}

/* Both link routes: the path's provider and the body, its unknown fields
 * refused into *errors. NULL after answering. */
static json_t *link_body(struct request *req, const char *const *fields, struct provider **p,
                         json_t **errors)
{
    if (!(*p = oidc_provider_of(req)))
        return NULL;
    json_t *body = body_object(req, false);
    if (body)
        body_unknown_fields(req, body, fields, NULL, errors);
    return body;
}

void oidc_link_start(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req); /* a user: the routes are AUTH_USER */
    static const char *const fields[] = {"redirect_uri", NULL};
    struct provider *p;
    json_t *errors = NULL, *body = link_body(req, fields, &p, &errors);
    if (!body)
        return;
    const char *ru = json_string_value(json_object_get(body, "redirect_uri"));
    if (!ru || !oidc_redirect_allowed(ru))
        problem_add_error(&errors, "redirect_uri", "must be one of TENANTD_OIDC_REDIRECT_URIS");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    struct flow *f = oidc_flow_start(req, p);
    if (!f)
        return;
    f->v[0] = f->state_hash;
    f->v[1] = p->name;
    f->v[2] = arena_strdup(req->arena, ru);
    f->v[3] = f->verifier;
    f->v[4] = f->nonce;
    f->v[5] = arena_printf(req->arena, "%d", OIDC_FLOW_TTL_S);
    f->v[6] = a->org_id;
    f->v[7] = a->principal_id;
    oidc_flow_discover(f, &q_link_flow, 8, link_flow_inserted);
}

/* ---- POST /v1/auth/oidc/{provider}/link/complete ---------------------------- */

static void linked(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    struct request *req = f->req;
    if (db_failed(req, r, "oidc link"))
        return;
    const char *outcome = db_result_text(r, 0, 0), *user = db_result_text(r, 0, 1);
    if (!outcome || !strcmp(outcome, "gone") || !user) {
        auth_respond_unauthorized(req, "The credential is missing, invalid or expired.");
    } else if (!strcmp(outcome, "linked") || !strcmp(outcome, "already")) {
        http_respond(req, 200, "application/json", user, strlen(user));
    } else if (!strcmp(outcome, "provider")) {
        problem_respond(req, PROBLEM_IDENTITY_TAKEN,
                        "Another identity of this provider is linked to your account; unlink it "
                        "first.");
    } else {
        problem_respond(req, PROBLEM_IDENTITY_TAKEN,
                        "This identity is linked to another user of the organization.");
    }
}

static void link_verified(struct flow *f)
{
    struct request *req = f->req;
    if (f->failed) {
        log_msg(LOG_WARN, "oidc %s: link refused: %s", f->p->name, f->err);
        problem_respond(req, PROBLEM_UNAUTHORIZED, "The identity provider's answer was refused.");
        return;
    }
    const struct auth_ctx *a = auth_ctx(req);
    f->v[0] = a->principal_id;
    f->v[1] = a->org_id;
    f->v[2] = f->p->name;
    f->v[3] = arena_strdup(req->arena, f->sub);
    f->v[4] = f->email ? arena_strdup(req->arena, f->email) : NULL;
    f->v[5] = req->client_ip;
    f->v[6] = req->request_id;
    db_query(req->ctx->db, NULL, &q_link, 7, f->v, linked, f);
}

static void link_claimed(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    if (oidc_flow_row(f, r, "oidc link claim", PROBLEM_TOKEN_INVALID,
                      "This link attempt is unknown, used, expired or was not started by you."))
        oidc_flow_verify(f, r, link_verified);
}

void oidc_link_complete(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req); /* a user: the routes are AUTH_USER */
    static const char *const fields[] = {"state", "code", NULL};
    struct provider *p;
    json_t *errors = NULL, *body = link_body(req, fields, &p, &errors);
    if (!body)
        return;
    const char *state = json_string_value(json_object_get(body, "state"));
    const char *code = json_string_value(json_object_get(body, "code"));
    unsigned char raw[33];
    if (!state || strlen(state) != 43 || token_b64url_decode(state, 43, raw, sizeof raw) != 32)
        problem_add_error(&errors, "state", "must be the link_state the callback handed over");
    if (!code || !*code || strlen(code) > CODE_MAX)
        problem_add_error(&errors, "code", "must be the link_code the callback handed over");
    if (errors) {
        problem_respond_errors(req, "The request has invalid fields.", errors);
        return;
    }
    struct flow *f = oidc_flow_returned(req, p, state, code);
    f->v[0] = f->state_hash;
    f->v[1] = p->name;
    f->v[2] = a->principal_id;
    f->v[3] = a->org_id;
    db_query(req->ctx->db, NULL, &q_link_claim, 4, f->v, link_claimed, f);
}

/* ---- DELETE /v1/auth/oidc/{provider}/link ------------------------------------ */

static void unlinked(struct db_result *r, void *ud)
{
    struct request *req = ud;
    if (db_failed(req, r, "oidc unlink"))
        return;
    const char *n = db_result_text(r, 0, 0), *still = db_result_text(r, 0, 1);
    if (n && strcmp(n, "0") != 0)
        http_respond_empty(req, 204);
    else if (still && !strcmp(still, "t"))
        problem_respond(req, PROBLEM_LAST_SIGN_IN_METHOD,
                        "This is your only way to sign in (you have no password); set a password "
                        "(POST /v1/auth/password-reset) or link another provider first.");
    else
        problem_respond(req, PROBLEM_NOT_FOUND, "No identity of this provider is linked to you.");
}

/* Provider names as oidcprovider.c makes them: 1..31 of [a-z0-9_] (a provider no
 * longer configured can still be unlinked). */
static bool provider_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 31)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

void oidc_unlink(struct request *req)
{
    const struct auth_ctx *a = auth_ctx(req); /* a user: the routes are AUTH_USER */
    const char *provider = http_param(req, "provider");
    if (!provider_name_valid(provider)) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No identity of this provider is linked to you.");
        return;
    }
    const char **v = arena_calloc(req->arena, 5 * sizeof *v);
    v[0] = a->principal_id;
    v[1] = a->org_id;
    v[2] = provider;
    v[3] = req->client_ip;
    v[4] = req->request_id;
    db_query(req->ctx->db, NULL, &q_unlink, 5, v, unlinked, req);
}
