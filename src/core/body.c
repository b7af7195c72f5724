#include "core/body.h"

#include <ctype.h>
#include <string.h>

#include "core/problem.h"

#define EMAIL_MAX 254
#define UNKNOWN_FIELDS_SHOWN 8

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
