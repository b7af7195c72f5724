#ifndef TENANTD_JOB_INTERNAL_H
#define TENANTD_JOB_INTERNAL_H
/* Private to src/job: the job-type table (types.c) and its handlers
 * (reports.c, webhook.c, email.c), the worker's view of a running job
 * (worker.c), shared by the routes (job.c). */
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

/* The W3C trace headers for a call out of run (jobtrace.c): a child span
 * of the request that enqueued the job, "traceparent: ...\r\n" and maybe
 * "tracestate: ...\r\n", into out; "" when the job has no trace. One
 * query on run->conn. */
#define TRACE_HEADERS_MAX 640
void job_trace_headers(struct job_run *run, char *out, size_t n);

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

/* The built-in handlers types.c's table names (worker threads):
 * records.export and credits.report (reports.c), webhook.deliver
 * (webhook.c). */
enum job_outcome job_export_run(struct job_run *run);
enum job_outcome job_report_run(struct job_run *run);
enum job_outcome job_webhook_run(struct job_run *run);
/* records.export's payload.max_records when absent. */
#define JOB_EXPORT_MAX_DEFAULT 1000

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t job_now_ns(void);

enum job_wait { JOB_WAIT_DONE, JOB_WAIT_DEADLINE, JOB_WAIT_STOP };
/* Sleeps until until_ns (monotonic); returns early with JOB_WAIT_DEADLINE
 * at run->deadline_ns or JOB_WAIT_STOP when shutdown's drain time is over
 * (worker.c). */
enum job_wait job_run_wait(struct job_run *run, uint64_t until_ns);

/* Whether webhook.deliver may connect to this address without
 * TENANTD_WEBHOOK_ALLOW_PRIVATE (a public unicast address; httpclient.c). */
struct sockaddr;
bool job_addr_public(const struct sockaddr *sa);

/* Whether TENANTD_WEBHOOK_ALLOW lets webhook.deliver call host:port
 * (webhook.c). */
bool job_webhook_allowed(const char *host, int port);

/* Loads the TLS client context of webhook.deliver (system CAs plus
 * TENANTD_WEBHOOK_CA_FILE) now, so that a bad CA file stops the start
 * rather than every https delivery. 0, or -1 with a logged message
 * (httpclient.c). */
int job_webhook_tls_check(void);

/* ---- jobs your own code runs (external.c, workerapi.c) ---- */
#include "core/http.h"
struct idem_key;

/* Queues a job of `type` (checked) for the caller's org: charge, insert,
 * NOTIFY, answer 202 (job.c). payload may be NULL ({}). */
void job_enqueue_send(struct request *req, const char *type, json_t *payload, int priority,
                      const char *run_at, int max_attempts, int64_t cost,
                      const struct idem_key *ik);

/* Whether s can name an external type: ^[a-z][a-z0-9_.-]{0,63}$. */
bool job_ext_name_valid(const char *s);
/* POST /v1/jobs of a type that is not built in: looks the declared type up,
 * checks the payload against its schema, then job_enqueue_send (404-free:
 * an unknown type is 422 like any). max_attempts 0: the type's. */
void job_ext_enqueue(struct request *req, const char *type, json_t *payload, int priority,
                     const char *run_at, int max_attempts, const struct idem_key *ik);
/* Looks a declared type up and checks payload (NULL: {}) against its schema:
 * answers 422 itself, or calls done with the type's cost and max_attempts. */
typedef void (*job_ext_checked)(struct request *req, void *ud, int64_t cost, int max_attempts);
void job_ext_check(struct request *req, const char *type, json_t *payload, job_ext_checked done,
                   void *ud);

/* Schedules (schedule.c). The fake clock of tests: false for the real one
 * (SQL now()); else the sped-up time as unix seconds text in buf. */
bool job_clock_fake(char *buf, size_t len);
/* Fires due schedule ticks on a blocking connection (the listener thread). */
void job_schedule_tick(PGconn *c);
void job_schedule_create(struct request *req);
void job_schedule_list(struct request *req);
void job_schedule_get(struct request *req);
void job_schedule_patch(struct request *req);
void job_schedule_delete(struct request *req);

/* Event webhooks (events.c). */
void job_webhook_create(struct request *req);
void job_webhook_list(struct request *req);
void job_webhook_get(struct request *req);
void job_webhook_delete(struct request *req);

/* Metrics (metrics.c): samples the database part (listener thread), counts
 * this process's worker API calls (ok: answered 200). */
enum job_api_op {
    JOB_API_CLAIM,
    JOB_API_HEARTBEAT,
    JOB_API_COMPLETE,
    JOB_API_FAIL,
    JOB_API__COUNT
};
void job_metrics_sample(PGconn *c);
void job_metrics_api(enum job_api_op op, bool ok);
/* One statement carried a set of worker completions (workerapi.c). */
void job_metrics_completion_set(void);
/* One statement carried a set of worker claims (workerapi.c). */
void job_metrics_claim_set(void);

/* Per-process, per-type counts of jobs this process's workers handled: in
 * process (worker.c) or through the worker API (workerapi.c). */
enum job_via { JOB_VIA_IN_PROCESS, JOB_VIA_HTTP, JOB_VIA__COUNT };
enum job_count {
    JOB_COUNT_CLAIMED,
    JOB_COUNT_COMPLETED,
    /* Failed attempts, by what became of the job: */
    JOB_COUNT_FAIL_RETRY,     /* queued again (a retry) */
    JOB_COUNT_FAIL_FAILED,    /* failed for good */
    JOB_COUNT_FAIL_CANCELLED, /* its cancel was requested while it ran */
    JOB_COUNT_FAIL_LOST,      /* the lease had lapsed: the outcome was not taken */
    JOB_COUNT__COUNT
};
void job_metrics_count(const char *type, enum job_via via, enum job_count what);
/* n schedule ticks this process fired ended as `outcome` ("enqueued",
 * "skipped: ..."). */
void job_metrics_schedule_ticks(const char *outcome, int n);
/* The counters as one log line ("type(worker) claimed=N completed=N
 * failed_retry=N ..." per type, then "schedule_ticks(outcome)=N" per tick
 * outcome; "" when none), malloc'd; NULL when out of memory. `tenantd
 * worker`, which has no /metrics, logs it when it stops. */
char *job_metrics_counts_line(void);
/* The failure counter for the job status a failed (or lost) attempt left. */
enum job_count job_metrics_fail_outcome(const char *status);
void job_metrics_free(void);

/* GET /v1/job-types: answers data (built-in types, stolen) plus the
 * declared external types. */
void job_ext_types_list(struct request *req, json_t *data);

/* The payload_schema subset: 0, or -1 with errors added (field prefix
 * "payload_schema"). */
int job_schema_check(json_t *schema, const char *path, json_t **errors, int depth);
/* Checks value against a checked schema; adds errors named from path. */
void job_schema_validate(json_t *schema, json_t *value, const char *path, json_t **errors);

void job_ext_type_put(struct request *req);
void job_ext_type_delete(struct request *req);
void job_ext_retry(struct request *req);

void job_worker_claim(struct request *req);
void job_worker_heartbeat(struct request *req);
void job_worker_complete(struct request *req);
void job_worker_fail(struct request *req);

/* A thread LISTENing on tenantd_jobs that wakes parked claims (and reaps
 * lapsed leases when reap is set: no in-process worker does it). */
int job_ext_listener_start(const char *conninfo, bool reap);
void job_ext_listener_stop(void);

struct request;
struct db_stmt;
struct db_result;
/* Runs stmt ($1 = the path's {id}, $2 = the caller's org id) in the
 * caller's org and calls cb(result, ud); a malformed id is answered 404
 * with `missing` (ids are UUIDs) without a query. For the org-owned rows of
 * schedules and webhooks. */
void job_org_row_query(struct request *req, const struct db_stmt *stmt,
                       void (*cb)(struct db_result *r, void *ud), void *ud, const char *missing);

/* An org's own rows of one kind (orgrows.c): list (an SQL_ORG_PAGE, app/
 * pagelist.h), get and delete ($1 id, $2 org id), answered alike for every
 * kind. */
struct job_rows {
    const char *missing, *bad_id;          /* 404 details: no such row, not a UUID */
    const char *get_label, *delete_label; /* for the logs */
    const struct db_stmt *list, *get, *del;
};
/* A struct job_rows for rows called noun (a string literal). */
#define JOB_ROWS(noun, list, get, del)                                                             \
    {"No such " noun ".", "No such " noun " (ids are UUIDs).", noun " get", noun " delete",     \
     list, get, del}
void job_rows_list(struct request *req, const struct job_rows *k);
void job_rows_get(struct request *req, const struct job_rows *k);
void job_rows_delete(struct request *req, const struct job_rows *k);

#endif
