#ifndef TENANTD_CORE_ARENA_H
#define TENANTD_CORE_ARENA_H
#include <stddef.h>

/*
 * Request-scoped memory. Allocations live until arena_free(); cleanups
 * registered with arena_cleanup() run (last registered first) when the arena
 * is freed, for resources that are not memory (a PGresult, a json_t).
 * Out of memory aborts: it is a broken invariant, not client input.
 */
struct arena;

struct arena *arena_new(void);
void arena_free(struct arena *a);
void *arena_alloc(struct arena *a, size_t size);   /* 16-byte aligned, not zeroed */
void *arena_calloc(struct arena *a, size_t size);  /* zeroed */
char *arena_strdup(struct arena *a, const char *s);
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_printf(struct arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void arena_cleanup(struct arena *a, void (*fn)(void *), void *ptr);

#endif
