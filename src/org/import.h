#ifndef TENANTD_ORG_IMPORT_H
#define TENANTD_ORG_IMPORT_H
#include "core/router.h"

/* POST /v1/admin/orgs/import: the operator re-creates an org from an
 * export, ids kept, all or nothing (org/import.c). */
extern const struct module org_import_module;

#endif
