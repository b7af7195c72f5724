#include "core/body.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/problem.h"

#define EMAIL_MAX 254
#define UNKNOWN_FIELDS_SHOWN 8
#define NAME_MAX_CHARS 100

static void json_release(void *p)
{
    json_decref(p);
}

json_t *body_object(struct request *req, bool allow_nul)
{
    if (!req->body || req->body_len == 0) {
        problem_respond(req, PROBLEM_BAD_REQUEST, "The body must be a JSON object.");
        return NULL;
    }
    json_error_t err;
    size_t flags = JSON_REJECT_DUPLICATES | (allow_nul ? JSON_ALLOW_NUL : 0);
    json_t *j = json_loadb(req->body, req->body_len, flags, &err);
    if (!j) {
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        arena_printf(req->arena, "The body is not valid JSON (line %d, column %d).",
                                     err.line, err.column));
        return NULL;
    }
    arena_cleanup(req->arena, json_release, j);
    if (!json_is_object(j)) {
        problem_respond(req, PROBLEM_BAD_REQUEST, "The body must be a JSON object.");
        return NULL;
    }
    return j;
}

void body_unknown_fields(struct request *req, json_t *obj, const char *const *allowed,
                         const char *prefix, json_t **errors)
{
    const char *key;
    json_t *v;
    int reported = 0;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (ok)
            continue;
        if (++reported > UNKNOWN_FIELDS_SHOWN) {
            problem_add_error(errors, "(more)", "more unknown fields were left out");
            return;
        }
        const char *name = strlen(key) <= 64 ? key : "(a name of over 64 bytes)";
        if (prefix)
            name = arena_printf(req->arena, "%s.%s", prefix, name);
        problem_add_error(errors, name, "is not a known field");
    }
}

static bool email_local_char(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~.", c));
}

bool body_email_valid(const char *s)
{
    size_t len = strlen(s);
    const char *at = strchr(s, '@');
    if (len > EMAIL_MAX || !at || strchr(at + 1, '@'))
        return false;
    size_t local = (size_t)(at - s);
    if (local < 1 || local > 64 || s[0] == '.' || at[-1] == '.')
        return false;
    for (const char *p = s; p < at; p++)
        if (!email_local_char((unsigned char)*p) || (*p == '.' && p[1] == '.'))
            return false;
    const char *d = at + 1;
    size_t label = 0, dots = 0;
    if (*d == '\0')
        return false;
    for (const char *p = d;; p++) {
        if (*p == '.' || *p == '\0') {
            if (label == 0 || label > 63 || p[-1] == '-')
                return false;
            if (*p == '\0')
                break;
            dots++;
            label = 0;
            continue;
        }
        unsigned char c = (unsigned char)*p;
        if ((!isalnum(c) && c != '-') || (label == 0 && c == '-'))
            return false;
        label++;
    }
    return dots >= 1;
}

/* obj's field, or NULL when absent or null (adding "is required" if it must be there). */
static json_t *given(json_t *obj, const char *name, bool required, json_t **errors)
{
    json_t *v = json_object_get(obj, name);
    if (v && !json_is_null(v))
        return v;
    if (required)
        problem_add_error(errors, name, "is required");
    return NULL;
}

size_t body_utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            n++;
    return n;
}

const char *body_string(json_t *obj, const char *name, bool required, size_t min, size_t max,
                        const char *message, json_t **errors)
{
    json_t *v = given(obj, name, required, errors);
    if (!v)
        return NULL;
    const char *s = json_string_value(v);
    char rule[64];
    const char *why = NULL;
    if (!s) {
        why = "must be a string";
    } else if (strlen(s) != json_string_length(v)) {
        why = "must not contain NUL characters";
    } else {
        size_t n = body_utf8_chars(s);
        if (n < min || n > max) {
            snprintf(rule, sizeof rule, "must be %zu to %zu characters", min, max);
            why = message ? message : rule;
        }
    }
    if (why) {
        problem_add_error(errors, name, why);
        return NULL;
    }
    return s;
}

int body_int(json_t *obj, const char *name, bool required, json_int_t min, json_int_t max,
             const char *message, json_int_t *out, json_t **errors)
{
    json_t *v = given(obj, name, required, errors);
    if (!v)
        return 0;
    if (json_is_integer(v) && json_integer_value(v) >= min && json_integer_value(v) <= max) {
        *out = json_integer_value(v);
        return 1;
    }
    char rule[96];
    snprintf(rule, sizeof rule,
             "must be an integer from %" JSON_INTEGER_FORMAT " to %" JSON_INTEGER_FORMAT, min, max);
    problem_add_error(errors, name, message ? message : rule);
    return -1;
}

int body_bool(json_t *obj, const char *name, bool required, bool *out, json_t **errors)
{
    json_t *v = given(obj, name, required, errors);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        problem_add_error(errors, name, "must be true or false");
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

const char *body_enum(json_t *obj, const char *name, bool required, const char *const *values,
                      const char *message, json_t **errors)
{
    json_t *v = given(obj, name, required, errors);
    if (!v)
        return NULL;
    const char *s = json_string_value(v);
    for (const char *const *e = values; s && *e; e++)
        if (strcmp(*e, s) == 0)
            return *e;
    char rule[256] = "must be one of:";
    for (const char *const *e = values; *e; e++) {
        size_t n = strlen(rule);
        snprintf(rule + n, sizeof rule - n, " \"%s\"", *e);
    }
    problem_add_error(errors, name, message ? message : rule);
    return NULL;
}

const char *body_name_problem(const char *s)
{
    size_t n = 0;
    bool blank = true, control = false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            n++;
        if (*p != ' ')
            blank = false;
        if (*p < 0x20 || *p == 0x7F || (*p == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F))
            control = true;
    }
    if (n < 1 || n > NAME_MAX_CHARS || blank)
        return "must be 1 to 100 characters, not only spaces";
    if (control)
        return "must not contain control characters";
    return NULL;
}

const char *body_name(json_t *obj, const char *name, bool required, json_t **errors)
{
    const char *s = body_string(obj, name, required, 0, SIZE_MAX, NULL, errors);
    const char *why = s ? body_name_problem(s) : NULL;
    if (why) {
        problem_add_error(errors, name, why);
        return NULL;
    }
    return s;
}
