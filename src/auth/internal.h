#ifndef TENANTD_AUTH_INTERNAL_H
#define TENANTD_AUTH_INTERNAL_H
/* Private to src/auth: state shared by auth.c, context.c and session.c. */
#include <jansson.h>

#include "auth/auth.h"
#include "auth/jwt.h"
#include "auth/ratelimit.h"

/* The process's signing key (set by auth_module's init; immutable after). */
const struct jwt_key *auth_jwt_key(void);

/* Per-loop state, made by auth_module's loop_start on the loop's thread. */
struct auth_loop {
    struct rehash *rehashes; /* background re-hashes not finished yet */
};

/*
 * Login limiters, one pair per process shared by every loop (a per-loop
 * table would let a client get N x loops attempts by landing on several
 * loops), so each call takes a mutex; logins are rare next to argon2's
 * cost. login_limit_take answers false when either the client IP or the key
 * (lowercased email, or "pw:<user id>") is over TENANTD_LOGIN_LIMIT, with
 * the tighter result in *out; it is always true (and *have false) when the
 * limit is off.
 */
bool login_limit_take(const char *ip, const char *key, size_t keylen,
                      struct ratelimit_result *out, bool *have);
void login_limit_reset(const char *key, size_t keylen);
/* The same for signups per client IP (TENANTD_SIGNUP_LIMIT an hour). */
bool signup_limit_take(const char *ip, struct ratelimit_result *out, bool *have);
/* And for every authenticated request of an org (TENANTD_ORG_RATE_LIMIT a
 * minute). */
bool org_limit_take(const char *org_id, struct ratelimit_result *out, bool *have);

/* RateLimit-Limit/-Remaining/-Reset for r. */
void auth_ratelimit_headers(struct request *req, const struct ratelimit_result *r);
/* 429 for r: Retry-After, RateLimit-*, and a problem saying "Too many <what>". */
void auth_ratelimit_refuse(struct request *req, const struct ratelimit_result *r,
                           const char *what);

/* This thread's loop state; NULL off a loop thread. */
struct auth_loop *auth_loop_state(void);

/* Frees the rehash jobs that can no longer finish (after password_loop_detach). */
void session_loop_stop(struct auth_loop *st);

/* Session routes (session.c). */
extern const struct route session_routes[];


/* "admin" / "member" -> role; -1 for anything else. */
int auth_role_parse(const char *s);
const char *auth_role_name(enum auth_role r);

/* Answers 401 with WWW-Authenticate: Bearer and a generic detail. */
void auth_respond_unauthorized(struct request *req, const char *detail);

#endif
