/*
 * Idempotency-Key: header checks, request hashing, replay of stored
 * answers, the two-step claim/store API and the purge thread. The storage
 * rules (advisory lock against concurrent use, leases, takeover of lapsed
 * claims, 24 h retention) live in SQL, migration 0006 (tenantd_idem_*), so
 * the single-transaction users (credits spend, jobs) and this file share
 * them.
 */
#include "idem/idem.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <uv.h>

#include "app/dbhttp.h"
#include "auth/auth.h"
#include "core/config.h"
#include "core/log.h"
#include "core/thread.h"
#include "db/db.h"

static const struct db_stmt q_claim = {
    "idem_claim",
    "SELECT b.o_outcome, b.o_status, b.o_headers::text, b.o_body, b.o_claim_id "
    "FROM public.tenantd_idem_begin($1::uuid, $2, $3, $4, $5::int) b",
};

static const struct db_stmt q_store = {
    "idem_store",
    "SELECT public.tenantd_idem_finish($1::uuid, $2, $3, $4, $5::int, $6::json, $7, $8::uuid)",
};

static const struct db_stmt q_release = {
    "idem_release",
    "SELECT public.tenantd_idem_release($1::uuid, $2, $3, $4::uuid)",
};

struct idem_claim {
    struct request *req;
    struct idem_key k;
    char claim_id[37];
    idem_proceed_fn proceed;
    void *ud;
    const char *values[8];
    /* The answer, held while it is stored. */
    int status;
    const char *content_type;
    char *body;
    size_t len;
};

/* ---- reading the key ---------------------------------------------------- */

static bool key_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7E)
            return false;
    return true;
}

/* Hex SHA-256 of method NUL target NUL body into out (65 bytes); false on
 * an OpenSSL failure. The NULs keep "POST /a" + "b..." apart from
 * "POST /ab" + "...". */
static bool request_hash(const struct request *req, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    const char *method = req->method_str ? req->method_str : "";
    const char *target = req->target ? req->target : "";
    ok = ok && EVP_DigestUpdate(c, method, strlen(method) + 1) == 1;
    ok = ok && EVP_DigestUpdate(c, target, strlen(target) + 1) == 1;
    if (ok && req->body && req->body_len)
        ok = EVP_DigestUpdate(c, req->body, req->body_len) == 1;
    ok = ok && EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(c);
    if (!ok)
        return false;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return true;
}

int idem_read(struct request *req, const char *org_id, struct idem_key *out)
{
    memset(out, 0, sizeof *out);
    const char *v = NULL;
    int seen = 0;
    /* Two keys would leave it open which one the request meant. */
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, "Idempotency-Key") == 0) {
            v = req->headers[i].value;
            seen++;
        }
    if (!seen)
        return 0;
    if (seen > 1 || !v || !key_valid(v)) {
        problem_respond(req, PROBLEM_BAD_REQUEST,
                        seen > 1 ? "Send one Idempotency-Key header, not several."
                                 : "Idempotency-Key must be 1 to 255 visible ASCII characters.");
        return -1;
    }
    char hash[65];
    if (!request_hash(req, hash)) {
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return -1;
    }
    const struct auth_ctx *a = auth_ctx(req);
    out->org_id = arena_strdup(req->arena, org_id);
    out->scope = a && a->kind == AUTH_KIND_OPERATOR ? "operator" : "org";
    out->key = arena_strdup(req->arena, v);
    out->hash = arena_strdup(req->arena, hash);
    return 1;
}

/* ---- answering outcomes ------------------------------------------------- */

static void json_release(void *p)
{
    json_decref((json_t *)p);
}

/* Headers that describe this request rather than the answer: CORS (set
 * per request by core/cors) and RateLimit-* (the caller's budget now).
 * They are neither stored nor replayed; a replay gets fresh ones. */
static bool per_request_header(const char *name, const char *value)
{
    return strncasecmp(name, "Access-Control-", 15) == 0 ||
           strncasecmp(name, "RateLimit-", 10) == 0 ||
           (strcasecmp(name, "Vary") == 0 && strcasecmp(value, "Origin") == 0);
}

/* Replays a stored answer: its status, Content-Type, other stored headers
 * and body as first sent (headers of the first request itself, see
 * per_request_header, are this request's own). */
static void replay(struct request *req, const char *status, const char *headers, const char *body)
{
    long st = status ? strtol(status, NULL, 10) : 0;
    if (st < 100 || st > 599) {
        log_msg(LOG_ERROR, "idempotency: stored answer without a valid status");
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    const char *ctype = NULL;
    json_t *h = headers ? json_loads(headers, 0, NULL) : NULL;
    if (h) {
        arena_cleanup(req->arena, json_release, h);
        size_t i;
        json_t *pair;
        json_array_foreach(h, i, pair)
        {
            const char *n = json_string_value(json_array_get(pair, 0));
            const char *val = json_string_value(json_array_get(pair, 1));
            if (!n || !val)
                continue;
            if (strcasecmp(n, "Content-Type") == 0)
                ctype = val;
            else if (!per_request_header(n, val))
                http_set_header(req, n, val);
        }
    }
    http_set_header(req, "Idempotent-Replayed", "true");
    http_respond(req, (int)st, ctype, body ? body : "", body ? strlen(body) : 0);
}

bool idem_answer(struct request *req, const char *outcome, const char *status, const char *headers,
                 const char *body)
{
    if (!outcome)
        return false;
    if (strcmp(outcome, "replay") == 0) {
        replay(req, status, headers, body);
        return true;
    }
    if (strcmp(outcome, "mismatch") == 0) {
        json_t *errors = NULL;
        problem_add_error(&errors, "Idempotency-Key",
                          "was already used with a different request (method, path or body)");
        problem_respond_errors(req, "This Idempotency-Key belongs to another request.", errors);
        return true;
    }
    if (strcmp(outcome, "in_flight") == 0) {
        http_set_header(req, "Retry-After", "1");
        problem_respond(req, PROBLEM_CONFLICT,
                        "A request with this Idempotency-Key is still being processed; retry "
                        "shortly.");
        return true;
    }
    return false;
}

/* ---- the two-step form -------------------------------------------------- */

static const char *col(const struct db_result *r, int c)
{
    if (!r->res || PQntuples(r->res) < 1 || PQnfields(r->res) <= c || PQgetisnull(r->res, 0, c))
        return NULL;
    return PQgetvalue(r->res, 0, c);
}

static void unavailable(struct request *req)
{
    http_set_header(req, "Retry-After", "1");
    problem_respond(req, PROBLEM_UNAVAILABLE, "The database is unavailable; try again shortly.");
}

static void claim_done(struct db_result *r, void *ud)
{
    struct idem_claim *c = ud;
    struct request *req = c->req;
    if (r->status != DB_OK) {
        if (r->status == DB_ERROR)
            log_msg(LOG_ERROR, "idempotency claim failed: %s (%s)", r->message ? r->message : "?",
                    r->sqlstate ? r->sqlstate : "?");
        if (r->status == DB_ERROR && r->sqlstate && strcmp(r->sqlstate, "23503") == 0) {
            /* The org vanished between auth and here. */
            problem_respond(req, PROBLEM_NOT_FOUND, "No such organization.");
            return;
        }
        if (r->status == DB_UNAVAILABLE)
            unavailable(req);
        else
            problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    const char *outcome = col(r, 0);
    if (idem_answer(req, outcome, col(r, 1), col(r, 2), col(r, 3)))
        return;
    const char *id = col(r, 4);
    if (!outcome || strcmp(outcome, "proceed") != 0 || !id || strlen(id) != 36) {
        log_msg(LOG_ERROR, "idempotency claim: unexpected answer");
        problem_respond(req, PROBLEM_INTERNAL, "The request could not be completed.");
        return;
    }
    memcpy(c->claim_id, id, 37);
    c->proceed(req, c, c->ud);
}

void idem_claim(struct request *req, const char *org_id, idem_proceed_fn proceed, void *ud)
{
    struct idem_key k;
    int rc = idem_read(req, org_id, &k);
    if (rc < 0)
        return;
    if (rc == 0) {
        proceed(req, NULL, ud);
        return;
    }
    struct db_pool *pool = db_pool_of(req);
    if (!pool) {
        unavailable(req);
        return;
    }
    struct idem_claim *c = arena_calloc(req->arena, sizeof *c);
    c->req = req;
    c->k = k;
    c->proceed = proceed;
    c->ud = ud;
    c->values[0] = k.org_id;
    c->values[1] = k.scope;
    c->values[2] = k.key;
    c->values[3] = k.hash;
    c->values[4] = arena_printf(req->arena, "%d", IDEM_LEASE_S);
    const struct auth_ctx *a = auth_ctx(req);
    db_query(pool, a ? a->schema : NULL, &q_claim, 5, c->values, claim_done, c);
}

static void send_held(struct idem_claim *c)
{
    http_respond(c->req, c->status, c->content_type, c->body, c->len);
}

static void store_done(struct db_result *r, void *ud)
{
    struct idem_claim *c = ud;
    if (r->status != DB_OK)
        log_msg(LOG_WARN,
                "idempotency: the answer for a key could not be stored (%s); the key stays "
                "blocked until its lease lapses",
                r->message ? r->message : "database unavailable");
    else if (!col(r, 0) || strcmp(col(r, 0), "t") != 0)
        log_msg(LOG_WARN, "idempotency: a claim lapsed before its answer was stored");
    send_held(c);
}

/* The response headers set so far plus Content-Type, as JSON text
 * [[name, value], ...] in the arena, in the order they were set. */
static const char *headers_json(struct request *req, const char *content_type)
{
    json_t *arr = json_array();
    if (content_type)
        json_array_append_new(arr, json_pack("[ss]", "Content-Type", content_type));
    /* http_set_header appends, so the list is in the order set. */
    for (const struct http_out_header *h = req->out_headers; h; h = h->next)
        if (strcasecmp(h->name, "X-Request-Id") != 0 && !per_request_header(h->name, h->value))
            json_array_append_new(arr, json_pack("[ss]", h->name, h->value));
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (!s)
        return NULL;
    char *out = arena_strdup(req->arena, s);
    free(s);
    return out;
}

void idem_respond(struct request *req, struct idem_claim *claim, int status,
                  const char *content_type, const char *body, size_t len)
{
    if (!claim) {
        http_respond(req, status, content_type, body, len);
        return;
    }
    struct db_pool *pool = db_pool_of(req);
    claim->status = status;
    claim->content_type = content_type ? arena_strdup(req->arena, content_type) : NULL;
    claim->body = arena_strndup(req->arena, body ? body : "", body ? len : 0);
    claim->len = body ? len : 0;
    if (!pool) {
        send_held(claim);
        return;
    }
    const struct auth_ctx *a = auth_ctx(req);
    const char *schema = a ? a->schema : NULL;
    claim->values[0] = claim->k.org_id;
    claim->values[1] = claim->k.scope;
    claim->values[2] = claim->k.key;
    if (status >= 500) {
        /* Nothing was done (or nothing known to be): a retry may run. */
        claim->values[3] = claim->claim_id;
        db_query(pool, schema, &q_release, 4, claim->values, store_done, claim);
        return;
    }
    const char *hj = headers_json(req, content_type);
    if (!hj || memchr(claim->body, '\0', claim->len)) {
        /* Not storable as text: answer, and let the lease lapse. */
        log_msg(LOG_WARN, "idempotency: an answer could not be stored");
        send_held(claim);
        return;
    }
    claim->values[3] = claim->k.hash;
    claim->values[4] = arena_printf(req->arena, "%d", status);
    claim->values[5] = hj;
    claim->values[6] = claim->body;
    claim->values[7] = claim->claim_id;
    db_query(pool, schema, &q_store, 8, claim->values, store_done, claim);
}

void idem_problem(struct request *req, struct idem_claim *claim, enum problem p, const char *detail)
{
    if (!claim) {
        problem_respond(req, p, detail);
        return;
    }
    json_t *body = problem_body(p, detail, req->request_id, NULL);
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s) {
        problem_respond(req, p, detail);
        return;
    }
    idem_respond(req, claim, problem_status(p), "application/problem+json", s, strlen(s));
    free(s);
}

/* ---- purging expired keys ------------------------------------------------ */

static struct {
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    bool running, stop;
    char *conninfo;
    uint64_t interval_ns;
} purge;

static void purge_once(void)
{
    const char *keys[] = {"dbname", "connect_timeout", "options", "application_name", NULL};
    const char *vals[] = {purge.conninfo, "5", "-c statement_timeout=30000", "tenantd-idem-purge",
                          NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        log_msg(LOG_WARN, "idempotency purge: cannot connect: %s",
                c ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        return;
    }
    PQsetNoticeProcessor(c, NULL, NULL);
    long total = 0;
    /* Batches, so one run never holds many row locks; bounded. */
    for (int i = 0; i < 100; i++) {
        PGresult *r = PQexec(c, "SELECT public.tenantd_idem_purge(10000)");
        long n = -1;
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        else
            log_msg(LOG_WARN, "idempotency purge failed: %s", PQresultErrorMessage(r));
        PQclear(r);
        if (n <= 0)
            break;
        total += n;
        uv_mutex_lock(&purge.mu);
        bool stop = purge.stop;
        uv_mutex_unlock(&purge.mu);
        if (stop || n < 10000)
            break;
    }
    if (total > 0)
        log_msg(LOG_INFO, "idempotency purge: %ld expired keys deleted", total);
    PQfinish(c);
}

static void purge_main(void *arg)
{
    (void)arg;
    thread_name("idem-purge");
    uv_mutex_lock(&purge.mu);
    while (!purge.stop) {
        uv_mutex_unlock(&purge.mu);
        purge_once();
        uv_mutex_lock(&purge.mu);
        if (!purge.stop)
            (void)uv_cond_timedwait(&purge.cond, &purge.mu, purge.interval_ns);
    }
    uv_mutex_unlock(&purge.mu);
}

int idem_purge_start(const char *conninfo, unsigned interval_s)
{
    if (purge.running || !conninfo)
        return -1;
    purge.conninfo = strdup(conninfo);
    if (!purge.conninfo)
        return -1;
    purge.interval_ns = (uint64_t)(interval_s ? interval_s : 1) * 1000000000ULL;
    purge.stop = false;
    if (uv_mutex_init(&purge.mu) != 0) {
        free(purge.conninfo);
        purge.conninfo = NULL;
        return -1;
    }
    if (uv_cond_init(&purge.cond) != 0) {
        uv_mutex_destroy(&purge.mu);
        free(purge.conninfo);
        purge.conninfo = NULL;
        return -1;
    }
    if (uv_thread_create(&purge.thread, purge_main, NULL) != 0) {
        uv_cond_destroy(&purge.cond);
        uv_mutex_destroy(&purge.mu);
        free(purge.conninfo);
        purge.conninfo = NULL;
        return -1;
    }
    purge.running = true;
    return 0;
}

void idem_purge_stop(void)
{
    if (!purge.running)
        return;
    uv_mutex_lock(&purge.mu);
    purge.stop = true;
    uv_cond_signal(&purge.cond);
    uv_mutex_unlock(&purge.mu);
    uv_thread_join(&purge.thread);
    uv_cond_destroy(&purge.cond);
    uv_mutex_destroy(&purge.mu);
    free(purge.conninfo);
    purge.conninfo = NULL;
    purge.running = false;
}

/* ---- the module ---- */

#define PURGE_INTERVAL_S 300

static int idem_init(void)
{
    const char *url = g_config ? g_config->database_url : NULL;
    if (!url || idem_purge_start(url, PURGE_INTERVAL_S) != 0) {
        log_msg(LOG_ERROR, "cannot start the idempotency-key purge");
        return -1;
    }
    return 0;
}

const struct module idem_module = {
    .name = "idem",
    .init = idem_init,
    .shutdown = idem_purge_stop,
};
