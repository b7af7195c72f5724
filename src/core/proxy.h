#ifndef TENANTD_PROXY_H
#define TENANTD_PROXY_H

#include <stdbool.h>
#include <stddef.h>

#include "core/http.h"

/*
 * The client's address behind reverse proxies (TENANTD_TRUSTED_PROXIES:
 * comma-separated IPv4/IPv6 addresses or CIDR ranges; unset: none, and
 * X-Forwarded-For is ignored). Behind a load balancer the TCP peer is the
 * balancer, and per-IP limits would lump every client together.
 */

/* Parses and keeps the list (at most 64 entries). false with the first bad
 * entry in bad. Called once, at configuration time. */
bool proxies_load(const char *list, char *bad, size_t badlen);

/* Sets req->client_ip from X-Forwarded-For when the peer is trusted: the
 * rightmost address that is not itself a trusted proxy (the ones to its
 * left may be anything the client wrote); the leftmost when all are. A
 * malformed entry ends the walk at the last trusted hop. No-op when no
 * proxies are configured. */
void proxies_resolve(struct request *req);

#endif
