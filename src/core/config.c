/* STUB: replaced by the config implementation. */
#include "core/config.h"
const struct config *g_config;
int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen) { (void)cfg;(void)argc;(void)argv;(void)err;(void)errlen; return -1; }
void config_usage(FILE *f) { (void)f; }
