/* Helpers shared by the loader tests: a scratch directory per test, a file writer, and a
 * small seeded generator for random (never all-zero) tensor bytes. Header-only because
 * each test program is one file plus this. */
#ifndef DSR1_LOADER_TEST_UTIL_H
#define DSR1_LOADER_TEST_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char dir[256];
} scratch;

/* mkdtemp under $TMPDIR (or /tmp); returns 0 on success. */
static inline int scratch_make(scratch *s)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof(s->dir), "%s/dsr1-loader-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(s->dir) ? 0 : -1;
}

/* Remove the files the test wrote (flat directory) and the directory itself. */
static inline void scratch_remove(scratch *s)
{
    char path[512];
    DIR *d = opendir(s->dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof(path), "%s/%s", s->dir, e->d_name);
        unlink(path);
    }
    if (d) closedir(d);
    rmdir(s->dir);
}

/* Write `len` bytes to DIR/NAME; the full path goes to path (512 bytes). 0 on success. */
static inline int scratch_write(const scratch *s, const char *name, const void *data, size_t len,
                                char *path)
{
    snprintf(path, 512, "%s/%s", s->dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t n = len ? fwrite(data, 1, len, fp) : 0;
    return (fclose(fp) == 0 && n == len) ? 0 : -1;
}

/* xorshift64*: deterministic, so a failure reproduces. */
static inline uint64_t test_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ull;
}

static inline void fill_random(uint64_t *state, void *buf, size_t len)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) p[i] = (unsigned char)(test_rand(state) >> 56);
}

#endif
