#ifndef TENANTD_CORE_BODY_H
#define TENANTD_CORE_BODY_H
#include <stdbool.h>
#include <jansson.h>

#include "core/http.h"

/*
 * Request-body checks every module shares, so a client sees one behaviour:
 * the same 400 for a body that is not a JSON object, the same 422 entries
 * for unknown fields, the same email rule everywhere.
 */

/* The body as a JSON object owned by the request arena, or NULL after
 * answering 400 (empty, not JSON, duplicate keys, or not an object).
 * Duplicate keys are refused: which one wins would be ambiguous, and proxies
 * and servers may disagree. allow_nul accepts "\u0000" inside strings; the
 * caller must then refuse it field by field (json_string_length differs
 * from strlen) to answer 422 rather than 400. */
json_t *body_object(struct request *req, bool allow_nul);

/* Adds an "is not a known field" error for every key of obj not in allowed
 * (NULL-ended); prefix names a nested object ("admin" -> "admin.x"), NULL
 * at the top. The answer echoes client text, so it stays small: at most 8
 * such errors, and names over 64 bytes are not repeated. */
void body_unknown_fields(struct request *req, json_t *obj, const char *const *allowed,
                         const char *prefix, json_t **errors);

/* A plain ASCII addr-spec, at most 254 bytes: local@domain, local 1..64 of
 * RFC 5322 atext and dots (not first, last or doubled), domain of
 * dot-separated labels of [A-Za-z0-9-] (1..63, not starting or ending with
 * '-') with at least one dot. Quoted local parts and address literals are
 * refused: no mail provider hands them out and they only smuggle text. */
bool body_email_valid(const char *s);
/* The 422 message of a field that breaks that rule. */
#define BODY_EMAIL_RULE "must be a valid email address of at most 254 characters"

/*
 * Typed field readers. Each reads field `name` of obj; absent or JSON null
 * is "not given", which adds "is required" when required. A wrong value
 * adds one 422 entry (name, message; message NULL: a default that states
 * the rule) to *errors. Strings returned are obj's (they live as long as
 * obj, which body_object ties to the request).
 */

/* A string of min..max code points without NUL (PostgreSQL text cannot
 * hold it; body_object(req, true) lets one through). The string, or NULL
 * when not given or wrong. */
const char *body_string(json_t *obj, const char *name, bool required, size_t min, size_t max,
                        const char *message, json_t **errors);

/* An integer in [min, max] into *out: 1 when taken, 0 when not given (*out
 * untouched), -1 when wrong. */
int body_int(json_t *obj, const char *name, bool required, json_int_t min, json_int_t max,
             const char *message, json_int_t *out, json_t **errors);

/* true or false into *out: 1 when taken, 0 when not given, -1 when wrong. */
int body_bool(json_t *obj, const char *name, bool required, bool *out, json_t **errors);

/* One of values (NULL-ended): that entry of values, or NULL when not given
 * or wrong. */
const char *body_enum(json_t *obj, const char *name, bool required, const char *const *values,
                      const char *message, json_t **errors);

/*
 * The one rule for display names (users, orgs, invitations, imports): 1 to
 * 100 code points, not only spaces, no control character (C0, DEL, C1).
 * s is valid UTF-8 without NUL (as jansson hands out). NULL when fine,
 * else the message for the errors list.
 */
const char *body_name_problem(const char *s);

/* body_string with the display-name rule. */
const char *body_name(json_t *obj, const char *name, bool required, json_t **errors);

/* Code points of valid UTF-8 text. */
size_t body_utf8_chars(const char *s);

#endif
