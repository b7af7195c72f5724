#ifndef TENANTD_JOB_CRON_H
#define TENANTD_JOB_CRON_H
#include <stdbool.h>
#include <stddef.h>

/*
 * Five-field cron expressions: minute hour day-of-month month day-of-week.
 * Each field: `*`, a number, a range `a-b`, a step `*`/n or `a-b/n`, or a
 * comma list of those. Day of week 0-7 (0 and 7 are Sunday). As in Vixie
 * cron, when both day fields are restricted a day matching either runs.
 * The next run is computed in SQL (public.tenantd_cron_next, migration
 * 0011) from the expanded sets this parser produces, in the schedule's time
 * zone: a local time that does not exist (a DST gap) is skipped, one that
 * exists twice runs once.
 */
struct cron {
    bool minute[60], hour[24], dom[32], month[13], dow[7];
    bool dom_any, dow_any; /* the field was `*` */
};

/* Parses expr; 0, or -1 with a short reason in err. */
int cron_parse(const char *expr, struct cron *out, char *err, size_t errlen);

/* The set of field i (0 minute .. 4 day of week) as a PostgreSQL int[]
 * literal, e.g. "{0,15,30,45}", into buf. */
void cron_field_array(const struct cron *c, int field, char *buf, size_t len);

#endif
