#ifndef TENANTD_IDEM_IDEM_H
#define TENANTD_IDEM_IDEM_H
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "core/http.h"
#include "core/problem.h"
#include "core/router.h"

/*
 * Idempotency-Key (README.md, "Credits and Idempotency-Key"; IETF httpapi idempotency draft,
 * Stripe). A key is 1..255 visible ASCII characters (else 400), scoped to
 * the org (the operator's keys to the target org, in a scope of their own),
 * stored in public.idempotency_keys with the SHA-256 of method, target and
 * body. Same key + same request -> the first answer again, byte for byte,
 * plus `Idempotent-Replayed: true`; same key + another request -> 422; the
 * first still running -> 409. Validate the request (400/422) BEFORE using
 * any of this: a request rejected before it ran does not use up its key.
 * Keys are kept 24 h, then purged by a background thread (idem_purge_start).
 *
 * Two ways to opt a POST handler in:
 *
 * 1. Single transaction (best; credits spend, jobs create): the handler's
 *    ONE statement calls the SQL functions of migration 0006 itself,
 *        public.tenantd_idem_begin(org, scope, key, hash)   -- before the effect
 *        public.tenantd_idem_finish(org, scope, key, hash, status, headers, body)
 *    inside a plpgsql function (see tenantd_credit_spend), so the key, the
 *    effect and the stored answer commit together. In C: idem_read() for
 *    the parameters, then idem_answer() on the statement's outcome columns.
 *
 * 2. Two steps (any handler, no SQL change): after validating,
 *        idem_claim(req, org_id, proceed, ud);
 *    proceed(req, claim, ud) runs only when the request may go ahead; then
 *    answer with idem_respond / idem_problem(req, claim,
 *    ...) instead of http_respond / problem_respond. The claim is committed
 *    with a lease (IDEM_LEASE_S) before the effect; the answer is stored
 *    before it is sent. A 5xx answer gives the key back (a retry runs
 *    again). If the process dies between effect and store, the key is
 *    blocked (409) until the lease lapses and then runs again: use form 1
 *    when a repeated effect would be harmful.
 */

#define IDEM_KEY_MAX 255
#define IDEM_LEASE_S 60 /* two-step claims; > statement + pool wait timeouts */

/* A checked Idempotency-Key, everything in the request arena. */
struct idem_key {
    const char *org_id; /* the org whose keys this is in */
    const char *scope;  /* "org", or "operator" for the operator's requests */
    const char *key;    /* the header value */
    const char *hash;   /* 64 hex chars: SHA-256 of method, target and body */
};

/*
 * Reads the request's Idempotency-Key for org_id. Returns 0 when there is
 * none (out zeroed), 1 when present and valid (out filled), -1 after
 * answering 400 (malformed key).
 */
int idem_read(struct request *req, const char *org_id, struct idem_key *out);

/*
 * Answers an outcome of public.tenantd_idem_begin: "replay" (the stored
 * status, headers and body, plus Idempotent-Replayed: true), "mismatch"
 * (422), "in_flight" (409). Returns true when it answered; false for any
 * other outcome ("executed", "proceed"), which the caller answers itself.
 * status/headers/body are the text columns (headers a JSON array of
 * [name, value] pairs); NULL where SQL gave NULL.
 */
bool idem_answer(struct request *req, const char *outcome, const char *status, const char *headers,
                 const char *body);

/* A two-step claim on a key (in the request arena). */
struct idem_claim;

typedef void (*idem_proceed_fn)(struct request *req, struct idem_claim *claim, void *ud);

/*
 * Two-step form: reads the key (400 when malformed) and, when there is one,
 * claims it with one statement. proceed(req, claim, ud) is called when the
 * request should run: at once (before idem_claim returns) with claim NULL
 * when the request has no key, later with the claim otherwise. In every
 * other case idem_claim answers the request itself (replay, 409, 422, 503)
 * and proceed is never called.
 */
void idem_claim(struct request *req, const char *org_id, idem_proceed_fn proceed, void *ud);

/*
 * Two-step form: the request's answer. Stores it under the claim (status <
 * 500; headers set so far with http_set_header are stored too), or gives
 * the key back (status >= 500), then responds like http_respond. With
 * claim NULL it is http_respond.
 */
void idem_respond(struct request *req, struct idem_claim *claim, int status,
                  const char *content_type, const char *body, size_t len);
/* idem_respond with a problem+json body (problem_respond's). */
void idem_problem(struct request *req, struct idem_claim *claim, enum problem p,
                  const char *detail);

/*
 * Starts the background thread that deletes keys older than 24 h
 * (public.tenantd_idem_purge) at start and then every `interval_s` seconds,
 * on a connection of its own (never on an event loop). 0, or -1 if the
 * thread cannot start. idem_purge_stop wakes and joins it (waits for a
 * purge in progress, bounded by its connect and statement timeouts).
 */
int idem_purge_start(const char *conninfo, unsigned interval_s);
void idem_purge_stop(void);

/* The module: owns the purge thread (started at init, stopped at
 * shutdown). No routes: the routes that take Idempotency-Key call idem_*. */
extern const struct module idem_module;

#endif
