#include "auth/jwt.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "auth/tokens.h"

#define HS256_LEN 32
#define JWT_TEXT_MAX 255 /* issuer, audience */

struct jwt_key {
    EVP_MAC *mac; /* fetched once; EVP_MAC objects may be shared across threads */
    unsigned char *secret;
    size_t secret_len;
    char *issuer;
    char *audience;
};

static const char jwt_header_json[] = "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}";

const char *jwt_strerror(enum jwt_error e)
{
    static const char *const msgs[] = {
#define JWT_ERROR_MSG(name, msg) msg,
        JWT_ERROR_MAP(JWT_ERROR_MSG)
#undef JWT_ERROR_MSG
    };
    if ((unsigned)e >= sizeof msgs / sizeof msgs[0])
        return "unknown error";
    return msgs[e];
}

static bool text_ok(const char *s, size_t max)
{
    if (!s)
        return false;
    size_t n = strnlen(s, max + 1);
    return n > 0 && n <= max;
}

struct jwt_key *jwt_key_new(const void *secret, size_t secret_len, const char *issuer,
                            const char *audience)
{
    if (!secret || secret_len < JWT_SECRET_MIN || !text_ok(issuer, JWT_TEXT_MAX) ||
        !text_ok(audience, JWT_TEXT_MAX))
        return NULL;
    struct jwt_key *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    k->secret = malloc(secret_len);
    k->issuer = strdup(issuer);
    k->audience = strdup(audience);
    if (!k->mac || !k->secret || !k->issuer || !k->audience) {
        jwt_key_free(k);
        return NULL;
    }
    memcpy(k->secret, secret, secret_len);
    k->secret_len = secret_len;
    return k;
}

void jwt_key_free(struct jwt_key *key)
{
    if (!key)
        return;
    if (key->secret) {
        OPENSSL_cleanse(key->secret, key->secret_len);
        free(key->secret);
    }
    EVP_MAC_free(key->mac);
    free(key->issuer);
    free(key->audience);
    free(key);
}

/* HMAC-SHA256 of data into out[32]. 0, or -1 on an OpenSSL failure. */
static int hs256(const struct jwt_key *key, const char *data, size_t len,
                 unsigned char out[HS256_LEN])
{
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(key->mac);
    if (!ctx)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t outlen = 0;
    int ok = EVP_MAC_init(ctx, key->secret, key->secret_len, params) == 1 &&
             EVP_MAC_update(ctx, (const unsigned char *)data, len) == 1 &&
             EVP_MAC_final(ctx, out, &outlen, HS256_LEN) == 1 && outlen == HS256_LEN;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

int jwt_sign(const struct jwt_key *key, struct jwt_claims *c, int64_t now, int64_t ttl_s, char *out,
             size_t outlen)
{
    if (!key || !c || !out || now < 0 || ttl_s <= 0 || ttl_s > INT64_MAX - now || c->ver < 0 ||
        !text_ok(c->sub, JWT_ID_MAX) || !text_ok(c->org, JWT_ID_MAX) ||
        !text_ok(c->role, JWT_ROLE_MAX))
        return -1;
    if (token_uuid_v4(c->jti) != 0)
        return -1;
    c->iat = now;
    c->nbf = now;
    c->exp = now + ttl_s;

    json_t *payload =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:I}", "iss", key->issuer, "aud",
                  key->audience, "sub", c->sub, "org", c->org, "role", c->role, "iat",
                  (json_int_t)c->iat, "nbf", (json_int_t)c->nbf, "exp", (json_int_t)c->exp, "jti",
                  c->jti, "ver", (json_int_t)c->ver);
    if (!payload)
        return -1; /* e.g. a sub that is not UTF-8 */
    char *pj = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    if (!pj)
        return -1;
    size_t pjlen = strlen(pj);

    int ret = -1;
    size_t hlen = TOKEN_B64URL_LEN(sizeof jwt_header_json - 1);
    size_t plen = TOKEN_B64URL_LEN(pjlen);
    size_t slen = TOKEN_B64URL_LEN(HS256_LEN);
    if (outlen < hlen + 1 + plen + 1 + slen + 1)
        goto out;
    char *p = out;
    p += token_b64url_encode(jwt_header_json, sizeof jwt_header_json - 1, p, outlen);
    *p++ = '.';
    p += token_b64url_encode(pj, pjlen, p, outlen - (size_t)(p - out));
    unsigned char sig[HS256_LEN];
    if (hs256(key, out, (size_t)(p - out), sig) != 0)
        goto out;
    *p++ = '.';
    p += token_b64url_encode(sig, sizeof sig, p, outlen - (size_t)(p - out));
    ret = (int)(p - out);
out:
    free(pj);
    if (ret < 0 && outlen > 0)
        out[0] = '\0';
    return ret;
}

/* Decodes one base64url part and parses it as a JSON object (duplicate keys
 * refused, so {"sub":"a","sub":"b"} cannot mean two things). NULL plus
 * *err = BASE64 or `notobj`. */
static json_t *decode_object(const char *part, size_t len, enum jwt_error notobj,
                             enum jwt_error *err)
{
    unsigned char buf[JWT_MAX_TOKEN];
    int n = token_b64url_decode(part, len, buf, sizeof buf);
    if (n < 0) {
        *err = JWT_BASE64;
        return NULL;
    }
    json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        *err = notobj;
        return NULL;
    }
    return j;
}

/* True when obj[name] is a string equal to want (no embedded NUL tricks:
 * jansson refuses \u0000 unless asked to allow it). */
static bool string_is(json_t *obj, const char *name, const char *want)
{
    json_t *v = json_object_get(obj, name);
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           strcmp(json_string_value(v), want) == 0;
}

/* Copies obj[name], a string of 1..max bytes, into dst. */
static bool copy_string(json_t *obj, const char *name, char *dst, size_t max)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_string(v))
        return false;
    size_t n = json_string_length(v);
    if (n == 0 || n > max || memchr(json_string_value(v), '\0', n))
        return false;
    memcpy(dst, json_string_value(v), n);
    dst[n] = '\0';
    return true;
}

static bool get_int(json_t *obj, const char *name, int64_t *dst)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_integer(v))
        return false;
    *dst = (int64_t)json_integer_value(v);
    return true;
}

static enum jwt_error check_claims(const struct jwt_key *key, json_t *p, int64_t now,
                                   struct jwt_claims *c)
{
    json_t *iss = json_object_get(p, "iss"), *aud = json_object_get(p, "aud");
    if (!json_is_string(iss) || !json_is_string(aud))
        return JWT_CLAIMS;
    if (!copy_string(p, "sub", c->sub, JWT_ID_MAX) || !copy_string(p, "org", c->org, JWT_ID_MAX) ||
        !copy_string(p, "role", c->role, JWT_ROLE_MAX) ||
        !copy_string(p, "jti", c->jti, JWT_ID_MAX) || !get_int(p, "iat", &c->iat) ||
        !get_int(p, "nbf", &c->nbf) || !get_int(p, "exp", &c->exp) || !get_int(p, "ver", &c->ver) ||
        c->ver < 0)
        return JWT_CLAIMS;
    if (!string_is(p, "iss", key->issuer))
        return JWT_ISSUER;
    if (!string_is(p, "aud", key->audience))
        return JWT_AUDIENCE;
    /* Written so no sum can overflow whatever the token says. */
    if (c->exp <= now - JWT_LEEWAY_S)
        return JWT_EXPIRED;
    if (c->nbf > now + JWT_LEEWAY_S || c->iat > now + JWT_LEEWAY_S)
        return JWT_NOT_YET_VALID;
    return JWT_OK;
}

enum jwt_error jwt_verify(const struct jwt_key *key, const char *token, size_t len, int64_t now,
                          struct jwt_claims *claims)
{
    memset(claims, 0, sizeof *claims);
    /* A sane clock keeps now +- leeway from overflowing below. */
    if (!key || !token || now < 0 || now > INT64_MAX / 2)
        return JWT_INTERNAL;
    if (len > JWT_MAX_TOKEN)
        return JWT_TOO_LONG;

    const char *d1 = memchr(token, '.', len);
    if (!d1)
        return JWT_FORMAT;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return JWT_FORMAT;
    const char *end = token + len;
    if (d1 == token || d2 == d1 + 1)
        return JWT_FORMAT;

    enum jwt_error err = JWT_OK;
    json_t *header = decode_object(token, (size_t)(d1 - token), JWT_HEADER, &err);
    if (!header)
        return err;
    if (!string_is(header, "alg", "HS256"))
        err = JWT_ALG;
    /* RFC 9068 section 4 names both spellings of the media type. */
    else if (!string_is(header, "typ", "at+jwt") && !string_is(header, "typ", "application/at+jwt"))
        err = JWT_TYP;
    else if (json_object_get(header, "crit"))
        err = JWT_CRIT; /* RFC 7515 4.1.11: we understand no extension */
    json_decref(header);
    if (err != JWT_OK)
        return err;

    unsigned char sig[HS256_LEN], want[HS256_LEN];
    if (token_b64url_decode(d2 + 1, (size_t)(end - d2 - 1), sig, sizeof sig) != HS256_LEN)
        return JWT_SIGNATURE;
    if (hs256(key, token, (size_t)(d2 - token), want) != 0)
        return JWT_INTERNAL;
    if (CRYPTO_memcmp(sig, want, HS256_LEN) != 0)
        return JWT_SIGNATURE;

    json_t *payload = decode_object(d1 + 1, (size_t)(d2 - d1 - 1), JWT_PAYLOAD, &err);
    if (!payload)
        return err;
    err = check_claims(key, payload, now, claims);
    json_decref(payload);
    if (err != JWT_OK)
        memset(claims, 0, sizeof *claims);
    return err;
}
