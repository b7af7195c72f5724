#include "core/connset.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct ipentry {
    struct ipentry *next;
    uint8_t key[16];
    size_t count;
};

bool ipcount_key(const struct sockaddr *sa, uint8_t key[16])
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        memset(key, 0, 10);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &v4->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

static size_t hash(const uint8_t key[16], size_t nbuckets)
{
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    uint64_t h = (a * 0x9E3779B97F4A7C15ull) ^ (b + 0x632BE59BD9B4E019ull);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t)(h & (nbuckets - 1));
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        fputs("tenantd: out of memory\n", stderr);
        abort();
    }
    return p;
}

static struct ipentry **find(const struct ipcount *t, const uint8_t key[16])
{
    if (!t->nbuckets)
        return NULL;
    struct ipentry **p = &t->buckets[hash(key, t->nbuckets)];
    while (*p && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    return p;
}

static void grow(struct ipcount *t)
{
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    struct ipentry **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct ipentry *e = t->buckets[i];
        while (e) {
            struct ipentry *next = e->next;
            size_t h = hash(e->key, nb);
            e->next = b[h];
            b[h] = e;
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
}

bool ipcount_add(struct ipcount *t, const uint8_t key[16], size_t limit)
{
    struct ipentry **p = find(t, key);
    if (p && *p) {
        if (limit && (*p)->count >= limit)
            return false;
        (*p)->count++;
        return true;
    }
    if (t->nentries >= t->nbuckets)
        grow(t);
    struct ipentry *e = xcalloc(1, sizeof *e);
    memcpy(e->key, key, 16);
    e->count = 1;
    size_t h = hash(key, t->nbuckets);
    e->next = t->buckets[h];
    t->buckets[h] = e;
    t->nentries++;
    return true;
}

void ipcount_del(struct ipcount *t, const uint8_t key[16])
{
    struct ipentry **p = find(t, key);
    assert(p && *p && (*p)->count > 0);
    if (!p || !*p)
        return;
    if (--(*p)->count == 0) {
        struct ipentry *e = *p;
        *p = e->next;
        free(e);
        t->nentries--;
    }
}

size_t ipcount_get(const struct ipcount *t, const uint8_t key[16])
{
    struct ipentry **p = find(t, key);
    return p && *p ? (*p)->count : 0;
}

void ipcount_free(struct ipcount *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct ipentry *e = t->buckets[i];
        while (e) {
            struct ipentry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = NULL;
    t->nbuckets = t->nentries = 0;
}
