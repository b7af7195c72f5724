/* The request helpers of core/http.c: header, path parameter and query
 * lookups, response headers, reason phrases. (Responses themselves go over
 * a socket: test/e2e/test_http.py.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "core/http.h"

static struct request *new_req(void)
{
    struct arena *a = arena_new();
    struct request *req = arena_calloc(a, sizeof *req);
    req->arena = a;
    return req;
}

static void free_req(struct request *req)
{
    arena_free(req->arena);
}

static void header_lookup_is_case_insensitive_first_wins(void **state)
{
    (void)state;
    struct request *req = new_req();
    static struct http_header h[] = {
        {"Content-Type", "application/json"},
        {"X-Dup", "first"},
        {"x-dup", "second"},
    };
    req->headers = h;
    req->nheaders = 3;
    assert_string_equal(http_header(req, "content-type"), "application/json");
    assert_string_equal(http_header(req, "CONTENT-TYPE"), "application/json");
    assert_string_equal(http_header(req, "X-DUP"), "first");
    assert_null(http_header(req, "Content"));
    assert_null(http_header(req, "Authorization"));
    free_req(req);
}

static void param_lookup(void **state)
{
    (void)state;
    struct request *req = new_req();
    req->params[0] = (struct path_param){"id", "42"};
    req->params[1] = (struct path_param){"slug", "acme"};
    req->nparams = 2;
    assert_string_equal(http_param(req, "id"), "42");
    assert_string_equal(http_param(req, "slug"), "acme");
    assert_null(http_param(req, "ID"));
    assert_null(http_param(req, "other"));
    free_req(req);
}

static void query_decoding(void **state)
{
    (void)state;
    struct request *req = new_req();
    assert_null(http_query(req, "a")); /* no query at all */
    req->query = "a=1&b=hello+world&c=%41%42%e2%82%ac&d&e=&f=%zz&g=%00x&h=%4&a=2&s%20p=yes"
                 "&i=x%3Dy%26z&=empty";
    assert_string_equal(http_query(req, "a"), "1"); /* the first one wins */
    assert_string_equal(http_query(req, "b"), "hello world");
    assert_string_equal(http_query(req, "c"), "AB\xe2\x82\xac");
    assert_string_equal(http_query(req, "d"), ""); /* present without '=' */
    assert_string_equal(http_query(req, "e"), "");
    assert_string_equal(http_query(req, "f"), "%zz");  /* bad escapes stay literal */
    assert_string_equal(http_query(req, "g"), "%00x"); /* never a hidden NUL */
    assert_string_equal(http_query(req, "h"), "%4");
    assert_string_equal(http_query(req, "s p"), "yes"); /* names are decoded too */
    assert_string_equal(http_query(req, "i"), "x=y&z");
    assert_null(http_query(req, "missing"));
    assert_null(http_query(req, "A"));
    req->query = "";
    assert_null(http_query(req, "a"));
    req->query = "&&a=1&";
    assert_string_equal(http_query(req, "a"), "1");
    free_req(req);
}

static void set_header_keeps_order_and_drops_unsafe(void **state)
{
    (void)state;
    struct request *req = new_req();
    char value[] = "GET, HEAD";
    http_set_header(req, "Allow", value);
    value[0] = 'X'; /* copied, not borrowed */
    assert_string_equal(value, "XET, HEAD");
    http_set_header(req, "X-Split", "a\r\nSet-Cookie: evil=1");
    http_set_header(req, "Bad Name", "v");
    http_set_header(req, "", "v");
    http_set_header(req, "ETag", "\"v1\"");
    struct http_out_header *h = req->out_headers;
    assert_non_null(h);
    assert_string_equal(h->name, "Allow");
    assert_string_equal(h->value, "GET, HEAD");
    h = h->next;
    assert_non_null(h);
    assert_string_equal(h->name, "ETag");
    assert_string_equal(h->value, "\"v1\"");
    assert_null(h->next);
    free_req(req);
}

static void reason_phrases(void **state)
{
    (void)state;
    assert_string_equal(http_status_text(200), "OK");
    assert_string_equal(http_status_text(201), "Created");
    assert_string_equal(http_status_text(204), "No Content");
    assert_string_equal(http_status_text(404), "Not Found");
    assert_string_equal(http_status_text(405), "Method Not Allowed");
    assert_string_equal(http_status_text(422), "Unprocessable Content");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(503), "Service Unavailable");
    assert_string_equal(http_status_text(299), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(header_lookup_is_case_insensitive_first_wins),
        cmocka_unit_test(param_lookup),
        cmocka_unit_test(query_decoding),
        cmocka_unit_test(set_header_keeps_order_and_drops_unsafe),
        cmocka_unit_test(reason_phrases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
