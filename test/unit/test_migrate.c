/* Migrations: file names, checksums, loading and checking a track. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/embedded.h"
#include "db/migrate.h"

static void parse_good_names(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int version;
        const char *name;
        bool up;
    } cases[] = {
        {"0001_orgs.up.sql", 1, "orgs", true},
        {"0001_orgs.down.sql", 1, "orgs", false},
        {"0042_add_users_2.up.sql", 42, "add_users_2", true},
        {"12345_big.down.sql", 12345, "big", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int v = -1;
        char name[64] = "";
        bool up = !cases[i].up;
        assert_int_equal(migration_parse_name(cases[i].file, &v, name, sizeof name, &up), 0);
        assert_int_equal(v, cases[i].version);
        assert_string_equal(name, cases[i].name);
        assert_int_equal(up, cases[i].up);
    }
}

static void parse_bad_names(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "0001_orgs.sql",        /* no direction */
        "0001_orgs.up.sq",      /* wrong extension */
        "0001_orgs.up.sql.bak", /* trailing junk */
        "001_orgs.up.sql",      /* fewer than 4 digits */
        "0000_zero.up.sql",     /* versions start at 1 */
        "0001orgs.up.sql",      /* no underscore */
        "0001_.up.sql",         /* empty name */
        "0001_Orgs.up.sql",     /* upper case */
        "0001_or-gs.up.sql",    /* dash */
        "0001_or gs.up.sql",    /* space */
        "abcd_orgs.up.sql",     /* not a number */
        "9999999999_x.up.sql",  /* does not fit an int */
        "0001_orgs.UP.sql",
        "README.md",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int v = 7;
        char name[64] = "keep";
        bool up = true;
        if (migration_parse_name(bad[i], &v, name, sizeof name, &up) != -1)
            fail_msg("accepted bad name '%s'", bad[i]);
        assert_int_equal(v, 7); /* outputs untouched on failure */
        assert_string_equal(name, "keep");
    }
    /* A name that does not fit the caller's buffer. */
    int v;
    char small[5];
    bool up;
    assert_int_equal(migration_parse_name("0001_toolong.up.sql", &v, small, sizeof small, &up), -1);
    assert_int_equal(migration_parse_name("0001_four.up.sql", &v, small, sizeof small, &up), 0);
    assert_string_equal(small, "four");
    assert_int_equal(migration_parse_name(NULL, &v, small, sizeof small, &up), -1);
}

static void checksum_known(void **state)
{
    (void)state;
    char out[65];
    migration_checksum("abc", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    migration_checksum("", 0, out);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* Length counts, not the NUL. */
    migration_checksum("abcdef", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#define F(track, name, data)                                                                       \
    {                                                                                              \
        track, name, data, sizeof data - 1                                                         \
    }
#define END                                                                                        \
    {                                                                                              \
        0, 0, 0, 0                                                                                 \
    }

static void load_sorts_and_pairs(void **state)
{
    (void)state;
    /* Unsorted, mixed tracks, downs before ups, one migration without a down. */
    const struct embedded_file files[] = {
        F("tenant", "0003_c.up.sql", "C"),
        F("control", "0001_x.up.sql", "X"),
        F("tenant", "0001_a.down.sql", "A-down"),
        F("tenant", "0002_b.up.sql", "B"),
        F("tenant", "0001_a.up.sql", "A"),
        F("tenant", "0003_c.down.sql", "C-down"),
        END,
    };
    struct migration *m = NULL;
    size_t n = 0;
    char err[256] = "";
    assert_int_equal(migrations_load(files, TRACK_TENANT, &m, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(m[0].version, 1);
    assert_string_equal(m[0].name, "a");
    assert_string_equal(m[0].up, "A");
    assert_string_equal(m[0].down, "A-down");
    assert_int_equal(m[1].version, 2);
    assert_string_equal(m[1].name, "b");
    assert_null(m[1].down);
    assert_int_equal(m[2].version, 3);
    assert_string_equal(m[2].name, "c");
    assert_string_equal(m[2].down, "C-down");
    char sum[65];
    migration_checksum("B", 1, sum);
    assert_string_equal(m[1].checksum, sum);
    free(m);

    assert_int_equal(migrations_load(files, TRACK_CONTROL, &m, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].name, "x");
    free(m);
}

/* The compatible mark counts only as the whole first line. */
static void load_reads_compatible_mark(void **state)
{
    (void)state;
    const struct embedded_file files[] = {
        F("tenant", "0001_a.up.sql", "-- tenantd: compatible\nCREATE TABLE a (x int);"),
        F("tenant", "0002_b.up.sql", "-- tenantd: compatible"),
        F("tenant", "0003_c.up.sql", "-- tenantd: compatibleish\n"),
        F("tenant", "0004_d.up.sql", "CREATE TABLE d (x int);\n-- tenantd: compatible\n"),
        F("tenant", "0005_e.up.sql", "-- tenantd: compatible  \r\n"),
        END,
    };
    struct migration *m = NULL;
    size_t n = 0;
    char err[256] = "";
    assert_int_equal(migrations_load(files, TRACK_TENANT, &m, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
    assert_true(m[0].compatible);
    assert_true(m[1].compatible);
    assert_false(m[2].compatible);
    assert_false(m[3].compatible);
    assert_true(m[4].compatible);
    free(m);
}

static void load_empty_track(void **state)
{
    (void)state;
    const struct embedded_file files[] = {F("control", "0001_x.up.sql", "X"), END};
    struct migration *m = (struct migration *)1;
    size_t n = 9;
    char err[256];
    assert_int_equal(migrations_load(files, TRACK_TENANT, &m, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    free(m);
}

/* Each bad list must fail with a message that contains `expect`. */
static void expect_fail(const struct embedded_file *files, const char *expect)
{
    struct migration *m = NULL;
    size_t n = 0;
    char err[512] = "";
    if (migrations_load(files, TRACK_TENANT, &m, &n, err, sizeof err) != -1)
        fail_msg("accepted a bad list (expected an error with '%s')", expect);
    if (!strstr(err, expect))
        fail_msg("error '%s' does not mention '%s'", err, expect);
    assert_null(m);
}

static void load_rejects(void **state)
{
    (void)state;
    const struct embedded_file gap[] = {F("tenant", "0001_a.up.sql", "A"),
                                        F("tenant", "0003_c.up.sql", "C"), END};
    expect_fail(gap, "0002 is missing");
    const struct embedded_file no_first[] = {F("tenant", "0002_b.up.sql", "B"), END};
    expect_fail(no_first, "0001 is missing");
    const struct embedded_file dup[] = {F("tenant", "0001_a.up.sql", "A"),
                                        F("tenant", "0001_b.up.sql", "B"), END};
    expect_fail(dup, "duplicate version 0001");
    const struct embedded_file dup_down[] = {F("tenant", "0001_a.up.sql", "A"),
                                             F("tenant", "0001_b.down.sql", "B"), END};
    expect_fail(dup_down, "duplicate version 0001");
    const struct embedded_file two_downs[] = {F("tenant", "0001_a.up.sql", "A"),
                                              F("tenant", "0001_a.down.sql", "A1"),
                                              F("tenant", "00001_a.down.sql", "A2"), END};
    expect_fail(two_downs, "duplicate version 0001");
    const struct embedded_file down_only[] = {F("tenant", "0001_a.up.sql", "A"),
                                              F("tenant", "0002_b.down.sql", "B"), END};
    expect_fail(down_only, "0002_b.down.sql: a .down.sql without its .up.sql");
    const struct embedded_file bad_name[] = {F("tenant", "0001_a.up.sql", "A"),
                                             F("tenant", "2_b.up.sql", "B"), END};
    expect_fail(bad_name, "migrations/tenant/2_b.up.sql: bad file name");
}

static void embedded_list_loads(void **state)
{
    (void)state;
    for (int t = TRACK_CONTROL; t <= TRACK_TENANT; t++) {
        struct migration *m = NULL;
        size_t n = 0;
        char err[512] = "";
        if (migrations_load(embedded_migrations, (enum migration_track)t, &m, &n, err,
                            sizeof err) != 0)
            fail_msg("embedded migrations do not load: %s", err);
        assert_true(n >= 1);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(m[i].version, (int)i + 1);
            assert_non_null(m[i].down); /* every migration we ship can be reverted */
            assert_int_equal(strlen(m[i].checksum), 64);
        }
        assert_int_equal(migrate_latest((enum migration_track)t), m[n - 1].version);
        free(m);
    }
    /* The first of each track is the one /ready and org creation rely on. */
    struct migration *m = NULL;
    size_t n = 0;
    char err[512];
    assert_int_equal(migrations_load(embedded_migrations, TRACK_CONTROL, &m, &n, err, sizeof err),
                     0);
    assert_string_equal(m[0].name, "orgs");
    assert_non_null(strstr(m[0].up, "CREATE TABLE public.orgs"));
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_good_names),    cmocka_unit_test(parse_bad_names),
        cmocka_unit_test(checksum_known),      cmocka_unit_test(load_sorts_and_pairs),
        cmocka_unit_test(load_empty_track),    cmocka_unit_test(load_rejects),
        cmocka_unit_test(embedded_list_loads), cmocka_unit_test(load_reads_compatible_mark),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
