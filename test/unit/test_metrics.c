/* Metrics: observations on several loops render as summed Prometheus text. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"

/* The registry is process-wide, so each test uses its own route strings. */

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_render(&len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    return s;
}

static void assert_has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    fail_msg("missing line:\n%s\nin:\n%s", line, text);
}

static void assert_no_substring(const char *text, const char *s)
{
    if (strstr(text, s))
        fail_msg("unexpected \"%s\" in:\n%s", s, text);
}

static void test_requests_and_histogram(void **state)
{
    (void)state;
    static const char route[] = "/v1/things/{id}";
    struct metrics *a = metrics_new(0), *b = metrics_new(1);
    metrics_request(a, route, "GET", 200, 0.0003);
    metrics_request(a, route, "GET", 200, 0.003);
    metrics_request(b, route, "GET", 200, 0.2);
    metrics_request(b, route, "GET", 404, 20.0);
    /* A method string at another address is the same series. */
    char post[] = "POST";
    metrics_request(a, route, post, 201, 0.001);
    char *s = render();
    assert_has_line(s, "# TYPE tenantd_http_requests_total counter");
    assert_has_line(s, "# TYPE tenantd_http_request_duration_seconds histogram");
    assert_has_line(s, "tenantd_http_requests_total{route=\"/v1/things/{id}\",method=\"GET\","
                       "status=\"200\"} 3");
    assert_has_line(s, "tenantd_http_requests_total{route=\"/v1/things/{id}\",method=\"GET\","
                       "status=\"404\"} 1");
    assert_has_line(s, "tenantd_http_requests_total{route=\"/v1/things/{id}\",method=\"POST\","
                       "status=\"201\"} 1");
    const char *h = "tenantd_http_request_duration_seconds";
    char line[256];
    struct {
        const char *le;
        int count;
    } want[] = {{"0.0005", 1}, {"0.001", 2}, {"0.0025", 2}, {"0.005", 3},
                {"0.1", 3},    {"0.25", 4},  {"10", 4},     {"+Inf", 5}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "%s_bucket{route=\"/v1/things/{id}\",le=\"%s\"} %d", h,
                 want[i].le, want[i].count);
        assert_has_line(s, line);
    }
    snprintf(line, sizeof line, "%s_count{route=\"/v1/things/{id}\"} 5", h);
    assert_has_line(s, line);
    snprintf(line, sizeof line, "%s_sum{route=\"/v1/things/{id}\"} 20.204300000", h);
    assert_has_line(s, line);
    free(s);
}

static void test_gauges_sum_over_loops(void **state)
{
    (void)state;
    /* Earlier tests registered loops too: measure differences. */
    struct metrics *a = metrics_new(0), *b = metrics_new(1);
    metrics_conn_open(a, +1);
    metrics_conn_open(a, +1);
    metrics_conn_open(b, +1);
    metrics_conn_open(a, -1);
    metrics_pool(a, 2, 1, 0);
    metrics_pool(b, 1, 3, 4);
    metrics_pool(b, 1, 2, 5); /* a gauge is set, not added */
    metrics_pool_schema_switch(a);
    metrics_pool_schema_switch(b);
    metrics_db_reconnect(b);
    char *s = render();
    assert_has_line(s, "# TYPE tenantd_http_connections_open gauge");
    assert_has_line(s, "tenantd_http_connections_open 2");
    assert_has_line(s, "# TYPE tenantd_db_pool_connections gauge");
    assert_has_line(s, "tenantd_db_pool_connections{state=\"in_use\"} 3");
    assert_has_line(s, "tenantd_db_pool_connections{state=\"idle\"} 3");
    assert_has_line(s, "# TYPE tenantd_db_pool_waiting gauge");
    assert_has_line(s, "tenantd_db_pool_waiting 5");
    assert_has_line(s, "# TYPE tenantd_db_schema_switches_total counter");
    assert_has_line(s, "tenantd_db_schema_switches_total 2");
    assert_has_line(s, "# TYPE tenantd_db_reconnects_total counter");
    assert_has_line(s, "tenantd_db_reconnects_total 1");
    assert_non_null(strstr(s, "# HELP tenantd_db_reconnects_total "));
    free(s);
    /* Leave the gauges as found for other tests. */
    metrics_conn_open(a, -1);
    metrics_conn_open(b, -1);
    metrics_pool(a, 0, 0, 0);
    metrics_pool(b, 0, 0, 0);
}

static void test_null_metrics_is_noop(void **state)
{
    (void)state;
    metrics_request(NULL, "/null-route", "GET", 200, 0.1);
    metrics_conn_open(NULL, 1);
    metrics_pool(NULL, 1, 2, 3);
    metrics_pool_schema_switch(NULL);
    metrics_db_reconnect(NULL);
    char *s = render();
    assert_no_substring(s, "/null-route");
    free(s);
}

static void test_label_escaping(void **state)
{
    (void)state;
    static const char route[] = "/odd\"route\\with\nnewline";
    struct metrics *m = metrics_new(7);
    metrics_request(m, route, "DELETE", 204, 0.01);
    metrics_request(m, NULL, "BREW", 404, 0.01); /* unknown method, no route */
    char *s = render();
    assert_has_line(s, "tenantd_http_requests_total{route=\"/odd\\\"route\\\\with\\nnewline\","
                       "method=\"DELETE\",status=\"204\"} 1");
    assert_has_line(s, "tenantd_http_requests_total{route=\"unmatched\",method=\"other\","
                       "status=\"404\"} 1");
    free(s);
}

static void test_overflow_goes_to_other(void **state)
{
    (void)state;
    /* More distinct keys than a loop's table holds: nothing is lost, the
     * excess lands in the "other" series, and the table never grows. */
    enum { N = 3000 };
    static char routes[N][16];
    struct metrics *m = metrics_new(9);
    for (int i = 0; i < N; i++) {
        snprintf(routes[i], sizeof routes[i], "/r%d", i);
        metrics_request(m, routes[i], "GET", 200, 0.001);
    }
    char *s = render();
    unsigned long long total = 0, other = 0;
    unsigned long long hist_total = 0;
    for (const char *p = s; *p;) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        unsigned long long v;
        char route[64];
        if (sscanf(p,
                   "tenantd_http_requests_total{route=\"%63[^\"]\",method=\"GET\",status=\"200\"} "
                   "%llu",
                   route, &v) == 2 &&
            route[0] == '/' && route[1] == 'r')
            total += v;
        if (sscanf(p,
                   "tenantd_http_requests_total{route=\"other\",method=\"other\",status=\"other\"} "
                   "%llu",
                   &v) == 1) {
            total += v;
            other += v;
        }
        if (sscanf(p, "tenantd_http_request_duration_seconds_count{route=\"%63[^\"]\"} %llu", route,
                   &v) == 2 &&
            ((route[0] == '/' && route[1] == 'r') || strcmp(route, "other") == 0))
            hist_total += v;
        p = nl + 1;
    }
    assert_int_equal(total, N);
    assert_true(other > 0);
    assert_int_equal(hist_total, N);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_and_histogram), cmocka_unit_test(test_gauges_sum_over_loops),
        cmocka_unit_test(test_null_metrics_is_noop),   cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_overflow_goes_to_other),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
