/*
 * The loops' side of the password pool (password.h): each loop's mailbox
 * (struct ploop: an eventfd the hashers write to), the async calls that
 * queue jobs, delivering results on the loop's thread, and detaching a
 * loop that stops. Apart from the hashing threads (password.c) because it
 * runs on the event loops; both meet only under pwpool.mu.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "auth/password_internal.h"

/* Set while password_loop_detach runs callbacks, so a callback cannot queue
 * new work on a loop that is going away. */
static _Thread_local bool tl_detaching;

void pw_ploop_unref_locked(struct ploop *pl)
{
    if (--pl->refs == 0) {
        close(pl->efd);
        free(pl);
    }
}

void pw_post_unlock(struct job *j)
{
    struct ploop *pl = j->pl;
    if (pl->detached) {
        pw_job_free(j);
        pw_ploop_unref_locked(pl);
        uv_mutex_unlock(&pwpool.mu);
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
    uv_mutex_unlock(&pwpool.mu);
    if (!wake)
        return;
    /* Outside the lock: the woken loop may preempt this thread right in
     * the write and must not find pwpool.mu held by it. */
    uint64_t one = 1;
    while (write(pl->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    uv_mutex_lock(&pwpool.mu);
    pw_ploop_unref_locked(pl);
    uv_mutex_unlock(&pwpool.mu);
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
    uv_mutex_lock(&pwpool.mu);
    struct job *list = pl->done_head;
    pl->done_head = pl->done_tail = NULL;
    uv_mutex_unlock(&pwpool.mu);
    unsigned n = 0;
    while (list) {
        struct job *j = list;
        list = j->next;
        deliver(j);
        pw_job_free(j);
        n++;
    }
    if (n == 0)
        return;
    uv_mutex_lock(&pwpool.mu);
    pl->refs -= n; /* never the last: the open handle holds one */
    uv_mutex_unlock(&pwpool.mu);
    pl->inflight -= n;
    if (pl->inflight == 0)
        uv_unref((uv_handle_t *)&pl->poll); /* an idle pool must not keep the loop alive */
}

static void on_close(uv_handle_t *h)
{
    struct ploop *pl = h->data;
    uv_mutex_lock(&pwpool.mu);
    pw_ploop_unref_locked(pl);
    uv_mutex_unlock(&pwpool.mu);
}

/* The mailbox of `loop`, made on first use. Under pwpool.mu, on the loop's thread. */
static struct ploop *ploop_get_locked(uv_loop_t *loop)
{
    for (struct ploop *pl = pwpool.loops; pl; pl = pl->next)
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
    pl->next = pwpool.loops;
    pwpool.loops = pl;
    return pl;
}

static int submit(uv_loop_t *loop, struct job *j)
{
    uv_mutex_lock(&pwpool.mu);
    if (pwpool.queued >= pwpool.queue_max) {
        uv_mutex_unlock(&pwpool.mu);
        pw_job_free(j);
        atomic_fetch_add_explicit(&pwpool.refusals, 1, memory_order_relaxed);
        return PASSWORD_EBUSY;
    }
    struct ploop *pl = ploop_get_locked(loop);
    if (!pl) {
        uv_mutex_unlock(&pwpool.mu);
        pw_job_free(j);
        return PASSWORD_EINVAL;
    }
    j->pl = pl;
    j->enq_ns = uv_hrtime();
    pl->refs++;
    if (!pwpool.head && pwpool.nboost)
        uv_cond_signal(&pwpool.boost_cv); /* a boost thread starts watching the clock */
    if (pwpool.tail)
        pwpool.tail->next = j;
    else
        pwpool.head = j;
    pwpool.tail = j;
    pwpool.queued++;
    uv_cond_signal(&pwpool.cv);
    uv_mutex_unlock(&pwpool.mu);
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
        pw_job_free(j);
        return NULL;
    }
    if (len)
        memcpy(in->pw, pw, len);
    return j;
}

int password_hash_async(uv_loop_t *loop, const char *pw, size_t len, password_hash_cb cb, void *ud)
{
    if (!pwpool.started || tl_detaching || !loop || !pw || !cb || !password_length_ok(len))
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
    if (!pwpool.started || tl_detaching || !loop || (!pw && len) || !cb || len > PASSWORD_MAX_LEN)
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
    if (!pwpool.started)
        return;
    uv_mutex_lock(&pwpool.mu);
    struct ploop **pp = &pwpool.loops, *pl = NULL;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->loop == loop) {
            pl = *pp;
            *pp = pl->next;
            break;
        }
    if (!pl) {
        uv_mutex_unlock(&pwpool.mu);
        return;
    }
    pl->detached = true;
    /* Its finished jobs, then its waiting ones, in one list to cancel. */
    struct job *cancel = pl->done_head, **tail = pl->done_tail ? &pl->done_tail->next : &cancel;
    pl->done_head = pl->done_tail = NULL;
    struct job **jp = &pwpool.head, *prev = NULL;
    while (*jp) {
        struct job *j = *jp;
        if (j->pl == pl) {
            *jp = j->next;
            pwpool.queued--;
            j->next = NULL;
            *tail = j;
            tail = &j->next;
        } else {
            prev = j;
            jp = &j->next;
        }
    }
    pwpool.tail = prev;
    uv_mutex_unlock(&pwpool.mu);

    tl_detaching = true;
    unsigned n = 0;
    while (cancel) {
        struct job *j = cancel;
        cancel = j->next;
        j->status = PASSWORD_ECANCELED;
        j->ok = j->needs_rehash = false;
        deliver(j);
        pw_job_free(j);
        n++;
    }
    tl_detaching = false;

    uv_mutex_lock(&pwpool.mu);
    pl->refs -= n; /* the handle, still open, holds the last one */
    uv_mutex_unlock(&pwpool.mu);
    uv_close((uv_handle_t *)&pl->poll, on_close);
}
