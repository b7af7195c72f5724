/*
 * What each backend has prepared and seen. Plain (named, schema-less)
 * statements are prepared once per connection. Tenant statements are
 * prepared per (connection, schema) as "t<id>" and kept in an LRU of at
 * most statement_cache entries per connection (a hash table over it for
 * lookups); pipeline.c deallocates what falls off the end.
 *
 * Every backend caches the catalogs of each schema it touched; a connection
 * that has seen recycle_schemas distinct schemas stops taking queries, and
 * once empty is closed and reopened at once. One connection at a time, so
 * its orgs spill to their next slots for a connect's time. The schemas seen
 * are kept as a set of hashes (open addressing).
 */
#include "db/pool_internal.h"

bool db_prepared_has(const struct conn *c, const struct db_stmt *s)
{
    for (int i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == s)
            return true;
    return false;
}

void db_prepared_add(struct conn *c, const struct db_stmt *s)
{
    if (c->nprepared == c->capprepared) {
        int cap = c->capprepared ? c->capprepared * 2 : 16;
        const struct db_stmt **n = realloc(c->prepared, (size_t)cap * sizeof *n);
        if (!n)
            abort();
        c->prepared = n;
        c->capprepared = cap;
    }
    c->prepared[c->nprepared++] = s;
}

void db_prepared_remove(struct conn *c, const struct db_stmt *s)
{
    for (int i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == s) {
            c->prepared[i] = c->prepared[--c->nprepared];
            return;
        }
}

uint32_t db_centry_hash(const struct db_stmt *s, uint32_t shash)
{
    return (uint32_t)mix64(((uint64_t)(uintptr_t)s << 16) ^ shash);
}

struct centry *db_cache_find(struct conn *c, const struct db_stmt *s, const char *schema,
                             uint32_t h)
{
    for (struct centry *e = c->ctab[h & c->pool->ctab_mask]; e; e = e->hnext)
        if (e->hash == h && e->stmt == s && strcmp(e->schema, schema) == 0)
            return e;
    return NULL;
}

static void lru_unlink(struct conn *c, struct centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(struct conn *c, struct centry *e)
{
    e->prev = NULL;
    e->next = c->lru_head;
    if (c->lru_head)
        c->lru_head->prev = e;
    else
        c->lru_tail = e;
    c->lru_head = e;
}

/* e was used: most recent first. */
void db_cache_touch(struct conn *c, struct centry *e)
{
    lru_unlink(c, e);
    lru_push(c, e);
}

struct centry *db_cache_add(struct conn *c, const struct db_stmt *s, const char *schema, uint32_t h)
{
    struct centry *e = xcalloc(1, sizeof *e);
    e->stmt = s;
    e->hash = h;
    e->id = ++c->next_id;
    snprintf(e->schema, sizeof e->schema, "%s", schema);
    struct centry **b = &c->ctab[h & c->pool->ctab_mask];
    e->hnext = *b;
    *b = e;
    lru_push(c, e);
    c->ncache++;
    return e;
}

void db_cache_remove(struct conn *c, struct centry *e)
{
    for (struct centry **b = &c->ctab[e->hash & c->pool->ctab_mask]; *b; b = &(*b)->hnext)
        if (*b == e) {
            *b = e->hnext;
            break;
        }
    lru_unlink(c, e);
    c->ncache--;
    assert(c->ncache >= 0);
    free(e);
}

void db_cache_clear(struct conn *c)
{
    while (c->lru_head)
        db_cache_remove(c, c->lru_head);
    assert(c->ncache == 0 && !c->lru_tail);
}

void db_note_schema(struct conn *c, const char *schema, uint32_t h)
{
    h |= 1; /* 0 marks an empty slot */
    if (c->nseen * 2 >= c->capseen) {
        int cap = c->capseen ? c->capseen * 2 : 64;
        uint32_t *n = xcalloc((size_t)cap, sizeof *n);
        for (int i = 0; i < c->capseen; i++) {
            if (!c->seen[i])
                continue;
            int j = (int)(c->seen[i] & (uint32_t)(cap - 1));
            while (n[j])
                j = (j + 1) & (cap - 1);
            n[j] = c->seen[i];
        }
        free(c->seen);
        c->seen = n;
        c->capseen = cap;
    }
    int i = (int)(h & (uint32_t)(c->capseen - 1));
    while (c->seen[i]) {
        if (c->seen[i] == h)
            return;
        i = (i + 1) & (c->capseen - 1);
    }
    c->seen[i] = h;
    c->nseen++;
}
