#ifndef TENANTD_AUTH_JWT_H
#define TENANTD_AUTH_JWT_H
#include <stddef.h>
#include <stdint.h>

/*
 * Access tokens: HS256 JWTs in the RFC 9068 profile.
 *   header  {"alg":"HS256","typ":"at+jwt"}
 *   claims  {"iss","aud","sub" (user id),"org" (org id),"role","iat","nbf",
 *            "exp","jti" (random UUID),"ver" (token version, integer >= 0)}
 * `ver` lets the caller revoke every token of a user at once: it stores a
 * version per user and rejects tokens whose ver is older.
 *
 * Verification pins the algorithm: alg must be exactly "HS256" and typ
 * exactly "at+jwt" (or "application/at+jwt", RFC 9068 section 4) (alg none, HS512, RS256, a missing
 * alg: rejected), the token has exactly three strictly base64url (unpadded, canonical) parts and at
 * most JWT_MAX_TOKEN bytes, the signature is compared in constant time, header and payload are JSON
 * objects without duplicate keys, every claim is present with its type, iss and aud equal the
 * key's, and time claims hold against the caller's `now` with JWT_LEEWAY_S of clock skew.
 */

#define JWT_MAX_TOKEN 8192  /* longer tokens are rejected before any parsing */
#define JWT_LEEWAY_S 30     /* clock skew tolerated on exp, nbf and iat */
#define JWT_SECRET_MIN 32   /* bytes; RFC 7518 3.2: at least the hash size */
#define JWT_SIGNED_MAX 1024 /* a buffer this big always holds jwt_sign's output */

#define JWT_ID_MAX 63   /* longest sub, org or jti accepted */
#define JWT_ROLE_MAX 31 /* longest role accepted */

/* X(name, message): why a token was refused, for logs. Every one of them is
 * the same 401 to the client. */
#define JWT_ERROR_MAP(X)                                                                           \
    X(OK, "ok")                                                                                    \
    X(TOO_LONG, "token too long")                                                                  \
    X(FORMAT, "not three dot-separated parts")                                                     \
    X(BASE64, "invalid base64url")                                                                 \
    X(HEADER, "header is not a JSON object")                                                       \
    X(ALG, "algorithm not HS256")                                                                  \
    X(TYP, "typ not at+jwt")                                                                       \
    X(CRIT, "unsupported critical header")                                                         \
    X(SIGNATURE, "bad signature")                                                                  \
    X(PAYLOAD, "payload is not a JSON object")                                                     \
    X(CLAIMS, "claim missing or of the wrong type")                                                \
    X(ISSUER, "wrong issuer")                                                                      \
    X(AUDIENCE, "wrong audience")                                                                  \
    X(EXPIRED, "token expired")                                                                    \
    X(NOT_YET_VALID, "token not yet valid")                                                        \
    X(INTERNAL, "internal error")

enum jwt_error {
#define JWT_ERROR_ENUM(name, msg) JWT_##name,
    JWT_ERROR_MAP(JWT_ERROR_ENUM)
#undef JWT_ERROR_ENUM
};

/* A short English message for logs; never NULL. */
const char *jwt_strerror(enum jwt_error e);

/* Who the token is about; plain buffers, so no allocation and no freeing. */
struct jwt_claims {
    char sub[JWT_ID_MAX + 1];    /* user id */
    char org[JWT_ID_MAX + 1];    /* org id */
    char role[JWT_ROLE_MAX + 1]; /* "admin" | "member" (not checked here) */
    char jti[JWT_ID_MAX + 1];    /* token id */
    int64_t ver;                 /* token version */
    int64_t iat, nbf, exp;       /* seconds since the Unix epoch */
};

/* Secret, issuer and audience. Immutable once made: one key may be shared
 * by every loop thread. */
struct jwt_key;

/*
 * Makes a key. Copies secret (secret_len >= JWT_SECRET_MIN bytes), issuer
 * and audience (non-empty, at most 255 bytes each). NULL when an argument
 * is out of range or OpenSSL lacks HMAC. Free with jwt_key_free.
 */
struct jwt_key *jwt_key_new(const void *secret, size_t secret_len, const char *issuer,
                            const char *audience);

/* Wipes the secret and frees the key; NULL is fine. */
void jwt_key_free(struct jwt_key *key);

/*
 * Signs an access token for claims->sub, org, role and ver (each non-empty
 * and within the limits above; ver >= 0), valid from `now` for ttl_s > 0
 * seconds. Fills claims->iat, nbf, exp and a fresh jti. Writes the
 * NUL-terminated token to out (outlen >= JWT_SIGNED_MAX always suffices).
 * Returns the token length, or -1 (bad claims, small buffer, CSPRNG or
 * HMAC failure).
 */
int jwt_sign(const struct jwt_key *key, struct jwt_claims *claims, int64_t now, int64_t ttl_s,
             char *out, size_t outlen);

/*
 * Verifies token (len bytes, need not be NUL-terminated) at time `now`
 * (seconds since the epoch). JWT_OK fills *claims; any other answer leaves
 * *claims zeroed and says why.
 */
enum jwt_error jwt_verify(const struct jwt_key *key, const char *token, size_t len, int64_t now,
                          struct jwt_claims *claims);

#endif
