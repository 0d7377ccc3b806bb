/* The CUDA backend's op table entries: twins of src/kernels/cpu/ops.h, one
 * per op, each defined in the .cu file named after the op family. */
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

#ifdef __cplusplus
}
#endif

#endif
