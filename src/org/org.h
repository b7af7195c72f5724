#ifndef TENANTD_ORG_ORG_H
#define TENANTD_ORG_ORG_H
#include <stdbool.h>

#include "core/router.h"

/* Org lifecycle (/v1/orgs, /v1/org) and the operator's /v1/admin/orgs routes. */
extern const struct module org_module;

/* The rules of org fields, shared with the operator's import (org/import.c). */
bool org_slug_valid(const char *s);          /* 2..50 of a-z, 0-9 and '-' */
bool org_domain_valid(const char *s);        /* a lower-case DNS name with a dot */

/* The binary's tenant migrations as PostgreSQL array literals (up SQL,
 * versions, names, checksums), as tenantd_create_org takes them; false
 * before the org module started. Read-only while loops run. */
bool org_tenant_migrations(const char *out[4]);

#endif
