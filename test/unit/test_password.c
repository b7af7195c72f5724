/* Unit tests of auth/password: argon2id through the private pool on a real
 * uv loop (small parameters so the suite stays fast), rehash detection,
 * bounded queue, detach, PHC parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "auth/password.h"

static const struct password_params small = {1024, 1, 1};

struct result {
    int calls;
    int status;
    bool ok, needs_rehash;
    char phc[256];
};

static void on_hash(void *ud, int status, const char *phc)
{
    struct result *r = ud;
    r->calls++;
    r->status = status;
    if (phc) {
        size_t n = strlen(phc);
        assert_true(n < sizeof r->phc);
        memcpy(r->phc, phc, n + 1);
    } else {
        r->phc[0] = '\0';
    }
}

static void on_verify(void *ud, int status, bool ok, bool needs_rehash)
{
    struct result *r = ud;
    r->calls++;
    r->status = status;
    r->ok = ok;
    r->needs_rehash = needs_rehash;
}

/* Runs the loop until nothing is pending: the pool's handle only keeps the
 * loop alive while jobs are in flight, so this returns by itself. */
static void run(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
}

static void close_loop(uv_loop_t *loop)
{
    password_loop_detach(loop);
    uv_run(loop, UV_RUN_DEFAULT); /* completes the handle's close */
    assert_int_equal(uv_loop_close(loop), 0);
}

static void hash_now(uv_loop_t *loop, const char *pw, struct result *r)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(password_hash_async(loop, pw, strlen(pw), on_hash, r), PASSWORD_OK);
    assert_int_equal(r->calls, 0); /* never from inside the call */
    run(loop);
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->status, PASSWORD_OK);
}

static void verify_now(uv_loop_t *loop, const char *pw, const char *phc, struct result *r)
{
    memset(r, 0, sizeof *r);
    assert_int_equal(password_verify_async(loop, pw, strlen(pw), phc, on_verify, r), PASSWORD_OK);
    run(loop);
    assert_int_equal(r->calls, 1);
}

static void test_round_trip(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(2, 16, small), 0);
    assert_int_equal(password_pool_start(2, 16, small), -1); /* once only */

    struct result h, h2, v;
    hash_now(&loop, "correct horse battery", &h);
    assert_memory_equal(h.phc, "$argon2id$v=19$m=1024,t=1,p=1$", 30);
    struct password_params p;
    assert_int_equal(password_phc_params(h.phc, &p), 0);
    assert_int_equal(p.m_kib, 1024);
    assert_int_equal(p.t, 1);
    assert_int_equal(p.p, 1);

    /* A fresh salt each time. */
    hash_now(&loop, "correct horse battery", &h2);
    assert_string_not_equal(h.phc, h2.phc);

    verify_now(&loop, "correct horse battery", h.phc, &v);
    assert_int_equal(v.status, PASSWORD_OK);
    assert_true(v.ok);
    assert_false(v.needs_rehash);

    verify_now(&loop, "correct horse batterY", h.phc, &v);
    assert_int_equal(v.status, PASSWORD_OK);
    assert_false(v.ok);
    assert_false(v.needs_rehash);

    /* A prefix of the password is another password. */
    verify_now(&loop, "correct horse", h.phc, &v);
    assert_false(v.ok);

    /* Unknown user: runs against the dummy, never ok, not an error. */
    verify_now(&loop, "correct horse battery", NULL, &v);
    assert_int_equal(v.status, PASSWORD_OK);
    assert_false(v.ok);
    verify_now(&loop, "", NULL, &v);
    assert_false(v.ok);

    /* A corrupt stored hash is an error, never a match. */
    verify_now(&loop, "correct horse battery", "$argon2id$v=19$m=1024,t=1,p=1$AAAA", &v);
    assert_int_equal(v.status, PASSWORD_EHASH);
    assert_false(v.ok);
    /* One that asks for 4 GiB of memory is refused before argon2 runs. */
    verify_now(&loop, "x", "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo", &v);
    assert_int_equal(v.status, PASSWORD_EHASH);

    close_loop(&loop);
    password_pool_stop();
}

static void test_lengths(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct result r = {0};
    /* No pool yet. */
    assert_int_equal(password_hash_async(&loop, "12345678", 8, on_hash, &r), PASSWORD_EINVAL);
    assert_int_equal(password_pool_start(1, 4, small), 0);

    assert_true(password_length_ok(8));
    assert_true(password_length_ok(1024));
    assert_false(password_length_ok(7));
    assert_false(password_length_ok(1025));
    assert_false(password_length_ok(0));

    char *big = malloc(1025);
    memset(big, 'x', 1025);
    assert_int_equal(password_hash_async(&loop, "1234567", 7, on_hash, &r), PASSWORD_EINVAL);
    assert_int_equal(password_hash_async(&loop, big, 1025, on_hash, &r), PASSWORD_EINVAL);
    assert_int_equal(password_verify_async(&loop, big, 1025, NULL, on_verify, &r), PASSWORD_EINVAL);
    /* 1024 bytes, the longest allowed, hashes and verifies. */
    struct result h, v;
    memset(&h, 0, sizeof h);
    assert_int_equal(password_hash_async(&loop, big, 1024, on_hash, &h), PASSWORD_OK);
    run(&loop);
    assert_int_equal(h.status, PASSWORD_OK);
    memset(&v, 0, sizeof v);
    assert_int_equal(password_verify_async(&loop, big, 1024, h.phc, on_verify, &v), PASSWORD_OK);
    run(&loop);
    assert_true(v.ok);
    /* Embedded NUL bytes count: "a\0b..." is not "a\0c...". */
    big[3] = '\0';
    memset(&v, 0, sizeof v);
    assert_int_equal(password_verify_async(&loop, big, 1024, h.phc, on_verify, &v), PASSWORD_OK);
    run(&loop);
    assert_false(v.ok);
    free(big);
    assert_int_equal(r.calls, 0); /* refused calls never call back */

    close_loop(&loop);
    password_pool_stop();
}

static void test_needs_rehash(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(1, 4, small), 0);
    struct result h, v;
    hash_now(&loop, "s3cret-passw0rd", &h);
    close_loop(&loop);
    password_pool_stop();

    /* The operator raises memory: an old hash still verifies, and says so. */
    struct password_params stronger = {2048, 1, 1};
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(1, 4, stronger), 0);
    verify_now(&loop, "s3cret-passw0rd", h.phc, &v);
    assert_true(v.ok);
    assert_true(v.needs_rehash);
    verify_now(&loop, "wrong-passw0rd", h.phc, &v);
    assert_false(v.ok);
    assert_false(v.needs_rehash); /* only meaningful after a match */
    struct result h2;
    hash_now(&loop, "s3cret-passw0rd", &h2);
    verify_now(&loop, "s3cret-passw0rd", h2.phc, &v);
    assert_true(v.ok);
    assert_false(v.needs_rehash);
    close_loop(&loop);
    password_pool_stop();

    /* Pure helpers. */
    struct password_params want = {19456, 2, 1};
    assert_false(password_needs_rehash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", want));
    assert_false(password_needs_rehash("$argon2id$v=19$m=65536,t=3,p=2$c2FsdA$aGFzaA", want));
    assert_true(password_needs_rehash("$argon2id$v=19$m=19456,t=1,p=1$c2FsdA$aGFzaA", want));
    assert_true(password_needs_rehash("$argon2id$v=19$m=4096,t=2,p=1$c2FsdA$aGFzaA", want));
    assert_true(password_needs_rehash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", want));
    assert_true(password_needs_rehash("garbage", want));
}

static void test_phc_parse(void **state)
{
    (void)state;
    struct password_params p;
    assert_int_equal(password_phc_params("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA+/", &p),
                     0);
    assert_int_equal(p.m_kib, 19456);
    assert_int_equal(p.t, 2);
    assert_int_equal(p.p, 1);
    static const char *const bad[] = {
        "",
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",        /* argon2i */
        "$argon2d$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",        /* argon2d */
        "$argon2id$v=16$m=19456,t=2,p=1$c2FsdA$aGFzaA",       /* old version */
        "$argon2id$m=19456,t=2,p=1$c2FsdA$aGFzaA",            /* no version */
        "$argon2id$v=19$m=019456,t=2,p=1$c2FsdA$aGFzaA",      /* leading zero */
        "$argon2id$v=19$m=99999999999,t=2,p=1$c2FsdA$aGFzaA", /* overflow */
        "$argon2id$v=19$t=2,m=19456,p=1$c2FsdA$aGFzaA",       /* order */
        "$argon2id$v=19$m=19456,t=2,p=1$$aGFzaA",             /* empty salt */
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",             /* empty hash */
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA$",      /* trailing */
        "$argon2id$v=19$m=19456,t=2,p=1$c2Fs=A$aGFzaA",       /* padding */
        "$argon2id$v=19$m=-1,t=2,p=1$c2FsdA$aGFzaA",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(password_phc_params(bad[i], &p), -1);
    assert_int_equal(password_phc_params(NULL, &p), -1);
}

static void test_start_rejects(void **state)
{
    (void)state;
    assert_int_equal(password_pool_start(1, 0, small), -1); /* queue */
    assert_int_equal(password_pool_start(1, 4, (struct password_params){1024, 0, 1}), -1); /* t */
    assert_int_equal(password_pool_start(1, 4, (struct password_params){1024, 1, 0}), -1); /* p */
    assert_int_equal(password_pool_start(1, 4, (struct password_params){4, 1, 1}), -1);    /* m */
    assert_int_equal(password_pool_start(1, 4, (struct password_params){1u << 30, 1, 1}), -1);
    password_pool_stop(); /* harmless when not started */
}

static void test_queue_full(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    /* One worker, one waiting slot, hashes slow enough (8 MiB) that the
     * worker cannot drain the queue between two submissions. */
    assert_int_equal(password_pool_start(1, 1, (struct password_params){8192, 1, 1}), 0);
    struct result r[10];
    memset(r, 0, sizeof r);
    int accepted = 0, busy = 0;
    for (int i = 0; i < 10; i++) {
        int rc = password_hash_async(&loop, "password123", 11, on_hash, &r[i]);
        if (rc == PASSWORD_OK)
            accepted++;
        else if (rc == PASSWORD_EBUSY)
            busy++;
        else
            fail_msg("unexpected status %d", rc);
    }
    assert_true(accepted >= 1 && accepted <= 2); /* one running + one waiting at most */
    assert_int_equal(accepted + busy, 10);
    run(&loop);
    int called = 0;
    for (int i = 0; i < 10; i++) {
        called += r[i].calls;
        if (r[i].calls)
            assert_int_equal(r[i].status, PASSWORD_OK);
    }
    assert_int_equal(called, accepted); /* refused ones never call back */

    /* Once drained, the queue accepts again. */
    struct result again;
    hash_now(&loop, "password123", &again);
    close_loop(&loop);
    password_pool_stop();
}

static int canceled, other;
static void on_verify_count(void *ud, int status, bool ok, bool needs_rehash)
{
    (void)ud;
    (void)ok;
    (void)needs_rehash;
    if (status == PASSWORD_ECANCELED) {
        canceled++;
        /* Queuing from a cancel callback is refused: the loop is going away. */
        assert_int_equal(password_verify_async((uv_loop_t *)ud, "x", 1, NULL, on_verify_count, ud),
                         PASSWORD_EINVAL);
    } else {
        other++;
    }
}

static void test_detach_cancels(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(1, 8, (struct password_params){8192, 1, 1}), 0);
    canceled = other = 0;
    for (int i = 0; i < 5; i++)
        assert_int_equal(password_verify_async(&loop, "pw", 2, NULL, on_verify_count, &loop),
                         PASSWORD_OK);
    /* Detach at once: the waiting jobs are canceled now, the running one's
     * result is dropped. */
    password_loop_detach(&loop);
    assert_true(canceled >= 4);
    assert_int_equal(other, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    password_pool_stop(); /* joins the worker, which drops its result */
    assert_int_equal(other, 0);

    /* Another loop on a restarted pool works normally. */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(1, 8, small), 0);
    struct result h;
    hash_now(&loop, "after-restart", &h);
    close_loop(&loop);
    password_pool_stop();
}

/* The loop keeps serving while a hash runs: a repeating timer ticks. */
static int ticks;
static struct result slow;
static void on_tick(uv_timer_t *t)
{
    ticks++;
    if (slow.calls)
        uv_timer_stop(t);
}

static void test_loop_stays_responsive(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(password_pool_start(1, 4, (struct password_params){65536, 2, 1}), 0);
    uv_timer_t timer;
    uv_timer_init(&loop, &timer);
    ticks = 0;
    memset(&slow, 0, sizeof slow);
    assert_int_equal(password_hash_async(&loop, "slow-password", 13, on_hash, &slow), PASSWORD_OK);
    uv_timer_start(&timer, on_tick, 1, 1);
    run(&loop);
    assert_int_equal(slow.calls, 1);
    assert_true(ticks >= 3); /* 64 MiB x 2 passes takes well over 3 ms */
    uv_close((uv_handle_t *)&timer, NULL);
    close_loop(&loop);
    password_pool_stop();
}

/* Busy normal-priority threads, one per core: idle-priority hashers get no
 * CPU while they spin. */
static atomic_int spinning;

static void spinner(void *p)
{
    (void)p;
    while (spinning)
        ;
}

/* Starved idle hashers: the boost threads (normal priority) finish the
 * work anyway, including a job an idle hasher had taken and cannot finish
 * (run again, first result wins, the late one dropped). Each hash costs
 * several times the 20 ms bound even on a free core, so the queue waits past
 * the bound without an idle hasher finishing whether or not the spinners
 * starve it at once (with cheap hashes an idle hasher that got a moment of
 * CPU before the spinners ran finished everything, and nothing was boosted). */
static void test_boost_when_starved(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    password_pool_set_boost_ms(20);
    assert_int_equal(password_pool_start(1, 8, (struct password_params){65536, 3, 1}), 0);
    struct result h;
    hash_now(&loop, "boosted-password", &h); /* warm: the idle hasher is waiting */
    unsigned n = uv_available_parallelism();
    if (n > 16)
        n = 16;
    uv_thread_t spin[16];
    spinning = 1;
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(uv_thread_create(&spin[i], spinner, NULL), 0);
    struct result v[4];
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < 4; i++) {
        memset(&v[i], 0, sizeof v[i]);
        assert_int_equal(password_verify_async(&loop, "boosted-password", 16, i % 2 ? h.phc : NULL,
                                               on_verify, &v[i]),
                         PASSWORD_OK);
    }
    run(&loop);
    uint64_t ms = (uv_hrtime() - t0) / 1000000u;
    uint64_t boosted = password_pool_boosted();
    spinning = 0;
    for (unsigned i = 0; i < n; i++)
        uv_thread_join(&spin[i]);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(v[i].calls, 1);
        assert_int_equal(v[i].status, PASSWORD_OK);
        assert_int_equal(v[i].ok, i % 2 == 1);
    }
    assert_true(boosted >= 1);
    /* Starved hashers never finish while the spinners run (they stop only
     * after run returns), so without boosting this hangs; the bound only
     * turns a hang into a failure. 4 hashes of 64 MiB take well under a
     * second on a free machine; 5 s failed on a 2-core machine at load 10. */
    assert_true(ms < 30000);
    close_loop(&loop);
    password_pool_stop();
    password_pool_set_boost_ms(100);
}

/* Two loops on two threads share the pool; each gets its own results. */
struct thread_arg {
    int done;
    int ok;
};

static void loop_thread(void *p)
{
    struct thread_arg *a = p;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct result h, v;
    for (int i = 0; i < 3; i++) {
        memset(&h, 0, sizeof h);
        if (password_hash_async(&loop, "thread-password", 15, on_hash, &h) != PASSWORD_OK)
            continue;
        uv_run(&loop, UV_RUN_DEFAULT);
        memset(&v, 0, sizeof v);
        if (h.calls != 1 || password_verify_async(&loop, "thread-password", 15, h.phc, on_verify,
                                                  &v) != PASSWORD_OK)
            continue;
        uv_run(&loop, UV_RUN_DEFAULT);
        a->ok += v.calls == 1 && v.ok;
    }
    password_loop_detach(&loop);
    uv_run(&loop, UV_RUN_DEFAULT);
    a->done = uv_loop_close(&loop) == 0;
}

static void test_two_loops(void **state)
{
    (void)state;
    assert_int_equal(password_pool_start(2, 16, small), 0);
    struct thread_arg a = {0}, b = {0};
    uv_thread_t ta, tb;
    assert_int_equal(uv_thread_create(&ta, loop_thread, &a), 0);
    assert_int_equal(uv_thread_create(&tb, loop_thread, &b), 0);
    uv_thread_join(&ta);
    uv_thread_join(&tb);
    assert_int_equal(a.ok, 3);
    assert_int_equal(b.ok, 3);
    assert_true(a.done && b.done);
    password_pool_stop();
}

/* Many loops, tiny hashes, results racing the loops' detach: every job a
 * loop waits for arrives exactly once (a lost wake-up hangs uv_run, which
 * the test's timeout turns into a failure). Detaching while workers are
 * still writing to the mailbox is exercised too; a freed-too-early mailbox
 * would be an ASan report, but that window is narrow, so this is a smoke
 * test of it rather than a proof. */
#define STRESS_LOOPS 4
#define STRESS_ROUNDS 150
#define STRESS_JOBS 6

struct stress_arg {
    int delivered, expected, bad;
};

static void on_stress(void *ud, int status, bool ok, bool needs_rehash)
{
    (void)ok;
    (void)needs_rehash;
    int *count = ud;
    if (status == PASSWORD_OK)
        (*count)++;
    else if (status != PASSWORD_ECANCELED)
        *count = -1000; /* shows up as a mismatch below */
}

static void stress_thread(void *p)
{
    struct stress_arg *a = p;
    for (int round = 0; round < STRESS_ROUNDS; round++) {
        uv_loop_t loop;
        if (uv_loop_init(&loop) != 0) {
            a->bad++;
            return;
        }
        int count = 0, accepted = 0;
        for (int i = 0; i < STRESS_JOBS; i++)
            accepted +=
                password_verify_async(&loop, "pw", 2, NULL, on_stress, &count) == PASSWORD_OK;
        if (round % 3 == 2) {
            /* Detach while results are on their way. */
            password_loop_detach(&loop);
            uv_run(&loop, UV_RUN_DEFAULT);
        } else {
            uv_run(&loop, UV_RUN_DEFAULT);
            a->expected += accepted;
            a->delivered += count;
            password_loop_detach(&loop);
            uv_run(&loop, UV_RUN_DEFAULT);
        }
        if (count < 0 || uv_loop_close(&loop) != 0)
            a->bad++;
    }
}

static void test_many_loops_race_detach(void **state)
{
    (void)state;
    assert_int_equal(password_pool_start(4, 64, (struct password_params){8, 1, 1}), 0);
    struct stress_arg args[STRESS_LOOPS] = {0};
    uv_thread_t th[STRESS_LOOPS];
    for (int i = 0; i < STRESS_LOOPS; i++)
        assert_int_equal(uv_thread_create(&th[i], stress_thread, &args[i]), 0);
    for (int i = 0; i < STRESS_LOOPS; i++)
        uv_thread_join(&th[i]);
    for (int i = 0; i < STRESS_LOOPS; i++) {
        assert_int_equal(args[i].bad, 0);
        assert_true(args[i].expected > 0);
        assert_int_equal(args[i].delivered, args[i].expected);
    }
    password_pool_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),         cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_needs_rehash),       cmocka_unit_test(test_phc_parse),
        cmocka_unit_test(test_start_rejects),      cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_detach_cancels),     cmocka_unit_test(test_loop_stays_responsive),
        cmocka_unit_test(test_two_loops),          cmocka_unit_test(test_many_loops_race_detach),
        cmocka_unit_test(test_boost_when_starved),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
