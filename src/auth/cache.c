/*
 * The auth cache (see cache.h): one chained hash table keyed by the very
 * strings the database triggers notify ("org:<id>", "user:<id>",
 * "key:<prefix>"), so an invalidation is a plain delete by payload, plus
 * the LISTEN thread that feeds those deletes.
 */
#include "auth/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "core/log.h"
#include "core/thread.h"
#include "db/listen.h"

#define NBUCKETS 65536     /* power of two; ~1 entry a bucket at 10,000 orgs and their users */
#define MAX_ENTRIES 200000 /* beyond this the table is flushed: memory stays bounded */
#define TTL_KEY_S 30       /* API keys: short, they are revoked by delete */
#define TTL_OTHER_S 300    /* orgs and users */
#define KEY_MAX 48         /* "user:" + 36 chars fits */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

enum entry_kind { E_ORG, E_USER, E_KEY };

struct entry {
    struct entry *next;
    char key[KEY_MAX];
    enum entry_kind kind;
    int64_t expires_s; /* monotonic */
    union {
        struct cache_org org;
        struct cache_user user;
        struct cache_key apikey;
    } v;
};

static struct {
    pthread_rwlock_t lock;
    struct entry *buckets[NBUCKETS];
    size_t count;
    bool live; /* the listener is connected: hits may be served */
    _Atomic uint64_t epoch;

    /* listener */
    pthread_t thread;
    bool started;
    int stop_pipe[2];
    char *conninfo;
} C = {.lock = PTHREAD_RWLOCK_INITIALIZER, .stop_pipe = {-1, -1}};

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

/* FNV-1a: keys are ids from signed tokens or from our own database rows,
 * not attacker-chosen strings, so a keyed hash buys nothing here. */
static size_t bucket_of(const char *key)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h & (NBUCKETS - 1);
}

static bool make_key(char out[KEY_MAX], const char *kind, const char *id)
{
    int n = snprintf(out, KEY_MAX, "%s:%s", kind, id);
    return n > 0 && n < KEY_MAX;
}

/* Caller holds the write lock. */
static void flush_locked(void)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct entry *e = C.buckets[i];
        while (e) {
            struct entry *next = e->next;
            free(e);
            e = next;
        }
        C.buckets[i] = NULL;
    }
    C.count = 0;
    atomic_fetch_add(&C.epoch, 1);
}

static bool get(const char *kind, const char *id, enum entry_kind want, struct entry *out)
{
    char key[KEY_MAX];
    if (!make_key(key, kind, id))
        return false;
    bool hit = false;
    int64_t now = mono_s();
    pthread_rwlock_rdlock(&C.lock);
    if (C.live) {
        for (struct entry *e = C.buckets[bucket_of(key)]; e; e = e->next) {
            if (e->kind == want && strcmp(e->key, key) == 0) {
                if (e->expires_s > now) {
                    *out = *e;
                    hit = true;
                }
                break;
            }
        }
    }
    pthread_rwlock_unlock(&C.lock);
    return hit;
}

static void put(const char *kind, const char *id, const struct entry *val, uint64_t epoch)
{
    char key[KEY_MAX];
    if (!make_key(key, kind, id))
        return;
    struct entry *n = malloc(sizeof *n);
    if (!n)
        return; /* a cache may forget */
    *n = *val;
    memcpy(n->key, key, KEY_MAX);
    n->expires_s = mono_s() + (val->kind == E_KEY ? TTL_KEY_S : TTL_OTHER_S);
    pthread_rwlock_wrlock(&C.lock);
    /* Anything invalidated since the load began may be what we loaded. */
    if (!C.live || atomic_load(&C.epoch) != epoch) {
        pthread_rwlock_unlock(&C.lock);
        free(n);
        return;
    }
    if (C.count >= MAX_ENTRIES)
        flush_locked();
    size_t b = bucket_of(key);
    for (struct entry **pp = &C.buckets[b]; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            struct entry *old = *pp;
            n->next = old->next;
            *pp = n;
            free(old);
            pthread_rwlock_unlock(&C.lock);
            return;
        }
    }
    n->next = C.buckets[b];
    C.buckets[b] = n;
    C.count++;
    pthread_rwlock_unlock(&C.lock);
}

uint64_t cache_epoch(void)
{
    return atomic_load(&C.epoch);
}

bool cache_get_org(const char *org_id, struct cache_org *out)
{
    struct entry e;
    if (!get("org", org_id, E_ORG, &e))
        return false;
    *out = e.v.org;
    return true;
}

bool cache_get_user(const char *user_id, struct cache_user *out)
{
    struct entry e;
    if (!get("user", user_id, E_USER, &e))
        return false;
    *out = e.v.user;
    return true;
}

bool cache_get_key(const char *prefix, struct cache_key *out)
{
    struct entry e;
    if (!get("key", prefix, E_KEY, &e))
        return false;
    *out = e.v.apikey;
    return true;
}

void cache_put_org(const char *org_id, const struct cache_org *o, uint64_t epoch)
{
    struct entry e = {.kind = E_ORG, .v.org = *o};
    put("org", org_id, &e, epoch);
}

void cache_put_user(const char *user_id, const struct cache_user *u, uint64_t epoch)
{
    struct entry e = {.kind = E_USER, .v.user = *u};
    put("user", user_id, &e, epoch);
}

void cache_put_key(const char *prefix, const struct cache_key *k, uint64_t epoch)
{
    struct entry e = {.kind = E_KEY, .v.apikey = *k};
    put("key", prefix, &e, epoch);
}

void cache_invalidate(const char *payload)
{
    pthread_rwlock_wrlock(&C.lock);
    /* Bump even when nothing is cached: a load in flight must not fill. */
    atomic_fetch_add(&C.epoch, 1);
    if (strlen(payload) < KEY_MAX) {
        for (struct entry **pp = &C.buckets[bucket_of(payload)]; *pp; pp = &(*pp)->next) {
            if (strcmp((*pp)->key, payload) == 0) {
                struct entry *old = *pp;
                *pp = old->next;
                free(old);
                C.count--;
                break;
            }
        }
    }
    pthread_rwlock_unlock(&C.lock);
}

void auth_cache_forget_org(const char *org_id)
{
    char key[KEY_MAX];
    if (make_key(key, "org", org_id))
        cache_invalidate(key);
}

void auth_cache_forget_user(const char *user_id)
{
    char key[KEY_MAX];
    if (make_key(key, "user", user_id))
        cache_invalidate(key);
}

void auth_cache_forget_key(const char *prefix)
{
    char key[KEY_MAX];
    if (make_key(key, "key", prefix))
        cache_invalidate(key);
}

static void set_live(bool live)
{
    pthread_rwlock_wrlock(&C.lock);
    /* Going live or dead, entries may have missed notifications: drop all. */
    flush_locked();
    C.live = live;
    pthread_rwlock_unlock(&C.lock);
}

void cache_set_live_for_test(bool live)
{
    set_live(live);
}

/* ---- the listener thread ---- */

/* Waits for fd readable (fd < 0: just the timeout) or a stop request.
 * Returns 1 readable, 0 timeout, -1 stop. */
static int wait_fd(int fd, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = C.stop_pipe[0], .events = POLLIN}, {.fd = fd, .events = POLLIN}};
    int r;
    do
        r = poll(p, fd >= 0 ? 2 : 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r < 0 || (p[0].revents & (POLLIN | POLLHUP)))
        return -1;
    if (r == 0)
        return 0;
    return 1;
}

static PGconn *listen_connect(void)
{
    /* expand_dbname: the URL/conninfo first, then ours override. Keepalives
     * notice a dead peer on an idle connection within about a minute. */
    const char *keys[] = {"dbname",
                          "application_name",
                          "connect_timeout",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          NULL};
    const char *vals[] = {C.conninfo, "tenantd-cache", "5", "30", "10", "3", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn)
        return NULL;
    if (PQstatus(conn) != CONNECTION_OK) {
        log_msg(LOG_WARN, "auth cache: cannot connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    PGresult *r = PQexec(conn, "LISTEN tenantd_cache");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        log_msg(LOG_WARN, "auth cache: LISTEN failed: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

static void invalidate(const PGnotify *n, void *ud)
{
    (void)ud;
    if (n->extra) {
        cache_invalidate(n->extra);
        log_msg(LOG_DEBUG, "auth cache: invalidated %s", n->extra);
    }
}

static void *listener_main(void *arg)
{
    (void)arg;
    thread_name("auth-listen");
    int backoff = BACKOFF_MIN_MS;
    for (;;) {
        PGconn *conn = listen_connect();
        if (!conn) {
            if (wait_fd(-1, backoff) < 0)
                return NULL;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = BACKOFF_MIN_MS;
        /* Notifications sent before LISTEN took effect are lost: start empty. */
        set_live(true);
        log_msg(LOG_DEBUG, "auth cache: listening");
        bool stop = false;
        for (;;) {
            int f = db_listen_wait(conn, C.stop_pipe[0], -1, invalidate, NULL);
            if (f & DB_LISTEN_WOKEN) {
                stop = true;
                break;
            }
            if (f & DB_LISTEN_LOST)
                break;
        }
        set_live(false);
        PQfinish(conn);
        if (stop)
            return NULL;
        log_msg(LOG_WARN, "auth cache: lost the database connection; serving without the "
                          "cache until it is back");
    }
}

int cache_start(const char *conninfo)
{
    if (C.started)
        return -1;
    C.conninfo = strdup(conninfo);
    if (!C.conninfo)
        return -1;
    if (pipe(C.stop_pipe) != 0) {
        free(C.conninfo);
        C.conninfo = NULL;
        return -1;
    }
    fcntl(C.stop_pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(C.stop_pipe[1], F_SETFD, FD_CLOEXEC);
    if (pthread_create(&C.thread, NULL, listener_main, NULL) != 0) {
        close(C.stop_pipe[0]);
        close(C.stop_pipe[1]);
        C.stop_pipe[0] = C.stop_pipe[1] = -1;
        free(C.conninfo);
        C.conninfo = NULL;
        return -1;
    }
    C.started = true;
    return 0;
}

void cache_stop(void)
{
    if (!C.started)
        return;
    ssize_t w;
    do
        w = write(C.stop_pipe[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(C.thread, NULL);
    close(C.stop_pipe[0]);
    close(C.stop_pipe[1]);
    C.stop_pipe[0] = C.stop_pipe[1] = -1;
    free(C.conninfo);
    C.conninfo = NULL;
    pthread_rwlock_wrlock(&C.lock);
    flush_locked();
    C.live = false;
    pthread_rwlock_unlock(&C.lock);
    C.started = false;
}
