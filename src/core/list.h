#ifndef TENANTD_CORE_LIST_H
#define TENANTD_CORE_LIST_H

#include <stdbool.h>
#include <stddef.h>

/* Calls fn on each entry of a comma-separated setting ("a, b,c"), trimmed
 * of spaces and tabs, empty ones skipped, until fn returns true; returns
 * whether one did. */
bool list_each(const char *list, bool (*fn)(const char *s, size_t n, void *ud), void *ud);

#endif
