#ifndef TENANTD_CORE_CONNSET_H
#define TENANTD_CORE_CONNSET_H
/*
 * Bookkeeping of a loop's connections, kept apart from the server so it
 * can be unit-tested: an intrusive FIFO queue (the idle connections, oldest
 * first) and a count of open connections per peer address.
 */
#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* A node embedded in the queued object; prev/next NULL and `queued` false
 * when out of any queue. */
struct qnode {
    struct qnode *prev, *next;
    bool queued;
};

/* Oldest at head. */
struct queue {
    struct qnode *head, *tail;
    size_t n;
};

/* Appends n (which must be in no queue) as the newest. */
static inline void queue_push(struct queue *q, struct qnode *n)
{
    assert(!n->queued && !n->prev && !n->next);
    n->prev = q->tail;
    n->next = NULL;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    n->queued = true;
    q->n++;
}

/* Removes n from q (which must hold it). */
static inline void queue_remove(struct queue *q, struct qnode *n)
{
    assert(n->queued && q->n > 0);
    if (n->prev)
        n->prev->next = n->next;
    else
        q->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        q->tail = n->prev;
    n->prev = n->next = NULL;
    n->queued = false;
    q->n--;
}

/*
 * Open connections per peer address (IPv4 counted as its IPv4-mapped IPv6
 * form). ipcount_add counts one more for addr unless it already has
 * `limit` (0 = no limit): true when counted, false when at the limit.
 * ipcount_del undoes one ipcount_add. ipcount_get: the count.
 * ipcount_free releases everything. Out of memory aborts.
 */
struct ipcount {
    struct ipentry **buckets;
    size_t nbuckets, nentries;
};

/* An address as the 16-byte key ipcount uses; false for other families. */
bool ipcount_key(const struct sockaddr *sa, uint8_t key[16]);
bool ipcount_add(struct ipcount *t, const uint8_t key[16], size_t limit);
void ipcount_del(struct ipcount *t, const uint8_t key[16]);
size_t ipcount_get(const struct ipcount *t, const uint8_t key[16]);
void ipcount_free(struct ipcount *t);

#endif
