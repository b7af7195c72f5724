/*
 * The migrations compiled into the binary: file names, checksums, the
 * sorted and checked list of each track, loaded once per process.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/embedded.h"
#include "db/migrate_internal.h"

#define NAME_MAX_LEN 128

/* ---- names, checksums, loading ---------------------------------------- */

int migration_parse_name(const char *file, int *version, char *name, size_t namelen, bool *is_up)
{
    if (!file)
        return -1;
    const char *p = file;
    long v = 0;
    int digits = 0;
    while (isdigit((unsigned char)*p)) {
        if (++digits > 9) /* keeps v inside int */
            return -1;
        v = v * 10 + (*p++ - '0');
    }
    if (digits < 4 || v < 1 || *p != '_')
        return -1;
    const char *start = ++p;
    while (islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')
        p++;
    size_t len = (size_t)(p - start);
    bool up;
    if (!strcmp(p, ".up.sql"))
        up = true;
    else if (!strcmp(p, ".down.sql"))
        up = false;
    else
        return -1;
    if (len == 0 || len >= namelen)
        return -1;
    memcpy(name, start, len);
    name[len] = '\0';
    *version = (int)v;
    *is_up = up;
    return 0;
}

void migration_checksum(const char *text, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hex[] = "0123456789abcdef";
    if (!EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        abort(); /* SHA-256 cannot fail short of a broken OpenSSL */
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

struct loaded_file {
    int version;
    bool up;
    char name[NAME_MAX_LEN];
    const struct embedded_file *f;
};

static int cmp_loaded(const void *a, const void *b)
{
    const struct loaded_file *x = a, *y = b;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    if (x->up != y->up)
        return x->up ? -1 : 1; /* the up file first in each version */
    return strcmp(x->f->name, y->f->name);
}

int migrations_load(const struct embedded_file *files, enum migration_track track,
                    struct migration **out, size_t *n, char *err, size_t errlen)
{
    const char *dir = mig_track_dir[track];
    *out = NULL;
    *n = 0;
    size_t nfiles = 0;
    for (const struct embedded_file *f = files; f->name; f++)
        if (f->track && !strcmp(f->track, dir))
            nfiles++;
    if (nfiles == 0)
        return 0;

    struct loaded_file *lf = calloc(nfiles, sizeof *lf);
    if (!lf)
        return mig_fail(err, errlen, "out of memory");
    size_t k = 0;
    for (const struct embedded_file *f = files; f->name; f++) {
        if (!f->track || strcmp(f->track, dir))
            continue;
        if (migration_parse_name(f->name, &lf[k].version, lf[k].name, sizeof lf[k].name,
                                 &lf[k].up) != 0) {
            free(lf);
            return mig_fail(err, errlen,
                            "migrations/%s/%s: bad file name (expected NNNN_name.up.sql or "
                            "NNNN_name.down.sql, name in a-z0-9_)",
                            dir, f->name);
        }
        lf[k++].f = f;
    }
    qsort(lf, nfiles, sizeof *lf, cmp_loaded);

    /* Checks pairs and numbering, and sizes the one block that holds the
     * array followed by the names, so the caller frees a single pointer. */
    size_t count = 0, names = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const struct loaded_file *x = &lf[i];
        const struct loaded_file *prev = i ? &lf[i - 1] : NULL;
        int rc = 0;
        if (prev && prev->version == x->version) {
            if (x->up || !prev->up)
                rc = mig_fail(err, errlen, "migrations/%s: duplicate version %04d (%s and %s)", dir,
                              x->version, prev->f->name, x->f->name);
            else if (strcmp(prev->name, x->name))
                rc = mig_fail(err, errlen,
                              "migrations/%s: duplicate version %04d (%s and %s name different "
                              "migrations)",
                              dir, x->version, prev->f->name, x->f->name);
            else if (i >= 2 && lf[i - 2].version == x->version)
                rc = mig_fail(err, errlen, "migrations/%s: duplicate version %04d (%s)", dir,
                              x->version, x->f->name);
        } else if (!x->up) {
            rc = mig_fail(err, errlen, "migrations/%s/%s: a .down.sql without its .up.sql", dir,
                          x->f->name);
        } else {
            if (x->version != (int)count + 1)
                rc = mig_fail(err, errlen,
                              "migrations/%s: version %04d is missing (numbering must run 0001, "
                              "0002, ... without gaps; found %s)",
                              dir, (int)count + 1, x->f->name);
            count++;
            names += strlen(x->name) + 1;
        }
        if (rc) {
            free(lf);
            return rc;
        }
    }

    struct migration *m = malloc(count * sizeof *m + names);
    if (!m) {
        free(lf);
        return mig_fail(err, errlen, "out of memory");
    }
    char *np = (char *)(m + count);
    size_t j = 0;
    for (size_t i = 0; i < nfiles; i++) {
        const struct loaded_file *x = &lf[i];
        if (x->up) {
            size_t len = strlen(x->name) + 1;
            memcpy(np, x->name, len);
            m[j].version = x->version;
            m[j].name = np;
            m[j].up = x->f->data;
            m[j].down = NULL;
            migration_checksum(x->f->data, x->f->len, m[j].checksum);
            size_t ml = strlen(MIGRATION_COMPATIBLE_MARK);
            m[j].compatible = x->f->len >= ml &&
                              !memcmp(x->f->data, MIGRATION_COMPATIBLE_MARK, ml) &&
                              (x->f->len == ml || isspace((unsigned char)x->f->data[ml]));
            np += len;
            j++;
        } else {
            m[j - 1].down = x->f->data;
        }
    }
    free(lf);
    *out = m;
    *n = count;
    return 0;
}

/* The embedded migrations, loaded once per process: they never change and
 * /ready asks for the latest version on every probe. */
static struct {
    pthread_once_t once;
    int rc;
    char err[512];
    struct migration *m[2];
    size_t n[2];
} builtin = {.once = PTHREAD_ONCE_INIT};

static void builtin_load(void)
{
    for (int t = TRACK_CONTROL; t <= TRACK_TENANT; t++)
        if (migrations_load(embedded_migrations, (enum migration_track)t, &builtin.m[t],
                            &builtin.n[t], builtin.err, sizeof builtin.err) != 0) {
            builtin.rc = -1;
            return;
        }
}

int mig_builtin(enum migration_track t, const struct migration **m, size_t *n, char *err,
                size_t errlen)
{
    pthread_once(&builtin.once, builtin_load);
    if (builtin.rc != 0)
        return mig_fail(err, errlen, "migrations built into this binary are broken: %s",
                        builtin.err);
    *m = builtin.m[t];
    *n = builtin.n[t];
    return 0;
}

int migrate_latest(enum migration_track track)
{
    const struct migration *m = NULL;
    size_t n = 0;
    /* A broken embedded list cannot happen in a tested build (unit test). */
    if (mig_builtin(track, &m, &n, NULL, 0) != 0 || n == 0)
        return 0;
    return m[n - 1].version;
}
