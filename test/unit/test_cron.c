/* Five-field cron parsing (src/job/cron.c). The next-run arithmetic, with
 * its time zones and DST, is SQL (tenantd_cron_next) and is tested in
 * test/e2e/test_schedules.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "job/cron.h"

static void fields(const char *expr, const char *want[5])
{
    struct cron c;
    char err[128] = "", buf[256];
    assert_int_equal(cron_parse(expr, &c, err, sizeof err), 0);
    for (int i = 0; i < 5; i++) {
        cron_field_array(&c, i, buf, sizeof buf);
        assert_string_equal(buf, want[i]);
    }
}

static void test_valid(void **state)
{
    (void)state;
    fields("*/15 9-17 * * 1-5",
           (const char *[]){"{0,15,30,45}", "{9,10,11,12,13,14,15,16,17}",
                            "{1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,"
                            "26,27,28,29,30,31}",
                            "{1,2,3,4,5,6,7,8,9,10,11,12}", "{1,2,3,4,5}"});
    fields("0 0 1,15 */6 7", (const char *[]){"{0}", "{0}", "{1,15}", "{1,7}", "{0}"});
    fields(" 5  4-10/3 31 2 0,6 ", (const char *[]){"{5}", "{4,7,10}", "{31}", "{2}", "{0,6}"});
    struct cron c;
    char err[128];
    assert_int_equal(cron_parse("0 0 * * *", &c, err, sizeof err), 0);
    assert_true(c.dom_any && c.dow_any);
    assert_int_equal(cron_parse("0 0 1 * *", &c, err, sizeof err), 0);
    assert_true(!c.dom_any && c.dow_any);
}

static void test_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",           "* * * *",     "* * * * * *",  "60 * * * *",  "* 24 * * *",   "* * 0 * *",
        "* * * 13 *", "* * * * 8",   "5-1 * * * *",  "*/0 * * * *", "1, * * * *",   ",1 * * * *",
        "a * * * *",  "1-* * * * *", "0001 * * * *", "* * * JAN *", "1--2 * * * *", "*/ * * * *",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct cron c;
        char err[128] = "";
        if (cron_parse(bad[i], &c, err, sizeof err) != -1)
            fail_msg("accepted: '%s'", bad[i]);
        assert_true(err[0] != '\0');
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
