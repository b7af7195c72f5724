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
 * Inputs are shared by reference (struct input) and g.mu is held only for
 * pointer work, because an idle thread can lose the CPU inside any
 * critical section and everyone else would wait for it.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include "auth/password.h"

#include <argon2.h>
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "auth/hashimport.h"
#include "core/log.h"
#include "core/thread.h"

#define SALT_LEN 16
#define HASH_LEN 32
/* Upper bounds for configured and stored parameters, so that a corrupt or
 * hostile PHC in the database cannot make one verify eat gigabytes. */
#define MAX_M_KIB (1024u * 1024u) /* 1 GiB */
#define MAX_T 64u
#define MAX_P 64u
#define MAX_THREADS 256u

enum job_kind { JOB_HASH, JOB_VERIFY };

/* One loop's mailbox: workers append finished jobs to `done` and wake the
 * loop through the eventfd `efd`, watched by `poll`. Not uv_async_send:
 * its sender holds a "busy" flag across the write() that wakes the loop,
 * the woken loop preempts the idle-priority hashing thread in that very
 * write and then spins (libuv 1.44's uv__async_spin) until the hasher gets
 * a CPU back: up to a scheduler tick. A plain eventfd write has no such
 * window. Lives until its handle is closed and no job or writer points to
 * it (`refs`, under g.mu); `efd` is closed with it. */
struct ploop {
    struct ploop *next;
    uv_loop_t *loop;
    uv_poll_t poll;
    int efd;
    struct job *done_head, *done_tail; /* under g.mu */
    unsigned refs;                     /* under g.mu: the handle + each job + each writer */
    bool detached;                     /* under g.mu */
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
    uint64_t start_ns; /* under g.mu: when an idle hasher took it */
    uint64_t seq;      /* under g.mu: identifies it in g.running */
    bool rerun;        /* under g.mu: a boost thread runs it too */
    struct job *rnext; /* under g.mu: in g.running */
};

/* One computation of a job (on the runner's stack). */
struct run {
    struct job *j; /* compare only, with seq, against g.running */
    uint64_t seq;
    struct input *in; /* a reference */
    int status;
    bool ok, needs_rehash;
    char *out_phc; /* hash: the result */
};

static struct {
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
} g;

static uint64_t g_boost_ms = 100; /* set before the pool starts */
static atomic_ulong g_refusals;    /* submits refused with PASSWORD_EBUSY */

/* Set while password_loop_detach runs callbacks, so a callback cannot queue
 * new work on a loop that is going away. */
static _Thread_local bool tl_detaching;

bool password_length_ok(size_t len)
{
    return len >= PASSWORD_MIN_LEN && len <= PASSWORD_MAX_LEN;
}

static bool params_ok(struct password_params p)
{
    return p.t >= 1 && p.t <= MAX_T && p.p >= 1 && p.p <= MAX_P && p.m_kib <= MAX_M_KIB &&
           p.m_kib >= 8 * p.p; /* argon2's own floor: 8 KiB per lane */
}

/* Parses a decimal uint32 without sign or leading zeros; advances *s. */
static bool parse_u32(const char **s, uint32_t *out)
{
    const char *p = *s;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
        return false;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return false;
        p++;
    }
    *out = (uint32_t)v;
    *s = p;
    return true;
}

static bool expect(const char **s, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0)
        return false;
    *s += n;
    return true;
}

/* A non-empty run of standard base64 chars (argon2 encodes without '='). */
static bool b64_run(const char **s)
{
    const char *p = *s;
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
           *p == '+' || *p == '/')
        p++;
    if (p == *s)
        return false;
    *s = p;
    return true;
}

int password_phc_params(const char *phc, struct password_params *out)
{
    struct password_params p;
    const char *s = phc;
    if (!s || !expect(&s, "$argon2id$v=19$m=") || !parse_u32(&s, &p.m_kib) || !expect(&s, ",t=") ||
        !parse_u32(&s, &p.t) || !expect(&s, ",p=") || !parse_u32(&s, &p.p) || !expect(&s, "$") ||
        !b64_run(&s) || !expect(&s, "$") || !b64_run(&s) || *s != '\0')
        return -1;
    *out = p;
    return 0;
}

bool password_needs_rehash(const char *phc, struct password_params want)
{
    struct password_params have;
    if (password_phc_params(phc, &have) != 0)
        return true;
    return have.m_kib < want.m_kib || have.t < want.t || have.p < want.p;
}

/* argon2id of pw with a fresh salt; a malloc'd PHC string or NULL. */
static char *hash_phc(const char *pw, size_t len, struct password_params p)
{
    unsigned char salt[SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return NULL;
    size_t enclen = argon2_encodedlen(p.t, p.m_kib, p.p, SALT_LEN, HASH_LEN, Argon2_id);
    char *enc = malloc(enclen);
    if (!enc)
        return NULL;
    int rc =
        argon2id_hash_encoded(p.t, p.m_kib, p.p, pw, len, salt, SALT_LEN, HASH_LEN, enc, enclen);
    if (rc != ARGON2_OK) {
        free(enc);
        return NULL;
    }
    return enc;
}

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

static void run_compute(struct run *r)
{
    const struct input *in = r->in;
    if (in->kind == JOB_HASH) {
        r->out_phc = hash_phc(in->pw, in->pwlen, g.params);
        r->status = r->out_phc ? PASSWORD_OK : PASSWORD_EHASH;
    } else if (!in->dummy && hash_is_legacy(in->phc)) {
        /* An imported bcrypt/PBKDF2 hash (auth/hashimport.c). The dummy
         * argon2id check after it keeps a wrong password for a migrated
         * user from answering faster than one for anyone else. A match
         * is re-hashed to argon2id by the caller (needs_rehash). */
        bool ok = false;
        int rc = hash_legacy_verify(in->phc, in->pw, in->pwlen, &ok);
        (void)argon2id_verify(g.dummy_phc, in->pw, in->pwlen);
        r->status = rc == 0 ? PASSWORD_OK : PASSWORD_EHASH;
        r->ok = rc == 0 && ok;
        r->needs_rehash = r->ok;
    } else {
        const char *phc = in->dummy ? g.dummy_phc : in->phc;
        struct password_params have;
        if (password_phc_params(phc, &have) != 0 || !params_ok(have)) {
            r->status = PASSWORD_EHASH;
        } else {
            int rc = argon2id_verify(phc, in->pw, in->pwlen);
            if (rc == ARGON2_OK || rc == ARGON2_VERIFY_MISMATCH) {
                r->status = PASSWORD_OK;
                r->ok = rc == ARGON2_OK && !in->dummy;
                r->needs_rehash = r->ok && password_needs_rehash(phc, g.params);
            } else {
                r->status = PASSWORD_EHASH;
            }
        }
    }
}

/* A run of j (in g.running). Under g.mu: only pointer work and an atomic
 * increment, since an idle-priority thread may lose the CPU right here and
 * everyone else would wait for it. */
static void run_start_locked(struct run *r, struct job *j)
{
    *r = (struct run){.j = j, .seq = j->seq, .in = j->in};
    atomic_fetch_add(&r->in->refs, 1);
}

static void job_free(struct job *j)
{
    input_unref(j->in);
    free(j->phc);
    free(j);
}

/* Drops a reference to pl; frees it on the last one. Under g.mu. */
static void ploop_unref_locked(struct ploop *pl)
{
    if (--pl->refs == 0) {
        close(pl->efd);
        free(pl);
    }
}

/* The first runner to finish a job takes it out of g.running; a later
 * one (the job was re-run by a boost thread) finds it gone. Under g.mu. */
static struct job *unlink_running_locked(struct job *j, uint64_t seq)
{
    for (struct job **pp = &g.running; *pp; pp = &(*pp)->rnext)
        if (*pp == j && j->seq == seq) {
            *pp = j->rnext;
            j->rnext = NULL;
            return j;
        }
    return NULL;
}

/* Records r's results in its job and hands the job to its loop (or drops
 * it when the loop is gone); nothing when another runner finished first.
 * Called without g.mu. */
static void complete(struct run *r, bool idle)
{
    uv_mutex_lock(&g.mu);
    if (idle)
        g.last_idle_done_ns = uv_hrtime();
    else
        g.last_boost_done_ns = uv_hrtime();
    struct job *j = unlink_running_locked(r->j, r->seq);
    if (!j) {
        uv_mutex_unlock(&g.mu);
        return;
    }
    j->status = r->status;
    j->ok = r->ok;
    j->needs_rehash = r->needs_rehash;
    if (j->kind == JOB_HASH) {
        j->phc = r->out_phc;
        r->out_phc = NULL;
    }
    struct ploop *pl = j->pl;
    if (pl->detached) {
        job_free(j);
        ploop_unref_locked(pl);
        uv_mutex_unlock(&g.mu);
        return;
    }
    /* Only the job that makes the list non-empty wakes the loop: the
     * loop reads the eventfd before it takes the list, so it sees
     * every job appended after a wake-up it has consumed. */
    bool wake = pl->done_head == NULL;
    j->next = NULL;
    if (pl->done_tail)
        pl->done_tail->next = j;
    else
        pl->done_head = j;
    pl->done_tail = j;
    if (wake)
        pl->refs++; /* keeps efd open until written, whatever the loop does */
    uv_mutex_unlock(&g.mu);
    if (!wake)
        return;
    /* Outside the lock: the woken loop may preempt this thread right in
     * the write and must not find g.mu held by it. */
    uint64_t one = 1;
    while (write(pl->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    uv_mutex_lock(&g.mu);
    ploop_unref_locked(pl);
    uv_mutex_unlock(&g.mu);
}

/* Takes the oldest waiting job into g.running. Under g.mu, with g.head set. */
static struct job *claim_locked(void)
{
    struct job *j = g.head;
    assert(j && g.queued > 0);
    g.head = j->next;
    if (!g.head)
        g.tail = NULL;
    g.queued--;
    j->next = NULL;
    j->seq = ++g.next_seq;
    j->start_ns = uv_hrtime();
    j->rerun = false;
    j->rnext = g.running;
    g.running = j;
    return j;
}

/* Computes r's job, completes it and drops r's references. Without g.mu. */
static void run_and_complete(struct run *r, bool idle)
{
    run_compute(r);
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
        uv_mutex_lock(&g.mu);
        while (!g.head && !g.stopping)
            uv_cond_wait(&g.cv, &g.mu);
        if (g.stopping) {
            uv_mutex_unlock(&g.mu);
            return;
        }
        struct run r;
        run_start_locked(&r, claim_locked());
        uv_mutex_unlock(&g.mu);
        run_and_complete(&r, true);
    }
}

/* A boost thread (normal priority): runs the oldest job only while the
 * pool is starved (see the top of this file). */
/* A job an idle hasher has held for the bound without finishing (it
 * gets no CPU), not re-run yet; NULL if none. Under g.mu. */
static struct job *stuck_locked(uint64_t now)
{
    for (struct job *j = g.running; j; j = j->rnext)
        if (!j->rerun && now >= j->start_ns + g.boost_ns)
            return j;
    return NULL;
}

static void booster(void *arg)
{
    (void)arg;
    thread_name("argon2-boost");
    for (;;) {
        struct job *j = NULL;
        uv_mutex_lock(&g.mu);
        for (;;) {
            if (g.stopping) {
                uv_mutex_unlock(&g.mu);
                return;
            }
            if (!g.head && !g.running) {
                uv_cond_wait(&g.boost_cv, &g.mu);
                continue;
            }
            /* Idle hashers that finished something within the bound are
             * getting CPU: no boost. */
            uint64_t now = uv_hrtime();
            uint64_t wait = g.boost_ns;
            if (now >= g.last_idle_done_ns + g.boost_ns) {
                /* Once boosting (a boost thread finished a job since the
                 * idle hashers last did), new jobs go at once. */
                bool boosting = g.last_boost_done_ns > g.last_idle_done_ns;
                /* Stuck runs first: they were taken before anything queued. */
                if ((j = stuck_locked(now)) != NULL) {
                    j->rerun = true;
                    break;
                }
                if (g.head && (boosting || now >= g.head->enq_ns + g.boost_ns)) {
                    j = claim_locked();
                    j->rerun = true; /* a boost thread has it already */
                    break;
                }
                if (g.head)
                    wait = g.head->enq_ns + g.boost_ns - now;
            } else {
                wait = g.last_idle_done_ns + g.boost_ns - now;
            }
            /* Stuck runs become due at their own time; polling at the
             * bound is precise enough for them. */
            uv_cond_timedwait(&g.boost_cv, &g.mu, wait < g.boost_ns ? wait : g.boost_ns);
        }
        g.boosted++;
        struct run r;
        run_start_locked(&r, j);
        if (g.head || g.running) /* another boost thread may help with the rest */
            uv_cond_signal(&g.boost_cv);
        uv_mutex_unlock(&g.mu);
        run_and_complete(&r, false);
    }
}

void password_pool_set_boost_ms(unsigned ms)
{
    g_boost_ms = ms;
}

uint64_t password_pool_boosted(void)
{
    if (!g.started)
        return 0;
    uv_mutex_lock(&g.mu);
    uint64_t n = g.boosted;
    uv_mutex_unlock(&g.mu);
    return n;
}

static void deliver(struct job *j)
{
    if (j->kind == JOB_HASH)
        j->hash_cb(j->ud, j->status, j->status == PASSWORD_OK ? j->phc : NULL);
    else
        j->verify_cb(j->ud, j->status, j->ok, j->needs_rehash);
}

static void on_ready(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    struct ploop *pl = h->data;
    uint64_t count;
    while (read(pl->efd, &count, sizeof count) < 0 && errno == EINTR)
        ; /* EAGAIN: a wake-up already consumed; the list is what counts */
    uv_mutex_lock(&g.mu);
    struct job *list = pl->done_head;
    pl->done_head = pl->done_tail = NULL;
    uv_mutex_unlock(&g.mu);
    unsigned n = 0;
    while (list) {
        struct job *j = list;
        list = j->next;
        deliver(j);
        job_free(j);
        n++;
    }
    if (n == 0)
        return;
    uv_mutex_lock(&g.mu);
    pl->refs -= n; /* never the last: the open handle holds one */
    uv_mutex_unlock(&g.mu);
    pl->inflight -= n;
    if (pl->inflight == 0)
        uv_unref((uv_handle_t *)&pl->poll); /* an idle pool must not keep the loop alive */
}

static void on_close(uv_handle_t *h)
{
    struct ploop *pl = h->data;
    uv_mutex_lock(&g.mu);
    ploop_unref_locked(pl);
    uv_mutex_unlock(&g.mu);
}

/* The mailbox of `loop`, made on first use. Under g.mu, on the loop's thread. */
static struct ploop *ploop_get_locked(uv_loop_t *loop)
{
    for (struct ploop *pl = g.loops; pl; pl = pl->next)
        if (pl->loop == loop)
            return pl;
    struct ploop *pl = calloc(1, sizeof *pl);
    if (!pl)
        return NULL;
    pl->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pl->efd < 0) {
        free(pl);
        return NULL;
    }
    if (uv_poll_init(loop, &pl->poll, pl->efd) != 0) {
        close(pl->efd);
        free(pl);
        return NULL;
    }
    pl->poll.data = pl;
    if (uv_poll_start(&pl->poll, UV_READABLE, on_ready) != 0) {
        /* the handle is initialised: only a close may end it */
        pl->refs = 1;
        uv_close((uv_handle_t *)&pl->poll, on_close);
        return NULL;
    }
    uv_unref((uv_handle_t *)&pl->poll);
    pl->loop = loop;
    pl->refs = 1;
    pl->next = g.loops;
    g.loops = pl;
    return pl;
}

static int submit(uv_loop_t *loop, struct job *j)
{
    uv_mutex_lock(&g.mu);
    if (g.queued >= g.queue_max) {
        uv_mutex_unlock(&g.mu);
        job_free(j);
        atomic_fetch_add_explicit(&g_refusals, 1, memory_order_relaxed);
        return PASSWORD_EBUSY;
    }
    struct ploop *pl = ploop_get_locked(loop);
    if (!pl) {
        uv_mutex_unlock(&g.mu);
        job_free(j);
        return PASSWORD_EINVAL;
    }
    j->pl = pl;
    j->enq_ns = uv_hrtime();
    pl->refs++;
    if (!g.head && g.nboost)
        uv_cond_signal(&g.boost_cv); /* a boost thread starts watching the clock */
    if (g.tail)
        g.tail->next = j;
    else
        g.head = j;
    g.tail = j;
    g.queued++;
    uv_cond_signal(&g.cv);
    uv_mutex_unlock(&g.mu);
    if (pl->inflight++ == 0)
        uv_ref((uv_handle_t *)&pl->poll);
    return PASSWORD_OK;
}

static struct job *job_new(enum job_kind kind, const char *pw, size_t len, const char *phc,
                           void *ud)
{
    struct job *j = calloc(1, sizeof *j);
    struct input *in = calloc(1, sizeof *in);
    if (!j || !in) {
        free(j);
        free(in);
        return NULL;
    }
    atomic_init(&in->refs, 1);
    in->kind = kind;
    in->pwlen = len;
    in->dummy = kind == JOB_VERIFY && !phc;
    j->kind = kind;
    j->ud = ud;
    j->in = in;
    if (!(in->pw = malloc(len ? len : 1)) || (phc && !(in->phc = strdup(phc)))) {
        job_free(j);
        return NULL;
    }
    if (len)
        memcpy(in->pw, pw, len);
    return j;
}

int password_hash_async(uv_loop_t *loop, const char *pw, size_t len, password_hash_cb cb, void *ud)
{
    if (!g.started || tl_detaching || !loop || !pw || !cb || !password_length_ok(len))
        return PASSWORD_EINVAL;
    struct job *j = job_new(JOB_HASH, pw, len, NULL, ud);
    if (!j)
        return PASSWORD_EINVAL;
    j->hash_cb = cb;
    return submit(loop, j);
}

int password_verify_async(uv_loop_t *loop, const char *pw, size_t len, const char *phc,
                          password_verify_cb cb, void *ud)
{
    if (!g.started || tl_detaching || !loop || (!pw && len) || !cb || len > PASSWORD_MAX_LEN)
        return PASSWORD_EINVAL;
    struct job *j = job_new(JOB_VERIFY, pw, len, phc, ud);
    if (!j)
        return PASSWORD_EINVAL;
    j->verify_cb = cb;
    return submit(loop, j);
}

// cppcheck-suppress constParameter ; the loop is identified, not read, but callers own it mutably
void password_loop_detach(uv_loop_t *loop)
{
    if (!g.started)
        return;
    uv_mutex_lock(&g.mu);
    struct ploop **pp = &g.loops, *pl = NULL;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->loop == loop) {
            pl = *pp;
            *pp = pl->next;
            break;
        }
    if (!pl) {
        uv_mutex_unlock(&g.mu);
        return;
    }
    pl->detached = true;
    /* Its finished jobs, then its waiting ones, in one list to cancel. */
    struct job *cancel = pl->done_head, **tail = pl->done_tail ? &pl->done_tail->next : &cancel;
    pl->done_head = pl->done_tail = NULL;
    struct job **jp = &g.head, *prev = NULL;
    while (*jp) {
        struct job *j = *jp;
        if (j->pl == pl) {
            *jp = j->next;
            g.queued--;
            j->next = NULL;
            *tail = j;
            tail = &j->next;
        } else {
            prev = j;
            jp = &j->next;
        }
    }
    g.tail = prev;
    uv_mutex_unlock(&g.mu);

    tl_detaching = true;
    unsigned n = 0;
    while (cancel) {
        struct job *j = cancel;
        cancel = j->next;
        j->status = PASSWORD_ECANCELED;
        j->ok = j->needs_rehash = false;
        deliver(j);
        job_free(j);
        n++;
    }
    tl_detaching = false;

    uv_mutex_lock(&g.mu);
    pl->refs -= n; /* the handle, still open, holds the last one */
    uv_mutex_unlock(&g.mu);
    uv_close((uv_handle_t *)&pl->poll, on_close);
}

void password_pool_stats(unsigned *waiting, unsigned *capacity, unsigned long *refusals)
{
    *waiting = *capacity = 0;
    if (g.started) { /* the mutex lives while the pool does; scrapes run while loops do */
        uv_mutex_lock(&g.mu);
        *waiting = g.queued;
        *capacity = g.queue_max;
        uv_mutex_unlock(&g.mu);
    }
    *refusals = atomic_load_explicit(&g_refusals, memory_order_relaxed);
}

int password_pool_start(unsigned threads, unsigned queue_max, struct password_params params)
{
    if (g.started || queue_max == 0 || !params_ok(params) || threads > MAX_THREADS)
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
    char *dummy = hash_phc((const char *)pw, sizeof pw, params);
    OPENSSL_cleanse(pw, sizeof pw);
    if (!dummy)
        return -1;

    if (uv_mutex_init(&g.mu) != 0) {
        free(dummy);
        return -1;
    }
    if (uv_cond_init(&g.cv) != 0) {
        uv_mutex_destroy(&g.mu);
        free(dummy);
        return -1;
    }
    if (uv_cond_init(&g.boost_cv) != 0) {
        uv_cond_destroy(&g.cv);
        uv_mutex_destroy(&g.mu);
        free(dummy);
        return -1;
    }
    g.threads = calloc(threads, sizeof *g.threads);
    g.boosters = calloc(threads, sizeof *g.boosters);
    if (!g.threads || !g.boosters) {
        free(g.threads);
        free(g.boosters);
        g.threads = NULL;
        g.boosters = NULL;
        uv_cond_destroy(&g.boost_cv);
        uv_cond_destroy(&g.cv);
        uv_mutex_destroy(&g.mu);
        free(dummy);
        return -1;
    }
    g.dummy_phc = dummy;
    g.params = params;
    g.queue_max = queue_max;
    g.queued = 0;
    g.head = g.tail = NULL;
    g.loops = NULL;
    g.stopping = false;
    g.nthreads = 0;
    g.nboost = 0;
    g.boost_ns = (uint64_t)g_boost_ms * 1000000u;
    g.last_idle_done_ns = g.last_boost_done_ns = 0;
    g.boosted = 0;
    g.started = true;
    for (unsigned i = 0; i < threads; i++) {
        if (uv_thread_create(&g.threads[i], worker, NULL) != 0) {
            log_msg(LOG_ERROR, "password pool: cannot create thread %u of %u", i + 1, threads);
            password_pool_stop();
            return -1;
        }
        g.nthreads++;
    }
    /* Boost threads inherit this thread's (normal) priority. */
    for (unsigned i = 0; g.boost_ns && i < threads; i++) {
        if (uv_thread_create(&g.boosters[i], booster, NULL) != 0) {
            log_msg(LOG_ERROR, "password pool: cannot create boost thread %u of %u", i + 1,
                    threads);
            password_pool_stop();
            return -1;
        }
        g.nboost++;
    }
    return 0;
}

void password_pool_stop(void)
{
    if (!g.started)
        return;
    uv_mutex_lock(&g.mu);
    g.stopping = true;
    uv_cond_broadcast(&g.cv);
    uv_cond_broadcast(&g.boost_cv);
    uv_mutex_unlock(&g.mu);
    for (unsigned i = 0; i < g.nthreads; i++)
        uv_thread_join(&g.threads[i]);
    for (unsigned i = 0; i < g.nboost; i++)
        uv_thread_join(&g.boosters[i]);
    assert(!g.running); /* every run finished before its thread returned */

    /* Waiting jobs are dropped. A loop still attached here broke the
     * contract; its mailbox is left alone since its handle may still be
     * open. */
    while (g.head) {
        struct job *j = g.head;
        g.head = j->next;
        ploop_unref_locked(j->pl);
        job_free(j);
    }
    if (g.loops)
        log_msg(LOG_WARN, "password pool stopped while a loop was still attached");
    g.tail = NULL;
    g.queued = 0;
    free(g.threads);
    g.threads = NULL;
    g.nthreads = 0;
    free(g.boosters);
    g.boosters = NULL;
    g.nboost = 0;
    free(g.dummy_phc);
    g.dummy_phc = NULL;
    uv_cond_destroy(&g.boost_cv);
    uv_cond_destroy(&g.cv);
    uv_mutex_destroy(&g.mu);
    g.loops = NULL;
    g.started = false;
}
