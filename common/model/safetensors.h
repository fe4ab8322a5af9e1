/* Reading one safetensors file, validated before anything trusts it.
 *
 * Format: u64 little-endian header length N, N bytes of UTF-8 JSON
 *   {name: {"dtype": D, "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}
 * then the data; offsets are relative to the end of the header.
 *
 * dsr1_st_open() reads only the header (pread, no mmap) and checks, each with its own
 * clear error naming the file and the tensor:
 *   - file shorter than 8 bytes; header length 0, over DSR1_ST_MAX_HEADER (100 MB) or past
 *     the end of the file;
 *   - header not valid UTF-8, not JSON, not an object; an entry that is not an object with
 *     exactly dtype (string), shape (array of non-negative integers), data_offsets (two
 *     non-negative integers, begin <= end); __metadata__ not an object of strings;
 *   - an unknown dtype;
 *   - shape product x dtype size overflowing 64 bits or differing from end - begin;
 *   - offsets that do not tile the data region exactly: sorted by begin, each tensor starts
 *     where the previous ended, the first at 0, the last ends at file size - 8 - N
 *     (no gaps, no overlaps, no trailing bytes);
 *   - duplicate tensor names (JSON objects may repeat keys; we refuse).
 * Tensor data is mapped later, by range, with dsr1_st_map(), so a caller that owns a
 * slice of the model touches only its own bytes. */
#ifndef DSR1_SAFETENSORS_H
#define DSR1_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DSR1_ST_MAX_HEADER (100u * 1000u * 1000u)
#define DSR1_ST_MAX_DIMS   8

typedef enum {
    DSR1_DT_F8_E4M3,
    DSR1_DT_F8_E5M2,
    DSR1_DT_BF16,
    DSR1_DT_F16,
    DSR1_DT_F32,
    DSR1_DT_F64,
    DSR1_DT_I8,
    DSR1_DT_I16,
    DSR1_DT_I32,
    DSR1_DT_I64,
    DSR1_DT_U8,
    DSR1_DT_U16,
    DSR1_DT_U32,
    DSR1_DT_U64,
    DSR1_DT_BOOL,
    DSR1_DT_COUNT
} dsr1_dtype;

/* "F8_E4M3" etc.; NULL for an out-of-range value. */
const char *dsr1_dtype_name(dsr1_dtype dt);
/* Bytes per element (1 for the F8 types). */
size_t dsr1_dtype_size(dsr1_dtype dt);
/* Parse a safetensors dtype name; DSR1_ERR_UNSUPPORTED when unknown. */
dsr1_status dsr1_dtype_parse(const char *name, dsr1_dtype *out);

typedef struct {
    const char *name; /* owned by the file object */
    dsr1_dtype dtype;
    int ndim;
    int64_t shape[DSR1_ST_MAX_DIMS];
    uint64_t offset; /* absolute byte offset of the data in the file */
    uint64_t nbytes;
} dsr1_st_tensor;

typedef struct dsr1_st_file dsr1_st_file;

/* Open and validate `path`. On success *out owns an open file descriptor and the parsed
 * table; release it with dsr1_st_close(). */
dsr1_status dsr1_st_open(const char *path, dsr1_st_file **out);
void dsr1_st_close(dsr1_st_file *f);

const char *dsr1_st_path(const dsr1_st_file *f);
uint64_t dsr1_st_file_size(const dsr1_st_file *f);
/* Tensors in data order (sorted by offset). */
size_t dsr1_st_count(const dsr1_st_file *f);
const dsr1_st_tensor *dsr1_st_at(const dsr1_st_file *f, size_t i);
/* Position of a tensor of this file in data order: dsr1_st_at(f, dsr1_st_index(f, t)) == t. */
size_t dsr1_st_index(const dsr1_st_file *f, const dsr1_st_tensor *t);
/* NULL when absent (hash lookup, O(1)). */
const dsr1_st_tensor *dsr1_st_find(const dsr1_st_file *f, const char *name);

/* Map the bytes [offset, offset + len) of the file read-only (page-aligned internally).
 * *data points at `offset`; release with dsr1_st_unmap(*data, len). The mapping stays
 * valid after dsr1_st_close(). */
dsr1_status dsr1_st_map(const dsr1_st_file *f, uint64_t offset, uint64_t len, const void **data);
void dsr1_st_unmap(const void *data, uint64_t len);

#endif
