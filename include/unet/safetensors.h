/* The safetensors format (huggingface/safetensors), so that PyTorch users
 * read our checkpoints and we read theirs:
 *
 *   8 bytes    N, little-endian unsigned header length
 *   N bytes    JSON: {"__metadata__": {"key": "value", ...},
 *                     "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
 *              padded with spaces to a multiple of 8
 *   the rest   tensor bytes, little-endian, row-major; offsets are relative
 *              to the start of this region, and the tensors cover it exactly
 *
 * Writing is atomic: a temporary file beside the target, fsync, rename; on
 * any failure the temporary file is removed and an existing file at the path
 * is left as it was. Reading validates the whole header against the file
 * size before any tensor is touched, so a truncated or corrupt file is one
 * line naming the file, never a crash. */
#ifndef UNET_SAFETENSORS_H
#define UNET_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_ST_MAX_DIMS 8

typedef enum {
    UNET_ST_F64,
    UNET_ST_F32,
    UNET_ST_F16,
    UNET_ST_BF16,
    UNET_ST_I64,
    UNET_ST_I32,
    UNET_ST_I16,
    UNET_ST_I8,
    UNET_ST_U8,
    UNET_ST_BOOL,
    UNET_ST_U16,
    UNET_ST_U32,
    UNET_ST_U64,
    UNET_ST_F8_E4M3,
    UNET_ST_F8_E5M2,
    UNET_ST_DTYPE_COUNT
} unet_st_dtype;

const char *unet_st_dtype_name(unet_st_dtype t); /* "F32" */
size_t unet_st_dtype_size(unet_st_dtype t);      /* bytes per element */

/* A tensor: what to write, or what a file holds (then data points into the
 * mapped file, possibly unaligned: read it with the functions below). */
typedef struct {
    const char *name;
    unet_st_dtype dtype;
    int ndim; /* 0: a scalar */
    int64_t shape[UNET_ST_MAX_DIMS];
    const void *data;
} unet_st_tensor;

size_t unet_st_numel(const unet_st_tensor *t);

typedef struct {
    const char *key, *value;
} unet_st_meta;

/* Writes the tensors in the given order, with string metadata. 0, or -1
 * with one line naming the file. */
int unet_st_write(const char *path, const unet_st_tensor *tensors, int n_tensors, const unet_st_meta *meta, int n_meta,
                  char *err, size_t errlen);

typedef struct unet_st_file unet_st_file;

/* Opens, maps and validates a file; 0, or -1 with one line naming it. */
int unet_st_open(const char *path, unet_st_file **out, char *err, size_t errlen);
void unet_st_close(unet_st_file *f);
const char *unet_st_path(const unet_st_file *f);

/* Tensors in file order (by offset). */
int unet_st_count(const unet_st_file *f);
const unet_st_tensor *unet_st_at(const unet_st_file *f, int index);
const unet_st_tensor *unet_st_find(const unet_st_file *f, const char *name); /* NULL when absent */

/* Copies a tensor as float32, converting F64, F16 and BF16 (weights saved by
 * PyTorch in other precisions). A non-float dtype is -1 with one line. */
int unet_st_read_f32(const unet_st_file *f, const unet_st_tensor *t, float *dst, char *err, size_t errlen);
/* Copies an integer tensor (I64, I32, I16, I8, U8, BOOL) as int64. */
int unet_st_read_i64(const unet_st_file *f, const unet_st_tensor *t, int64_t *dst, char *err, size_t errlen);

/* Metadata: the value of a key, NULL when absent. */
const char *unet_st_meta_get(const unet_st_file *f, const char *key);
int unet_st_meta_count(const unet_st_file *f);
const unet_st_meta *unet_st_meta_at(const unet_st_file *f, int index);

#ifdef __cplusplus
}
#endif

#endif
