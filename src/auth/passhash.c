/*
 * argon2id and the PHC strings of the password pool (password.h): parsing
 * and comparing parameters, hashing with a fresh salt, one verification
 * (imported legacy hashes through hashimport.c). Pure computation, apart
 * from the pool's threads and queues (password.c) so that it reads and
 * tests on its own.
 */
#include <argon2.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "auth/hashimport.h"
#include "auth/password_internal.h"

#define SALT_LEN 16
#define HASH_LEN 32
/* Upper bounds for configured and stored parameters, so that a corrupt or
 * hostile PHC in the database cannot make one verify eat gigabytes. */
#define MAX_M_KIB (1024u * 1024u) /* 1 GiB */
#define MAX_T 64u
#define MAX_P 64u

bool password_length_ok(size_t len)
{
    return len >= PASSWORD_MIN_LEN && len <= PASSWORD_MAX_LEN;
}

bool pw_params_ok(struct password_params p)
{
    return p.t >= 1 && p.t <= MAX_T && p.p >= 1 && p.p <= MAX_P && p.m_kib <= MAX_M_KIB &&
           p.m_kib >= 8 * p.p; /* argon2's own floor: 8 KiB per lane */
}

/* Parses a decimal uint32 without sign or leading zeros; advances *s. */
static bool parse_u32(const char **s, uint32_t *out)
{
    const char *p = *s;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return false;
        p++;
    }
    *out = (uint32_t)v;
    *s = p;
    return true;
}

static bool expect(const char **s, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0)
        return false;
    *s += n;
    return true;
}

/* A non-empty run of standard base64 chars (argon2 encodes without '='). */
static bool b64_run(const char **s)
{
    const char *p = *s;
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
           *p == '+' || *p == '/')
        p++;
    if (p == *s)
        return false;
    *s = p;
    return true;
}

int password_phc_params(const char *phc, struct password_params *out)
{
    struct password_params p;
    const char *s = phc;
    if (!s || !expect(&s, "$argon2id$v=19$m=") || !parse_u32(&s, &p.m_kib) || !expect(&s, ",t=") ||
        !parse_u32(&s, &p.t) || !expect(&s, ",p=") || !parse_u32(&s, &p.p) || !expect(&s, "$") ||
        !b64_run(&s) || !expect(&s, "$") || !b64_run(&s) || *s != '\0')
        return -1;
    *out = p;
    return 0;
}

bool password_needs_rehash(const char *phc, struct password_params want)
{
    struct password_params have;
    if (password_phc_params(phc, &have) != 0)
        return true;
    return have.m_kib < want.m_kib || have.t < want.t || have.p < want.p;
}

char *pw_hash_phc(const char *pw, size_t len, struct password_params p)
{
    unsigned char salt[SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return NULL;
    size_t enclen = argon2_encodedlen(p.t, p.m_kib, p.p, SALT_LEN, HASH_LEN, Argon2_id);
    char *enc = malloc(enclen);
    if (!enc)
        return NULL;
    int rc =
        argon2id_hash_encoded(p.t, p.m_kib, p.p, pw, len, salt, SALT_LEN, HASH_LEN, enc, enclen);
    if (rc != ARGON2_OK) {
        free(enc);
        return NULL;
    }
    return enc;
}

void pw_compute(struct run *r, struct password_params params, const char *dummy_phc)
{
    const struct input *in = r->in;
    if (in->kind == JOB_HASH) {
        r->out_phc = pw_hash_phc(in->pw, in->pwlen, params);
        r->status = r->out_phc ? PASSWORD_OK : PASSWORD_EHASH;
    } else if (!in->dummy && hash_is_legacy(in->phc)) {
        /* An imported bcrypt/PBKDF2 hash (auth/hashimport.c). The dummy
         * argon2id check after it keeps a wrong password for a migrated
         * user from answering faster than one for anyone else. A match
         * is re-hashed to argon2id by the caller (needs_rehash). */
        bool ok = false;
        int rc = hash_legacy_verify(in->phc, in->pw, in->pwlen, &ok);
        (void)argon2id_verify(dummy_phc, in->pw, in->pwlen);
        r->status = rc == 0 ? PASSWORD_OK : PASSWORD_EHASH;
        r->ok = rc == 0 && ok;
        r->needs_rehash = r->ok;
    } else {
        const char *phc = in->dummy ? dummy_phc : in->phc;
        struct password_params have;
        if (password_phc_params(phc, &have) != 0 || !pw_params_ok(have)) {
            r->status = PASSWORD_EHASH;
        } else {
            int rc = argon2id_verify(phc, in->pw, in->pwlen);
            if (rc == ARGON2_OK || rc == ARGON2_VERIFY_MISMATCH) {
                r->status = PASSWORD_OK;
                r->ok = rc == ARGON2_OK && !in->dummy;
                r->needs_rehash = r->ok && password_needs_rehash(phc, params);
            } else {
                r->status = PASSWORD_EHASH;
            }
        }
    }
}
