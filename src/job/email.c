/*
 * email.send (see email.h). Runs on a job worker thread: blocking libpq on
 * the worker's connection, blocking libcurl bounded by the attempt's
 * deadline. The SMTP URL carries credentials: it is never logged, and
 * errors name libcurl's error only.
 */
#include "job/email.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#include "core/config.h"
#include "core/log.h"
#include "core/strbuf.h"

int64_t email_cost(void)
{
    return 0;
}

void email_validate(json_t *payload, json_t **errors)
{
    (void)payload;
    json_t *e = json_pack("{s:s, s:s}", "field", "type", "message",
                          "email.send jobs are queued by the server only");
    if (!*errors)
        *errors = json_array();
    json_array_append_new(*errors, e);
}

static char default_dir[512];

static void default_dir_init(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(default_dir, sizeof default_dir, "%s/tenantd-mail", tmp && *tmp ? tmp : "/tmp");
}

const char *email_dir(void)
{
    if (g_config->smtp_url && *g_config->smtp_url)
        return NULL;
    if (g_config->mail_dir && *g_config->mail_dir)
        return g_config->mail_dir;
    if (!g_config->dev)
        return NULL; /* production without a mail server: nothing is sent */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, default_dir_init);
    return default_dir;
}

/* The message, and how much of it libcurl has read. */
struct buf {
    struct strbuf s;
    size_t off;
};

/* A body with CRLF line ends, and '.'-stuffing left to libcurl (it does
 * the SMTP dot-escaping itself). */
static void buf_body(struct strbuf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n')
            sb_put(b, "\r\n", 2);
        else
            sb_put(b, p, 1);
    }
    sb_put(b, "\r\n", 2);
}

/* Header values come from the database (addresses checked at the API,
 * subjects from templates); a CR or LF would start a new header. */
static bool header_safe(const char *s)
{
    return !strpbrk(s, "\r\n");
}

/* The bare address of "Name <addr>" or "addr". */
static char *address_of(const char *from)
{
    const char *lt = strrchr(from, '<'), *gt = lt ? strchr(lt, '>') : NULL;
    if (lt && gt)
        return strndup(lt + 1, (size_t)(gt - lt - 1));
    return strdup(from);
}

static int message_build(struct buf *m, const char *to, const char *subject, const char *text,
                         const char *html, const char *job_id)
{
    unsigned char rnd[12];
    char boundary[64];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return -1;
    int n = snprintf(boundary, sizeof boundary, "=_tenantd_");
    for (size_t i = 0; i < sizeof rnd; i++)
        n += snprintf(boundary + n, sizeof boundary - (size_t)n, "%02x", rnd[i]);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    char *from_addr = address_of(g_config->mail_from);
    const char *at = from_addr ? strchr(from_addr, '@') : NULL;
    char head[2048];
    snprintf(head, sizeof head,
             "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n"
             "MIME-Version: 1.0\r\nAuto-Submitted: auto-generated\r\n"
             "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n",
             g_config->mail_from, to, subject, date, job_id, at ? at + 1 : "tenantd", boundary);
    free(from_addr);
    struct strbuf *b = &m->s;
    sb_puts(b, head);
    sb_printf(b,
              "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n\r\n",
              boundary);
    buf_body(b, text);
    sb_printf(b,
              "--%s\r\nContent-Type: text/html; charset=utf-8\r\n"
              "Content-Transfer-Encoding: 8bit\r\n\r\n",
              boundary);
    buf_body(b, html);
    sb_printf(b, "--%s--\r\n", boundary);
    return 0;
}

static size_t read_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t n = size * nmemb, left = b->s.len - b->off;
    if (n > left)
        n = left;
    memcpy(ptr, b->s.s + b->off, n);
    b->off += n;
    return n;
}

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* 0, or -1 with run->error set (libcurl's message, never the URL). */
static int send_smtp(struct job_run *run, const char *to, struct buf *m)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, curl_init_once);
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(run->error, sizeof run->error, "smtp: cannot start libcurl");
        return -1;
    }
    uint64_t now = job_now_ns();
    long timeout_ms = run->deadline_ns > now ? (long)((run->deadline_ns - now) / 1000000u) : 1;
    if (timeout_ms < 1)
        timeout_ms = 1;
    char *from_addr = address_of(g_config->mail_from);
    char rcpt_s[300];
    snprintf(rcpt_s, sizeof rcpt_s, "<%s>", to);
    struct curl_slist *rcpt = curl_slist_append(NULL, rcpt_s);
    char from_env[512];
    snprintf(from_env, sizeof from_env, "<%s>", from_addr ? from_addr : "");
    curl_easy_setopt(c, CURLOPT_URL, g_config->smtp_url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    /* STARTTLS whenever the server offers it on smtp://, and required when
     * the URL carries credentials (outside development mode), so a password
     * never crosses in clear; smtps:// is TLS from the first byte.
     * Certificates are always verified. */
    const char *u = g_config->smtp_url, *hs = strstr(u, "://");
    const char *he = hs ? strchr(hs + 3, '/') : NULL, *at = hs ? strchr(hs + 3, '@') : NULL;
    bool creds = at && (!he || at < he);
    curl_easy_setopt(c, CURLOPT_USE_SSL,
                     (long)(creds && !g_config->dev ? CURLUSESSL_ALL : CURLUSESSL_TRY));
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, from_env);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(c, CURLOPT_READDATA, m);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)m->s.len);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 10000 ? timeout_ms : 10000L);
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(rcpt);
    free(from_addr);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        snprintf(run->error, sizeof run->error, "smtp: %s (reply %ld)", curl_easy_strerror(rc),
                 code);
        return -1;
    }
    return 0;
}

/* Writes <dir>/<job id>.eml (0600: it holds a live link). */
static int send_file(struct job_run *run, const char *dir, struct buf *m)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(run->error, sizeof run->error, "mail folder: %s", strerror(errno));
        return -1;
    }
    char path[1024], tmp[1100];
    snprintf(path, sizeof path, "%s/%s.eml", dir, run->id);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(run->error, sizeof run->error, "mail file: %s", strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < m->s.len) {
        ssize_t w = write(fd, m->s.s + off, m->s.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(run->error, sizeof run->error, "mail file: %s", strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    close(fd);
    /* Renamed into place, so a reader never sees half a mail. */
    if (rename(tmp, path) != 0) {
        snprintf(run->error, sizeof run->error, "mail file: %s", strerror(errno));
        unlink(tmp);
        return -1;
    }
    log_msg(LOG_INFO, "mail: job %s written to %s", run->id, path);
    return 0;
}

enum job_outcome email_run(struct job_run *run)
{
    const char *mail_id = json_string_value(json_object_get(run->payload, "mail_id"));
    if (!mail_id) {
        snprintf(run->error, sizeof run->error, "payload has no mail_id");
        return JOB_FAIL;
    }
    const char *v[] = {mail_id, run->org_id};
    PGresult *r = PQexecParams(run->conn,
                               "SELECT to_addr, subject, text_body, html_body"
                               " FROM public.mail_outbox WHERE id = $1::uuid AND org_id = $2::uuid",
                               2, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(run->error, sizeof run->error, "database: %s", PQresultErrorMessage(r));
        PQclear(r);
        return JOB_RETRY;
    }
    if (PQntuples(r) != 1) {
        /* Sent by an earlier attempt that lost its lease after sending. */
        PQclear(r);
        run->result = strdup("{\"sent\":false,\"reason\":\"already sent\"}");
        return JOB_OK;
    }
    const char *to = PQgetvalue(r, 0, 0), *subject = PQgetvalue(r, 0, 1);
    if (!header_safe(to) || !header_safe(subject) || !header_safe(g_config->mail_from)) {
        PQclear(r);
        snprintf(run->error, sizeof run->error, "a mail header holds a line break");
        return JOB_FAIL;
    }
    struct buf m = {0};
    if (message_build(&m, to, subject, PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3), run->id) != 0) {
        PQclear(r);
        free(m.s.s);
        snprintf(run->error, sizeof run->error, "out of memory");
        return JOB_RETRY;
    }
    const char *dir = email_dir();
    bool smtp = g_config->smtp_url && *g_config->smtp_url;
    int rc;
    if (!dir && !smtp) {
        /* Kept (retried) so that the mail goes once a server is configured. */
        snprintf(run->error, sizeof run->error,
                 "no mail server: set TENANTD_SMTP_URL (or TENANTD_MAIL_DIR)");
        rc = -1;
    } else {
        rc = dir ? send_file(run, dir, &m) : send_smtp(run, to, &m);
    }
    PQclear(r);
    free(m.s.s);
    if (rc != 0)
        return JOB_RETRY;
    r = PQexecParams(run->conn, "DELETE FROM public.mail_outbox WHERE id = $1::uuid", 1, NULL, v,
                     NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        log_msg(LOG_WARN, "mail: job %s sent, but its outbox row stays: %s", run->id,
                PQresultErrorMessage(r));
    PQclear(r);
    run->result = strdup(dir ? "{\"sent\":true,\"transport\":\"file\"}"
                             : "{\"sent\":true,\"transport\":\"smtp\"}");
    return JOB_OK;
}
