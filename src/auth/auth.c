/* STUB: the auth module (identity engineer replaces this). */
#include "auth/auth.h"
const struct module auth_module = {.name = "auth"};
