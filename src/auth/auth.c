/*
 * The auth module: its life cycle (argon2 pool, JWT key, cache listener,
 * per-loop rate limiters) and the small shared helpers of src/auth.
 * Request authentication is in context.c, the session routes in session.c.
 */
#include "auth/auth.h"

#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#include "auth/cache.h"
#include "auth/internal.h"
#include "auth/password.h"
#include "core/config.h"
#include "core/log.h"
#include "core/problem.h"

#define RATELIMIT_ENTRIES 65536 /* keys tracked per table (bounded memory) */
/* How long a successful login makes its client a known-good path of the
 * account (see login_key_take). */
#define KNOWN_PATH_MS (30u * 86400000u)

static int auth_init(void);
static struct {
    uv_mutex_t mu;
    struct ratelimit *ip, *key;  /* NULL when TENANTD_LOGIN_LIMIT is 0 */
    struct ratelimit *known;     /* set of (account, client) that logged in */
    struct ratelimit *known_key; /* budget of a known (account, client) */
    struct ratelimit *signup;    /* per IP; NULL when TENANTD_SIGNUP_LIMIT is 0 */
    struct ratelimit *org;       /* per org id; NULL when TENANTD_ORG_RATE_LIMIT is 0 */
    unsigned v6_prefix;
} g_login;

static int login_limit_start(void)
{
    if (uv_mutex_init(&g_login.mu) != 0)
        return -1;
    g_login.v6_prefix = g_config ? (unsigned)g_config->login_ipv6_prefix : 64;
    uint32_t n = g_config ? (uint32_t)g_config->login_limit : 0;
    if (n > 0) {
        g_login.ip = ratelimit_new(n, RATELIMIT_ENTRIES);
        g_login.key = ratelimit_new(n, RATELIMIT_ENTRIES);
        g_login.known = ratelimit_new_period(1, KNOWN_PATH_MS, RATELIMIT_ENTRIES);
        g_login.known_key = ratelimit_new(n, RATELIMIT_ENTRIES);
        if (!g_login.ip || !g_login.key || !g_login.known || !g_login.known_key)
            return -1;
    }
    uint32_t s = g_config ? (uint32_t)g_config->signup_limit : 0;
    if (s > 0 && !(g_login.signup = ratelimit_new_period(s, 3600000u, RATELIMIT_ENTRIES)))
        return -1;
    uint32_t o = g_config ? (uint32_t)g_config->org_rate_limit : 0;
    if (o > 0 && !(g_login.org = ratelimit_new(o, RATELIMIT_ENTRIES)))
        return -1;
    return 0;
}

static void login_limit_stop(void)
{
    ratelimit_free(g_login.ip);
    ratelimit_free(g_login.key);
    ratelimit_free(g_login.known);
    ratelimit_free(g_login.known_key);
    ratelimit_free(g_login.signup);
    ratelimit_free(g_login.org);
    g_login.ip = g_login.key = g_login.known = g_login.known_key = NULL;
    g_login.signup = g_login.org = NULL;
    uv_mutex_destroy(&g_login.mu);
}

/* One clock for all loops: uv_now() is per loop. */
static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* "<account key>|<client key>" in buf; its length. */
static size_t path_key(char *buf, size_t n, const char *key, size_t keylen, const char *client)
{
    int w = snprintf(buf, n, "%.*s|%s", (int)keylen, key, client);
    return w < 0 ? 0 : (size_t)w < n ? (size_t)w : n - 1;
}

bool login_ip_take(const char *ip, struct ratelimit_result *out, bool *have)
{
    *have = false;
    if (!g_login.ip)
        return true;
    char ck[RATELIMIT_CLIENT_KEY_MAX];
    const char *client = ratelimit_client_key(ip, g_login.v6_prefix, ck);
    uv_mutex_lock(&g_login.mu);
    ratelimit_take(g_login.ip, client, strlen(client), now_ms(), out);
    uv_mutex_unlock(&g_login.mu);
    *have = true;
    return out->allowed;
}

bool login_key_take(const char *key, size_t keylen, const char *ip, struct ratelimit_result *out,
                    bool *have)
{
    *have = false;
    if (!g_login.key)
        return true;
    char ck[RATELIMIT_CLIENT_KEY_MAX], pk[256 + RATELIMIT_CLIENT_KEY_MAX];
    const char *client = ratelimit_client_key(ip, g_login.v6_prefix, ck);
    size_t pklen = path_key(pk, sizeof pk, key, keylen, client);
    uint64_t now = now_ms();
    uv_mutex_lock(&g_login.mu);
    bool ok = ratelimit_take(g_login.key, key, keylen, now, out);
    /* The account's budget is spent (maybe by someone guessing from many
     * addresses): a client that logged in to it before keeps a budget of
     * its own, so failed guesses cannot lock the owner out. */
    if (!ok && ratelimit_marked(g_login.known, pk, pklen, now))
        ok = ratelimit_take(g_login.known_key, pk, pklen, now, out);
    uv_mutex_unlock(&g_login.mu);
    *have = true;
    return ok;
}

void login_succeeded(const char *key, size_t keylen, const char *ip)
{
    if (!g_login.key)
        return;
    char ck[RATELIMIT_CLIENT_KEY_MAX], pk[256 + RATELIMIT_CLIENT_KEY_MAX];
    const char *client = ratelimit_client_key(ip, g_login.v6_prefix, ck);
    size_t pklen = path_key(pk, sizeof pk, key, keylen, client);
    uint64_t now = now_ms();
    uv_mutex_lock(&g_login.mu);
    ratelimit_reset(g_login.key, key, keylen);
    ratelimit_mark(g_login.known, pk, pklen, now);
    uv_mutex_unlock(&g_login.mu);
}

/* One attempt for key in table t (NULL: that limit is off). */
static bool take_one(struct ratelimit *t, const char *key, struct ratelimit_result *out, bool *have)
{
    *have = false;
    if (!t)
        return true;
    uv_mutex_lock(&g_login.mu);
    ratelimit_take(t, key, strlen(key), now_ms(), out);
    uv_mutex_unlock(&g_login.mu);
    *have = true;
    return out->allowed;
}

bool signup_limit_take(const char *ip, struct ratelimit_result *out, bool *have)
{
    char ck[RATELIMIT_CLIENT_KEY_MAX];
    return take_one(g_login.signup, ratelimit_client_key(ip, g_login.v6_prefix, ck), out, have);
}

bool org_limit_take(const char *org_id, struct ratelimit_result *out, bool *have)
{
    return take_one(g_login.org, org_id, out, have);
}

static void auth_loop_start(struct loop_ctx *ctx);
static void auth_loop_stop(struct loop_ctx *ctx);
static void auth_shutdown(void);

const struct module auth_module = {
    .name = "auth",
    .routes = session_routes,
    .init = auth_init,
    .loop_start = auth_loop_start,
    .loop_stop = auth_loop_stop,
    .shutdown = auth_shutdown,
};

static struct jwt_key *g_key;
static _Thread_local struct auth_loop *t_loop;

const struct jwt_key *auth_jwt_key(void)
{
    return g_key;
}

struct auth_loop *auth_loop_state(void)
{
    return t_loop;
}

int64_t auth_access_ttl(void)
{
    return g_config ? g_config->access_ttl_s : 900;
}

int64_t auth_refresh_ttl(void)
{
    return g_config ? g_config->refresh_ttl_s : 2592000;
}

int auth_sign_access(const char *user_id, const char *org_id, const char *role, int64_t ver,
                     char *out, size_t outlen)
{
    if (!g_key || !user_id || !org_id || !role)
        return -1;
    struct jwt_claims c = {0};
    size_t a = strlen(user_id), b = strlen(org_id), r = strlen(role);
    if (a > JWT_ID_MAX || b > JWT_ID_MAX || r > JWT_ROLE_MAX)
        return -1;
    memcpy(c.sub, user_id, a + 1);
    memcpy(c.org, org_id, b + 1);
    memcpy(c.role, role, r + 1);
    c.ver = ver;
    return jwt_sign(g_key, &c, (int64_t)time(NULL), auth_access_ttl(), out, outlen);
}

static int login_limit_start(void);
static void login_limit_stop(void);

static int auth_init(void)
{
    const struct config *c = g_config;
    if (!c->jwt_secret)
        return -1;
    if (login_limit_start() != 0) {
        log_msg(LOG_ERROR, "auth: cannot make the login limiters");
        return -1;
    }
    g_key = jwt_key_new(c->jwt_secret, strlen(c->jwt_secret), c->jwt_issuer, c->jwt_audience);
    if (!g_key) {
        log_msg(LOG_ERROR, "auth: cannot make the JWT key (secret >= 32 bytes; issuer and "
                           "audience 1..255 bytes)");
        return -1;
    }
    if (c->jwt_secret_generated)
        log_msg(LOG_WARN, "auth: development mode generated a JWT secret; tokens die with "
                          "this process (set TENANTD_JWT_SECRET)");
    struct password_params pp = {(uint32_t)c->argon2_m_kib, (uint32_t)c->argon2_t,
                                 (uint32_t)c->argon2_p};
    password_pool_set_boost_ms((unsigned)c->hash_boost_ms);
    if (password_pool_start((unsigned)c->hash_threads, (unsigned)c->hash_queue, pp) != 0) {
        log_msg(LOG_ERROR, "auth: cannot start the password hashing pool (check "
                           "TENANTD_ARGON2_*)");
        login_limit_stop();
        jwt_key_free(g_key);
        g_key = NULL;
        return -1;
    }
    if (cache_start(c->database_url) != 0) {
        log_msg(LOG_ERROR, "auth: cannot start the cache listener");
        login_limit_stop();
        password_pool_stop();
        jwt_key_free(g_key);
        g_key = NULL;
        return -1;
    }
    return 0;
}

static void auth_loop_start(struct loop_ctx *ctx)
{
    (void)ctx;
    struct auth_loop *st = calloc(1, sizeof *st);
    if (!st)
        abort();
    t_loop = st;
}

/* Detaches the loop from the password pool (pending verifications answer
 * 503) and frees the loop's rate limiters and background re-hash jobs. */
static void auth_loop_stop(struct loop_ctx *ctx)
{
    password_loop_detach(ctx->loop);
    struct auth_loop *st = t_loop;
    if (!st)
        return;
    session_loop_stop(st);
    free(st);
    t_loop = NULL;
}

static void auth_shutdown(void)
{
    cache_stop();
    password_pool_stop();
    login_limit_stop();
    jwt_key_free(g_key);
    g_key = NULL;
}
