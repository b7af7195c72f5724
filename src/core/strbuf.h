#ifndef TENANTD_CORE_STRBUF_H
#define TENANTD_CORE_STRBUF_H
#include <stddef.h>

/*
 * A growing malloc'd string, always NUL-terminated once written to. Start
 * from {0}; the caller owns and frees s. Out of memory aborts (as h2o does):
 * the users build bounded text (a page of rows, the /docs page, SQL arrays
 * at start-up), so running out is a broken machine, not a client's doing.
 */
struct strbuf {
    char *s;
    size_t len, cap;
};

/* Appends n bytes of s. */
void sb_put(struct strbuf *b, const char *s, size_t n);

/* Appends the C string s. */
void sb_puts(struct strbuf *b, const char *s);

/* Appends printf-formatted text. */
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
