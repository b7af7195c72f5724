#ifndef TENANTD_CORE_PROBLEM_H
#define TENANTD_CORE_PROBLEM_H
#include <jansson.h>

#include "core/http.h"

/* X(enum suffix, HTTP status, code, title): one table for every problem. A
 * code finer than its status (org_required, slug_taken, ...) is for clients
 * that must tell cases apart; its meaning is documented in the OpenAPI. */
#define PROBLEM_MAP(X)                                                                             \
    X(BAD_REQUEST, 400, "bad_request", "Bad Request")                                              \
    X(UNAUTHORIZED, 401, "unauthorized", "Unauthorized")                                           \
    X(PAYMENT_REQUIRED, 402, "payment_required", "Payment Required")                               \
    X(FORBIDDEN, 403, "forbidden", "Forbidden")                                                    \
    X(NOT_FOUND, 404, "not_found", "Not Found")                                                    \
    X(METHOD_NOT_ALLOWED, 405, "method_not_allowed", "Method Not Allowed")                         \
    X(CONFLICT, 409, "conflict", "Conflict")                                                       \
    X(ORG_REQUIRED, 409, "org_required", "Organization Required")                                  \
    X(SLUG_TAKEN, 409, "slug_taken", "Slug Taken")                                                 \
    X(EMAIL_TAKEN, 409, "email_taken", "Email Taken")                                              \
    X(LAST_ADMIN, 409, "last_admin", "Last Admin")                                                 \
    X(IDENTITY_TAKEN, 409, "identity_taken", "Identity Taken")                                     \
    X(LAST_SIGN_IN_METHOD, 409, "last_sign_in_method", "Last Sign-in Method")                      \
    X(TOKEN_INVALID, 400, "token_invalid", "Invalid or Expired Link")                              \
    X(PRECONDITION_FAILED, 412, "precondition_failed", "Precondition Failed")                      \
    X(PAYLOAD_TOO_LARGE, 413, "payload_too_large", "Payload Too Large")                            \
    X(VALIDATION_FAILED, 422, "validation_failed", "Validation Failed")                            \
    X(RATE_LIMITED, 429, "rate_limited", "Too Many Requests")                                      \
    X(HEADERS_TOO_LARGE, 431, "headers_too_large", "Request Header Fields Too Large")              \
    X(INTERNAL, 500, "internal", "Internal Server Error")                                          \
    X(UNAVAILABLE, 503, "unavailable", "Service Unavailable")

enum problem {
#define PROBLEM_ENUM(name, status, code, title) PROBLEM_##name,
    PROBLEM_MAP(PROBLEM_ENUM)
#undef PROBLEM_ENUM
    PROBLEM__COUNT
};

int problem_status(enum problem p);
const char *problem_code(enum problem p);
const char *problem_title(enum problem p);

/*
 * Builds the RFC 9457 body {type, title, status, detail, code, request_id}
 * (plus errors when non-NULL; steals that reference). request_id may be NULL.
 */
json_t *problem_body(enum problem p, const char *detail, const char *request_id, json_t *errors);

/* Responds with application/problem+json. detail is a human sentence that
 * never contains SQL or another tenant's data. */
void problem_respond(struct request *req, enum problem p, const char *detail);

/* 422 with errors: a JSON array of {"field","message"} (reference stolen). */
void problem_respond_errors(struct request *req, const char *detail, json_t *errors);

/* Appends {"field","message"} to an errors array, creating it when *errors is NULL. */
void problem_add_error(json_t **errors, const char *field, const char *message);

#endif
