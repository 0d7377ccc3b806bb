/* 1x1 convolutions as cuBLASLt matmuls (gemm.h says which products and
 * why), and the cache of their plans: the descriptors and the algorithm
 * the heuristics picked, made once at compile time, so that a step only
 * calls cublasLtMatmul (which also runs while a step is captured as a CUDA
 * graph: it allocates nothing and waits for nothing). */
#include "kernels/cuda/gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/layout.h"

/* Scratch cuBLASLt may use (split reductions): what NVIDIA suggests for Hopper. */
#define GEMM_WORKSPACE ((size_t)32 << 20)
/* What every pointer handed to a matmul is aligned to (activations: 256; parameters: 64, graph.c; the bf16
 * copies in the workspace: 256): told to the heuristics, which may then pick vectorised algorithms. */
#define POINTER_ALIGNMENT 16u

typedef struct {
    int n, c, h, w, k, relu, precision, act_format;
} gemm_key; /* all ints, zeroed before filling, so memcmp compares keys exactly */

struct unet_gemm_plan {
    gemm_key key;
    int supported;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d; /* D is also C: beta = 0 */
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
    unet_1x1_path path;
};

struct unet_gemm_cache {
    unet_gemm_plan **plans;
    int n, cap;
};

int unet_gemm_runs(const unet_conv_problem *p) {
    /* cuBLASLt's epilogues add a bias and a ReLU, not a ReLU6; grouped (depthwise) convolutions are no single matmul */
    return p->dir == UNET_CONV_FWD && p->r == 1 && p->stride == 1 && p->pad == 0 && p->groups == 1 && p->bias &&
           p->act != UNET_ACT_RELU6 && !p->accumulate;
}

static gemm_key key_of(const unet_cuda_ctx *ctx, const unet_conv_problem *p) {
    gemm_key k;
    memset(&k, 0, sizeof k);
    k.n = p->n, k.c = p->c, k.h = p->h, k.w = p->w, k.k = p->k, k.relu = p->act == UNET_ACT_RELU,
    k.precision = (int)ctx->precision;
    k.act_format = (int)ctx->act_format;
    return k;
}

static unet_gemm_plan *lookup(const unet_cuda_ctx *ctx, const gemm_key *k) {
    const struct unet_gemm_cache *c = ctx->gemms;
    for (int i = 0; c && i < c->n; i++)
        if (memcmp(&c->plans[i]->key, k, sizeof *k) == 0) return c->plans[i];
    return NULL;
}

static void insert(unet_cuda_ctx *ctx, unet_gemm_plan *p) {
    if (!ctx->gemms && !(ctx->gemms = calloc(1, sizeof *ctx->gemms)))
        unet_cuda_fail(__FILE__, __LINE__, "calloc", "out of host memory for the matmul plans", NULL);
    struct unet_gemm_cache *c = ctx->gemms;
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        unet_gemm_plan **grown = realloc(c->plans, (size_t)cap * sizeof *grown);
        if (!grown) unet_cuda_fail(__FILE__, __LINE__, "realloc", "out of host memory for the matmul plans", NULL);
        c->plans = grown;
        c->cap = cap;
    }
    c->plans[c->n++] = p;
}

/* How the activations lie, as layout.h decides: channels last or not, the element type, and the multiple the
 * channels (and a filter's output channels, in its copy) are padded to. The one place this module asks. */
typedef struct {
    int nhwc;
    cudaDataType_t type;
    unet_cuda_format format;
} act_form;

static act_form form_of(const unet_cuda_ctx *ctx) {
    unet_cuda_format f = ctx->act_format;
    act_form form = {f != UNET_FMT_NCHW_F32, f == UNET_FMT_NHWC_BF16 ? CUDA_R_16BF : CUDA_R_32F, f};
    return form;
}

static int64_t padded(int c, const act_form *f) { return unet_cuda_channels_in_memory(f->format, c); }

/* A matrix layout: rows x cols, row- or column-major, a strided batch when batch > 1. */
static cublasStatus_t make_layout(cublasLtMatrixLayout_t *l, cudaDataType_t type, int64_t rows, int64_t cols,
                                  int64_t ld, int32_t order, int32_t batch, int64_t stride) {
    cublasStatus_t s = cublasLtMatrixLayoutCreate(l, type, (uint64_t)rows, (uint64_t)cols, ld);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order);
    if (s == CUBLAS_STATUS_SUCCESS && batch > 1) {
        s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                 sizeof stride);
    }
    return s;
}

/* The descriptors of the product (gemm.h: its two forms); the bias pointer is set at each execution. */
static cublasStatus_t describe_product(const unet_cuda_ctx *ctx, unet_gemm_plan *g) {
    const gemm_key *k = &g->key;
    int64_t hw = (int64_t)k->h * k->w;
    cublasComputeType_t compute = ctx->precision == UNET_PREC_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasStatus_t s = cublasLtMatmulDescCreate(&g->op, compute, CUDA_R_32F);
    uint32_t epilogue = k->relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    act_form f = form_of(ctx);
    if (f.nhwc) {
        int32_t transpose = CUBLAS_OP_T;
        int64_t kp = padded(k->k, &f), cp = padded(k->c, &f), pixels = (int64_t)k->n * hw;
        s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose);
        if (s == CUBLAS_STATUS_SUCCESS) s = make_layout(&g->a, f.type, cp, kp, cp, CUBLASLT_ORDER_COL, 1, 0);
        if (s == CUBLAS_STATUS_SUCCESS) s = make_layout(&g->b, f.type, cp, pixels, cp, CUBLASLT_ORDER_COL, 1, 0);
        if (s == CUBLAS_STATUS_SUCCESS) s = make_layout(&g->d, f.type, kp, pixels, kp, CUBLASLT_ORDER_COL, 1, 0);
        return s;
    }
    s = make_layout(&g->a, CUDA_R_32F, k->k, k->c, k->c, CUBLASLT_ORDER_ROW, k->n, 0);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = make_layout(&g->b, CUDA_R_32F, k->c, hw, hw, CUBLASLT_ORDER_ROW, k->n, (int64_t)k->c * hw);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = make_layout(&g->d, CUDA_R_32F, k->k, hw, hw, CUBLASLT_ORDER_ROW, k->n, (int64_t)k->k * hw);
    return s;
}

/* The heuristics' first algorithm for the product, within GEMM_WORKSPACE, for pointers POINTER_ALIGNMENT-aligned. */
static cublasStatus_t pick_algorithm(const unet_cuda_ctx *ctx, unet_gemm_plan *g, int *found) {
    cublasLtMatmulPreference_t pref = NULL;
    uint64_t max_ws = GEMM_WORKSPACE;
    uint32_t align = POINTER_ALIGNMENT;
    *found = 0;
    cublasStatus_t s = cublasLtMatmulPreferenceCreate(&pref);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                                 sizeof max_ws);
    const cublasLtMatmulPreferenceAttributes_t aligned[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (size_t i = 0; i < sizeof aligned / sizeof aligned[0] && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, aligned[i], &align, sizeof align);
    /* the heuristics take the bias pointer's alignment from the descriptor: a stand-in as aligned as the real ones */
    const void *bias = (const void *)(uintptr_t)256;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    cublasLtMatmulHeuristicResult_t result;
    int returned = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(ctx->cublaslt, g->op, g->a, g->b, g->d, g->d, pref, 1, &result, &returned);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
        g->algo = result.algo;
        g->workspace = result.workspaceSize;
        *found = 1;
    }
    return s;
}

static void destroy_descriptors(unet_gemm_plan *g) {
    if (g->op) cublasLtMatmulDescDestroy(g->op);
    if (g->a) cublasLtMatrixLayoutDestroy(g->a);
    if (g->b) cublasLtMatrixLayoutDestroy(g->b);
    if (g->d) cublasLtMatrixLayoutDestroy(g->d);
    g->op = NULL, g->a = g->b = g->d = NULL;
}

static void describe(const gemm_key *k, char *buf, size_t len) {
    static const char *const precisions[] = {"fp32", "tf32", "bf16"};
    snprintf(buf, len, "1x1 convolution + bias%s: x (%d,%d,%d,%d), w (%d,%d,1,1), %s %s", k->relu ? " + ReLU" : "",
             k->n, k->c, k->h, k->w, k->k, k->c, precisions[k->precision],
             k->act_format == UNET_FMT_NCHW_F32 ? "NCHW" : "NHWC");
}

unet_gemm_plan *unet_gemm_plan_build(unet_cuda_ctx *ctx, const unet_conv_problem *p, const unet_op_args *a) {
    gemm_key k = key_of(ctx, p);
    unet_gemm_plan *g = lookup(ctx, &k);
    if (g) return g->supported ? g : NULL;
    if (!(g = calloc(1, sizeof *g))) unet_cuda_fail(__FILE__, __LINE__, "calloc", "out of host memory for a plan", a);
    g->key = k;
    int found = 0;
    cublasStatus_t s = describe_product(ctx, g);
    if (s == CUBLAS_STATUS_SUCCESS) s = pick_algorithm(ctx, g, &found);
    g->supported = found;
    if (!found) destroy_descriptors(g);
    insert(ctx, g);
    const char *log = getenv("UNET_CUDNN_LOG");
    if (log && *log && strcmp(log, "0") != 0) {
        char what[256];
        describe(&k, what, sizeof what);
        if (found)
            fprintf(stderr, "unet cublaslt: %s -> a matmul, workspace %zu bytes\n", what, g->workspace);
        else
            fprintf(stderr, "unet cublaslt: %s -> no algorithm (%s): cuDNN runs it\n", what,
                    s == CUBLAS_STATUS_SUCCESS ? "the heuristics offer none" : cublasLtGetStatusString(s));
    }
    return found ? g : NULL;
}

const unet_gemm_plan *unet_gemm_plan_find(unet_cuda_ctx *ctx, const unet_conv_problem *p) {
    if (!unet_gemm_runs(p)) return NULL;
    gemm_key k = key_of(ctx, p);
    const unet_gemm_plan *g = lookup(ctx, &k);
    return g && g->supported ? g : NULL;
}

size_t unet_gemm_plan_workspace(const unet_gemm_plan *plan) { return plan ? plan->workspace : 0; }

unet_1x1_path unet_gemm_path(const unet_gemm_plan *plan) { return plan ? plan->path : UNET_1X1_CUDNN; }

void unet_gemm_set_path(unet_gemm_plan *plan, unet_1x1_path path) { plan->path = path; }

void unet_gemm_execute(unet_cuda_ctx *ctx, const unet_gemm_plan *plan, const void *x, const void *w, const void *b,
                       void *y, void *workspace, const unet_op_args *a) {
    const float one = 1.0f, zero = 0.0f;
    unet_cuda_site at = unet_at_op(a);
    /* W first: the product is W X in the NCHW form, and W^T X in the NHWC one (gemm.h) */
    UNET_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b), at);
    UNET_CUBLAS_CHECK(cublasLtMatmul(ctx->cublaslt, plan->op, &one, w, plan->a, x, plan->b, &zero, y, plan->d, y,
                                     plan->d, &plan->algo, workspace, plan->workspace, ctx->stream),
                      at);
}
