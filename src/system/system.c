/* STUB */
#include "system/system.h"
const struct module system_module = {.name = "system"};
