#ifndef TENANTD_CORE_PROCMETRICS_H
#define TENANTD_CORE_PROCMETRICS_H
#include <stdbool.h>

/*
 * The standard process_* series of Prometheus clients, read from /proc at
 * scrape time (Linux): process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds.
 */

struct procmetrics {
    double cpu_seconds;      /* user + system */
    double resident_bytes;
    double virtual_bytes;
    double start_time_s;     /* since the Unix epoch */
    long open_fds;
    double max_fds;          /* RLIMIT_NOFILE soft limit; -1 when unlimited */
};

/* Reads this process's figures; false when /proc cannot be read. */
bool procmetrics_read(struct procmetrics *out);

/* The exposition text of procmetrics_read's figures (malloc'd, the caller
 * frees it); "" when /proc cannot be read; NULL when out of memory. */
char *procmetrics_text(void);

#endif
