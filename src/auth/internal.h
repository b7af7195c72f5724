#ifndef TENANTD_AUTH_INTERNAL_H
#define TENANTD_AUTH_INTERNAL_H
/* Private to src/auth: state shared by auth.c, context.c and session.c. */
#include <jansson.h>

#include "auth/auth.h"
#include "auth/jwt.h"
#include "auth/ratelimit.h"
#include "auth/tokens.h"

/* The process's signing key (set by auth_module's init; immutable after). */
const struct jwt_key *auth_jwt_key(void);

/* Per-loop state, made by auth_module's loop_start on the loop's thread. */
struct auth_loop {
    struct rehash *rehashes; /* background re-hashes not finished yet */
};

/*
 * The process's own limiters: what limit_take (below) falls back to when
 * the database cannot answer, and the local half of a successful login.
 * Login limiters, one set per process shared by every loop (a per-loop
 * table would let a client get N x loops attempts by landing on several
 * loops), so each call takes a mutex; logins are rare next to argon2's
 * cost. TENANTD_LOGIN_LIMIT attempts a minute:
 *  - login_ip_take: per client (an IPv6 client by its /64, see
 *    TENANTD_LOGIN_IPV6_PREFIX), before anything else;
 *  - login_key_take: per account key ("u:<user id>" once the user is
 *    known, "e:<org>\n<email>" when not, "pw:<user id>" for password
 *    changes). When the account's budget is spent, a client that logged
 *    in to that account before (login_succeeded, within 30 days) draws
 *    from a budget of its own for (account, client): guesses from
 *    elsewhere cannot lock the owner out.
 * Each answers false with the refusing result in *out; always true (and
 * *have false) when the limit is off. login_succeeded resets only that
 * account's budget (never another org's) and marks the client known.
 */
bool login_ip_take(const char *ip, struct ratelimit_result *out, bool *have);
bool login_key_take(const char *key, size_t keylen, const char *ip, struct ratelimit_result *out,
                    bool *have);
void login_succeeded(const char *key, size_t keylen, const char *ip);
/* The same for signups per client IP (TENANTD_SIGNUP_LIMIT an hour). */
bool signup_limit_take(const char *ip, struct ratelimit_result *out, bool *have);
/* And for every authenticated request of an org (TENANTD_ORG_RATE_LIMIT a
 * minute). */
bool org_limit_take(const char *org_id, struct ratelimit_result *out, bool *have);

/*
 * The limits shared by all instances on the database (sharedlimit.c):
 * LIMIT_LOGIN_IP and LIMIT_SIGNUP are keyed by the request's client (key
 * unused); LIMIT_LOGIN_KEY is a login attempt: the client's budget and then
 * the account key's (as login_ip_take + login_key_take, with the
 * known-client budget) in one round trip; LIMIT_ORG is keyed by an org id. limit_take takes one
 * attempt: when allowed it calls next (now or from a later callback) with
 * the result for the RateLimit headers (NULL when the limit is off); when
 * refused it answers 429 "Too many <what>" and never calls next. When the
 * database cannot answer, the process's own buckets above decide.
 */
enum limit_kind { LIMIT_LOGIN_IP, LIMIT_LOGIN_KEY, LIMIT_SIGNUP, LIMIT_ORG, LIMIT_KINDS };
typedef void (*limit_next)(struct request *req, void *ud, const struct ratelimit_result *r);
void limit_take(struct request *req, enum limit_kind kind, const char *key, const char *what,
                limit_next next, void *ud);
/* limit_take that sets the RateLimit headers itself, then calls go(req, ud). */
void limit_gate(struct request *req, enum limit_kind kind, const char *key, const char *what,
                void (*go)(struct request *req, void *ud), void *ud);
/* A login to account key succeeded: its budget is full again everywhere and
 * the request's client is a known path of it (30 days). Does not wait. */
void limit_login_succeeded(struct request *req, const char *key);
/* For /metrics: the limit's name, its refusals, and takes decided locally
 * because the database did not answer. */
const char *limit_name(enum limit_kind kind);
unsigned long limit_refusals(enum limit_kind kind);
unsigned long limit_fallbacks(void);
/* Takes sent to the database, and takes spent from a local lease. */
void limit_take_counts(unsigned long *database, unsigned long *lease);

/* RateLimit-Limit/-Remaining/-Reset for r. */
void auth_ratelimit_headers(struct request *req, const struct ratelimit_result *r);
/* 429 for r: Retry-After, RateLimit-*, and a problem saying "Too many <what>". */
void auth_ratelimit_refuse(struct request *req, const struct ratelimit_result *r, const char *what);

/* This thread's loop state; NULL off a loop thread. */
struct auth_loop *auth_loop_state(void);

/* Frees the rehash jobs that can no longer finish (after password_loop_detach). */
void session_loop_stop(struct auth_loop *st);

/* Session routes (session.c). */
extern const struct route session_routes[];

/* "admin" / "member" -> role; -1 for anything else. */
int auth_role_parse(const char *s);
const char *auth_role_name(enum auth_role r);

/* Answers a tenantd_issue_refresh-shaped result (migration 0002; also
 * tenantd_invitation_accept) as tokens + user + org with http_status, or
 * 401 fail_detail / 403 suspended for the other statuses. */
struct pg_result;
void auth_respond_tokens(struct request *req, struct pg_result *res, const char *refresh,
                         const char *fail_detail, int http_status);

/* The successor of refresh token tok (len bytes) into out: "tdr_" +
 * base64url(HMAC-SHA256(TENANTD_JWT_SECRET, tok)), so the same token always
 * names the same successor (the reuse grace) and nobody without the server's
 * key can compute it. 0, or -1. */
int auth_refresh_successor(const char *tok, size_t len, char out[TOKEN_REFRESH_BUFSZ]);

/* Routes of src/auth/accounts.c, resetverify.c and audit.c (one module,
 * accounts_module). */
extern const struct route accounts_routes[];

/* Answers 401 with WWW-Authenticate: Bearer and a generic detail. */
void auth_respond_unauthorized(struct request *req, const char *detail);

#endif
