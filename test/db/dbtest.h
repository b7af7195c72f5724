#ifndef TENANTD_TEST_DB_DBTEST_H
#define TENANTD_TEST_DB_DBTEST_H
/* What every database test (test/db/test_*.c) starts with. */
#include <stdio.h>
#include <stdlib.h>

#ifndef TENANTD_SOURCE_DIR
#define TENANTD_SOURCE_DIR "."
#endif

/* Fails the test with a message unless cond holds. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
