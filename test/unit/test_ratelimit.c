/* Unit tests of auth/ratelimit: token bucket math with an injected clock,
 * independence of keys, reset, eviction. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "auth/ratelimit.h"

static bool take(struct ratelimit *rl, const char *key, uint64_t now, struct ratelimit_result *r)
{
    return ratelimit_take(rl, key, strlen(key), now, r);
}

static void test_args(void **state)
{
    (void)state;
    assert_null(ratelimit_new(0, 100));
    struct ratelimit *rl = ratelimit_new(1, 0); /* still one set of 4 */
    assert_non_null(rl);
    struct ratelimit_result r;
    assert_true(take(rl, "a", 0, &r));
    ratelimit_free(rl);
    ratelimit_free(NULL);
}

static void test_burst_then_deny(void **state)
{
    (void)state;
    struct ratelimit *rl = ratelimit_new(10, 1024);
    struct ratelimit_result r;
    const uint64_t t0 = 1000000;
    for (uint32_t i = 0; i < 10; i++) {
        assert_true(take(rl, "10.0.0.1", t0, &r));
        assert_true(r.allowed);
        assert_int_equal(r.limit, 10);
        assert_int_equal(r.remaining, 9 - i);
        assert_int_equal(r.retry_after_s, 0);
        /* i+1 tokens used, one comes back every 6 s. */
        assert_int_equal(r.reset_s, 6 * (i + 1));
    }
    assert_false(take(rl, "10.0.0.1", t0, &r));
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_s, 6);
    assert_int_equal(r.reset_s, 60);

    /* 3.5 s in: 2.5 s to wait, rounded up. */
    assert_false(take(rl, "10.0.0.1", t0 + 3500, &r));
    assert_int_equal(r.retry_after_s, 3);
    /* 1 ms before a token is back: still denied, retry in 1 s. */
    assert_false(take(rl, "10.0.0.1", t0 + 5999, &r));
    assert_int_equal(r.retry_after_s, 1);
    /* Exactly one token back at +6 s: one attempt, then denied again. */
    assert_true(take(rl, "10.0.0.1", t0 + 6000, &r));
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_s, 60);
    assert_false(take(rl, "10.0.0.1", t0 + 6000, &r));
    assert_int_equal(r.retry_after_s, 6);

    /* Denied attempts cost nothing: +12 s gives one token again. */
    assert_true(take(rl, "10.0.0.1", t0 + 12000, &r));

    /* Another key is untouched. */
    assert_true(take(rl, "10.0.0.2", t0, &r));
    assert_int_equal(r.remaining, 9);

    /* A minute of quiet refills everything, capped at the limit. */
    assert_true(take(rl, "10.0.0.1", t0 + 12000 + 600000, &r));
    assert_int_equal(r.remaining, 9);
    ratelimit_free(rl);
}

/* N per hour: the same bucket on another period. */
static void test_period(void **state)
{
    (void)state;
    assert_null(ratelimit_new_period(1, 0, 16));
    assert_null(ratelimit_new_period(1, RATELIMIT_PERIOD_MAX_MS + 1, 16));
    struct ratelimit *rl = ratelimit_new_period(2, 3600000u, 16);
    assert_non_null(rl);
    struct ratelimit_result r;
    const uint64_t t0 = 5000000;
    assert_true(take(rl, "ip", t0, &r));
    assert_true(take(rl, "ip", t0, &r));
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_s, 3600);
    assert_false(take(rl, "ip", t0, &r));
    assert_int_equal(r.retry_after_s, 1800); /* one token per half hour */
    assert_false(take(rl, "ip", t0 + 1799000, &r));
    assert_int_equal(r.retry_after_s, 1);
    assert_true(take(rl, "ip", t0 + 1800000, &r));
    assert_false(take(rl, "ip", t0 + 1800000, &r));
    assert_true(take(rl, "other", t0, &r)); /* keys stay apart */
    ratelimit_free(rl);
}

static void test_partial_refill(void **state)
{
    (void)state;
    struct ratelimit *rl = ratelimit_new(3, 64); /* one token per 20 s */
    struct ratelimit_result r;
    for (int i = 0; i < 3; i++)
        assert_true(take(rl, "a@example.com", 0, &r));
    assert_false(take(rl, "a@example.com", 0, &r));
    assert_int_equal(r.retry_after_s, 20);
    assert_int_equal(r.reset_s, 60);
    /* 50 s: 2.5 tokens back. */
    assert_true(take(rl, "a@example.com", 50000, &r));
    assert_int_equal(r.remaining, 1);
    /* level 1.5 tokens: 1.5 * 20 s = 30 s to full */
    assert_int_equal(r.reset_s, 30);
    assert_true(take(rl, "a@example.com", 50000, &r));
    assert_false(take(rl, "a@example.com", 50000, &r));
    assert_int_equal(r.retry_after_s, 10); /* 0.5 token short */
    ratelimit_free(rl);
}

static void test_clock_backwards(void **state)
{
    (void)state;
    struct ratelimit *rl = ratelimit_new(2, 64);
    struct ratelimit_result r;
    assert_true(take(rl, "k", 100000, &r));
    assert_true(take(rl, "k", 100000, &r));
    assert_false(take(rl, "k", 100000, &r));
    /* Going back in time must not refill, and coming forward again must not
     * count the same interval twice. */
    assert_false(take(rl, "k", 50000, &r));
    assert_false(take(rl, "k", 100000 + 29999, &r));
    assert_true(take(rl, "k", 100000 + 30000, &r));
    assert_false(take(rl, "k", 100000 + 30000, &r));
    ratelimit_free(rl);
}

static void test_reset(void **state)
{
    (void)state;
    struct ratelimit *rl = ratelimit_new(1, 64);
    struct ratelimit_result r;
    assert_true(take(rl, "bob@example.com", 0, &r));
    assert_false(take(rl, "bob@example.com", 0, &r));
    ratelimit_reset(rl, "bob@example.com", strlen("bob@example.com"));
    assert_true(take(rl, "bob@example.com", 0, &r));
    ratelimit_reset(rl, "never-seen", 10); /* harmless */
    /* Keys are bytes with a length: a prefix is another key. */
    assert_true(ratelimit_take(rl, "bob@example.co", 14, 0, &r));
    ratelimit_free(rl);
}

static void test_mark(void **state)
{
    (void)state;
    struct ratelimit *rl = ratelimit_new_period(1, 1000, 64);
    assert_false(ratelimit_marked(rl, "u|ip", 4, 0));
    ratelimit_mark(rl, "u|ip", 4, 100);
    assert_true(ratelimit_marked(rl, "u|ip", 4, 100));
    assert_true(ratelimit_marked(rl, "u|ip", 4, 1099));
    assert_false(ratelimit_marked(rl, "u|ip", 4, 1100)); /* a period later: expired */
    assert_false(ratelimit_marked(rl, "u|i", 3, 100));
    ratelimit_mark(rl, "u|ip", 4, 5000); /* marking again renews */
    assert_true(ratelimit_marked(rl, "u|ip", 4, 5999));
    ratelimit_free(rl);
}

static void test_client_key(void **state)
{
    (void)state;
    char b[RATELIMIT_CLIENT_KEY_MAX];
    assert_string_equal(ratelimit_client_key("203.0.113.9", 64, b), "203.0.113.9");
    assert_string_equal(ratelimit_client_key("2001:db8:1:2:aaaa::1", 64, b), "2001:db8:1:2::/64");
    assert_string_equal(ratelimit_client_key("2001:db8:1:2:ffff:1:2:3", 64, b),
                        "2001:db8:1:2::/64");
    assert_string_equal(ratelimit_client_key("2001:db8:1:2:ffff:1:2:3", 48, b), "2001:db8:1::/48");
    assert_string_equal(ratelimit_client_key("2001:db8::7", 128, b), "2001:db8::7/128");
    assert_string_equal(ratelimit_client_key("::ffff:192.0.2.1", 64, b), "192.0.2.1");
    assert_string_equal(ratelimit_client_key("not an ip", 64, b), "not an ip");
    assert_string_equal(ratelimit_client_key(NULL, 64, b), "");
}

static void test_eviction(void **state)
{
    (void)state;
    /* One set of four entries: every key shares it. */
    struct ratelimit *rl = ratelimit_new(10, 4);
    struct ratelimit_result r;
    const char *k[] = {"k1", "k2", "k3"};
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 10; i++)
            assert_true(take(rl, k[j], 0, &r));
    assert_true(take(rl, "k4", 10, &r)); /* 9 left; full again 6 s later */

    /* At +6.01 s a fifth key must take k4's entry (full: nothing to lose),
     * not the least recently used k1 (still limited). */
    assert_true(take(rl, "k5", 6010, &r));
    for (int j = 0; j < 3; j++) {
        assert_true(take(rl, k[j], 6010, &r)); /* the one token regained */
        assert_false(take(rl, k[j], 6010, &r));
    }

    /* With every entry limited, the least recently used goes: exhaust k5,
     * then k6 evicts k1 (last used at 6010 like k2, k3 but first in line)... */
    for (int i = 0; i < 10; i++)
        take(rl, "k5", 6020, &r);
    assert_false(take(rl, "k5", 6020, &r));
    assert_true(take(rl, "k6", 6030, &r));
    /* ...so k2, k3 and k5 are still limited, and k1 starts afresh (asked
     * last: its return evicts another entry). */
    assert_false(take(rl, "k2", 6030, &r));
    assert_false(take(rl, "k3", 6030, &r));
    assert_false(take(rl, "k5", 6030, &r));
    assert_true(take(rl, "k1", 6030, &r));
    assert_int_equal(r.remaining, 9);
    ratelimit_free(rl);
}

static void test_many_keys(void **state)
{
    (void)state;
    /* Far more keys than entries: memory stays fixed, nothing breaks, and
     * the most recently limited keys stay limited. */
    struct ratelimit *rl = ratelimit_new(5, 256);
    struct ratelimit_result r;
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "192.0.2.%d", i);
        take(rl, key, (uint64_t)i, &r);
    }
    for (int i = 0; i < 5; i++)
        assert_true(take(rl, "victim", 30000, &r));
    assert_false(take(rl, "victim", 30000, &r));
    assert_false(take(rl, "victim", 30001, &r));
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args),           cmocka_unit_test(test_burst_then_deny),
        cmocka_unit_test(test_partial_refill), cmocka_unit_test(test_clock_backwards),
        cmocka_unit_test(test_reset),          cmocka_unit_test(test_mark),
        cmocka_unit_test(test_client_key),     cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_many_keys),      cmocka_unit_test(test_period),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
