#ifndef TENANTD_AUTH_OIDC_INTERNAL_H
#define TENANTD_AUTH_OIDC_INTERNAL_H
/* Private to src/auth: the OIDC files' calls between each other. oidc.c
 * (sign-in routes) and oidclink.c (a signed-in user links and unlinks an
 * identity) share the flow of oidcflow.c, which calls the provider through
 * oidcprovider.c and checks id_tokens with oidcverify.c. */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "auth/tokens.h"
#include "core/http.h"
#include "core/problem.h"
#include "db/db.h"

/* A configured provider (oidcprovider.c), alive as long as the process. */
struct provider {
    char name[32]; /* lower case, as in the URL */
    char *issuer, *client_id, *client_secret;
    pthread_mutex_t mu; /* guards the caches below */
    char *auth_ep, *token_ep, *jwks_uri;
    json_t *jwks;
    time_t jwks_at;
};

/* One trip through the provider: start (state, verifier, nonce), then the
 * code exchange on libuv's thread pool (w first: the work request). In the
 * request's arena. */
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
    /* what follows discovery (oidc_flow_discover), verification (oidc_flow_verify) */
    const struct db_stmt *stmt;
    int nv;
    db_cb stmt_cb;
    void (*verified)(struct flow *f);
};

/* How long a started flow may take to come back, in seconds. */
#define OIDC_FLOW_TTL_S 600

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

/* ---- oidcprovider.c: the providers and calls to them ---- */

/* Reads the providers from the environment (the module's init). 0, or -1
 * after logging a misconfiguration. */
int oidc_providers_init(void);
/* The {provider} path parameter's provider, else NULL after answering 404. */
struct provider *oidc_provider_of(struct request *req);
/* Thread pool only (they block): discovery, once per provider; 0, or -1
 * with err. */
int oidc_discover(struct provider *p, char *err, size_t errlen);
/* The JWK of kid (any when NULL) and kty, refetching the set when it is old
 * or lacks the key (a rotation). A new reference, or NULL with err. */
json_t *oidc_jwk_for(struct provider *p, const char *kid, const char *kty, char *err,
                     size_t errlen);
/* Redeems an authorization code at the token endpoint (after discovery):
 * its JSON answer (a new reference), or NULL with err. */
json_t *oidc_code_redeem(struct provider *p, const char *code, const char *cb_url,
                         const char *verifier, char *err, size_t errlen);

/* ---- oidcverify.c ---- */

/* Checks id_token tok of p against nonce: the claims object (a new
 * reference), or NULL with err. Blocks when the JWKS must be fetched. */
json_t *oidc_id_token_verify(struct provider *p, const char *tok, const char *nonce, char *err,
                             size_t errlen);

/* ---- oidcflow.c: the flow sign-in and linking share ---- */

bool oidc_redirect_allowed(const char *uri);
/* s percent-encoded (all but RFC 3986's unreserved characters), in a. */
char *oidc_url_escape(struct arena *a, const char *s);
const char *oidc_callback_url(struct request *req, const struct provider *p);
/* The provider's authorization URL for f (PKCE challenge of f->verifier). */
const char *oidc_authorization_url(struct request *req, const struct flow *f);
void oidc_redirect_to(struct request *req, const char *url);
bool oidc_rand_b64(char *out, size_t outlen);
/* A new code flow of provider p for req: random state, PKCE verifier and
 * nonce, and the state's hash (what is stored). NULL after answering 500. */
struct flow *oidc_flow_start(struct request *req, struct provider *p);
/* The flow the provider sent back: its state (checked by the caller: 43
 * characters) and hash, the code, the callback URL. */
struct flow *oidc_flow_returned(struct request *req, struct provider *p, const char *state,
                                const char *code);
/* Discovery on the thread pool, then stmt with f->v[0..n) and cb(result,
 * f); 503 when the provider cannot be reached. */
void oidc_flow_discover(struct flow *f, const struct db_stmt *stmt, int n, db_cb cb);
/* A flow statement's result (inserting or claiming a flow): true when it
 * answered its one row; false after answering (the failure of `what`, or
 * `none` with detail when there is no row). */
bool oidc_flow_row(struct flow *f, struct db_result *r, const char *what, enum problem none,
                   const char *detail);
/* The claimed flow (r's verifier and nonce) -> code exchange and id_token
 * verification on the thread pool -> done(f) on the loop: f->failed (with
 * f->err), or f->sub, email, name (freed with the request). */
void oidc_flow_verify(struct flow *f, struct db_result *r, void (*done)(struct flow *f));

/* Routes of src/auth/oidclink.c (listed with oidc.c's). */
void oidc_link_start(struct request *req);
void oidc_link_complete(struct request *req);
void oidc_unlink(struct request *req);

#endif
