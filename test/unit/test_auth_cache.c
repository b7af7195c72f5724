/* Unit tests of auth/cache (the table, not the listener): hits and misses,
 * invalidation by notification payload, the epoch guard against filling a
 * row loaded before an invalidation, and "not live" meaning no hits. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "auth/cache.h"

#define ORG "11111111-1111-4111-8111-111111111111"
#define USER "22222222-2222-4222-8222-222222222222"

static int live(void **state)
{
    (void)state;
    cache_set_live_for_test(true);
    return 0;
}

static int dead(void **state)
{
    (void)state;
    cache_set_live_for_test(false);
    return 0;
}

static void test_put_get(void **state)
{
    (void)state;
    struct cache_org o = {.status = ORG_SUSPENDED}, got;
    snprintf(o.schema, sizeof o.schema, "tenant_abc");
    snprintf(o.slug, sizeof o.slug, "acme");
    assert_false(cache_get_org(ORG, &got));
    cache_put_org(ORG, &o, cache_epoch());
    assert_true(cache_get_org(ORG, &got));
    assert_int_equal(got.status, ORG_SUSPENDED);
    assert_string_equal(got.schema, "tenant_abc");
    assert_string_equal(got.slug, "acme");

    struct cache_user u = {.role = ROLE_ADMIN, .token_version = 7}, gu;
    snprintf(u.org_id, sizeof u.org_id, "%s", ORG);
    cache_put_user(USER, &u, cache_epoch());
    assert_true(cache_get_user(USER, &gu));
    assert_int_equal(gu.token_version, 7);
    assert_int_equal(gu.role, ROLE_ADMIN);
    /* Same id, other kind: no confusion between tables. */
    assert_false(cache_get_org(USER, &got));

    struct cache_key k = {.role = ROLE_MEMBER, .revoked = false}, gk;
    snprintf(k.key_hash, sizeof k.key_hash, "%064d", 0);
    cache_put_key("abcd1234", &k, cache_epoch());
    assert_true(cache_get_key("abcd1234", &gk));
    assert_int_equal(gk.role, ROLE_MEMBER);
    assert_false(cache_get_key("abcd1235", &gk));

    /* Overwrite keeps one entry with the newest value. */
    u.token_version = 8;
    cache_put_user(USER, &u, cache_epoch());
    assert_true(cache_get_user(USER, &gu));
    assert_int_equal(gu.token_version, 8);
}

static void test_invalidate_by_payload(void **state)
{
    (void)state;
    struct cache_org o = {.status = ORG_ACTIVE}, got;
    struct cache_user u = {.token_version = 1}, gu;
    struct cache_key k = {0}, gk;
    cache_put_org(ORG, &o, cache_epoch());
    cache_put_user(USER, &u, cache_epoch());
    cache_put_key("zzzz9999", &k, cache_epoch());
    cache_invalidate("user:" USER);
    assert_false(cache_get_user(USER, &gu));
    assert_true(cache_get_org(ORG, &got));
    cache_invalidate("org:" ORG);
    assert_false(cache_get_org(ORG, &got));
    cache_invalidate("key:zzzz9999");
    assert_false(cache_get_key("zzzz9999", &gk));
    /* Junk payloads are harmless. */
    cache_invalidate("");
    cache_invalidate("org:");
    char big[512];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cache_invalidate(big);
    /* The public forget calls map to the same keys. */
    cache_put_user(USER, &u, cache_epoch());
    auth_cache_forget_user(USER);
    assert_false(cache_get_user(USER, &gu));
    cache_put_org(ORG, &o, cache_epoch());
    auth_cache_forget_org(ORG);
    assert_false(cache_get_org(ORG, &got));
    cache_put_key("zzzz9999", &k, cache_epoch());
    auth_cache_forget_key("zzzz9999");
    assert_false(cache_get_key("zzzz9999", &gk));
}

static void test_epoch_guard(void **state)
{
    (void)state;
    struct cache_user u = {.token_version = 1}, gu;
    /* A load starts, the row changes and is notified, the load ends: the
     * stale row must not be cached. */
    uint64_t before = cache_epoch();
    cache_invalidate("user:" USER);
    cache_put_user(USER, &u, before);
    assert_false(cache_get_user(USER, &gu));
    /* The next load, started after the invalidation, fills. */
    cache_put_user(USER, &u, cache_epoch());
    assert_true(cache_get_user(USER, &gu));
}

static void test_not_live_serves_nothing(void **state)
{
    (void)state;
    struct cache_user u = {.token_version = 1}, gu;
    cache_put_user(USER, &u, cache_epoch());
    assert_true(cache_get_user(USER, &gu));
    cache_set_live_for_test(false); /* listener lost: entries may be stale */
    assert_false(cache_get_user(USER, &gu));
    cache_put_user(USER, &u, cache_epoch());
    cache_set_live_for_test(true); /* going live starts empty */
    assert_false(cache_get_user(USER, &gu));
}

static void test_many_entries(void **state)
{
    (void)state;
    char id[40];
    struct cache_user u = {0}, gu;
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "%08d-0000-4000-8000-000000000000", i);
        u.token_version = i;
        cache_put_user(id, &u, cache_epoch());
    }
    for (int i = 0; i < 20000; i += 997) {
        snprintf(id, sizeof id, "%08d-0000-4000-8000-000000000000", i);
        assert_true(cache_get_user(id, &gu));
        assert_int_equal(gu.token_version, i);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get, live, dead),
        cmocka_unit_test_setup_teardown(test_invalidate_by_payload, live, dead),
        cmocka_unit_test_setup_teardown(test_epoch_guard, live, dead),
        cmocka_unit_test_setup_teardown(test_not_live_serves_nothing, live, dead),
        cmocka_unit_test_setup_teardown(test_many_entries, live, dead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
