#ifndef TENANTD_AUTH_OIDC_INTERNAL_H
#define TENANTD_AUTH_OIDC_INTERNAL_H
/* Private to src/auth: what oidc.c (sign-in) shares with oidclink.c
 * (a signed-in user links and unlinks an identity). */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "auth/tokens.h"
#include "core/http.h"

struct provider {
    char name[32]; /* lower case, as in the URL */
    char *issuer, *client_id, *client_secret;
    pthread_mutex_t mu; /* guards the caches below */
    char *auth_ep, *token_ep, *jwks_uri;
    json_t *jwks;
    time_t jwks_at;
};

/* One trip through the provider: start (state, verifier, nonce), then the
 * code exchange on libuv's thread pool (w first: the work request). */
struct flow {
    uv_work_t w;
    struct request *req;
    struct provider *p;
    bool start;
    char state[44], verifier[44], nonce[44];
    char state_hash[TOKEN_SHA256_HEX_BUFSZ];
    const char *v[10];
    /* callback */
    char *code, *cb_url;
    char *sub, *email, *name; /* malloc'd by oidc_code_work; oidc_free_claims */
    bool email_verified;
    char err[256];
    int failed;
};

struct flow *oidc_flow_start(struct request *req, struct provider *p);

/* An OIDC-made user has no password: its hash is an argon2id PHC string
 * whose hash part is 32 zero bytes (base64, this suffix). Verifying it
 * costs what any password costs (no timing tell) and never matches; SQL
 * tells such users by this suffix. */
#define OIDC_NO_PASSWORD_SUFFIX "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

/* A flow started by POST /v1/auth/oidc/{provider}/link is bound to the user
 * who started it by a row of public.oidc_codes under the key
 * 'link:' || state_hash. Such a key is never a SHA-256 hex, so the sign-in
 * exchange (which looks codes up by their hash) can never redeem it. */
#define OIDC_LINK_KEY_PREFIX "link:"

struct provider *oidc_provider_of(struct request *req);
bool oidc_redirect_allowed(const char *uri);
const char *oidc_callback_url(struct request *req, const struct provider *p);
/* The provider's authorization URL for f (PKCE challenge of f->verifier). */
const char *oidc_authorization_url(struct request *req, const struct flow *f);
void oidc_redirect_to(struct request *req, const char *url);
bool oidc_rand_b64(char *out, size_t outlen);
/* Thread pool: discovery once per provider (f->failed, f->err). */
void oidc_discover_work(uv_work_t *w);
/* Thread pool: f->code -> tokens -> verified id_token -> f->sub, email,
 * name (f->failed, f->err). Free them with oidc_free_claims. */
void oidc_code_work(uv_work_t *w);
void oidc_free_claims(void *ud);

/* Routes of src/auth/oidclink.c (listed with oidc.c's). */
void oidc_link_start(struct request *req);
void oidc_link_complete(struct request *req);
void oidc_unlink(struct request *req);

#endif
