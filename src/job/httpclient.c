/*
 * webhook.deliver's outbound HTTP/1.1 client (httpclient.h): URL form,
 * address checks, connect, TLS, write, the answer's status line. Apart from
 * the type table and from webhook.c's signing and policy because it is a
 * transport: blocking sockets and OpenSSL on worker threads, every step
 * bounded by the attempt's deadline.
 */
#include "job/httpclient.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>

#include "core/config.h"
#include "core/log.h"
#include "job/internal.h"

/* ---- URLs ------------------------------------------------------------------ */

int job_http_url_parse(const char *s, struct job_http_url *u, const char **why)
{
    *why = "must be an http:// or https:// URL of at most 2048 characters";
    if (strlen(s) > 2048)
        return -1;
    if (strncasecmp(s, "https://", 8) == 0)
        u->tls = true;
    else if (strncasecmp(s, "http://", 7) == 0)
        u->tls = false;
    else
        return -1;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= 0x20 || *c >= 0x7F || *c == '#')
            return -1;
    const char *h = s + (u->tls ? 8 : 7);
    size_t hl = strcspn(h, ":/?");
    if (hl == 0 || hl >= sizeof u->host) {
        *why = "must name a host";
        return -1;
    }
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '.' && h[i] != '-') {
            *why = "must name a host by DNS name or IPv4 address (no user info)";
            return -1;
        }
    memcpy(u->host, h, hl);
    u->host[hl] = '\0';
    const char *r = h + hl;
    u->port = u->tls ? 443 : 80;
    if (*r == ':') {
        char *end;
        long port = strtol(r + 1, &end, 10);
        if (end == r + 1 || port < 1 || port > 65535 || (*end && *end != '/' && *end != '?')) {
            *why = "must have a port from 1 to 65535";
            return -1;
        }
        u->port = (int)port;
        r = end;
    }
    snprintf(u->path, sizeof u->path, "%s%s", *r == '/' ? "" : "/", r);
    return 0;
}

/* ---- addresses and connecting ------------------------------------------------ */

static int remaining_ms(uint64_t deadline)
{
    uint64_t now = job_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now) / 1000000u) + 1;
}

/* Whether an address is on the public Internet: not loopback, private
 * (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254),
 * CGNAT, multicast, documentation, reserved, or an IPv6 form that embeds
 * an IPv4 address (mapped, NAT64, 6to4, Teredo), which could lead back to
 * any of those. */
static bool ipv4_public(const unsigned char a[4])
{
    uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    static const struct {
        uint32_t net, mask;
    } blocked[] = {
        {0x00000000u, 0xff000000u}, /* 0.0.0.0/8 this network */
        {0x0a000000u, 0xff000000u}, /* 10/8 */
        {0x64400000u, 0xffc00000u}, /* 100.64/10 CGNAT */
        {0x7f000000u, 0xff000000u}, /* 127/8 loopback */
        {0xa9fe0000u, 0xffff0000u}, /* 169.254/16 link-local */
        {0xac100000u, 0xfff00000u}, /* 172.16/12 */
        {0xc0000000u, 0xffffff00u}, /* 192.0.0/24 IETF */
        {0xc0000200u, 0xffffff00u}, /* 192.0.2/24 documentation */
        {0xc0a80000u, 0xffff0000u}, /* 192.168/16 */
        {0xc6120000u, 0xfffe0000u}, /* 198.18/15 benchmarking */
        {0xc6336400u, 0xffffff00u}, /* 198.51.100/24 documentation */
        {0xcb007100u, 0xffffff00u}, /* 203.0.113/24 documentation */
        {0xe0000000u, 0xe0000000u}, /* 224/3: multicast, reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof blocked / sizeof blocked[0]; i++)
        if ((v & blocked[i].mask) == blocked[i].net)
            return false;
    return true;
}

bool job_addr_public(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_public((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->sa_family != AF_INET6)
        return false;
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if ((a[0] & 0xe0) != 0x20) /* only 2000::/3 is global unicast */
        return false;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) /* 2001:db8::/32 */
        return false;
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) /* 2001::/32 Teredo */
        return false;
    if (a[0] == 0x20 && a[1] == 0x02) /* 2002::/16 6to4 */
        return false;
    return true;
}

/*
 * Connects to one of host:port's addresses before deadline; fd or -1 with
 * the reason in err. The name is resolved once, every address is checked
 * (non-public ones are skipped unless TENANTD_WEBHOOK_ALLOW_PRIVATE), and
 * the socket connects to the very address checked: a name that resolves
 * differently the next time (DNS rebinding) cannot slip an internal
 * address past the check. Connection failures all read the same ("cannot
 * connect"): refused, unreachable or timed out would tell a tenant which
 * ports of an allowed host are open.
 */
static int connect_to(const char *host, int port, uint64_t deadline, bool *refused, char *err,
                      size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    *refused = false;
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s", host);
        return -1;
    }
    bool allow_private = g_config && g_config->webhook_allow_private;
    int fd = -1, tried = 0;
    for (ai = res; ai && fd < 0; ai = ai->ai_next) {
        if (!allow_private && !job_addr_public(ai->ai_addr))
            continue;
        tried++;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (poll(&pfd, 1, remaining_ms(deadline)) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    if (tried == 0) {
        *refused = true;
        snprintf(err, errlen,
                 "host %s resolves to no public address (loopback, private and link-local "
                 "addresses are refused; TENANTD_WEBHOOK_ALLOW_PRIVATE)",
                 host);
    } else {
        snprintf(err, errlen, "cannot connect to %s:%d", host, port);
    }
    return -1;
}

/* ---- webhook.deliver over TLS ---------------------------------------------- */

/* One client context for every worker thread (an SSL_CTX may be shared once
 * set up): the system's CAs plus TENANTD_WEBHOOK_CA_FILE, TLS 1.2 at least,
 * the peer's certificate and name always verified. */
static struct {
    pthread_once_t once;
    SSL_CTX *ctx;
    char err[300];
} tls = {.once = PTHREAD_ONCE_INIT};

static void tls_init(void)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c) {
        snprintf(tls.err, sizeof tls.err, "cannot make a TLS context");
        return;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    /* A receiver that closes after its answer without close_notify is the
     * norm for "Connection: close"; the answer is complete by then. */
    SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_default_verify_paths(c); /* no system store: the CA file alone */
    const char *ca = g_config ? g_config->webhook_ca_file : NULL;
    if (ca && SSL_CTX_load_verify_locations(c, ca, NULL) != 1) {
        char e[160];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        ERR_clear_error();
        snprintf(tls.err, sizeof tls.err, "cannot load TENANTD_WEBHOOK_CA_FILE %s: %s", ca, e);
        SSL_CTX_free(c);
        return;
    }
    ERR_clear_error();
    tls.ctx = c;
}

static SSL_CTX *tls_ctx(void)
{
    pthread_once(&tls.once, tls_init);
    return tls.ctx;
}

int job_webhook_tls_check(void)
{
    if (tls_ctx())
        return 0;
    log_msg(LOG_ERROR, "webhook.deliver: %s", tls.err);
    return -1;
}

/* Waits, until deadline, for what the last TLS call wanted; 0, or -1. */
static int tls_wait(int fd, int want, uint64_t deadline)
{
    struct pollfd pfd = {.fd = fd, .events = want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
    int ms = remaining_ms(deadline);
    return ms > 0 && poll(&pfd, 1, ms) == 1 ? 0 : -1;
}

/* TLS handshake with u's host, its certificate checked against the name
 * (or the IPv4 address) in the URL. 0, or -1 with the reason in err. */
static int tls_handshake(struct job_http_conn *c, const struct job_http_url *u, uint64_t deadline,
                         char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_ctx();
    if (!ctx) {
        snprintf(err, errlen, "%s", tls.err);
        return -1;
    }
    c->ssl = SSL_new(ctx);
    struct in_addr ip;
    bool ok = c->ssl && SSL_set_fd(c->ssl, c->fd) == 1;
    if (ok && inet_pton(AF_INET, u->host, &ip) == 1)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->host) == 1;
    else if (ok) /* SNI is for names only */
        ok = SSL_set_tlsext_host_name(c->ssl, u->host) == 1 && SSL_set1_host(c->ssl, u->host) == 1;
    if (!ok) {
        ERR_clear_error();
        snprintf(err, errlen, "cannot set up TLS for %s", u->host);
        return -1;
    }
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (tls_wait(c->fd, e, deadline) == 0)
                continue;
            snprintf(err, errlen, "TLS handshake with %s:%d timed out", u->host, u->port);
            return -1;
        }
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            snprintf(err, errlen, "TLS: the certificate of %s:%d is not trusted: %s", u->host,
                     u->port, X509_verify_cert_error_string(v));
        } else {
            char why[160] = "the connection was closed";
            unsigned long le = ERR_get_error();
            if (le)
                ERR_error_string_n(le, why, sizeof why);
            snprintf(err, errlen, "TLS handshake with %s:%d failed: %s", u->host, u->port, why);
        }
        ERR_clear_error();
        return -1;
    }
}

int job_http_send(struct job_http_conn *c, const char *p, size_t n, uint64_t deadline)
{
    while (n > 0 && c->ssl) {
        ERR_clear_error();
        int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
            tls_wait(c->fd, e, deadline) != 0) {
            ERR_clear_error();
            return -1;
        }
    }
    int fd = c->fd;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, remaining_ms(deadline)) != 1)
            return -1;
    }
    return 0;
}

/* Some bytes: > 0 read, 0 the peer closed (or failed), -1 the deadline
 * passed. */
static ssize_t recv_some(struct job_http_conn *c, char *buf, size_t cap, uint64_t deadline)
{
    for (;;) {
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
            if (r > 0)
                return r;
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                ERR_clear_error();
                return 0;
            }
            if (tls_wait(c->fd, e, deadline) != 0)
                return -1;
            continue;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int ms = remaining_ms(deadline);
        if (ms <= 0 || poll(&pfd, 1, ms) != 1)
            return -1;
        ssize_t r = recv(c->fd, buf, cap, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        return r < 0 ? 0 : r;
    }
}

/* Reads until the end of the response's status line and headers (or the
 * peer closes); returns the status code, or -1. */
int job_http_read_status(struct job_http_conn *c, uint64_t deadline)
{
    char buf[8192];
    size_t len = 0;
    while (len < sizeof buf - 1) {
        ssize_t r = recv_some(c, buf + len, sizeof buf - 1 - len, deadline);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, "\r\n"))
            break; /* the status line is all we need */
    }
    buf[len] = '\0';
    int major, minor, status;
    if (sscanf(buf, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 || status > 599)
        return -1;
    return status;
}

int job_http_open(struct job_http_conn *c, const struct job_http_url *u, uint64_t deadline,
                  bool *refused, char *err, size_t errlen)
{
    c->ssl = NULL;
    c->fd = connect_to(u->host, u->port, deadline, refused, err, errlen);
    if (c->fd < 0)
        return -1;
    return u->tls ? tls_handshake(c, u, deadline, err, errlen) : 0;
}

void job_http_close(struct job_http_conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* close_notify if it fits; never waited for */
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}
