#include "core/list.h"

#include <string.h>

bool list_each(const char *list, bool (*fn)(const char *s, size_t n, void *ud), void *ud)
{
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        const char *a = p, *b = p + n;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b > a && fn(a, (size_t)(b - a), ud))
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}
