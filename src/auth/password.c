/*
 * The argon2id pool and its share of the CPU.
 *
 * Hashers run at SCHED_IDLE: they get only the CPU time nothing else
 * wants, so a login flood never slows the API's other requests (the
 * event loops and PostgreSQL stay responsive; logins queue). But when the
 * loops are saturated by cheap requests, idle-priority threads get no CPU
 * at all and logins starve (issue 11: 5-10 logins/s, 0.05x the raw rate,
 * under a /health flood).
 *
 * Guaranteed share: beside the idle hashers the pool has as many "boost"
 * threads at normal priority, asleep unless the pool is starved: the
 * oldest queued hash has waited longer than TENANTD_HASH_BOOST_MS and no
 * idle hasher finished a hash for as long (or a hash an idle hasher took
 * has not finished within the bound). Then a boost thread takes the
 * oldest job (or runs the stuck one again, first result wins) at normal
 * priority, competing with the loops under the kernel's fair scheduler
 * (roughly a fair share of a core per boost thread against the loops),
 * and takes new jobs at once while the starvation lasts; as soon as idle
 * hashers finish work again (the loops left CPU over), the boost threads
 * go back to sleep. So a busy server keeps serving logins, and a server
 * that is not saturated keeps its latency, since its idle hashers make
 * progress and nothing runs at normal priority.
 *
 * Why not promote the hashers themselves (SCHED_IDLE -> SCHED_OTHER when
 * starved, back after)? Leaving SCHED_IDLE needs CAP_SYS_NICE (or an
 * RLIMIT_NICE that containers do not grant), so it would work only for
 * root. Sleeping normal-priority threads need no privilege. Why not a
 * fixed CPU share (nice values, cgroup weights)? Lowering a thread's nice
 * value back needs the same privilege, and cgroups are the operator's.
 * Inputs are shared by reference (struct input) and pwpool.mu is held only for
 * pointer work, because an idle thread can lose the CPU inside any
 * critical section and everyone else would wait for it.
 *
 * This file is the pool: its queue, the idle hashers, the boost threads,
 * start and stop. What a hash computes is in passhash.c; the loops' side
 * (the async calls, mailboxes, delivery, detaching) in passloop.c.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include "auth/password_internal.h"

#include <assert.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/log.h"
#include "core/thread.h"

#define MAX_THREADS 256u

struct pw_pool pwpool;

static uint64_t g_boost_ms = 100; /* set before the pool starts */

static void input_unref(struct input *in)
{
    if (!in || atomic_fetch_sub(&in->refs, 1) != 1)
        return;
    if (in->pw) {
        OPENSSL_cleanse(in->pw, in->pwlen);
        free(in->pw);
    }
    free(in->phc);
    free(in);
}

/* A run of j (in pwpool.running). Under pwpool.mu: only pointer work and an atomic
 * increment, since an idle-priority thread may lose the CPU right here and
 * everyone else would wait for it. */
static void run_start_locked(struct run *r, struct job *j)
{
    *r = (struct run){.j = j, .seq = j->seq, .in = j->in};
    atomic_fetch_add(&r->in->refs, 1);
}

void pw_job_free(struct job *j)
{
    input_unref(j->in);
    free(j->phc);
    free(j);
}

/* The first runner to finish a job takes it out of pwpool.running; a later
 * one (the job was re-run by a boost thread) finds it gone. Under pwpool.mu. */
static struct job *unlink_running_locked(struct job *j, uint64_t seq)
{
    for (struct job **pp = &pwpool.running; *pp; pp = &(*pp)->rnext)
        if (*pp == j && j->seq == seq) {
            *pp = j->rnext;
            j->rnext = NULL;
            return j;
        }
    return NULL;
}

/* Records r's results in its job and hands the job to its loop (or drops
 * it when the loop is gone); nothing when another runner finished first.
 * Called without pwpool.mu. */
static void complete(struct run *r, bool idle)
{
    uv_mutex_lock(&pwpool.mu);
    if (idle)
        pwpool.last_idle_done_ns = uv_hrtime();
    else
        pwpool.last_boost_done_ns = uv_hrtime();
    struct job *j = unlink_running_locked(r->j, r->seq);
    if (!j) {
        uv_mutex_unlock(&pwpool.mu);
        return;
    }
    j->status = r->status;
    j->ok = r->ok;
    j->needs_rehash = r->needs_rehash;
    if (j->kind == JOB_HASH) {
        j->phc = r->out_phc;
        r->out_phc = NULL;
    }
    pw_post_unlock(j);
}

/* Takes the oldest waiting job into pwpool.running. Under pwpool.mu, with pwpool.head set. */
static struct job *claim_locked(void)
{
    struct job *j = pwpool.head;
    assert(j && pwpool.queued > 0);
    pwpool.head = j->next;
    if (!pwpool.head)
        pwpool.tail = NULL;
    pwpool.queued--;
    j->next = NULL;
    j->seq = ++pwpool.next_seq;
    j->start_ns = uv_hrtime();
    j->rerun = false;
    j->rnext = pwpool.running;
    pwpool.running = j;
    return j;
}

/* Computes r's job, completes it and drops r's references. Without pwpool.mu. */
static void run_and_complete(struct run *r, bool idle)
{
    pw_compute(r, pwpool.params, pwpool.dummy_phc);
    complete(r, idle);
    input_unref(r->in);
    free(r->out_phc); /* NULL unless another runner finished first */
}

static void worker(void *arg)
{
    (void)arg;
    thread_name("argon2");
    /* Hashing saturates the cores by design; SCHED_IDLE gives it only the
     * CPU time nothing else wants, so the loops (and the database) stay
     * responsive while logins queue. Nothing may wait on these threads
     * while they hold a lock or a half-done handshake: see struct ploop.
     * Best effort: failing costs latency, not correctness. */
    struct sched_param sp = {.sched_priority = 0};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0 &&
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) != 0)
        log_msg(LOG_DEBUG, "password pool: cannot lower the hashing threads' priority");
    for (;;) {
        uv_mutex_lock(&pwpool.mu);
        while (!pwpool.head && !pwpool.stopping)
            uv_cond_wait(&pwpool.cv, &pwpool.mu);
        if (pwpool.stopping) {
            uv_mutex_unlock(&pwpool.mu);
            return;
        }
        struct run r;
        run_start_locked(&r, claim_locked());
        uv_mutex_unlock(&pwpool.mu);
        run_and_complete(&r, true);
    }
}

/* A job an idle hasher has held for the bound without finishing (it
 * gets no CPU), not re-run yet; NULL if none. Under pwpool.mu. */
static struct job *stuck_locked(uint64_t now)
{
    for (struct job *j = pwpool.running; j; j = j->rnext)
        if (!j->rerun && now >= j->start_ns + pwpool.boost_ns)
            return j;
    return NULL;
}

/* A boost thread (normal priority): runs the oldest job only while the
 * pool is starved (see the top of this file). */
static void booster(void *arg)
{
    (void)arg;
    thread_name("argon2-boost");
    for (;;) {
        struct job *j = NULL;
        uv_mutex_lock(&pwpool.mu);
        for (;;) {
            if (pwpool.stopping) {
                uv_mutex_unlock(&pwpool.mu);
                return;
            }
            if (!pwpool.head && !pwpool.running) {
                uv_cond_wait(&pwpool.boost_cv, &pwpool.mu);
                continue;
            }
            /* Idle hashers that finished something within the bound are
             * getting CPU: no boost. */
            uint64_t now = uv_hrtime();
            uint64_t wait = pwpool.boost_ns;
            if (now >= pwpool.last_idle_done_ns + pwpool.boost_ns) {
                /* Once boosting (a boost thread finished a job since the
                 * idle hashers last did), new jobs go at once. */
                bool boosting = pwpool.last_boost_done_ns > pwpool.last_idle_done_ns;
                /* Stuck runs first: they were taken before anything queued. */
                if ((j = stuck_locked(now)) != NULL) {
                    j->rerun = true;
                    break;
                }
                if (pwpool.head && (boosting || now >= pwpool.head->enq_ns + pwpool.boost_ns)) {
                    j = claim_locked();
                    j->rerun = true; /* a boost thread has it already */
                    break;
                }
                if (pwpool.head)
                    wait = pwpool.head->enq_ns + pwpool.boost_ns - now;
            } else {
                wait = pwpool.last_idle_done_ns + pwpool.boost_ns - now;
            }
            /* Stuck runs become due at their own time; polling at the
             * bound is precise enough for them. */
            uv_cond_timedwait(&pwpool.boost_cv, &pwpool.mu,
                              wait < pwpool.boost_ns ? wait : pwpool.boost_ns);
        }
        pwpool.boosted++;
        struct run r;
        run_start_locked(&r, j);
        if (pwpool.head || pwpool.running) /* another boost thread may help with the rest */
            uv_cond_signal(&pwpool.boost_cv);
        uv_mutex_unlock(&pwpool.mu);
        run_and_complete(&r, false);
    }
}

void password_pool_set_boost_ms(unsigned ms)
{
    g_boost_ms = ms;
}

uint64_t password_pool_boosted(void)
{
    if (!pwpool.started)
        return 0;
    uv_mutex_lock(&pwpool.mu);
    uint64_t n = pwpool.boosted;
    uv_mutex_unlock(&pwpool.mu);
    return n;
}

void password_pool_stats(unsigned *waiting, unsigned *capacity, unsigned long *refusals)
{
    *waiting = *capacity = 0;
    if (pwpool.started) { /* the mutex lives while the pool does; scrapes run while loops do */
        uv_mutex_lock(&pwpool.mu);
        *waiting = pwpool.queued;
        *capacity = pwpool.queue_max;
        uv_mutex_unlock(&pwpool.mu);
    }
    *refusals = atomic_load_explicit(&pwpool.refusals, memory_order_relaxed);
}

int password_pool_start(unsigned threads, unsigned queue_max, struct password_params params)
{
    if (pwpool.started || queue_max == 0 || !pw_params_ok(params) || threads > MAX_THREADS)
        return -1;
    if (threads == 0)
        threads = uv_available_parallelism();
    if (threads == 0)
        threads = 1;

    /* The dummy hash for unknown users: same parameters as real ones, so a
     * login for a missing email costs what a real one costs. */
    unsigned char pw[32];
    if (RAND_bytes(pw, sizeof pw) != 1)
        return -1;
    char *dummy = pw_hash_phc((const char *)pw, sizeof pw, params);
    OPENSSL_cleanse(pw, sizeof pw);
    if (!dummy)
        return -1;

    if (uv_mutex_init(&pwpool.mu) != 0) {
        free(dummy);
        return -1;
    }
    if (uv_cond_init(&pwpool.cv) != 0) {
        uv_mutex_destroy(&pwpool.mu);
        free(dummy);
        return -1;
    }
    if (uv_cond_init(&pwpool.boost_cv) != 0) {
        uv_cond_destroy(&pwpool.cv);
        uv_mutex_destroy(&pwpool.mu);
        free(dummy);
        return -1;
    }
    pwpool.threads = calloc(threads, sizeof *pwpool.threads);
    pwpool.boosters = calloc(threads, sizeof *pwpool.boosters);
    if (!pwpool.threads || !pwpool.boosters) {
        free(pwpool.threads);
        free(pwpool.boosters);
        pwpool.threads = NULL;
        pwpool.boosters = NULL;
        uv_cond_destroy(&pwpool.boost_cv);
        uv_cond_destroy(&pwpool.cv);
        uv_mutex_destroy(&pwpool.mu);
        free(dummy);
        return -1;
    }
    pwpool.dummy_phc = dummy;
    pwpool.params = params;
    pwpool.queue_max = queue_max;
    pwpool.queued = 0;
    pwpool.head = pwpool.tail = NULL;
    pwpool.loops = NULL;
    pwpool.stopping = false;
    pwpool.nthreads = 0;
    pwpool.nboost = 0;
    pwpool.boost_ns = (uint64_t)g_boost_ms * 1000000u;
    pwpool.last_idle_done_ns = pwpool.last_boost_done_ns = 0;
    pwpool.boosted = 0;
    pwpool.started = true;
    for (unsigned i = 0; i < threads; i++) {
        if (uv_thread_create(&pwpool.threads[i], worker, NULL) != 0) {
            log_msg(LOG_ERROR, "password pool: cannot create thread %u of %u", i + 1, threads);
            password_pool_stop();
            return -1;
        }
        pwpool.nthreads++;
    }
    /* Boost threads inherit this thread's (normal) priority. */
    for (unsigned i = 0; pwpool.boost_ns && i < threads; i++) {
        if (uv_thread_create(&pwpool.boosters[i], booster, NULL) != 0) {
            log_msg(LOG_ERROR, "password pool: cannot create boost thread %u of %u", i + 1,
                    threads);
            password_pool_stop();
            return -1;
        }
        pwpool.nboost++;
    }
    return 0;
}

void password_pool_stop(void)
{
    if (!pwpool.started)
        return;
    uv_mutex_lock(&pwpool.mu);
    pwpool.stopping = true;
    uv_cond_broadcast(&pwpool.cv);
    uv_cond_broadcast(&pwpool.boost_cv);
    uv_mutex_unlock(&pwpool.mu);
    for (unsigned i = 0; i < pwpool.nthreads; i++)
        uv_thread_join(&pwpool.threads[i]);
    for (unsigned i = 0; i < pwpool.nboost; i++)
        uv_thread_join(&pwpool.boosters[i]);
    assert(!pwpool.running); /* every run finished before its thread returned */

    /* Waiting jobs are dropped. A loop still attached here broke the
     * contract; its mailbox is left alone since its handle may still be
     * open. */
    while (pwpool.head) {
        struct job *j = pwpool.head;
        pwpool.head = j->next;
        pw_ploop_unref_locked(j->pl);
        pw_job_free(j);
    }
    if (pwpool.loops)
        log_msg(LOG_WARN, "password pool stopped while a loop was still attached");
    pwpool.tail = NULL;
    pwpool.queued = 0;
    free(pwpool.threads);
    pwpool.threads = NULL;
    pwpool.nthreads = 0;
    free(pwpool.boosters);
    pwpool.boosters = NULL;
    pwpool.nboost = 0;
    free(pwpool.dummy_phc);
    pwpool.dummy_phc = NULL;
    uv_cond_destroy(&pwpool.boost_cv);
    uv_cond_destroy(&pwpool.cv);
    uv_mutex_destroy(&pwpool.mu);
    pwpool.loops = NULL;
    pwpool.started = false;
}
