/* The CUDA backend's op table entries: twins of src/kernels/cpu/ops.h, one
 * per op, each defined in the .cu file named after the op family; and what
 * fills the backend's optional slots (unet/backend.h) from other files. */
#ifndef UNET_CUDA_OPS_H
#define UNET_CUDA_OPS_H

#include "unet/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const unet_op_impl unet_cuda_conv;        /* conv.cu (cuDNN graph API) */
extern const unet_op_impl unet_cuda_conv_t2;     /* conv.cu */
extern const unet_op_impl unet_cuda_bias;        /* conv.cu */
extern const unet_op_impl unet_cuda_relu;        /* elementwise.cu */
extern const unet_op_impl unet_cuda_maxpool2;    /* pool.cu */
extern const unet_op_impl unet_cuda_maxpool;     /* pool.cu */
extern const unet_op_impl unet_cuda_crop_concat; /* concat.cu */
extern const unet_op_impl unet_cuda_crop_add;    /* concat.cu */
extern const unet_op_impl unet_cuda_upsample2;   /* upsample.cu */
extern const unet_op_impl unet_cuda_batchnorm;   /* batchnorm.cu */
extern const unet_op_impl unet_cuda_dropout;     /* elementwise.cu */
extern const unet_op_impl unet_cuda_softmax_ce;  /* loss.cu */
extern const unet_op_impl unet_cuda_bce_dice;    /* loss.cu */

/* The augmentation warp (augment.cu): unet_backend's warper_create, warp_batch, warper_free. */
unet_warper *unet_cuda_warper_create(const unet_backend *b, int batch, int channels, int tile, int context, int grid,
                                     int cubic, char *err, size_t errlen);
int unet_cuda_warp_batch(const unet_backend *b, unet_warper *w, int count, const unet_warp *warps, const float *src_raw,
                         const int32_t *src_label, const float *src_weight, float *raw, int32_t *label, float *weight,
                         char *err, size_t errlen);
void unet_cuda_warper_free(const unet_backend *b, unet_warper *w);

/* NCCL (dist_nccl.c): unet_backend's dist_id and dist_open; in a build without NCCL they say so. */
int unet_cuda_dist_id(const unet_backend *b, unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen);
unet_dist_face *unet_cuda_dist_open(const unet_backend *b, int rank, int world,
                                    const unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
