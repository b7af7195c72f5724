#ifndef TENANTD_AUTH_TOKENS_H
#define TENANTD_AUTH_TOKENS_H
#include <stdbool.h>
#include <stddef.h>

#include "core/b64url.h"

/*
 * Opaque credentials and the small crypto helpers around them: random
 * tokens (OpenSSL RAND_bytes), refresh tokens, API keys, SHA-256 hex,
 * constant-time equality, UUID v4, strict base64url. Pure functions, safe
 * to call from any thread.
 *
 * Formats:
 *   refresh token  "tdr_" + 43 base64url chars (32 random bytes)       47 chars
 *   API key        "tdk_" + 8 chars [a-z0-9] (prefix, stored in clear)
 *                  + "_" + 43 chars [A-Za-z0-9] (secret, ~256 bits)    56 chars
 * Both are stored server-side only as token_sha256_hex() of the whole string.
 * API keys use base62 rather than base64url so that a double-click selects
 * the whole key in a terminal or browser.
 */

#define TOKEN_REFRESH_PREFIX "tdr_"
#define TOKEN_REFRESH_LEN 47
#define TOKEN_REFRESH_BUFSZ (TOKEN_REFRESH_LEN + 1)

#define TOKEN_API_KEY_PREFIX "tdk_"
#define TOKEN_API_KEY_PREFIX_LEN 8 /* the part after "tdk_", kept in clear for lookup */
#define TOKEN_API_KEY_LEN 56
#define TOKEN_API_KEY_BUFSZ (TOKEN_API_KEY_LEN + 1)

#define TOKEN_SHA256_HEX_BUFSZ 65 /* 64 hex digits + NUL */
#define TOKEN_UUID_BUFSZ 37       /* 36 chars + NUL */

/* base64url is core's (core/b64url.h); these names stay for the token code. */
#define TOKEN_B64URL_LEN(n) B64URL_LEN(n)

static inline int token_b64url_encode(const void *data, size_t n, char *out, size_t outlen)
{
    return b64url_encode(data, n, out, outlen);
}

static inline int token_b64url_decode(const char *in, size_t len, unsigned char *out,
                                      size_t outlen)
{
    return b64url_decode(in, len, out, outlen);
}

/*
 * nbytes random bytes from the CSPRNG, base64url-encoded into out.
 * Returns the text length, or -1 if outlen is too small or RAND_bytes fails.
 */
int token_random_b64url(size_t nbytes, char *out, size_t outlen);

/* A new refresh token into out. 0, or -1 if the CSPRNG fails. */
int token_refresh_new(char out[TOKEN_REFRESH_BUFSZ]);

/* True when s (len bytes) has exactly the refresh token format. Check
 * before any database lookup; a false answer is a plain 401. */
bool token_refresh_valid(const char *s, size_t len);

/*
 * A new API key into key, and its 8-char lookup prefix (the part after
 * "tdk_", NUL-terminated) into prefix. 0, or -1 if the CSPRNG fails.
 */
int token_api_key_new(char key[TOKEN_API_KEY_BUFSZ], char prefix[TOKEN_API_KEY_PREFIX_LEN + 1]);

/*
 * Strictly checks an API key string (exact length, "tdk_", prefix chars,
 * '_', secret chars) and copies its lookup prefix into prefix. 0, or -1 for
 * anything malformed (prefix is then an empty string).
 */
int token_api_key_parse(const char *s, size_t len, char prefix[TOKEN_API_KEY_PREFIX_LEN + 1]);

/* True when s (len bytes) starts like an API key ("tdk_"), to tell an API
 * key from a JWT in an Authorization header. Says nothing about validity. */
bool token_is_api_key(const char *s, size_t len);

/*
 * The credential of an Authorization header value "Bearer <token>" (RFC
 * 6750: scheme case-insensitive, one or more spaces, then a b64token:
 * [A-Za-z0-9-._~+/]+ followed by optional '='). Returns a pointer into
 * header and its length in *len, or NULL for any other scheme or syntax.
 */
const char *token_bearer(const char *header, size_t *len);

/* SHA-256 of data as 64 lowercase hex digits (NUL-terminated). */
void token_sha256_hex(const void *data, size_t len, char out[TOKEN_SHA256_HEX_BUFSZ]);

/*
 * Constant-time equality (CRYPTO_memcmp) of two byte strings. Strings of
 * different lengths are unequal at once: only the length leaks, which is
 * public for every fixed-format secret we compare (hashes, tokens).
 */
bool token_equal(const void *a, size_t alen, const void *b, size_t blen);

/* A random (version 4, RFC 9562) UUID, lowercase, into out. 0, or -1 if the
 * CSPRNG fails. */
int token_uuid_v4(char out[TOKEN_UUID_BUFSZ]);

/* True when s (len bytes) is a UUID in canonical 8-4-4-4-12 hex form
 * (either case); for path parameters before they reach SQL. */
bool token_uuid_valid(const char *s, size_t len);

#endif
