/* STUB */
#include "db/migrate.h"
int migrate_cli(const char *conninfo, int argc, char **argv, int concurrency) { return 1; }
int migrate_up(const char *conninfo, int concurrency, char *err, size_t errlen) { return -1; }
int migrate_check(const char *conninfo, char *err, size_t errlen) { return -1; }
