/* The CPU backend's op table entries, one per op, each defined in the file
 * named after the op family (conv.c, pool.c, ...). Twins of src/kernels/cuda/. */
#ifndef UNET_CPU_OPS_H
#define UNET_CPU_OPS_H

#include "unet/backend.h"

extern const unet_op_impl unet_cpu_conv;        /* conv.c */
extern const unet_op_impl unet_cpu_conv_t2;     /* conv.c */
extern const unet_op_impl unet_cpu_bias;        /* conv.c */
extern const unet_op_impl unet_cpu_relu;        /* elementwise.c */
extern const unet_op_impl unet_cpu_maxpool2;    /* pool.c */
extern const unet_op_impl unet_cpu_maxpool;     /* pool.c */
extern const unet_op_impl unet_cpu_crop_concat; /* concat.c */
extern const unet_op_impl unet_cpu_crop_add;    /* concat.c */
extern const unet_op_impl unet_cpu_upsample2;   /* upsample.c */
extern const unet_op_impl unet_cpu_batchnorm;   /* batchnorm.c */
extern const unet_op_impl unet_cpu_dropout;     /* elementwise.c */
extern const unet_op_impl unet_cpu_softmax_ce;  /* loss.c */
extern const unet_op_impl unet_cpu_bce_dice;    /* loss.c */

/* Centre-crop offset of a size-s tensor cropped to size t (DESIGN.md). */
static inline int unet_crop_offset(int s, int t) { return (s - t) / 2; }

#endif
