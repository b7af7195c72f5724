/*
 * id_token verification (OIDC Core 3.1.3.7) with OpenSSL: RS256 or ES256
 * only (so `alg: none` and HS256 signed with the public key are refused),
 * the signature against the provider's JWK, then iss, aud, exp, nonce and
 * sub. Apart from the flow (oidcflow.c) because it is pure checking: no
 * state but the provider's key cache (oidcprovider.c), no request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "auth/oidc_internal.h"

#define CLOCK_SKEW_S 60

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

static bool verify_sig(EVP_PKEY *key, bool ec, const char *signed_part, size_t slen,
                       const unsigned char *sig, int siglen)
{
    unsigned char *der = NULL;
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
        int derlen = i2d_ECDSA_SIG(es, &der);
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
json_t *oidc_id_token_verify(struct provider *p, const char *tok, const char *nonce, char *err,
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
    } else if (!(jwk = oidc_jwk_for(p, json_string_value(json_object_get(hdr, "kid")),
                                    ec ? "EC" : "RSA", err, errlen))) {
        /* err set */
    } else if (!(key = jwk_key(jwk, ec))) {
        snprintf(err, errlen, "provider key unusable");
    } else if (!verify_sig(key, ec, tok, (size_t)(d2 - tok), sig, sl)) {
        snprintf(err, errlen, "id_token signature does not verify");
    } else {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        json_t *aud = json_object_get(claims, "aud");
        bool aud_ok = json_is_string(aud) && !strcmp(json_string_value(aud), p->client_id);
        if (json_is_array(aud)) {
            size_t i;
            json_t *a;
            json_array_foreach(aud, i, a)
            {
                if (json_is_string(a) && !strcmp(json_string_value(a), p->client_id))
                    aud_ok = true;
            }
        }
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
