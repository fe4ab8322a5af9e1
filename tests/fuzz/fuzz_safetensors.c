/* libFuzzer target for the safetensors reader: the input is a whole file. Whatever the bytes,
 * dsr1_st_open() must either fail cleanly or return a table that keeps the header's promises
 * (tensors tile the data region, every name is found, every range maps); a broken promise
 * traps so the fuzzer reports it. Built by run_loader_fuzz.sh. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    dsr1_st_file *f = NULL;
    if (dsr1_st_open(path, &f) == DSR1_OK) {
        uint64_t total = 0, end = 0;
        for (size_t i = 0; i < dsr1_st_count(f); i++) {
            const dsr1_st_tensor *t = dsr1_st_at(f, i);
            CHECK(dsr1_st_find(f, t->name) == t);
            CHECK(i == 0 || t->offset == end);
            CHECK(t->offset + t->nbytes <= size);
            end = t->offset + t->nbytes;
            total += t->nbytes;
            const void *p = NULL;
            CHECK(dsr1_st_map(f, t->offset, t->nbytes, &p) == DSR1_OK);
            CHECK(t->nbytes == 0 || memcmp(p, data + t->offset, t->nbytes) == 0);
            dsr1_st_unmap(p, t->nbytes);
        }
        CHECK(dsr1_st_count(f) == 0 || end == size);
        CHECK(total <= size);
        CHECK(dsr1_st_find(f, "model.embed_tokens.weight") == NULL ||
              dsr1_st_find(f, "model.embed_tokens.weight")->nbytes <= size);
        dsr1_st_close(f);
    } else {
        CHECK(f == NULL);
    }
    close(fd);
    return 0;
}
