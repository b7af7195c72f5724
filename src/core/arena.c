#include "core/arena.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK 8192

struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

struct cleanup {
    struct cleanup *next;
    void (*fn)(void *);
    void *ptr;
};

struct arena {
    struct chunk *head;
    struct cleanup *cleanups;
    struct arena *next_free; /* in the thread's cache */
};

#define STD_CAP (ARENA_CHUNK - sizeof(struct chunk))

/* The invariants every arena keeps between calls: a head chunk to allocate
 * from, its fill within its capacity, 16-byte alignment of every block.
 * Checked in Debug and ASan builds (assert), compiled out in release. */
static void arena_check(const struct arena *a)
{
    assert(a && a->head);
    assert(a->head->used <= a->head->cap);
    assert(a->head->used % 16 == 0);
    assert(a->next_free == NULL); /* a live arena is in no thread's cache */
    (void)a;
}

/* Every request makes and frees an arena; each thread keeps a few freed
 * ones (with one standard chunk) to skip malloc/free. Not under ASan, so
 * a use after arena_free is still caught there. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_CACHE 0
#endif
#endif
#ifndef ARENA_CACHE
#define ARENA_CACHE 64
#endif

#if ARENA_CACHE
static _Thread_local struct arena *cache;
static _Thread_local unsigned ncached;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

/* At thread exit: the thread's cached arenas are freed. */
static void cache_drop(void *unused)
{
    (void)unused;
    while (cache) {
        struct arena *a = cache;
        cache = a->next_free;
        free(a->head);
        free(a);
    }
    ncached = 0;
}

static void cache_key_init(void)
{
    (void)pthread_key_create(&cache_key, cache_drop);
}
#endif

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fputs("tenantd: out of memory\n", stderr);
        abort();
    }
    return p;
}

static struct chunk *chunk_new(size_t cap)
{
    struct chunk *c = xmalloc(sizeof *c + cap);
    c->next = NULL;
    c->used = 0;
    c->cap = cap;
    return c;
}

struct arena *arena_new(void)
{
#if ARENA_CACHE
    if (cache) {
        struct arena *a = cache;
        cache = a->next_free;
        assert(ncached > 0);
        ncached--;
        a->next_free = NULL;
        /* A cached arena is as new: one empty standard chunk, no cleanups. */
        assert(a->head && a->head->next == NULL && a->head->used == 0 && a->head->cap == STD_CAP &&
               a->cleanups == NULL);
        return a;
    }
#endif
    struct arena *a = xmalloc(sizeof *a);
    a->head = chunk_new(STD_CAP);
    a->cleanups = NULL;
    a->next_free = NULL;
    return a;
}

void arena_free(struct arena *a)
{
    if (!a)
        return;
    arena_check(a);
    for (struct cleanup *c = a->cleanups; c; c = c->next)
        c->fn(c->ptr);
    struct chunk *keep = NULL;
#if ARENA_CACHE
    bool cacheable = ncached < ARENA_CACHE;
#else
    bool cacheable = false;
#endif
    struct chunk *c = a->head;
    while (c) {
        struct chunk *next = c->next;
        if (cacheable && !keep && c->cap == STD_CAP)
            keep = c;
        else
            free(c);
        c = next;
    }
#if ARENA_CACHE
    if (keep) {
        if (ncached == 0 && !cache) {
            /* Registers the thread-exit cleanup (once per thread). */
            pthread_once(&cache_once, cache_key_init);
            if (!pthread_getspecific(cache_key))
                (void)pthread_setspecific(cache_key, &cache);
        }
        keep->next = NULL;
        keep->used = 0;
        a->head = keep;
        a->cleanups = NULL;
        a->next_free = cache;
        cache = a;
        ncached++;
        assert(ncached <= ARENA_CACHE);
        return;
    }
#endif
    free(a);
}

void *arena_alloc(struct arena *a, size_t size)
{
    arena_check(a);
    /* Callers pass sizes they computed, never a client's number unchecked:
     * a size this large is a bug, and rounding it up would wrap to 0. */
    assert(size <= SIZE_MAX / 2);
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    struct chunk *c = a->head;
    if (c->cap - c->used < size) {
        if (size > ARENA_CHUNK / 4) {
            /* Large blocks get their own chunk behind the head so the head's
             * free space is not wasted. */
            struct chunk *big = chunk_new(size);
            big->used = size;
            big->next = c->next;
            c->next = big;
            assert(((uintptr_t)big->data & 15) == 0);
            return big->data;
        }
        c = chunk_new(ARENA_CHUNK - sizeof(struct chunk));
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += size;
    assert(c->used <= c->cap && ((uintptr_t)p & 15) == 0);
    return p;
}

void *arena_calloc(struct arena *a, size_t size)
{
    void *p = arena_alloc(a, size);
    memset(p, 0, size);
    return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

char *arena_printf(struct arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return arena_strdup(a, "");
    char *p = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void arena_cleanup(struct arena *a, void (*fn)(void *), void *ptr)
{
    assert(fn);
    struct cleanup *c = arena_alloc(a, sizeof *c);
    c->fn = fn;
    c->ptr = ptr;
    c->next = a->cleanups;
    a->cleanups = c;
}
