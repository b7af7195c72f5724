#ifndef TENANTD_CORE_PAGE_H
#define TENANTD_CORE_PAGE_H
#include <stdbool.h>
#include <jansson.h>

#include "core/http.h"

/*
 * Paged lists, one rule for all of them: {"data": [...], "next_cursor":
 * "<opaque>" | null}, ?limit= and ?cursor=.
 *
 * A limit is the number itself in ASCII digits: no sign, no space, no
 * leading zero, no fraction, 1..max (each list its own max and default).
 * A cursor is the base64url (core/b64url.h) of the position of the last
 * row handed out, as the list's statement answers it, in one of two key
 * shapes. A cursor is checked for its shape here, so nothing else reaches
 * SQL; a shape-right but impossible date is the database's to refuse
 * (page_respond_bad_cursor).
 */
enum page_key {
    PAGE_KEY_SEQ,     /* a bigint sequence number, decimal: "1234" */
    PAGE_KEY_TIME_ID, /* "2026-01-02T03:04:05.123456Z|<uuid>" (UTC, to the microsecond) */
};

struct page {
    int limit;              /* 1..max */
    const char *limit_text; /* limit in decimal, a statement parameter */
    const char *seq;        /* PAGE_KEY_SEQ: the cursor's seq; NULL on the first page */
    const char *time, *id;  /* PAGE_KEY_TIME_ID: the cursor's position; NULL on the first page */
};

/* s (NULL when absent) as a limit: def when NULL, the value when it follows
 * the rule above, else -1. */
int page_limit_parse(const char *s, int def, int max);

/*
 * Reads ?limit= (default def, at most max) and ?cursor= (of shape kind)
 * into *p, strings in the request arena. Each bad one adds a 422 entry to
 * *errors ("limit" or "cursor"); returns false when one did, so that the
 * caller can add its own parameters' errors and answer once.
 */
bool page_read(struct request *req, int def, int max, enum page_key kind, struct page *p,
               json_t **errors);

/* The cursor naming key (a position of shape kind) in arena a, or NULL
 * when key is not of that shape (a broken statement). */
char *page_cursor(struct arena *a, enum page_key kind, const char *key);

/*
 * Answers 200 {"data":<data>,"next_cursor":<cursor of next, or null>}.
 * data is a JSON array's text; next is NULL on the last page. Answers 500
 * when data is NULL or next has not the shape (a broken statement).
 */
void page_respond(struct request *req, const char *data, enum page_key kind, const char *next);

/* Answers the 422 of a cursor this server did not hand out: for a cursor
 * of the right shape that the database found impossible (month 13). */
void page_respond_bad_cursor(struct request *req);

#endif
