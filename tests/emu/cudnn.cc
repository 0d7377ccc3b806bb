/* The CUDA emulator's cuDNN graph (backend) API (tests/emu/README.md).
 *
 * Descriptors hold their attributes as set, checked against what each
 * descriptor type takes (attribute, value type, count); finalizing checks
 * what a real cuDNN checks where that is cheap: required attributes,
 * tensor strides consistent with their dims (no two elements at one
 * address), byte alignment a power of two and at least an element,
 * convolution shapes (x, w and y agree with the paddings, strides and
 * dilations; a filter of C / G channels makes G groups, as in cuDNN), pointwise shapes (b broadcasts to x, y is x's shape),
 * distinct unique ids, virtual tensors produced and consumed inside the
 * graph and never handed to the variant pack. Executing checks every
 * pointer against its tensor's alignment and the device allocation that
 * must hold the whole tensor (and the workspace), and fills the
 * workspace with 0xff first, so that a caller who keeps data there loses it.
 *
 * Engines (the heuristics list them by mode; a graph with pointwise nodes
 * gets only the fused engine, which has tensor cores, as the real runtime
 * fusion engines do, so fp32 never fuses and takes its fallback path):
 *   0  tensor cores: float inputs rounded to TF32, float accumulation
 *   1  atomics: NONDETERMINISTIC, float accumulation in an order that
 *      changes from one execution to the next; no beta = 1
 *   2  direct: no notes, double accumulation, rounded once
 *   3  FFT (forward only): float accumulation
 *   5  down-converting tensor cores: DOWN_CONVERT_INPUTS, never usable here
 *   6  runtime fusion: tensor cores, the only engine of fused graphs
 * The convolution is a naive loop over logical (n, c, h, w) elements, read
 * and written through each tensor's own dims, strides and type (float32 or
 * bf16), independent of the CPU backend's convolution. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "cudnn.h"
#include "emu_runtime.h"

namespace {

using unet_emu::device_lock;
#define LOCKED std::lock_guard<std::recursive_mutex> guard_(device_lock())

thread_local std::string last_error;

cudnnStatus_t bad(cudnnStatus_t s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudnnStatus_t bad(cudnnStatus_t s, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    last_error = std::string("(emulated cuDNN) ") + buf;
    return s;
}

struct attr_value {
    cudnnBackendAttributeType_t type;
    std::vector<unsigned char> bytes;
    int64_t count;
};

struct desc;

struct tensor_info {
    cudnnDataType_t type;
    std::vector<int64_t> dims, strides;
    int64_t uid, alignment;
    bool is_virtual;
};

enum op_kind { OP_FWD, OP_DGRAD, OP_WGRAD, OP_POINTWISE };

/* An operation node, after finalize: its tensors by role. */
struct op_info {
    op_kind kind;
    desc *x, *w, *y; /* convolutions: x, w, y of the forward problem (dx, dw, dy by direction) */
    desc *conv;
    double alpha, beta;
    /* pointwise */
    desc *pw_x, *pw_b, *pw_y;
    cudnnPointwiseMode_t mode;
    double lower, upper, slope, alpha1, alpha2;
};

struct engine_kind {
    int64_t index;
    const char *name;
    std::vector<cudnnBackendNumericalNote_t> notes;
    bool tf32_inputs, float_accumulation, alternating, beta_ok, fused;
};

const engine_kind ENGINES[] = {
    {0, "tensor cores", {CUDNN_NUMERICAL_NOTE_TENSOR_CORE}, true, true, false, true, false},
    {1, "atomics", {CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC}, false, true, true, false, false},
    {2, "direct", {}, false, false, false, true, false},
    {3, "FFT", {CUDNN_NUMERICAL_NOTE_FFT}, false, true, false, true, false},
    {5, "down-converting tensor cores",
     {CUDNN_NUMERICAL_NOTE_TENSOR_CORE, CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS}, true, true, false, true, true},
    {6, "runtime fusion", {CUDNN_NUMERICAL_NOTE_TENSOR_CORE}, true, true, false, true, true},
};

const engine_kind *engine_by_index(int64_t i) {
    for (const engine_kind &e : ENGINES)
        if (e.index == i) return &e;
    return nullptr;
}

const uint32_t MAGIC = 0x0c0d1e55u;

struct desc {
    uint32_t magic = MAGIC;
    cudnnBackendDescriptorType_t type;
    bool finalized = false;
    std::map<int, attr_value> attrs;
    /* after finalize, by type */
    tensor_info tensor;
    op_info op;
    std::vector<desc *> ops;      /* operation graph: in execution order */
    cudnnHandle_t handle = nullptr; /* operation graph, plan */
    std::vector<desc *> results;  /* heuristics: engine configs (owned) */
    int64_t engine = -1;          /* engine, engine config, plan */
    desc *graph = nullptr;        /* engine, engine config, plan */
    int64_t workspace = 0;        /* plan */
    std::vector<int64_t> uids;    /* variant pack */
    std::vector<void *> pointers;
    void *workspace_ptr = nullptr;
};

std::set<desc *> &live() {
    static std::set<desc *> s;
    return s;
}

desc *as_desc(cudnnBackendDescriptor_t d) {
    desc *p = (desc *)d;
    return p && live().count(p) ? p : nullptr;
}

/* ---------------------------------------------------------------------------
 * Attributes each descriptor type takes
 * ------------------------------------------------------------------------- */

struct attr_rule {
    cudnnBackendDescriptorType_t desc_type;
    cudnnBackendAttributeName_t name;
    cudnnBackendAttributeType_t type, alt_type; /* alt: a second accepted value type (float or double scalars) */
    int64_t max_count;                          /* 1: a scalar */
    int target;                                 /* descriptor-valued: the type it must point at (-1: any op) */
};

#define T(x) CUDNN_BACKEND_##x##_DESCRIPTOR
#define A(x) CUDNN_ATTR_##x
#define V(x) CUDNN_TYPE_##x
const attr_rule RULES[] = {
    {T(TENSOR), A(TENSOR_DATA_TYPE), V(DATA_TYPE), V(DATA_TYPE), 1, 0},
    {T(TENSOR), A(TENSOR_DIMENSIONS), V(INT64), V(INT64), 8, 0},
    {T(TENSOR), A(TENSOR_STRIDES), V(INT64), V(INT64), 8, 0},
    {T(TENSOR), A(TENSOR_UNIQUE_ID), V(INT64), V(INT64), 1, 0},
    {T(TENSOR), A(TENSOR_BYTE_ALIGNMENT), V(INT64), V(INT64), 1, 0},
    {T(TENSOR), A(TENSOR_IS_VIRTUAL), V(BOOLEAN), V(BOOLEAN), 1, 0},
    {T(TENSOR), A(TENSOR_IS_BY_VALUE), V(BOOLEAN), V(BOOLEAN), 1, 0},
    {T(CONVOLUTION), A(CONVOLUTION_COMP_TYPE), V(DATA_TYPE), V(DATA_TYPE), 1, 0},
    {T(CONVOLUTION), A(CONVOLUTION_CONV_MODE), V(CONVOLUTION_MODE), V(CONVOLUTION_MODE), 1, 0},
    {T(CONVOLUTION), A(CONVOLUTION_SPATIAL_DIMS), V(INT64), V(INT64), 1, 0},
    {T(CONVOLUTION), A(CONVOLUTION_PRE_PADDINGS), V(INT64), V(INT64), 3, 0},
    {T(CONVOLUTION), A(CONVOLUTION_POST_PADDINGS), V(INT64), V(INT64), 3, 0},
    {T(CONVOLUTION), A(CONVOLUTION_DILATIONS), V(INT64), V(INT64), 3, 0},
    {T(CONVOLUTION), A(CONVOLUTION_FILTER_STRIDES), V(INT64), V(INT64), 3, 0},
    {T(POINTWISE), A(POINTWISE_MODE), V(POINTWISE_MODE), V(POINTWISE_MODE), 1, 0},
    {T(POINTWISE), A(POINTWISE_MATH_PREC), V(DATA_TYPE), V(DATA_TYPE), 1, 0},
    {T(POINTWISE), A(POINTWISE_NAN_PROPAGATION), V(NAN_PROPOGATION), V(NAN_PROPOGATION), 1, 0},
    {T(POINTWISE), A(POINTWISE_RELU_LOWER_CLIP), V(DOUBLE), V(FLOAT), 1, 0},
    {T(POINTWISE), A(POINTWISE_RELU_UPPER_CLIP), V(DOUBLE), V(FLOAT), 1, 0},
    {T(POINTWISE), A(POINTWISE_RELU_LOWER_CLIP_SLOPE), V(DOUBLE), V(FLOAT), 1, 0},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_ALPHA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_BETA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_CONV_DESC), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_X), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_W), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_FORWARD), A(OPERATION_CONVOLUTION_FORWARD_Y), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_ALPHA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_BETA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_DX), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_W), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_DATA), A(OPERATION_CONVOLUTION_BWD_DATA_DY), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_ALPHA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_BETA), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(CONVOLUTION)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_X), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_DW), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_CONVOLUTION_BACKWARD_FILTER), A(OPERATION_CONVOLUTION_BWD_FILTER_DY), V(BACKEND_DESCRIPTOR),
     V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_PW_DESCRIPTOR), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1,
     T(POINTWISE)},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_XDESC), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_BDESC), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_YDESC), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(TENSOR)},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_ALPHA1), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATION_POINTWISE), A(OPERATION_POINTWISE_ALPHA2), V(FLOAT), V(DOUBLE), 1, 0},
    {T(OPERATIONGRAPH), A(OPERATIONGRAPH_HANDLE), V(HANDLE), V(HANDLE), 1, 0},
    {T(OPERATIONGRAPH), A(OPERATIONGRAPH_OPS), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 64, -1},
    {T(ENGINEHEUR), A(ENGINEHEUR_OPERATION_GRAPH), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(OPERATIONGRAPH)},
    {T(ENGINEHEUR), A(ENGINEHEUR_MODE), V(HEUR_MODE), V(HEUR_MODE), 1, 0},
    {T(ENGINECFG), A(ENGINECFG_ENGINE), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(ENGINE)},
    {T(ENGINE), A(ENGINE_OPERATION_GRAPH), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(OPERATIONGRAPH)},
    {T(ENGINE), A(ENGINE_GLOBAL_INDEX), V(INT64), V(INT64), 1, 0},
    {T(EXECUTION_PLAN), A(EXECUTION_PLAN_HANDLE), V(HANDLE), V(HANDLE), 1, 0},
    {T(EXECUTION_PLAN), A(EXECUTION_PLAN_ENGINE_CONFIG), V(BACKEND_DESCRIPTOR), V(BACKEND_DESCRIPTOR), 1, T(ENGINECFG)},
    {T(VARIANT_PACK), A(VARIANT_PACK_UNIQUE_IDS), V(INT64), V(INT64), 64, 0},
    {T(VARIANT_PACK), A(VARIANT_PACK_DATA_POINTERS), V(VOID_PTR), V(VOID_PTR), 64, 0},
    {T(VARIANT_PACK), A(VARIANT_PACK_WORKSPACE), V(VOID_PTR), V(VOID_PTR), 1, 0},
};
#undef T
#undef A
#undef V

const attr_rule *rule_for(cudnnBackendDescriptorType_t t, cudnnBackendAttributeName_t n) {
    for (const attr_rule &r : RULES)
        if (r.desc_type == t && r.name == n) return &r;
    return nullptr;
}

size_t type_size(cudnnBackendAttributeType_t t) {
    switch (t) {
    case CUDNN_TYPE_INT64: return 8;
    case CUDNN_TYPE_DOUBLE: return 8;
    case CUDNN_TYPE_FLOAT: return 4;
    case CUDNN_TYPE_BOOLEAN: return sizeof(bool);
    case CUDNN_TYPE_VOID_PTR:
    case CUDNN_TYPE_HANDLE:
    case CUDNN_TYPE_BACKEND_DESCRIPTOR: return sizeof(void *);
    default: return sizeof(int); /* the enum-valued types */
    }
}

/* ---------------------------------------------------------------------------
 * Reading attributes back, inside the emulator
 * ------------------------------------------------------------------------- */

const attr_value *get(const desc *d, cudnnBackendAttributeName_t n) {
    auto it = d->attrs.find((int)n);
    return it == d->attrs.end() ? nullptr : &it->second;
}

int64_t get_i64(const desc *d, cudnnBackendAttributeName_t n, int64_t i = 0) {
    int64_t v;
    memcpy(&v, get(d, n)->bytes.data() + 8 * i, 8);
    return v;
}

int get_enum(const desc *d, cudnnBackendAttributeName_t n) {
    int v;
    memcpy(&v, get(d, n)->bytes.data(), sizeof v);
    return v;
}

double get_real(const desc *d, cudnnBackendAttributeName_t n, double fallback) {
    const attr_value *a = get(d, n);
    if (!a) return fallback;
    if (a->type == CUDNN_TYPE_FLOAT) {
        float f;
        memcpy(&f, a->bytes.data(), 4);
        return f;
    }
    double v;
    memcpy(&v, a->bytes.data(), 8);
    return v;
}

desc *get_desc(const desc *d, cudnnBackendAttributeName_t n, int64_t i = 0) {
    const attr_value *a = get(d, n);
    if (!a || i >= a->count) return nullptr;
    void *p;
    memcpy(&p, a->bytes.data() + sizeof(void *) * i, sizeof p);
    return (desc *)p;
}

const char *missing(const desc *d, std::initializer_list<cudnnBackendAttributeName_t> names) {
    static thread_local char buf[64];
    for (auto n : names)
        if (!get(d, n)) {
            snprintf(buf, sizeof buf, "attribute %d", (int)n);
            return buf;
        }
    return nullptr;
}

size_t elem_size(cudnnDataType_t t) { return t == CUDNN_DATA_BFLOAT16 || t == CUDNN_DATA_HALF ? 2 : t == CUDNN_DATA_DOUBLE ? 8 : 4; }

/* ---------------------------------------------------------------------------
 * Finalize, by descriptor type
 * ------------------------------------------------------------------------- */

cudnnStatus_t finalize_tensor(desc *d) {
    if (const char *m = missing(d, {CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_ATTR_TENSOR_STRIDES,
                                    CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT}))
        return bad(CUDNN_STATUS_BAD_PARAM, "tensor: %s is required", m);
    tensor_info &t = d->tensor;
    t.type = (cudnnDataType_t)get_enum(d, CUDNN_ATTR_TENSOR_DATA_TYPE);
    int64_t nd = get(d, CUDNN_ATTR_TENSOR_DIMENSIONS)->count;
    if (get(d, CUDNN_ATTR_TENSOR_STRIDES)->count != nd)
        return bad(CUDNN_STATUS_BAD_PARAM, "tensor: %lld dims but %lld strides", (long long)nd,
                   (long long)get(d, CUDNN_ATTR_TENSOR_STRIDES)->count);
    t.dims.resize(nd);
    t.strides.resize(nd);
    for (int64_t i = 0; i < nd; i++) {
        t.dims[i] = get_i64(d, CUDNN_ATTR_TENSOR_DIMENSIONS, i);
        t.strides[i] = get_i64(d, CUDNN_ATTR_TENSOR_STRIDES, i);
        if (t.dims[i] < 1 || t.strides[i] < 1)
            return bad(CUDNN_STATUS_BAD_PARAM, "tensor: dim %lld is %lld with stride %lld (both must be positive)",
                       (long long)i, (long long)t.dims[i], (long long)t.strides[i]);
    }
    /* no two elements at one address: sorted by stride, each stride spans the dims below it (a dim of one
     * element has no second element, and its stride says nothing) */
    std::vector<int> order;
    for (int i = 0; i < nd; i++)
        if (t.dims[i] > 1) order.push_back(i);
    nd = (int64_t)order.size();
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return t.strides[a] < t.strides[b]; });
    for (int i = 1; i < nd; i++) {
        int lo = order[i - 1], hi = order[i];
        if (t.strides[hi] < t.strides[lo] * t.dims[lo])
            return bad(CUDNN_STATUS_BAD_PARAM,
                       "tensor: strides inconsistent with dims (dim %d of %lld elements at stride %lld overlaps dim %d "
                       "at stride %lld)",
                       lo, (long long)t.dims[lo], (long long)t.strides[lo], hi, (long long)t.strides[hi]);
    }
    t.uid = get_i64(d, CUDNN_ATTR_TENSOR_UNIQUE_ID);
    t.alignment = get_i64(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT);
    if (t.alignment < (int64_t)elem_size(t.type) || (t.alignment & (t.alignment - 1)))
        return bad(CUDNN_STATUS_BAD_PARAM, "tensor %lld: byte alignment %lld (a power of two, at least an element)",
                   (long long)t.uid, (long long)t.alignment);
    if (t.type != CUDNN_DATA_FLOAT && t.type != CUDNN_DATA_BFLOAT16)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "tensor %lld: the emulator has float and bf16 tensors only",
                   (long long)t.uid);
    bool v = false;
    if (const attr_value *a = get(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL)) memcpy(&v, a->bytes.data(), sizeof v);
    t.is_virtual = v;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_convolution(desc *d) {
    if (const char *m = missing(d, {CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_ATTR_CONVOLUTION_CONV_MODE,
                                    CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS,
                                    CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_ATTR_CONVOLUTION_DILATIONS,
                                    CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES}))
        return bad(CUDNN_STATUS_BAD_PARAM, "convolution: %s is required", m);
    int64_t sd = get_i64(d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS);
    if (sd != 2) return bad(CUDNN_STATUS_NOT_SUPPORTED, "convolution: the emulator has 2 spatial dims only");
    for (auto n : {CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS,
                   CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES}) {
        if (get(d, n)->count != sd)
            return bad(CUDNN_STATUS_BAD_PARAM, "convolution: attribute %d has %lld values for %lld spatial dims",
                       (int)n, (long long)get(d, n)->count, (long long)sd);
        for (int64_t i = 0; i < sd; i++) {
            int64_t v = get_i64(d, n, i);
            bool padding = n == CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS || n == CUDNN_ATTR_CONVOLUTION_POST_PADDINGS;
            if (padding ? v < 0 : v < 1) return bad(CUDNN_STATUS_BAD_PARAM, "convolution: attribute %d is %lld", (int)n, (long long)v);
        }
    }
    if (get_enum(d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE) != CUDNN_DATA_FLOAT)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "convolution: the emulator computes in float only");
    return CUDNN_STATUS_SUCCESS;
}

int64_t conv_param(const desc *conv, cudnnBackendAttributeName_t n, int i) { return get_i64(conv, n, i); }

/* The forward output size of spatial dim i (0: h, 1: w). */
int64_t out_size(const desc *conv, int64_t in, int64_t filter, int i) {
    int64_t pre = conv_param(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, i);
    int64_t post = conv_param(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, i);
    int64_t dil = conv_param(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, i);
    int64_t stride = conv_param(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, i);
    return (in + pre + post - dil * (filter - 1) - 1) / stride + 1;
}

std::string dims_text(const tensor_info &t) {
    std::string s = "(";
    for (size_t i = 0; i < t.dims.size(); i++) s += (i ? "," : "") + std::to_string(t.dims[i]);
    return s + ")";
}

cudnnStatus_t finalize_conv_op(desc *d, op_kind kind) {
    cudnnBackendAttributeName_t nx, nw, ny, nc, na, nb;
    if (kind == OP_FWD) {
        nx = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, nw = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W;
        ny = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, nc = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC;
        na = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, nb = CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA;
    } else if (kind == OP_DGRAD) {
        nx = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX, nw = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W;
        ny = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY, nc = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC;
        na = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA, nb = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA;
    } else {
        nx = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X, nw = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW;
        ny = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY, nc = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC;
        na = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA, nb = CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA;
    }
    if (const char *m = missing(d, {nx, nw, ny, nc, na, nb}))
        return bad(CUDNN_STATUS_BAD_PARAM, "convolution operation: %s is required", m);
    op_info &o = d->op;
    o.kind = kind;
    o.x = get_desc(d, nx), o.w = get_desc(d, nw), o.y = get_desc(d, ny), o.conv = get_desc(d, nc);
    o.alpha = get_real(d, na, 1.0), o.beta = get_real(d, nb, 0.0);
    const tensor_info &x = o.x->tensor, &w = o.w->tensor, &y = o.y->tensor;
    if (x.dims.size() != 4 || w.dims.size() != 4 || y.dims.size() != 4)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "convolution operation: the emulator has 4-d tensors only");
    int64_t p = out_size(o.conv, x.dims[2], w.dims[2], 0), q = out_size(o.conv, x.dims[3], w.dims[3], 1);
    /* grouped: w holds C / G input channels of each of G groups, and its K rows are split among them */
    int64_t groups = w.dims[1] > 0 && x.dims[1] % w.dims[1] == 0 ? x.dims[1] / w.dims[1] : 0;
    if (x.dims[0] != y.dims[0] || groups < 1 || w.dims[0] % groups || w.dims[0] != y.dims[1] || y.dims[2] != p ||
        y.dims[3] != q)
        return bad(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH,
                   "convolution operation: x %s, w %s and y %s disagree (y should be (%lld,%lld,%lld,%lld))",
                   dims_text(x).c_str(), dims_text(w).c_str(), dims_text(y).c_str(), (long long)x.dims[0],
                   (long long)w.dims[0], (long long)p, (long long)q);
    if (x.is_virtual && kind != OP_DGRAD) return bad(CUDNN_STATUS_NOT_SUPPORTED, "convolution operation: a virtual input");
    for (const tensor_info *t : {&x, &w, &y})
        if (!t->is_virtual && t->type != x.type && !x.is_virtual)
            return bad(CUDNN_STATUS_BAD_PARAM, "convolution operation: tensors of different data types");
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_pointwise(desc *d) {
    if (const char *m = missing(d, {CUDNN_ATTR_POINTWISE_MODE, CUDNN_ATTR_POINTWISE_MATH_PREC}))
        return bad(CUDNN_STATUS_BAD_PARAM, "pointwise: %s is required", m);
    int mode = get_enum(d, CUDNN_ATTR_POINTWISE_MODE);
    if (mode != CUDNN_POINTWISE_ADD && mode != CUDNN_POINTWISE_RELU_FWD && mode != CUDNN_POINTWISE_MUL)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "pointwise: the emulator has ADD, MUL and RELU_FWD only");
    if (get_enum(d, CUDNN_ATTR_POINTWISE_MATH_PREC) != CUDNN_DATA_FLOAT)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "pointwise: the emulator computes in float only");
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize_pointwise_op(desc *d) {
    if (const char *m = missing(d, {CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_ATTR_OPERATION_POINTWISE_XDESC,
                                    CUDNN_ATTR_OPERATION_POINTWISE_YDESC}))
        return bad(CUDNN_STATUS_BAD_PARAM, "pointwise operation: %s is required", m);
    op_info &o = d->op;
    o.kind = OP_POINTWISE;
    desc *pw = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR);
    o.mode = (cudnnPointwiseMode_t)get_enum(pw, CUDNN_ATTR_POINTWISE_MODE);
    o.lower = get_real(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, 0.0);
    o.upper = get_real(pw, CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, INFINITY);
    o.slope = get_real(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, 0.0);
    o.alpha1 = get_real(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, 1.0);
    o.alpha2 = get_real(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, 1.0);
    o.pw_x = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_XDESC);
    o.pw_b = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_BDESC);
    o.pw_y = get_desc(d, CUDNN_ATTR_OPERATION_POINTWISE_YDESC);
    bool binary = o.mode != CUDNN_POINTWISE_RELU_FWD;
    if (binary != (o.pw_b != nullptr))
        return bad(CUDNN_STATUS_BAD_PARAM, "pointwise operation: mode %d %s a b tensor", (int)o.mode,
                   binary ? "needs" : "takes no");
    const tensor_info &x = o.pw_x->tensor, &y = o.pw_y->tensor;
    if (x.dims != y.dims)
        return bad(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "pointwise operation: x %s and y %s differ",
                   dims_text(x).c_str(), dims_text(y).c_str());
    if (o.pw_b) {
        const tensor_info &b = o.pw_b->tensor;
        bool ok = b.dims.size() == x.dims.size();
        for (size_t i = 0; ok && i < x.dims.size(); i++) ok = b.dims[i] == x.dims[i] || b.dims[i] == 1;
        if (!ok)
            return bad(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "pointwise operation: b %s does not broadcast to x %s",
                       dims_text(b).c_str(), dims_text(x).c_str());
    }
    return CUDNN_STATUS_SUCCESS;
}

/* The tensors an op reads and the one it writes. */
void op_tensors(const desc *op, std::vector<desc *> *in, desc **out) {
    const op_info &o = op->op;
    in->clear();
    switch (o.kind) {
    case OP_FWD: *in = {o.x, o.w}, *out = o.y; break;
    case OP_DGRAD: *in = {o.y, o.w}, *out = o.x; break;
    case OP_WGRAD: *in = {o.x, o.y}, *out = o.w; break;
    case OP_POINTWISE:
        in->push_back(o.pw_x);
        if (o.pw_b) in->push_back(o.pw_b);
        *out = o.pw_y;
        break;
    }
}

bool is_op(cudnnBackendDescriptorType_t t) {
    return t == CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR ||
           t == CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR ||
           t == CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR ||
           t == CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR;
}

cudnnStatus_t finalize_graph(desc *d) {
    const attr_value *ops = get(d, CUDNN_ATTR_OPERATIONGRAPH_OPS);
    if (!ops || ops->count < 1) return bad(CUDNN_STATUS_BAD_PARAM, "operation graph: no operations");
    if (get(d, CUDNN_ATTR_OPERATIONGRAPH_HANDLE)) memcpy(&d->handle, get(d, CUDNN_ATTR_OPERATIONGRAPH_HANDLE)->bytes.data(), sizeof d->handle);
    std::vector<desc *> pending;
    for (int64_t i = 0; i < ops->count; i++) pending.push_back(get_desc(d, CUDNN_ATTR_OPERATIONGRAPH_OPS, i));
    /* one descriptor per unique id; who writes each tensor */
    std::map<int64_t, desc *> by_uid;
    std::map<desc *, int> writers, readers;
    for (desc *op : pending) {
        std::vector<desc *> in;
        desc *out;
        op_tensors(op, &in, &out);
        in.push_back(out);
        for (desc *t : in) {
            auto it = by_uid.find(t->tensor.uid);
            if (it != by_uid.end() && it->second != t)
                return bad(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES,
                           "operation graph: two different tensors have unique id %lld", (long long)t->tensor.uid);
            by_uid[t->tensor.uid] = t;
        }
        writers[out]++;
        for (size_t i = 0; i + 1 < in.size(); i++) readers[in[i]]++;
    }
    for (auto &kv : by_uid) {
        desc *t = kv.second;
        if (writers[t] > 1)
            return bad(CUDNN_STATUS_BAD_PARAM, "operation graph: tensor %lld is written by %d operations",
                       (long long)kv.first, writers[t]);
        if (t->tensor.is_virtual && (!writers[t] || !readers[t]))
            return bad(CUDNN_STATUS_BAD_PARAM,
                       "operation graph: virtual tensor %lld must be written and read inside the graph (written %d, "
                       "read %d times)",
                       (long long)kv.first, writers[t], readers[t]);
    }
    /* execution order: an op runs once every virtual tensor it reads is written */
    std::set<desc *> done;
    d->ops.clear();
    while (!pending.empty()) {
        auto it = std::find_if(pending.begin(), pending.end(), [&](desc *op) {
            std::vector<desc *> in;
            desc *out;
            op_tensors(op, &in, &out);
            for (desc *t : in)
                if (t->tensor.is_virtual && !done.count(t)) return false;
            return true;
        });
        if (it == pending.end()) return bad(CUDNN_STATUS_BAD_PARAM, "operation graph: a cycle");
        std::vector<desc *> in;
        desc *out;
        op_tensors(*it, &in, &out);
        done.insert(out);
        d->ops.push_back(*it);
        pending.erase(it);
    }
    return CUDNN_STATUS_SUCCESS;
}

/* What the emulator can run: one convolution, then pointwise ops on its (virtual) output. */
bool is_fused(const desc *graph) { return graph->ops.size() > 1; }

const desc *conv_op(const desc *graph) {
    for (const desc *op : graph->ops)
        if (op->op.kind != OP_POINTWISE) return op;
    return nullptr;
}

std::vector<int64_t> all_heuristics(const desc *graph, cudnnBackendHeurMode_t mode) {
    const desc *c = conv_op(graph);
    if (!c) return {};
    if (is_fused(graph)) {
        if (mode == CUDNN_HEUR_MODE_FALLBACK) return {};
        return mode == CUDNN_HEUR_MODE_B ? std::vector<int64_t>{6} : std::vector<int64_t>{5, 6};
    }
    bool fwd = c->op.kind == OP_FWD;
    switch (mode) {
    case CUDNN_HEUR_MODE_FALLBACK: return {2};
    case CUDNN_HEUR_MODE_B: return {1, 2, 0};
    default: return fwd ? std::vector<int64_t>{5, 0, 3, 1, 2} : std::vector<int64_t>{5, 0, 1, 2};
    }
}

/* The engines a mode lists for a graph; UNET_CUDA_EMU_CUDNN_ENGINES (indices, "3,1") keeps only those, in the
 * same order: a test plays a machine whose cuDNN has, say, only nondeterministic engines for a graph. */
std::vector<int64_t> heuristic_list(const desc *graph, cudnnBackendHeurMode_t mode) {
    std::vector<int64_t> all = all_heuristics(graph, mode);
    const char *keep = getenv("UNET_CUDA_EMU_CUDNN_ENGINES");
    if (!keep || !*keep) return all;
    std::set<int64_t> kept;
    for (const char *p = keep; *p;) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        kept.insert(v);
        p = *end == ',' ? end + 1 : end;
    }
    std::vector<int64_t> out;
    for (int64_t e : all)
        if (kept.count(e)) out.push_back(e);
    return out;
}

/* Why engine e cannot run graph g (the plan does not finalize), or null. */
const char *engine_refuses(const engine_kind &e, const desc *g) {
    const desc *c = conv_op(g);
    if (!c) return "the graph has no convolution";
    if (is_fused(g) && !e.fused) return "this engine does not fuse pointwise operations";
    if (c->op.beta != 0.0 && !e.beta_ok) return "this engine does not support beta != 0";
    if (e.index == 3 && c->op.kind != OP_FWD) return "FFT runs the forward convolution only";
    return nullptr;
}

int64_t workspace_of(const engine_kind &e, const desc *g) {
    const op_info &o = conv_op(g)->op;
    int64_t wn = 1, yn = 1;
    for (int64_t v : o.w->tensor.dims) wn *= v;
    for (int64_t v : o.y->tensor.dims) yn *= v;
    switch (e.index) {
    case 0: return o.kind == OP_WGRAD ? 4 * wn : 0;
    case 1: return 4 * (o.kind == OP_WGRAD ? 2 * wn : yn);
    case 3: return 8 * (yn + wn);
    case 6: return 1024;
    default: return 0;
    }
}

/* ---------------------------------------------------------------------------
 * Execution
 * ------------------------------------------------------------------------- */

int64_t elements(const tensor_info &t) {
    int64_t n = 1;
    for (int64_t v : t.dims) n *= v;
    return n;
}

int64_t extent_bytes(const tensor_info &t) {
    int64_t last = 0;
    for (size_t i = 0; i < t.dims.size(); i++) last += (t.dims[i] - 1) * t.strides[i];
    return (last + 1) * (int64_t)elem_size(t.type);
}

/* The memory offset (in elements) of logical element i (row-major over dims). */
int64_t offset_of(const tensor_info &t, int64_t i) {
    int64_t off = 0;
    for (int d = (int)t.dims.size() - 1; d >= 0; d--) {
        off += i % t.dims[d] * t.strides[d];
        i /= t.dims[d];
    }
    return off;
}

std::vector<double> load(const tensor_info &t, const void *p, bool tensor_cores) {
    std::vector<double> v(elements(t));
    for (int64_t i = 0; i < (int64_t)v.size(); i++) {
        int64_t off = offset_of(t, i);
        float f;
        if (t.type == CUDNN_DATA_BFLOAT16) {
            f = unet_emu_bf16_float(((const uint16_t *)p)[off]);
        } else {
            f = ((const float *)p)[off];
            if (tensor_cores) f = unet_emu::tf32(f);
        }
        v[i] = f;
    }
    return v;
}

/* y = alpha * v + beta * y, through y's strides and type (one rounding from float). */
void store(const tensor_info &t, void *p, const std::vector<double> &v, double alpha, double beta) {
    for (int64_t i = 0; i < (int64_t)v.size(); i++) {
        int64_t off = offset_of(t, i);
        double r = alpha * v[i];
        if (beta != 0.0) {
            float old = t.type == CUDNN_DATA_BFLOAT16 ? unet_emu_bf16_float(((const uint16_t *)p)[off])
                                                      : ((const float *)p)[off];
            r += beta * old;
        }
        if (t.type == CUDNN_DATA_BFLOAT16)
            ((uint16_t *)p)[off] = unet_emu_bf16_bits((float)r);
        else
            ((float *)p)[off] = (float)r;
    }
}

struct geometry {
    int64_t n, c, h, w, k, r, s, p, q;
    int64_t cg, kg; /* per group: the filter's input channels, its output channels */
    int64_t pad[2], stride[2], dil[2];
    bool flip;
};

geometry geometry_of(const op_info &o) {
    geometry g;
    const tensor_info &x = o.x->tensor, &w = o.w->tensor, &y = o.y->tensor;
    g.n = x.dims[0], g.c = x.dims[1], g.h = x.dims[2], g.w = x.dims[3];
    g.k = w.dims[0], g.r = w.dims[2], g.s = w.dims[3], g.p = y.dims[2], g.q = y.dims[3];
    g.cg = w.dims[1], g.kg = g.k / (g.c / g.cg);
    for (int i = 0; i < 2; i++) {
        g.pad[i] = conv_param(o.conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, i);
        g.stride[i] = conv_param(o.conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, i);
        g.dil[i] = conv_param(o.conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, i);
    }
    g.flip = get_enum(o.conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE) == CUDNN_CONVOLUTION;
    return g;
}

/* The three directions over logical NCHW / KCRS arrays, summing in Acc, a filter tap at a time over whole
 * output rows; `reverse` walks the outermost reduction the other way round (what an engine with atomics may
 * do from one run to the next). Grouped: output channel k reads the input channels of its group,
 * (k / kg) cg + ci for the filter's ci < cg. */
template <class Acc>
std::vector<double> convolve(const geometry &g, op_kind kind, const std::vector<double> &a,
                             const std::vector<double> &b, bool reverse) {
    auto rev = [&](int64_t i, int64_t len) { return reverse ? len - 1 - i : i; };
    /* the filter tap (r, s) of the weights as stored (flipped for a true convolution) */
    auto tap = [&](int64_t k, int64_t ci, int64_t r, int64_t s) {
        if (g.flip) r = g.r - 1 - r, s = g.s - 1 - s;
        return ((k * g.cg + ci) * g.r + r) * g.s + s;
    };
    auto channel = [&](int64_t k, int64_t ci) { return k / g.kg * g.cg + ci; }; /* the input channel of (k, ci) */
    /* input row and column of output (p, q) under tap (r, s); out of range: padding */
    auto in_y = [&](int64_t p, int64_t r) { return p * g.stride[0] - g.pad[0] + r * g.dil[0]; };
    auto in_x = [&](int64_t q, int64_t s) { return q * g.stride[1] - g.pad[1] + s * g.dil[1]; };
    std::vector<double> out;
    if (kind == OP_FWD) { /* a = x, b = w: y[n,k] = sum over c, r, s */
        out.resize(g.n * g.k * g.p * g.q);
        std::vector<Acc> acc(g.p * g.q);
        for (int64_t n = 0; n < g.n; n++)
            for (int64_t k = 0; k < g.k; k++) {
                std::fill(acc.begin(), acc.end(), (Acc)0);
                for (int64_t i = 0; i < g.cg; i++) {
                    int64_t ci = rev(i, g.cg), c = channel(k, ci);
                    const double *xp = &a[(n * g.c + c) * g.h * g.w];
                    for (int64_t r = 0; r < g.r; r++)
                        for (int64_t s = 0; s < g.s; s++) {
                            double wv = b[tap(k, ci, r, s)];
                            for (int64_t p = 0; p < g.p; p++) {
                                int64_t y = in_y(p, r);
                                if (y < 0 || y >= g.h) continue;
                                Acc *row = &acc[p * g.q];
                                for (int64_t q = 0; q < g.q; q++) {
                                    int64_t x = in_x(q, s);
                                    if (x >= 0 && x < g.w) row[q] += (Acc)(xp[y * g.w + x] * wv);
                                }
                            }
                        }
                }
                std::copy(acc.begin(), acc.end(), out.begin() + (n * g.k + k) * g.p * g.q);
            }
    } else if (kind == OP_DGRAD) { /* a = dy, b = w: dx[n,c] = sum over k, r, s of what reaches it */
        out.resize(g.n * g.c * g.h * g.w);
        std::vector<Acc> acc(g.h * g.w);
        for (int64_t n = 0; n < g.n; n++)
            for (int64_t c = 0; c < g.c; c++) {
                std::fill(acc.begin(), acc.end(), (Acc)0);
                for (int64_t ki = 0; ki < g.kg; ki++) {
                    int64_t k = c / g.cg * g.kg + rev(ki, g.kg); /* the output channels of c's group */
                    const double *dy = &a[(n * g.k + k) * g.p * g.q];
                    for (int64_t r = 0; r < g.r; r++)
                        for (int64_t s = 0; s < g.s; s++) {
                            double wv = b[tap(k, c % g.cg, r, s)];
                            for (int64_t p = 0; p < g.p; p++) {
                                int64_t y = in_y(p, r);
                                if (y < 0 || y >= g.h) continue;
                                for (int64_t q = 0; q < g.q; q++) {
                                    int64_t x = in_x(q, s);
                                    if (x >= 0 && x < g.w) acc[y * g.w + x] += (Acc)(dy[p * g.q + q] * wv);
                                }
                            }
                        }
                }
                std::copy(acc.begin(), acc.end(), out.begin() + (n * g.c + c) * g.h * g.w);
            }
    } else { /* WGRAD: a = x, b = dy: dw[k,c,r,s] = sum over n, p, q */
        out.assign(g.k * g.cg * g.r * g.s, 0.0);
        for (int64_t k = 0; k < g.k; k++)
            for (int64_t ci = 0; ci < g.cg; ci++)
                for (int64_t r = 0; r < g.r; r++)
                    for (int64_t s = 0; s < g.s; s++) {
                        Acc acc = 0;
                        int64_t c = channel(k, ci);
                        for (int64_t ni = 0; ni < g.n; ni++) {
                            int64_t n = rev(ni, g.n);
                            const double *xp = &a[(n * g.c + c) * g.h * g.w], *dy = &b[(n * g.k + k) * g.p * g.q];
                            for (int64_t p = 0; p < g.p; p++) {
                                int64_t y = in_y(p, r);
                                if (y < 0 || y >= g.h) continue;
                                for (int64_t q = 0; q < g.q; q++) {
                                    int64_t x = in_x(q, s);
                                    if (x >= 0 && x < g.w) acc += (Acc)(dy[p * g.q + q] * xp[y * g.w + x]);
                                }
                            }
                        }
                        out[tap(k, ci, r, s)] = acc;
                    }
    }
    return out;
}

struct execution {
    const desc *plan;
    std::map<int64_t, void *> pointers;
    void *workspace;
};

/* Runs a plan, as the stream reaches it. */
void execute(const execution &ex) {
    if (!live().count((desc *)ex.plan)) {
        unet_emu::device_fault("cudnnBackendExecute: the execution plan was destroyed before its work ran");
        return;
    }
    const engine_kind &e = *engine_by_index(ex.plan->engine);
    const desc *g = ex.plan->graph;
    if (!live().count((desc *)g)) {
        unet_emu::device_fault("cudnnBackendExecute: the plan's operation graph was destroyed before its work ran");
        return;
    }
    for (const desc *op : g->ops) {
        std::vector<desc *> in;
        desc *out;
        op_tensors(op, &in, &out);
        for (desc *t : in)
            if (!live().count(t) || !live().count((desc *)op)) {
                unet_emu::device_fault("cudnnBackendExecute: a descriptor of the plan's graph was destroyed");
                return;
            }
    }
    if (ex.plan->workspace > 0) memset(ex.workspace, 0xff, (size_t)ex.plan->workspace);
    static unsigned long long runs;
    bool reverse = e.alternating && (runs++ & 1);
    std::map<int64_t, std::vector<double>> virtuals;
    auto input = [&](const desc *t) {
        if (t->tensor.is_virtual) return virtuals[t->tensor.uid];
        return load(t->tensor, ex.pointers.at(t->tensor.uid), e.tf32_inputs);
    };
    auto output = [&](const desc *t, std::vector<double> v, double alpha, double beta) {
        if (t->tensor.is_virtual) {
            for (double &x : v) x = (float)(alpha * x); /* virtual tensors are float */
            virtuals[t->tensor.uid] = std::move(v);
        } else {
            store(t->tensor, ex.pointers.at(t->tensor.uid), v, alpha, beta);
        }
    };
    for (const desc *op : g->ops) {
        const op_info &o = op->op;
        if (o.kind == OP_POINTWISE) {
            std::vector<double> x = input(o.pw_x), b;
            if (o.pw_b) b = input(o.pw_b);
            const tensor_info &xt = o.pw_x->tensor;
            std::vector<double> y(x.size());
            for (int64_t i = 0; i < (int64_t)x.size(); i++) {
                float xv = (float)x[i], r;
                if (o.mode == CUDNN_POINTWISE_RELU_FWD) {
                    r = xv > (float)o.lower ? (xv < (float)o.upper ? xv : (float)o.upper)
                                            : (float)(o.lower + o.slope * (xv - o.lower));
                } else {
                    /* b broadcast: its index from x's, dims of 1 pinned at 0 */
                    int64_t bi = 0, rest = i, scale = 1;
                    const tensor_info &bt = o.pw_b->tensor;
                    for (int d = (int)xt.dims.size() - 1; d >= 0; d--) {
                        int64_t coord = rest % xt.dims[d];
                        rest /= xt.dims[d];
                        if (bt.dims[d] != 1) bi += coord * scale;
                        scale *= bt.dims[d];
                    }
                    float av = (float)(o.alpha1 * xv), bv = (float)(o.alpha2 * (float)b[bi]);
                    r = o.mode == CUDNN_POINTWISE_ADD ? av + bv : av * bv;
                }
                y[i] = r;
            }
            output(o.pw_y, std::move(y), 1.0, 0.0);
            continue;
        }
        geometry geo = geometry_of(o);
        std::vector<double> a, b;
        desc *out;
        if (o.kind == OP_FWD) a = input(o.x), b = input(o.w), out = o.y;
        else if (o.kind == OP_DGRAD) a = input(o.y), b = input(o.w), out = o.x;
        else a = input(o.x), b = input(o.y), out = o.w;
        std::vector<double> r = e.float_accumulation ? convolve<float>(geo, o.kind, a, b, reverse)
                                                     : convolve<double>(geo, o.kind, a, b, reverse);
        output(out, std::move(r), o.alpha, o.beta);
    }
    unet_emu::check_redzones("cudnnBackendExecute");
}

cudnnStatus_t finalize_plan(desc *d) {
    desc *cfg = get_desc(d, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG);
    if (!cfg) return bad(CUDNN_STATUS_BAD_PARAM, "execution plan: CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG is required");
    /* cuDNN before 9.8 requires the plan's own handle (the graph's does not stand in for it); the strictest
     * release the backend may meet is the one the emulator plays */
    if (!get(d, CUDNN_ATTR_EXECUTION_PLAN_HANDLE))
        return bad(CUDNN_STATUS_BAD_PARAM, "execution plan: CUDNN_ATTR_EXECUTION_PLAN_HANDLE is required (as cuDNN "
                                           "before 9.8 requires it)");
    memcpy(&d->handle, get(d, CUDNN_ATTR_EXECUTION_PLAN_HANDLE)->bytes.data(), sizeof d->handle);
    if (!d->handle) return bad(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "execution plan: the handle is NULL");
    d->engine = cfg->engine;
    d->graph = cfg->graph;
    const engine_kind *e = engine_by_index(d->engine);
    if (const char *why = engine_refuses(*e, d->graph))
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "engine %lld (%s): %s", (long long)e->index, e->name, why);
    d->workspace = workspace_of(*e, d->graph);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t finalize(desc *d) {
    switch (d->type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: return finalize_tensor(d);
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: return finalize_convolution(d);
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: return finalize_pointwise(d);
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR: return finalize_conv_op(d, OP_FWD);
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR: return finalize_conv_op(d, OP_DGRAD);
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR: return finalize_conv_op(d, OP_WGRAD);
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: return finalize_pointwise_op(d);
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: return finalize_graph(d);
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: {
        desc *g = get_desc(d, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH);
        if (!g || !get(d, CUDNN_ATTR_ENGINEHEUR_MODE))
            return bad(CUDNN_STATUS_BAD_PARAM, "heuristics: the operation graph and the mode are required");
        for (int64_t i : heuristic_list(g, (cudnnBackendHeurMode_t)get_enum(d, CUDNN_ATTR_ENGINEHEUR_MODE))) {
            desc *cfg = new desc;
            cfg->type = CUDNN_BACKEND_ENGINECFG_DESCRIPTOR;
            cfg->finalized = true;
            cfg->engine = i;
            cfg->graph = g;
            live().insert(cfg);
            d->results.push_back(cfg);
        }
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: {
        desc *g = get_desc(d, CUDNN_ATTR_ENGINE_OPERATION_GRAPH);
        if (!g || !get(d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX))
            return bad(CUDNN_STATUS_BAD_PARAM, "engine: the operation graph and the global index are required");
        d->graph = g;
        d->engine = get_i64(d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX);
        if (!engine_by_index(d->engine)) return bad(CUDNN_STATUS_NOT_SUPPORTED, "engine %lld does not exist", (long long)d->engine);
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: {
        desc *e = get_desc(d, CUDNN_ATTR_ENGINECFG_ENGINE);
        if (!e) return bad(CUDNN_STATUS_BAD_PARAM, "engine config: the engine is required");
        d->engine = e->engine;
        d->graph = e->graph;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: return finalize_plan(d);
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: {
        const attr_value *ids = get(d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), *ptrs = get(d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS);
        if (!ids || !ptrs || ids->count != ptrs->count)
            return bad(CUDNN_STATUS_BAD_PARAM, "variant pack: as many unique ids as data pointers are required");
        d->uids.resize(ids->count);
        d->pointers.resize(ptrs->count);
        memcpy(d->uids.data(), ids->bytes.data(), 8 * ids->count);
        memcpy(d->pointers.data(), ptrs->bytes.data(), sizeof(void *) * ptrs->count);
        if (const attr_value *ws = get(d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE)) memcpy(&d->workspace_ptr, ws->bytes.data(), sizeof(void *));
        return CUDNN_STATUS_SUCCESS;
    }
    default: return bad(CUDNN_STATUS_NOT_SUPPORTED, "descriptor type %d is not emulated", (int)d->type);
    }
}

/* Fills caller-made descriptor `to` (of the right type) with `from`. */
cudnnStatus_t copy_into(desc *to, const desc *from) {
    if (!to || to->type != from->type)
        return bad(CUDNN_STATUS_BAD_PARAM, "a descriptor of type %d is needed to receive the attribute", (int)from->type);
    desc copy = *from;
    *to = copy;
    return CUDNN_STATUS_SUCCESS;
}

} // namespace

struct unet_emu_cudnn {
    cudaStream_t stream;
};

extern "C" {

/* The headers' version, or UNET_CUDA_EMU_CUDNN_VERSION (as cudnnGetVersion counts: 90100 is 9.1.0, 8907 is
 * 8.9.7), so that a test can play an older runtime. */
size_t cudnnGetVersion(void) {
    const char *v = getenv("UNET_CUDA_EMU_CUDNN_VERSION");
    return v && *v ? (size_t)strtoull(v, nullptr, 10) : (size_t)CUDNN_VERSION;
}

const char *cudnnGetErrorString(cudnnStatus_t s) {
    switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
    case CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER: return "CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER";
    case CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED: return "CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED";
    case CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND: return "CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND";
    case CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH: return "CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH";
    case CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES: return "CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES";
    case CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE: return "CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN: return "CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED: return "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

void cudnnGetLastErrorString(char *message, size_t max_size) {
    if (!message || !max_size) return;
    snprintf(message, max_size, "%s", last_error.c_str());
    last_error.clear();
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
    if (!handle) return bad(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnCreate: no handle to fill");
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return bad(CUDNN_STATUS_NOT_INITIALIZED, "no device");
    *handle = new unet_emu_cudnn{nullptr};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
    delete handle;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
    if (!handle) return bad(CUDNN_STATUS_BAD_PARAM, "cudnnSetStream: no handle");
    handle->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t *stream) {
    if (!handle || !stream) return bad(CUDNN_STATUS_BAD_PARAM, "cudnnGetStream: no handle");
    *stream = handle->stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *descriptor) {
    LOCKED;
    if (!descriptor) return bad(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnBackendCreateDescriptor: nowhere to put it");
    if (type < 0 || type >= CUDNN_BACKEND_DESCRIPTOR_TYPE_COUNT)
        return bad(CUDNN_STATUS_NOT_SUPPORTED, "descriptor type %d", (int)type);
    desc *d = new desc;
    d->type = type;
    live().insert(d);
    *descriptor = d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t descriptor) {
    LOCKED;
    desc *d = as_desc(descriptor);
    if (!d) return bad(CUDNN_STATUS_BAD_PARAM, "cudnnBackendDestroyDescriptor: %p is not a live descriptor", descriptor);
    for (desc *r : d->results) {
        live().erase(r);
        delete r;
    }
    live().erase(d);
    d->magic = 0;
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t count, const void *values) {
    LOCKED;
    desc *d = as_desc(descriptor);
    if (!d) return bad(CUDNN_STATUS_BAD_PARAM, "set attribute %d: %p is not a live descriptor", (int)name, descriptor);
    if (d->finalized) return bad(CUDNN_STATUS_BAD_PARAM, "set attribute %d: the descriptor is finalized", (int)name);
    const attr_rule *r = rule_for(d->type, name);
    if (!r) return bad(CUDNN_STATUS_NOT_SUPPORTED, "descriptor type %d takes no attribute %d", (int)d->type, (int)name);
    if (type != r->type && type != r->alt_type)
        return bad(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "attribute %d: value type %d, expected %d", (int)name, (int)type,
                   (int)r->type);
    if (count < 1 || count > r->max_count || !values)
        return bad(CUDNN_STATUS_BAD_PARAM, "attribute %d: %lld values (1 to %lld)", (int)name, (long long)count,
                   (long long)r->max_count);
    if (type == CUDNN_TYPE_BACKEND_DESCRIPTOR) {
        for (int64_t i = 0; i < count; i++) {
            desc *t = as_desc(((cudnnBackendDescriptor_t const *)values)[i]);
            if (!t) return bad(CUDNN_STATUS_BAD_PARAM, "attribute %d: value %lld is not a live descriptor", (int)name, (long long)i);
            if (!t->finalized)
                return bad(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED, "attribute %d: descriptor %lld is not finalized", (int)name,
                           (long long)i);
            if (r->target >= 0 ? t->type != r->target : !is_op(t->type))
                return bad(CUDNN_STATUS_BAD_PARAM, "attribute %d: a descriptor of type %d where type %d is due", (int)name,
                           (int)t->type, r->target);
        }
    }
    attr_value v;
    v.type = type;
    v.count = count;
    const unsigned char *p = (const unsigned char *)values;
    v.bytes.assign(p, p + type_size(type) * count);
    d->attrs[(int)name] = v;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t descriptor) {
    LOCKED;
    desc *d = as_desc(descriptor);
    if (!d) return bad(CUDNN_STATUS_BAD_PARAM, "finalize: %p is not a live descriptor", descriptor);
    if (d->finalized) return bad(CUDNN_STATUS_BAD_PARAM, "finalize: already finalized");
    cudnnStatus_t s = finalize(d);
    if (s == CUDNN_STATUS_SUCCESS) d->finalized = true;
    return s;
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                                       void *values) {
    LOCKED;
    desc *d = as_desc(descriptor);
    if (!d) return bad(CUDNN_STATUS_BAD_PARAM, "get attribute %d: %p is not a live descriptor", (int)name, descriptor);
    if (!d->finalized) return bad(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED, "get attribute %d: not finalized", (int)name);
    auto expect = [&](cudnnBackendAttributeType_t t) {
        return type == t ? CUDNN_STATUS_SUCCESS
                         : bad(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "get attribute %d: value type %d, expected %d",
                               (int)name, (int)type, (int)t);
    };
    if (d->type == CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR && name == CUDNN_ATTR_ENGINEHEUR_RESULTS) {
        if (cudnnStatus_t s = expect(CUDNN_TYPE_BACKEND_DESCRIPTOR)) return s;
        int64_t n = (int64_t)d->results.size();
        if (count) *count = n;
        if (!values) return CUDNN_STATUS_SUCCESS;
        for (int64_t i = 0; i < n && i < requested; i++)
            if (cudnnStatus_t s = copy_into(as_desc(((cudnnBackendDescriptor_t *)values)[i]), d->results[i])) return s;
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->type == CUDNN_BACKEND_ENGINECFG_DESCRIPTOR && name == CUDNN_ATTR_ENGINECFG_ENGINE) {
        if (cudnnStatus_t s = expect(CUDNN_TYPE_BACKEND_DESCRIPTOR)) return s;
        if (count) *count = 1;
        if (!values || requested < 1) return CUDNN_STATUS_SUCCESS;
        desc *to = as_desc(*(cudnnBackendDescriptor_t *)values);
        if (!to || to->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR)
            return bad(CUDNN_STATUS_BAD_PARAM, "get CUDNN_ATTR_ENGINECFG_ENGINE: an engine descriptor is needed");
        to->finalized = true;
        to->engine = d->engine;
        to->graph = d->graph;
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->type == CUDNN_BACKEND_ENGINE_DESCRIPTOR &&
        (name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX || name == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE ||
         name == CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE)) {
        const engine_kind *e = engine_by_index(d->engine);
        if (name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX) {
            if (cudnnStatus_t s = expect(CUDNN_TYPE_INT64)) return s;
            if (count) *count = 1;
            if (values && requested >= 1) *(int64_t *)values = e->index;
            return CUDNN_STATUS_SUCCESS;
        }
        if (name == CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE) {
            if (cudnnStatus_t s = expect(CUDNN_TYPE_BEHAVIOR_NOTE)) return s;
            if (count) *count = 0;
            return CUDNN_STATUS_SUCCESS;
        }
        if (cudnnStatus_t s = expect(CUDNN_TYPE_NUMERICAL_NOTE)) return s;
        int64_t n = (int64_t)e->notes.size();
        if (count) *count = n;
        for (int64_t i = 0; values && i < n && i < requested; i++) ((cudnnBackendNumericalNote_t *)values)[i] = e->notes[i];
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->type == CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR && name == CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE) {
        if (cudnnStatus_t s = expect(CUDNN_TYPE_INT64)) return s;
        if (count) *count = 1;
        if (values && requested >= 1) *(int64_t *)values = d->workspace;
        return CUDNN_STATUS_SUCCESS;
    }
    const attr_value *v = get(d, name);
    if (!v) return bad(CUDNN_STATUS_BAD_PARAM, "get attribute %d: not set on descriptor type %d", (int)name, (int)d->type);
    if (cudnnStatus_t s = expect(v->type)) return s;
    if (count) *count = v->count;
    if (values) memcpy(values, v->bytes.data(), type_size(v->type) * (size_t)std::min(requested, v->count));
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan_desc,
                                  cudnnBackendDescriptor_t pack_desc) {
    LOCKED;
    desc *plan = as_desc(plan_desc), *pack = as_desc(pack_desc);
    if (!handle) return bad(CUDNN_STATUS_BAD_PARAM, "execute: no handle");
    if (!plan || plan->type != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR || !plan->finalized)
        return bad(CUDNN_STATUS_BAD_PARAM, "execute: not a finalized execution plan");
    if (!pack || pack->type != CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR || !pack->finalized)
        return bad(CUDNN_STATUS_BAD_PARAM, "execute: not a finalized variant pack");
    execution ex;
    ex.plan = plan;
    ex.workspace = pack->workspace_ptr;
    for (size_t i = 0; i < pack->uids.size(); i++) {
        if (ex.pointers.count(pack->uids[i]))
            return bad(CUDNN_STATUS_BAD_PARAM, "execute: unique id %lld twice in the variant pack", (long long)pack->uids[i]);
        ex.pointers[pack->uids[i]] = pack->pointers[i];
    }
    /* every non-virtual tensor of the graph, and nothing else, with a pointer that can hold it */
    std::set<int64_t> wanted;
    for (const desc *op : plan->graph->ops) {
        std::vector<desc *> in;
        desc *out;
        op_tensors(op, &in, &out);
        in.push_back(out);
        for (const desc *t : in) {
            const tensor_info &ti = t->tensor;
            if (ti.is_virtual) {
                if (ex.pointers.count(ti.uid))
                    return bad(CUDNN_STATUS_BAD_PARAM, "execute: virtual tensor %lld is in the variant pack", (long long)ti.uid);
                continue;
            }
            wanted.insert(ti.uid);
            auto it = ex.pointers.find(ti.uid);
            if (it == ex.pointers.end())
                return bad(CUDNN_STATUS_BAD_PARAM, "execute: tensor %lld is missing from the variant pack", (long long)ti.uid);
            if (!it->second) return bad(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "execute: tensor %lld is NULL", (long long)ti.uid);
            if ((uintptr_t)it->second % (uintptr_t)ti.alignment)
                return bad(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER,
                           "execute: tensor %lld at %p is not aligned to its declared %lld bytes", (long long)ti.uid,
                           it->second, (long long)ti.alignment);
            std::string why;
            if (!unet_emu::device_range(it->second, (size_t)extent_bytes(ti), &why))
                return bad(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND, "execute: tensor %lld %s of %lld bytes: %s",
                           (long long)ti.uid, dims_text(ti).c_str(), (long long)extent_bytes(ti), why.c_str());
        }
    }
    for (auto &kv : ex.pointers)
        if (!wanted.count(kv.first))
            return bad(CUDNN_STATUS_BAD_PARAM, "execute: the variant pack names tensor %lld, which the graph has not",
                       (long long)kv.first);
    if (plan->workspace > 0) {
        std::string why;
        if (!ex.workspace) return bad(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "execute: the plan needs %lld bytes of workspace, none given",
                                      (long long)plan->workspace);
        if (!unet_emu::device_range(ex.workspace, (size_t)plan->workspace, &why))
            return bad(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND, "execute: workspace of %lld bytes: %s", (long long)plan->workspace,
                       why.c_str());
    }
    cudaError_t e = unet_emu::enqueue(handle->stream, "cudnnBackendExecute", [ex]() { execute(ex); });
    if (e != cudaSuccess) return bad(CUDNN_STATUS_EXECUTION_FAILED, "execute: %s", cudaGetErrorString(e));
    return CUDNN_STATUS_SUCCESS;
}

} // extern "C"
