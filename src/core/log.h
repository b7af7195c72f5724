#ifndef TENANTD_CORE_LOG_H
#define TENANTD_CORE_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Parses "debug".."error"; returns -1 when unknown. */
int log_level_parse(const char *s);
void log_set_level(enum log_level level);
int log_enabled(enum log_level level);

/* One JSON line on stderr: {"time","level","msg"}. Thread-safe; never
 * writes secrets (callers must not pass them). */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The per-request access line: time, request_id, method, route, path, status,
 * duration_ms, client_ip (the peer, or the client a trusted proxy names),
 * org (when known, else omitted), trace_id (W3C trace context; omitted when
 * NULL). */
void log_request(const char *request_id, const char *method, const char *route, const char *path,
                 int status, double duration_ms, const char *client_ip, const char *org_id,
                 const char *trace_id);

#endif
