#ifndef TENANTD_SYSTEM_DOCS_H
#define TENANTD_SYSTEM_DOCS_H
#include <stddef.h>

#include <jansson.h>

/* Renders the /docs HTML page from an OpenAPI document; returns a malloc'd
 * string (free it) of *len bytes. Start-up only: out of memory aborts. */
char *docs_render(const json_t *doc, size_t *len);

#endif
