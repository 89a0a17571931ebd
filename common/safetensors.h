/* safetensors.h — reading and writing safetensors checkpoint files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 *   {"name": {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the raw little-endian tensor data (offsets relative to its start).
 *
 * graft writes F32 only and reads F32, F16 and BF16 (converted to float).
 * Writes are atomic: a temporary file beside the target is written, fsynced
 * and renamed over it, so a crash never leaves a half-written checkpoint.
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

/* One tensor to write: fp32 data in row-major order, owned by the caller. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[GRAFT_ST_MAX_DIMS];
    const float *data;
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

/* Metadata value for key, or NULL if absent. */
const char *graft_st_meta(const graft_st_file_t *f, const char *key);

/* The path the file was opened from (for error messages). */
const char *graft_st_path(const graft_st_file_t *f);

#endif
