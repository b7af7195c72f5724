#ifndef TENANTD_RECORD_BATCH_H
#define TENANTD_RECORD_BATCH_H
#include "core/router.h"

/* POST /v1/collections/{collection}/records/batch: body {"records": [...]}
 * of 1..RECORD_BATCH_MAX objects, created in one statement, all or nothing. */
extern const struct module record_batch_module;

#define RECORD_BATCH_MAX 1000
#define RECORD_BATCH_MAX_STR "1000"

#endif
