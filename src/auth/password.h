#ifndef TENANTD_AUTH_PASSWORD_H
#define TENANTD_AUTH_PASSWORD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/*
 * Passwords: argon2id PHC strings ("$argon2id$v=19$m=19456,t=2,p=1$salt$hash")
 * computed on a process-wide pool of threads of its own, never on a loop and
 * never on libuv's shared default pool (DNS and file work use that one).
 *
 * The pool has a bounded queue: when it is full, password_*_async refuse at
 * once (PASSWORD_EBUSY) so the caller answers 503 with Retry-After instead
 * of letting logins pile up. Results come back on the loop that asked,
 * through one mailbox per loop (an eventfd under a uv_poll_t, passloop.c),
 * created on first use.
 *
 * Life cycle: password_pool_start once (before loops run) ... each loop
 * calls password_loop_detach(loop) in its stop hook, before uv_loop_close
 * ... password_pool_stop once after every loop has finished.
 */

#define PASSWORD_MIN_LEN 8
#define PASSWORD_MAX_LEN 1024

/* Status codes passed to callbacks and returned by the *_async calls. */
enum password_status {
    PASSWORD_OK = 0,
    PASSWORD_EBUSY = -1,     /* queue full: answer 503 + Retry-After */
    PASSWORD_EINVAL = -2,    /* bad argument (length out of range, no pool) */
    PASSWORD_ECANCELED = -3, /* the loop detached before the job ran */
    PASSWORD_EHASH = -4,     /* argon2 failed (out of memory, malformed stored PHC) */
};

/* argon2id costs. */
struct password_params {
    uint32_t m_kib; /* memory in KiB */
    uint32_t t;     /* iterations */
    uint32_t p;     /* lanes */
};

/* OWASP's argon2id recommendation: m=19456 KiB (19 MiB), t=2, p=1. */
#define PASSWORD_PARAMS_DEFAULT ((struct password_params){19456, 2, 1})

/* True when a new password's length is acceptable (8..1024 bytes). */
bool password_length_ok(size_t len);

/*
 * Starts the pool: `threads` workers (0 = one per core), at most queue_max
 * (>= 1) jobs waiting beyond those running, hashing with `params` (checked
 * against argon2's limits). Also computes, synchronously and once, the dummy
 * PHC that password_verify_async uses for unknown users. 0, or -1 when
 * already started, on bad parameters, or when threads cannot be made.
 */
int password_pool_start(unsigned threads, unsigned queue_max, struct password_params params);

/*
 * The starvation bound of the boost threads (see password.c): a queued
 * hash that waited `ms` while no idle-priority hasher finished anything is
 * run at normal priority. 0 = no boost threads. Call before
 * password_pool_start; 100 ms when never called.
 */
void password_pool_set_boost_ms(unsigned ms);

/* For /metrics: hashes waiting for a thread, the queue's bound
 * (TENANTD_HASH_QUEUE), and submits refused because it was full. */
void password_pool_stats(unsigned *waiting, unsigned *capacity, unsigned long *refusals);

/* Jobs run by boost threads since the pool started. */
uint64_t password_pool_boosted(void);

/*
 * Stops the pool: running jobs finish, waiting jobs are dropped (their
 * callbacks never run), the workers are joined and everything is freed.
 * Call after every loop has detached. Harmless when not started.
 */
void password_pool_stop(void);

/*
 * Detaches `loop`: callbacks of its waiting jobs run now with
 * PASSWORD_ECANCELED, finished results not yet delivered are delivered now,
 * and results of jobs still running are dropped (their callbacks never run).
 * Closes the loop's mailbox handle (the close completes on the next loop turn,
 * so run the loop once more before uv_loop_close). Call on the loop's
 * thread; harmless if the loop never used the pool.
 */
void password_loop_detach(uv_loop_t *loop);

/*
 * hash: status PASSWORD_OK and the PHC string (valid only during the call:
 * copy it), or an error status and NULL.
 */
typedef void (*password_hash_cb)(void *ud, int status, const char *phc);

/*
 * verify: ok is true only when status is PASSWORD_OK and the password
 * matches; needs_rehash is true when it matched but the stored PHC used
 * weaker parameters than the configured ones (store a new hash then).
 */
typedef void (*password_verify_cb)(void *ud, int status, bool ok, bool needs_rehash);

/*
 * Queues a hash of pw (len 8..1024 bytes; copied, and the copy wiped after
 * use) with the configured parameters and a fresh random salt. cb runs later
 * on `loop`'s thread, never from inside this call. Returns PASSWORD_OK,
 * PASSWORD_EBUSY (queue full) or PASSWORD_EINVAL; on an error cb never runs.
 * Call on the loop's thread.
 */
int password_hash_async(uv_loop_t *loop, const char *pw, size_t len, password_hash_cb cb, void *ud);

/*
 * Queues a check of pw (len 0..1024, so a login with a too-short password
 * costs the same time as any other) against the stored PHC string `phc`
 * (copied). phc NULL means "no such user": the check runs against the dummy
 * PHC so it takes the same time, and ok is always false. Same return values
 * and threading as password_hash_async.
 */
int password_verify_async(uv_loop_t *loop, const char *pw, size_t len, const char *phc,
                          password_verify_cb cb, void *ud);

/*
 * Parses an argon2id PHC string's version and parameters. 0, or -1 when it
 * is not an argon2id v=19 PHC string of the form we write.
 */
int password_phc_params(const char *phc, struct password_params *out);

/* True when phc is not an argon2id PHC string with parameters at least
 * `want`'s (any of m, t, p lower: true). */
bool password_needs_rehash(const char *phc, struct password_params want);

#endif
