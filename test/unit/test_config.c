/* Config: defaults, environment, flags, and clear errors on bad values. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

static const char *const vars[] = {
    "DATABASE_URL",         "TENANTD_LISTEN",          "TENANTD_THREADS",
    "TENANTD_DEV",          "TENANTD_JWT_SECRET",      "TENANTD_LOG_LEVEL",
    "TENANTD_SIGNUP",       "TENANTD_DB_POOL_SIZE",    "TENANTD_TRUSTED_PROXIES",
    "TENANTD_CORS_ORIGINS", "TENANTD_JWT_SECRET_FILE", "DATABASE_URL_FILE"};

static int clean_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    return 0;
}

static int load(struct config *c, char *err, size_t errlen, int argc, char **argv)
{
    err[0] = '\0';
    return config_load(c, argc, argv, err, errlen);
}

static void defaults(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char *argv[] = {"tenantd", "routes", NULL};
    assert_int_equal(load(&c, err, sizeof err, 2, argv), 0);
    assert_string_equal(c.command, "routes");
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_int_equal(c.max_body_bytes, 1048576);
    assert_int_equal(c.max_header_bytes, 16384);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.header_timeout_ms, 10000);
    assert_int_equal(c.job_workers, 2);
    assert_false(c.dev);
    assert_null(c.jwt_secret);
    assert_string_equal(c.signup, "open");
    assert_int_equal(c.access_ttl_s, 900);
    assert_int_equal(c.refresh_ttl_s, 2592000);
    assert_int_equal(c.argon2_m_kib, 19456);
    assert_int_equal(c.argon2_t, 2);
    assert_int_equal(c.argon2_p, 1);
    assert_int_equal(c.hash_threads, 0);
    assert_int_equal(c.hash_queue, 256);
    assert_string_equal(c.jwt_issuer, "tenantd");
    assert_string_equal(c.jwt_audience, "tenantd");
}

static void env_then_flag_wins(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    setenv("TENANTD_THREADS", "3", 1);
    setenv("TENANTD_LISTEN", "0.0.0.0:9000", 1);
    char *argv[] = {"tenantd", "--threads", "5", "--listen=[::1]:81", "routes", NULL};
    assert_int_equal(load(&c, err, sizeof err, 5, argv), 0);
    assert_int_equal(c.threads, 5);
    assert_string_equal(c.listen, "[::1]:81");
}

static void bad_values_name_the_setting(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    static const struct {
        const char *env, *value, *expect;
    } cases[] = {
        {"TENANTD_THREADS", "two", "TENANTD_THREADS"},
        {"TENANTD_THREADS", "-1", "out of range"},
        {"TENANTD_DB_POOL_SIZE", "0", "TENANTD_DB_POOL_SIZE"},
        {"TENANTD_DEV", "maybe", "TENANTD_DEV"},
        {"TENANTD_LISTEN", "localhost", "TENANTD_LISTEN"},
        {"TENANTD_LISTEN", "127.0.0.1:70000", "TENANTD_LISTEN"},
        {"TENANTD_LOG_LEVEL", "loud", "TENANTD_LOG_LEVEL"},
        {"TENANTD_SIGNUP", "sometimes", "TENANTD_SIGNUP"},
        {"TENANTD_JWT_SECRET", "short", "32 bytes"},
        {"TENANTD_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal", "'proxy.internal'"},
        {"TENANTD_TRUSTED_PROXIES", "10.0.0.0/40", "TENANTD_TRUSTED_PROXIES"},
        {"TENANTD_TRUSTED_PROXIES", ",", "TENANTD_TRUSTED_PROXIES"},
        {"TENANTD_CORS_ORIGINS", "https://a.example/path", "'https://a.example/path'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clean_env(NULL);
        setenv(cases[i].env, cases[i].value, 1);
        char *argv[] = {"tenantd", "routes", NULL};
        assert_int_equal(load(&c, err, sizeof err, 2, argv), -1);
        if (!strstr(err, cases[i].expect))
            fail_msg("%s=%s: message '%s' lacks '%s'", cases[i].env, cases[i].value, err,
                     cases[i].expect);
    }
}

static void unknown_flag_and_missing_value(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char *a1[] = {"tenantd", "--nope", "serve", NULL};
    assert_int_equal(load(&c, err, sizeof err, 3, a1), -1);
    assert_non_null(strstr(err, "--nope"));
    char *a2[] = {"tenantd", "routes", "--threads", NULL};
    assert_int_equal(load(&c, err, sizeof err, 3, a2), -1);
    assert_non_null(strstr(err, "needs a value"));
}

static void command_arguments_pass_through(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char *argv[] = {"tenantd", "migrate", "down", "2", "--tenant", NULL};
    setenv("DATABASE_URL", "postgresql://db/x", 1);
    assert_int_equal(load(&c, err, sizeof err, 5, argv), 0);
    assert_string_equal(c.command, "migrate");
    assert_int_equal(c.argc, 3);
    assert_string_equal(c.argv[0], "down");
    assert_string_equal(c.argv[2], "--tenant");
}

static void serve_needs_secret_unless_dev(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char *argv[] = {"tenantd", "serve", "--migrate", NULL};
    setenv("DATABASE_URL", "postgresql://db/x", 1);
    assert_int_equal(load(&c, err, sizeof err, 3, argv), -1);
    assert_non_null(strstr(err, "TENANTD_JWT_SECRET"));
    setenv("TENANTD_DEV", "1", 1);
    assert_int_equal(load(&c, err, sizeof err, 3, argv), 0);
    assert_true(c.migrate_on_start);
    assert_true(c.jwt_secret_generated);
    assert_true(strlen(c.jwt_secret) >= 32);
}

/* Outside development mode there is no default database: a forgotten
 * DATABASE_URL must not quietly point at the development one. */
static void database_url_required_outside_dev(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    setenv("TENANTD_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    char *serve[] = {"tenantd", "serve", NULL};
    char *worker[] = {"tenantd", "worker", NULL};
    char *migrate[] = {"tenantd", "migrate", "status", NULL};
    char *routes[] = {"tenantd", "routes", NULL};
    assert_int_equal(load(&c, err, sizeof err, 2, serve), -1);
    assert_non_null(strstr(err, "DATABASE_URL is not set"));
    assert_int_equal(load(&c, err, sizeof err, 2, worker), -1);
    assert_int_equal(load(&c, err, sizeof err, 3, migrate), -1);
    assert_int_equal(load(&c, err, sizeof err, 2, routes), 0);
    setenv("TENANTD_DEV", "1", 1);
    assert_int_equal(load(&c, err, sizeof err, 2, serve), 0);
    assert_string_equal(c.database_url, CONFIG_DEV_DATABASE_URL);
}

/* NAME_FILE: the file's content without its trailing newline; never both. */
static void settings_from_files(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char path[] = "/tmp/tenantd-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char secret[] = "fedcba9876543210fedcba9876543210\n";
    assert_int_equal(write(fd, secret, sizeof secret - 1), (int)(sizeof secret - 1));
    close(fd);
    setenv("DATABASE_URL", "postgresql://db/x", 1);
    setenv("TENANTD_JWT_SECRET_FILE", path, 1);
    char *serve[] = {"tenantd", "serve", NULL};
    assert_int_equal(load(&c, err, sizeof err, 2, serve), 0);
    assert_string_equal(c.jwt_secret, "fedcba9876543210fedcba9876543210");
    setenv("TENANTD_JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    assert_int_equal(load(&c, err, sizeof err, 2, serve), -1);
    assert_non_null(strstr(err, "both TENANTD_JWT_SECRET and TENANTD_JWT_SECRET_FILE"));
    unsetenv("TENANTD_JWT_SECRET");
    unlink(path);
    assert_int_equal(load(&c, err, sizeof err, 2, serve), -1);
    assert_non_null(strstr(err, "TENANTD_JWT_SECRET_FILE: cannot read"));
}

static void help_and_version(void **state)
{
    (void)state;
    struct config c;
    char err[256];
    char *a1[] = {"tenantd", "--help", NULL};
    assert_int_equal(load(&c, err, sizeof err, 2, a1), 1);
    assert_null(c.command);
    char *a2[] = {"tenantd", "--version", NULL};
    assert_int_equal(load(&c, err, sizeof err, 2, a2), 1);
    assert_string_equal(c.command, "version");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(defaults, clean_env),
        cmocka_unit_test_setup(env_then_flag_wins, clean_env),
        cmocka_unit_test_setup(bad_values_name_the_setting, clean_env),
        cmocka_unit_test_setup(unknown_flag_and_missing_value, clean_env),
        cmocka_unit_test_setup(command_arguments_pass_through, clean_env),
        cmocka_unit_test_setup(serve_needs_secret_unless_dev, clean_env),
        cmocka_unit_test_setup(database_url_required_outside_dev, clean_env),
        cmocka_unit_test_setup(settings_from_files, clean_env),
        cmocka_unit_test_setup(help_and_version, clean_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
