#ifndef TENANTD_SYSTEM_SYSTEM_H
#define TENANTD_SYSTEM_SYSTEM_H
#include "core/router.h"

/* /health, /ready, /metrics, /openapi.json, /docs */
extern const struct module system_module;

#endif
