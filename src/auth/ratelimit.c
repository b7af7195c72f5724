#include "auth/ratelimit.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAYS 4

struct entry {
    unsigned char fp[16]; /* keyed-hash fingerprint of the key */
    bool used;
    uint64_t level;   /* units at `updated` */
    uint64_t updated; /* ms */
    uint64_t last_used;
};

/* Fixed point: one token is `unit` units (the period in ms) and a bucket
 * gains N units per ms, so N tokens per period need no division and no
 * floating point. */
struct ratelimit {
    uint32_t n;
    uint64_t unit; /* the period, ms */
    uint64_t cap;  /* n * unit */
    size_t nsets;
    struct entry *entries; /* nsets * WAYS */
    unsigned char seed[32];
    EVP_MD *sha256;
    EVP_MD_CTX *md; /* reused: a table belongs to one thread */
};

struct ratelimit *ratelimit_new(uint32_t per_minute, size_t entries)
{
    return ratelimit_new_period(per_minute, 60000, entries);
}

struct ratelimit *ratelimit_new_period(uint32_t n, uint32_t period_ms, size_t entries)
{
    if (n == 0 || n > 100000000u || period_ms == 0 || period_ms > RATELIMIT_PERIOD_MAX_MS ||
        entries > ((size_t)1 << 28))
        return NULL;
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    rl->n = n;
    rl->unit = period_ms;
    rl->cap = (uint64_t)n * period_ms;
    rl->nsets = entries / WAYS + (entries % WAYS != 0);
    if (rl->nsets == 0)
        rl->nsets = 1;
    rl->entries = calloc(rl->nsets * WAYS, sizeof *rl->entries);
    rl->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    rl->md = EVP_MD_CTX_new();
    if (!rl->entries || !rl->sha256 || !rl->md || RAND_bytes(rl->seed, sizeof rl->seed) != 1) {
        ratelimit_free(rl);
        return NULL;
    }
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
    EVP_MD_CTX_free(rl->md);
    EVP_MD_free(rl->sha256);
    free(rl->entries);
    OPENSSL_cleanse(rl->seed, sizeof rl->seed);
    free(rl);
}

/* Fingerprint of key and the index of its set. */
static size_t fingerprint(struct ratelimit *rl, const char *key, size_t len, unsigned char fp[16])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_DigestInit_ex(rl->md, rl->sha256, NULL) != 1 ||
        EVP_DigestUpdate(rl->md, rl->seed, sizeof rl->seed) != 1 ||
        EVP_DigestUpdate(rl->md, key, len) != 1 || EVP_DigestFinal_ex(rl->md, md, &mdlen) != 1)
        abort(); /* SHA-256 of memory cannot fail short of a broken OpenSSL */
    memcpy(fp, md, 16);
    uint64_t h = 0;
    for (int i = 16; i < 24; i++)
        h = h << 8 | md[i];
    return (size_t)(h % rl->nsets);
}

/* The bucket's level at now (refilled since its last update). */
static uint64_t level_at(const struct ratelimit *rl, const struct entry *e, uint64_t now)
{
    uint64_t elapsed = now > e->updated ? now - e->updated : 0;
    if (elapsed >= rl->unit) /* a full period refills any bucket */
        return rl->cap;
    uint64_t l = e->level + elapsed * rl->n;
    return l < rl->cap ? l : rl->cap;
}

static struct entry *find(struct ratelimit *rl, const char *key, size_t len, uint64_t now,
                          bool create)
{
    unsigned char fp[16];
    struct entry *set = rl->entries + fingerprint(rl, key, len, fp) * WAYS;
    struct entry *victim = NULL;
    for (int i = 0; i < WAYS; i++) {
        struct entry *e = &set[i];
        if (e->used && memcmp(e->fp, fp, sizeof fp) == 0)
            return e;
    }
    if (!create)
        return NULL;
    /* Prefer a free entry, then one whose bucket is full again (forgetting
     * it changes nothing), then the least recently used. */
    for (int i = 0; i < WAYS && !victim; i++)
        if (!set[i].used)
            victim = &set[i];
    for (int i = 0; i < WAYS && !victim; i++)
        if (level_at(rl, &set[i], now) >= rl->cap)
            victim = &set[i];
    if (!victim) {
        victim = &set[0];
        for (int i = 1; i < WAYS; i++)
            if (set[i].last_used < victim->last_used)
                victim = &set[i];
    }
    memcpy(victim->fp, fp, sizeof fp);
    victim->used = true;
    victim->level = rl->cap;
    victim->updated = now;
    victim->last_used = now;
    return victim;
}

static uint32_t ceil_div_s(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

bool ratelimit_take(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms,
                    struct ratelimit_result *out)
{
    struct entry *e = find(rl, key, len, now_ms, true);
    e->level = level_at(rl, e, now_ms);
    /* A clock that went back keeps the old `updated`, so no refill is
     * counted twice. */
    if (now_ms > e->updated)
        e->updated = now_ms;
    e->last_used = now_ms;

    out->limit = rl->n;
    out->allowed = e->level >= rl->unit;
    if (out->allowed)
        e->level -= rl->unit;
    out->remaining = (uint32_t)(e->level / rl->unit);
    out->reset_s = ceil_div_s((rl->cap - e->level + rl->n - 1) / rl->n);
    if (out->allowed) {
        out->retry_after_s = 0;
    } else {
        uint32_t s = ceil_div_s((rl->unit - e->level + rl->n - 1) / rl->n);
        out->retry_after_s = s ? s : 1;
    }
    return out->allowed;
}

void ratelimit_reset(struct ratelimit *rl, const char *key, size_t len)
{
    struct entry *e = find(rl, key, len, 0, false);
    if (e)
        memset(e, 0, sizeof *e);
}

void ratelimit_mark(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms)
{
    struct entry *e = find(rl, key, len, now_ms, true);
    e->level = 0;
    e->updated = now_ms;
    e->last_used = now_ms;
}

bool ratelimit_marked(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms)
{
    struct entry *e = find(rl, key, len, now_ms, false);
    return e && level_at(rl, e, now_ms) < rl->cap;
}

const char *ratelimit_client_key(const char *ip, unsigned v6_prefix,
                                 char out[RATELIMIT_CLIENT_KEY_MAX])
{
    unsigned char a[16];
    if (!ip || inet_pton(AF_INET6, ip, a) != 1)
        return ip ? ip : ""; /* IPv4 (or not an address): as is */
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, v4mapped, sizeof v4mapped) == 0) {
        snprintf(out, RATELIMIT_CLIENT_KEY_MAX, "%u.%u.%u.%u", a[12], a[13], a[14], a[15]);
        return out;
    }
    if (v6_prefix > 128)
        v6_prefix = 128;
    for (unsigned bit = v6_prefix; bit < 128; bit++)
        a[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    char txt[INET6_ADDRSTRLEN];
    if (!inet_ntop(AF_INET6, a, txt, sizeof txt))
        return ip;
    snprintf(out, RATELIMIT_CLIENT_KEY_MAX, "%s/%u", txt, v6_prefix);
    return out;
}
