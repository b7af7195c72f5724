#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>

#include "core/cors.h"
#include "core/log.h"
#include "core/proxy.h"

const struct config *g_config;

enum setting_type { T_STR, T_INT, T_BOOL };

struct setting {
    const char *env;
    enum setting_type type;
    const char *def_str;
    int64_t def_int, min, max;
    const char *help;
    size_t offset;
};

#define SETTING_STR(field, env, def, min, max, help)                                               \
    {#env, T_STR, def, 0, 0, 0, help, offsetof(struct config, field)},
#define SETTING_INT(field, env, def, min, max, help)                                               \
    {#env, T_INT, NULL, def, min, max, help, offsetof(struct config, field)},
#define SETTING_BOOL(field, env, def, min, max, help)                                              \
    {#env, T_BOOL, NULL, def, 0, 1, help, offsetof(struct config, field)},
#define SETTING(field, env, type, def, min, max, help) SETTING_##type(field, env, def, min, max, help)
static const struct setting settings[] = {CONFIG_MAP(SETTING)};
#undef SETTING
#define NSETTINGS (sizeof settings / sizeof settings[0])

/* "TENANTD_DB_POOL_SIZE" -> "db-pool-size"; "DATABASE_URL" -> "database-url". */
static void flag_name(const char *env, char *out, size_t outlen)
{
    if (strncmp(env, "TENANTD_", 8) == 0)
        env += 8;
    size_t i = 0;
    for (; env[i] && i + 1 < outlen; i++)
        out[i] = env[i] == '_' ? '-' : (char)tolower((unsigned char)env[i]);
    out[i] = '\0';
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
        *out = true;
    else if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
             !strcasecmp(s, "off"))
        *out = false;
    else
        return -1;
    return 0;
}

/* Applies one value; `source` names where it came from, for the message. */
static int apply(struct config *cfg, const struct setting *s, const char *value, const char *source,
                 char *err, size_t errlen)
{
    char *base = (char *)cfg + s->offset;
    switch (s->type) {
    case T_STR:
        *(const char **)base = value;
        return 0;
    case T_BOOL:
        if (parse_bool(value, (bool *)base) != 0)
            return fail(err, errlen, "%s: '%s' is not a boolean (use 1 or 0)", source, value);
        return 0;
    case T_INT: {
        errno = 0;
        char *end;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || !*value)
            return fail(err, errlen, "%s: '%s' is not a whole number", source, value);
        if (v < s->min || v > s->max)
            return fail(err, errlen, "%s: %lld is out of range (%" PRId64 "..%" PRId64 ")", source,
                        v, s->min, s->max);
        *(int64_t *)base = v;
        return 0;
    }
    }
    return -1;
}

static const struct setting *find_flag(const char *name, size_t len)
{
    char buf[64];
    for (size_t i = 0; i < NSETTINGS; i++) {
        flag_name(settings[i].env, buf, sizeof buf);
        if (strlen(buf) == len && memcmp(buf, name, len) == 0)
            return &settings[i];
    }
    return NULL;
}

/* host:port with a port in 1..65535; IPv6 hosts in brackets. */
static int check_listen(const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return -1;
    if (v[0] == '[' && colon[-1] != ']')
        return -1;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port < 1 || port > 65535)
        return -1;
    return 0;
}

/* Cross-field and format checks once every source has been applied. */
static int validate(struct config *cfg, char *err, size_t errlen)
{
    if (check_listen(cfg->listen) != 0)
        return fail(err, errlen, "TENANTD_LISTEN: '%s' is not host:port", cfg->listen);
    if (log_level_parse(cfg->log_level) < 0)
        return fail(err, errlen, "TENANTD_LOG_LEVEL: '%s' is not debug, info, warn or error",
                    cfg->log_level);
    if (strcmp(cfg->signup, "open") != 0 && strcmp(cfg->signup, "closed") != 0)
        return fail(err, errlen, "TENANTD_SIGNUP: '%s' is not open or closed", cfg->signup);
    char bad[256];
    if (cfg->trusted_proxies && !proxies_load(cfg->trusted_proxies, bad, sizeof bad))
        return fail(err, errlen,
                    "TENANTD_TRUSTED_PROXIES: '%s' is not an IP address or CIDR range", bad);
    if (cfg->cors_origins && !cors_origins_valid(cfg->cors_origins, bad, sizeof bad))
        return fail(err, errlen,
                    "TENANTD_CORS_ORIGINS: '%s' is not * or an origin like https://app.example.com",
                    bad);
    if (!cfg->database_url || !*cfg->database_url)
        return fail(err, errlen, "DATABASE_URL is empty");
    if (cfg->jwt_secret && strlen(cfg->jwt_secret) < 32)
        return fail(err, errlen, "TENANTD_JWT_SECRET must be at least 32 bytes");
    if (cfg->operator_token && strlen(cfg->operator_token) < 16)
        return fail(err, errlen, "TENANTD_OPERATOR_TOKEN must be at least 16 bytes");
    if (cfg->worker_token && strlen(cfg->worker_token) < 16)
        return fail(err, errlen, "TENANTD_WORKER_TOKEN must be at least 16 bytes");
    /* Only serve signs and checks tokens; a worker process never does. */
    bool serves = cfg->command && !strcmp(cfg->command, "serve");
    if (serves && !cfg->jwt_secret) {
        if (!cfg->dev)
            return fail(err, errlen,
                        "TENANTD_JWT_SECRET is not set (set it to >= 32 random bytes, or "
                        "TENANTD_DEV=1 for development)");
        /* Development only: a fresh secret each start, so tokens die with the process. */
        static char generated[65];
        unsigned char raw[32];
        if (RAND_bytes(raw, sizeof raw) != 1)
            return fail(err, errlen, "cannot generate a development JWT secret");
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(generated + 2 * i, 3, "%02x", raw[i]);
        cfg->jwt_secret = generated;
        cfg->jwt_secret_generated = true;
    }
    return 0;
}

int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        char *base = (char *)cfg + s->offset;
        if (s->type == T_STR)
            *(const char **)base = s->def_str;
        else if (s->type == T_INT)
            *(int64_t *)base = s->def_int;
        else
            *(bool *)base = s->def_int != 0;
    }
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *v = getenv(settings[i].env);
        if (v && apply(cfg, &settings[i], v, settings[i].env, err, errlen) != 0)
            return -1;
    }

    static char *rest[256];
    int nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h") || (!cfg->command && !strcmp(a, "help"))) {
            cfg->command = NULL;
            return 1;
        }
        if (!strcmp(a, "--version") || (!cfg->command && !strcmp(a, "version"))) {
            cfg->command = "version";
            return 1;
        }
        if (cfg->command && !strcmp(cfg->command, "serve") && !strcmp(a, "--migrate")) {
            cfg->migrate_on_start = true;
            continue;
        }
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            const struct setting *s = find_flag(name, len);
            if (s) {
                const char *value;
                if (eq)
                    value = eq + 1;
                else if (s->type == T_BOOL)
                    value = "1";
                else if (i + 1 < argc)
                    value = argv[++i];
                else
                    return fail(err, errlen, "--%.*s needs a value", (int)len, name);
                char src[80];
                snprintf(src, sizeof src, "--%.*s", (int)len, name);
                if (apply(cfg, s, value, src, err, errlen) != 0)
                    return -1;
                continue;
            }
            if (!cfg->command)
                return fail(err, errlen, "unknown option '%s'", a);
        } else if (!cfg->command) {
            cfg->command = a;
            continue;
        }
        if (nrest >= (int)(sizeof rest / sizeof rest[0]) - 1)
            return fail(err, errlen, "too many arguments");
        rest[nrest++] = argv[i];
    }
    rest[nrest] = NULL;
    cfg->argc = nrest;
    cfg->argv = rest;
    if (cfg->command && !strcmp(cfg->command, "serve") && nrest > 0)
        return fail(err, errlen, "serve: unexpected argument '%s'", rest[0]);
    return validate(cfg, err, errlen);
}

void config_usage(FILE *f)
{
    fprintf(f,
            "tenantd %s: multi-tenant SaaS backend\n\n"
            "Usage:\n"
            "  tenantd serve [--migrate]          serve the API (--migrate: apply migrations first)\n"
            "  tenantd worker                     run job workers only (TENANTD_JOB_WORKERS of them),\n"
            "                                     no HTTP; SIGTERM/SIGINT: finish or release, then exit\n"
            "  tenantd migrate up                 apply pending migrations (control, then every org)\n"
            "  tenantd migrate down [N] [--tenant] revert the last N migrations (default 1)\n"
            "  tenantd migrate status             what is applied and what is pending\n"
            "  tenantd routes                     print the route table\n"
            "  tenantd --help | --version\n\n"
            "Settings (environment variable, or the flag; a flag wins):\n",
            TENANTD_VERSION);
    char flag[64];
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        flag_name(s->env, flag, sizeof flag);
        char def[96];
        if (s->type == T_STR)
            snprintf(def, sizeof def, "%s", s->def_str ? s->def_str : "unset");
        else if (s->type == T_BOOL)
            snprintf(def, sizeof def, "%s", s->def_int ? "1" : "0");
        else
            snprintf(def, sizeof def, "%" PRId64, s->def_int);
        fprintf(f, "  %-32s --%-26s %s (default: %s)\n", s->env, flag, s->help, def);
    }
}
