/* The payload_schema subset of external job types (src/job/external.c):
 * what a declaration may say, and what a payload must then be. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "job/internal.h"

static json_t *load(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    return j;
}

/* The fields of the errors the check or validation added, joined by spaces. */
static void fields(json_t *errors, char *out, size_t len)
{
    out[0] = '\0';
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        strncat(out, json_string_value(json_object_get(e, "field")), len - strlen(out) - 2);
        strcat(out, " ");
    }
}

static void check(const char *schema, int want_rc, const char *want_fields)
{
    json_t *s = load(schema), *errors = NULL;
    char got[512];
    assert_int_equal(job_schema_check(s, "payload_schema", &errors, 0), want_rc);
    fields(errors, got, sizeof got);
    assert_string_equal(got, want_fields);
    json_decref(errors);
    json_decref(s);
}

static void test_declarations(void **state)
{
    (void)state;
    check("{\"type\":\"object\",\"required\":[\"a\"],\"properties\":{\"a\":{\"type\":\"string\","
          "\"maxLength\":3,\"enum\":[\"x\",\"yy\"]},\"n\":{\"type\":\"number\",\"minimum\":-1,"
          "\"maximum\":2.5}}}",
          0, "");
    check("{\"type\":\"object\",\"additionalProperties\":false}", -1,
          "payload_schema.additionalProperties ");
    check("{\"properties\":{\"a\":{\"format\":\"email\"},\"b\":{\"type\":\"date\"}}}", -1,
          "payload_schema.properties.a.format payload_schema.properties.b.type ");
    check("{\"required\":\"a\",\"enum\":[],\"minimum\":\"1\",\"maxLength\":-1}", -1,
          "payload_schema.required payload_schema.enum payload_schema.minimum "
          "payload_schema.maxLength ");
    check("[]", -1, "payload_schema ");
    /* Nesting is bounded. */
    char deep[1024] = "";
    for (int i = 0; i < 10; i++)
        strcat(deep, "{\"properties\":{\"a\":");
    strcat(deep, "{}");
    for (int i = 0; i < 10; i++)
        strcat(deep, "}}");
    json_t *s = load(deep), *errors = NULL;
    assert_int_equal(job_schema_check(s, "payload_schema", &errors, 0), -1);
    json_decref(errors);
    json_decref(s);
}

static void validate(const char *schema, const char *value, const char *want_fields)
{
    json_t *s = load(schema), *v = load(value), *errors = NULL;
    char got[512];
    job_schema_validate(s, v, "payload", &errors);
    fields(errors, got, sizeof got);
    assert_string_equal(got, want_fields);
    json_decref(errors);
    json_decref(s);
    json_decref(v);
}

static void test_payloads(void **state)
{
    (void)state;
    const char *schema =
        "{\"type\":\"object\",\"required\":[\"name\"],\"properties\":{"
        "\"name\":{\"type\":\"string\",\"maxLength\":3},"
        "\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":10},"
        "\"mode\":{\"enum\":[\"a\",1,null]},"
        "\"sub\":{\"type\":\"object\",\"required\":[\"x\"],\"properties\":{\"x\":{\"type\":"
        "\"boolean\"}}}}}";
    validate(schema, "{\"name\":\"abc\",\"n\":10,\"mode\":null,\"other\":[1]}", "");
    /* maxLength counts characters, not bytes: three two-byte characters pass. */
    validate(schema, "{\"name\":\"\xc3\xa9\xc3\xa9\xc3\xa9\"}", "");
    validate(schema, "{\"name\":\"abcd\"}", "payload.name ");
    validate(schema, "{}", "payload.name ");
    validate(schema, "{\"name\":1,\"n\":1.5,\"mode\":\"b\"}",
             "payload.name payload.n payload.mode ");
    validate(schema, "{\"name\":\"a\",\"n\":0}", "payload.n ");
    validate(schema, "{\"name\":\"a\",\"n\":11}", "payload.n ");
    validate(schema, "{\"name\":\"a\",\"sub\":{}}", "payload.sub.x ");
    validate(schema, "{\"name\":\"a\",\"sub\":{\"x\":\"yes\"}}", "payload.sub.x ");
    /* number accepts integers; integer refuses reals */
    validate("{\"properties\":{\"r\":{\"type\":\"number\"}}}", "{\"r\":3}", "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_declarations),
        cmocka_unit_test(test_payloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
