/* STUB */
#include "core/metrics.h"
struct metrics *metrics_new(int loop_index) { (void)loop_index; return 0; }
void metrics_request(struct metrics *m, const char *route, const char *method, int status, double seconds) {}
void metrics_conn_open(struct metrics *m, int delta) {}
void metrics_pool(struct metrics *m, int in_use, int idle, int waiting) {}
void metrics_pool_schema_switch(struct metrics *m) {}
void metrics_db_reconnect(struct metrics *m) {}
char *metrics_render(size_t *len) { (void)len; return 0; }
