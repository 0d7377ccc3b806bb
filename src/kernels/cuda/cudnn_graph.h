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
 * Layout and element type are decided in cudnn_graph.c alone, from the
 * context's precision and activation format (layout.h): NCHW float32 for
 * fp32 and tf32 by default, the parameters read where they are. In NHWC
 * (bf16, or fp32/tf32 with --layout nhwc) every tensor passed is in the
 * activations' element type with channels last and padded to 16 bytes: x, y
 * as the activations are stored; w (and dw) a (Kp, R, S, Cp) copy of the
 * weights ((Kp, R, S, 1) depthwise: the padding channels are groups of
 * their own, with zero weights), and b a Kp copy of the bias, that the
 * caller keeps in its workspace. */
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
 * required = 1: when no engine passes the rules of the run's precision and
 * determinism, the rules bend (cudnn_graph.c: rule_tier) before a problem
 * without any engine aborts with the problem, the device and cuDNN's own
 * reasons. required = 0 (fused graphs, beta = 1): returns NULL when no
 * engine runs it as asked, and remembers that, so the caller takes its
 * fallback path. `a` only names the op in messages. */
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
int unet_cudnn_graph_check(unet_precision precision, unet_cuda_format format, const unet_conv_problem *p, char *why,
                           size_t why_len);

/* The cuDNN this build runs on. cuDNN promises that a runtime runs
 * programs built against its own or an earlier minor version; a build
 * against newer headers (9.19 here) on an older runtime (the one a GPU
 * machine's PyTorch brings, 9.1 to 9.10 in its recent releases) is not
 * promised. This module takes that step knowingly: every entry point and
 * every enum value it names is in cuDNN 9.0.0 with the value it has in
 * 9.19 (cudnnGetLastErrorString and the 9.x status codes came with 9.0;
 * STRICT_NAN_PROP, from 9.1, is only a name in messages), and the one
 * change of behaviour in between (9.8 deprecated the plan's and the
 * graph's handle, which earlier releases require) is met by setting both.
 * A different major version has other entry points and is refused. */
#define UNET_CUDNN_MIN_VERSION 90000 /* 9.0.0, as cudnnGetVersion() counts */

/* 0 when the loaded cuDNN can run this build (the headers' major version,
 * at least UNET_CUDNN_MIN_VERSION), else -1 with one line in err naming the
 * version found and the one needed. Asked once, when the backend starts. */
int unet_cudnn_check_version(char *err, size_t errlen);

/* NULL, or one line saying that this deterministic run is not: some
 * convolution had only nondeterministic engines (each said so on stderr
 * when its plan was built). Asked once the plans are built. */
const char *unet_cudnn_nondeterminism(unet_cuda_ctx *ctx);

/* Frees every plan (backend teardown). */
void unet_cudnn_cache_free(struct unet_cudnn_cache *cache);

#ifdef __cplusplus
}
#endif

#endif
