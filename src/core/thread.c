#define _GNU_SOURCE /* pthread_setname_np */
#include "core/thread.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

void thread_name(const char *fmt, ...)
{
    char name[16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    pthread_setname_np(pthread_self(), name); /* best effort: only a label */
}
