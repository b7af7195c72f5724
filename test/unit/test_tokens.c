/* Unit tests of auth/tokens: base64url, random tokens, API keys, SHA-256,
 * constant-time equality, UUIDs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "auth/tokens.h"

static void test_b64url_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10, without padding. */
    static const struct {
        const char *in, *out;
    } v[] = {{"", ""},           {"f", "Zg"},          {"fo", "Zm8"},         {"foo", "Zm9v"},
             {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char out[16];
        unsigned char back[16];
        size_t n = strlen(v[i].in);
        assert_int_equal(token_b64url_encode(v[i].in, n, out, sizeof out), (int)strlen(v[i].out));
        assert_string_equal(out, v[i].out);
        assert_int_equal(token_b64url_decode(out, strlen(out), back, sizeof back), (int)n);
        assert_memory_equal(back, v[i].in, n);
    }
    /* The URL-safe alphabet: 0xfb 0xff is "+/8" in standard base64. */
    const unsigned char b[] = {0xfb, 0xff};
    char out[8];
    assert_int_equal(token_b64url_encode(b, 2, out, sizeof out), 3);
    assert_string_equal(out, "-_8");
    /* Too small an output buffer. */
    assert_int_equal(token_b64url_encode("foo", 3, out, 4), -1);
}

static void test_b64url_strict(void **state)
{
    (void)state;
    unsigned char buf[64];
    static const char *const bad[] = {
        "Zg==",    /* padding */
        "Zm9v=",   /* padding */
        "Zm+v",    /* standard alphabet */
        "Zm/v",    /* standard alphabet */
        "Zm9 v",   /* whitespace */
        "Z",       /* length 1 mod 4 */
        "Zh",      /* non-canonical: low bits set */
        "Zm9",     /* non-canonical: "Zm8" is the only encoding of "fo" */
        "Zm\x80v", /* non-ASCII */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(token_b64url_decode(bad[i], strlen(bad[i]), buf, sizeof buf), -1);
    /* An embedded NUL is not base64url either. */
    assert_int_equal(token_b64url_decode("Zm\0v", 4, buf, sizeof buf), -1);
    /* Output too small. */
    assert_int_equal(token_b64url_decode("Zm9vYmFy", 8, buf, 5), -1);
    assert_int_equal(token_b64url_decode("Zm9vYmFy", 8, buf, 6), 6);
}

static void test_random_b64url(void **state)
{
    (void)state;
    char a[64], b[64];
    assert_int_equal(token_random_b64url(32, a, sizeof a), 43);
    assert_int_equal(token_random_b64url(32, b, sizeof b), 43);
    assert_string_not_equal(a, b);
    assert_int_equal(token_random_b64url(32, a, 43), -1); /* no room for the NUL */
    assert_int_equal(token_random_b64url(0, a, sizeof a), -1);
}

static void test_refresh_tokens(void **state)
{
    (void)state;
    char t[TOKEN_REFRESH_BUFSZ], u[TOKEN_REFRESH_BUFSZ];
    assert_int_equal(token_refresh_new(t), 0);
    assert_int_equal(token_refresh_new(u), 0);
    assert_int_equal(strlen(t), TOKEN_REFRESH_LEN);
    assert_memory_equal(t, "tdr_", 4);
    assert_string_not_equal(t, u);
    assert_true(token_refresh_valid(t, strlen(t)));

    char bad[TOKEN_REFRESH_BUFSZ + 1];
    memcpy(bad, t, sizeof t);
    bad[0] = 'x'; /* wrong prefix */
    assert_false(token_refresh_valid(bad, strlen(bad)));
    memcpy(bad, t, sizeof t);
    bad[10] = '='; /* not base64url */
    assert_false(token_refresh_valid(bad, strlen(bad)));
    assert_false(token_refresh_valid(t, TOKEN_REFRESH_LEN - 1)); /* truncated */
    memcpy(bad, t, sizeof t);
    bad[TOKEN_REFRESH_LEN] = 'A'; /* one too long */
    bad[TOKEN_REFRESH_LEN + 1] = '\0';
    assert_false(token_refresh_valid(bad, strlen(bad)));
    assert_false(token_refresh_valid("", 0));
}

static void test_api_keys(void **state)
{
    (void)state;
    char key[TOKEN_API_KEY_BUFSZ], prefix[TOKEN_API_KEY_PREFIX_LEN + 1];
    char parsed[TOKEN_API_KEY_PREFIX_LEN + 1];
    assert_int_equal(token_api_key_new(key, prefix), 0);
    assert_int_equal(strlen(key), TOKEN_API_KEY_LEN);
    assert_memory_equal(key, "tdk_", 4);
    assert_int_equal(strlen(prefix), 8);
    assert_memory_equal(key + 4, prefix, 8);
    assert_int_equal(key[12], '_');
    assert_true(token_is_api_key(key, strlen(key)));
    assert_int_equal(token_api_key_parse(key, strlen(key), parsed), 0);
    assert_string_equal(parsed, prefix);

    char other[TOKEN_API_KEY_BUFSZ], op[9];
    assert_int_equal(token_api_key_new(other, op), 0);
    assert_string_not_equal(key, other);

    /* Each malformation in turn is refused, and the prefix left empty. */
    static const struct {
        size_t pos;
        char c;
    } flips[] = {
        {0, 'x'},  /* "xdk_" */
        {3, '-'},  /* "tdk-" */
        {4, 'A'},  /* prefix is lowercase base36 */
        {11, '_'}, /* prefix char */
        {12, 'a'}, /* separator */
        {20, '-'}, /* secret is base62 */
        {55, '_'}, /* last secret char */
        {30, '='},
    };
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        char bad[TOKEN_API_KEY_BUFSZ];
        memcpy(bad, key, sizeof bad);
        bad[flips[i].pos] = flips[i].c;
        strcpy(parsed, "junk");
        assert_int_equal(token_api_key_parse(bad, strlen(bad), parsed), -1);
        assert_string_equal(parsed, "");
    }
    assert_int_equal(token_api_key_parse(key, TOKEN_API_KEY_LEN - 1, parsed), -1);
    char longer[TOKEN_API_KEY_BUFSZ + 1];
    memcpy(longer, key, TOKEN_API_KEY_LEN);
    longer[TOKEN_API_KEY_LEN] = 'a';
    longer[TOKEN_API_KEY_LEN + 1] = '\0';
    assert_int_equal(token_api_key_parse(longer, strlen(longer), parsed), -1);
    assert_int_equal(token_api_key_parse("", 0, parsed), -1);
    assert_int_equal(token_api_key_parse("tdk_", 4, parsed), -1);
    assert_false(token_is_api_key("eyJhbGciOi", 10));
    assert_false(token_is_api_key("tdk", 3));
}

static void test_sha256_hex(void **state)
{
    (void)state;
    char out[TOKEN_SHA256_HEX_BUFSZ];
    token_sha256_hex("", 0, out);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    token_sha256_hex("abc", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* FIPS 180-2 two-block vector. */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    token_sha256_hex(m, strlen(m), out);
    assert_string_equal(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_equal(void **state)
{
    (void)state;
    assert_true(token_equal("abc", 3, "abc", 3));
    assert_false(token_equal("abc", 3, "abd", 3));
    assert_false(token_equal("abc", 3, "abcd", 4));
    assert_false(token_equal("abc", 3, "ab", 2));
    assert_true(token_equal("", 0, "", 0));
    assert_false(token_equal("\0\0", 2, "\0\1", 2));
}

static void test_uuid(void **state)
{
    (void)state;
    char a[TOKEN_UUID_BUFSZ], b[TOKEN_UUID_BUFSZ];
    assert_int_equal(token_uuid_v4(a), 0);
    assert_int_equal(token_uuid_v4(b), 0);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    assert_true(token_uuid_valid(a, 36));
    assert_int_equal(a[14], '4');           /* version */
    assert_non_null(strchr("89ab", a[19])); /* variant */
    for (int i = 0; i < 36; i++)
        assert_true(a[i] == '-' || (a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'));

    assert_true(token_uuid_valid("123E4567-E89B-12D3-A456-426614174000", 36));
    assert_false(token_uuid_valid("123e4567-e89b-12d3-a456-42661417400", 35));
    assert_false(token_uuid_valid("123e4567e89b-12d3-a456-4266141740000", 36));
    assert_false(token_uuid_valid("123e4567-e89b-12d3-a456-42661417400g", 36));
    assert_false(token_uuid_valid("' OR 1=1 --", 11));
}

static void test_bearer(void **state)
{
    (void)state;
    size_t n;
    const char *t = token_bearer("Bearer abc.DEF-_~+/==", &n);
    assert_non_null(t);
    assert_int_equal(n, strlen("abc.DEF-_~+/=="));
    assert_memory_equal(t, "abc.DEF-_~+/==", n);
    t = token_bearer("bearer   tdk_abc", &n);
    assert_non_null(t);
    assert_int_equal(n, 7);
    static const char *const bad[] = {
        "Basic dXNlcjpwYXNz", "Bearer",     "Bearer ",    "Bearer    ",
        "Bearertoken",        "Bearer a b", "Bearer a=b", "Bearer a\tb",
        "Bearer \"x\"",       "Bearer a,b", "Bearer\ta",  "Token abc",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = 99;
        assert_null(token_bearer(bad[i], &n));
        assert_int_equal(n, 0);
    }
    assert_null(token_bearer(NULL, &n));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors), cmocka_unit_test(test_b64url_strict),
        cmocka_unit_test(test_random_b64url),  cmocka_unit_test(test_refresh_tokens),
        cmocka_unit_test(test_api_keys),       cmocka_unit_test(test_sha256_hex),
        cmocka_unit_test(test_equal),          cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_bearer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
