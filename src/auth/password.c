#define _GNU_SOURCE /* SCHED_IDLE */
#include "auth/password.h"

#include <argon2.h>
#include <errno.h>
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

struct job {
    struct job *next;
    struct ploop *pl;
    enum job_kind kind;
    char *pw; /* copy, wiped and freed as soon as argon2 is done */
    size_t pwlen;
    char *phc;  /* verify: the stored PHC (copy); hash: the result */
    bool dummy; /* verify against the dummy PHC: never ok */
    int status;
    bool ok, needs_rehash;
    password_hash_cb hash_cb;
    password_verify_cb verify_cb;
    void *ud;
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
} g;

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

static void run_job(struct job *j)
{
    if (j->kind == JOB_HASH) {
        j->phc = hash_phc(j->pw, j->pwlen, g.params);
        j->status = j->phc ? PASSWORD_OK : PASSWORD_EHASH;
    } else {
        const char *phc = j->dummy ? g.dummy_phc : j->phc;
        struct password_params have;
        if (password_phc_params(phc, &have) != 0 || !params_ok(have)) {
            j->status = PASSWORD_EHASH;
        } else {
            int rc = argon2id_verify(phc, j->pw, j->pwlen);
            if (rc == ARGON2_OK || rc == ARGON2_VERIFY_MISMATCH) {
                j->status = PASSWORD_OK;
                j->ok = rc == ARGON2_OK && !j->dummy;
                j->needs_rehash = j->ok && password_needs_rehash(phc, g.params);
            } else {
                j->status = PASSWORD_EHASH;
            }
        }
    }
    OPENSSL_cleanse(j->pw, j->pwlen);
    free(j->pw);
    j->pw = NULL;
}

static void job_free(struct job *j)
{
    if (j->pw) {
        OPENSSL_cleanse(j->pw, j->pwlen);
        free(j->pw);
    }
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
        struct job *j = g.head;
        g.head = j->next;
        if (!g.head)
            g.tail = NULL;
        g.queued--;
        uv_mutex_unlock(&g.mu);

        run_job(j);

        uv_mutex_lock(&g.mu);
        struct ploop *pl = j->pl;
        if (pl->detached) {
            job_free(j);
            ploop_unref_locked(pl);
            uv_mutex_unlock(&g.mu);
            continue;
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
            continue;
        /* Outside the lock: the woken loop may preempt this thread right in
         * the write and must not find g.mu held by it. */
        uint64_t one = 1;
        while (write(pl->efd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        uv_mutex_lock(&g.mu);
        ploop_unref_locked(pl);
        uv_mutex_unlock(&g.mu);
    }
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
        return PASSWORD_EBUSY;
    }
    struct ploop *pl = ploop_get_locked(loop);
    if (!pl) {
        uv_mutex_unlock(&g.mu);
        job_free(j);
        return PASSWORD_EINVAL;
    }
    j->pl = pl;
    pl->refs++;
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

static struct job *job_new(enum job_kind kind, const char *pw, size_t len, void *ud)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->ud = ud;
    j->pwlen = len;
    j->pw = malloc(len ? len : 1);
    if (!j->pw) {
        free(j);
        return NULL;
    }
    if (len)
        memcpy(j->pw, pw, len);
    return j;
}

int password_hash_async(uv_loop_t *loop, const char *pw, size_t len, password_hash_cb cb, void *ud)
{
    if (!g.started || tl_detaching || !loop || !pw || !cb || !password_length_ok(len))
        return PASSWORD_EINVAL;
    struct job *j = job_new(JOB_HASH, pw, len, ud);
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
    struct job *j = job_new(JOB_VERIFY, pw, len, ud);
    if (!j)
        return PASSWORD_EINVAL;
    j->verify_cb = cb;
    if (phc) {
        j->phc = strdup(phc);
        if (!j->phc) {
            job_free(j);
            return PASSWORD_EINVAL;
        }
    } else {
        j->dummy = true;
    }
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
    g.threads = calloc(threads, sizeof *g.threads);
    if (!g.threads) {
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
    g.started = true;
    for (unsigned i = 0; i < threads; i++) {
        if (uv_thread_create(&g.threads[i], worker, NULL) != 0) {
            log_msg(LOG_ERROR, "password pool: cannot create thread %u of %u", i + 1, threads);
            password_pool_stop();
            return -1;
        }
        g.nthreads++;
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
    uv_mutex_unlock(&g.mu);
    for (unsigned i = 0; i < g.nthreads; i++)
        uv_thread_join(&g.threads[i]);

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
    free(g.dummy_phc);
    g.dummy_phc = NULL;
    uv_cond_destroy(&g.cv);
    uv_mutex_destroy(&g.mu);
    g.loops = NULL;
    g.started = false;
}
