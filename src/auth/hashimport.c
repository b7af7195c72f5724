/*
 * Imported password hashes: recognising them (hash_kind_of, for the import
 * routes' 422s) and verifying the non-argon2 ones (on password threads,
 * from auth/passhash.c). No hashing algorithm is written here: bcrypt is
 * libxcrypt's crypt_r, PBKDF2 is OpenSSL's.
 */
#include "auth/hashimport.h"

#include <crypt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/password.h"

#define BCRYPT_LEN 60 /* $2b$NN$ + 22 salt + 31 hash characters */
#define DJANGO_PREFIX "pbkdf2_sha256$"
#define DJANGO_DKLEN 32
#define DJANGO_B64_LEN 44 /* base64 of 32 bytes, with its one '=' */
#define DJANGO_SALT_MAX 128

/* Imported argon2id hashes stay within these (stricter than what
 * passhash.c can verify, so that an import cannot make each login of its
 * users take a GiB). */
#define IMPORT_ARGON2_M_MAX (256u * 1024u)
#define IMPORT_ARGON2_T_MAX 16u
#define IMPORT_ARGON2_P_MAX 16u

static bool bcrypt_b64(char c)
{
    return c == '.' || c == '/' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9');
}

static bool is_bcrypt(const char *h)
{
    if (strlen(h) != BCRYPT_LEN || h[0] != '$' || h[1] != '2' ||
        (h[2] != 'a' && h[2] != 'b' && h[2] != 'y') || h[3] != '$')
        return false;
    if (h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9' || h[6] != '$')
        return false;
    int cost = (h[4] - '0') * 10 + (h[5] - '0');
    if (cost < 4 || cost > HASH_BCRYPT_MAX_COST)
        return false;
    for (int i = 7; i < BCRYPT_LEN; i++)
        if (!bcrypt_b64(h[i]))
            return false;
    return true;
}

struct django {
    unsigned long iterations;
    const char *salt;
    size_t salt_len;
    const char *b64; /* DJANGO_B64_LEN characters */
};

static bool std_b64(char c)
{
    return c == '+' || c == '/' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9');
}

static bool parse_django(const char *h, struct django *d)
{
    size_t plen = sizeof DJANGO_PREFIX - 1;
    if (strncmp(h, DJANGO_PREFIX, plen) != 0)
        return false;
    const char *p = h + plen;
    if (*p < '1' || *p > '9')
        return false;
    unsigned long it = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        it = it * 10 + (unsigned long)(*p - '0');
        if (it > HASH_PBKDF2_MAX_ITERATIONS)
            return false;
    }
    if (*p++ != '$')
        return false;
    const char *salt = p, *dollar = strchr(p, '$');
    if (!dollar || dollar == salt || (size_t)(dollar - salt) > DJANGO_SALT_MAX)
        return false;
    for (const char *s = salt; s < dollar; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return false;
    const char *b = dollar + 1;
    if (strlen(b) != DJANGO_B64_LEN || b[DJANGO_B64_LEN - 1] != '=')
        return false;
    for (int i = 0; i < DJANGO_B64_LEN - 1; i++)
        if (!std_b64(b[i]))
            return false;
    *d = (struct django){it, salt, (size_t)(dollar - salt), b};
    return true;
}

enum hash_kind hash_kind_of(const char *hash)
{
    if (!hash)
        return HASH_UNKNOWN;
    struct password_params p;
    if (password_phc_params(hash, &p) == 0)
        return p.m_kib >= 8 * p.p && p.m_kib <= IMPORT_ARGON2_M_MAX && p.t >= 1 &&
                       p.t <= IMPORT_ARGON2_T_MAX && p.p >= 1 && p.p <= IMPORT_ARGON2_P_MAX
                   ? HASH_ARGON2ID
                   : HASH_UNKNOWN;
    if (is_bcrypt(hash))
        return HASH_BCRYPT;
    struct django d;
    if (parse_django(hash, &d))
        return HASH_DJANGO_PBKDF2_SHA256;
    return HASH_UNKNOWN;
}

static int verify_bcrypt(const char *hash, const char *pw, size_t len, bool *ok)
{
    /* crypt takes a C string: a password with a NUL never matches. */
    char *z = malloc(len + 1);
    struct crypt_data *cd = calloc(1, sizeof *cd); /* ~32 KiB: not on a thread's stack */
    int rc = -1;
    if (z && cd) {
        memcpy(z, pw, len);
        z[len] = '\0';
        const char *out = crypt_r(z, hash, cd);
        if (out && out[0] != '*' && strlen(out) == BCRYPT_LEN) {
            *ok = memchr(pw, '\0', len) == NULL && CRYPTO_memcmp(out, hash, BCRYPT_LEN) == 0;
            rc = 0;
        }
    }
    if (z) {
        OPENSSL_cleanse(z, len);
        free(z);
    }
    if (cd) {
        OPENSSL_cleanse(cd, sizeof *cd);
        free(cd);
    }
    return rc;
}

static int verify_django(const char *hash, const char *pw, size_t len, bool *ok)
{
    struct django d;
    if (!parse_django(hash, &d))
        return -1;
    unsigned char dk[DJANGO_DKLEN];
    unsigned char b64[DJANGO_B64_LEN + 1];
    if (PKCS5_PBKDF2_HMAC(pw, (int)len, (const unsigned char *)d.salt, (int)d.salt_len,
                          (int)d.iterations, EVP_sha256(), DJANGO_DKLEN, dk) != 1)
        return -1;
    int n = EVP_EncodeBlock(b64, dk, DJANGO_DKLEN);
    OPENSSL_cleanse(dk, sizeof dk);
    if (n != DJANGO_B64_LEN)
        return -1;
    *ok = CRYPTO_memcmp(b64, d.b64, DJANGO_B64_LEN) == 0;
    return 0;
}

int hash_legacy_verify(const char *hash, const char *pw, size_t len, bool *ok)
{
    *ok = false;
    switch (hash_kind_of(hash)) {
    case HASH_BCRYPT:
        return verify_bcrypt(hash, pw, len, ok);
    case HASH_DJANGO_PBKDF2_SHA256:
        return verify_django(hash, pw, len, ok);
    default:
        return -1;
    }
}
