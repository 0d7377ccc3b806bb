/* The one module that talks to cuBLASLt: a 1x1 convolution (stride 1, no
 * padding: the heads, the bilinear path's 1x1, an encoder's pointwise
 * convolutions) is a matrix product, and cuBLASLt's matmul with a bias (and
 * ReLU) epilogue runs it in one pass. conv.cu measures it against cuDNN's
 * plan for the same problem when the plans are built and keeps the faster.
 *
 * The products, in the layouts of layout.h:
 *   NCHW float (fp32, tf32): for each image n, Y_n (K x HW) = W (K x C) X_n
 *     (C x HW), every matrix row-major as it lies in memory, a strided batch
 *     over n (W repeated); the bias per row of Y_n is the epilogue's bias
 *     (one value per row of D). tf32 lets cuBLASLt round inputs to TF32
 *     (CUBLAS_COMPUTE_32F_FAST_TF32), fp32 keeps float (CUBLAS_COMPUTE_32F).
 *   NHWC (bf16, channels padded to 8; fp32 and tf32 with --layout nhwc,
 *     padded to 4): one product over every pixel of the batch, column-major
 *     as it lies in memory: Y (Kp x P) = W X (Cp x P), W the (Kp, Cp) copy
 *     conv.cu makes for cuDNN, read transposed, P = N H W, the bias copy (Kp)
 *     per row; float accumulation. The padding channels come out +0: zero
 *     weights, zero bias.
 *
 * Backward (not routed here): the data gradient is a product too (dX_n =
 * W^T dY_n, no epilogue), and so is the weight gradient, summed over the
 * images (dW = sum_n dY_n X_n^T: a strided batch writes one product per
 * image, so the sum needs a batch of accumulating products or a reduction
 * after; cuBLASLt's BGRAD epilogues would fold the bias gradient in). cuDNN
 * runs both today; a measured choice like the forward's would carry over.
 *
 * Environment: UNET_CONV1X1=cublaslt or cudnn takes that path for every
 * 1x1 convolution instead of measuring (the emulation's tests take each;
 * its times are no GPU's). */
#ifndef UNET_CUDA_GEMM_H
#define UNET_CUDA_GEMM_H

#include <stddef.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/cudnn_graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct unet_gemm_plan unet_gemm_plan;

/* Whether a matmul can run problem p: a forward 1x1 convolution with stride 1, no padding, a bias (fused ReLU
 * or not), overwriting its output. */
int unet_gemm_runs(const unet_conv_problem *p);

/* Compile time: the matmul plan of p, built on first request and cached, or
 * NULL when cuBLASLt offers no algorithm for it (remembered, and said under
 * UNET_CUDNN_LOG=1). `a` only names the op in messages. */
unet_gemm_plan *unet_gemm_plan_build(unet_cuda_ctx *ctx, const unet_conv_problem *p, const unet_op_args *a);

/* Run time: the plan built for p, or NULL (never built, or no algorithm). */
const unet_gemm_plan *unet_gemm_plan_find(unet_cuda_ctx *ctx, const unet_conv_problem *p);

size_t unet_gemm_plan_workspace(const unet_gemm_plan *plan);

/* Which path runs the plan's problem; conv.cu decides once, when it builds the plans. */
typedef enum { UNET_1X1_UNDECIDED, UNET_1X1_CUDNN, UNET_1X1_GEMM } unet_1x1_path;
unet_1x1_path unet_gemm_path(const unet_gemm_plan *plan);
void unet_gemm_set_path(unet_gemm_plan *plan, unet_1x1_path path);

/* y = w x + b [ReLU] on ctx->stream: x, y activations, w and b what cuDNN is
 * handed (the float32 parameters; in NHWC their copies in the workspace).
 * workspace: unet_gemm_plan_workspace(plan) bytes. */
void unet_gemm_execute(unet_cuda_ctx *ctx, const unet_gemm_plan *plan, const void *x, const void *w, const void *b,
                       void *y, void *workspace, const unet_op_args *a);

#ifdef __cplusplus
}
#endif

#endif
