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

#endif
