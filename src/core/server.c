/*
 * The HTTP/1.1 server: one libuv loop per thread, each with its own
 * SO_REUSEPORT listening socket; llhttp parses; one request at a time per
 * connection (pipelined requests wait in the connection's buffer, so
 * answers go out in order); graceful drain on SIGTERM/SIGINT.
 *
 * This file: the loops and their threads, listeners, accepting (and
 * refusing when the connection table is full), draining, signals. A
 * connection's life is in http1.c, parsing in http1_parse.c, answers in
 * respond.c; server_internal.h holds what they share.
 */
#include "core/server_internal.h"

#define REFUSAL_BODY                                                                               \
    "{\"type\":\"https://tenantd.dev/problems/unavailable\",\"title\":\"Service Unavailable\","    \
    "\"status\":503,\"detail\":\"Too many open connections.\",\"code\":\"unavailable\"}"
static char refusal[512]; /* built once by server_run */
static size_t refusal_len;

static void init_refusal(void)
{
    int n = snprintf(refusal, sizeof refusal,
                     "HTTP/1.1 503 Service Unavailable\r\n"
                     "Content-Type: application/problem+json\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "Retry-After: 1\r\n"
                     "\r\n%s",
                     sizeof REFUSAL_BODY - 1, REFUSAL_BODY);
    refusal_len = n > 0 && (size_t)n < sizeof refusal ? (size_t)n : 0;
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* Over max_connections: answer 503 at once and close, so the client sees a
 * clean refusal instead of a hang. */
void srv_refuse(struct loop_server *ls)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        abort();
    uv_tcp_init(&ls->loop, t);
    if (uv_accept((uv_stream_t *)&ls->listener, (uv_stream_t *)t) == 0) {
        uv_buf_t b = uv_buf_init(refusal, (unsigned)refusal_len);
        (void)uv_try_write((uv_stream_t *)t, &b, 1);
    }
    uv_close((uv_handle_t *)t, free_handle);
    metrics_conn_refused(ls->ctx.metrics, METRICS_REFUSED_FULL);
    uint64_t now = uv_now(&ls->loop);
    if (now - ls->last_refusal_log >= 1000 || !ls->last_refusal_log) {
        ls->last_refusal_log = now;
        log_msg(LOG_WARN, "loop %d: connection refused, %zu open (max %lld)", ls->ctx.index,
                ls->nconns, (long long)g_config->max_connections);
    }
}

/* Refuses a connection already accepted into c (not yet set up): 503 and
 * close, like srv_refuse(). */
static void refuse_accepted(struct loop_server *ls, struct conn *c, const char *why)
{
    metrics_conn_refused(ls->ctx.metrics, METRICS_REFUSED_PER_IP); /* its one cause */
    uv_buf_t b = uv_buf_init(refusal, (unsigned)refusal_len);
    (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    uv_close((uv_handle_t *)&c->tcp, free_handle); /* c is the handle's start */
    uint64_t now = uv_now(&ls->loop);
    if (now - ls->last_refusal_log >= 1000 || !ls->last_refusal_log) {
        ls->last_refusal_log = now;
        log_msg(LOG_WARN, "loop %d: connection from %s refused: %s", ls->ctx.index,
                srv_peer_name(c), why);
    }
}

/*
 * A new client. When the table (TENANTD_MAX_CONNECTIONS per loop) is full,
 * the connection that has waited longest for a request is closed to make
 * room; only when none waits is the new one refused (503). Before that, a
 * peer address already holding TENANTD_MAX_CONNECTIONS_PER_IP connections
 * of this loop is refused, so that one address cannot take the table. The
 * peer is the TCP peer: behind a proxy that is the proxy (the client named
 * by X-Forwarded-For is only known once a request arrives).
 */
static void on_connection(uv_stream_t *server, int status)
{
    struct loop_server *ls = server->data;
    if (status < 0) {
        log_msg(LOG_WARN, "accept failed: %s", uv_strerror(status));
        return;
    }
    if (ls->ctx.draining)
        return;
    size_t max = (size_t)g_config->max_connections;
    assert(ls->nconns >= ls->nclosing);
    if (ls->nconns - ls->nclosing >= max && !ls->idle.head && !ls->fresh.head) {
        srv_refuse(ls);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->ls = ls;
    uv_tcp_init(&ls->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, free_handle); /* c is the handle's start */
        return;
    }
    struct sockaddr_storage sa;
    int salen = sizeof sa;
    bool have_peer = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0;
    if (have_peer) {
        if (ipcount_key((struct sockaddr *)&sa, c->ip_key)) {
            c->have_ip = true;
            size_t cap = (size_t)g_config->max_connections_per_ip;
            if (!ipcount_add(&ls->ips, c->ip_key, cap)) {
                refuse_accepted(ls, c, "too many connections from this address");
                return;
            }
            c->ip_counted = true;
        }
    }
    if (ls->nconns - ls->nclosing >= max) {
        /* Full: the longest-waiting connection makes room. */
        struct conn *oldest = srv_conn_of_idle(ls->idle.head ? ls->idle.head : ls->fresh.head);
        log_msg(LOG_DEBUG, "loop %d: table full, closing the idle connection from %s",
                ls->ctx.index, srv_peer_name(oldest));
        srv_conn_close(oldest);
    }
    c->open_handles = 1;
    c->next = ls->conns;
    if (ls->conns)
        ls->conns->prev = c;
    ls->conns = c;
    ls->nconns++;
    if (ls->ctx.metrics)
        metrics_conn_open(ls->ctx.metrics, +1);
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = C_IDLE;
    srv_active_take(c);
    srv_idle_enter(c, &ls->fresh);
    /* A new connection must start its request promptly. */
    srv_timer_set(c, (uint64_t)g_config->header_timeout_ms);
    srv_read_on(c);
}

static void on_loop_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void loop_done(struct loop_ctx *ctx)
{
    struct loop_server *ls = ctx->server;
    uv_close((uv_handle_t *)&ls->stop_async, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->drain_timer, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->done_idle, on_loop_handle_closed);
    uv_close((uv_handle_t *)&ls->idle_timer, on_loop_handle_closed);
    while (ls->free_actives) {
        struct active *a = ls->free_actives;
        ls->free_actives = a->next_free;
        ls->nfree_actives--;
        uv_close((uv_handle_t *)&a->timer, srv_free_active);
    }
}

static void begin_stop(struct loop_server *ls)
{
    if (ls->stopping)
        return;
    ls->stopping = true;
    uv_timer_stop(&ls->drain_timer);
    if (ls->hooks->loop_stop)
        ls->hooks->loop_stop(&ls->ctx, loop_done);
    else
        loop_done(&ls->ctx);
}

void srv_check_drained(struct loop_server *ls)
{
    if (ls->ctx.draining && !ls->stopping && ls->nconns == 0 && ls->orphans == 0)
        begin_stop(ls);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct loop_server *ls = t->data;
    if (ls->nconns || ls->orphans)
        log_msg(LOG_WARN, "loop %d: drain timeout, closing %zu connections", ls->ctx.index,
                ls->nconns);
    for (struct conn *c = ls->conns; c; c = c->next)
        srv_conn_close(c);
    begin_stop(ls);
}

static void start_drain(struct loop_server *ls)
{
    if (ls->ctx.draining)
        return;
    ls->ctx.draining = true;
    if (ls->listening) {
        uv_close((uv_handle_t *)&ls->listener, on_loop_handle_closed);
        ls->listening = false;
    }
    for (struct conn *c = ls->conns; c; c = c->next) {
        if (c->state == C_IDLE || c->state == C_LINGER)
            srv_conn_close(c);
        else
            c->must_close = true;
    }
    uv_timer_start(&ls->drain_timer, on_drain_timeout, (uint64_t)g_config->drain_timeout_ms, 0);
    srv_check_drained(ls);
}

static void on_stop_async(uv_async_t *a)
{
    start_drain(a->data);
}

static void loop_thread(void *arg)
{
    struct loop_server *ls = arg;
    thread_name("loop-%u", (unsigned)ls->ctx.index);
    ls->ctx.metrics = metrics_new(ls->ctx.index);
    if (ls->hooks->loop_start)
        ls->hooks->loop_start(&ls->ctx);
    uv_tcp_init(&ls->loop, &ls->listener);
    ls->listener.data = ls;
    int r = uv_tcp_open(&ls->listener, ls->fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&ls->listener, SOMAXCONN, on_connection);
    if (r == 0) {
        ls->listening = true;
    } else {
        log_msg(LOG_ERROR, "loop %d cannot listen: %s", ls->ctx.index, uv_strerror(r));
        uv_close((uv_handle_t *)&ls->listener, on_loop_handle_closed);
        start_drain(ls);
    }
    uv_run(&ls->loop, UV_RUN_DEFAULT);
    ipcount_free(&ls->ips);
    if (ls->orphans)
        log_msg(LOG_WARN, "loop %d: %zu requests never answered", ls->ctx.index, ls->orphans);
    if (uv_loop_close(&ls->loop) != 0)
        log_msg(LOG_WARN, "loop %d ended with open handles", ls->ctx.index);
    atomic_fetch_add(&ls->srv->nexited, 1);
    uv_async_send(&ls->srv->exited);
}

static void drain_all(struct server *srv)
{
    log_msg(LOG_INFO, "draining (up to %lld ms)", (long long)g_config->drain_timeout_ms);
    for (int i = 0; i < srv->nloops; i++)
        uv_async_send(&srv->loops[i].stop_async);
    if (srv->hooks->draining)
        srv->hooks->draining();
}

static void on_delay_over(uv_timer_t *t)
{
    drain_all(t->data);
}

/* With TENANTD_SHUTDOWN_DELAY_MS, the first signal only makes /ready fail
 * (g_shutting_down) while serving goes on, so a load balancer has time to
 * notice and stop sending before the listener closes; a second signal cuts
 * the delay short. */
static void on_signal(uv_signal_t *s, int signum)
{
    struct server *srv = s->data;
    if (srv->stopping) {
        if (uv_is_active((uv_handle_t *)&srv->delay_timer)) {
            log_msg(LOG_INFO, "signal %d: delay cut short", signum);
            uv_timer_stop(&srv->delay_timer);
            drain_all(srv);
            return;
        }
        log_msg(LOG_INFO, "signal %d: already shutting down", signum);
        return;
    }
    srv->stopping = true;
    g_shutting_down = true;
    if (g_config->shutdown_delay_ms > 0) {
        log_msg(LOG_INFO, "signal %d: /ready answers 503; serving %lld ms more, then draining",
                signum, (long long)g_config->shutdown_delay_ms);
        uv_timer_start(&srv->delay_timer, on_delay_over, (uint64_t)g_config->shutdown_delay_ms, 0);
        return;
    }
    log_msg(LOG_INFO, "signal %d: draining (up to %lld ms)", signum,
            (long long)g_config->drain_timeout_ms);
    for (int i = 0; i < srv->nloops; i++)
        uv_async_send(&srv->loops[i].stop_async);
    if (srv->hooks->draining)
        srv->hooks->draining();
}

static void on_loop_exited(uv_async_t *a)
{
    struct server *srv = a->data;
    if (atomic_load(&srv->nexited) < srv->nloops)
        return;
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->delay_timer, NULL);
    uv_close((uv_handle_t *)&srv->exited, NULL);
}

/* Parses "host:port" or "[v6]:port" into an address. */
static int parse_listen(const char *spec, struct sockaddr_storage *out, socklen_t *outlen)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host)
            return -1;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        if (strchr(host, ':'))
            return -1; /* IPv6 needs brackets */
        port = colon + 1;
    }
    char *end;
    errno = 0;
    long pn = strtol(port, &end, 10);
    if (errno || *end || end == port || pn < 1 || pn > 65535)
        return -1;
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || !res)
        return -1;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int open_listener(const struct sockaddr_storage *sa, socklen_t len)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (sa->ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)sa, len) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int server_loop_count(void)
{
    int n = (int)g_config->threads;
    if (n <= 0)
        n = (int)uv_available_parallelism();
    return n > 0 ? n : 1;
}

int server_run(const struct router *router, const struct server_hooks *hooks)
{
    const struct config *cfg = g_config;
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error code, not a death */
    srv_init_parser_settings();
    init_refusal();

    int n = server_loop_count();

    struct sockaddr_storage sa;
    socklen_t salen;
    if (!cfg->listen || parse_listen(cfg->listen, &sa, &salen) != 0) {
        log_msg(LOG_ERROR, "TENANTD_LISTEN \"%s\" is not host:port or [ipv6]:port",
                cfg->listen ? cfg->listen : "");
        return -1;
    }
    /* Bind every loop's socket here, so a taken port fails the start. */
    int *fds = calloc((size_t)n, sizeof *fds);
    if (!fds)
        abort();
    for (int i = 0; i < n; i++) {
        fds[i] = open_listener(&sa, salen);
        if (fds[i] < 0) {
            log_msg(LOG_ERROR, "cannot listen on %s: %s", cfg->listen, strerror(errno));
            for (int j = 0; j < i; j++)
                close(fds[j]);
            free(fds);
            return -1;
        }
    }

    struct server srv = {.nloops = n, .hooks = hooks};
    atomic_init(&srv.nexited, 0);
    srv.loops = calloc((size_t)n, sizeof *srv.loops);
    if (!srv.loops)
        abort();
    uv_loop_init(&srv.loop);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_signal_init(&srv.loop, &srv.sigint);
    srv.sigterm.data = srv.sigint.data = &srv;
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv.sigint, on_signal, SIGINT);
    uv_timer_init(&srv.loop, &srv.delay_timer);
    srv.delay_timer.data = &srv;
    uv_async_init(&srv.loop, &srv.exited, on_loop_exited);
    srv.exited.data = &srv;

    for (int i = 0; i < n; i++) {
        struct loop_server *ls = &srv.loops[i];
        uv_loop_init(&ls->loop);
        ls->ctx.loop = &ls->loop;
        ls->ctx.index = i;
        ls->ctx.router = router;
        ls->ctx.server = ls;
        ls->hooks = hooks;
        ls->srv = &srv;
        ls->fd = fds[i];
        ls->readbuf = malloc(READ_BUF_SIZE);
        if (!ls->readbuf)
            abort();
        uv_async_init(&ls->loop, &ls->stop_async, on_stop_async);
        ls->stop_async.data = ls;
        uv_timer_init(&ls->loop, &ls->drain_timer);
        ls->drain_timer.data = ls;
        uv_idle_init(&ls->loop, &ls->done_idle);
        ls->done_idle.data = ls;
        uv_timer_init(&ls->loop, &ls->idle_timer);
        ls->idle_timer.data = ls;
    }
    for (int i = 0; i < n; i++)
        if (uv_thread_create(&srv.loops[i].thread, loop_thread, &srv.loops[i]) != 0) {
            log_msg(LOG_ERROR, "cannot start loop thread %d", i);
            abort();
        }
    log_msg(LOG_INFO, "listening on %s with %d loop%s", cfg->listen, n, n == 1 ? "" : "s");

    uv_run(&srv.loop, UV_RUN_DEFAULT);
    for (int i = 0; i < n; i++) {
        uv_thread_join(&srv.loops[i].thread);
        free(srv.loops[i].readbuf);
    }
    uv_loop_close(&srv.loop);
    free(srv.loops);
    free(fds);
    log_msg(LOG_INFO, "stopped");
    return 0;
}
