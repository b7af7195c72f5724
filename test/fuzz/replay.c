/*
 * A driver for fuzz_http.c that needs no libFuzzer, so ctest runs it with
 * gcc in both builds (ASan+UBSan in the asan one): every input of the corpus
 * as it is, then FUZZ_RUNS (default 20000) inputs made from them by seeded
 * random mutations (bit flips, byte edits, cut and copied ranges, runs of
 * one byte, boundary numbers, tokens of the dictionary, splices of two
 * inputs). Not coverage-guided: it keeps the corpus passing and shakes the
 * parser a little on every run (each input also checked for desync: as
 * many answers as the input holds requests, see fuzz_http.c); real
 * fuzzing stays with clang (see
 * fuzz_http.c).
 *
 *   fuzz_http_replay CORPUS_DIR DICT
 *   FUZZ_SEED=7 FUZZ_RUNS=100000 fuzz_http_replay ...   another walk
 *   FUZZ_SAVE=/tmp/input fuzz_http_replay ...           each input written
 *                                                       there before it runs
 * The seed is fixed by default so that a failure in CI is reproducible; the
 * harness aborts on a finding; the last "input N" line says about where.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hex.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX_LEN 4096
#define MAX_ITEMS 256

struct blob {
    uint8_t *data;
    size_t len;
};

static struct blob seeds[MAX_ITEMS], tokens[MAX_ITEMS];
static size_t nseeds, ntokens;
static uint64_t rng;

static uint64_t next(void)
{
    /* xorshift64*: enough for picking mutations */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static size_t below(size_t n)
{
    return n ? (size_t)(next() % n) : 0;
}

static void add(struct blob *list, size_t *n, const uint8_t *data, size_t len)
{
    if (*n == MAX_ITEMS || len == 0 || len > INPUT_MAX_LEN)
        return;
    uint8_t *copy = malloc(len);
    if (!copy)
        abort();
    memcpy(copy, data, len);
    list[(*n)++] = (struct blob){copy, len};
}

static void load_corpus(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        exit(2);
    }
    const struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        uint8_t buf[INPUT_MAX_LEN];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        add(seeds, &nseeds, buf, len);
    }
    closedir(d);
}

/* libFuzzer's dictionary format: one "token" per line, \xNN \\ \" escapes. */
static void load_dict(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        const char *open = strchr(line, '"'), *close = strrchr(line, '"');
        if (line[0] == '#' || !open || close <= open)
            continue;
        uint8_t tok[512];
        size_t n = 0;
        for (const char *p = open + 1; p < close && n < sizeof tok; p++) {
            if (*p == '\\' && p + 1 < close) {
                p++;
                if (*p == 'x' && p + 2 < close && hex_digit(p[1]) >= 0 && hex_digit(p[2]) >= 0) {
                    tok[n++] = (uint8_t)(hex_digit(p[1]) * 16 + hex_digit(p[2]));
                    p += 2;
                    continue;
                }
            }
            tok[n++] = (uint8_t)*p;
        }
        add(tokens, &ntokens, tok, n);
    }
    fclose(f);
}

/* Inserts len bytes at pos, as far as room allows. */
static void insert(uint8_t *buf, size_t *len, size_t pos, const uint8_t *src, size_t n)
{
    if (n > INPUT_MAX_LEN - *len)
        n = INPUT_MAX_LEN - *len;
    memmove(buf + pos + n, buf + pos, *len - pos);
    memcpy(buf + pos, src, n);
    *len += n;
}

static void mutate(uint8_t *buf, size_t *len)
{
    int steps = 1 + (int)below(4);
    for (int s = 0; s < steps; s++) {
        size_t pos = below(*len + 1);
        switch (below(10)) {
        case 0: /* flip a bit */
            if (*len)
                buf[below(*len)] ^= (uint8_t)(1u << below(8));
            break;
        case 1: /* any byte */
            if (*len)
                buf[below(*len)] = (uint8_t)next();
            break;
        case 2: { /* a byte more */
            uint8_t b = (uint8_t)next();
            insert(buf, len, pos, &b, 1);
            break;
        }
        case 3: { /* cut a range */
            size_t n = below(*len - pos + 1);
            memmove(buf + pos, buf + pos + n, *len - pos - n);
            *len -= n;
            break;
        }
        case 4: { /* copy a range elsewhere */
            if (!*len)
                break;
            size_t from = below(*len), n = 1 + below(*len - from);
            uint8_t tmp[INPUT_MAX_LEN];
            memcpy(tmp, buf + from, n);
            insert(buf, len, pos, tmp, n);
            break;
        }
        case 5:
        case 6: { /* a dictionary token */
            if (!ntokens)
                break;
            const struct blob *t = &tokens[below(ntokens)];
            insert(buf, len, pos, t->data, t->len);
            break;
        }
        case 7: { /* a run of one byte: lengths and limits */
            static const uint8_t fill[] = {'a', ' ', '\t', '0', 'f', ';', ',', '\r', '\n', 0};
            uint8_t run[2048];
            size_t n = 1 + below(sizeof run);
            memset(run, *len && below(2) ? buf[below(*len)] : fill[below(sizeof fill)], n);
            insert(buf, len, pos, run, n);
            break;
        }
        case 8: { /* a number at a boundary */
            static const char *const numbers[] = {"0",
                                                  "-1",
                                                  "1",
                                                  "65535",
                                                  "65536",
                                                  "2147483647",
                                                  "2147483648",
                                                  "4294967296",
                                                  "9223372036854775807",
                                                  "18446744073709551616",
                                                  "ffffffffffffffff",
                                                  "+1",
                                                  "0x10",
                                                  "1e3",
                                                  "00000000000000000001"};
            const char *num = numbers[below(sizeof numbers / sizeof *numbers)];
            insert(buf, len, pos, (const uint8_t *)num, strlen(num));
            break;
        }
        default: { /* this input's head, another's tail */
            const struct blob *o = &seeds[below(nseeds)];
            size_t from = below(o->len);
            *len = pos;
            insert(buf, len, pos, o->data + from, o->len - from);
            break;
        }
        }
    }
}

static void run(const uint8_t *data, size_t len, const char *save)
{
    if (save) {
        FILE *f = fopen(save, "wb");
        if (f) {
            fwrite(data, 1, len, f);
            fclose(f);
        }
    }
    LLVMFuzzerTestOneInput(data, len);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s CORPUS_DIR DICT\n", argv[0]);
        return 2;
    }
    const char *env_seed = getenv("FUZZ_SEED"), *env_runs = getenv("FUZZ_RUNS");
    const char *save = getenv("FUZZ_SAVE");
    uint64_t seed = env_seed ? strtoull(env_seed, NULL, 10) : 20261125;
    long runs = env_runs ? strtol(env_runs, NULL, 10) : 20000;
    rng = seed ? seed : 1;
    load_corpus(argv[1]);
    load_dict(argv[2]);
    if (!nseeds) {
        fprintf(stderr, "no inputs in %s\n", argv[1]);
        return 2;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    printf("seed %llu: %zu corpus inputs, %zu tokens, %ld mutated inputs\n",
           (unsigned long long)seed, nseeds, ntokens, runs);
    fflush(stdout);
    for (size_t i = 0; i < nseeds; i++)
        run(seeds[i].data, seeds[i].len, save);
    uint8_t buf[INPUT_MAX_LEN];
    for (long i = 0; i < runs; i++) {
        const struct blob *b = &seeds[below(nseeds)];
        size_t len = b->len;
        memcpy(buf, b->data, len);
        mutate(buf, &len);
        /* A finding aborts the process: this line says about where,
         * FUZZ_SAVE keeps the very input. */
        if (i % 1000 == 0) {
            printf("input %ld\n", i);
            fflush(stdout);
        }
        run(buf, len, save);
    }
    printf("all %zu + %ld inputs answered\n", nseeds, runs);
    for (size_t i = 0; i < nseeds; i++)
        free(seeds[i].data);
    for (size_t i = 0; i < ntokens; i++)
        free(tokens[i].data);
    return 0;
}
