/* STUB */
#include "core/router.h"
struct router *router_new(const struct module *const *modules, size_t nmodules) { return 0; }
void router_free(struct router *r) {}
enum router_result router_match(const struct router *r, struct request *req, const char **allow) { return ROUTER_NOT_FOUND; }
void router_each(const struct router *r, void (*fn)(const struct route *rt, void *ud), void *ud) {}
const char *router_method_name(int method) { return "GET"; }
