/*
 * webhook.deliver's handler (types.c lists the type and checks its payload):
 * the TENANTD_WEBHOOK_ALLOW policy, the HMAC-SHA256 signature, the request
 * and what its answer means for the job (2xx done; 408, 429, 5xx and
 * network errors retried). The transport is httpclient.c.
 */
#include "job/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/tokens.h"
#include "core/config.h"
#include "core/list.h"
#include "job/httpclient.h"

struct allow_ud {
    const char *host;
    int port;
};

/* One TENANTD_WEBHOOK_ALLOW entry, "host" or "host:port": a match? An
 * entry without a port allows the web's ports only (443 and 80), never
 * every port of the host (an allowed name must not reach its SSH, database
 * or admin ports). */
static bool allow_matches(const char *s, size_t n, void *ud)
{
    const struct allow_ud *a = ud;
    char entry[300];
    if (n >= sizeof entry)
        return false;
    memcpy(entry, s, n);
    entry[n] = '\0';
    char *colon = strrchr(entry, ':');
    if (colon) {
        *colon = '\0';
        char *end;
        long eport = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || eport < 1 || eport > 65535)
            return false;
        return !strcasecmp(entry, a->host) && eport == a->port;
    }
    return !strcasecmp(entry, a->host) && (a->port == 443 || a->port == 80);
}

bool job_webhook_allowed(const char *host, int port)
{
    const char *list = g_config ? g_config->webhook_allow : NULL;
    struct allow_ud a = {host, port};
    return list && list_each(list, allow_matches, &a);
}

enum job_outcome job_webhook_run(struct job_run *run)
{
    const char *u = json_string_value(json_object_get(run->payload, "url"));
    const char *secret = json_string_value(json_object_get(run->payload, "secret"));
    struct job_http_url url;
    const char *why;
    if (!u || !secret || job_http_url_parse(u, &url, &why) != 0) {
        snprintf(run->error, sizeof run->error, "bad payload");
        return JOB_FAIL;
    }
    /* Checked again here: this worker's allow list is the one that counts,
     * and a refused host is never connected to. */
    if (!job_webhook_allowed(url.host, url.port)) {
        snprintf(run->error, sizeof run->error,
                 "host %s:%d is not allowed by this worker's TENANTD_WEBHOOK_ALLOW", url.host,
                 url.port);
        return JOB_FAIL;
    }
    json_t *b = json_object_get(run->payload, "body"), *empty = NULL;
    if (!b)
        b = empty = json_object();
    char *body = json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(empty);
    if (!body)
        abort();

    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    size_t slen = strlen(ts) + 1 + strlen(body);
    char *signed_text = malloc(slen + 1);
    if (!signed_text)
        abort();
    snprintf(signed_text, slen + 1, "%s.%s", ts, body);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)signed_text, slen, mac,
         &maclen);
    free(signed_text);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);

    /* Event deliveries (events.c) name their event: receivers drop a
     * retried delivery of an event they already have. */
    const char *event = json_string_value(json_object_get(run->payload, "event_id"));
    char event_h[64] = "";
    if (event && token_uuid_valid(event, strlen(event)))
        snprintf(event_h, sizeof event_h, "X-Tenantd-Event: %s\r\n", event);

    char trace_h[TRACE_HEADERS_MAX] = "";
    job_trace_headers(run, trace_h, sizeof trace_h);

    size_t blen = strlen(body);
    size_t hcap = strlen(url.path) + strlen(url.host) + 2 * maclen + 576 + sizeof trace_h;
    char *head = malloc(hcap);
    if (!head)
        abort();
    char port[8] = ""; /* the scheme's own port goes unsaid, as browsers do */
    if (url.port != (url.tls ? 443 : 80))
        snprintf(port, sizeof port, ":%d", url.port);
    int hlen = snprintf(head, hcap,
                        "POST %s HTTP/1.1\r\nHost: %s%s\r\nUser-Agent: tenantd-webhook/1\r\n"
                        "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                        "X-Tenantd-Signature: t=%s,v1=%s\r\nX-Tenantd-Job: %s\r\n"
                        "X-Tenantd-Attempt: %d\r\n%s%sConnection: close\r\n\r\n",
                        url.path, url.host, port, blen, ts, hex, run->id, run->attempt, event_h,
                        trace_h);

    uint64_t deadline = job_now_ns() + (uint64_t)g_config->webhook_timeout_ms * 1000000u;
    if (deadline > run->deadline_ns)
        deadline = run->deadline_ns;
    enum job_outcome out = JOB_RETRY;
    bool refused = false;
    struct job_http_conn c;
    int opened = job_http_open(&c, &url, deadline, &refused, run->error, sizeof run->error);
    if (refused) { /* this worker's policy: no contact was made, refunded */
        job_http_close(&c);
        free(head);
        free(body);
        return JOB_FAIL;
    }
    /* From here on a failure is the receiver's (its name, its address, its
     * certificate, its answer or its silence): the delivery was attempted,
     * so the cost is not refunded (SECURITY.md, 10.7). */
    run->keep_charge = true;
    if (opened == 0) {
        int status = -1;
        if (job_http_send(&c, head, (size_t)hlen, deadline) == 0 &&
            job_http_send(&c, body, blen, deadline) == 0)
            status = job_http_read_status(&c, deadline);
        if (status < 0) {
            snprintf(run->error, sizeof run->error, "no HTTP answer from %s:%d in time", url.host,
                     url.port);
        } else {
            char res[96];
            snprintf(res, sizeof res, "{\"status\":%d,\"attempt\":%d}", status, run->attempt);
            run->result = strdup(res);
            if (!run->result)
                abort();
            if (status >= 200 && status < 300) {
                out = JOB_OK;
            } else {
                snprintf(run->error, sizeof run->error, "the receiver answered %d", status);
                out = (status == 408 || status == 429 || status >= 500) ? JOB_RETRY : JOB_FAIL;
            }
        }
    }
    job_http_close(&c);
    free(head);
    free(body);
    return out;
}
