/* Unit tests of core/body's typed field readers and the display-name rule. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/body.h"

static json_t *obj(const char *text)
{
    json_t *o = json_loads(text, JSON_ALLOW_NUL, NULL);
    assert_non_null(o);
    return o;
}

/* The field of the only error, or NULL when there is none. */
static const char *only_error(json_t *errors)
{
    if (!errors)
        return NULL;
    assert_int_equal(json_array_size(errors), 1);
    return json_string_value(json_object_get(json_array_get(errors, 0), "field"));
}

static void test_string(void **state)
{
    (void)state;
    json_t *o = obj("{\"a\":\"héllo\",\"n\":null,\"i\":5,\"z\":\"a\\u0000b\",\"e\":\"\"}");
    json_t *errors = NULL;
    assert_string_equal(body_string(o, "a", true, 1, 5, NULL, &errors),
                        "héllo"); /* 5 code points */
    assert_null(body_string(o, "missing", false, 1, 5, NULL, &errors));
    assert_null(body_string(o, "n", false, 1, 5, NULL, &errors));
    assert_null(errors);
    const char *bad[] = {"missing", "n", "i", "z", "e"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errors = NULL;
        assert_null(body_string(o, bad[i], true, 1, 4, NULL, &errors));
        assert_string_equal(only_error(errors), bad[i]);
        json_decref(errors);
    }
    errors = NULL;
    assert_null(body_string(o, "a", true, 1, 4, NULL, &errors)); /* too long by one */
    assert_string_equal(only_error(errors), "a");
    json_decref(errors);
    json_decref(o);
}

static void test_int_bool_enum(void **state)
{
    (void)state;
    json_t *o =
        obj("{\"i\":7,\"f\":1.5,\"s\":\"7\",\"b\":true,\"n\":null,\"r\":\"admin\",\"x\":\"root\"}");
    json_t *errors = NULL;
    json_int_t v = -1;
    assert_int_equal(body_int(o, "i", true, 0, 9, NULL, &v, &errors), 1);
    assert_int_equal(v, 7);
    assert_int_equal(body_int(o, "n", false, 0, 9, NULL, &v, &errors), 0);
    assert_int_equal(v, 7); /* untouched */
    bool b = false;
    assert_int_equal(body_bool(o, "b", true, &b, &errors), 1);
    assert_true(b);
    static const char *const roles[] = {"admin", "member", NULL};
    assert_string_equal(body_enum(o, "r", true, roles, NULL, &errors), "admin");
    assert_null(errors);
    const char *bad_int[] = {"f", "s", "b"};
    for (size_t i = 0; i < 3; i++) {
        errors = NULL;
        assert_int_equal(body_int(o, bad_int[i], true, 0, 9, NULL, &v, &errors), -1);
        assert_string_equal(only_error(errors), bad_int[i]);
        json_decref(errors);
    }
    errors = NULL;
    assert_int_equal(body_int(o, "i", true, 0, 6, NULL, &v, &errors), -1); /* out of range */
    assert_int_equal(body_bool(o, "i", true, &b, &errors), -1);
    assert_null(body_enum(o, "x", true, roles, NULL, &errors));
    assert_null(body_enum(o, "n", true, roles, NULL, &errors)); /* null: "is required" */
    assert_int_equal(json_array_size(errors), 4);
    json_decref(errors);
    json_decref(o);
}

static void test_names(void **state)
{
    (void)state;
    const char *good[] = {"Ada", " Ada ", "Zoë Ünal", "x", "日本語の名前"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_null(body_name_problem(good[i]));
    char hundred[101], over[102];
    memset(hundred, 'n', 100);
    hundred[100] = '\0';
    memset(over, 'n', 101);
    over[101] = '\0';
    assert_null(body_name_problem(hundred));
    const char *bad[] = {"",          " ",       "     ",      "line\nbreak",
                         "tab\there", "del\x7f", "c1\xc2\x85", over};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_non_null(body_name_problem(bad[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_string),
        cmocka_unit_test(test_int_bool_enum),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
