/*
 * Sign-in with OIDC (README "Accounts"): authorization code + PKCE (S256),
 * `state` and `nonce`, discovery, JWKS cached and refetched when a token
 * names an unknown key (rotation), id_token verified with OpenSSL: RS256
 * or ES256 only (so `alg: none` and HS256 signed with the public key are
 * refused), iss, aud, exp, nonce.
 *
 * Providers: TENANTD_OIDC_<NAME>_CLIENT_ID (+ _CLIENT_SECRET, _ISSUER);
 * GOOGLE's issuer is preset. Network calls (discovery, token endpoint,
 * JWKS) block, so they run on libuv's thread pool, bounded by timeouts.
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
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <llhttp.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <uv.h>

#include "auth/internal.h"
#include "auth/oidc_internal.h"
#include "core/arena.h"
#include "core/body.h"
#include "core/config.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "db/db.h"
#include "app/dbhttp.h"

#define MAX_PROVIDERS 8
#define FETCH_MAX (1 << 20)
#define JWKS_MAX_AGE_S 3600
#define JWKS_MIN_REFETCH_S 1
#define FLOW_TTL_S 600
#define CLOCK_SKEW_S 60

static struct provider providers[MAX_PROVIDERS];
static int nproviders;

static struct provider *oidc_provider_find(const char *name)
{
    for (int i = 0; name && i < nproviders; i++)
        if (!strcmp(providers[i].name, name))
            return &providers[i];
    return NULL;
}

/* The {provider} path parameter's provider, else NULL after answering 404. */
struct provider *oidc_provider_of(struct request *req)
{
    struct provider *p = oidc_provider_find(http_param(req, "provider"));
    if (!p)
        problem_respond(req, PROBLEM_NOT_FOUND, "No such sign-in provider.");
    return p;
}

extern char **environ;

static int oidc_init(void)
{
    static const char pre[] = "TENANTD_OIDC_", suf[] = "_CLIENT_ID";
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, pre, sizeof pre - 1) != 0)
            continue;
        size_t klen = (size_t)(eq - *e);
        if (klen <= sizeof pre - 1 + sizeof suf - 1 ||
            strncmp(eq - (sizeof suf - 1), suf, sizeof suf - 1) != 0)
            continue;
        size_t nlen = klen - (sizeof pre - 1) - (sizeof suf - 1);
        const char *n = *e + sizeof pre - 1;
        if (nlen >= sizeof providers[0].name || nproviders == MAX_PROVIDERS)
            continue;
        char upper[64], key[128];
        snprintf(upper, sizeof upper, "%.*s", (int)nlen, n);
        snprintf(key, sizeof key, "TENANTD_OIDC_%s_ISSUER", upper);
        const char *issuer = getenv(key);
        if (!issuer && !strcmp(upper, "GOOGLE"))
            issuer = "https://accounts.google.com";
        if (!issuer) {
            log_msg(LOG_ERROR, "oidc: %s is set but not TENANTD_OIDC_%s_ISSUER", key, upper);
            return -1;
        }
        if (strncmp(issuer, "https://", 8) != 0 && !g_config->dev) {
            log_msg(LOG_ERROR, "oidc: the issuer of %s must be https:// (outside dev mode)", upper);
            return -1;
        }
        struct provider *p = &providers[nproviders++];
        for (size_t i = 0; i < nlen; i++)
            p->name[i] = (char)tolower((unsigned char)upper[i]);
        p->issuer = strdup(issuer);
        p->client_id = strdup(eq + 1);
        snprintf(key, sizeof key, "TENANTD_OIDC_%s_CLIENT_SECRET", upper);
        p->client_secret = getenv(key) ? strdup(getenv(key)) : NULL;
        pthread_mutex_init(&p->mu, NULL);
        log_msg(LOG_INFO, "oidc: provider %s (%s)", p->name, p->issuer);
    }
    return 0;
}

/* ---- blocking HTTP (thread pool only) ---------------------------------------- */

struct grow {
    char *p;
    size_t len;
};

static size_t grow_cb(char *d, size_t sz, size_t n, void *ud)
{
    struct grow *g = ud;
    size_t add = sz * n;
    if (g->len + add > FETCH_MAX)
        return 0;
    char *p = realloc(g->p, g->len + add + 1);
    if (!p)
        return 0;
    memcpy(p + g->len, d, add);
    g->p = p;
    g->len += add;
    g->p[g->len] = '\0';
    return add;
}

/* GET url (or POST form when set) -> parsed JSON of a 2xx answer, or NULL
 * with err set. */
static json_t *fetch_json(const char *url, const char *form, char *err, size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    void oidc_curl_init(void);
    pthread_once(&once, oidc_curl_init);
    if (strncmp(url, "https://", 8) != 0 && !(g_config->dev && !strncmp(url, "http://", 7))) {
        snprintf(err, errlen, "provider URL is not https");
        return NULL;
    }
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "cannot start libcurl");
        return NULL;
    }
    struct grow g = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, grow_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
    if (form)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    json_t *j = NULL;
    if (rc != CURLE_OK)
        snprintf(err, errlen, "provider unreachable: %s", curl_easy_strerror(rc));
    else if (status < 200 || status > 299)
        snprintf(err, errlen, "provider answered %ld", status);
    else if (!(j = g.p ? json_loads(g.p, 0, NULL) : NULL) || !json_is_object(j)) {
        json_decref(j);
        j = NULL;
        snprintf(err, errlen, "provider answer is not a JSON object");
    }
    free(g.p);
    return j;
}

void oidc_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Discovery, once per process (endpoints rarely change). Caller holds mu. */
static int discover(struct provider *p, char *err, size_t errlen)
{
    if (p->auth_ep)
        return 0;
    char url[1024];
    size_t il = strlen(p->issuer);
    snprintf(url, sizeof url, "%.*s/.well-known/openid-configuration",
             (int)(il && p->issuer[il - 1] == '/' ? il - 1 : il), p->issuer);
    json_t *d = fetch_json(url, NULL, err, errlen);
    if (!d)
        return -1;
    const char *iss = json_string_value(json_object_get(d, "issuer"));
    const char *a = json_string_value(json_object_get(d, "authorization_endpoint"));
    const char *t = json_string_value(json_object_get(d, "token_endpoint"));
    const char *k = json_string_value(json_object_get(d, "jwks_uri"));
    if (!iss || strcmp(iss, p->issuer) != 0 || !a || !t || !k) {
        snprintf(err, errlen, "discovery document incomplete or of another issuer");
        json_decref(d);
        return -1;
    }
    p->auth_ep = strdup(a);
    p->token_ep = strdup(t);
    p->jwks_uri = strdup(k);
    json_decref(d);
    return 0;
}

/* ---- id_token verification --------------------------------------------------- */

static unsigned char *b64url_dec(const char *s, size_t len, int *outlen)
{
    unsigned char *out = malloc(len + 1);
    if (!out)
        return NULL;
    *outlen = token_b64url_decode(s, len, out, len + 1);
    if (*outlen < 0) {
        free(out);
        return NULL;
    }
    return out;
}

static BIGNUM *bn_of(json_t *jwk, const char *field)
{
    const char *s = json_string_value(json_object_get(jwk, field));
    int n;
    unsigned char *raw = s ? b64url_dec(s, strlen(s), &n) : NULL;
    BIGNUM *bn = raw ? BN_bin2bn(raw, n, NULL) : NULL;
    free(raw);
    return bn;
}

/* A public key from a JWK: RSA (n, e) or EC P-256 (x, y). */
static EVP_PKEY *jwk_key(json_t *jwk, bool ec)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, ec ? "EC" : "RSA", NULL);
    BIGNUM *n = NULL, *e = NULL;
    unsigned char pub[65];
    if (!bld || !ctx)
        goto done;
    if (ec) {
        const char *crv = json_string_value(json_object_get(jwk, "crv"));
        const char *xs = json_string_value(json_object_get(jwk, "x"));
        const char *ys = json_string_value(json_object_get(jwk, "y"));
        int xl = 0, yl = 0;
        unsigned char *x = xs ? b64url_dec(xs, strlen(xs), &xl) : NULL;
        unsigned char *y = ys ? b64url_dec(ys, strlen(ys), &yl) : NULL;
        bool ok = crv && !strcmp(crv, "P-256") && x && y && xl == 32 && yl == 32;
        if (ok) {
            pub[0] = 4;
            memcpy(pub + 1, x, 32);
            memcpy(pub + 33, y, 32);
        }
        free(x);
        free(y);
        if (!ok ||
            !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub))
            goto done;
    } else {
        n = bn_of(jwk, "n");
        e = bn_of(jwk, "e");
        if (!n || !e || BN_num_bits(n) < 2048 ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
            goto done;
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    if (!params || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
done:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(e);
    return pkey;
}

static json_t *jwks_find(json_t *jwks, const char *kid, const char *kty)
{
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(jwks, "keys"), i, k)
    {
        const char *t = json_string_value(json_object_get(k, "kty"));
        const char *id = json_string_value(json_object_get(k, "kid"));
        const char *use = json_string_value(json_object_get(k, "use"));
        if (t && !strcmp(t, kty) && (!kid || (id && !strcmp(id, kid))) &&
            (!use || !strcmp(use, "sig")))
            return k;
    }
    return NULL;
}

/* The JWK for kid, refetching the set when it is old or lacks the key (a
 * rotation), at most every JWKS_MIN_REFETCH_S. A new reference, or NULL. */
static json_t *key_for(struct provider *p, const char *kid, const char *kty, char *err,
                       size_t errlen)
{
    pthread_mutex_lock(&p->mu);
    time_t now = time(NULL);
    json_t *k = p->jwks && now - p->jwks_at < JWKS_MAX_AGE_S ? jwks_find(p->jwks, kid, kty) : NULL;
    if (!k && (!p->jwks || now - p->jwks_at >= JWKS_MIN_REFETCH_S)) {
        json_t *set = fetch_json(p->jwks_uri, NULL, err, errlen);
        if (set) {
            json_decref(p->jwks);
            p->jwks = set;
            p->jwks_at = now;
            k = jwks_find(set, kid, kty);
        }
    }
    json_incref(k);
    pthread_mutex_unlock(&p->mu);
    if (!k && !*err)
        snprintf(err, errlen, "no key of the provider matches the id_token");
    return k;
}

static bool verify_sig(EVP_PKEY *key, bool ec, const char *signed_part, size_t slen,
                       const unsigned char *sig, int siglen)
{
    unsigned char *der = NULL;
    int derlen = 0;
    if (ec) { /* JOSE: r || s, 32 bytes each -> DER for OpenSSL */
        if (siglen != 64)
            return false;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            return false;
        }
        derlen = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
        if (derlen <= 0)
            return false;
        sig = der;
        siglen = derlen;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok =
        md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestVerify(md, sig, (size_t)siglen, (const unsigned char *)signed_part, slen) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return ok;
}

/* Checks id_token; on success the claims object (new reference). */
static json_t *verify_id_token(struct provider *p, const char *tok, const char *nonce, char *err,
                               size_t errlen)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.')) {
        snprintf(err, errlen, "id_token is not a JWS");
        return NULL;
    }
    int hl, pl, sl;
    unsigned char *h = b64url_dec(tok, (size_t)(d1 - tok), &hl);
    unsigned char *pb = b64url_dec(d1 + 1, (size_t)(d2 - d1 - 1), &pl);
    unsigned char *sig = b64url_dec(d2 + 1, strlen(d2 + 1), &sl);
    json_t *hdr = h ? json_loadb((const char *)h, (size_t)hl, 0, NULL) : NULL;
    json_t *claims = pb ? json_loadb((const char *)pb, (size_t)pl, 0, NULL) : NULL;
    json_t *jwk = NULL;
    EVP_PKEY *key = NULL;
    bool ok = false;
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    /* Only the asymmetric algorithms: "none" and HS256 (which would take
     * the public key as an HMAC secret) never verify. */
    bool ec = alg && !strcmp(alg, "ES256");
    if (!hdr || !claims || !sig || !json_is_object(claims)) {
        snprintf(err, errlen, "id_token is malformed");
    } else if (!alg || (strcmp(alg, "RS256") != 0 && !ec)) {
        snprintf(err, errlen, "id_token algorithm refused");
    } else if (!(jwk = key_for(p, json_string_value(json_object_get(hdr, "kid")), ec ? "EC" : "RSA",
                               err, errlen))) {
        /* err set */
    } else if (!(key = jwk_key(jwk, ec))) {
        snprintf(err, errlen, "provider key unusable");
    } else if (!verify_sig(key, ec, tok, (size_t)(d2 - tok), sig, sl)) {
        snprintf(err, errlen, "id_token signature does not verify");
    } else {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        json_t *aud = json_object_get(claims, "aud");
        bool aud_ok = json_is_string(aud) && !strcmp(json_string_value(aud), p->client_id);
        size_t i;
        json_t *a;
        if (json_is_array(aud))
            json_array_foreach(aud, i, a) if (json_is_string(a) &&
                                              !strcmp(json_string_value(a), p->client_id)) aud_ok =
                true;
        json_t *exp = json_object_get(claims, "exp");
        const char *n = json_string_value(json_object_get(claims, "nonce"));
        const char *sub = json_string_value(json_object_get(claims, "sub"));
        time_t now = time(NULL);
        /* Google also issues tokens with its issuer without the scheme. */
        bool google_alias = iss && !strcmp(p->issuer, "https://accounts.google.com") &&
                            !strcmp(iss, "accounts.google.com");
        if (!iss || (strcmp(iss, p->issuer) != 0 && !google_alias))
            snprintf(err, errlen, "id_token issuer mismatch");
        else if (!aud_ok)
            snprintf(err, errlen, "id_token audience mismatch");
        else if (!json_is_number(exp) || json_number_value(exp) + CLOCK_SKEW_S < (double)now)
            snprintf(err, errlen, "id_token expired");
        else if (!n || strcmp(n, nonce) != 0)
            snprintf(err, errlen, "id_token nonce mismatch");
        else if (!sub || !*sub || strlen(sub) > 255)
            snprintf(err, errlen, "id_token has no subject");
        else
            ok = true;
    }
    EVP_PKEY_free(key);
    json_decref(jwk);
    json_decref(hdr);
    free(h);
    free(pb);
    free(sig);
    if (!ok) {
        json_decref(claims);
        return NULL;
    }
    return claims;
}

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

static char *url_escape(struct arena *a, const char *s)
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
    return arena_printf(a,
                        "%s%sresponse_type=code&client_id=%s&redirect_uri=%s"
                        "&scope=openid%%20email%%20profile&state=%s&nonce=%s"
                        "&code_challenge=%s&code_challenge_method=S256",
                        f->p->auth_ep, strchr(f->p->auth_ep, '?') ? "&" : "?",
                        url_escape(a, f->p->client_id), url_escape(a, oidc_callback_url(req, f->p)),
                        f->state, f->nonce, challenge);
}

static void flow_inserted(struct db_result *r, void *ud)
{
    struct flow *f = ud;
    struct request *req = f->req;
    if (db_failed(req, r, "oidc start"))
        return;
    if (PQntuples(r->res) != 1) {
        problem_respond(req, PROBLEM_NOT_FOUND, "No such active organization.");
        return;
    }
    oidc_redirect_to(req, oidc_authorization_url(req, f));
}

static void start_discovered(uv_work_t *w, int status)
{
    struct flow *f = (struct flow *)w;
    struct request *req = f->req;
    if (status != 0 || f->failed) {
        log_msg(LOG_WARN, "oidc %s: %s", f->p->name, f->err);
        problem_respond(req, PROBLEM_UNAVAILABLE, "The identity provider cannot be reached.");
        return;
    }
    db_query(req->ctx->db, NULL, &q_flow_insert, 8, f->v, flow_inserted, f);
}

void oidc_discover_work(uv_work_t *w)
{
    struct flow *f = (struct flow *)w;
    pthread_mutex_lock(&f->p->mu);
    f->failed = discover(f->p, f->err, sizeof f->err) != 0;
    pthread_mutex_unlock(&f->p->mu);
}

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
    f->v[6] = arena_printf(req->arena, "%d", FLOW_TTL_S);
    f->v[7] = org;
    if (uv_queue_work(req->ctx->loop, &f->w, oidc_discover_work, start_discovered) != 0)
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
}

void oidc_code_work(uv_work_t *w)
{
    struct flow *f = (struct flow *)w;
    struct provider *p = f->p;
    f->failed = 1;
    pthread_mutex_lock(&p->mu);
    int rc = discover(p, f->err, sizeof f->err);
    pthread_mutex_unlock(&p->mu);
    if (rc != 0)
        return;
    CURL *c = curl_easy_init();
    if (!c)
        return;
    char *ec = curl_easy_escape(c, f->code, 0), *ecb = curl_easy_escape(c, f->cb_url, 0);
    char *ecid = curl_easy_escape(c, p->client_id, 0);
    char *esec = curl_easy_escape(c, p->client_secret ? p->client_secret : "", 0);
    char *form = NULL;
    size_t flen = strlen(ec) + strlen(ecb) + strlen(ecid) + strlen(esec) + 256;
    form = malloc(flen);
    if (form)
        snprintf(form, flen,
                 "grant_type=authorization_code&code=%s&redirect_uri=%s&client_id=%s"
                 "&client_secret=%s&code_verifier=%s",
                 ec, ecb, ecid, esec, f->verifier);
    curl_free(ec);
    curl_free(ecb);
    curl_free(ecid);
    curl_free(esec);
    curl_easy_cleanup(c);
    if (!form)
        return;
    json_t *t = fetch_json(p->token_ep, form, f->err, sizeof f->err);
    OPENSSL_cleanse(form, strlen(form));
    free(form);
    if (!t)
        return;
    const char *idt = json_string_value(json_object_get(t, "id_token"));
    json_t *claims = idt ? verify_id_token(p, idt, f->nonce, f->err, sizeof f->err) : NULL;
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

void oidc_free_claims(void *ud)
{
    struct flow *f = ud;
    free(f->sub);
    free(f->email);
    free(f->name);
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

static void callback_done(uv_work_t *w, int status)
{
    struct flow *f = (struct flow *)w;
    struct request *req = f->req;
    arena_cleanup(req->arena, oidc_free_claims, f);
    if (status != 0 || f->failed) {
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
    if (db_failed(req, r, "oidc callback"))
        return;
    if (PQntuples(r->res) != 1) {
        problem_respond(req, PROBLEM_TOKEN_INVALID,
                        "This sign-in attempt is unknown, used or expired.");
        return;
    }
    if (!strcmp(PQgetvalue(r->res, 0, 2), "t")) {
        /* A link: back to the frontend, whose signed-in user completes it
         * (POST /v1/auth/oidc/{provider}/link/complete). */
        const char *ru = PQgetvalue(r->res, 0, 3);
        struct arena *a = req->arena;
        oidc_redirect_to(req, arena_printf(a, "%s%slink_provider=%s&link_state=%s&link_code=%s", ru,
                                           strchr(ru, '?') ? "&" : "?", f->p->name,
                                           url_escape(a, f->state), url_escape(a, f->code)));
        return;
    }
    snprintf(f->verifier, sizeof f->verifier, "%s", PQgetvalue(r->res, 0, 0));
    snprintf(f->nonce, sizeof f->nonce, "%s", PQgetvalue(r->res, 0, 1));
    if (uv_queue_work(req->ctx->loop, &f->w, oidc_code_work, callback_done) != 0)
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
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
    struct flow *f = arena_calloc(req->arena, sizeof *f);
    f->req = req;
    f->p = p;
    f->code = arena_strdup(req->arena, code);
    f->cb_url = (char *)oidc_callback_url(req, p);
    snprintf(f->state, sizeof f->state, "%s", state);
    token_sha256_hex(state, strlen(state), f->state_hash);
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
    .init = oidc_init,
};
