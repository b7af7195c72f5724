#include "core/arena.h"

#include <stdarg.h>
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
};

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
    struct arena *a = xmalloc(sizeof *a);
    a->head = chunk_new(ARENA_CHUNK - sizeof(struct chunk));
    a->cleanups = NULL;
    return a;
}

void arena_free(struct arena *a)
{
    if (!a)
        return;
    for (struct cleanup *c = a->cleanups; c; c = c->next)
        c->fn(c->ptr);
    struct chunk *c = a->head;
    while (c) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

void *arena_alloc(struct arena *a, size_t size)
{
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
            return big->data;
        }
        c = chunk_new(ARENA_CHUNK - sizeof(struct chunk));
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += size;
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
    struct cleanup *c = arena_alloc(a, sizeof *c);
    c->fn = fn;
    c->ptr = ptr;
    c->next = a->cleanups;
    a->cleanups = c;
}
