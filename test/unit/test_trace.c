/* W3C traceparent parsing (core/trace): a table of valid and malformed
 * values; every malformed one must be refused (a new trace starts). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "core/trace.h"

#define T "4bf92f3577b34da6a3ce929d0e0e4736"
#define P "00f067aa0ba902b7"

static void valid(void **state)
{
    (void)state;
    char id[TRACE_ID_HEX + 1], parent[TRACE_SPAN_HEX + 1];
    unsigned flags = 99;
    assert_true(trace_parse("00-" T "-" P "-01", id, parent, &flags));
    assert_string_equal(id, T);
    assert_string_equal(parent, P);
    assert_int_equal(flags, 1);
    assert_true(trace_parse("00-" T "-" P "-00", id, parent, &flags));
    assert_int_equal(flags, 0);
    /* A later version may carry more fields after a '-'. */
    assert_true(trace_parse("01-" T "-" P "-09-anything", id, parent, &flags));
    assert_int_equal(flags, 9);
    assert_true(trace_parse("fe-" T "-" P "-01", id, parent, &flags));
}

static void malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "00",
        "00-" T "-" P "-0",
        "00-" T "-" P "-011",
        "00-" T "-" P "-01-",
        "00-" T "-" P "-01-x",
        "01-" T "-" P "-01x",
        "ff-" T "-" P "-01",
        "00-00000000000000000000000000000000-" P "-01",
        "00-" T "-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" P "-01",
        "00-" T "-00F067AA0BA902B7-01",
        "00-" T "-" P "-0A",
        "0A-" T "-" P "-01",
        "00_" T "_" P "_01",
        "00-" T "x" P "-01",
        "00-" T "-" P "x01",
        "x0-" T "-" P "-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" P "-01",
        "00-" T "-00f067aa0ba902bz-01",
        "00-" T "-" P "-0g",
        " 00-" T "-" P "-01",
        "00-" T "-" P "-01 ",
        "00-4bf92f3577b34da6a3ce929d0e0e47-" P "-0100",
        NULL,
    };
    for (size_t i = 0; bad[i]; i++) {
        char id[TRACE_ID_HEX + 1], parent[TRACE_SPAN_HEX + 1];
        unsigned flags = 0;
        if (trace_parse(bad[i], id, parent, &flags))
            fail_msg("accepted: \"%s\"", bad[i]);
    }
    char id[TRACE_ID_HEX + 1], parent[TRACE_SPAN_HEX + 1];
    unsigned flags;
    assert_false(trace_parse(NULL, id, parent, &flags));
}

static void child_spans(void **state)
{
    (void)state;
    char a[TRACEPARENT_LEN + 1], b[TRACEPARENT_LEN + 1];
    trace_child(T, 1, a);
    trace_child(T, 1, b);
    char id[TRACE_ID_HEX + 1], pa[TRACE_SPAN_HEX + 1], pb[TRACE_SPAN_HEX + 1];
    unsigned fa, fb;
    assert_true(trace_parse(a, id, pa, &fa));
    assert_string_equal(id, T);
    assert_int_equal(fa, 1);
    assert_true(trace_parse(b, id, pb, &fb));
    assert_string_not_equal(pa, pb); /* a new span each time */
    assert_int_equal(strlen(a), TRACEPARENT_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid),
        cmocka_unit_test(malformed),
        cmocka_unit_test(child_spans),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
