/* core/connset: the idle queue's order and the per-address counts that
 * core/server.c uses to make room in a full connection table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "core/connset.h"

struct item {
    int id;
    struct qnode node;
};

static int id_of(struct qnode *n)
{
    return ((struct item *)(void *)((char *)n - offsetof(struct item, node)))->id;
}

static void idle_queue_is_oldest_first(void **state)
{
    (void)state;
    struct queue q = {0};
    struct item it[5];
    memset(it, 0, sizeof it);
    for (int i = 0; i < 5; i++)
        it[i].id = i;
    for (int i = 0; i < 5; i++)
        queue_push(&q, &it[i].node);
    assert_int_equal(q.n, 5);
    assert_int_equal(id_of(q.head), 0);
    /* One leaves mid-queue (its request began): order of the rest kept. */
    queue_remove(&q, &it[2].node);
    assert_false(it[2].node.queued);
    int want[] = {0, 1, 3, 4}, k = 0;
    for (struct qnode *n = q.head; n; n = n->next)
        assert_int_equal(id_of(n), want[k++]);
    assert_int_equal(k, 4);
    /* It comes back idle later: now the newest. */
    queue_push(&q, &it[2].node);
    assert_int_equal(id_of(q.tail), 2);
    /* Taking the oldest repeatedly gives the order they became idle. */
    int order[] = {0, 1, 3, 4, 2};
    for (int i = 0; i < 5; i++) {
        struct qnode *h = q.head;
        assert_int_equal(id_of(h), order[i]);
        queue_remove(&q, h);
    }
    assert_null(q.head);
    assert_null(q.tail);
    assert_int_equal(q.n, 0);
}

static void key_of(const char *ip, uint8_t key[16])
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    assert_true(ipcount_key((struct sockaddr *)&ss, key));
}

static void per_address_counts_and_limit(void **state)
{
    (void)state;
    struct ipcount t = {0};
    uint8_t a[16], b[16], a6[16];
    key_of("127.0.0.1", a);
    key_of("127.0.0.2", b);
    key_of("::ffff:127.0.0.1", a6);
    assert_memory_equal(a, a6, 16); /* IPv4 and its mapped form are one client */
    assert_true(ipcount_add(&t, a, 2));
    assert_true(ipcount_add(&t, a6, 2));
    assert_false(ipcount_add(&t, a, 2)); /* at the limit */
    assert_true(ipcount_add(&t, b, 2));  /* another address is not */
    assert_int_equal(ipcount_get(&t, a), 2);
    ipcount_del(&t, a);
    assert_true(ipcount_add(&t, a, 2)); /* a place again */
    assert_true(ipcount_add(&t, a, 0)); /* 0: no limit */
    assert_int_equal(ipcount_get(&t, a), 3);
    for (int i = 0; i < 3; i++)
        ipcount_del(&t, a);
    ipcount_del(&t, b);
    assert_int_equal(ipcount_get(&t, a), 0);
    assert_int_equal(t.nentries, 0); /* emptied entries are released */
    /* Many addresses: the table grows and keeps every count. */
    for (int i = 0; i < 5000; i++) {
        uint8_t k[16] = {0};
        memcpy(k, &i, sizeof i);
        assert_true(ipcount_add(&t, k, 1));
    }
    for (int i = 0; i < 5000; i++) {
        uint8_t k[16] = {0};
        memcpy(k, &i, sizeof i);
        assert_int_equal(ipcount_get(&t, k), 1);
        assert_false(ipcount_add(&t, k, 1));
    }
    ipcount_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(idle_queue_is_oldest_first),
        cmocka_unit_test(per_address_counts_and_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
