#ifndef TENANTD_AUTH_HASHIMPORT_H
#define TENANTD_AUTH_HASHIMPORT_H
#include <stdbool.h>
#include <stddef.h>

/*
 * Password hashes imported from other systems (POST /v1/users/import and
 * the operator's org import), verified as they are until the user's next
 * successful login replaces them with argon2id:
 *   bcrypt              $2a$ / $2b$ / $2y$, cost 04..16 (libxcrypt's crypt_r)
 *   Django PBKDF2-SHA256 pbkdf2_sha256$<iterations>$<salt>$<base64 of 32 bytes>
 * argon2id PHC strings are tenantd's own and handled by auth/passhash.c.
 */
enum hash_kind {
    HASH_UNKNOWN = 0,
    HASH_ARGON2ID, /* an argon2id PHC string whose parameters tenantd can verify */
    HASH_BCRYPT,
    HASH_DJANGO_PBKDF2_SHA256,
};

/* The costs we accept (a few seconds per check at most): a hash that costs
 * more would tie up a password thread at every login attempt. */
#define HASH_PBKDF2_MAX_ITERATIONS 10000000u
#define HASH_BCRYPT_MAX_COST 16

/* The kind of a stored or imported hash, after checking its whole form;
 * HASH_UNKNOWN for anything else (including argon2 variants other than
 * argon2id and parameters beyond the pool's limits). */
enum hash_kind hash_kind_of(const char *hash);

/* True for the kinds hash_legacy_verify takes (bcrypt, Django PBKDF2). */
static inline bool hash_is_legacy(const char *hash)
{
    enum hash_kind k = hash_kind_of(hash);
    return k == HASH_BCRYPT || k == HASH_DJANGO_PBKDF2_SHA256;
}

/*
 * Verifies pw (len bytes) against a HASH_BCRYPT or HASH_DJANGO_PBKDF2_SHA256
 * hash, comparing in constant time. 0 with *ok set, or -1 when the hash is
 * not of those kinds or the computation failed. Blocking (a bcrypt of cost
 * 12 takes ~0.25 s): call on a password thread only.
 */
int hash_legacy_verify(const char *hash, const char *pw, size_t len, bool *ok);

#endif
