/* Unit tests of core/strbuf (the growing string of /docs, org pages and
 * start-up SQL) and core/digits (bounded decimal numbers: down N). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/digits.h"
#include "core/strbuf.h"

static void test_strbuf_grows_and_terminates(void **state)
{
    (void)state;
    struct strbuf b = {0};
    sb_puts(&b, "");
    assert_non_null(b.s);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.s, "");
    char chunk[100];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 50; i++) /* 5000 bytes: several doublings past 256 */
        sb_put(&b, chunk, sizeof chunk);
    sb_put(&b, "end\0ignored", 3);
    assert_int_equal(b.len, 5003);
    assert_true(b.cap > b.len);
    assert_int_equal(strlen(b.s), 5003);
    assert_memory_equal(b.s + 5000, "end", 4); /* with its NUL */
    free(b.s);
}

static void test_digits(void **state)
{
    (void)state;
    assert_int_equal(parse_digits("0", 3), 0);
    assert_int_equal(parse_digits("20", 3), 20);
    assert_int_equal(parse_digits("100", 3), 100);
    assert_int_equal(parse_digits("007", 3), 7);
    assert_int_equal(parse_digits("10000", 5), 10000);
    /* Refused: empty, too many digits (leading zeros count), a sign, space,
     * anything else. */
    const char *bad[] = {"", "1000", "0001", "+5", "-5", " 5", "5 ", "5a", "0x1", "1e2", "٣"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(parse_digits(bad[i], 3), -1);
    assert_int_equal(parse_digits("999999999", 9), 999999999);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strbuf_grows_and_terminates),
        cmocka_unit_test(test_digits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
