#ifndef TENANTD_CORE_DIGITS_H
#define TENANTD_CORE_DIGITS_H
#include <stddef.h>

/* s as a decimal number of 1..max_digits ASCII digits only (no sign, no
 * space; max_digits <= 9 so it fits an int), or -1. Callers check the range. */
static inline int parse_digits(const char *s, size_t max_digits)
{
    int v = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (n >= max_digits || s[n] < '0' || s[n] > '9')
            return -1;
        v = v * 10 + (s[n] - '0');
    }
    return n ? v : -1;
}

#endif
