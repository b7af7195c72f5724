/* Unit tests of webhook.deliver's address and allow-list rules (job/httpclient.c and
 * job/webhook.c, SECURITY.md 10.6): which resolved addresses count as public, and which
 * ports an allow-list entry allows. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "core/config.h"
#include "job/internal.h"

static bool public4(const char *ip)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    return job_addr_public((const struct sockaddr *)&sa);
}

static bool public6(const char *ip)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
    return job_addr_public((const struct sockaddr *)&sa);
}

static void test_ipv4(void **state)
{
    (void)state;
    const char *refused[] = {
        "0.0.0.0",   "10.1.2.3",        "100.64.0.1", "100.127.255.255", "127.0.0.1",
        "127.1.2.3", "169.254.169.254", "172.16.0.1", "172.31.255.255",  "192.0.0.8",
        "192.0.2.1", "192.168.1.1",     "198.18.0.1", "198.51.100.7",    "203.0.113.9",
        "224.0.0.1", "239.255.255.250", "240.0.0.1",  "255.255.255.255"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        assert_false(public4(refused[i]));
    const char *allowed[] = {"1.1.1.1",        "8.8.8.8",    "100.63.255.255", "100.128.0.1",
                             "172.15.255.255", "172.32.0.1", "192.169.0.1",    "93.184.216.34"};
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        assert_true(public4(allowed[i]));
}

static void test_ipv6(void **state)
{
    (void)state;
    const char *refused[] = {"::",
                             "::1",
                             "::ffff:127.0.0.1",
                             "::ffff:8.8.8.8",
                             "64:ff9b::a00:1",
                             "fc00::1",
                             "fd12:3456::1",
                             "fe80::1",
                             "fec0::1",
                             "ff02::1",
                             "2001:db8::1",
                             "2001:0:4136::1",
                             "2002:7f00:1::1",
                             "100::1"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        assert_false(public6(refused[i]));
    assert_true(public6("2606:4700:4700::1111"));
    assert_true(public6("2a00:1450:4001:800::200e"));
}

static void test_allow_list_ports(void **state)
{
    (void)state;
    static struct config cfg;
    cfg.webhook_allow = "hooks.example.com, api.example.org:8443,bad.example:x, 127.0.0.1";
    g_config = &cfg;
    /* A bare entry: the web's ports only. */
    assert_true(job_webhook_allowed("hooks.example.com", 443));
    assert_true(job_webhook_allowed("HOOKS.example.com", 80));
    assert_false(job_webhook_allowed("hooks.example.com", 22));
    assert_false(job_webhook_allowed("hooks.example.com", 8443));
    assert_true(job_webhook_allowed("127.0.0.1", 80));
    assert_false(job_webhook_allowed("127.0.0.1", 5432));
    /* An entry with a port: that port only. */
    assert_true(job_webhook_allowed("api.example.org", 8443));
    assert_false(job_webhook_allowed("api.example.org", 443));
    /* A malformed port allows nothing. */
    assert_false(job_webhook_allowed("bad.example", 443));
    assert_false(job_webhook_allowed("other.example", 443));
    g_config = NULL;
    assert_false(job_webhook_allowed("hooks.example.com", 443));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_allow_list_ports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
