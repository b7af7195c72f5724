/* STUB */
#include "db/db.h"
struct db_pool *db_pool_new(uv_loop_t *loop, const struct db_pool_options *opts) { return 0; }
void db_pool_close(struct db_pool *pool, void (*done)(void *ud), void *ud) {}
