#ifndef TENANTD_JOB_HTTPCLIENT_H
#define TENANTD_JOB_HTTPCLIENT_H
/* Private to src/job: webhook.deliver's outbound HTTP/1.1 client
 * (httpclient.c), used by webhook.c and by the payload check in types.c.
 * Blocking, on worker threads only, every step bounded by a deadline on
 * job_now_ns's clock. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A parsed http(s):// URL. */
struct job_http_url {
    bool tls;
    char host[256];
    int port;
    char path[2048];
};

/* http(s)://host[:port][/path]: host a DNS name or IPv4 address; no user
 * info, no fragment, no spaces or control characters. 0, or -1 with *why
 * (a constant phrase for a 422 entry). */
int job_http_url_parse(const char *s, struct job_http_url *u, const char **why);

/* A connection: plain TCP, or TLS over it. */
struct ssl_st;
struct job_http_conn {
    int fd;             /* -1 when not connected */
    struct ssl_st *ssl; /* NULL for http:// */
};

/*
 * Connects to u's host (every resolved address checked: non-public ones are
 * skipped unless TENANTD_WEBHOOK_ALLOW_PRIVATE) and, for https://, completes
 * the TLS handshake with the certificate checked against the URL's name or
 * address. 0, or -1 with the reason in err; *refused is set when no address
 * was allowed (this server's policy: no contact was made). Always call
 * job_http_close(c) afterwards.
 */
int job_http_open(struct job_http_conn *c, const struct job_http_url *u, uint64_t deadline,
                  bool *refused, char *err, size_t errlen);
/* Writes all n bytes before deadline: 0, or -1. */
int job_http_send(struct job_http_conn *c, const char *p, size_t n, uint64_t deadline);
/* Reads the answer's status line: its status code (100..599), or -1 (no
 * answer in time, or not HTTP). */
int job_http_read_status(struct job_http_conn *c, uint64_t deadline);
/* Ends the connection (close_notify if it fits, never waited for). */
void job_http_close(struct job_http_conn *c);

#endif
