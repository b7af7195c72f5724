#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level level)
{
    if ((int)level >= LOG_DEBUG && level <= LOG_ERROR)
        atomic_store(&min_level, (int)level);
}

int log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

/* RFC 3339 UTC with milliseconds. */
static void now_rfc3339(char *buf, size_t len)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

/* Appends s as a JSON string body (without quotes) to buf at *pos. */
static void put_escaped(char *buf, size_t cap, size_t *pos, const char *s)
{
    for (; s && *s && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*pos)++] = '\\';
            buf[(*pos)++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\\u%04x", c);
        } else {
            buf[(*pos)++] = (char)c;
        }
    }
}

static void put(char *buf, size_t cap, size_t *pos, const char *s)
{
    if (*pos + 1 >= cap)
        return; /* full: the line is cut, never overrun */
    size_t n = strlen(s);
    if (*pos + n >= cap)
        n = cap - *pos - 1;
    memcpy(buf + *pos, s, n);
    *pos += n;
}

/* One write(2) per line so lines from several threads never interleave. */
static void emit(char *buf, size_t cap, size_t pos)
{
    if (pos + 2 > cap)
        pos = cap - 2;
    buf[pos++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, pos);
    (void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    char buf[4096], ts[40];
    size_t pos = 0;
    now_rfc3339(ts, sizeof ts);
    put(buf, sizeof buf, &pos, "{\"time\":\"");
    put(buf, sizeof buf, &pos, ts);
    put(buf, sizeof buf, &pos, "\",\"level\":\"");
    put(buf, sizeof buf, &pos, level_names[level]);
    put(buf, sizeof buf, &pos, "\",\"msg\":\"");
    put_escaped(buf, sizeof buf, &pos, msg);
    put(buf, sizeof buf, &pos, "\"}");
    emit(buf, sizeof buf, pos);
}

void log_request(const char *request_id, const char *method, const char *route, const char *path,
                 int status, double duration_ms, const char *client_ip, const char *org_id,
                 const char *trace_id)
{
    if (!log_enabled(LOG_INFO))
        return;
    char buf[4096], ts[40], num[64];
    size_t pos = 0;
    now_rfc3339(ts, sizeof ts);
    put(buf, sizeof buf, &pos, "{\"time\":\"");
    put(buf, sizeof buf, &pos, ts);
    put(buf, sizeof buf, &pos, "\",\"level\":\"info\",\"msg\":\"request\",\"request_id\":\"");
    put_escaped(buf, sizeof buf, &pos, request_id);
    put(buf, sizeof buf, &pos, "\",\"method\":\"");
    put_escaped(buf, sizeof buf, &pos, method);
    put(buf, sizeof buf, &pos, "\",\"route\":\"");
    put_escaped(buf, sizeof buf, &pos, route);
    put(buf, sizeof buf, &pos, "\",\"path\":\"");
    /* Paths are client text: cap them so a long one cannot bloat the log. */
    char p[512];
    snprintf(p, sizeof p, "%s", path ? path : "");
    put_escaped(buf, sizeof buf, &pos, p);
    snprintf(num, sizeof num, "\",\"status\":%d,\"duration_ms\":%.3f", status, duration_ms);
    put(buf, sizeof buf, &pos, num);
    if (client_ip) {
        put(buf, sizeof buf, &pos, ",\"client_ip\":\"");
        put_escaped(buf, sizeof buf, &pos, client_ip);
        put(buf, sizeof buf, &pos, "\"");
    }
    if (org_id) {
        put(buf, sizeof buf, &pos, ",\"org\":\"");
        put_escaped(buf, sizeof buf, &pos, org_id);
        put(buf, sizeof buf, &pos, "\"");
    }
    if (trace_id) {
        put(buf, sizeof buf, &pos, ",\"trace_id\":\"");
        put_escaped(buf, sizeof buf, &pos, trace_id);
        put(buf, sizeof buf, &pos, "\"");
    }
    put(buf, sizeof buf, &pos, "}");
    emit(buf, sizeof buf, pos);
}
