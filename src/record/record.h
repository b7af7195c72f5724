#ifndef TENANTD_RECORD_RECORD_H
#define TENANTD_RECORD_RECORD_H
#include "core/router.h"

/*
 * Per-org records: schemaless JSON documents in named collections, stored
 * in the org's own schema (table `records`, tenant migration 0001). Routes
 * /v1/collections/{collection}/records[/{id}].
 */
extern const struct module record_module;

/* A collection name: 1..64 characters of a-z, 0-9, '_' and '-' (the one
 * rule: records, batches, the records.export job type, org imports). */
#define RECORD_COLLECTION_MAX 64
#define RECORD_COLLECTION_RULE "1 to 64 characters of a-z, 0-9, '_' and '-'"
/* Bodies and filters nested deeper than this (objects and arrays) are refused. */
#define RECORD_MAX_DEPTH 64

/* True when name (NUL-terminated) is a valid collection name. */
int record_collection_valid(const char *name);

/* The {collection} path parameter, or NULL after answering 404. */
const char *record_path_collection(struct request *req);

#endif
