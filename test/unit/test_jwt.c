/* Unit tests of auth/jwt: round trip, and a table of bad tokens that must
 * each be refused for the right reason. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/jwt.h"
#include "auth/tokens.h"

#define NOW 1800000000
#define ISS "https://tenantd.test"
#define AUD "tenantd"

/* Interposes OpenSSL's CRYPTO_memcmp (the executable's definition wins over
 * libcrypto's) to prove the signature check goes through a constant-time
 * comparison: counts calls and compares without early exit. */
static int ct_calls;
static size_t ct_last_len;
int CRYPTO_memcmp(const void *a, const void *b, size_t len)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < len; i++)
        d |= x[i] ^ y[i];
    ct_calls++;
    ct_last_len = len;
    return d;
}

static const char secret[] = "0123456789abcdef0123456789abcdef-test-secret";
static const char other_secret[] = "another secret of sufficient length, 32+";

static struct jwt_key *new_key(void)
{
    struct jwt_key *k = jwt_key_new(secret, sizeof secret - 1, ISS, AUD);
    assert_non_null(k);
    return k;
}

/* header.payload.signature over raw JSON texts, HMAC-SHA256 with `key`
 * (NULL: the test secret). The caller frees. */
static char *forge(const char *header, const char *payload, const char *key)
{
    if (!key)
        key = secret;
    size_t hl = strlen(header), pl = strlen(payload);
    char *out = malloc(TOKEN_B64URL_LEN(hl) + TOKEN_B64URL_LEN(pl) + 64);
    assert_non_null(out);
    char *p = out;
    p += token_b64url_encode(header, hl, p, TOKEN_B64URL_LEN(hl) + 1);
    *p++ = '.';
    p += token_b64url_encode(payload, pl, p, TOKEN_B64URL_LEN(pl) + 1);
    unsigned char mac[32];
    unsigned int maclen = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)out,
                         (size_t)(p - out), mac, &maclen));
    assert_int_equal(maclen, 32);
    *p++ = '.';
    token_b64url_encode(mac, 32, p, 44);
    return out;
}

#define GOOD_HEADER "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}"
#define CLAIMS_FMT                                                                                 \
    "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u1\",\"org\":\"o1\",\"role\":\"admin\","   \
    "\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld,\"jti\":\"j1\",\"ver\":3}"

static char *good_payload(long long iat, long long nbf, long long exp)
{
    static char buf[512];
    snprintf(buf, sizeof buf, CLAIMS_FMT, iat, nbf, exp);
    return buf;
}

static void test_key_rules(void **state)
{
    (void)state;
    assert_null(jwt_key_new(secret, 31, ISS, AUD));
    assert_null(jwt_key_new(NULL, 40, ISS, AUD));
    assert_null(jwt_key_new(secret, 32, "", AUD));
    assert_null(jwt_key_new(secret, 32, ISS, NULL));
    struct jwt_key *k = jwt_key_new(secret, 32, ISS, AUD);
    assert_non_null(k);
    jwt_key_free(k);
    jwt_key_free(NULL);
    assert_string_equal(jwt_strerror(JWT_SIGNATURE), "bad signature");
    assert_string_equal(jwt_strerror((enum jwt_error)999), "unknown error");
}

static void test_round_trip(void **state)
{
    (void)state;
    struct jwt_key *k = new_key();
    struct jwt_claims c = {.sub = "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                           .org = "a3bb189e-8bf9-3888-9912-ace4e6543002",
                           .role = "member",
                           .ver = 5};
    char tok[JWT_SIGNED_MAX];
    int n = jwt_sign(k, &c, NOW, 900, tok, sizeof tok);
    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(tok));
    assert_int_equal(c.iat, NOW);
    assert_int_equal(c.nbf, NOW);
    assert_int_equal(c.exp, NOW + 900);
    assert_true(token_uuid_valid(c.jti, strlen(c.jti)));

    /* The header is exactly the RFC 9068 one. */
    const char *dot = strchr(tok, '.');
    unsigned char hdr[128];
    int hl = token_b64url_decode(tok, (size_t)(dot - tok), hdr, sizeof hdr);
    assert_int_equal(hl, (int)strlen(GOOD_HEADER));
    assert_memory_equal(hdr, GOOD_HEADER, (size_t)hl);

    struct jwt_claims v;
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW + 1, &v), JWT_OK);
    assert_string_equal(v.sub, c.sub);
    assert_string_equal(v.org, c.org);
    assert_string_equal(v.role, "member");
    assert_string_equal(v.jti, c.jti);
    assert_int_equal(v.ver, 5);
    assert_int_equal(v.iat, NOW);
    assert_int_equal(v.exp, NOW + 900);

    /* Inside the leeway on both ends, outside it refused. */
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW - JWT_LEEWAY_S, &v), JWT_OK);
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW + 900 + JWT_LEEWAY_S - 1, &v), JWT_OK);
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW + 900 + JWT_LEEWAY_S, &v), JWT_EXPIRED);
    assert_string_equal(v.sub, ""); /* refused: claims zeroed */
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW - JWT_LEEWAY_S - 1, &v), JWT_NOT_YET_VALID);

    /* Two tokens for the same claims differ (fresh jti). */
    char tok2[JWT_SIGNED_MAX];
    struct jwt_claims c2 = c;
    assert_true(jwt_sign(k, &c2, NOW, 900, tok2, sizeof tok2) > 0);
    assert_string_not_equal(tok, tok2);
    assert_string_not_equal(c.jti, c2.jti);

    /* A key with another audience or issuer refuses the token. */
    struct jwt_key *k2 = jwt_key_new(secret, sizeof secret - 1, ISS, "other");
    assert_int_equal(jwt_verify(k2, tok, (size_t)n, NOW, &v), JWT_AUDIENCE);
    jwt_key_free(k2);
    k2 = jwt_key_new(secret, sizeof secret - 1, "https://evil.test", AUD);
    assert_int_equal(jwt_verify(k2, tok, (size_t)n, NOW, &v), JWT_ISSUER);
    jwt_key_free(k2);
    jwt_key_free(k);
}

static void test_sign_rejects(void **state)
{
    (void)state;
    struct jwt_key *k = new_key();
    char tok[JWT_SIGNED_MAX];
    struct jwt_claims c = {.sub = "u", .org = "o", .role = "admin", .ver = 0};
    assert_int_equal(jwt_sign(k, &c, NOW, 0, tok, sizeof tok), -1); /* ttl */
    assert_int_equal(jwt_sign(k, &c, NOW, 900, tok, 100), -1);      /* buffer */
    struct jwt_claims e = {.sub = "", .org = "o", .role = "admin"};
    assert_int_equal(jwt_sign(k, &e, NOW, 900, tok, sizeof tok), -1); /* empty sub */
    struct jwt_claims neg = {.sub = "u", .org = "o", .role = "admin", .ver = -1};
    assert_int_equal(jwt_sign(k, &neg, NOW, 900, tok, sizeof tok), -1); /* negative ver */
    struct jwt_claims bad_utf8 = {.sub = "\xff\xfe", .org = "o", .role = "admin"};
    assert_int_equal(jwt_sign(k, &bad_utf8, NOW, 900, tok, sizeof tok), -1);
    /* The maximum claim sizes fit in JWT_SIGNED_MAX. */
    struct jwt_claims big = {.ver = INT64_MAX};
    memset(big.sub, 'a', JWT_ID_MAX);
    memset(big.org, 'b', JWT_ID_MAX);
    memset(big.role, 'c', JWT_ROLE_MAX);
    int n = jwt_sign(k, &big, NOW, 900, tok, sizeof tok);
    assert_true(n > 0 && n < JWT_SIGNED_MAX);
    struct jwt_claims v;
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW, &v), JWT_OK);
    assert_int_equal(v.ver, INT64_MAX);
    jwt_key_free(k);
}

/* A token made from parts, with what jwt_verify must say about it. */
#define HUGE_TOKEN ((size_t)100 * 1024)

struct bad {
    const char *name;
    char *token; /* malloc'd */
    enum jwt_error want;
};

static char *dupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dupf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* A payload with one claim replaced by raw JSON text (or removed if NULL). */
static char *payload_with(const char *claim, const char *json)
{
    char *p = dupf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"u1\",\"org\":\"o1\","
                   "\"role\":\"admin\",\"iat\":%d,\"nbf\":%d,\"exp\":%d,\"jti\":\"j1\",\"ver\":3}",
                   NOW, NOW, NOW + 900);
    char key[32];
    snprintf(key, sizeof key, "\"%s\":", claim);
    char *at = strstr(p, key);
    assert_non_null(at);
    char *val = at + strlen(key);
    char *end = val;
    if (*end == '"')
        end = strchr(end + 1, '"') + 1;
    else
        while (*end != ',' && *end != '}')
            end++;
    char *out;
    if (json)
        out = dupf("%.*s%s%s", (int)(val - p), p, json, end);
    else if (*end == ',') /* drop "key":value and its comma */
        out = dupf("%.*s%s", (int)(at - p), p, end + 1);
    else /* the last member: drop the comma before it */
        out = dupf("%.*s%s", (int)(at - p - 1), p, end);
    free(p);
    return out;
}

static char *forge_claim(const char *claim, const char *json)
{
    char *p = payload_with(claim, json);
    char *t = forge(GOOD_HEADER, p, NULL);
    free(p);
    return t;
}

static void test_bad_tokens(void **state)
{
    (void)state;
    struct jwt_key *k = new_key();
    char *good = forge(GOOD_HEADER, good_payload(NOW, NOW, NOW + 900), NULL);
    struct jwt_claims v;
    /* The forger itself makes tokens that verify: the table below is only
     * refused for the reason each row names. */
    assert_int_equal(jwt_verify(k, good, strlen(good), NOW, &v), JWT_OK);
    char *long_typ = forge("{\"alg\":\"HS256\",\"typ\":\"application/at+jwt\",\"kid\":\"k1\"}",
                           good_payload(NOW, NOW, NOW + 900), NULL);
    assert_int_equal(jwt_verify(k, long_typ, strlen(long_typ), NOW, &v), JWT_OK);
    free(long_typ);
    const char *d1 = strchr(good, '.'), *d2 = strrchr(good, '.');

    char *huge = malloc(HUGE_TOKEN + 1);
    memset(huge, 'A', HUGE_TOKEN);
    huge[HUGE_TOKEN] = '\0';
    huge[1000] = '.';
    huge[2000] = '.';

    /* A payload byte changed, signature kept. */
    char *tampered = strdup(good);
    tampered[(d1 - good) + 5] ^= 1;

    /* alg none: empty signature, and with the real signature kept. */
    char *hdr_none = NULL;
    {
        const char *h = "{\"alg\":\"none\",\"typ\":\"at+jwt\"}";
        char hb[128];
        token_b64url_encode(h, strlen(h), hb, sizeof hb);
        hdr_none = dupf("%s%.*s.", hb, (int)(d2 - d1), d1);
    }

    struct bad table[] = {
        {"alg none, no signature", hdr_none, JWT_ALG},
        {"alg none, signed",
         forge("{\"alg\":\"none\",\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg None",
         forge("{\"alg\":\"None\",\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg HS512",
         forge("{\"alg\":\"HS512\",\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg RS256",
         forge("{\"alg\":\"RS256\",\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg missing", forge("{\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg not a string",
         forge("{\"alg\":256,\"typ\":\"at+jwt\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_ALG},
        {"alg twice",
         forge("{\"alg\":\"HS256\",\"alg\":\"none\",\"typ\":\"at+jwt\"}",
               good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_HEADER},
        {"typ JWT",
         forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_TYP},
        {"typ AT+JWT",
         forge("{\"alg\":\"HS256\",\"typ\":\"AT+JWT\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_TYP},
        {"typ missing", forge("{\"alg\":\"HS256\"}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_TYP},
        {"crit header",
         forge("{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"crit\":[\"exp\"]}",
               good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_CRIT},
        {"header not an object", forge("[\"HS256\"]", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_HEADER},
        {"header not JSON", forge("{alg:HS256}", good_payload(NOW, NOW, NOW + 900), NULL),
         JWT_HEADER},
        {"wrong key", forge(GOOD_HEADER, good_payload(NOW, NOW, NOW + 900), other_secret),
         JWT_SIGNATURE},
        {"tampered payload", tampered, JWT_SIGNATURE},
        {"signature cut short", dupf("%.*s", (int)strlen(good) - 1, good), JWT_SIGNATURE},
        {"signature empty", dupf("%.*s", (int)(d2 - good) + 1, good), JWT_SIGNATURE},
        {"signature one char longer", dupf("%sA", good), JWT_SIGNATURE},
        {"expired", forge(GOOD_HEADER, good_payload(NOW - 1000, NOW - 1000, NOW - 100), NULL),
         JWT_EXPIRED},
        {"nbf in the future", forge(GOOD_HEADER, good_payload(NOW, NOW + 300, NOW + 900), NULL),
         JWT_NOT_YET_VALID},
        {"iat in the future", forge(GOOD_HEADER, good_payload(NOW + 300, NOW, NOW + 900), NULL),
         JWT_NOT_YET_VALID},
        {"wrong aud", forge_claim("aud", "\"someone-else\""), JWT_AUDIENCE},
        {"aud as array", forge_claim("aud", "[\"" AUD "\"]"), JWT_CLAIMS},
        {"wrong iss", forge_claim("iss", "\"https://evil.test\""), JWT_ISSUER},
        {"iss with suffix", forge_claim("iss", "\"" ISS "x\""), JWT_ISSUER},
        {"truncated (header only)", dupf("%.*s", (int)(d1 - good), good), JWT_FORMAT},
        {"two parts", dupf("%.*s", (int)(d2 - good), good), JWT_FORMAT},
        {"four parts", dupf("%s.AAAA", good), JWT_FORMAT},
        {"empty", strdup(""), JWT_FORMAT},
        {"only dots", strdup(".."), JWT_FORMAT},
        {"empty header", dupf("%s", d1), JWT_FORMAT},
        {"padding in header", dupf("%.*s=%s", (int)(d1 - good), good, d1), JWT_BASE64},
        {"padding in signature", dupf("%s=", good), JWT_SIGNATURE},
        {"standard base64 char", dupf("%.*s+%s", (int)(d1 - good) - 1, good, d1), JWT_BASE64},
        {"space inside", dupf("%.*s %s", (int)(d1 - good), good, d1), JWT_BASE64},
        {"100 KiB token", huge, JWT_TOO_LONG},
        {"payload not an object", forge(GOOD_HEADER, "[\"iss\",\"aud\"]", NULL), JWT_PAYLOAD},
        {"payload a string", forge(GOOD_HEADER, "\"hi\"", NULL), JWT_PAYLOAD},
        {"payload not JSON", forge(GOOD_HEADER, "{\"sub\":", NULL), JWT_PAYLOAD},
        {"duplicate sub",
         forge(GOOD_HEADER,
               "{\"sub\":\"u2\",\"iss\":\"" ISS "\",\"aud\":\"" AUD
               "\",\"sub\":\"u1\",\"org\":\"o1\",\"role\":\"admin\",\"iat\":"
               "1800000000,\"nbf\":1800000000,\"exp\":1800000900,\"jti\":\"j\","
               "\"ver\":1}",
               NULL),
         JWT_PAYLOAD},
        {"exp as string", forge_claim("exp", "\"1800000900\""), JWT_CLAIMS},
        {"exp as float", forge_claim("exp", "1800000900.5"), JWT_CLAIMS},
        {"exp missing", forge_claim("exp", NULL), JWT_CLAIMS},
        {"nbf missing", forge_claim("nbf", NULL), JWT_CLAIMS},
        {"iat null", forge_claim("iat", "null"), JWT_CLAIMS},
        {"sub as number", forge_claim("sub", "42"), JWT_CLAIMS},
        {"sub empty", forge_claim("sub", "\"\""), JWT_CLAIMS},
        {"sub too long",
         forge_claim("sub", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                            "aaaaaaaaaaaaaaaaaaaaaa\""),
         JWT_CLAIMS},
        {"org missing", forge_claim("org", NULL), JWT_CLAIMS},
        {"role as object", forge_claim("role", "{\"admin\":true}"), JWT_CLAIMS},
        {"jti missing", forge_claim("jti", NULL), JWT_CLAIMS},
        {"ver as string", forge_claim("ver", "\"3\""), JWT_CLAIMS},
        {"ver negative", forge_claim("ver", "-1"), JWT_CLAIMS},
        {"ver missing", forge_claim("ver", NULL), JWT_CLAIMS},
        {"iss missing", forge_claim("iss", NULL), JWT_CLAIMS},
        {"iss as number", forge_claim("iss", "1"), JWT_CLAIMS},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        assert_non_null(table[i].token);
        strcpy(v.sub, "stale");
        enum jwt_error e = jwt_verify(k, table[i].token, strlen(table[i].token), NOW, &v);
        if (e != table[i].want)
            fail_msg("%s: got %s, want %s", table[i].name, jwt_strerror(e),
                     jwt_strerror(table[i].want));
        assert_string_equal(v.sub, "");
        free(table[i].token);
    }

    /* A NUL inside the given length is not the end of the token. */
    char *nul = strdup(good);
    nul[3] = '\0';
    assert_int_equal(jwt_verify(k, nul, strlen(good), NOW, &v), JWT_BASE64);
    free(nul);
    /* Length exactly at the cap is parsed; one more is refused early. */
    char *cap = malloc(JWT_MAX_TOKEN + 2);
    memset(cap, 'A', JWT_MAX_TOKEN + 1);
    cap[JWT_MAX_TOKEN + 1] = '\0';
    assert_int_equal(jwt_verify(k, cap, JWT_MAX_TOKEN + 1, NOW, &v), JWT_TOO_LONG);
    assert_int_equal(jwt_verify(k, cap, JWT_MAX_TOKEN, NOW, &v), JWT_FORMAT);
    free(cap);

    free(good);
    jwt_key_free(k);
}

static void test_constant_time_compare(void **state)
{
    (void)state;
    struct jwt_key *k = new_key();
    struct jwt_claims c = {.sub = "u", .org = "o", .role = "admin"}, v;
    char tok[JWT_SIGNED_MAX];
    int n = jwt_sign(k, &c, NOW, 900, tok, sizeof tok);
    assert_true(n > 0);
    ct_calls = 0;
    assert_int_equal(jwt_verify(k, tok, (size_t)n, NOW, &v), JWT_OK);
    assert_int_equal(ct_calls, 1);
    assert_int_equal(ct_last_len, 32);
    char *wrong = forge(GOOD_HEADER, good_payload(NOW, NOW, NOW + 900), other_secret);
    ct_calls = 0;
    assert_int_equal(jwt_verify(k, wrong, strlen(wrong), NOW, &v), JWT_SIGNATURE);
    assert_int_equal(ct_calls, 1);
    assert_int_equal(ct_last_len, 32);
    free(wrong);
    /* token_equal compares through it as well. */
    ct_calls = 0;
    assert_false(token_equal("abcd", 4, "abce", 4));
    assert_int_equal(ct_calls, 1);
    jwt_key_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_rules),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_sign_rejects),
        cmocka_unit_test(test_bad_tokens),
        cmocka_unit_test(test_constant_time_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
