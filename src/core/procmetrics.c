#include "core/procmetrics.h"

#define _GNU_SOURCE /* asprintf */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The whole of a small /proc file into buf; its length, or -1. */
static long read_small(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t got = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[got] = '\0';
    return (long)got;
}

/* The boot time (btime of /proc/stat), seconds since the epoch; -1. */
static double boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    char line[256];
    double bt = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "btime ", 6) == 0) {
            bt = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return bt;
}

bool procmetrics_read(struct procmetrics *out)
{
    memset(out, 0, sizeof *out);
    char stat[1024];
    if (read_small("/proc/self/stat", stat, sizeof stat) <= 0)
        return false;
    /* "pid (comm) state ...": comm may hold spaces and parentheses, so the
     * fields are counted from the last ')'; field 3 is the state. */
    char *p = strrchr(stat, ')');
    if (!p)
        return false;
    p++;
    unsigned long long f[64] = {0};
    int field = 2;
    char *save = NULL; /* scrapes may run on several loops at once: strtok_r */
    for (char *tok = strtok_r(p, " ", &save); tok && field < 45; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field >= 4)
            f[field] = strtoull(tok, NULL, 10);
    }
    if (field < 24)
        return false;
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    if (ticks <= 0 || page <= 0)
        return false;
    out->cpu_seconds = (double)(f[14] + f[15]) / (double)ticks; /* utime + stime */
    out->virtual_bytes = (double)f[23];                           /* vsize, bytes */
    out->resident_bytes = (double)f[24] * (double)page;           /* rss, pages */
    double bt = boot_time();
    out->start_time_s = bt >= 0 ? bt + (double)f[22] / (double)ticks : 0; /* starttime */
    out->open_fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                out->open_fds++;
        closedir(d);
        out->open_fds--; /* the directory stream's own */
    }
    struct rlimit rl;
    out->max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                       ? (double)rl.rlim_cur
                       : -1;
    return true;
}

char *procmetrics_text(void)
{
    struct procmetrics m;
    if (!procmetrics_read(&m))
        return strdup("");
    char maxfds[32];
    if (m.max_fds < 0)
        snprintf(maxfds, sizeof maxfds, "+Inf");
    else
        snprintf(maxfds, sizeof maxfds, "%.0f", m.max_fds);
    char *out = NULL;
    int n = asprintf(
        &out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total %.2f\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes %.0f\n"
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        "process_virtual_memory_bytes %.0f\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds %ld\n"
        "# HELP process_max_fds Maximum number of open file descriptors.\n"
        "# TYPE process_max_fds gauge\n"
        "process_max_fds %s\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in "
        "seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds %.2f\n",
        m.cpu_seconds, m.resident_bytes, m.virtual_bytes, m.open_fds, maxfds,
        m.start_time_s);
    return n < 0 ? NULL : out;
}
