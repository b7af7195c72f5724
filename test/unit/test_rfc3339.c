/* Unit tests of core/rfc3339: the one date-time check of client input
 * (job run_at, the audit log's ?since=, import times). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/rfc3339.h"

static void test_valid(void **state)
{
    (void)state;
    const char *good[] = {"2026-01-02T03:04:05Z",       "2026-01-02t03:04:05z",
                          "2026-01-02T03:04:05.5Z",     "2026-01-02T03:04:05.123456789Z",
                          "2024-02-29T00:00:00+02:00",  "1970-01-01T00:00:00-23:59",
                          "9999-12-31T23:59:59.999999Z"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(rfc3339_valid(good[i]));
}

static void test_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "yesterday",
        "epoch",
        "2026-01-02",
        "2026-01-02T03:04:05",  /* no offset */
        "2026-01-02 03:04:05Z", /* a space for T */
        "2026-02-30T00:00:00Z", /* no such day */
        "2025-02-29T00:00:00Z", /* not a leap year */
        "2026-13-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:60Z",
        "1969-12-31T23:59:59Z", /* before 1970 */
        "2026-01-02T03:04:05.Z",
        "2026-01-02T03:04:05.1234567890Z",
        "2026-01-02T03:04:05+24:00",
        "2026-01-02T03:04:05+0100",
        "2026-01-02T03:04:05Z; DROP",
        "+2026-01-02T03:04:05Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(rfc3339_valid(bad[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
