#ifndef TENANTD_AUTH_USERIMPORT_H
#define TENANTD_AUTH_USERIMPORT_H
#include "core/router.h"

/* POST /v1/users/import: users of another system with their password
 * hashes (auth/hashimport.h), 1..1000 at once, all or nothing. */
extern const struct module userimport_module;

#endif
