/* Writing one safetensors file, streaming: the tensor table is declared first, then the data
 * is appended in declaration order, so a multi-gigabyte shard never has to be in memory.
 *
 * Layout written (what safetensors.h reads): u64 little-endian header length N, N bytes of
 * compact JSON {"__metadata__": {"format": "pt"}, name: {"dtype", "shape", "data_offsets"},
 * ...} padded with spaces to a multiple of 8, then the data; offsets are relative to the end
 * of the header and tile the data exactly.
 *
 * The file is written as PATH.tmp and renamed to PATH by dsr1_st_writer_finish() after every
 * declared byte arrived, so an interrupted run never leaves a plausible-looking shard.
 *
 * Use: open, add() each tensor, begin() (writes the header), write() the data in pieces of
 * any size, finish() (or abort() on any error). The writer owns its file descriptor and
 * copies the names; finish() and abort() free it. */
#ifndef DSR1_ST_WRITER_H
#define DSR1_ST_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "status.h"

typedef struct dsr1_st_writer dsr1_st_writer;

dsr1_status dsr1_st_writer_open(const char *path, dsr1_st_writer **out);
/* Declare the next tensor (before begin()). ndim <= DSR1_ST_MAX_DIMS, dims >= 0. */
dsr1_status dsr1_st_writer_add(dsr1_st_writer *w, const char *name, dsr1_dtype dtype, int ndim,
                               const int64_t *shape);
/* Write the header; no add() afterwards. */
dsr1_status dsr1_st_writer_begin(dsr1_st_writer *w);
/* Append data; fails with DSR1_ERR_RANGE past the declared total. */
dsr1_status dsr1_st_writer_write(dsr1_st_writer *w, const void *data, size_t len);
/* Check that all declared bytes were written, close, rename into place, free w (also on
 * failure, after removing the temporary file). */
dsr1_status dsr1_st_writer_finish(dsr1_st_writer *w);
/* Close, remove the temporary file, free w. NULL is fine. */
void dsr1_st_writer_abort(dsr1_st_writer *w);

/* Sum of the declared tensors' bytes, and the size of the header block (8 + N). */
uint64_t dsr1_st_writer_data_bytes(const dsr1_st_writer *w);
uint64_t dsr1_st_writer_header_bytes(const dsr1_st_writer *w);

#endif
