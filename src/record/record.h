#ifndef TENANTD_RECORD_RECORD_H
#define TENANTD_RECORD_RECORD_H
#include <stddef.h>

#include "core/router.h"
#include "db/db.h"

/*
 * Per-org records: schemaless JSON documents in named collections, stored
 * in the org's own schema (table `records`, tenant migration 0001). Routes
 * /v1/collections/{collection}/records[/{id}].
 */
extern const struct module record_module;

/* A collection name: 1..64 characters of a-z, 0-9, '_' and '-'. */
#define RECORD_COLLECTION_MAX 64
/* Bodies and filters nested deeper than this (objects and arrays) are refused. */
#define RECORD_MAX_DEPTH 64

/* True when name (NUL-terminated) is a valid collection name. */
int record_collection_valid(const char *name);

/*
 * Hook for the `records.export` job type: renders every record of one
 * collection of the org whose schema is `schema` ("tenant_<hex>", never user
 * text) as one JSON array, oldest first, in one statement on `pool`.
 * collection must be valid (record_collection_valid) and stay valid until cb
 * runs. cb runs exactly once from a later loop iteration: on success with
 * status DB_OK and json/len the array (valid during the callback only), else
 * with json NULL and the db status (DB_ERROR or DB_UNAVAILABLE).
 */
typedef void (*record_export_cb)(enum db_status status, const char *json, size_t len, void *ud);
void record_export_collection(struct db_pool *pool, const char *schema, const char *collection,
                              record_export_cb cb, void *ud);

#endif
