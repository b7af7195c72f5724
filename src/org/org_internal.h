#ifndef TENANTD_ORG_ORG_INTERNAL_H
#define TENANTD_ORG_ORG_INTERNAL_H
#include "core/http.h"

/* What org.c (the route table, an org's own routes) and admin.c (the
 * operator's) share. */

/* The {slug} path parameter, lowercased, or NULL (after answering 404) when
 * it cannot be a slug at all: no query for junk. */
const char *org_slug_param(struct request *req);

/* The operator's handlers (admin.c). */
void org_admin_list(struct request *req);
void org_admin_suspend(struct request *req);
void org_admin_unsuspend(struct request *req);
void org_admin_delete(struct request *req);

#endif
