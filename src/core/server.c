/* STUB */
#include "core/http.h"
int server_run(const struct router *router, const struct server_hooks *hooks) { return -1; }
