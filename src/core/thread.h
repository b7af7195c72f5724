#ifndef TENANTD_CORE_THREAD_H
#define TENANTD_CORE_THREAD_H

/* Names the calling thread (printf-style, cut to the kernel's 15 bytes), so
 * `top -H`, `perf sched` and gdb tell loops, hashers and listeners apart. */
void thread_name(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
