#ifndef TENANTD_ORG_ORG_H
#define TENANTD_ORG_ORG_H
#include "core/router.h"

/* Org lifecycle (/v1/orgs, /v1/org) and the operator's /v1/admin/orgs routes. */
extern const struct module org_module;

#endif
