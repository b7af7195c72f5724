#ifndef TENANTD_JOB_JOB_H
#define TENANTD_JOB_JOB_H

#include "core/router.h"

/*
 * Jobs: background work an org pays for in credits (public.jobs, control
 * migration "jobs"). Routes /v1/jobs..., /v1/job-types. init starts
 * TENANTD_JOB_WORKERS in-process workers (none when 0); shutdown stops them
 * (finish or release within TENANTD_DRAIN_TIMEOUT_MS).
 */
extern const struct module job_module;

/*
 * Starts `n` worker threads (each with its own blocking libpq connection)
 * and one coordinator thread (LISTEN tenantd_jobs, lease renewal, reaping
 * of expired leases) against `conninfo`. Threads block every signal, so the
 * caller's signal handling is untouched. Connections are made (and remade
 * with back-off) by the threads themselves: a database that is down only
 * delays work. Returns 0, or -1 with a logged message (already started,
 * n < 1, no threads).
 */
int job_workers_start(const char *conninfo, int n);

/*
 * Stops the workers started by job_workers_start: no new claims; a job that
 * is running may finish until drain_ms have passed, then it is released
 * (queued again, the attempt not counted), as are claimed jobs not started.
 * Joins every thread and frees everything. No-op when none run.
 */
void job_workers_stop(int drain_ms);

/* The first half of job_workers_stop, without waiting: no new claims, and
 * the drain deadline starts now. A later job_workers_stop keeps that
 * deadline and joins the threads. Thread-safe; once only counts. */
void job_workers_begin_stop(int drain_ms);

/*
 * `tenantd worker`: checks that the database schema is current, runs
 * TENANTD_JOB_WORKERS workers (no HTTP) until SIGTERM or SIGINT, then stops
 * them like job_workers_stop(TENANTD_DRAIN_TIMEOUT_MS). Arguments after the
 * command: none (--help prints usage). Returns the process exit code.
 */
int job_worker_main(int argc, char **argv);

/*
 * The jobs section of /metrics (Prometheus text): queue depth and running
 * jobs by type, jobs ended by type and outcome, attempts claimed by type,
 * schedule ticks by outcome and event/webhook deliveries by outcome, all
 * database-wide (every process and worker), sampled every few seconds by
 * the job listener thread; plus this process's worker API calls and its
 * per-type claimed/completed/failed counters (in-process and HTTP). A
 * malloc'd string ("" before the first sample); the caller frees it.
 */
char *job_metrics_text(void);

#endif
