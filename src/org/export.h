#ifndef TENANTD_ORG_EXPORT_H
#define TENANTD_ORG_EXPORT_H
#include "core/router.h"

/* GET /v1/org/export: the caller's org as NDJSON, streamed (org/export.c). */
extern const struct module org_export_module;

/* The export format's version, the first line's "version". */
#define ORG_EXPORT_VERSION 1

#endif
