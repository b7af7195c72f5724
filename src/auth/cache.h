#ifndef TENANTD_AUTH_CACHE_H
#define TENANTD_AUTH_CACHE_H
/*
 * Private to src/auth: the process-wide cache of what authentication needs
 * per request (org status/schema/slug, a user's role and token version, an
 * API key's hash and role), shared by every loop behind a rwlock, kept
 * current by a LISTEN tenantd_cache thread (the database's triggers send
 * "org:<id>", "user:<id>", "key:<prefix>"), with a TTL as a safety net.
 *
 * Filling after a database load races with invalidations: take
 * cache_epoch() BEFORE the query and pass it to cache_put_*; the put is
 * dropped when anything was invalidated meanwhile, so a stale row never
 * outlives the notification that should have removed it. While the
 * listener is not connected (start-up, database lost) every lookup
 * misses and puts are dropped: correctness over speed.
 */
#include <stdbool.h>
#include <stdint.h>

#include "auth/auth.h"

#define CACHE_ID_LEN 36

enum cache_org_status { ORG_ACTIVE, ORG_SUSPENDED, ORG_DELETED };

struct cache_org {
    enum cache_org_status status;
    char schema[64]; /* "tenant_<32 hex>" */
    char slug[64];   /* at most 50 chars */
};

struct cache_user {
    char org_id[CACHE_ID_LEN + 1];
    enum auth_role role;
    int64_t token_version;
};

struct cache_key {
    char id[CACHE_ID_LEN + 1];
    char org_id[CACHE_ID_LEN + 1];
    enum auth_role role;
    char key_hash[65];
    bool revoked;
};

/* Starts the listener thread on its own connection (conninfo as for libpq).
 * 0, or -1 when the thread cannot start; a database that is down is not an
 * error (the thread retries with back-off). */
int cache_start(const char *conninfo);

/* Stops and joins the listener, frees every entry. Harmless when not started. */
void cache_stop(void);

/* The invalidation counter to read before a load (see above). */
uint64_t cache_epoch(void);

/* Lookups copy the entry into *out; false on a miss or an expired entry. */
bool cache_get_org(const char *org_id, struct cache_org *out);
bool cache_get_user(const char *user_id, struct cache_user *out);
bool cache_get_key(const char *prefix, struct cache_key *out);

/* Fills from a load that started at `epoch`. */
void cache_put_org(const char *org_id, const struct cache_org *o, uint64_t epoch);
void cache_put_user(const char *user_id, const struct cache_user *u, uint64_t epoch);
void cache_put_key(const char *prefix, const struct cache_key *k, uint64_t epoch);

/* Drops one entry by its notification payload ("org:<id>", ...). */
void cache_invalidate(const char *payload);

/* Unit tests only: serve and fill without a listener. */
void cache_set_live_for_test(bool live);

#endif
