/* Router: compilation of route tables, matching, precedence, 404 vs 405. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include <llhttp.h>

#include "core/arena.h"
#include "core/router.h"

static void h_users_list(struct request *req)
{
    (void)req;
}
static void h_users_create(struct request *req)
{
    (void)req;
}
static void h_user_get(struct request *req)
{
    (void)req;
}
static void h_user_delete(struct request *req)
{
    (void)req;
}
static void h_org_mine(struct request *req)
{
    (void)req;
}
static void h_org_slug(struct request *req)
{
    (void)req;
}
static void h_org_slug_delete(struct request *req)
{
    (void)req;
}
static void h_records(struct request *req)
{
    (void)req;
}
static void h_root(struct request *req)
{
    (void)req;
}
static void h_health(struct request *req)
{
    (void)req;
}
static void h_head_only(struct request *req)
{
    (void)req;
}

static const struct route users_routes[] = {
    {HTTP_GET, "/v1/users", AUTH_MEMBER, h_users_list, "listUsers"},
    {HTTP_POST, "/v1/users", AUTH_ADMIN, h_users_create, "createUser"},
    {HTTP_GET, "/v1/users/{id}", AUTH_MEMBER, h_user_get, "getUser"},
    {HTTP_DELETE, "/v1/users/{id}", AUTH_ADMIN, h_user_delete, "deleteUser"},
    {0},
};

static const struct route org_routes[] = {
    /* The parameter route first: the literal must still win. */
    {HTTP_GET, "/v1/orgs/{slug}", AUTH_MEMBER_OR_OPERATOR, h_org_slug, "getOrgBySlug"},
    {HTTP_DELETE, "/v1/admin/orgs/{slug}", AUTH_OPERATOR, h_org_slug_delete, "deleteOrg"},
    {HTTP_GET, "/v1/orgs/mine", AUTH_MEMBER, h_org_mine, "getMyOrg"},
    {HTTP_GET, "/v1/collections/{collection}/records/{id}", AUTH_MEMBER, h_records, "getRecord"},
    {HTTP_GET, "/", AUTH_NONE, h_root, "getRoot"},
    {HTTP_GET, "/health", AUTH_NONE, h_health, "getHealth"},
    {HTTP_HEAD, "/health", AUTH_NONE, h_head_only, "headHealth"},
    {0},
};

static const struct module users_module = {.name = "users", .routes = users_routes};
static const struct module org_module = {.name = "org", .routes = org_routes};
static const struct module empty_module = {.name = "empty", .routes = NULL};

struct fixture {
    struct router *r;
    struct arena *a;
    struct request req;
};

static int setup(void **state)
{
    static struct fixture f;
    const struct module *mods[] = {&users_module, &empty_module, &org_module};
    f.r = router_new(mods, 3);
    assert_non_null(f.r);
    f.a = arena_new();
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    router_free(f->r);
    arena_free(f->a);
    return 0;
}

static enum router_result match(struct fixture *f, int method, const char *path, const char **allow)
{
    memset(&f->req, 0, sizeof f->req);
    f->req.arena = f->a;
    f->req.method = method;
    f->req.path = path;
    return router_match(f->r, &f->req, allow);
}

static void test_literal_routes(void **state)
{
    struct fixture *f = *state;
    const char *allow = "x";
    assert_int_equal(match(f, HTTP_GET, "/v1/users", &allow), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_users_list);
    assert_string_equal(f->req.route_pattern, "/v1/users");
    assert_int_equal(f->req.nparams, 0);
    assert_null(allow);
    assert_int_equal(match(f, HTTP_POST, "/v1/users", &allow), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_users_create);
    assert_int_equal(match(f, HTTP_GET, "/", &allow), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_root);
    /* Literals compare exactly: no case folding, no decoding. */
    assert_int_equal(match(f, HTTP_GET, "/v1/Users", &allow), ROUTER_NOT_FOUND);
    assert_int_equal(match(f, HTTP_GET, "/v1/%75sers", &allow), ROUTER_NOT_FOUND);
    assert_string_equal(f->req.route_pattern, "unmatched");
    assert_null(f->req.route);
}

static void test_params_decoded(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(match(f, HTTP_GET, "/v1/users/abc-123", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_user_get);
    assert_string_equal(f->req.route_pattern, "/v1/users/{id}");
    assert_int_equal(f->req.nparams, 1);
    assert_string_equal(f->req.params[0].name, "id");
    assert_string_equal(f->req.params[0].value, "abc-123");

    assert_int_equal(match(f, HTTP_GET, "/v1/collections/my%20notes/records/r%2B1%c3%a9", NULL),
                     ROUTER_FOUND);
    assert_int_equal(f->req.nparams, 2);
    assert_string_equal(f->req.params[0].name, "collection");
    assert_string_equal(f->req.params[0].value, "my notes");
    assert_string_equal(f->req.params[1].name, "id");
    assert_string_equal(f->req.params[1].value, "r+1\xc3\xa9");
    /* '+' in a path is a plus, not a space. */
    assert_int_equal(match(f, HTTP_GET, "/v1/users/a+b", NULL), ROUTER_FOUND);
    assert_string_equal(f->req.params[0].value, "a+b");
}

static void test_literal_beats_param(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(match(f, HTTP_GET, "/v1/orgs/mine", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_org_mine);
    assert_int_equal(f->req.nparams, 0);
    assert_int_equal(match(f, HTTP_GET, "/v1/orgs/acme", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_org_slug);
    assert_string_equal(f->req.params[0].value, "acme");
    /* An escaped "mine" is a parameter value, not the literal. */
    assert_int_equal(match(f, HTTP_GET, "/v1/orgs/%6Dine", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_org_slug);
    assert_string_equal(f->req.params[0].value, "mine");
}

static void test_not_found_vs_method_not_allowed(void **state)
{
    struct fixture *f = *state;
    const char *allow = NULL;
    assert_int_equal(match(f, HTTP_GET, "/v1/nothing", &allow), ROUTER_NOT_FOUND);
    assert_null(allow);
    assert_int_equal(match(f, HTTP_PUT, "/v1/users", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, HEAD, POST");
    assert_null(f->req.route);
    assert_string_equal(f->req.route_pattern, "unmatched");
    assert_int_equal(match(f, HTTP_PATCH, "/v1/users/42", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "DELETE, GET, HEAD");
    /* Allow is the union over every pattern that matches the path. */
    assert_int_equal(match(f, HTTP_POST, "/v1/orgs/mine", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, HEAD");
    assert_int_equal(match(f, HTTP_GET, "/v1/admin/orgs/acme", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "DELETE");
    /* allow may be NULL. */
    assert_int_equal(match(f, HTTP_PUT, "/v1/users", NULL), ROUTER_METHOD_NOT_ALLOWED);
}

static void test_head_matches_get(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(match(f, HTTP_HEAD, "/v1/users/7", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_user_get);
    assert_string_equal(f->req.params[0].value, "7");
    /* An explicit HEAD route wins over HEAD-as-GET. */
    assert_int_equal(match(f, HTTP_HEAD, "/health", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_head_only);
    assert_int_equal(match(f, HTTP_GET, "/health", NULL), ROUTER_FOUND);
    assert_ptr_equal(f->req.route->handler, h_health);
    /* GET does not match a HEAD-only route. */
    const char *allow;
    assert_int_equal(match(f, HTTP_HEAD, "/v1/admin/orgs/x", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "DELETE");
}

static void test_bad_paths(void **state)
{
    struct fixture *f = *state;
    static const char *const bad[] = {
        "",
        "v1/users",
        "*",
        "http://example.com/v1/users",
        "/v1/users/%",
        "/v1/users/%4",
        "/v1/users/%G1",
        "/v1/users/%zz",
        "/v1/users/ab%0",
        "/v1/users/%00",   /* decoded NUL */
        "/v1/users/a%2Fb", /* decoded '/' */
        "/v1/users/a%2fb",
        "/v1/users/..",
        "/v1/users/.",
        "/v1/users/%2e%2e",
        "/v1/users/%2E.",
        "/v1/users/.%2e",
        "/v1/users/%2e",
        "/v1/../v1/users",
        "/v1/./users",
        "/v1//users",
        "//v1/users",
        "/v1/users/", /* trailing slash: no match, by policy */
        "/v1/users/a b",
        "/v1/users/a\"b",
        "/v1/users/a#b",
        "/v1/users/a\xc3\xa9", /* raw non-ASCII must be percent-encoded */
        "/v1/users/a\x01",
        "/v1/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *allow = NULL;
        enum router_result res = match(f, HTTP_GET, bad[i], &allow);
        if (res != ROUTER_NOT_FOUND)
            fail_msg("path \"%s\": %d, want ROUTER_NOT_FOUND", bad[i], res);
        assert_null(allow);
        assert_null(f->req.route);
    }
    /* NULL path. */
    memset(&f->req, 0, sizeof f->req);
    f->req.arena = f->a;
    f->req.method = HTTP_GET;
    assert_int_equal(router_match(f->r, &f->req, NULL), ROUTER_NOT_FOUND);
    /* Dots inside a segment are fine. */
    assert_int_equal(match(f, HTTP_GET, "/v1/users/a..b", NULL), ROUTER_FOUND);
    assert_string_equal(f->req.params[0].value, "a..b");
    assert_int_equal(match(f, HTTP_GET, "/v1/users/...", NULL), ROUTER_FOUND);
}

static void test_trailing_slash_policy(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(match(f, HTTP_GET, "/v1/users/", NULL), ROUTER_NOT_FOUND);
    assert_int_equal(match(f, HTTP_GET, "/health/", NULL), ROUTER_NOT_FOUND);
    assert_int_equal(match(f, HTTP_GET, "/health", NULL), ROUTER_FOUND);
}

static void h_any(struct request *req)
{
    (void)req;
}

static void expect_rejected(const struct route *table)
{
    const struct module m = {.name = "bad", .routes = table};
    const struct module *mods[] = {&m};
    struct router *r = router_new(mods, 1);
    if (r) {
        router_free(r);
        fail_msg("route table with %s %s was accepted", router_method_name(table[0].method),
                 table[0].pattern);
    }
}

static void test_duplicates_rejected(void **state)
{
    (void)state;
    const struct route dup[] = {
        {HTTP_GET, "/v1/users/{id}", AUTH_NONE, h_any, "a"},
        {HTTP_GET, "/v1/users/{user_id}", AUTH_NONE, h_any, "b"},
        {0},
    };
    expect_rejected(dup);
    const struct route dup2[] = {
        {HTTP_DELETE, "/v1/x", AUTH_NONE, h_any, "a"},
        {HTTP_DELETE, "/v1/x", AUTH_NONE, h_any, "b"},
        {0},
    };
    expect_rejected(dup2);
    /* The same pattern in two modules collides too. */
    const struct route one[] = {{HTTP_GET, "/x", AUTH_NONE, h_any, "a"}, {0}};
    const struct module m1 = {.name = "m1", .routes = one}, m2 = {.name = "m2", .routes = one};
    const struct module *mods[] = {&m1, &m2};
    assert_null(router_new(mods, 2));
    /* Same path, different methods; or a literal next to a parameter: fine. */
    const struct route ok[] = {
        {HTTP_GET, "/v1/x/{id}", AUTH_NONE, h_any, "a"},
        {HTTP_PUT, "/v1/x/{id}", AUTH_NONE, h_any, "b"},
        {HTTP_GET, "/v1/x/new", AUTH_NONE, h_any, "c"},
        {HTTP_GET, "/v1/{a}/new", AUTH_NONE, h_any, "d"},
        {0},
    };
    const struct module mok = {.name = "ok", .routes = ok};
    const struct module *mods_ok[] = {&mok};
    struct router *r = router_new(mods_ok, 1);
    assert_non_null(r);
    /* /v1/x/new: both "/v1/x/new" and "/v1/{a}/new" match; the leftmost
     * literal decides, and "/v1/x/{id}" loses to both at position 2. */
    struct arena *a = arena_new();
    struct request req = {.arena = a, .method = HTTP_GET, .path = "/v1/x/new"};
    assert_int_equal(router_match(r, &req, NULL), ROUTER_FOUND);
    assert_string_equal(req.route->operation_id, "c");
    req = (struct request){.arena = a, .method = HTTP_GET, .path = "/v1/y/new"};
    assert_int_equal(router_match(r, &req, NULL), ROUTER_FOUND);
    assert_string_equal(req.route->operation_id, "d");
    assert_string_equal(req.params[0].value, "y");
    arena_free(a);
    router_free(r);
}

static void test_malformed_patterns_rejected(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "v1/x",
        "/v1/",
        "/v1//x",
        "/v1/{id",
        "/v1/id}",
        "/v1/{}",
        "/v1/{1a}",
        "/v1/{a-b}",
        "/v1/x{id}",
        "/v1/{id}x",
        "/v1/../x",
        "/v1/./x",
        "/v1/a b",
        "/v1/%41",
        "/v1/{a}/{a}",
        "/v1/x?y",
        "/v1/x#y",
        "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const struct route t[] = {{HTTP_GET, bad[i], AUTH_NONE, h_any, "x"}, {0}};
        expect_rejected(t);
    }
    const struct route no_handler[] = {{HTTP_GET, "/x", AUTH_NONE, NULL, "x"}, {0}};
    expect_rejected(no_handler);
    const struct route bad_method[] = {{99, "/x", AUTH_NONE, h_any, "x"}, {0}};
    expect_rejected(bad_method);
}

struct each_state {
    const char *seen[32];
    int n;
};

static void collect(const struct route *rt, void *ud)
{
    struct each_state *s = ud;
    s->seen[s->n++] = rt->operation_id;
}

static void test_each_in_table_order(void **state)
{
    struct fixture *f = *state;
    struct each_state s = {0};
    router_each(f->r, collect, &s);
    static const char *const want[] = {"listUsers",    "createUser", "getUser",   "deleteUser",
                                       "getOrgBySlug", "deleteOrg",  "getMyOrg",  "getRecord",
                                       "getRoot",      "getHealth",  "headHealth"};
    assert_int_equal(s.n, sizeof want / sizeof want[0]);
    for (int i = 0; i < s.n; i++)
        assert_string_equal(s.seen[i], want[i]);
}

static void test_method_names(void **state)
{
    (void)state;
    assert_string_equal(router_method_name(HTTP_GET), "GET");
    assert_string_equal(router_method_name(HTTP_DELETE), "DELETE");
    assert_string_equal(router_method_name(HTTP_PATCH), "PATCH");
    assert_string_equal(router_method_name(HTTP_HEAD), "HEAD");
    assert_string_equal(router_method_name(HTTP_OPTIONS), "OPTIONS");
    assert_string_equal(router_method_name(-1), "UNKNOWN");
    assert_string_equal(router_method_name(1000), "UNKNOWN");
}

static void test_null_router(void **state)
{
    (void)state;
    struct request req = {.method = HTTP_GET, .path = "/"};
    assert_int_equal(router_match(NULL, &req, NULL), ROUTER_NOT_FOUND);
    router_each(NULL, collect, NULL);
    router_free(NULL);
    /* No modules at all: a router that matches nothing. */
    struct router *r = router_new(NULL, 0);
    assert_non_null(r);
    assert_int_equal(router_match(r, &req, NULL), ROUTER_NOT_FOUND);
    router_free(r);
}

/* The literal-only fast path (a hash on the whole path) gives way to a
 * parameter route when only that one takes the method, and to the full
 * match for 405. */
static void test_literal_path_other_method(void **state)
{
    (void)state;
    static const struct route things[] = {
        {HTTP_GET, "/v1/things/mine", AUTH_MEMBER, h_org_mine, "getMine"},
        {HTTP_PATCH, "/v1/things/{id}", AUTH_MEMBER, h_org_slug, "patchThing"},
        {HTTP_GET, "/v1/things", AUTH_MEMBER, h_users_list, "listThings"},
        {0},
    };
    static const struct module m = {.name = "things", .routes = things};
    const struct module *mods[] = {&m};
    struct fixture f = {.r = router_new(mods, 1), .a = arena_new()};
    assert_non_null(f.r);
    const char *allow = NULL;
    assert_int_equal(match(&f, HTTP_PATCH, "/v1/things/mine", NULL), ROUTER_FOUND);
    assert_ptr_equal(f.req.route->handler, h_org_slug);
    assert_string_equal(f.req.params[0].value, "mine");
    assert_int_equal(match(&f, HTTP_HEAD, "/v1/things/mine", NULL), ROUTER_FOUND);
    assert_ptr_equal(f.req.route->handler, h_org_mine);
    assert_int_equal(f.req.nparams, 0);
    assert_string_equal(f.req.route_pattern, "/v1/things/mine");
    assert_int_equal(match(&f, HTTP_POST, "/v1/things/mine", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, HEAD, PATCH");
    assert_int_equal(match(&f, HTTP_POST, "/v1/things", &allow), ROUTER_METHOD_NOT_ALLOWED);
    assert_string_equal(allow, "GET, HEAD");
    assert_int_equal(match(&f, HTTP_GET, "/v1/things/", NULL), ROUTER_NOT_FOUND);
    assert_int_equal(match(&f, HTTP_GET, "/v1/thing", NULL), ROUTER_NOT_FOUND);
    router_free(f.r);
    arena_free(f.a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_literal_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_params_decoded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_literal_beats_param, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_vs_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_matches_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trailing_slash_policy, setup, teardown),
        cmocka_unit_test(test_duplicates_rejected),
        cmocka_unit_test(test_malformed_patterns_rejected),
        cmocka_unit_test_setup_teardown(test_each_in_table_order, setup, teardown),
        cmocka_unit_test(test_method_names),
        cmocka_unit_test(test_null_router),
        cmocka_unit_test(test_literal_path_other_method),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
