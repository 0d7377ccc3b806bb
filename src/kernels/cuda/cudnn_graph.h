/* The one module that talks to cuDNN: it describes convolutions to the graph
 * (backend) API, picks engines by heuristics, and keeps the execution plans in
 * a cache keyed by the problem, so that every plan is built once, at compile
 * time (from an op's workspace_bytes), and a training step only executes.
 *
 * Every convolution of the engine is one of three directions of the same
 * cross-correlation  y = x (*) w,  x (n, c, h, w), w (k, c / groups, r, r),
 * y (n, k, p, q), p = (h + 2 pad - r) / stride + 1 (groups: 1, or c = k for
 * a depthwise convolution; cuDNN infers them from w's channels):
 *   FWD    y  = conv(x, w)          [+ b, then ReLU or ReLU6, fused when asked]
 *   DGRAD  dx = conv_transpose(dy, w)     (x slot: dx, y slot: dy)
 *   WGRAD  dw = correlate(x, dy)          (w slot: dw, y slot: dy)
 * The problem is always stated in terms of the forward convolution's shapes;
 * the tensors passed at run time fill the x, w, y, b slots by role.
 *
 * Layout and element type are decided in cudnn_graph.c alone: NCHW
 * float32 for fp32 and tf32. For bf16 every tensor passed is bf16 with
 * channels last and padded to 8 (layout.h): x, y as the activations are
 * stored; w (and dw) a (K8, R, S, C8) copy of the weights ((K8, R, S, 1)
 * depthwise: the padding channels are groups of their own, with zero
 * weights), and b a K8 copy of the bias, that the caller keeps in its
 * workspace. */
#ifndef UNET_CUDA_CUDNN_GRAPH_H
#define UNET_CUDA_CUDNN_GRAPH_H

#include <stddef.h>

#include "kernels/cuda/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_CONV_FWD, UNET_CONV_DGRAD, UNET_CONV_WGRAD } unet_conv_dir;

typedef struct {
    unet_conv_dir dir;
    int n, c, h, w;  /* the forward convolution's input x */
    int k;           /* its output channels (rows of w) */
    int r;           /* square filter size */
    int stride, pad; /* same in both spatial dimensions, padding on both sides */
    int groups;      /* 1, or c (depthwise, k == c) */
    int bias;        /* FWD only: y = conv + b[k], fused as a pointwise node */
    int act;         /* FWD only, with bias: a unet_act after it (ReLU: max(v, 0), ReLU6: min(max(v, 0), 6)) */
    int accumulate;  /* the output slot gets conv + output (beta = 1) instead of conv */
} unet_conv_problem;

/* Output spatial size of the forward convolution. */
static inline int unet_conv_out_size(int size, int r, int stride, int pad) { return (size + 2 * pad - r) / stride + 1; }

typedef struct unet_cudnn_plan unet_cudnn_plan;

/* Compile time: the plan for a problem, built on first request and cached.
 * required = 1: a problem without any engine aborts with the problem, the
 * device and cuDNN's own reason. required = 0 (fused graphs, beta = 1):
 * returns NULL when no engine runs it, and remembers that, so the caller
 * takes its fallback path. `a` only names the op in messages. */
const unet_cudnn_plan *unet_cudnn_plan_build(unet_cuda_ctx *ctx, const unet_conv_problem *p, int required,
                                             const unet_op_args *a);

/* Run time: the plan built at compile time for this problem, or NULL when it
 * was found to have no engine. A problem never built aborts: its op's
 * workspace_bytes was not called with these shapes. */
const unet_cudnn_plan *unet_cudnn_plan_find(unet_cuda_ctx *ctx, const unet_conv_problem *p, const unet_op_args *a);

size_t unet_cudnn_plan_workspace(const unet_cudnn_plan *plan);

/* Device pointers by slot (see the directions above); b only when the plan fuses the bias. */
typedef struct {
    const void *x, *w, *y, *b;
} unet_conv_tensors;

/* Executes on ctx->stream; workspace holds unet_cudnn_plan_workspace(plan) bytes. */
void unet_cudnn_execute(unet_cuda_ctx *ctx, const unet_cudnn_plan *plan, const unet_conv_tensors *t, void *workspace,
                        const unet_op_args *a);

/* Builds the operation graph of a problem without a device or a handle, and
 * destroys it: 1 when cuDNN accepts the graph, else 0 with its reason in why.
 * No engine is asked. Lets a machine without a GPU check every descriptor
 * this module makes (tests/tools/unet_cudnn_graphcheck.c). */
int unet_cudnn_graph_check(unet_precision precision, const unet_conv_problem *p, char *why, size_t why_len);

/* Frees every plan (backend teardown). */
void unet_cudnn_cache_free(struct unet_cudnn_cache *cache);

#ifdef __cplusplus
}
#endif

#endif
