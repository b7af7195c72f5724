/* STUB: users and API keys routes (replaced by their engineer). */
#include "auth/auth.h"
const struct module users_module = {.name = "users"};
