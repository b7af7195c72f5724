#ifndef TENANTD_AUTH_RATELIMIT_H
#define TENANTD_AUTH_RATELIMIT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Token buckets keyed by a string (a client IP, an email), "N per period"
 * (a minute unless said otherwise): a bucket holds at most N tokens and
 * gains N per period, so a burst of N is allowed and then one attempt every
 * period/N.
 *
 * The table has a fixed number of entries (memory is bounded whatever the
 * traffic): keys hash (keyed SHA-256, random seed per table, so clients
 * cannot aim at one slot) into 4-way sets; a new key takes an entry whose
 * bucket has refilled (it carries no information), else the least recently
 * used one of its set.
 *
 * No locks inside: callers share one table per process under their own
 * mutex (a client's connections spread over loops by SO_REUSEPORT, and a
 * table per loop would allow N x loops). Time comes from the caller, so
 * tests can drive it.
 */

struct ratelimit;

/* The answer for RateLimit-Limit / -Remaining / -Reset and Retry-After. */
struct ratelimit_result {
    bool allowed;
    uint32_t limit;         /* N */
    uint32_t remaining;     /* whole tokens left after this attempt */
    uint32_t reset_s;       /* seconds (rounded up) until the bucket is full again */
    uint32_t retry_after_s; /* when denied: seconds (rounded up, >= 1) until one token; else 0 */
};

/*
 * A table for `per_minute` (>= 1) attempts per key with room for about
 * `entries` keys (rounded up to a multiple of 4, at least 4). NULL on bad
 * arguments or out of memory. Free with ratelimit_free.
 */
struct ratelimit *ratelimit_new(uint32_t per_minute, size_t entries);

/* The longest period: 31 days. */
#define RATELIMIT_PERIOD_MAX_MS 2678400000u

/* The same for n attempts per period_ms (1 ms .. 31 days). */
struct ratelimit *ratelimit_new_period(uint32_t n, uint32_t period_ms, size_t entries);

/* Frees the table; NULL is fine. */
void ratelimit_free(struct ratelimit *rl);

/*
 * One attempt for key (len bytes) at now_ms (a monotonic clock in ms, e.g.
 * uv_now). Takes a token when one is there (allowed) and fills *out either
 * way. Returns out->allowed.
 */
bool ratelimit_take(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms,
                    struct ratelimit_result *out);

/* Forgets key (e.g. after a successful login for that email). */
void ratelimit_reset(struct ratelimit *rl, const char *key, size_t len);

/*
 * A table used as a set with expiry (make it with n = 1 and the period as
 * the lifetime): ratelimit_mark puts key in (its bucket emptied at now_ms),
 * ratelimit_marked tells whether key was marked less than a period ago and
 * not evicted since (eviction takes refilled, i.e. expired, entries first).
 */
void ratelimit_mark(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms);
bool ratelimit_marked(struct ratelimit *rl, const char *key, size_t len, uint64_t now_ms);

/*
 * The rate-limit key of a client address: IPv4 as is; IPv6 cut to its first
 * v6_prefix bits ("2001:db8::/64"), since one host usually holds a whole
 * /64 and could take a new address per attempt; an IPv4-mapped IPv6 address
 * as its IPv4. Returns ip itself or out.
 */
#define RATELIMIT_CLIENT_KEY_MAX 52
const char *ratelimit_client_key(const char *ip, unsigned v6_prefix,
                                 char out[RATELIMIT_CLIENT_KEY_MAX]);

#endif
