/*
 * The authorization code flow that sign-in (oidc.c) and linking
 * (oidclink.c) share: a flow's state, PKCE verifier and nonce, the
 * provider's authorization URL, discovery and the code exchange on libuv's
 * thread pool, the verified claims, the redirects. Each route file holds
 * only what its own steps decide (which statement, which answer).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "app/dbhttp.h"
#include "auth/oidc_internal.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/log.h"
#include "core/problem.h"

/* ---- redirects and URLs --------------------------------------------------------- */

bool oidc_redirect_allowed(const char *uri)
{
    const char *list = g_config->oidc_redirect_uris;
    size_t ul = strlen(uri);
    while (list && *list) {
        const char *end = strchr(list, ',');
        size_t n = end ? (size_t)(end - list) : strlen(list);
        while (n && *list == ' ')
            list++, n--;
        while (n && list[n - 1] == ' ')
            n--;
        if (n == ul && !memcmp(list, uri, n))
            return true;
        list = end ? end + 1 : NULL;
    }
    return false;
}

char *oidc_url_escape(struct arena *a, const char *s)
{
    char *out = arena_alloc(a, strlen(s) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || strchr("-._~", *p))
            *o++ = (char)*p;
        else
            o += sprintf(o, "%%%02X", *p);
    }
    *o = '\0';
    return out;
}

const char *oidc_callback_url(struct request *req, const struct provider *p)
{
    const char *base = g_config->api_url ? g_config->api_url : "";
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    return arena_printf(req->arena, "%.*s/v1/auth/oidc/%s/callback", (int)bl, base, p->name);
}

void oidc_redirect_to(struct request *req, const char *url)
{
    http_set_header(req, "Location", url);
    http_set_header(req, "Cache-Control", "no-store");
    http_respond_empty(req, 302);
}

const char *oidc_authorization_url(struct request *req, const struct flow *f)
{
    unsigned char dig[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)f->verifier, strlen(f->verifier), dig);
    char challenge[44];
    token_b64url_encode(dig, sizeof dig, challenge, sizeof challenge);
    struct arena *a = req->arena;
    return arena_printf(
        a,
        "%s%sresponse_type=code&client_id=%s&redirect_uri=%s"
        "&scope=openid%%20email%%20profile&state=%s&nonce=%s"
        "&code_challenge=%s&code_challenge_method=S256",
        f->p->auth_ep, strchr(f->p->auth_ep, '?') ? "&" : "?", oidc_url_escape(a, f->p->client_id),
        oidc_url_escape(a, oidc_callback_url(req, f->p)), f->state, f->nonce, challenge);
}

/* ---- a flow ----------------------------------------------------------------------- */

bool oidc_rand_b64(char *out, size_t outlen)
{
    return token_random_b64url(32, out, outlen) == 43;
}

/* A new code flow of provider p for req: random state, PKCE verifier and
 * nonce, and the state's hash (what is stored). NULL after answering 500. */
struct flow *oidc_flow_start(struct request *req, struct provider *p)
{
    struct flow *f = arena_calloc(req->arena, sizeof *f);
    f->req = req;
    f->p = p;
    f->start = true;
    if (!oidc_rand_b64(f->state, sizeof f->state) ||
        !oidc_rand_b64(f->verifier, sizeof f->verifier) ||
        !oidc_rand_b64(f->nonce, sizeof f->nonce)) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return NULL;
    }
    token_sha256_hex(f->state, strlen(f->state), f->state_hash);
    return f;
}

struct flow *oidc_flow_returned(struct request *req, struct provider *p, const char *state,
                                const char *code)
{
    struct flow *f = arena_calloc(req->arena, sizeof *f);
    f->req = req;
    f->p = p;
    f->code = arena_strdup(req->arena, code);
    f->cb_url = (char *)oidc_callback_url(req, p);
    snprintf(f->state, sizeof f->state, "%s", state);
    token_sha256_hex(state, strlen(state), f->state_hash);
    return f;
}

/* ---- discovery, then the flow's statement -------------------------------------- */

static void discover_work(uv_work_t *w)
{
    struct flow *f = (struct flow *)w;
    f->failed = oidc_discover(f->p, f->err, sizeof f->err) != 0;
}

static void discovered(uv_work_t *w, int status)
{
    struct flow *f = (struct flow *)w;
    struct request *req = f->req;
    if (status != 0 || f->failed) {
        log_msg(LOG_WARN, "oidc %s: %s", f->p->name, f->err);
        problem_respond(req, PROBLEM_UNAVAILABLE, "The identity provider cannot be reached.");
        return;
    }
    db_query(req->ctx->db, NULL, f->stmt, f->nv, f->v, f->stmt_cb, f);
}

void oidc_flow_discover(struct flow *f, const struct db_stmt *stmt, int n, db_cb cb)
{
    f->stmt = stmt;
    f->nv = n;
    f->stmt_cb = cb;
    if (uv_queue_work(f->req->ctx->loop, &f->w, discover_work, discovered) != 0)
        problem_respond(f->req, PROBLEM_INTERNAL, "The request could not be completed.");
}

/* ---- the flow's rows; the claimed flow's code exchange and id_token ------------ */

bool oidc_flow_row(struct flow *f, struct db_result *r, const char *what, enum problem none,
                   const char *detail)
{
    if (db_failed(f->req, r, what))
        return false;
    if (PQntuples(r->res) != 1) {
        problem_respond(f->req, none, detail);
        return false;
    }
    return true;
}

/* Thread pool: discovery once per provider, f->code -> tokens -> verified
 * id_token -> f->sub, email, name (malloc'd: free_claims), or f->failed
 * with f->err. */
static void code_work(uv_work_t *w)
{
    struct flow *f = (struct flow *)w;
    struct provider *p = f->p;
    f->failed = 1;
    if (oidc_discover(p, f->err, sizeof f->err) != 0)
        return;
    json_t *t = oidc_code_redeem(p, f->code, f->cb_url, f->verifier, f->err, sizeof f->err);
    if (!t)
        return;
    const char *idt = json_string_value(json_object_get(t, "id_token"));
    json_t *claims = idt ? oidc_id_token_verify(p, idt, f->nonce, f->err, sizeof f->err) : NULL;
    if (!idt)
        snprintf(f->err, sizeof f->err, "token endpoint gave no id_token");
    json_decref(t);
    if (!claims)
        return;
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    const char *email = json_string_value(json_object_get(claims, "email"));
    const char *name = json_string_value(json_object_get(claims, "name"));
    json_t *ev = json_object_get(claims, "email_verified");
    f->email_verified =
        json_is_true(ev) || (json_is_string(ev) && !strcmp(json_string_value(ev), "true"));
    f->sub = strdup(sub);
    f->email = email && body_email_valid(email) ? strdup(email) : NULL;
    f->name = name && !body_name_problem(name) ? strdup(name) : NULL; /* else the user has none */
    json_decref(claims);
    f->failed = !f->sub;
}

static void free_claims(void *ud)
{
    struct flow *f = ud;
    free(f->sub);
    free(f->email);
    free(f->name);
}

static void verified(uv_work_t *w, int status)
{
    struct flow *f = (struct flow *)w;
    arena_cleanup(f->req->arena, free_claims, f);
    if (status != 0)
        f->failed = 1;
    f->verified(f);
}

void oidc_flow_verify(struct flow *f, struct db_result *r, void (*done)(struct flow *f))
{
    snprintf(f->verifier, sizeof f->verifier, "%s", PQgetvalue(r->res, 0, 0));
    snprintf(f->nonce, sizeof f->nonce, "%s", PQgetvalue(r->res, 0, 1));
    f->verified = done;
    if (uv_queue_work(f->req->ctx->loop, &f->w, code_work, verified) != 0)
        problem_respond(f->req, PROBLEM_INTERNAL, "The request could not be completed.");
}
