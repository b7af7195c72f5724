#ifndef TENANTD_CORE_RFC3339_H
#define TENANTD_CORE_RFC3339_H
#include <stdbool.h>

/*
 * The one check of an RFC 3339 date-time a client sends (a job's run_at,
 * the audit log's ?since=, an import's times): YYYY-MM-DDTHH:MM:SS, an
 * optional fraction of 1..9 digits, then Z or +HH:MM/-HH:MM, of a real
 * calendar date in years 1970..9999 ('t' and 'z' too, as RFC 3339 allows).
 * PostgreSQL alone would also take "yesterday" or "epoch".
 */
bool rfc3339_valid(const char *s);

#endif
