/*
 * Rate limits shared by every tenantd on one database (README "Rate
 * limits"; control migration 0012): n instances together allow the
 * configured budget, not n budgets.
 *
 * Each limit is a token bucket per (limit, key) row in public.rate_limits,
 * taken from by public.tenantd_rate_take: one INSERT .. ON CONFLICT DO
 * UPDATE on an UNLOGGED table, timed by the database's clock. Why a bucket
 * in PostgreSQL with local leases, and not the alternatives:
 *  - Deciding locally and flushing counts later (or per-instance shares of
 *    the budget) lets a client that alternates between instances through a
 *    load balancer get about n budgets before the flushes catch up, or
 *    only 1/n of one when it sticks to one instance. A take in the
 *    database is exact.
 *  - A counter per (key, window) pipelined with the request's own query
 *    would still run the request's work before knowing the answer (a login
 *    lookup is cheap, but the limit exists to refuse before argon2), and
 *    fixed windows allow 2 x budget across a window edge.
 *  - The round trip is cheap where limits are tight (login, signup,
 *    password change: ~0.2 ms next to ~20 ms of argon2), and avoidable
 *    where traffic is heavy: the per-org limit covers every authenticated
 *    request, so an instance takes a *lease* of several tokens at once
 *    and spends them locally (no round trip) until they run out or are a
 *    second old. A lease starts at 1 token and doubles while it runs out
 *    within its second, up to 1/64 of the budget, so a quiet org strands
 *    nothing and a busy one pays one round trip per batch. Unused tokens of
 *    an expired lease are dropped: leases can only under-admit (by at most
 *    instances x budget/64 a second), never let more through than the
 *    budget. Likewise an org over its budget does not cost a round trip per
 *    refused request: the database's refusal says when the next token can
 *    exist at the earliest (instances only take tokens), and until then the
 *    instance refuses locally.
 * When the database cannot answer (DB_UNAVAILABLE, an error) the take falls
 * back to the process's own buckets (auth.c), the limit of one instance, so
 * a database hiccup neither opens the gate nor refuses everything.
 */
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/dbhttp.h"
#include "auth/internal.h"
#include "core/config.h"
#include "core/log.h"

#define LEASE_MS 1000
#define LEASE_SETS 1024
#define LEASE_WAYS 4
#define SWEEP_EVERY_MS 60000
#define SWEEP_MAX "10000"
#define KNOWN_PATH_MS "2592000000" /* 30 days, as auth.c's KNOWN_PATH_MS */
#define KEY_HEX_BUFSZ (2 + 64 + 1) /* "\x" + SHA-256 in hex */

static const char *const limit_names[LIMIT_KINDS] = {
    [LIMIT_LOGIN_IP] = "login_ip",
    [LIMIT_LOGIN_KEY] = "login_key",
    [LIMIT_SIGNUP] = "signup",
    [LIMIT_ORG] = "org",
};

static const struct db_stmt take_stmt = {
    "rate_take", "SELECT granted, level FROM public.tenantd_rate_take($1, $2, $3, $4, $5)"};
static const struct db_stmt login_stmt = {
    "rate_login_take",
    "SELECT granted, level, refused FROM public.tenantd_login_take($1, $2, $3, $4, $5)"};
static const struct db_stmt succeeded_stmt = {
    "rate_login_succeeded", "SELECT public.tenantd_login_succeeded($1, $2, $3)"};
static const struct db_stmt sweep_stmt = {"rate_sweep", "SELECT public.tenantd_rate_sweep($1)"};

static atomic_ulong g_refused[LIMIT_KINDS];
static atomic_ulong g_fallbacks;
static atomic_ulong g_db_takes, g_lease_spends;
static atomic_uint_least64_t g_last_sweep_ms;
static atomic_uint_least64_t g_last_fallback_log_ms;

const char *limit_name(enum limit_kind kind)
{
    return kind < LIMIT_KINDS ? limit_names[kind] : "?";
}

unsigned long limit_refusals(enum limit_kind kind)
{
    return kind < LIMIT_KINDS ? atomic_load_explicit(&g_refused[kind], memory_order_relaxed) : 0;
}

void limit_take_counts(unsigned long *database, unsigned long *lease)
{
    *database = atomic_load_explicit(&g_db_takes, memory_order_relaxed);
    *lease = atomic_load_explicit(&g_lease_spends, memory_order_relaxed);
}

unsigned long limit_fallbacks(void)
{
    return atomic_load_explicit(&g_fallbacks, memory_order_relaxed);
}

/* Tokens and period of a limit; n = 0: the limit is off. */
static void limit_config(enum limit_kind kind, uint32_t *n, uint32_t *period_ms)
{
    *n = 0;
    *period_ms = 60000;
    if (!g_config)
        return;
    switch (kind) {
    case LIMIT_LOGIN_IP:
    case LIMIT_LOGIN_KEY:
        *n = (uint32_t)g_config->login_limit;
        break;
    case LIMIT_SIGNUP:
        *n = (uint32_t)g_config->signup_limit;
        *period_ms = 3600000u;
        break;
    case LIMIT_ORG:
        *n = (uint32_t)g_config->org_rate_limit;
        break;
    case LIMIT_KINDS:
        break;
    }
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static uint32_t ceil_s(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

/* The headers' numbers from a bucket's level (units; one token = period_ms)
 * plus `spare` tokens this instance holds. */
static void fill_result(struct ratelimit_result *out, bool allowed, uint32_t n, uint32_t period,
                        uint64_t level, uint32_t spare)
{
    uint64_t cap = (uint64_t)n * period;
    if (level > cap)
        level = cap;
    out->allowed = allowed;
    out->limit = n;
    uint64_t rem = level / period + spare;
    out->remaining = rem > n ? n : (uint32_t)rem;
    out->reset_s = ceil_s((cap - level + n - 1) / n);
    out->retry_after_s = 0;
    if (!allowed) {
        uint32_t s = ceil_s((period - (level < period ? level : period) + n - 1) / n);
        out->retry_after_s = s ? s : 1;
    }
}

/* "\x" + hex SHA-256 of a b (b may be NULL), the bytea literal of a key. */
static void key_hex(const char *a, size_t alen, const char *b, size_t blen,
                    char out[KEY_HEX_BUFSZ])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(c, a, alen) != 1 ||
        (b && (EVP_DigestUpdate(c, "|", 1) != 1 || EVP_DigestUpdate(c, b, blen) != 1)) ||
        EVP_DigestFinal_ex(c, md, &mdlen) != 1)
        abort(); /* SHA-256 of memory cannot fail short of a broken OpenSSL */
    EVP_MD_CTX_free(c);
    static const char hex[] = "0123456789abcdef";
    out[0] = '\\';
    out[1] = 'x';
    for (int i = 0; i < 32; i++) {
        out[2 + 2 * i] = hex[md[i] >> 4];
        out[3 + 2 * i] = hex[md[i] & 15];
    }
    out[KEY_HEX_BUFSZ - 1] = '\0';
}

/* ---- leases of the per-org limit ---- */

struct lease {
    unsigned char fp[16];
    bool used;
    uint32_t tokens;     /* left to spend locally */
    uint32_t batch;      /* size of the next lease to ask for */
    uint64_t expires_ms; /* tokens are dropped after */
    uint64_t denied_until_ms; /* the bucket was empty: no token can exist before */
    uint64_t level;      /* the bucket's level when the lease was taken */
    uint64_t last_used;
};

static struct {
    uv_once_t once;
    uv_mutex_t mu;
    struct lease sets[LEASE_SETS][LEASE_WAYS];
} g_leases = {.once = UV_ONCE_INIT};

static void leases_init(void)
{
    if (uv_mutex_init(&g_leases.mu) != 0)
        abort();
}

/* The lease of key hex (its first bytes pick the set), made when create;
 * under the mutex. */
static struct lease *lease_find(const char *hex, uint64_t now, bool create)
{
    unsigned char fp[16];
    memcpy(fp, hex + 2, sizeof fp); /* hex digits of a SHA-256: uniform enough */
    unsigned set = 0;
    for (int i = 0; i < 6; i++)
        set = set * 16 + (unsigned)(hex[18 + i] <= '9' ? hex[18 + i] - '0' : hex[18 + i] - 'a' + 10);
    struct lease *s = g_leases.sets[set % LEASE_SETS], *victim = NULL;
    for (int i = 0; i < LEASE_WAYS; i++)
        if (s[i].used && memcmp(s[i].fp, fp, sizeof fp) == 0)
            return &s[i];
    if (!create)
        return NULL;
    for (int i = 0; i < LEASE_WAYS && !victim; i++)
        if (!s[i].used || (s[i].expires_ms <= now && s[i].denied_until_ms <= now))
            victim = &s[i];
    if (!victim) {
        victim = &s[0];
        for (int i = 1; i < LEASE_WAYS; i++)
            if (s[i].last_used < victim->last_used)
                victim = &s[i];
    }
    memset(victim, 0, sizeof *victim);
    memcpy(victim->fp, fp, sizeof fp);
    victim->used = true;
    victim->batch = 1;
    return victim;
}

/* Decides locally when it can: spends a leased token of key (true, with
 * out->allowed), or refuses while the database said the bucket stays empty
 * (true, out->allowed false: instances only take tokens, so none can appear
 * before the refill brings one). False: ask the database. */
static bool lease_spend(const char *hex, uint32_t n, uint32_t period,
                        struct ratelimit_result *out)
{
    uint64_t now = now_ms();
    bool decided = false;
    uv_once(&g_leases.once, leases_init);
    uv_mutex_lock(&g_leases.mu);
    struct lease *l = lease_find(hex, now, false);
    if (l && l->tokens > 0 && now < l->expires_ms) {
        l->tokens--;
        l->last_used = now;
        fill_result(out, true, n, period, l->level, l->tokens);
        decided = true;
    } else if (l && now < l->denied_until_ms) {
        l->last_used = now;
        /* The level as it has refilled since the refusal. */
        uint64_t waited = l->denied_until_ms - now;
        uint64_t need = waited * n;
        fill_result(out, false, n, period, need < period ? period - need : 0, 0);
        decided = true;
    }
    uv_mutex_unlock(&g_leases.mu);
    return decided;
}

/* How many tokens to ask for: the lease's batch, which doubles when the
 * last lease ran out before its end and halves when it expired unused. */
static uint32_t lease_want(const char *hex, uint32_t n)
{
    uint32_t max = n / 64 ? n / 64 : 1;
    uint64_t now = now_ms();
    uv_once(&g_leases.once, leases_init);
    uv_mutex_lock(&g_leases.mu);
    struct lease *l = lease_find(hex, now, true);
    if (l->expires_ms) {
        if (now < l->expires_ms && l->tokens == 0)
            l->batch = l->batch * 2 > max ? max : l->batch * 2;
        else if (now >= l->expires_ms && l->tokens > 0)
            l->batch = l->batch / 2 ? l->batch / 2 : 1;
    }
    if (l->batch > max)
        l->batch = max;
    uint32_t want = l->batch;
    uv_mutex_unlock(&g_leases.mu);
    return want;
}

/* The database refused: remember until when the bucket stays empty. */
static void lease_deny(const char *hex, uint32_t n, uint32_t period, uint64_t level)
{
    uint64_t now = now_ms();
    uint64_t wait = level < period ? (period - level + n - 1) / n : 0;
    uv_once(&g_leases.once, leases_init);
    uv_mutex_lock(&g_leases.mu);
    struct lease *l = lease_find(hex, now, true);
    l->tokens = 0;
    l->denied_until_ms = now + wait;
    l->last_used = now;
    uv_mutex_unlock(&g_leases.mu);
}

static void lease_store(const char *hex, uint32_t spare, uint64_t level)
{
    uint64_t now = now_ms();
    uv_once(&g_leases.once, leases_init);
    uv_mutex_lock(&g_leases.mu);
    struct lease *l = lease_find(hex, now, true);
    l->tokens = spare;
    l->level = level;
    l->expires_ms = now + LEASE_MS;
    l->last_used = now;
    uv_mutex_unlock(&g_leases.mu);
}

/* ---- the take ---- */

struct take {
    struct request *req;
    enum limit_kind kind;
    uint32_t n, period;
    const char *what;
    limit_next next;
    void *ud;
    const char *key; /* in the arena: for the local fallback */
    const char *params[5];
    char hex[KEY_HEX_BUFSZ], path_hex[KEY_HEX_BUFSZ], client_hex[KEY_HEX_BUFSZ];
    char n_s[16], period_s[16], want_s[16];
};

static void refuse_as(struct take *t, enum limit_kind counted, const struct ratelimit_result *r)
{
    atomic_fetch_add_explicit(&g_refused[counted], 1, memory_order_relaxed);
    auth_ratelimit_refuse(t->req, r, t->what);
}

static void refuse(struct take *t, const struct ratelimit_result *r)
{
    atomic_fetch_add_explicit(&g_refused[t->kind], 1, memory_order_relaxed);
    auth_ratelimit_refuse(t->req, r, t->what);
}

static void background_done(struct db_result *r, void *ud)
{
    const char *what = ud;
    if (r->status != DB_OK)
        log_msg(LOG_WARN, "rate limits: %s failed: %s", what,
                r->message ? r->message : "database unavailable");
}

/* At most once a minute per process: rows that carry nothing go. */
static void maybe_sweep(struct db_pool *pool)
{
    uint64_t now = now_ms(), last = atomic_load(&g_last_sweep_ms);
    if (last && now - last < SWEEP_EVERY_MS)
        return;
    if (!atomic_compare_exchange_strong(&g_last_sweep_ms, &last, now))
        return;
    static const char *const params[1] = {SWEEP_MAX};
    db_query(pool, NULL, &sweep_stmt, 1, params, background_done, "the sweep of old rows");
}

/* The database could not answer: this process's own bucket decides. */
static void take_locally(struct take *t, const char *why)
{
    atomic_fetch_add_explicit(&g_fallbacks, 1, memory_order_relaxed);
    uint64_t now = now_ms(), last = atomic_load(&g_last_fallback_log_ms);
    if ((!last || now - last >= 10000) &&
        atomic_compare_exchange_strong(&g_last_fallback_log_ms, &last, now))
        log_msg(LOG_WARN, "rate limits: the database did not answer (%s); this instance's "
                          "own limits decide meanwhile", why);
    struct ratelimit_result r;
    bool have = false, ok = true;
    const char *ip = t->req->client_ip ? t->req->client_ip : "";
    switch (t->kind) {
    case LIMIT_LOGIN_IP:
        ok = login_ip_take(ip, &r, &have);
        break;
    case LIMIT_LOGIN_KEY: {
        /* The client's budget first, then the account's (the tighter shown). */
        struct ratelimit_result k;
        bool hk = false;
        if (!login_ip_take(ip, &r, &have)) {
            refuse_as(t, LIMIT_LOGIN_IP, &r);
            return;
        }
        ok = login_key_take(t->key, strlen(t->key), ip, &k, &hk);
        if (hk && (!have || !ok || k.remaining < r.remaining))
            r = k;
        have = have || hk;
        break;
    }
    case LIMIT_SIGNUP:
        ok = signup_limit_take(ip, &r, &have);
        break;
    case LIMIT_ORG:
        ok = org_limit_take(t->key, &r, &have);
        break;
    case LIMIT_KINDS:
        abort();
    }
    if (!ok) {
        refuse(t, &r);
        return;
    }
    t->next(t->req, t->ud, have ? &r : NULL);
}

static void taken(struct db_result *r, void *ud)
{
    struct take *t = ud;
    if (r->status != DB_OK) {
        take_locally(t, r->status == DB_UNAVAILABLE ? "unavailable" : "an error");
        return;
    }
    if (PQntuples(r->res) != 1 || PQgetisnull(r->res, 0, 0) || PQgetisnull(r->res, 0, 1)) {
        take_locally(t, "no row");
        return;
    }
    long granted = strtol(PQgetvalue(r->res, 0, 0), NULL, 10);
    unsigned long long level = strtoull(PQgetvalue(r->res, 0, 1), NULL, 10);
    struct ratelimit_result res;
    if (granted <= 0) {
        if (t->kind == LIMIT_ORG)
            lease_deny(t->hex, t->n, t->period, level);
        fill_result(&res, false, t->n, t->period, level, 0);
        /* A login take says which of its two budgets refused. */
        bool by_client = t->kind == LIMIT_LOGIN_KEY && PQnfields(r->res) > 2 &&
                         !PQgetisnull(r->res, 0, 2) &&
                         strcmp(PQgetvalue(r->res, 0, 2), "login_ip") == 0;
        refuse_as(t, by_client ? LIMIT_LOGIN_IP : t->kind, &res);
        return;
    }
    uint32_t spare = (uint32_t)(granted - 1);
    if (t->kind == LIMIT_ORG)
        lease_store(t->hex, spare, level);
    fill_result(&res, true, t->n, t->period, level, spare);
    t->next(t->req, t->ud, &res);
}

void limit_take(struct request *req, enum limit_kind kind, const char *key, const char *what,
                limit_next next, void *ud)
{
    uint32_t n, period;
    limit_config(kind, &n, &period);
    if (n == 0) {
        next(req, ud, NULL);
        return;
    }
    struct take *t = arena_calloc(req->arena, sizeof *t);
    t->req = req;
    t->kind = kind;
    t->n = n;
    t->period = period;
    t->what = what;
    t->next = next;
    t->ud = ud;
    char ck[RATELIMIT_CLIENT_KEY_MAX];
    const char *client =
        ratelimit_client_key(req->client_ip ? req->client_ip : "",
                             g_config ? (unsigned)g_config->login_ipv6_prefix : 64, ck);
    t->key = arena_strdup(req->arena, kind == LIMIT_LOGIN_IP || kind == LIMIT_SIGNUP ? client
                                                                                      : key);
    key_hex(t->key, strlen(t->key), NULL, 0, t->hex);
    struct db_pool *pool = db_pool_of(req);
    if (kind == LIMIT_ORG) {
        struct ratelimit_result r;
        if (lease_spend(t->hex, n, period, &r)) {
            atomic_fetch_add_explicit(&g_lease_spends, 1, memory_order_relaxed);
            if (r.allowed)
                next(req, ud, &r);
            else
                refuse(t, &r);
            return;
        }
    }
    if (!pool) {
        take_locally(t, "no pool");
        return;
    }
    atomic_fetch_add_explicit(&g_db_takes, 1, memory_order_relaxed);
    snprintf(t->n_s, sizeof t->n_s, "%u", n);
    snprintf(t->period_s, sizeof t->period_s, "%u", period);
    if (kind == LIMIT_LOGIN_KEY) {
        key_hex(t->key, strlen(t->key), client, strlen(client), t->path_hex);
        key_hex(client, strlen(client), NULL, 0, t->client_hex);
        t->params[0] = t->client_hex;
        t->params[1] = t->hex;
        t->params[2] = t->path_hex;
        t->params[3] = t->n_s;
        t->params[4] = t->period_s;
        db_query(pool, NULL, &login_stmt, 5, t->params, taken, t);
    } else {
        snprintf(t->want_s, sizeof t->want_s, "%u", kind == LIMIT_ORG ? lease_want(t->hex, n) : 1);
        t->params[0] = limit_names[kind];
        t->params[1] = t->hex;
        t->params[2] = t->n_s;
        t->params[3] = t->period_s;
        t->params[4] = t->want_s;
        db_query(pool, NULL, &take_stmt, 5, t->params, taken, t);
    }
    maybe_sweep(pool);
}

struct succeeded {
    const char *params[3];
    char hex[KEY_HEX_BUFSZ], path_hex[KEY_HEX_BUFSZ];
};

static void succeeded_done(struct db_result *r, void *ud)
{
    background_done(r, "forgetting a login's failures");
    free(ud);
}

void limit_login_succeeded(struct request *req, const char *key)
{
    const char *ip = req->client_ip ? req->client_ip : "";
    login_succeeded(key, strlen(key), ip); /* the local fallback's buckets too */
    struct db_pool *pool = db_pool_of(req);
    if (!pool || !g_config || g_config->login_limit == 0)
        return;
    struct succeeded *s = malloc(sizeof *s); /* outlives the request's answer */
    if (!s)
        return;
    char ck[RATELIMIT_CLIENT_KEY_MAX];
    const char *client = ratelimit_client_key(ip, (unsigned)g_config->login_ipv6_prefix, ck);
    key_hex(key, strlen(key), NULL, 0, s->hex);
    key_hex(key, strlen(key), client, strlen(client), s->path_hex);
    s->params[0] = s->hex;
    s->params[1] = s->path_hex;
    s->params[2] = KNOWN_PATH_MS;
    db_query(pool, NULL, &succeeded_stmt, 3, s->params, succeeded_done, s);
}

struct gate {
    void (*go)(struct request *req, void *ud);
    void *ud;
};

static void gate_next(struct request *req, void *ud, const struct ratelimit_result *r)
{
    struct gate *g = ud;
    if (r)
        auth_ratelimit_headers(req, r);
    g->go(req, g->ud);
}

void limit_gate(struct request *req, enum limit_kind kind, const char *key, const char *what,
                void (*go)(struct request *req, void *ud), void *ud)
{
    struct gate *g = arena_alloc(req->arena, sizeof *g);
    g->go = go;
    g->ud = ud;
    limit_take(req, kind, key, what, gate_next, g);
}
