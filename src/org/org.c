/* STUB: the org module (replaced by its engineer). */
#include "org/org.h"
const struct module org_module = {.name = "org"};
