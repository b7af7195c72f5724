/*
 * libFuzzer harness for the HTTP request path. The real server
 * (core/server.c, core/http.c, llhttp, router, problem) runs one loop in a
 * background thread; each input is sent raw on a new TCP connection to
 * 127.0.0.1, the client's write side is shut down, and the answer is read
 * until the server closes. Findings: a crash or sanitizer report, a hang
 * (no close within 5 s), an answer that is not HTTP/1.1, and a desync: the
 * input is also parsed by a reference llhttp (the server's settings: no
 * lenient flags) that counts the requests the server must answer (complete
 * ones, up to the first that ends the connection); the answers, parsed as
 * responses, must number exactly that, or at most one more when the last
 * is an error that closes (a rejected or unfinished request). More answers
 * than requests means a request was read out of another's bytes.
 *
 * Build with clang, the core compiled with coverage:
 *   cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
 *     -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined"
 *   cmake --build build/fuzz --target tenantd_core -j2
 *   clang -g -fsanitize=fuzzer,address,undefined -Isrc -I/usr/share/include/llhttp \
 *     test/fuzz/fuzz_http.c build/fuzz/libtenantd_core.a build/fuzz/libllhttp.a \
 *     -luv -lpq -ljansson -largon2 -lcrypto -lpthread -lm -o build/fuzz/fuzz_http
 * Run (seconds, not hours, on the shared machine):
 *   build/fuzz/fuzz_http -max_total_time=60 -max_len=4096 \
 *     -dict=test/fuzz/http.dict test/fuzz/corpus/http
 * (copy the corpus first if new inputs should not land in the checkout).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <llhttp.h>

#include "core/config.h"
#include "core/http.h"
#include "core/log.h"
#include "core/problem.h"
#include "core/router.h"

static void health(struct request *req)
{
    static const char body[] = "{\"status\":\"ok\"}";
    http_respond(req, 200, "application/json", body, sizeof body - 1);
}

/* Touches every request helper a handler would use. */
static void echo(struct request *req)
{
    const char *q = http_query(req, "q");
    const char *h = http_header(req, "X-A");
    if (q)
        http_set_header(req, "X-Q", q); /* client text: must never split the answer */
    if (h)
        http_set_header(req, "X-A", h);
    http_respond(req, 200, "application/octet-stream", req->body, req->body_len);
}

static void item(struct request *req)
{
    json_t *o = json_object();
    const char *id = http_param(req, "id");
    json_object_set_new(o, "id", json_string(id ? id : ""));
    http_respond_json(req, 200, o);
}

static void json_in(struct request *req)
{
    json_error_t err;
    json_t *j = json_loadb(req->body, req->body_len, 0, &err);
    if (!j) {
        problem_respond(req, PROBLEM_BAD_REQUEST, "The body is not JSON.");
        return;
    }
    http_respond_json(req, 201, j);
}

static void free_timer(uv_handle_t *h)
{
    free(h);
}

static void later_fire(uv_timer_t *t)
{
    struct request *req = t->data;
    http_respond_empty(req, 204);
    uv_close((uv_handle_t *)t, free_timer);
}

/* Answers from a later loop iteration: the client may be gone by then. */
static void later(struct request *req)
{
    uv_timer_t *t = malloc(sizeof *t);
    if (!t)
        abort();
    uv_timer_init(req->ctx->loop, t);
    t->data = req;
    uv_timer_start(t, later_fire, 1, 0);
}

static const struct route fuzz_routes[] = {
    {HTTP_GET, "/health", AUTH_NONE, health, "health"},
    {HTTP_POST, "/echo", AUTH_NONE, echo, "echo"},
    {HTTP_PUT, "/echo", AUTH_NONE, echo, "echoPut"},
    {HTTP_GET, "/items/{id}", AUTH_NONE, item, "item"},
    {HTTP_POST, "/json", AUTH_NONE, json_in, "json"},
    {HTTP_GET, "/later", AUTH_NONE, later, "later"},
    {0},
};
static const struct module fuzz_module = {.name = "fuzz", .routes = fuzz_routes};
static const struct module *const modules[] = {&fuzz_module};

static void dispatch(struct request *req)
{
    req->route->handler(req);
}

static struct config cfg;
static char listen_addr[64];
static int port;
static struct router *router;
static const struct server_hooks hooks = {.dispatch = dispatch};

static void *server_thread(void *arg)
{
    (void)arg;
    if (server_run(router, &hooks) != 0)
        abort();
    return NULL;
}

/* A port kept bound (never listening) for the life of the process, so no
 * other program is given it before the server binds it beside this socket
 * (the server sets SO_REUSEADDR and SO_REUSEPORT too). */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        abort();
    return ntohs(a.sin_port); /* s stays open on purpose */
}

static int connect_server(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s < 0)
        abort();
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        close(s);
        return -1;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return s;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    char *args[] = {"fuzz_http", "--dev", "serve", NULL};
    if (config_load(&cfg, 3, args, err, sizeof err) < 0) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    port = free_port();
    snprintf(listen_addr, sizeof listen_addr, "127.0.0.1:%d", port);
    cfg.listen = listen_addr;
    cfg.threads = 1;
    cfg.max_body_bytes = 16384; /* small limits, so inputs reach them */
    cfg.max_header_bytes = 2048;
    cfg.header_timeout_ms = 2000;
    cfg.idle_timeout_ms = 2000;
    cfg.drain_timeout_ms = 100;
    g_config = &cfg;
    log_set_level(LOG_ERROR);
    router = router_new(modules, 1);
    if (!router)
        abort();
    pthread_t t;
    if (pthread_create(&t, NULL, server_thread, NULL) != 0)
        abort();
    pthread_detach(t);
    for (int i = 0; i < 500; i++) {
        int s = connect_server();
        if (s >= 0) {
            close(s);
            return 0;
        }
        usleep(10000);
    }
    fprintf(stderr, "fuzz_http: the server did not start\n");
    abort();
}

/* ---- the desync check ---------------------------------------------------- */

#define MAX_REQS 4096

/* The requests the input holds, as the reference parser reads them. */
struct reqs {
    int complete;       /* answers owed: complete requests up to the first closing one */
    bool ended;         /* a request that ends the connection was seen */
    unsigned char head[MAX_REQS]; /* request i was HEAD: its answer has no body */
};

static int ref_headers_complete(llhttp_t *p)
{
    struct reqs *r = p->data;
    if (!r->ended && r->complete < MAX_REQS)
        r->head[r->complete] = p->method == HTTP_HEAD;
    return 0;
}

static int ref_message_complete(llhttp_t *p)
{
    struct reqs *r = p->data;
    if (r->ended)
        return 0;
    r->complete++;
    if (!llhttp_should_keep_alive(p) || p->upgrade)
        r->ended = true;
    return 0;
}

/* The answers, as a response parser reads them. */
struct answers {
    const struct reqs *reqs;
    int n;          /* final (non-1xx) answers */
    bool last_close; /* the last final answer says the connection ends */
    bool in_message;
};

static int ans_message_begin(llhttp_t *p)
{
    ((struct answers *)p->data)->in_message = true;
    return 0;
}

static int ans_headers_complete(llhttp_t *p)
{
    struct answers *a = p->data;
    /* An answer to HEAD has no body whatever its Content-Length says. */
    if (p->status_code >= 200 && a->n < MAX_REQS && a->reqs->head[a->n])
        return 1;
    return 0;
}

static int ans_message_complete(llhttp_t *p)
{
    struct answers *a = p->data;
    a->in_message = false;
    if (p->status_code >= 200) {
        a->n++;
        a->last_close = !llhttp_should_keep_alive(p);
    }
    return 0;
}

static void count_requests(const uint8_t *data, size_t size, struct reqs *r)
{
    static llhttp_settings_t st;
    static bool init;
    if (!init) {
        llhttp_settings_init(&st);
        st.on_headers_complete = ref_headers_complete;
        st.on_message_complete = ref_message_complete;
        init = true;
    }
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &st);
    p.data = r;
    llhttp_execute(&p, (const char *)data, size); /* stops at the first error */
}

static void finding(const char *what, int n, int k)
{
    fprintf(stderr, "fuzz_http: %s (answers %d, requests %d)\n", what, n, k);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct reqs reqs;
    memset(&reqs, 0, sizeof reqs);
    count_requests(data, size, &reqs);

    static llhttp_settings_t ast;
    static bool ainit;
    if (!ainit) {
        llhttp_settings_init(&ast);
        ast.on_message_begin = ans_message_begin;
        ast.on_headers_complete = ans_headers_complete;
        ast.on_message_complete = ans_message_complete;
        ainit = true;
    }
    struct answers ans = {.reqs = &reqs};
    llhttp_t ap;
    llhttp_init(&ap, HTTP_RESPONSE, &ast);
    ap.data = &ans;
    bool bad_answer = false, reset = false;

    int s = connect_server();
    if (s < 0)
        abort();
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(s, data + off, size - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server answered an error and closed: fine */
        off += (size_t)n;
    }
    shutdown(s, SHUT_WR);
    static char buf[1 << 16];
    size_t got = 0;
    char first[9] = {0};
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                fprintf(stderr, "fuzz_http: the server neither answered nor closed in 5 s\n");
                abort();
            }
            reset = true;
            break; /* reset: allowed after an error answer */
        }
        for (ssize_t i = 0; i < n && got + (size_t)i < 8; i++)
            first[got + (size_t)i] = buf[i];
        got += (size_t)n;
        if (!bad_answer && llhttp_execute(&ap, buf, (size_t)n) != HPE_OK)
            bad_answer = true;
    }
    close(s);
    if (got >= 8 && memcmp(first, "HTTP/1.1", 8) != 0) {
        fprintf(stderr, "fuzz_http: the answer does not start with HTTP/1.1\n");
        abort();
    }
    if (bad_answer)
        finding("the answers are not well-formed HTTP/1.1 responses", ans.n, reqs.complete);
    if (!reset && ans.in_message)
        finding("the last answer is cut short", ans.n, reqs.complete);
    /* One answer per request; one more only for the error that closes. */
    if (ans.n > reqs.complete + 1 || (ans.n == reqs.complete + 1 && !ans.last_close))
        finding("more answers than requests: the server read a request the input does not hold",
                ans.n, reqs.complete);
    /* Fewer: only when the server closed early (an error answer, or a
     * reset that may have eaten answers). */
    if (ans.n < reqs.complete && !reset && !(ans.n > 0 && ans.last_close))
        finding("requests left unanswered without an error", ans.n, reqs.complete);
    return 0;
}
