/* Five-field cron expressions (cron.h). */
#include "job/cron.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int lo, hi;
} fields[5] = {{"minute", 0, 59},
               {"hour", 0, 23},
               {"day of month", 1, 31},
               {"month", 1, 12},
               {"day of week", 0, 7}};

static bool *field_set(struct cron *c, int i)
{
    switch (i) {
    case 0:
        return c->minute;
    case 1:
        return c->hour;
    case 2:
        return c->dom;
    case 3:
        return c->month;
    default:
        return c->dow;
    }
}

/* A decimal number of at most 3 digits at *p; -1 when none. */
static int number(const char **p)
{
    if (!isdigit((unsigned char)**p))
        return -1;
    int v = 0, n = 0;
    while (isdigit((unsigned char)**p) && n < 3) {
        v = v * 10 + (**p - '0');
        (*p)++;
        n++;
    }
    return isdigit((unsigned char)**p) ? -1 : v;
}

static int fail(char *err, size_t errlen, const char *field, const char *why)
{
    snprintf(err, errlen, "%s: %s", field, why);
    return -1;
}

/* One field's text [s, e) into set i. */
static int parse_field(struct cron *c, int i, const char *s, const char *e, char *err,
                       size_t errlen)
{
    const char *name = fields[i].name;
    int lo = fields[i].lo, hi = fields[i].hi;
    bool *set = field_set(c, i);
    bool any = e - s == 1 && *s == '*';
    if (i == 2)
        c->dom_any = any;
    if (i == 4)
        c->dow_any = any;
    const char *p = s;
    while (p < e) {
        int a, b, step = 1;
        if (*p == '*') {
            p++;
            a = lo;
            b = hi;
        } else {
            if ((a = number(&p)) < 0)
                return fail(err, errlen, name, "expected a number, * or a range");
            b = a;
            if (p < e && *p == '-') {
                p++;
                if ((b = number(&p)) < 0)
                    return fail(err, errlen, name, "expected the end of the range");
            }
        }
        if (p < e && *p == '/') {
            p++;
            if ((step = number(&p)) < 1)
                return fail(err, errlen, name, "a step must be a number from 1");
        }
        if (a < lo || b > hi || a > b) {
            char why[64];
            snprintf(why, sizeof why, "values must be from %d to %d (and a range ascending)", lo,
                     hi);
            return fail(err, errlen, name, why);
        }
        for (int v = a; v <= b; v += step)
            set[i == 4 ? v % 7 : v] = true;
        if (p < e && *p != ',')
            return fail(err, errlen, name, "unexpected character");
        if (p < e)
            p++;
        if (p == e && e[-1] == ',')
            return fail(err, errlen, name, "a list must not end with a comma");
    }
    return 0;
}

int cron_parse(const char *expr, struct cron *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!expr || strlen(expr) > 200)
        return fail(err, errlen, "cron", "must be five fields of at most 200 bytes");
    const char *p = expr;
    for (int i = 0; i < 5; i++) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *s = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (p == s)
            return fail(err, errlen, "cron",
                        "must have five fields (minute hour day month weekday)");
        if (parse_field(out, i, s, p, err, errlen) != 0)
            return -1;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p)
        return fail(err, errlen, "cron", "must have five fields (minute hour day month weekday)");
    return 0;
}

void cron_field_array(const struct cron *c, int field, char *buf, size_t len)
{
    static const int n[5] = {60, 24, 32, 13, 7};
    const bool *set = field_set((struct cron *)c, field);
    size_t used = (size_t)snprintf(buf, len, "{");
    bool first = true;
    for (int v = 0; v < n[field] && used < len; v++) {
        if (!set[v])
            continue;
        used += (size_t)snprintf(buf + used, len - used, "%s%d", first ? "" : ",", v);
        first = false;
    }
    if (used < len)
        snprintf(buf + used, len - used, "}");
}
