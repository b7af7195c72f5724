#ifndef TENANTD_CORE_EMBEDDED_H
#define TENANTD_CORE_EMBEDDED_H
#include <stddef.h>

/* Files compiled into the binary by cmake/embed.cmake. */
struct embedded_file {
    const char *track; /* "control" or "tenant" */
    const char *name;  /* e.g. "0001_orgs.up.sql" */
    const char *data;  /* NUL-terminated */
    size_t len;
};

/* Every migration file, sorted by track then name; ends with a zeroed entry. */
extern const struct embedded_file embedded_migrations[];
extern const size_t embedded_migrations_count;
/* src/system/openapi.json, NUL-terminated. */
extern const char *const embedded_openapi;
extern const size_t embedded_openapi_len;

#endif
