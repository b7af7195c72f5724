#include "auth/tokens.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char base62_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
static const char base36_alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";

#define REFRESH_RANDOM_BYTES 32
#define API_KEY_SECRET_LEN 43

int token_random_b64url(size_t nbytes, char *out, size_t outlen)
{
    unsigned char buf[256];
    if (nbytes == 0 || nbytes > sizeof buf || outlen < TOKEN_B64URL_LEN(nbytes) + 1)
        return -1;
    if (RAND_bytes(buf, (int)nbytes) != 1)
        return -1;
    int n = token_b64url_encode(buf, nbytes, out, outlen);
    OPENSSL_cleanse(buf, sizeof buf);
    return n;
}

/* n chars drawn uniformly from alphabet (size k <= 256) by rejection
 * sampling, so no character is more likely than another. */
static int random_chars(char *out, size_t n, const char *alphabet, unsigned k)
{
    unsigned limit = 256 - 256 % k;
    unsigned char buf[64];
    size_t o = 0;
    while (o < n) {
        if (RAND_bytes(buf, sizeof buf) != 1)
            return -1;
        for (size_t i = 0; i < sizeof buf && o < n; i++)
            if (buf[i] < limit)
                out[o++] = alphabet[buf[i] % k];
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return 0;
}

int token_refresh_new(char out[TOKEN_REFRESH_BUFSZ])
{
    memcpy(out, TOKEN_REFRESH_PREFIX, 4);
    if (token_random_b64url(REFRESH_RANDOM_BYTES, out + 4, TOKEN_REFRESH_BUFSZ - 4) != 43) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

bool token_refresh_valid(const char *s, size_t len)
{
    unsigned char buf[REFRESH_RANDOM_BYTES];
    if (len != TOKEN_REFRESH_LEN || memcmp(s, TOKEN_REFRESH_PREFIX, 4) != 0)
        return false;
    return token_b64url_decode(s + 4, len - 4, buf, sizeof buf) == REFRESH_RANDOM_BYTES;
}

int token_api_key_new(char key[TOKEN_API_KEY_BUFSZ], char prefix[TOKEN_API_KEY_PREFIX_LEN + 1])
{
    char *p = key;
    memcpy(p, TOKEN_API_KEY_PREFIX, 4);
    p += 4;
    if (random_chars(p, TOKEN_API_KEY_PREFIX_LEN, base36_alphabet, 36) != 0)
        goto fail;
    p += TOKEN_API_KEY_PREFIX_LEN;
    *p++ = '_';
    if (random_chars(p, API_KEY_SECRET_LEN, base62_alphabet, 62) != 0)
        goto fail;
    p += API_KEY_SECRET_LEN;
    *p = '\0';
    memcpy(prefix, key + 4, TOKEN_API_KEY_PREFIX_LEN);
    prefix[TOKEN_API_KEY_PREFIX_LEN] = '\0';
    return 0;
fail:
    OPENSSL_cleanse(key, TOKEN_API_KEY_BUFSZ);
    key[0] = '\0';
    prefix[0] = '\0';
    return -1;
}

static bool is_base36(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_base62(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int token_api_key_parse(const char *s, size_t len, char prefix[TOKEN_API_KEY_PREFIX_LEN + 1])
{
    prefix[0] = '\0';
    if (!s || len != TOKEN_API_KEY_LEN || memcmp(s, TOKEN_API_KEY_PREFIX, 4) != 0)
        return -1;
    for (size_t i = 4; i < 4 + TOKEN_API_KEY_PREFIX_LEN; i++)
        if (!is_base36((unsigned char)s[i]))
            return -1;
    if (s[4 + TOKEN_API_KEY_PREFIX_LEN] != '_')
        return -1;
    for (size_t i = 5 + TOKEN_API_KEY_PREFIX_LEN; i < len; i++)
        if (!is_base62((unsigned char)s[i]))
            return -1;
    memcpy(prefix, s + 4, TOKEN_API_KEY_PREFIX_LEN);
    prefix[TOKEN_API_KEY_PREFIX_LEN] = '\0';
    return 0;
}

bool token_is_api_key(const char *s, size_t len)
{
    return s && len >= 4 && memcmp(s, TOKEN_API_KEY_PREFIX, 4) == 0;
}

static bool is_b64token(unsigned char c)
{
    return is_base62(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

const char *token_bearer(const char *header, size_t *len)
{
    *len = 0;
    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return NULL;
    const char *p = header + 7;
    while (*p == ' ')
        p++;
    const char *start = p;
    while (is_b64token((unsigned char)*p))
        p++;
    if (p == start)
        return NULL;
    while (*p == '=')
        p++;
    if (*p != '\0')
        return NULL;
    *len = (size_t)(p - start);
    return start;
}

void token_sha256_hex(const void *data, size_t len, char out[TOKEN_SHA256_HEX_BUFSZ])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    unsigned int mdlen = 0;
    /* SHA-256 on a valid buffer cannot fail short of a broken OpenSSL. */
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        abort();
    for (size_t i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

bool token_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen)
        return false;
    if (alen == 0)
        return true;
    return CRYPTO_memcmp(a, b, alen) == 0;
}

int token_uuid_v4(char out[TOKEN_UUID_BUFSZ])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1) {
        out[0] = '\0';
        return -1;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx */
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
    return 0;
}

bool token_uuid_valid(const char *s, size_t len)
{
    if (!s || len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}
