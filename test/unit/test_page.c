/* Unit tests of core/page (the one ?limit= rule and the one cursor codec of
 * every list) and core/b64url under it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/arena.h"
#include "core/b64url.h"
#include "core/page.h"

static void test_limit(void **state)
{
    (void)state;
    assert_int_equal(page_limit_parse(NULL, 20, 100), 20);
    assert_int_equal(page_limit_parse("1", 20, 100), 1);
    assert_int_equal(page_limit_parse("100", 20, 100), 100);
    assert_int_equal(page_limit_parse("200", 50, 200), 200);
    /* Refused: empty, zero, over max, a sign, a space, a leading zero, a
     * fraction, trailing text, and digits enough to overflow an int. */
    const char *bad[] = {"",   "0",   "101", "1000", "+5",  "-1",  " 5",   "5 ",
                         "05", "005", "1.5", "05x",  "abc", "1e2", "0x10", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(page_limit_parse(bad[i], 20, 100), -1);
    assert_int_equal(page_limit_parse("101", 50, 200), 101);
}

static void test_cursor_shapes(void **state)
{
    (void)state;
    struct arena *a = arena_new();
    const char *seq = page_cursor(a, PAGE_KEY_SEQ, "12345");
    assert_non_null(seq);
    unsigned char raw[64];
    int n = b64url_decode(seq, strlen(seq), raw, sizeof raw);
    assert_int_equal(n, 5);
    assert_memory_equal(raw, "12345", 5);
    assert_non_null(page_cursor(a, PAGE_KEY_SEQ, "9223372036854775807"));
    const char *bad_seq[] = {
        "", "0", "012", "-1", "12a", "9223372036854775808", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_seq / sizeof bad_seq[0]; i++)
        assert_null(page_cursor(a, PAGE_KEY_SEQ, bad_seq[i]));

    const char *good = "2026-01-02T03:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11";
    const char *c = page_cursor(a, PAGE_KEY_TIME_ID, good);
    assert_non_null(c);
    n = b64url_decode(c, strlen(c), raw, sizeof raw);
    assert_int_equal(n, (int)strlen(good));
    assert_memory_equal(raw, good, strlen(good));
    const char *bad_time[] = {
        "2026-13-02T03:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11",  /* month 13 */
        "2026-01-32T03:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11",  /* day 32 */
        "2026-01-02T24:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11",  /* hour 24 */
        "2026-01-02T03:04:05.12345Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11",   /* short */
        "2026-01-02T03:04:05.123456Z 0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11",  /* no '|' */
        "2026-01-02T03:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e1g",  /* not hex */
        "2026-01-02T03:04:05.123456Z|0b6c3c57-4a8f-4c27-9d2c-6a4f7f2b1e11'", /* long */
        "12345",
    };
    for (size_t i = 0; i < sizeof bad_time / sizeof bad_time[0]; i++)
        assert_null(page_cursor(a, PAGE_KEY_TIME_ID, bad_time[i]));
    arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_cursor_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
