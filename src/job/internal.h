#ifndef TENANTD_JOB_INTERNAL_H
#define TENANTD_JOB_INTERNAL_H
/* Private to src/job: the job-type table (types.c), the worker's view of a
 * running job (worker.c), shared by the routes (job.c). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

enum job_outcome {
    JOB_OK,      /* succeeded; result set */
    JOB_RETRY,   /* this attempt failed; retry while attempts remain */
    JOB_FAIL,    /* failed for good (retrying cannot help); refunded */
    JOB_STOPPED, /* interrupted by shutdown: released, the attempt not counted */
};

/* One attempt of a job, as a handler sees it (on a worker thread). */
struct job_run {
    PGconn *conn;   /* the worker's own connection (blocking libpq) */
    const char *id; /* job id */
    const char *org_id;
    const char *schema; /* the org's schema ("tenant_<hex>"), from public.orgs */
    json_t *payload;    /* validated at enqueue; borrowed */
    int attempt;        /* 1 .. max_attempts */
    int max_attempts;
    uint64_t deadline_ns; /* monotonic (job_now_ns): the attempt's timeout */
    char *result;         /* out: malloc'd JSON object text (JOB_OK, optional otherwise) */
    char error[512];      /* out: why it failed */
    /* out: a failure of this attempt is on the far side (a webhook's
     * receiver), not tenantd's: if the job ends failed, its cost is not
     * refunded. False: failures are refunded. */
    bool keep_charge;
};

/* What a job type is: the table in types.c. */
struct job_type {
    const char *type;
    const char *description;
    bool test_only;        /* only with TENANTD_TEST_JOBS=1 */
    int64_t (*cost)(void); /* credits, from the configuration */
    /* Checks a payload object; adds {"field": "payload.x", ...} entries. */
    void (*validate)(json_t *payload, json_t **errors);
    enum job_outcome (*run)(struct job_run *run);
};

/* The enabled type called `type`, or NULL (unknown, or a test type while
 * TENANTD_TEST_JOBS is off). */
const struct job_type *job_type_find(const char *type);
/* The i-th enabled type, or NULL past the end (for GET /v1/job-types). */
const struct job_type *job_type_at(size_t i);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t job_now_ns(void);

enum job_wait { JOB_WAIT_DONE, JOB_WAIT_DEADLINE, JOB_WAIT_STOP };
/* Sleeps until until_ns (monotonic); returns early with JOB_WAIT_DEADLINE
 * at run->deadline_ns or JOB_WAIT_STOP when shutdown's drain time is over
 * (worker.c). */
enum job_wait job_run_wait(struct job_run *run, uint64_t until_ns);

/* Whether webhook.deliver may connect to this address without
 * TENANTD_WEBHOOK_ALLOW_PRIVATE (a public unicast address). */
struct sockaddr;
bool job_addr_public(const struct sockaddr *sa);

/* Whether TENANTD_WEBHOOK_ALLOW lets webhook.deliver call host:port. */
bool job_webhook_allowed(const char *host, int port);

/* Loads the TLS client context of webhook.deliver (system CAs plus
 * TENANTD_WEBHOOK_CA_FILE) now, so that a bad CA file stops the start
 * rather than every https delivery. 0, or -1 with a logged message. */
int job_webhook_tls_check(void);

#endif
