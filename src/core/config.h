#ifndef TENANTD_CORE_CONFIG_H
#define TENANTD_CORE_CONFIG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * Every setting: an environment variable and a command-line flag
 * (--listen, --threads, ... : the env name lower-cased without the TENANTD_
 * prefix, '_' -> '-'). A flag wins over the environment, the environment over
 * the default. X(field, ENV_NAME, type, default, min, max, help)
 *   type STR: default is a string literal (NULL = unset); min/max unused
 *   type INT: int64 within [min, max]
 *   type BOOL: "0"/"1"/"true"/"false"
 * Defaults marked "auto" are filled in by config_load (THREADS: cores).
 */
#define CONFIG_MAP(X)                                                                              \
    X(database_url, DATABASE_URL, STR, NULL, 0, 0,                                                 \
      "libpq connection string or URI (required outside development mode)")                        \
    X(db_startup_timeout_ms, TENANTD_DB_STARTUP_TIMEOUT_MS, INT, 30000, 0, 3600000,                \
      "at start, how long to retry the first database connection (0 = try once)")                  \
    X(listen, TENANTD_LISTEN, STR, "127.0.0.1:8080", 0, 0, "host:port to serve on")                \
    X(threads, TENANTD_THREADS, INT, 0, 0, 256, "event loops (0 = one per core)")                  \
    X(db_pool_size, TENANTD_DB_POOL_SIZE, INT, 4, 1, 1024, "database connections per loop")        \
    X(db_pipeline_depth, TENANTD_DB_PIPELINE_DEPTH, INT, 16, 1, 1024,                              \
      "queries in flight on one connection (1 = no pipelining)")                                   \
    X(db_wait_timeout_ms, TENANTD_DB_WAIT_TIMEOUT_MS, INT, 5000, 1, 600000,                        \
      "how long a request waits for a database connection before 503")                            \
    X(db_shed_wait_ms, TENANTD_DB_SHED_WAIT_MS, INT, 1000, 0, 600000,                              \
      "all connections busy: a request waiting this long for one gets 503, new ones at once (0 = off)") \
    X(db_statement_timeout_ms, TENANTD_DB_STATEMENT_TIMEOUT_MS, INT, 10000, 0, 3600000,            \
      "PostgreSQL statement_timeout (0 = none)")                                                   \
    X(db_reconnect_max_ms, TENANTD_DB_RECONNECT_MAX_MS, INT, 5000, 10, 600000,                     \
      "longest back-off between reconnect attempts")                                               \
    X(db_statement_cache, TENANTD_DB_STATEMENT_CACHE, INT, 4000, 1, 1000000,                      \
      "org statements kept prepared per database connection (LRU)")                               \
    X(db_recycle_schemas, TENANTD_DB_RECYCLE_SCHEMAS, INT, 5000, 1, 10000000,                      \
      "distinct org schemas a database connection may see before it is replaced")                 \
    X(db_home_loops, TENANTD_DB_HOME_LOOPS, BOOL, 1, 0, 1,                                         \
      "run each org's statements on one loop's pool (its home), so one backend caches it")       \
    X(db_org_inflight, TENANTD_DB_ORG_INFLIGHT, INT, 0, 0, 1024,                                   \
      "statements one org may have in flight per loop (0 = the pipeline depth, at least 3)")     \
    X(max_connections, TENANTD_MAX_CONNECTIONS, INT, 10000, 1, 1000000,                            \
      "open client connections per loop; more are refused")                                        \
    X(max_body_bytes, TENANTD_MAX_BODY_BYTES, INT, 1048576, 0, 1073741824,                         \
      "largest request body (413 above)")                                                          \
    X(max_batch_body_bytes, TENANTD_MAX_BATCH_BODY_BYTES, INT, 16777216, 0, 1073741824,            \
      "largest body of the bulk routes: batch records, user and org import (413 above)")          \
    X(max_header_bytes, TENANTD_MAX_HEADER_BYTES, INT, 16384, 1024, 1048576,                       \
      "largest request header block (431 above)")                                                  \
    X(header_timeout_ms, TENANTD_HEADER_TIMEOUT_MS, INT, 10000, 1, 3600000,                        \
      "time allowed to receive a request's headers")                                               \
    X(idle_timeout_ms, TENANTD_IDLE_TIMEOUT_MS, INT, 60000, 1, 3600000,                            \
      "idle keep-alive connections are closed after this")                                         \
    X(body_timeout_ms, TENANTD_BODY_TIMEOUT_MS, INT, 60000, 1, 3600000,                            \
      "time allowed to receive a whole request body (not restarted by each read)")                \
    X(max_unsent_bytes, TENANTD_MAX_UNSENT_BYTES, INT, 268435456, 0, INT64_C(1099511627776),       \
      "answers held for slow readers, bytes in all; past it the slowest are closed (0 = off)")    \
    X(max_connections_per_ip, TENANTD_MAX_CONNECTIONS_PER_IP, INT, 4096, 0, 1000000,               \
      "open connections per peer address per loop; more get 503 (0 = off)")                       \
    X(metrics_token, TENANTD_METRICS_TOKEN, STR, NULL, 0, 0,                                       \
      "bearer token for /metrics; unset: /metrics answers loopback clients only")                 \
    X(drain_timeout_ms, TENANTD_DRAIN_TIMEOUT_MS, INT, 10000, 0, 3600000,                          \
      "on SIGTERM/SIGINT, how long in-flight requests may finish")                                 \
    X(shutdown_delay_ms, TENANTD_SHUTDOWN_DELAY_MS, INT, 0, 0, 600000,                             \
      "on SIGTERM, /ready answers 503 and serving goes on this long before the drain")             \
    X(reuseport, TENANTD_REUSEPORT, BOOL, 0, 0, 1,                                                 \
      "share TENANTD_LISTEN with another process already bound to it (else an error)")             \
    X(compatible_ahead, TENANTD_COMPATIBLE_AHEAD, INT, 3, 0, 1000,                                 \
      "accept a database up to this many migrations newer, if all are marked compatible")          \
    X(jwt_secret, TENANTD_JWT_SECRET, STR, NULL, 0, 0, "HS256 key, >= 32 bytes")                   \
    X(dev, TENANTD_DEV, BOOL, 0, 0, 1, "development mode")                                         \
    X(trusted_proxies, TENANTD_TRUSTED_PROXIES, STR, NULL, 0, 0,                                   \
      "proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the client")            \
    X(cors_origins, TENANTD_CORS_ORIGINS, STR, NULL, 0, 0,                                         \
      "browser origins that may call the API (comma-separated, or *); unset: no CORS")             \
    X(operator_token, TENANTD_OPERATOR_TOKEN, STR, NULL, 0, 0,                                     \
      "operator credential; unset disables operator routes")                                       \
    X(worker_token, TENANTD_WORKER_TOKEN, STR, NULL, 0, 0,                                         \
      "external workers' credential for every org's jobs (/v1/worker/...); unset: keys only")      \
    X(signup, TENANTD_SIGNUP, STR, "open", 0, 0, "open or closed")                                 \
    X(signup_credits, TENANTD_SIGNUP_CREDITS, INT, 0, 0, INT64_C(1000000000000),                   \
      "credits granted to a new org")                                                              \
    X(job_workers, TENANTD_JOB_WORKERS, INT, 2, 0, 256, "job workers inside serve")                \
    X(test_jobs, TENANTD_TEST_JOBS, BOOL, 0, 0, 1, "enable the sleep and fail job types")          \
    X(webhook_allow, TENANTD_WEBHOOK_ALLOW, STR, NULL, 0, 0,                                       \
      "comma-separated hosts webhook.deliver may call")                                            \
    X(webhook_timeout_ms, TENANTD_WEBHOOK_TIMEOUT_MS, INT, 10000, 1, 600000,                       \
      "webhook.deliver: connect + answer time allowed per attempt")                                \
    X(webhook_ca_file, TENANTD_WEBHOOK_CA_FILE, STR, NULL, 0, 0,                                   \
      "webhook.deliver over https: PEM file of CAs trusted beside the system's")                   \
    X(webhook_allow_private, TENANTD_WEBHOOK_ALLOW_PRIVATE, BOOL, 0, 0, 1,                         \
      "webhook.deliver may reach loopback/private/link-local addresses (tests, labs)")             \
    X(schedule_tick_ms, TENANTD_SCHEDULE_TICK_MS, INT, 1000, 0, 60000,                            \
      "how often each serve and worker process fires due schedule ticks (0 = this one does not)")  \
    X(schedule_tick_keep_days, TENANTD_SCHEDULE_TICK_KEEP_DAYS, INT, 30, 0, 36500,                \
      "days a schedule keeps the records of its ticks (0 = for good)")                             \
    X(test_clock_speed, TENANTD_TEST_CLOCK_SPEED, INT, 1, 1, 100000,                               \
      "tests only: schedules see time run this many times faster, from TENANTD_TEST_CLOCK_BASE")   \
    X(test_clock_base, TENANTD_TEST_CLOCK_BASE, INT, 0, 0, INT64_C(4000000000),                    \
      "tests only: unix time at which the sped-up schedule clock equals the real one")             \
    X(job_lease_ms, TENANTD_JOB_LEASE_MS, INT, 30000, 100, 86400000,                               \
      "a running job's lease; renewed at a third of it, a dead worker's job runs again after it")  \
    X(job_poll_ms, TENANTD_JOB_POLL_MS, INT, 1000, 10, 3600000,                                    \
      "workers look for due jobs at least this often (besides LISTEN)")                            \
    X(job_timeout_ms, TENANTD_JOB_TIMEOUT_MS, INT, 60000, 10, 86400000,                            \
      "one attempt of a job may take this long, then it fails (and may retry)")                    \
    X(job_batch, TENANTD_JOB_BATCH, INT, 8, 1, 1000, "jobs a worker claims at once")               \
    X(job_retry_base_ms, TENANTD_JOB_RETRY_BASE_MS, INT, 1000, 1, 86400000,                        \
      "retry backoff: base * 2^(attempt-1), with jitter")                                          \
    X(job_retry_max_ms, TENANTD_JOB_RETRY_MAX_MS, INT, 300000, 1, 86400000,                        \
      "longest retry backoff")                                                                     \
    X(job_cost_records_export, TENANTD_JOB_COST_RECORDS_EXPORT, INT, 5, 0, INT64_C(1000000000),    \
      "credits a records.export job costs")                                                        \
    X(job_cost_credits_report, TENANTD_JOB_COST_CREDITS_REPORT, INT, 2, 0, INT64_C(1000000000),    \
      "credits a credits.report job costs")                                                        \
    X(job_cost_webhook_deliver, TENANTD_JOB_COST_WEBHOOK_DELIVER, INT, 2, 0, INT64_C(1000000000),  \
      "credits a webhook.deliver job costs")                                                       \
    X(job_cost_sleep, TENANTD_JOB_COST_SLEEP, INT, 1, 0, INT64_C(1000000000),                      \
      "credits a sleep job costs (test jobs)")                                                     \
    X(job_cost_fail, TENANTD_JOB_COST_FAIL, INT, 1, 0, INT64_C(1000000000),                        \
      "credits a fail job costs (test jobs)")                                                      \
    X(login_limit, TENANTD_LOGIN_LIMIT, INT, 10, 0, 1000000,                                       \
      "login attempts per minute per client IP and per account (0 = off)")                         \
    X(login_ipv6_prefix, TENANTD_LOGIN_IPV6_PREFIX, INT, 64, 32, 128,                              \
      "login/signup limits count an IPv6 client by this prefix length")                            \
    X(org_rate_limit, TENANTD_ORG_RATE_LIMIT, INT, 0, 0, 100000000,                                \
      "authenticated requests per minute per org, per process (0 = off)")                          \
    X(signup_limit, TENANTD_SIGNUP_LIMIT, INT, 20, 0, 1000000,                                     \
      "orgs one client IP may sign up per hour (0 = off; the operator is never limited)")          \
    X(log_level, TENANTD_LOG_LEVEL, STR, "info", 0, 0, "debug, info, warn or error")               \
    X(migrate_concurrency, TENANTD_MIGRATE_CONCURRENCY, INT, 4, 1, 64,                             \
      "tenant schemas migrated at once")                                                           \
    X(access_ttl_s, TENANTD_ACCESS_TTL_S, INT, 900, 1, 86400, "access token lifetime, seconds")    \
    X(refresh_ttl_s, TENANTD_REFRESH_TTL_S, INT, 2592000, 60, INT64_C(31536000),                   \
      "refresh token lifetime, seconds")                                                           \
    X(argon2_m_kib, TENANTD_ARGON2_M_KIB, INT, 19456, 8, 4194304, "argon2id memory cost, KiB")     \
    X(argon2_t, TENANTD_ARGON2_T, INT, 2, 1, 100, "argon2id iterations")                           \
    X(argon2_p, TENANTD_ARGON2_P, INT, 1, 1, 64, "argon2id lanes")                                 \
    X(hash_threads, TENANTD_HASH_THREADS, INT, 0, 0, 256,                                          \
      "password hashing threads (0 = one per core)")                                               \
    X(hash_queue, TENANTD_HASH_QUEUE, INT, 256, 1, 1000000,                                        \
      "password hashes waiting at most; more get 503")                                             \
    X(hash_boost_ms, TENANTD_HASH_BOOST_MS, INT, 100, 0, 60000,                                    \
      "hashes starved this long by busy loops run at normal priority (0 = never)")                 \
    X(jwt_issuer, TENANTD_JWT_ISSUER, STR, "tenantd", 0, 0, "access token iss claim")              \
    X(jwt_audience, TENANTD_JWT_AUDIENCE, STR, "tenantd", 0, 0, "access token aud claim")        \
    X(refresh_reuse_grace_s, TENANTD_REFRESH_REUSE_GRACE_S, INT, 10, 0, 300,                       \
      "a rotated refresh token presented again this soon gets the same successor (0 = off)")       \
    X(smtp_url, TENANTD_SMTP_URL, STR, NULL, 0, 0,                                                 \
      "mail server: smtp://[user:pass@]host:port (STARTTLS when offered) or smtps://; unset: "     \
      "mails are written as files (TENANTD_MAIL_DIR)")                                             \
    X(mail_from, TENANTD_MAIL_FROM, STR, "tenantd <no-reply@localhost>", 0, 0,                     \
      "From: of every mail (an address, or \"Name <address>\")")                                  \
    X(mail_dir, TENANTD_MAIL_DIR, STR, NULL, 0, 0,                                                 \
      "without TENANTD_SMTP_URL: folder mails are written to (in dev mode <TMPDIR>/tenantd-mail)")     \
    X(public_url, TENANTD_PUBLIC_URL, STR, "http://localhost:3000", 0, 0,                          \
      "the frontend's base URL; links in mails point at its pages")                               \
    X(invitation_ttl_s, TENANTD_INVITATION_TTL_S, INT, 604800, 1, INT64_C(31536000),               \
      "an invitation link works this long, seconds")                                               \
    X(password_reset_ttl_s, TENANTD_PASSWORD_RESET_TTL_S, INT, 3600, 1, 604800,                    \
      "a password-reset link works this long, seconds")                                            \
    X(verify_email_ttl_s, TENANTD_VERIFY_EMAIL_TTL_S, INT, 86400, 1, 2592000,                      \
      "an email-verification link works this long, seconds")                                    \
    X(api_url, TENANTD_API_URL, STR, "http://localhost:8080", 0, 0,                                \
      "this API's public base URL (OIDC callbacks: <url>/v1/auth/oidc/<provider>/callback)")       \
    X(oidc_redirect_uris, TENANTD_OIDC_REDIRECT_URIS, STR, NULL, 0, 0,                             \
      "comma-separated redirect_uri values OIDC sign-in may return to (exact match); providers: "  \
      "TENANTD_OIDC_<NAME>_CLIENT_ID, _CLIENT_SECRET, _ISSUER (GOOGLE: issuer preset)")

struct config {
#define CONFIG_FIELD_STR(f) const char *f;
#define CONFIG_FIELD_INT(f) int64_t f;
#define CONFIG_FIELD_BOOL(f) bool f;
#define CONFIG_FIELD(field, env, type, def, min, max, help) CONFIG_FIELD_##type(field)
    CONFIG_MAP(CONFIG_FIELD)
#undef CONFIG_FIELD
    bool jwt_secret_generated; /* dev mode made one up */
    /* The command and its arguments after the flags, e.g. {"migrate", "down", "2"}. */
    const char *command;
    int argc;
    char **argv;
    bool migrate_on_start; /* serve --migrate */
};

/*
 * Fills cfg from defaults, the environment, then argv. Setting flags
 * (--listen 1.2.3.4:80 or --listen=1.2.3.4:80; a BOOL flag alone means 1)
 * may stand anywhere; the first word that is not a flag is the command;
 * `--migrate` after `serve` sets migrate_on_start; every other word after
 * the command (unknown flags too) goes to cfg->argc/argv for the command to
 * check. An unknown flag before the command, or a bad value anywhere: a
 * clear message in err (naming the env var or flag) and -1. --help / -h:
 * returns 1 with command NULL; --version: returns 1 with command "version".
 * 0 on success. Strings point into argv, environ or static storage.
 */
int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Logs a warning for each TENANTD_* environment variable that is no
 * setting (a typo would otherwise be silently ignored). */
void config_warn_unknown(void);

/* The development database DATABASE_URL falls back to in development mode. */
#define CONFIG_DEV_DATABASE_URL "postgresql://tenantd@127.0.0.1:55432/tenantd"

/* The git commit this binary was built from ("unknown" outside a checkout). */
const char *config_build_commit(void);

/* Set (never cleared) when SIGTERM arrives with TENANTD_SHUTDOWN_DELAY_MS:
 * /ready answers 503 so load balancers stop sending traffic, while the
 * server keeps serving until the delay ends and the drain starts. */
extern _Atomic bool g_shutting_down;

/* Prints usage, every setting with its env name, flag and default, to f. */
void config_usage(FILE *f);

/* The process-wide configuration, set once by main before any loop starts. */
extern const struct config *g_config;

#endif
