#ifndef TENANTD_CORS_H
#define TENANTD_CORS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/http.h"

/*
 * CORS for browser frontends on other origins (TENANTD_CORS_ORIGINS: exact
 * origins, comma-separated, or "*"; unset: no CORS headers at all).
 * Credentials are bearer tokens, never cookies, so no
 * Access-Control-Allow-Credentials is ever sent.
 */

/* Whether list is "*" or origins like https://app.example.com[:port];
 * else false with the first bad entry in bad. */
bool cors_origins_valid(const char *list, char *bad, size_t badlen);

/* Called before routing. A preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) is answered here: 204 with the allowed
 * methods and headers, or 403 for an origin or method not allowed; returns
 * true then. Any other request from an allowed origin gets
 * Access-Control-Allow-Origin and Access-Control-Expose-Headers added to
 * whatever it is answered; returns false. */
bool cors_handle(struct request *req);

#endif
