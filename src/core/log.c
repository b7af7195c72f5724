/* STUB */
#include "core/log.h"
int log_level_parse(const char *s) { (void)s; return LOG_INFO; }
void log_set_level(enum log_level level) { (void)level; }
int log_enabled(enum log_level level) { (void)level; return 1; }
void log_msg(enum log_level level, const char *fmt, ...) { (void)level; (void)fmt; }
void log_request(const char *request_id, const char *method, const char *route, const char *path, int status, double duration_ms, const char *org_id) {}
