/* Internal to the password pool (src/auth/password.c, passhash.c,
 * passloop.c): its jobs, its state and the calls between its files. */
#ifndef TENANTD_AUTH_PASSWORD_INTERNAL_H
#define TENANTD_AUTH_PASSWORD_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth/password.h"

enum job_kind { JOB_HASH, JOB_VERIFY };

/* One loop's mailbox: workers append finished jobs to `done` and wake the
 * loop through the eventfd `efd`, watched by `poll`. Not uv_async_send:
 * its sender holds a "busy" flag across the write() that wakes the loop,
 * the woken loop preempts the idle-priority hashing thread in that very
 * write and then spins (libuv 1.44's uv__async_spin) until the hasher gets
 * a CPU back: up to a scheduler tick. A plain eventfd write has no such
 * window. Lives until its handle is closed and no job or writer points to
 * it (`refs`, under pwpool.mu); `efd` is closed with it. */
struct ploop {
    struct ploop *next;
    uv_loop_t *loop;
    uv_poll_t poll;
    int efd;
    struct job *done_head, *done_tail; /* under pwpool.mu */
    unsigned refs;                     /* under pwpool.mu: the handle + each job + each writer */
    bool detached;                     /* under pwpool.mu */
    unsigned inflight;                 /* loop thread only: jobs not yet delivered */
};

/* A job's inputs, immutable once queued and shared by its runners (an
 * idle hasher and maybe a boost thread): the job may be finished by one
 * runner and freed by its loop while the other still reads them. */
struct input {
    atomic_uint refs; /* the job + each runner */
    enum job_kind kind;
    bool dummy; /* verify against the dummy PHC: never ok */
    char *pw;   /* copy, wiped when the last reference goes */
    size_t pwlen;
    char *phc; /* verify: the stored PHC (copy) */
};

struct job {
    struct job *next;
    struct ploop *pl;
    enum job_kind kind;
    struct input *in;
    char *phc; /* hash: the result */
    int status;
    bool ok, needs_rehash;
    password_hash_cb hash_cb;
    password_verify_cb verify_cb;
    void *ud;
    uint64_t enq_ns;   /* uv_hrtime when queued */
    uint64_t start_ns; /* under pwpool.mu: when an idle hasher took it */
    uint64_t seq;      /* under pwpool.mu: identifies it in pwpool.running */
    bool rerun;        /* under pwpool.mu: a boost thread runs it too */
    struct job *rnext; /* under pwpool.mu: in pwpool.running */
};

/* One computation of a job (on the runner's stack). */
struct run {
    struct job *j; /* compare only, with seq, against pwpool.running */
    uint64_t seq;
    struct input *in; /* a reference */
    int status;
    bool ok, needs_rehash;
    char *out_phc; /* hash: the result */
};

/* The pool: one per process. Fields marked "under mu" are read and written
 * with mu held, and only for pointer work (see password.c's top). */
struct pw_pool {
    bool started;
    bool stopping; /* under mu */
    uv_mutex_t mu;
    uv_cond_t cv;
    uv_thread_t *threads;
    unsigned nthreads;
    struct job *head, *tail; /* waiting jobs, under mu */
    unsigned queued, queue_max;
    struct password_params params;
    char *dummy_phc;
    struct ploop *loops; /* attached loops, under mu */
    uv_cond_t boost_cv;  /* boost threads wait here */
    uv_thread_t *boosters;
    unsigned nboost;
    uint64_t boost_ns;           /* 0: no boost threads */
    uint64_t last_idle_done_ns;  /* under mu: an idle hasher last finished a job */
    uint64_t last_boost_done_ns; /* under mu: a boost thread last finished a job */
    uint64_t boosted;            /* under mu: jobs run by boost threads */
    struct job *running;         /* under mu: taken, not finished yet */
    uint64_t next_seq;           /* under mu */
    atomic_ulong refusals;       /* submits refused with PASSWORD_EBUSY */
};
extern struct pw_pool pwpool;

/* ---- passhash.c: argon2id and the PHC strings, no threads ---- */

/* Whether argon2id can run with p (and its cost is bounded). */
bool pw_params_ok(struct password_params p);
/* argon2id of pw with a fresh salt; a malloc'd PHC string or NULL. */
char *pw_hash_phc(const char *pw, size_t len, struct password_params p);
/* Computes r's job (hash, or verify against its PHC or dummy_phc) into r's
 * results, with params the configured costs. */
void pw_compute(struct run *r, struct password_params params, const char *dummy_phc);

/* ---- password.c: the pool ---- */

void pw_job_free(struct job *j);

/* ---- passloop.c: the loops' mailboxes ---- */

/* Drops a reference to pl; frees it on the last one. Under pwpool.mu. */
void pw_ploop_unref_locked(struct ploop *pl);
/* Hands finished job j to its loop (or drops it when the loop is gone).
 * Called with pwpool.mu held; releases it. */
void pw_post_unlock(struct job *j);

#endif
