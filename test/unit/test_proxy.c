/* Unit tests of core/proxy: TENANTD_TRUSTED_PROXIES parsing and the client
 * address taken from X-Forwarded-For only through trusted hops. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/arena.h"
#include "core/proxy.h"

/* The client address proxies_resolve gives a request from peer with the
 * given X-Forwarded-For header lines (NULL-terminated). */
static char result[64];
static const char *resolve(const char *peer, const char *const *xff)
{
    struct arena *a = arena_new();
    struct request *req = arena_calloc(a, sizeof *req);
    req->arena = a;
    req->client_ip = arena_strdup(a, peer);
    struct http_header hs[8];
    size_t n = 0;
    hs[n++] = (struct http_header){"Host", "x"};
    for (; xff && *xff; xff++)
        hs[n++] = (struct http_header){"X-Forwarded-For", *xff};
    hs[n++] = (struct http_header){"Accept", "*/*"};
    req->headers = hs;
    req->nheaders = n;
    proxies_resolve(req);
    strcpy(result, req->client_ip);
    arena_free(a);
    return result;
}

#define XFF(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_load_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",        " , ",         "10.0.0.0/33", "10.0.0.1/",  "10.0.0.1/x", "::1/129",
        "example", "10.0.0.256",  "10.0.0.0/8,", /* fine: trailing comma */
    };
    char why[128];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        bool ok = proxies_load(bad[i], why, sizeof why);
        if (strcmp(bad[i], "10.0.0.0/8,") == 0)
            assert_true(ok);
        else
            assert_false(ok);
    }
    assert_true(proxies_load("127.0.0.1, 10.0.0.0/8, fd00::/8, ::1", why, sizeof why));
}

static void test_untrusted_peer_keeps_its_address(void **state)
{
    (void)state;
    char why[128];
    assert_true(proxies_load("10.0.0.0/8", why, sizeof why));
    assert_string_equal(resolve("192.0.2.7", XFF("203.0.113.5")), "192.0.2.7");
    assert_string_equal(resolve("11.0.0.1", XFF("203.0.113.5")), "11.0.0.1");
}

static void test_trusted_peer(void **state)
{
    (void)state;
    char why[128];
    assert_true(proxies_load("10.0.0.0/8, 127.0.0.1, ::1", why, sizeof why));
    /* No header: the proxy itself. */
    assert_string_equal(resolve("10.1.2.3", NULL), "10.1.2.3");
    assert_string_equal(resolve("10.1.2.3", XFF("203.0.113.5")), "203.0.113.5");
    /* The rightmost untrusted entry: what the client wrote to the left is
     * not believed. */
    assert_string_equal(resolve("10.1.2.3", XFF("1.1.1.1, 203.0.113.5")), "203.0.113.5");
    assert_string_equal(resolve("10.1.2.3", XFF("1.1.1.1, 203.0.113.5, 10.9.9.9")),
                        "203.0.113.5");
    /* All trusted: the leftmost. */
    assert_string_equal(resolve("10.1.2.3", XFF("10.0.0.5, 10.0.0.6")), "10.0.0.5");
    /* Several header lines are one list, in order. */
    assert_string_equal(resolve("10.1.2.3", XFF("198.51.100.1", "10.0.0.7")), "198.51.100.1");
    assert_string_equal(resolve("10.1.2.3", XFF("10.0.0.7", "198.51.100.1")), "198.51.100.1");
    /* Ports, brackets, IPv6, spaces and empty entries. */
    assert_string_equal(resolve("10.1.2.3", XFF(" 203.0.113.5:4711 ,, ")), "203.0.113.5");
    assert_string_equal(resolve("::1", XFF("[2001:db8::7]:443")), "2001:db8::7");
    assert_string_equal(resolve("::1", XFF("2001:db8::8")), "2001:db8::8");
    assert_string_equal(resolve("::ffff:127.0.0.1", XFF("203.0.113.9")), "203.0.113.9");
    /* A malformed entry ends the walk at the last trusted hop. */
    assert_string_equal(resolve("10.1.2.3", XFF("203.0.113.5, garbage")), "10.1.2.3");
    assert_string_equal(resolve("10.1.2.3", XFF("garbage, 10.0.0.8")), "10.0.0.8");
    assert_string_equal(resolve("10.1.2.3", XFF("unknown")), "10.1.2.3");
}

static void test_cidr_edges(void **state)
{
    (void)state;
    char why[128];
    assert_true(proxies_load("192.168.4.0/22, 2001:db8:1::/48", why, sizeof why));
    assert_string_equal(resolve("192.168.7.255", XFF("203.0.113.1")), "203.0.113.1");
    assert_string_equal(resolve("192.168.8.0", XFF("203.0.113.1")), "192.168.8.0");
    assert_string_equal(resolve("192.168.3.255", XFF("203.0.113.1")), "192.168.3.255");
    assert_string_equal(resolve("2001:db8:1:ffff::1", XFF("203.0.113.2")), "203.0.113.2");
    assert_string_equal(resolve("2001:db8:2::1", XFF("203.0.113.2")), "2001:db8:2::1");
    assert_true(proxies_load("0.0.0.0/0", why, sizeof why));
    assert_string_equal(resolve("8.8.8.8", XFF("203.0.113.3")), "203.0.113.3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_rejects),
        cmocka_unit_test(test_untrusted_peer_keeps_its_address),
        cmocka_unit_test(test_trusted_peer),
        cmocka_unit_test(test_cidr_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
