/* safetensors.h — reading and writing safetensors checkpoint files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 *   {"name": {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the raw little-endian tensor data (offsets relative to its start).
 *
 * graft writes F32 (parameters) and I32/I64 (indices, e.g. of sparse masks)
 * and reads F32, F16 and BF16 (converted to float) and I32/I64 (as int64).
 * Writes are atomic and durable: a temporary file beside the target is
 * written, fsynced and renamed over it, then the folder is fsynced, so a
 * crash leaves the old checkpoint or the new one, never half of one.
 *
 * Every refusal (bad header, truncated data, unknown dtype, overlapping or
 * out-of-range offsets, missing tensor, wrong shape) is logged with the file
 * path and the problem, and returned as a negative GRAFT_E* code.
 *
 * Ownership: graft_st_open() returns an owned file object (the whole file is
 * read into memory); graft_st_close() frees it and NULLs the pointer.
 * Strings returned by graft_st_meta() belong to the file object.
 */
#ifndef GRAFT_SAFETENSORS_H
#define GRAFT_SAFETENSORS_H

#include "graft.h"

#define GRAFT_ST_MAX_DIMS 4

typedef enum { GRAFT_ST_F32, GRAFT_ST_F16, GRAFT_ST_BF16, GRAFT_ST_I32, GRAFT_ST_I64 } graft_st_dtype_t;

/* One tensor to write: data in row-major order, owned by the caller; dtype
 * F32 (the zero default), I32 or I64. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[GRAFT_ST_MAX_DIMS];
    const void *data;
    graft_st_dtype_t dtype;
} graft_st_tensor_t;

/* Writes tensors (in the given order) and string metadata pairs
 * (meta_keys[i] -> meta_values[i]) atomically to path. */
int graft_st_write(const char *path, const graft_st_tensor_t *tensors, int n_tensors,
                   const char *const *meta_keys, const char *const *meta_values, int n_meta);

typedef struct graft_st_file graft_st_file_t;

/* Opens and validates the whole file: header JSON, dtypes, shapes, offsets
 * within the data section, no overlaps, data section fully covered. */
int graft_st_open(const char *path, graft_st_file_t **out);
void graft_st_close(graft_st_file_t **self_p);

/* Number of tensors and their names (in header order). */
int graft_st_count(const graft_st_file_t *f);
const char *graft_st_name(const graft_st_file_t *f, int i);

/* 1 if a tensor of that name exists (an optional "transformer." prefix in
 * the file is accepted too), else 0. */
int graft_st_has(const graft_st_file_t *f, const char *name);

/* Copies tensor `name` into dst (float32), converting from F16/BF16 if
 * needed, after checking that its shape equals shape[0..ndim). Missing
 * tensor -> GRAFT_ESHAPE, wrong shape -> GRAFT_ESHAPE, both logged with
 * the file path and tensor name. */
int graft_st_read(const graft_st_file_t *f, const char *name, const int64_t *shape, int ndim,
                  float *dst);

/* Copies an integer tensor (I32 or I64) into dst as int64 after checking
 * its shape, as graft_st_read does for floats. A float tensor here, or an
 * integer tensor given to graft_st_read, is refused (GRAFT_EFORMAT). */
int graft_st_read_int(const graft_st_file_t *f, const char *name, const int64_t *shape, int ndim,
                      int64_t *dst);

/* Shape of tensor `name` into shape[GRAFT_ST_MAX_DIMS] and *ndim; missing
 * tensor -> GRAFT_ESHAPE (logged). */
int graft_st_shape(const graft_st_file_t *f, const char *name, int64_t *shape, int *ndim);

/* Metadata value for key, or NULL if absent. */
const char *graft_st_meta(const graft_st_file_t *f, const char *key);

/* The path the file was opened from (for error messages). */
const char *graft_st_path(const graft_st_file_t *f);

/* graft's own files name their kind in metadata "format": graft-gpt2 (a
 * trunk), graft-modules (a modules checkpoint), graft-mask (a grafting
 * mask). Returns GRAFT_OK if f is of kind `want`; else GRAFT_EFORMAT, with
 * a logged error saying what the file is and what was expected. */
int graft_st_expect_format(const graft_st_file_t *f, const char *want);

#endif
