/* Hashes per second of argon2id(m, t, p) with one thread per core for a
 * given number of seconds: the ceiling for password checks on this machine. */
#include <argon2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static unsigned m, t, p;
static double until;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *work(void *arg)
{
    long *count = arg;
    unsigned char salt[16] = "0123456789abcdef", out[32];
    while (now() < until) {
        if (argon2id_hash_raw(t, m, p, "correct horse battery", 21, salt, sizeof salt, out,
                              sizeof out) != ARGON2_OK)
            abort();
        (*count)++;
        salt[0]++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    m = (unsigned)atoi(argv[1]), t = (unsigned)atoi(argv[2]), p = (unsigned)atoi(argv[3]);
    int threads = atoi(argv[4]);
    double secs = atof(argv[5]);
    pthread_t th[256];
    long counts[256] = {0};
    if (threads < 1 || threads > 256)
        return 2;
    double start = now();
    until = start + secs;
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, work, &counts[i]);
    long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        total += counts[i];
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    /* hashes per second, CPU milliseconds per hash */
    printf("%.2f %.2f\n", total / (now() - start), total ? cpu * 1000 / total : 0);
    return 0;
}
