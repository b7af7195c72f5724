/* Problem bodies follow RFC 9457 and the codes of the problem table (core/problem.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "core/problem.h"

static void table_matches_api(void **state)
{
    (void)state;
    assert_int_equal(problem_status(PROBLEM_VALIDATION_FAILED), 422);
    assert_string_equal(problem_code(PROBLEM_VALIDATION_FAILED), "validation_failed");
    assert_int_equal(problem_status(PROBLEM_HEADERS_TOO_LARGE), 431);
    assert_int_equal(problem_status(PROBLEM_PAYMENT_REQUIRED), 402);
    assert_string_equal(problem_code(PROBLEM_RATE_LIMITED), "rate_limited");
    /* Every code is distinct and every status is a 4xx/5xx. */
    for (int i = 0; i < PROBLEM__COUNT; i++) {
        assert_true(problem_status(i) >= 400 && problem_status(i) < 600);
        for (int j = i + 1; j < PROBLEM__COUNT; j++)
            assert_true(strcmp(problem_code(i), problem_code(j)) != 0);
    }
}

static void body_fields(void **state)
{
    (void)state;
    json_t *b = problem_body(PROBLEM_NOT_FOUND, "No such user.", "req-1", NULL);
    assert_string_equal(json_string_value(json_object_get(b, "type")),
                        "https://tenantd.dev/problems/not_found");
    assert_string_equal(json_string_value(json_object_get(b, "title")), "Not Found");
    assert_int_equal(json_integer_value(json_object_get(b, "status")), 404);
    assert_string_equal(json_string_value(json_object_get(b, "detail")), "No such user.");
    assert_string_equal(json_string_value(json_object_get(b, "code")), "not_found");
    assert_string_equal(json_string_value(json_object_get(b, "request_id")), "req-1");
    assert_null(json_object_get(b, "errors"));
    json_decref(b);
}

static void errors_list(void **state)
{
    (void)state;
    json_t *errors = NULL;
    problem_add_error(&errors, "email", "must be a valid email");
    problem_add_error(&errors, "password", "must be 8 to 1024 bytes");
    json_t *b = problem_body(PROBLEM_VALIDATION_FAILED, NULL, NULL, errors);
    json_t *e = json_object_get(b, "errors");
    assert_int_equal(json_array_size(e), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(e, 0), "field")), "email");
    assert_null(json_object_get(b, "request_id"));
    json_decref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table_matches_api),
        cmocka_unit_test(body_fields),
        cmocka_unit_test(errors_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
