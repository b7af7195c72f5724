#ifndef TENANTD_CORE_B64URL_H
#define TENANTD_CORE_B64URL_H
#include <stddef.h>

/*
 * The one base64url codec (RFC 4648 §5, unpadded) of the tree: tokens, JWT
 * parts, OIDC values and list cursors all use it. Pure functions.
 */

/* Length of the unpadded base64url text for n bytes (without the NUL). */
#define B64URL_LEN(n) (((n) / 3) * 4 + (((n) % 3) ? ((n) % 3) + 1 : 0))

/*
 * Encodes n bytes as unpadded base64url into out (NUL-terminated).
 * Returns the text length, or -1 when outlen < B64URL_LEN(n) + 1.
 */
int b64url_encode(const void *data, size_t n, char *out, size_t outlen);

/*
 * Strict unpadded base64url decoding: rejects '=', '+', '/', whitespace,
 * any other byte outside [A-Za-z0-9_-], a length of 1 mod 4, and
 * non-canonical text (unused low bits of the last char not zero), so each
 * byte string has exactly one accepted encoding. Returns the decoded
 * length, or -1 on bad input or when out (outlen bytes) is too small.
 */
int b64url_decode(const char *in, size_t len, unsigned char *out, size_t outlen);

#endif
