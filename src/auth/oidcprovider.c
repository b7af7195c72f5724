/*
 * OIDC providers (README "Accounts"): their configuration, and every call
 * tenantd makes to one. Apart from the sign-in routes (oidc.c) because
 * these calls block: they run on libuv's thread pool only, bounded by
 * timeouts, over libcurl.
 *
 * Providers: TENANTD_OIDC_<NAME>_CLIENT_ID (+ _CLIENT_SECRET, _ISSUER);
 * GOOGLE's issuer is preset. Discovery once per provider; the JWKS cached
 * and refetched when a token names an unknown key (rotation).
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "auth/oidc_internal.h"
#include "core/config.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "core/strbuf.h"

#define MAX_PROVIDERS 8
#define FETCH_MAX (1 << 20)
#define JWKS_MAX_AGE_S 3600
#define JWKS_MIN_REFETCH_S 1

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

int oidc_providers_init(void)
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

/* ---- blocking HTTP (thread pool only) ---------------------------------------- */

/* Collects an answer of at most FETCH_MAX bytes (a longer one fails the
 * transfer). */
static size_t grow_cb(char *d, size_t sz, size_t n, void *ud)
{
    struct strbuf *b = ud;
    size_t add = sz * n;
    if (b->len + add > FETCH_MAX)
        return 0;
    sb_put(b, d, add);
    return add;
}

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* GET url (or POST form when set) -> parsed JSON of a 2xx answer, or NULL
 * with err set. */
static json_t *fetch_json(const char *url, const char *form, char *err, size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, curl_init_once);
    if (strncmp(url, "https://", 8) != 0 && !(g_config->dev && !strncmp(url, "http://", 7))) {
        snprintf(err, errlen, "provider URL is not https");
        return NULL;
    }
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "cannot start libcurl");
        return NULL;
    }
    struct strbuf g = {0};
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
    else if (!(j = g.s ? json_loads(g.s, 0, NULL) : NULL) || !json_is_object(j)) {
        json_decref(j);
        j = NULL;
        snprintf(err, errlen, "provider answer is not a JSON object");
    }
    free(g.s);
    return j;
}

/* Discovery, once per process (endpoints rarely change). Caller holds mu. */
static int discover_locked(struct provider *p, char *err, size_t errlen)
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

int oidc_discover(struct provider *p, char *err, size_t errlen)
{
    pthread_mutex_lock(&p->mu);
    int rc = discover_locked(p, err, errlen);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* ---- JWKS ------------------------------------------------------------------- */

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
json_t *oidc_jwk_for(struct provider *p, const char *kid, const char *kty, char *err, size_t errlen)
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

/* ---- the token endpoint ------------------------------------------------------ */

json_t *oidc_code_redeem(struct provider *p, const char *code, const char *cb_url,
                         const char *verifier, char *err, size_t errlen)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    char *ec = curl_easy_escape(c, code, 0), *ecb = curl_easy_escape(c, cb_url, 0);
    char *ecid = curl_easy_escape(c, p->client_id, 0);
    char *esec = curl_easy_escape(c, p->client_secret ? p->client_secret : "", 0);
    char *form = NULL;
    size_t flen = strlen(ec) + strlen(ecb) + strlen(ecid) + strlen(esec) + 256;
    form = malloc(flen);
    if (form)
        snprintf(form, flen,
                 "grant_type=authorization_code&code=%s&redirect_uri=%s&client_id=%s"
                 "&client_secret=%s&code_verifier=%s",
                 ec, ecb, ecid, esec, verifier);
    curl_free(ec);
    curl_free(ecb);
    curl_free(ecid);
    curl_free(esec);
    curl_easy_cleanup(c);
    if (!form)
        return NULL;
    json_t *t = fetch_json(p->token_ep, form, err, errlen);
    OPENSSL_cleanse(form, strlen(form));
    free(form);
    return t;
}
