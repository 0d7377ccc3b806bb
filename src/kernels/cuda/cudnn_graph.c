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
 *   UNET_CUDNN_LOG=1     the cuDNN loaded, and one line per plan built: the
 *                        engines the heuristics offered (with their notes),
 *                        the one taken, its notes, workspace and the rules
 *                        it passed, the time the build took, and why a
 *                        fused graph fell back
 *   UNET_CUDNN_NOFUSE=1  never build fused or beta = 1 graphs: every op takes
 *                        its unfused path (conv alone + custom kernels) */
#include "kernels/cuda/cudnn_graph.h"

#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/layout.h"

/* ---------------------------------------------------------------------------
 * Layout: the one place that decides element types, memory order and
 * alignment of what cuDNN reads and writes.
 *
 * fp32 and tf32, --layout nchw (the default): NCHW float32, the CPU layout,
 * which keeps every CUDA op a direct twin of its CPU op; cuDNN reads the
 * weights and the bias where they are, in the parameter block.
 *
 * NHWC (src/kernels/cuda/layout.h): bf16, and fp32/tf32 with --layout nhwc.
 * Activations and their gradients are channels last, in bfloat16 or float32,
 * with the channels padded by zeros to whole 16 bytes (8 bf16, 4 floats), and
 * cuDNN is shown the padded channel count: the tensors are then packed NHWC,
 * the form the tensor-core engines take, and the padding adds nothing (zero
 * inputs, zero weights) and comes out zero (zero weights, zero bias). The
 * weights stay float32 master copies in the parameter block; a convolution
 * reads a copy in the activations' element type, padded the same way and laid
 * out KRSC (channels last), that the op makes in its workspace each step; the
 * weight gradient comes out in that form too and is converted into the
 * float32 gradient block by the op (in bf16, what PyTorch's autocast does:
 * bf16 weight gradients, float32 accumulation). The fused bias is such a copy
 * as well. Every reduction and fused pointwise step computes in float (the
 * compute type and the virtual intermediates), rounding once, to bf16 in
 * bf16, on the store.
 * ------------------------------------------------------------------------- */

/* The byte alignment each tensor is declared with: what is true of every
 * pointer passed, and what the tensor-core engines want (16: a vector of 8
 * bf16 or 4 floats). Activations come from the plan's arena (offsets aligned
 * to 256 bytes) or from cudaMalloc (256). Parameters and their gradients
 * start on 64-byte boundaries inside their blocks (graph.c pads each tensor
 * to 16 floats; the blocks come from cudaMalloc); the NHWC copies of weights
 * and biases live in the workspace, aligned like activations. The plan keeps
 * what it declared per slot, and every execution checks the pointers
 * against it (unet_cudnn_execute). */
enum { ACTIVATION_ALIGNMENT = 16, PARAM_ALIGNMENT = 16 };

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
static int is_nhwc(const unet_cuda_ctx *ctx) { return ctx->act_format != UNET_FMT_NCHW_F32; }

/* The alignment cuDNN may assume for a tensor of this role. */
static int64_t alignment_of(const unet_cuda_ctx *ctx, tensor_role role) {
    return (role == ROLE_FILTER || role == ROLE_BIAS) && !is_nhwc(ctx) ? PARAM_ALIGNMENT : ACTIVATION_ALIGNMENT;
}

/* Logical dims (n, c, h, w); filters (k, c / groups, r, s); biases (1, k, 1, 1). */
static tensor_layout layout_for(const unet_cuda_ctx *ctx, tensor_role role, int64_t n, int64_t c, int64_t h,
                                int64_t w) {
    tensor_layout l;
    l.alignment = alignment_of(ctx, role == ROLE_DEPTHWISE_FILTER ? ROLE_FILTER : role);
    if (is_nhwc(ctx)) {
        /* padded channels; a filter's (and the bias's) k is padded too, a depthwise filter's one
         * channel is not (each padding channel is a group of its own) */
        if (role == ROLE_FILTER || role == ROLE_DEPTHWISE_FILTER)
            n = unet_cuda_channels_in_memory(ctx->act_format, (int)n);
        if (role == ROLE_BIAS) n = 1;
        if (role != ROLE_DEPTHWISE_FILTER) c = unet_cuda_channels_in_memory(ctx->act_format, (int)c);
    }
    /* bf16 tensors in memory; float for the rest, and for every virtual intermediate */
    l.type = is_bf16(ctx) && role != ROLE_INTERMEDIATE ? CUDNN_DATA_BFLOAT16 : compute_type(ctx);
    l.dims[0] = n;
    l.dims[1] = c;
    l.dims[2] = h;
    l.dims[3] = w;
    /* NHWC: c fastest, then w, then h; NCHW: w fastest, then h, then c */
    int64_t sc = is_nhwc(ctx) ? 1 : h * w, sw = is_nhwc(ctx) ? c : 1;
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
    int precision, act_format, deterministic;
} plan_key;

struct unet_cudnn_plan {
    plan_key key;
    int supported;                 /* 0: no engine runs this graph (cached, so it is asked once) */
    cudnnBackendDescriptor_t plan; /* NULL when unsupported */
    int64_t workspace;
    int n_slots;
    int64_t slot_uid[4];       /* variant pack order: the non-virtual tensors */
    int64_t slot_alignment[4]; /* the byte alignment each was declared with */
    int64_t engine_index;
    int tier;             /* rule_tier: how far the engine rules bent to find it */
    int nondeterministic; /* its engine's notes say so */
    char notes[160];
    cudnnBackendDescriptor_t keep[32]; /* what the plan was built from: the graph's descriptors, config, engine */
    int n_keep;
};

struct unet_cudnn_cache {
    unet_cudnn_plan **plans; /* pointers: callers hold plans across cache growth */
    int n, cap;
    int log, nofuse;
    int nondeterministic; /* plans of a deterministic run that only a nondeterministic engine runs */
    char first_nondeterministic[512];
    char nondeterminism[768]; /* unet_cudnn_nondeterminism's answer */
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
    k.act_format = (int)ctx->act_format;
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
             "%s %s, %s, device %d",
             dir_name(k->dir), k->bias ? " + bias" : "",
             k->act == UNET_ACT_RELU    ? " + ReLU"
             : k->act == UNET_ACT_RELU6 ? " + ReLU6"
                                        : "",
             k->accumulate ? " accumulating (beta = 1)" : "", k->n, k->c, k->h, k->w, k->k,
             k->groups > 0 ? k->c / k->groups : 0, k->r, k->r, k->n, k->k, p, q, k->stride, k->pad, k->groups,
             precision_name(k->precision), k->act_format == UNET_FMT_NCHW_F32 ? "NCHW" : "NHWC",
             k->deterministic ? "deterministic" : "nondeterministic allowed", device);
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

#define CREATE(g, type)                      create_desc((g), (type), #type, __LINE__)
#define SET(g, d, name, type, count, values) set_attr((g), (d), (name), (type), (count), (values), #name, __LINE__)
#define FINALIZE(g, d, what)                 finalize_desc((g), (d), (what), __LINE__)

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
                                                  double upper, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                                                  cudnnBackendDescriptor_t y) {
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

/* A tensor the variant pack names, with the alignment its pointer is promised to have. */
static void add_slot(unet_cudnn_plan *plan, int64_t uid, const tensor_layout *l) {
    plan->slot_uid[plan->n_slots] = uid;
    plan->slot_alignment[plan->n_slots] = l->alignment;
    plan->n_slots++;
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
    add_slot(plan, UID_X, &xl);
    add_slot(plan, UID_W, &wl);
    add_slot(plan, UID_Y, &yl);
    if (k->bias) {
        /* conv -> (virtual) + b -> [(virtual) ReLU / ReLU6 ->] y. Intermediates
         * are virtual: they never reach memory, which is the point of fusing. */
        tensor_layout il = layout_for(ctx, ROLE_INTERMEDIATE, k->n, k->k, p, q);
        tensor_layout bl = layout_for(ctx, ROLE_BIAS, 1, k->k, 1, 1);
        cudnnBackendDescriptor_t conv_out = make_tensor(g, &il, UID_CONV_OUT, true);
        cudnnBackendDescriptor_t b = make_tensor(g, &bl, UID_B, false);
        add_slot(plan, UID_B, &bl);
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
    case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        return "tensor-core";
    case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
        return "down-convert-inputs";
    case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
        return "reduced-precision-reduction";
    case CUDNN_NUMERICAL_NOTE_FFT:
        return "fft";
    case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
        return "nondeterministic";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD:
        return "winograd";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
        return "winograd-4x4";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
        return "winograd-6x6";
    case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
        return "winograd-13x13";
    case CUDNN_NUMERICAL_NOTE_STRICT_NAN_PROP:
        return "strict-nan";
    default:
        return "other";
    }
}

/* How far the rules bend, tried in this order until an engine is found (a
 * graph the op can do without, a fused or beta = 1 one, is asked as asked
 * only: it has its unfused path):
 *  AS_ASKED          every rule of rejection();
 *  TRANSFORMS        fp32 also takes FFT and Winograd: still float32
 *                    arithmetic, rounded in another order (the kind of
 *                    difference another engine's order of summation makes),
 *                    and the same bits on every run;
 *  NONDETERMINISTIC  also engines whose sums change order from one run to
 *                    the next: float32 as asked, but not the same bits twice.
 *                    Said on stderr, and the backend reports the run as not
 *                    deterministic (unet_cudnn_nondeterminism).
 * Tensor cores under fp32 (TF32 inputs), down-converted inputs and
 * reduced-precision reductions are never taken: they change the precision
 * the run asked for, not only the order of its sums. */
typedef enum { TIER_AS_ASKED, TIER_TRANSFORMS, TIER_NONDETERMINISTIC, TIER_COUNT } rule_tier;

static const char *const tier_names[] = {"as asked", "bent to allow FFT/Winograd under fp32",
                                         "bent to allow nondeterministic engines"};

/* Why an engine with these numerical notes may not run here under a tier's rules, or NULL.
 *  - nondeterministic engines (atomics in reductions) unless the run allows them;
 *  - fp32 means pure float math: no tensor cores (TF32), and no FFT or
 *    Winograd, whose transforms round differently from a direct sum;
 *  - tf32 and bf16 take tensor cores, FFT and Winograd (their transforms
 *    round about as a tensor core does);
 *  - inputs are never down-converted below their type, and reductions are
 *    never carried in less than float (bf16 keeps float32 accumulation). */
static const char *rejection(const unet_cuda_ctx *ctx, const cudnnBackendNumericalNote_t *notes, int64_t n,
                             rule_tier tier) {
    for (int64_t i = 0; i < n; i++) {
        switch (notes[i]) {
        case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
            if (ctx->deterministic && tier < TIER_NONDETERMINISTIC) return "nondeterministic";
            break;
        case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
            if (ctx->precision == UNET_PREC_FP32) return "tensor cores (TF32) under fp32";
            break;
        case CUDNN_NUMERICAL_NOTE_FFT:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
        case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
            if (ctx->precision == UNET_PREC_FP32 && tier < TIER_TRANSFORMS) return "FFT/Winograd under fp32";
            break;
        case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
            return "down-converts float inputs";
        case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
            return "reduced-precision reduction";
        default:
            break;
        }
    }
    return NULL;
}

static int has_note(const cudnnBackendNumericalNote_t *notes, int64_t n, cudnnBackendNumericalNote_t note) {
    for (int64_t i = 0; i < n; i++)
        if (notes[i] == note) return 1;
    return 0;
}

/* Engines needing more scratch than this are taken only when nothing smaller
 * finalizes: the workspace is one buffer sized by the largest plan. */
#define WORKSPACE_SOFT_LIMIT ((int64_t)512 << 20)

/* One engine configuration the heuristics offered, with what its engine
 * says of its numerics. cfg and engine are NULL once a candidate owns them. */
typedef struct {
    cudnnBackendDescriptor_t cfg, engine;
    int64_t engine_index; /* -1 when it cannot be read (messages only) */
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t n_notes;
    int readable; /* 0: the notes could not be read, so it is never run (unreadable says why) */
    char unreadable[200];
    char note_text[160]; /* "tensor-core,fft": for the log and messages */
    int mode;            /* the heuristics mode that offered it */
} offer;

/* What the heuristics offered for a graph, asked mode by mode as needed:
 * mode A ranks the engines, mode B (slower to ask, more accurate) is asked
 * when A's yield nothing usable, the fallback mode lists the engines that
 * run almost anything. In each mode the heuristics order is cuDNN's guess at
 * the fastest first. */
typedef struct {
    offer *offers;
    int n, cap;
    int modes_asked;
    char mode_why[3][200]; /* a mode that offered nothing: why */
} offer_list;

static const cudnnBackendHeurMode_t heur_modes[] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_B, CUDNN_HEUR_MODE_FALLBACK};
static const char *const mode_names[] = {"A", "B", "FALLBACK"};
#define N_MODES ((int)(sizeof heur_modes / sizeof heur_modes[0]))

typedef struct {
    cudnnBackendDescriptor_t plan, cfg, engine;
    int64_t workspace, engine_index;
    int nondeterministic; /* the engine's notes say so */
    rule_tier tier;       /* the rules it passed */
    char notes[160];
} candidate;

static void drop_candidate(candidate *c) {
    if (c->plan) cudnnBackendDestroyDescriptor(c->plan);
    if (c->engine) cudnnBackendDestroyDescriptor(c->engine);
    if (c->cfg) cudnnBackendDestroyDescriptor(c->cfg);
    memset(c, 0, sizeof *c);
}

/* Reads an offered configuration's engine, its index and its notes. */
static void read_offer(graph_builder *g, offer *o) {
    o->engine_index = -1;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &o->engine);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(engine)", g->problem, g->a);
    int64_t count = 0;
    s = cudnnBackendGetAttribute(o->cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                                 &o->engine);
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(o->unreadable, sizeof o->unreadable, "reading CUDNN_ATTR_ENGINECFG_ENGINE: %s",
                 cudnnGetErrorString(s));
        return;
    }
    s = cudnnBackendGetAttribute(o->engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count,
                                 &o->engine_index);
    if (s != CUDNN_STATUS_SUCCESS) o->engine_index = -1; /* only used in messages */
    s = cudnnBackendGetAttribute(o->engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &o->n_notes, o->notes);
    /* an engine whose notes cannot be read cannot be vetted: never run it */
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(o->unreadable, sizeof o->unreadable, "reading CUDNN_ATTR_ENGINE_NUMERICAL_NOTE: %s",
                 cudnnGetErrorString(s));
        return;
    }
    if (o->n_notes > CUDNN_NUMERICAL_NOTE_TYPE_COUNT) o->n_notes = CUDNN_NUMERICAL_NOTE_TYPE_COUNT;
    size_t used = 0;
    for (int64_t i = 0; i < o->n_notes && used + 32 < sizeof o->note_text; i++)
        used += (size_t)snprintf(o->note_text + used, sizeof o->note_text - used, "%s%s", i ? "," : "",
                                 note_name(o->notes[i]));
    o->readable = 1;
}

static void add_offer(graph_builder *g, offer_list *l, cudnnBackendDescriptor_t cfg, int mode) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        offer *grown = realloc(l->offers, (size_t)cap * sizeof *grown);
        if (!grown)
            die(__FILE__, __LINE__, "realloc", CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED,
                "keeping the heuristic results", g->problem, g->a);
        l->offers = grown;
        l->cap = cap;
    }
    offer *o = &l->offers[l->n++];
    memset(o, 0, sizeof *o);
    o->cfg = cfg;
    o->mode = mode;
    read_offer(g, o);
}

/* Asks the heuristics of mode m for the graph and appends what they offer;
 * a mode that offers nothing says why in l->mode_why[m]. */
static void ask_mode(graph_builder *g, cudnnBackendDescriptor_t graph, offer_list *l, int m) {
    char *why = l->mode_why[m];
    cudnnBackendDescriptor_t heur = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(heuristics)", g->problem, g->a);
    s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendSetAttribute", s, "setting CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH",
            g->problem, g->a);
    s = cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &heur_modes[m]);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendSetAttribute", s, "setting CUDNN_ATTR_ENGINEHEUR_MODE", g->problem, g->a);
    int64_t n_cfg = 0, got = 0;
    cudnnBackendDescriptor_t *cfgs = NULL;
    s = cudnnBackendFinalize(heur);
    if (s != CUDNN_STATUS_SUCCESS) {
        char last[200] = "";
        cudnnGetLastErrorString(last, sizeof last);
        snprintf(why, sizeof l->mode_why[m], "heuristics do not finalize: %s%s%s", cudnnGetErrorString(s),
                 last[0] ? ": " : "", last);
    } else if ((s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                             &n_cfg, NULL)) != CUDNN_STATUS_SUCCESS) {
        snprintf(why, sizeof l->mode_why[m], "counting the heuristic results: %s", cudnnGetErrorString(s));
    } else if (n_cfg > 0) {
        cfgs = calloc((size_t)n_cfg, sizeof *cfgs);
        if (!cfgs)
            die(__FILE__, __LINE__, "calloc", CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED,
                "allocating heuristic results", g->problem, g->a);
        for (int64_t j = 0; j < n_cfg; j++) {
            s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[j]);
            if (s != CUDNN_STATUS_SUCCESS)
                die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(engine config)", g->problem, g->a);
        }
        s = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg, &got,
                                     cfgs);
        if (s != CUDNN_STATUS_SUCCESS) {
            snprintf(why, sizeof l->mode_why[m], "reading the heuristic results: %s", cudnnGetErrorString(s));
            got = 0;
        }
        if (got > n_cfg) got = n_cfg;
    }
    if (got <= 0 && !why[0]) snprintf(why, sizeof l->mode_why[m], "heuristics list no engine");
    for (int64_t j = 0; j < n_cfg; j++) {
        if (j < got)
            add_offer(g, l, cfgs[j], m);
        else
            cudnnBackendDestroyDescriptor(cfgs[j]);
    }
    free(cfgs);
    cudnnBackendDestroyDescriptor(heur);
    l->modes_asked = m + 1;
}

static void free_offers(offer_list *l) {
    for (int i = 0; i < l->n; i++) {
        if (l->offers[i].engine) cudnnBackendDestroyDescriptor(l->offers[i].engine);
        if (l->offers[i].cfg) cudnnBackendDestroyDescriptor(l->offers[i].cfg);
    }
    free(l->offers);
    memset(l, 0, sizeof *l);
}

/* Builds the plan of an offer that passes a tier's rules: 1 with *out owning
 * its descriptors, else 0 with the reason in why (a rejection by the notes,
 * or cuDNN declining the configuration: the caller moves on). */
static int try_offer(graph_builder *g, const unet_cuda_ctx *ctx, offer *o, rule_tier tier, candidate *out, char *why,
                     size_t why_len) {
    if (!o->cfg) {
        snprintf(why, why_len, "taken");
        return 0;
    }
    if (!o->readable) {
        snprintf(why, why_len, "%s", o->unreadable);
        return 0;
    }
    const char *reject = rejection(ctx, o->notes, o->n_notes, tier);
    if (reject) {
        snprintf(why, why_len, "rejected: %s", reject);
        return 0;
    }
    cudnnBackendDescriptor_t plan = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
    if (s != CUDNN_STATUS_SUCCESS)
        die(__FILE__, __LINE__, "cudnnBackendCreateDescriptor", s, "(plan)", g->problem, g->a);
    const char *what = "setting the plan's engine config";
    int64_t workspace = 0, count = 0;
    s = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &o->cfg);
    /* cuDNN before 9.8 refuses a plan without its handle (9.8 deprecated it
     * in favour of the current context); the runtime may be any 9.x from
     * UNET_CUDNN_MIN_VERSION on, so every plan names it */
    if (s == CUDNN_STATUS_SUCCESS)
        what = "setting the plan's handle",
        s = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &ctx->cudnn);
    if (s == CUDNN_STATUS_SUCCESS) what = "the plan does not finalize", s = cudnnBackendFinalize(plan);
    if (s == CUDNN_STATUS_SUCCESS)
        what = "reading the plan's workspace size",
        s = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count,
                                     &workspace);
    if (s != CUDNN_STATUS_SUCCESS) {
        char last[256] = "";
        cudnnGetLastErrorString(last, sizeof last);
        snprintf(why, why_len, "%s: %s%s%s", what, cudnnGetErrorString(s), last[0] ? ": " : "", last);
        cudnnBackendDestroyDescriptor(plan);
        return 0;
    }
    memset(out, 0, sizeof *out);
    out->plan = plan;
    out->cfg = o->cfg;
    out->engine = o->engine;
    o->cfg = o->engine = NULL;
    out->workspace = workspace < 0 ? 0 : workspace;
    out->engine_index = o->engine_index;
    out->nondeterministic = has_note(o->notes, o->n_notes, CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC);
    out->tier = tier;
    snprintf(out->notes, sizeof out->notes, "%s", o->note_text);
    return 1;
}

/* What the log says of the engines offered: "A: 5[notes] why, ...; B: ...". */
static void append_offers(const offer_list *l, char *buf, size_t len) {
    for (int m = 0; m < l->modes_asked; m++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%s:", m ? "; " : "", mode_names[m]);
        int any = 0;
        for (int i = 0; i < l->n; i++) {
            const offer *o = &l->offers[i];
            if (o->mode != m) continue;
            used = strlen(buf);
            snprintf(buf + used, len - used, "%s %lld[%s]", any ? "," : "", (long long)o->engine_index, o->note_text);
            any = 1;
        }
        if (!any) {
            used = strlen(buf);
            snprintf(buf + used, len - used, " none (%s)", l->mode_why[m]);
        }
    }
}

/* The first offer, in the heuristics' order (mode by mode), that passes a
 * tier's rules and whose plan finalizes within the soft workspace limit;
 * failing that, the first that finalized at all. Asks further modes of the
 * heuristics while nothing within the limit is found. Returns 0 when no
 * offer does, with each refusal in why. */
static int select_in_tier(graph_builder *g, const unet_cuda_ctx *ctx, cudnnBackendDescriptor_t graph, offer_list *l,
                          rule_tier tier, candidate *best, char *why, size_t why_len) {
    int have = 0, refusals = 0;
    memset(best, 0, sizeof *best);
    for (int i = 0;; i++) {
        if (i == l->n) {
            if (l->modes_asked == N_MODES) break;
            ask_mode(g, graph, l, l->modes_asked);
            i--;
            continue;
        }
        candidate c;
        char reason[400];
        if (!try_offer(g, ctx, &l->offers[i], tier, &c, reason, sizeof reason)) {
            size_t used = strlen(why);
            if (strcmp(reason, "taken") != 0 && used + 1 < why_len)
                snprintf(why + used, why_len - used, "%smode %s engine %lld %s", refusals++ ? "; " : "",
                         mode_names[l->offers[i].mode], (long long)l->offers[i].engine_index, reason);
            continue;
        }
        if (!have) {
            *best = c;
            have = 1;
        } else if (best->workspace > WORKSPACE_SOFT_LIMIT && c.workspace <= WORKSPACE_SOFT_LIMIT) {
            drop_candidate(best);
            *best = c;
        } else {
            drop_candidate(&c);
        }
        if (best->workspace <= WORKSPACE_SOFT_LIMIT) break;
    }
    if (!have && !refusals) {
        size_t used = strlen(why);
        snprintf(why + used, why_len - used, "no engine offered (");
        append_offers(l, why, why_len);
        used = strlen(why);
        snprintf(why + used, why_len - used, ")");
    }
    return have;
}

/* The engine for a graph: the rules as asked first; for a required graph,
 * bent tier by tier (rule_tier) until an engine is found. log: what was
 * offered, for UNET_CUDNN_LOG. Returns 0 when nothing runs the graph, with
 * the refusals in why. */
static int select_engine(graph_builder *g, const unet_cuda_ctx *ctx, cudnnBackendDescriptor_t graph, int required,
                         candidate *best, char *why, size_t why_len, char *log, size_t log_len) {
    offer_list l;
    memset(&l, 0, sizeof l);
    why[0] = '\0';
    int have = 0;
    for (int tier = TIER_AS_ASKED; tier < TIER_COUNT && !have; tier++) {
        if (tier > TIER_AS_ASKED && !required) break;
        if (tier == TIER_NONDETERMINISTIC && !ctx->deterministic) break; /* already allowed */
        /* the refusals under the last rules tried are the ones that tell */
        snprintf(why, why_len, "under the rules %s: ", tier_names[tier]);
        have = select_in_tier(g, ctx, graph, &l, (rule_tier)tier, best, why, why_len);
    }
    log[0] = '\0';
    append_offers(&l, log, log_len);
    free_offers(&l);
    return have;
}

/* ---------------------------------------------------------------------------
 * The runtime's version
 * ------------------------------------------------------------------------- */

#if CUDNN_VERSION < UNET_CUDNN_MIN_VERSION
#error "the CUDA backend needs cuDNN 9.0 or newer headers (cudnn_graph.h: UNET_CUDNN_MIN_VERSION)"
#endif

/* cudnnGetVersion() as major.minor.patch: 9.x counts major * 10000 + minor * 100 + patch, 8.x and earlier
 * major * 1000 + minor * 100 + patch. */
static void version_text(size_t v, char *buf, size_t len) {
    if (v >= 10000)
        snprintf(buf, len, "%zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
    else
        snprintf(buf, len, "%zu.%zu.%zu", v / 1000, v / 100 % 10, v % 100);
}

int unet_cudnn_check_version(char *err, size_t errlen) {
    size_t found = cudnnGetVersion();
    size_t major = found >= 10000 ? found / 10000 : found / 1000;
    if (major == CUDNN_MAJOR && found >= UNET_CUDNN_MIN_VERSION) return 0;
    char have[32], oldest[32], built[32];
    version_text(found, have, sizeof have);
    version_text(UNET_CUDNN_MIN_VERSION, oldest, sizeof oldest);
    version_text(CUDNN_VERSION, built, sizeof built);
    snprintf(err, errlen,
             "cuDNN %s is loaded, but this unet needs cuDNN %d.x from %s on (built against %s): put such a cuDNN's "
             "lib directory first on LD_LIBRARY_PATH",
             have, CUDNN_MAJOR, oldest, built);
    return -1;
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
        if (c->log) {
            char have[32], built[32];
            version_text(cudnnGetVersion(), have, sizeof have);
            version_text(CUDNN_VERSION, built, sizeof built);
            fprintf(stderr, "unet cudnn: cuDNN %s loaded (built against %s)\n", have, built);
        }
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

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Builds the graph of plan->key and picks its engine: plan->supported says
 * whether one runs it, why says why not; log gets what was offered. */
static void build_plan(unet_cuda_ctx *ctx, unet_cudnn_plan *plan, int required, const char *problem,
                       const unet_op_args *a, char *why, size_t why_len, char *log, size_t log_len) {
    graph_builder g;
    memset(&g, 0, sizeof g);
    g.problem = problem;
    g.a = a;
    cudnnBackendDescriptor_t graph = make_graph(&g, ctx, &plan->key, plan, why, why_len);
    candidate best;
    if (!graph || !select_engine(&g, ctx, graph, required, &best, why, why_len, log, log_len)) {
        for (int i = g.n_owned - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g.owned[i]);
        return;
    }
    plan->supported = 1;
    plan->plan = best.plan;
    plan->workspace = best.workspace;
    plan->engine_index = best.engine_index;
    plan->tier = (int)best.tier;
    plan->nondeterministic = best.nondeterministic;
    snprintf(plan->notes, sizeof plan->notes, "%s", best.notes);
    memcpy(plan->keep, g.owned, (size_t)g.n_owned * sizeof g.owned[0]);
    plan->n_keep = g.n_owned;
    plan->keep[plan->n_keep++] = best.cfg;
    plan->keep[plan->n_keep++] = best.engine;
}

/* What a new plan tells: under UNET_CUDNN_LOG one line per graph (the
 * engines offered, the one taken with its notes, the build time); always,
 * one line when a deterministic run had to take a nondeterministic engine,
 * which the backend then reports (unet_cudnn_nondeterminism). */
static void report_plan(struct unet_cudnn_cache *cache, const unet_cudnn_plan *plan, const unet_cuda_ctx *ctx,
                        const char *problem, const char *why, const char *offered, double ms) {
    if (cache->log) {
        if (plan->supported)
            fprintf(stderr,
                    "unet cudnn: %s -> engine %lld [%s] (rules %s), workspace %lld bytes; plan built in %.1f ms; "
                    "offered %s\n",
                    problem, (long long)plan->engine_index, plan->notes, tier_names[plan->tier],
                    (long long)plan->workspace, ms, offered);
        else
            fprintf(stderr, "unet cudnn: %s -> no engine (%s); %.1f ms; offered %s\n", problem, why, ms, offered);
    }
    if (plan->supported && plan->nondeterministic && ctx->deterministic) {
        fprintf(stderr,
                "unet cudnn: no deterministic cuDNN engine runs %s: engine %lld [%s] runs it, so this run "
                "is not deterministic (two runs may differ in the last bits)\n",
                problem, (long long)plan->engine_index, plan->notes);
        if (!cache->nondeterministic++)
            snprintf(cache->first_nondeterministic, sizeof cache->first_nondeterministic, "%s", problem);
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
    char why[2048] = "", offered[1024] = "";
    double t0 = now_ms();
    if (cache->nofuse && (k.bias || k.accumulate) && !required)
        snprintf(why, sizeof why, "UNET_CUDNN_NOFUSE is set");
    else
        build_plan(ctx, plan, required, problem, a, why, sizeof why, offered, sizeof offered);
    insert(cache, plan);
    report_plan(cache, plan, ctx, problem, why, offered, now_ms() - t0);
    if (!plan->supported && required) {
        char msg[3072];
        snprintf(msg, sizeof msg, "no cuDNN engine runs %s: %s", problem, why);
        unet_cuda_fail(__FILE__, __LINE__, "unet_cudnn_plan_build", msg, a);
    }
    return plan->supported ? plan : NULL;
}

const char *unet_cudnn_nondeterminism(unet_cuda_ctx *ctx) {
    struct unet_cudnn_cache *c = ctx->plans;
    if (!c || !c->nondeterministic) return NULL;
    snprintf(c->nondeterminism, sizeof c->nondeterminism,
             "not deterministic: %d convolution(s) had no deterministic cuDNN engine (the first: %s)",
             c->nondeterministic, c->first_nondeterministic);
    return c->nondeterminism;
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
        const char *slot = "";
        switch (plan->slot_uid[i]) {
        case UID_X:
            ptr = t->x, slot = k->dir == UNET_CONV_DGRAD ? "dx" : "x";
            break;
        case UID_W:
            ptr = t->w, slot = k->dir == UNET_CONV_WGRAD ? "dw" : "w";
            break;
        case UID_Y:
            ptr = t->y, slot = k->dir == UNET_CONV_FWD ? "y" : "dy";
            break;
        case UID_B:
            ptr = t->b, slot = "bias";
            break;
        }
        /* what the plan was promised, not less: an engine may load 16 bytes at a time */
        check_pointer(ptr, (size_t)plan->slot_alignment[i], slot, k, ctx->device, a);
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

int unet_cudnn_graph_check(unet_precision precision, unet_cuda_format format, const unet_conv_problem *p, char *why,
                           size_t why_len) {
    unet_cuda_ctx ctx;
    memset(&ctx, 0, sizeof ctx); /* no handle: the graph is not tied to a device */
    ctx.precision = precision;
    ctx.act_format = format;
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
