/* cuDNN graph (backend) API from C: descriptors, engine selection and the
 * plan cache. See cudnn_graph.h for the model of a convolution problem.
 *
 * The order of construction is fixed by the API: tensors and the convolution
 * and pointwise descriptors are finalized first, operations reference them
 * and are finalized next, the operation graph references the operations,
 * heuristics rank engine configurations for the graph, and an execution plan
 * is one configuration that finalizes. Every descriptor a plan was built from
 * stays alive as long as the plan: the API does not promise that a plan
 * copies what it references.
 *
 * Environment (diagnosis on a GPU machine, never needed for correctness):
 *   UNET_CUDNN_LOG=1     one line per plan built: engine, numerical notes,
 *                        workspace, and why a fused graph fell back
 *   UNET_CUDNN_NOFUSE=1  never build fused or beta = 1 graphs: every op takes
 *                        its unfused path (conv alone + custom kernels) */
#include "kernels/cuda/cudnn_graph.h"

#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/layout.h"

/* ---------------------------------------------------------------------------
 * Layout: the one place that decides element types, memory order and
 * alignment of what cuDNN reads and writes.
 *
 * fp32 and tf32: NCHW float32, the CPU layout, which keeps every CUDA op a
 * direct twin of its CPU op.
 *
 * bf16 (src/kernels/cuda/layout.h): activations and their gradients NHWC
 * bfloat16 with the channels padded by zeros to a multiple of 8, and cuDNN
 * is shown the padded channel count: the tensors are then packed NHWC, the
 * form the tensor-core engines take, and the padding adds nothing (zero
 * inputs, zero weights) and comes out zero (zero weights, zero bias). The
 * weights stay float32 master copies in the parameter block; a convolution
 * reads a bf16 copy, padded the same way and laid out KRSC (channels last),
 * that the op casts into its workspace each step; the weight gradient comes
 * out in that form too, bf16, and is widened and added into the float32
 * gradient block by the op (what PyTorch's autocast does: bf16 weight
 * gradients, float32 accumulation). The fused bias is a bf16 copy as well.
 * Every reduction and fused pointwise step computes in float (the compute
 * type and the virtual intermediates), rounding once, to bf16, on the store.
 * ------------------------------------------------------------------------- */

/* Activations come from the plan's arena (offsets aligned to 256 bytes) or
 * from cudaMalloc. Parameters and their gradients are packed without padding
 * in one block (include/unet/graph.h: offsets in floats), so a weight tensor
 * is only guaranteed float alignment; the bf16 copies live in the workspace,
 * aligned like activations. Both are checked at every execution. */
enum { ACTIVATION_ALIGNMENT = 16, PARAM_ALIGNMENT = 4 };

typedef enum { ROLE_ACTIVATION, ROLE_FILTER, ROLE_DEPTHWISE_FILTER, ROLE_BIAS, ROLE_INTERMEDIATE } tensor_role;

typedef struct {
    cudnnDataType_t type;
    int64_t dims[4], strides[4];
    int64_t alignment;
} tensor_layout;

/* The element type cuDNN computes in: float for every precision (the engine
 * filter below decides whether tensor cores may be used). */
static cudnnDataType_t compute_type(const unet_cuda_ctx *ctx) {
    (void)ctx;
    return CUDNN_DATA_FLOAT;
}

static int is_bf16(const unet_cuda_ctx *ctx) { return ctx->precision == UNET_PREC_BF16; }

/* The alignment cuDNN may assume for a tensor of this role. */
static int64_t alignment_of(const unet_cuda_ctx *ctx, tensor_role role) {
    return (role == ROLE_FILTER || role == ROLE_BIAS) && !is_bf16(ctx) ? PARAM_ALIGNMENT : ACTIVATION_ALIGNMENT;
}

/* Logical dims (n, c, h, w); filters (k, c / groups, r, s); biases (1, k, 1, 1). */
static tensor_layout layout_for(const unet_cuda_ctx *ctx, tensor_role role, int64_t n, int64_t c, int64_t h,
                                int64_t w) {
    tensor_layout l;
    l.alignment = alignment_of(ctx, role == ROLE_DEPTHWISE_FILTER ? ROLE_FILTER : role);
    if (is_bf16(ctx)) {
        /* NHWC with padded channels; a filter's (and the bias's) k is padded too, a depthwise
         * filter's one channel is not (each padding channel is a group of its own) */
        int64_t pad = UNET_BF16_CHANNELS;
        int filter = role == ROLE_FILTER || role == ROLE_DEPTHWISE_FILTER;
        if (filter || role == ROLE_BIAS) n = role == ROLE_BIAS ? 1 : (n + pad - 1) / pad * pad;
        if (role != ROLE_DEPTHWISE_FILTER) c = (c + pad - 1) / pad * pad;
        l.type = role == ROLE_INTERMEDIATE ? compute_type(ctx) : CUDNN_DATA_BFLOAT16;
    } else {
        l.type = compute_type(ctx); /* fp32 and tf32: float tensors throughout */
    }
    l.dims[0] = n;
    l.dims[1] = c;
    l.dims[2] = h;
    l.dims[3] = w;
    /* NHWC: c fastest, then w, then h; NCHW: w fastest, then h, then c */
    int64_t sc = is_bf16(ctx) ? 1 : h * w, sw = is_bf16(ctx) ? c : 1;
    l.strides[0] = c * h * w;
    l.strides[1] = sc;
    l.strides[2] = w * sw;
    l.strides[3] = sw;
    return l;
}

/* ---------------------------------------------------------------------------
 * Problems, keys and messages
 * ------------------------------------------------------------------------- */

/* All ints, zeroed before filling, so memcmp compares keys exactly. */
typedef struct {
    int dir, n, c, h, w, k, r, stride, pad, groups, bias, act, accumulate;
    int precision, deterministic;
} plan_key;

struct unet_cudnn_plan {
    plan_key key;
    int supported;                 /* 0: no engine runs this graph (cached, so it is asked once) */
    cudnnBackendDescriptor_t plan; /* NULL when unsupported */
    int64_t workspace;
    int n_slots;
    int64_t slot_uid[4]; /* variant pack order: the non-virtual tensors */
    int64_t engine_index;
    cudnnBackendDescriptor_t keep[32]; /* what the plan was built from: the graph's descriptors, config, engine */
    int n_keep;
};

struct unet_cudnn_cache {
    unet_cudnn_plan **plans; /* pointers: callers hold plans across cache growth */
    int n, cap;
    int log, nofuse;
};

/* Tensor ids in every graph; the variant pack names tensors by these. */
enum { UID_X = 1, UID_W = 2, UID_Y = 3, UID_B = 4, UID_CONV_OUT = 101, UID_BIAS_OUT = 102 };

static plan_key key_of(const unet_cuda_ctx *ctx, const unet_conv_problem *p) {
    plan_key k;
    memset(&k, 0, sizeof k);
    k.dir = (int)p->dir;
    k.n = p->n;
    k.c = p->c;
    k.h = p->h;
    k.w = p->w;
    k.k = p->k;
    k.r = p->r;
    k.stride = p->stride;
    k.pad = p->pad;
    k.groups = p->groups;
    k.bias = p->dir == UNET_CONV_FWD ? p->bias : 0;
    k.act = p->dir == UNET_CONV_FWD && p->bias ? p->act : 0;
    k.accumulate = p->accumulate;
    k.precision = (int)ctx->precision;
    k.deterministic = ctx->deterministic;
    return k;
}

static const char *dir_name(int dir) {
    return dir == UNET_CONV_FWD ? "forward" : dir == UNET_CONV_DGRAD ? "backward-data" : "backward-filter";
}

static const char *precision_name(int precision) {
    return precision == UNET_PREC_FP32 ? "fp32" : precision == UNET_PREC_TF32 ? "tf32" : "bf16";
}

static void describe(const plan_key *k, int device, char *buf, size_t len) {
    int p = unet_conv_out_size(k->h, k->r, k->stride, k->pad), q = unet_conv_out_size(k->w, k->r, k->stride, k->pad);
    snprintf(buf, len,
             "convolution %s%s%s%s: x (%d,%d,%d,%d), w (%d,%d,%d,%d), y (%d,%d,%d,%d), stride %d, pad %d, groups %d, "
             "%s, %s, device %d",
             dir_name(k->dir), k->bias ? " + bias" : "",
             k->act == UNET_ACT_RELU ? " + ReLU" : k->act == UNET_ACT_RELU6 ? " + ReLU6" : "",
             k->accumulate ? " accumulating (beta = 1)" : "", k->n, k->c, k->h, k->w, k->k,
             k->groups > 0 ? k->c / k->groups : 0, k->r, k->r, k->n, k->k, p, q, k->stride, k->pad, k->groups,
             precision_name(k->precision), k->deterministic ? "deterministic" : "nondeterministic allowed", device);
}

/* Aborts through the backend's reporter with cuDNN's own last words. */
static void die(const char *file, int line, const char *call, cudnnStatus_t status, const char *what,
                const char *problem, const unet_op_args *a) {
    char last[1024] = "";
    cudnnGetLastErrorString(last, sizeof last);
    char msg[3072];
    snprintf(msg, sizeof msg, "%s (status %d) %s, for %s%s%s", cudnnGetErrorString(status), (int)status, what, problem,
             last[0] ? "; cuDNN says: " : "", last);
    unet_cuda_fail(file, line, call, msg, a);
}

/* ---------------------------------------------------------------------------
 * Building descriptors. Setting an attribute or finalizing a tensor,
 * convolution, pointwise or operation descriptor can only fail through a bug
 * here (a wrong attribute type or count): that aborts. Only the operation
 * graph, the heuristics and the plans can legitimately fail (no engine for a
 * fused graph), and those failures are returned to the caller.
 * ------------------------------------------------------------------------- */

typedef struct {
    cudnnBackendDescriptor_t owned[24];
    int n_owned;
    const char *problem;
    const unet_op_args *a;
} graph_builder;

static cudnnBackendDescriptor_t create_desc(graph_builder *g, cudnnBackendDescriptorType_t type, const char *what,
                                            int line) {
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(type, &d);
    if (s != CUDNN_STATUS_SUCCESS) die(__FILE__, line, "cudnnBackendCreateDescriptor", s, what, g->problem, g->a);
    if (g->n_owned == (int)(sizeof g->owned / sizeof g->owned[0]))
        die(__FILE__, line, "graph_builder", CUDNN_STATUS_INTERNAL_ERROR, "too many descriptors in one graph",
            g->problem, g->a);
    g->owned[g->n_owned++] = d;
    return d;
}

static void set_attr(graph_builder *g, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                     cudnnBackendAttributeType_t type, int64_t count, const void *values, const char *what, int line) {
    cudnnStatus_t s = cudnnBackendSetAttribute(d, name, type, count, values);
    if (s != CUDNN_STATUS_SUCCESS) {
        char w[160];
        snprintf(w, sizeof w, "setting %s", what);
        die(__FILE__, line, "cudnnBackendSetAttribute", s, w, g->problem, g->a);
    }
}

static void finalize_desc(graph_builder *g, cudnnBackendDescriptor_t d, const char *what, int line) {
    cudnnStatus_t s = cudnnBackendFinalize(d);
    if (s != CUDNN_STATUS_SUCCESS) {
        char w[160];
        snprintf(w, sizeof w, "finalizing %s", what);
        die(__FILE__, line, "cudnnBackendFinalize", s, w, g->problem, g->a);
    }
}

#define CREATE(g, type) create_desc((g), (type), #type, __LINE__)
#define SET(g, d, name, type, count, values) set_attr((g), (d), (name), (type), (count), (values), #name, __LINE__)
#define FINALIZE(g, d, what) finalize_desc((g), (d), (what), __LINE__)

static cudnnBackendDescriptor_t make_tensor(graph_builder *g, const tensor_layout *l, int64_t uid, bool is_virtual) {
    cudnnBackendDescriptor_t t = CREATE(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    SET(g, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &l->type);
    SET(g, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, l->dims);
    SET(g, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, l->strides);
    SET(g, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(g, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &l->alignment);
    if (is_virtual) SET(g, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    FINALIZE(g, t, "a tensor descriptor");
    return t;
}

static cudnnBackendDescriptor_t make_conv_desc(graph_builder *g, const unet_cuda_ctx *ctx, const plan_key *k) {
    cudnnBackendDescriptor_t c = CREATE(g, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    cudnnDataType_t comp = compute_type(ctx);
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION; /* PyTorch's conv2d: no filter flip */
    int64_t spatial = 2;
    int64_t pad[2] = {k->pad, k->pad}, dilation[2] = {1, 1}, stride[2] = {k->stride, k->stride};
    SET(g, c, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilation);
    SET(g, c, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride);
    FINALIZE(g, c, "the convolution descriptor");
    return c;
}

/* The convolution node. alpha and beta are float for a float compute type. */
static cudnnBackendDescriptor_t make_conv_op(graph_builder *g, const plan_key *k, cudnnBackendDescriptor_t conv,
                                             cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t w,
                                             cudnnBackendDescriptor_t y) {
    float alpha = 1.0f, beta = k->accumulate ? 1.0f : 0.0f;
    cudnnBackendDescriptor_t op;
    if (k->dir == UNET_CONV_FWD) {
        op = CREATE(g, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    } else if (k->dir == UNET_CONV_DGRAD) {
        op = CREATE(g, CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    } else {
        op = CREATE(g, CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
        SET(g, op, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    }
    FINALIZE(g, op, "the convolution operation");
    return op;
}

/* A pointwise node y = mode(x [, b]); upper: RELU_FWD's upper clip (ReLU6: 6). */
static cudnnBackendDescriptor_t make_pointwise_op(graph_builder *g, const unet_cuda_ctx *ctx, cudnnPointwiseMode_t mode,
                                                  double upper, cudnnBackendDescriptor_t x,
                                                  cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t pw = CREATE(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    cudnnDataType_t prec = compute_type(ctx);
    SET(g, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(g, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (mode == CUDNN_POINTWISE_RELU_FWD) {
        /* clip below at 0 with slope 0, above at upper */
        double lower = 0.0, slope = 0.0;
        SET(g, pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, CUDNN_TYPE_DOUBLE, 1, &lower);
        SET(g, pw, CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, CUDNN_TYPE_DOUBLE, 1, &upper);
        SET(g, pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &slope);
    }
    FINALIZE(g, pw, "a pointwise descriptor");

    cudnnBackendDescriptor_t op = CREATE(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    float one = 1.0f;
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
    SET(g, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
    FINALIZE(g, op, "a pointwise operation");
    return op;
}

/* The operation graph of a problem, or NULL (with the reason in why) when
 * cuDNN refuses the graph. plan->slot_uid lists the tensors the variant pack
 * must name. */
static cudnnBackendDescriptor_t make_graph(graph_builder *g, const unet_cuda_ctx *ctx, const plan_key *k,
                                           unet_cudnn_plan *plan, char *why, size_t why_len) {
    int p = unet_conv_out_size(k->h, k->r, k->stride, k->pad), q = unet_conv_out_size(k->w, k->r, k->stride, k->pad);
    tensor_layout xl = layout_for(ctx, ROLE_ACTIVATION, k->n, k->c, k->h, k->w);
    tensor_layout wl =
        layout_for(ctx, k->groups > 1 ? ROLE_DEPTHWISE_FILTER : ROLE_FILTER, k->k, k->c / k->groups, k->r, k->r);
    tensor_layout yl = layout_for(ctx, ROLE_ACTIVATION, k->n, k->k, p, q);
    cudnnBackendDescriptor_t x = make_tensor(g, &xl, UID_X, false);
    cudnnBackendDescriptor_t w = make_tensor(g, &wl, UID_W, false);
    cudnnBackendDescriptor_t y = make_tensor(g, &yl, UID_Y, false);
    cudnnBackendDescriptor_t conv = make_conv_desc(g, ctx, k);
    cudnnBackendDescriptor_t ops[3];
    int n_ops = 0;
    plan->n_slots = 0;
    plan->slot_uid[plan->n_slots++] = UID_X;
    plan->slot_uid[plan->n_slots++] = UID_W;
    plan->slot_uid[plan->n_slots++] = UID_Y;
    if (k->bias) {
        /* conv -> (virtual) + b -> [(virtual) ReLU / ReLU6 ->] y. Intermediates
         * are virtual: they never reach memory, which is the point of fusing. */
        tensor_layout il = layout_for(ctx, ROLE_INTERMEDIATE, k->n, k->k, p, q);
        tensor_layout bl = layout_for(ctx, ROLE_BIAS, 1, k->k, 1, 1);
        cudnnBackendDescriptor_t conv_out = make_tensor(g, &il, UID_CONV_OUT, true);
        cudnnBackendDescriptor_t b = make_tensor(g, &bl, UID_B, false);
        plan->slot_uid[plan->n_slots++] = UID_B;
        ops[n_ops++] = make_conv_op(g, k, conv, x, w, conv_out);
        if (k->act != UNET_ACT_NONE) {
            /* no upper clip for ReLU: float's largest value */
            double upper = k->act == UNET_ACT_RELU6 ? 6.0 : FLT_MAX;
            cudnnBackendDescriptor_t bias_out = make_tensor(g, &il, UID_BIAS_OUT, true);
            ops[n_ops++] = make_pointwise_op(g, ctx, CUDNN_POINTWISE_ADD, 0.0, conv_out, b, bias_out);
            ops[n_ops++] = make_pointwise_op(g, ctx, CUDNN_POINTWISE_RELU_FWD, upper, bias_out, NULL, y);
        } else {
            ops[n_ops++] = make_pointwise_op(g, ctx, CUDNN_POINTWISE_ADD, 0.0, conv_out, b, y);
        }
    } else {
        ops[n_ops++] = make_conv_op(g, k, conv, x, w, y);
    }

    cudnnBackendDescriptor_t graph = CREATE(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops);
    /* Deprecated since cuDNN 9.8 (the device then comes from the current
     * context) but still honoured: naming the handle pins the graph to our device. */
    if (ctx->cudnn) SET(g, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &ctx->cudnn);
    cudnnStatus_t s = cudnnBackendFinalize(graph);
    if (s != CUDNN_STATUS_SUCCESS) {
        char last[512] = "";
        cudnnGetLastErrorString(last, sizeof last);
        snprintf(why, why_len, "the operation graph does not finalize: %s%s%s", cudnnGetErrorString(s),
                 last[0] ? ": " : "", last);
        return NULL;
    }
    return graph;
}

/* ---------------------------------------------------------------------------
 * Engine selection
 * ------------------------------------------------------------------------- */

static const char *note_name(cudnnBackendNumericalNote_t n) {
    switch (n) {
    case CUDNN_NUMERICAL_NOTE_TENSOR_CORE: return "tensor-core";
    case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: return "down-convert-inputs";
    case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: return "reduced-precision-reduction";
    case CUDNN_NUMERICAL_NOTE_FFT: return "fft";
    case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: return "nondeterministic";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD: return "winograd";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4: return "winograd-4x4";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6: return "winograd-6x6";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13: return "winograd-13x13";
    case CUDNN_NUMERICAL_NOTE_STRICT_NAN_PROP: return "strict-nan";
    default: return "other";
    }
}

/* Why an engine with these numerical notes may not run here, or NULL.
 *  - nondeterministic engines (atomics in reductions) unless the run allows them;
 *  - fp32 means pure float math: no tensor cores (TF32), and no FFT or
 *    Winograd, whose transforms round differently from a direct sum;
 *  - tf32 and bf16 take tensor cores, FFT and Winograd (their transforms
 *    round about as a tensor core does);
 *  - inputs are never down-converted below their type, and reductions are
 *    never carried in less than float (bf16 keeps float32 accumulation). */
static const char *rejection(const unet_cuda_ctx *ctx, const cudnnBackendNumericalNote_t *notes, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        switch (notes[i]) {
        case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
            if (ctx->deterministic) return "nondeterministic";
            break;
        case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
            if (ctx->precision == UNET_PREC_FP32) return "tensor cores (TF32) under fp32";
            break;
        case CUDNN_NUMERICAL_NOTE_FFT:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
            if (ctx->precision == UNET_PREC_FP32) return "FFT/Winograd under fp32";
            break;
        case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: return "down-converts float inputs";
        case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: return "reduced-precision reduction";
        default: break;
        }
    }
    return NULL;
}

/* Engines needing more scratch than this are taken only when nothing smaller
 * finalizes: the workspace is one buffer sized by the largest plan. */
#define WORKSPACE_SOFT_LIMIT ((int64_t)512 << 20)

typedef struct {
    cudnnBackendDescriptor_t plan, cfg, engine;
    int64_t workspace, engine_index;
    char notes[160];
} candidate;

static void drop_candidate(candidate *c) {
    if (c->plan) cudnnBackendDestroyDescriptor(c->plan);
    if (c->engine) cudnnBackendDestroyDescriptor(c->engine);
    if (c->cfg) cudnnBackendDestroyDescriptor(c->cfg);
    memset(c, 0, sizeof *c);
}

/* Why a configuration cannot be used, in why; drops it. */
static int unusable(candidate *c, char *why, size_t why_len, const char *what, cudnnStatus_t s) {
    char last[256] = "";
    cudnnGetLastErrorString(last, sizeof last);
    snprintf(why, why_len, "engine %lld: %s: %s%s%s", (long long)c->engine_index, what, cudnnGetErrorString(s),
             last[0] ? ": " : "", last);
    drop_candidate(c);
    return 0;
}

/* Tries one engine configuration. Returns 1 with *out filled when its notes
 * pass and its plan finalizes; takes ownership of cfg either way. Failures
 * here are cuDNN declining a configuration, reported in why: the caller
 * moves on to the next one, and aborts with the reasons when none is left. */
static int try_config(graph_builder *g, const unet_cuda_ctx *ctx, cudnnBackendDescriptor_t cfg, candidate *out,
                      int *rejected, char *why, size_t why_len) {
    candidate c;
    memset(&c, 0, sizeof c);
    c.cfg = cfg;
    c.engine_index = -1;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &c.engine);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(engine)", g->problem, g->a);
    int64_t count = 0;
    s = cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &c.engine);
    if (s != CUDNN_STATUS_SUCCESS) return unusable(&c, why, why_len, "reading CUDNN_ATTR_ENGINECFG_ENGINE", s);
    s = cudnnBackendGetAttribute(c.engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count,
                                 &c.engine_index);
    if (s != CUDNN_STATUS_SUCCESS) c.engine_index = -1; /* only used in messages */
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t n_notes = 0;
    s = cudnnBackendGetAttribute(c.engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_notes, notes);
    /* an engine whose notes cannot be read cannot be vetted: never run it */
    if (s != CUDNN_STATUS_SUCCESS) return unusable(&c, why, why_len, "reading CUDNN_ATTR_ENGINE_NUMERICAL_NOTE", s);
    if (n_notes > CUDNN_NUMERICAL_NOTE_TYPE_COUNT) n_notes = CUDNN_NUMERICAL_NOTE_TYPE_COUNT;
    size_t used = 0;
    c.notes[0] = '\0';
    for (int64_t i = 0; i < n_notes && used + 32 < sizeof c.notes; i++)
        used += (size_t)snprintf(c.notes + used, sizeof c.notes - used, "%s%s", i ? "," : "", note_name(notes[i]));
    const char *reject = rejection(ctx, notes, n_notes);
    if (reject) {
        (*rejected)++;
        snprintf(why, why_len, "engine %lld rejected: %s", (long long)c.engine_index, reject);
        drop_candidate(&c);
        return 0;
    }
    s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &c.plan);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(plan)", g->problem, g->a);
    s = cudnnBackendSetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &cfg);
    if (s != CUDNN_STATUS_SUCCESS) return unusable(&c, why, why_len, "setting the plan's engine config", s);
    s = cudnnBackendFinalize(c.plan);
    if (s != CUDNN_STATUS_SUCCESS) return unusable(&c, why, why_len, "the plan does not finalize", s);
    s = cudnnBackendGetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count,
                                 &c.workspace);
    if (s != CUDNN_STATUS_SUCCESS) return unusable(&c, why, why_len, "reading the plan's workspace size", s);
    if (c.workspace < 0) c.workspace = 0;
    *out = c;
    return 1;
}

/* Heuristics mode A ranks the engines for the graph; mode B (slower to ask,
 * more accurate) is asked when A yields nothing usable; the fallback mode
 * lists the engines that run almost anything. The first configuration, in that
 * order, whose notes pass and whose plan finalizes within the soft workspace
 * limit is taken; failing that, the first that finalized at all. Returns 0
 * when none does, with each mode's last reason in why. */
static int select_engine(graph_builder *g, const unet_cuda_ctx *ctx, cudnnBackendDescriptor_t graph, candidate *best,
                         char *why, size_t why_len) {
    static const cudnnBackendHeurMode_t modes[] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_B, CUDNN_HEUR_MODE_FALLBACK};
    static const char *const mode_names[] = {"A", "B", "FALLBACK"};
    memset(best, 0, sizeof *best);
    why[0] = '\0';
    int have = 0;
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        char mode_why[320] = "";
        int rejected = 0, tried = 0;
        cudnnBackendDescriptor_t heur = NULL;
        cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
        if (s != CUDNN_STATUS_SUCCESS)
            die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(heuristics)", g->problem, g->a);
        s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &graph);
        if (s != CUDNN_STATUS_SUCCESS)
            die(__FILE__, __LINE__, "cudnnBackendSetAttribute", s, "setting CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH",
                g->problem, g->a);
        s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m]);
        if (s != CUDNN_STATUS_SUCCESS)
            die(__FILE__, __LINE__, "cudnnBackendSetAttribute", s, "setting CUDNN_ATTR_ENGINEHEUR_MODE", g->problem,
                g->a);
        s = cudnnBackendFinalize(heur);
        cudnnBackendDescriptor_t *cfgs = NULL;
        int64_t n_cfg = 0, got = 0, i = 0;
        if (s != CUDNN_STATUS_SUCCESS) {
            char last[200] = "";
            cudnnGetLastErrorString(last, sizeof last);
            snprintf(mode_why, sizeof mode_why, "heuristics do not finalize: %s%s%s", cudnnGetErrorString(s),
                     last[0] ? ": " : "", last);
        } else {
            s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n_cfg,
                                         NULL);
            if (s != CUDNN_STATUS_SUCCESS) {
                snprintf(mode_why, sizeof mode_why, "counting the heuristic results: %s", cudnnGetErrorString(s));
                n_cfg = 0;
            }
            if (n_cfg > 0) {
                cfgs = calloc((size_t)n_cfg, sizeof *cfgs);
                if (!cfgs)
                    die(__FILE__, __LINE__, "calloc", CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED,
                        "allocating heuristic results", g->problem, g->a);
                for (int64_t j = 0; j < n_cfg; j++) {
                    s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[j]);
                    if (s != CUDNN_STATUS_SUCCESS)
                        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(engine config)", g->problem, g->a);
                }
                s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg,
                                             &got, cfgs);
                if (s != CUDNN_STATUS_SUCCESS) {
                    snprintf(mode_why, sizeof mode_why, "reading the heuristic results: %s", cudnnGetErrorString(s));
                    got = 0;
                }
                if (got > n_cfg) got = n_cfg;
            }
            if (got <= 0 && !mode_why[0]) snprintf(mode_why, sizeof mode_why, "heuristics list no engine");
        }
        for (; i < got; i++) {
            candidate c;
            tried++;
            if (!try_config(g, ctx, cfgs[i], &c, &rejected, mode_why, sizeof mode_why)) continue;
            if (!have) {
                *best = c;
                have = 1;
            } else if (best->workspace > WORKSPACE_SOFT_LIMIT && c.workspace <= WORKSPACE_SOFT_LIMIT) {
                drop_candidate(best);
                *best = c;
            } else {
                drop_candidate(&c);
            }
            if (best->workspace <= WORKSPACE_SOFT_LIMIT) {
                i++;
                break;
            }
        }
        for (; i < n_cfg; i++) cudnnBackendDestroyDescriptor(cfgs[i]); /* configs never tried */
        free(cfgs);
        cudnnBackendDestroyDescriptor(heur);
        size_t used = strlen(why);
        if (tried > 0 && rejected == tried)
            snprintf(why + used, why_len - used, "%smode %s: all %d configurations rejected by their notes (last: %s)",
                     used ? "; " : "", mode_names[m], tried, mode_why);
        else
            snprintf(why + used, why_len - used, "%smode %s: %s", used ? "; " : "", mode_names[m], mode_why);
        if (have && best->workspace <= WORKSPACE_SOFT_LIMIT) break;
    }
    return have;
}

/* ---------------------------------------------------------------------------
 * The cache
 * ------------------------------------------------------------------------- */

static struct unet_cudnn_cache *cache_of(unet_cuda_ctx *ctx) {
    if (!ctx->plans) {
        struct unet_cudnn_cache *c = calloc(1, sizeof *c);
        if (!c) unet_cuda_fail(__FILE__, __LINE__, "calloc", "out of host memory for the cuDNN plan cache", NULL);
        const char *log = getenv("UNET_CUDNN_LOG"), *nofuse = getenv("UNET_CUDNN_NOFUSE");
        c->log = log && *log && strcmp(log, "0") != 0;
        c->nofuse = nofuse && *nofuse && strcmp(nofuse, "0") != 0;
        ctx->plans = c;
    }
    return ctx->plans;
}

static unet_cudnn_plan *lookup(struct unet_cudnn_cache *c, const plan_key *k) {
    /* a model has tens of distinct convolution problems: a linear scan is cheaper than hashing them */
    for (int i = 0; i < c->n; i++)
        if (memcmp(&c->plans[i]->key, k, sizeof *k) == 0) return c->plans[i];
    return NULL;
}

static void insert(struct unet_cudnn_cache *c, unet_cudnn_plan *p) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 32;
        unet_cudnn_plan **grown = realloc(c->plans, (size_t)cap * sizeof *grown);
        if (!grown) unet_cuda_fail(__FILE__, __LINE__, "realloc", "out of host memory for the cuDNN plan cache", NULL);
        c->plans = grown;
        c->cap = cap;
    }
    c->plans[c->n++] = p;
}

static void check_problem(const plan_key *k, const char *problem, const unet_op_args *a) {
    const char *bad = NULL;
    if (k->n < 1 || k->c < 1 || k->h < 1 || k->w < 1 || k->k < 1 || k->r < 1 || k->stride < 1 || k->pad < 0)
        bad = "sizes must be positive";
    else if (k->groups != 1 && (k->groups != k->c || k->k != k->c))
        bad = "groups must be 1, or the input channels with as many output channels (depthwise)";
    else if (unet_conv_out_size(k->h, k->r, k->stride, k->pad) < 1 ||
             unet_conv_out_size(k->w, k->r, k->stride, k->pad) < 1)
        bad = "the filter is larger than the padded input";
    if (bad) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s: %s", problem, bad);
        unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_plan_build", msg, a);
    }
}

const unet_cudnn_plan *unet_cudnn_plan_build(unet_cuda_ctx *ctx, const unet_conv_problem *p, int required,
                                             const unet_op_args *a) {
    struct unet_cudnn_cache *cache = cache_of(ctx);
    plan_key k = key_of(ctx, p);
    unet_cudnn_plan *found = lookup(cache, &k);
    char problem[512];
    describe(&k, ctx->device, problem, sizeof problem);
    if (found) {
        if (!found->supported && required) {
            char msg[1024];
            snprintf(msg, sizeof msg, "no cuDNN engine runs %s (found when it was first built)", problem);
            unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_plan_build", msg, a);
        }
        return found->supported ? found : NULL;
    }
    check_problem(&k, problem, a);
    unet_cudnn_plan *plan = calloc(1, sizeof *plan);
    if (!plan) unet_cuda_fail(__FILE__, __LINE__, "calloc", "out of host memory for a cuDNN plan", a);
    plan->key = k;
    char why[1024] = "";
    int optional_graph = k.bias || k.accumulate;
    if (cache->nofuse && optional_graph && !required) {
        snprintf(why, sizeof why, "UNET_CUDNN_NOFUSE is set");
    } else {
        graph_builder g;
        memset(&g, 0, sizeof g);
        g.problem = problem;
        g.a = a;
        cudnnBackendDescriptor_t graph = make_graph(&g, ctx, &k, plan, why, sizeof why);
        candidate best;
        if (graph && select_engine(&g, ctx, graph, &best, why, sizeof why)) {
            plan->supported = 1;
            plan->plan = best.plan;
            plan->workspace = best.workspace;
            plan->engine_index = best.engine_index;
            memcpy(plan->keep, g.owned, (size_t)g.n_owned * sizeof g.owned[0]);
            plan->n_keep = g.n_owned;
            plan->keep[plan->n_keep++] = best.cfg;
            plan->keep[plan->n_keep++] = best.engine;
            if (cache->log)
                fprintf(stderr, "unet cudnn: %s -> engine %lld [%s], workspace %lld bytes\n", problem,
                        (long long)best.engine_index, best.notes, (long long)best.workspace);
        } else {
            for (int i = g.n_owned - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g.owned[i]);
        }
    }
    insert(cache, plan);
    if (!plan->supported) {
        if (required) {
            char msg[2048];
            snprintf(msg, sizeof msg, "no cuDNN engine runs %s: %s", problem, why);
            unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_plan_build", msg, a);
        }
        if (cache->log)
            fprintf(stderr, "unet cudnn: %s -> unsupported, the op takes its unfused path: %s\n", problem, why);
        return NULL;
    }
    return plan;
}

const unet_cudnn_plan *unet_cudnn_plan_find(unet_cuda_ctx *ctx, const unet_conv_problem *p, const unet_op_args *a) {
    plan_key k = key_of(ctx, p);
    unet_cudnn_plan *found = lookup(cache_of(ctx), &k);
    if (!found) {
        char problem[512], msg[1024];
        describe(&k, ctx->device, problem, sizeof problem);
        snprintf(msg, sizeof msg,
                 "no plan was built for %s: plans are built when the op's workspace_bytes is asked at compile time "
                 "with the same shapes",
                 problem);
        unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_plan_find", msg, a);
        return NULL;
    }
    return found->supported ? found : NULL;
}

size_t unet_cudnn_plan_workspace(const unet_cudnn_plan *plan) { return plan ? (size_t)plan->workspace : 0; }

static void check_pointer(const void *ptr, size_t alignment, const char *slot, const plan_key *k, int device,
                          const unet_op_args *a) {
    if (ptr && (uintptr_t)ptr % alignment == 0) return;
    char problem[512], msg[1024];
    describe(k, device, problem, sizeof problem);
    if (!ptr)
        snprintf(msg, sizeof msg, "%s: the %s tensor is NULL", problem, slot);
    else
        snprintf(msg, sizeof msg, "%s: the %s tensor at %p is not %zu-byte aligned as the plan assumes", problem, slot,
                 ptr, alignment);
    unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_execute", msg, a);
}

/* Also runs while a training step is captured as a CUDA graph
 * (src/host/train/step.c): nothing here allocates device memory or waits for
 * the device. The plan was built at compile time, the workspace is the
 * plan's, and the variant pack is host-side bookkeeping that may die once
 * cudnnBackendExecute has enqueued (or recorded) the engine's kernels. */
void unet_cudnn_execute(unet_cuda_ctx *ctx, const unet_cudnn_plan *plan, const unet_conv_tensors *t, void *workspace,
                        const unet_op_args *a) {
    if (!plan || !plan->supported) {
        /* a caller bug: plans that may be missing are checked before executing */
        unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_execute", "asked to execute a problem that has no cuDNN plan",
                       a);
        return;
    }
    const plan_key *k = &plan->key;
    void *ptrs[4];
    for (int i = 0; i < plan->n_slots; i++) {
        const void *ptr = NULL;
        size_t alignment = ACTIVATION_ALIGNMENT;
        const char *slot = "";
        switch (plan->slot_uid[i]) {
        case UID_X: ptr = t->x, slot = k->dir == UNET_CONV_DGRAD ? "dx" : "x"; break;
        case UID_W: ptr = t->w, slot = k->dir == UNET_CONV_WGRAD ? "dw" : "w", alignment = PARAM_ALIGNMENT; break;
        case UID_Y: ptr = t->y, slot = k->dir == UNET_CONV_FWD ? "y" : "dy"; break;
        case UID_B: ptr = t->b, slot = "bias", alignment = PARAM_ALIGNMENT; break;
        }
        check_pointer(ptr, alignment, slot, k, ctx->device, a);
        ptrs[i] = (void *)ptr;
    }
    if (plan->workspace > 0) check_pointer(workspace, ACTIVATION_ALIGNMENT, "workspace", k, ctx->device, a);

    char problem[512];
    problem[0] = '\0';
    cudnnStatus_t s = cudnnSetStream(ctx->cudnn, ctx->stream);
    if (s != CUDNN_STATUS_SUCCESS) {
        describe(k, ctx->device, problem, sizeof problem);
        die(__FILE__, __LINE__, "cudnnSetStream", s, "binding the backend's stream", problem, a);
    }
    cudnnBackendDescriptor_t pack = NULL;
    s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, plan->n_slots,
                                     ptrs);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, plan->n_slots,
                                     plan->slot_uid);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(pack);
    if (s != CUDNN_STATUS_SUCCESS) {
        describe(k, ctx->device, problem, sizeof problem);
        die(__FILE__, __LINE__, "cudnnBackend*(variant pack)", s, "building the variant pack", problem, a);
    }
    s = cudnnBackendExecute(ctx->cudnn, plan->plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    if (s != CUDNN_STATUS_SUCCESS) {
        describe(k, ctx->device, problem, sizeof problem);
        char what[128];
        snprintf(what, sizeof what, "executing engine %lld", (long long)plan->engine_index);
        die(__FILE__, __LINE__, "cudnnBackendExecute", s, what, problem, a);
    }
}

int unet_cudnn_graph_check(unet_precision precision, const unet_conv_problem *p, char *why, size_t why_len) {
    unet_cuda_ctx ctx;
    memset(&ctx, 0, sizeof ctx); /* no handle: the graph is not tied to a device */
    ctx.precision = precision;
    ctx.deterministic = 1;
    plan_key k = key_of(&ctx, p);
    char problem[512];
    describe(&k, -1, problem, sizeof problem);
    check_problem(&k, problem, NULL);
    graph_builder g;
    memset(&g, 0, sizeof g);
    g.problem = problem;
    unet_cudnn_plan scratch;
    memset(&scratch, 0, sizeof scratch);
    why[0] = '\0';
    int accepted = make_graph(&g, &ctx, &k, &scratch, why, why_len) != NULL;
    for (int i = g.n_owned - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g.owned[i]);
    return accepted;
}

void unet_cudnn_cache_free(struct unet_cudnn_cache *cache) {
    if (!cache) return;
    for (int i = 0; i < cache->n; i++) {
        unet_cudnn_plan *p = cache->plans[i];
        if (p->plan) cudnnBackendDestroyDescriptor(p->plan);
        for (int j = p->n_keep - 1; j >= 0; j--) cudnnBackendDestroyDescriptor(p->keep[j]);
        free(p);
    }
    free(cache->plans);
    free(cache);
}
