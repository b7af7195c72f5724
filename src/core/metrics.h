#ifndef TENANTD_CORE_METRICS_H
#define TENANTD_CORE_METRICS_H
#include <stddef.h>
#include <stdint.h>

struct loop_ctx;

/*
 * Prometheus counters. Each loop owns one `struct metrics` and is its only
 * writer (relaxed atomics), /metrics sums them all at scrape time, so the
 * request path takes no lock.
 */
struct metrics;

/* Registers a loop's metrics; call on that loop's thread before serving. */
struct metrics *metrics_new(int loop_index);

/* One finished request. route is the pattern string ("unmatched" if none);
 * its pointer must live for the process (route tables, literals). */
void metrics_request(struct metrics *m, const char *route, const char *method, int status,
                     double seconds);
void metrics_conn_open(struct metrics *m, int delta); /* +1 on accept, -1 on close */
/* A connection refused at accept (503 and close). */
enum metrics_refused { METRICS_REFUSED_FULL, METRICS_REFUSED_PER_IP, METRICS_REFUSED_REASONS };
void metrics_conn_refused(struct metrics *m, enum metrics_refused reason);

/* Pool gauges and counters, updated by db/. */
void metrics_pool(struct metrics *m, int in_use, int idle, int waiting);
void metrics_pool_schema_switch(struct metrics *m);   /* a connection changed search_path */
void metrics_db_reconnect(struct metrics *m);
/* Tenant statement cache: hits, misses (prepared), evictions (deallocated). */
void metrics_db_statements(struct metrics *m, unsigned hits, unsigned misses, unsigned evictions);
void metrics_db_recycle(struct metrics *m); /* a backend replaced for its schema count */
void metrics_db_spill(struct metrics *m);   /* an org query placed off its own slot */
void metrics_db_handed(struct metrics *m);  /* an org statement handed to its home loop */
/* Distinct schemas seen by the pool's open backends: the most by one, the sum, and how many. */
void metrics_pool_schemas(struct metrics *m, int max, int sum, int conns);

/* Renders the text exposition format (version 0.0.4) into a malloc'd string. */
char *metrics_render(size_t *len);

#endif
