/* The losses on the GPU: softmax cross-entropy and BCE + Dice with an
 * optional weight map, labels and weights centre-cropped to the logits.
 * Twins of src/kernels/cpu/loss.c: per-pixel arithmetic in double, as there;
 * a label outside 0..K-1 adds nothing (still counted in the mean).
 *
 * Deterministic two-stage reductions, no atomics: the pixels are cut into
 * chunks fixed by the shape (LOSS_CHUNK pixels; for BCE + Dice, chunks of one
 * image, whose sums make its Dice terms); one block sums a chunk through a
 * fixed tree into a partial in the workspace; one block then sums the
 * partials in a fixed order and writes the scalar loss into out. The
 * backward (a root: no dout) writes node->scale times the gradient; BCE +
 * Dice first recomputes its per-image sums the same way.
 *
 * The logits and their gradient are activations, in the backend's format
 * (tensor_view.cuh; bf16 read into double as float is); the weight map and
 * the loss value stay float32 NCHW (UNET_F32_EXACT), the labels int32. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* Pixels one reduction block covers (UNET_THREADS x 8). */
#define LOSS_CHUNK 2048

/* Logits and the cropped views of label and weight, as the kernels see them.
 * The logits (and their gradient) are activations, in any format F of
 * tensor_view.cuh (kp channels in memory); labels are int32 and weight maps
 * float32, NCHW, in every format. */
template <class F> struct loss_view {
    const typename F::T *z;
    const int32_t *label;
    const float *weight;  /* NULL: every pixel weighs 1 */
    int n, k, h, w;       /* logits */
    int kp;               /* logit channels in memory */
    int lh, lw, loy, lox; /* label size and crop offset */
    int wh, ww, woy, wox; /* weight size and crop offset */
    /* the logit of channel j at pixel r (= y * w + x) of image n */
    __device__ __forceinline__ long long at(long long n_, int j, long long r) const {
        return F::plane_at(n_, j, kp, (long long)h * w, r);
    }
};

template <class F> static loss_view<F> view_of(const unet_op_args *a) {
    unet_shape s = a->in_shape[0], l = a->in_shape[1];
    loss_view<F> v;
    v.z = (const typename F::T *)a->in[0];
    v.kp = unet_cuda_planes_c(a, s);
    v.label = (const int32_t *)a->in[1];
    v.weight = a->n_in > 2 ? (const float *)a->in[2] : NULL;
    v.n = s.n;
    v.k = s.c;
    v.h = s.h;
    v.w = s.w;
    v.lh = l.h;
    v.lw = l.w;
    v.loy = (l.h - s.h) / 2;
    v.lox = (l.w - s.w) / 2;
    v.wh = v.ww = v.woy = v.wox = 0;
    if (v.weight) {
        unet_shape ws = a->in_shape[2];
        v.wh = ws.h;
        v.ww = ws.w;
        v.woy = (ws.h - s.h) / 2;
        v.wox = (ws.w - s.w) / 2;
    }
    return v;
}

template <class F> static __device__ __forceinline__ int32_t label_at(const loss_view<F> &v, int n, int y, int x) {
    return v.label[((long long)n * v.lh + v.loy + y) * v.lw + v.lox + x];
}

template <class F> static __device__ __forceinline__ double weight_at(const loss_view<F> &v, int n, int y, int x) {
    return v.weight ? (double)v.weight[((long long)n * v.wh + v.woy + y) * v.ww + v.wox + x] : 1.0;
}

/* ---- softmax cross-entropy ---- */

static long long ce_chunks(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    long long pixels = (long long)s.n * s.h * s.w;
    return (pixels + LOSS_CHUNK - 1) / LOSS_CHUNK;
}

static size_t ce_workspace_bytes(const unet_op_args *a) { return (size_t)ce_chunks(a) * sizeof(double); }

/* sum_j exp(z_j - max) over the K logits of pixel r of image n; *max gets the max. */
template <class F>
static __device__ double softmax_denominator(const loss_view<F> &v, int n, long long r, double *max) {
    double m = unet_ld(v.z, v.at(n, 0, r));
    for (int j = 1; j < v.k; j++) {
        float zj = unet_ld(v.z, v.at(n, j, r));
        if (zj > m) m = zj;
    }
    double s = 0.0;
    for (int j = 0; j < v.k; j++) s += exp((double)unet_ld(v.z, v.at(n, j, r)) - m);
    *max = m;
    return s;
}

/* Block b sums the weighted NLL of pixels b*LOSS_CHUNK .. (pixels in (n, y, x) order). */
template <class F> static __global__ void ce_partial_kernel(loss_view<F> v, double *partial) {
    long long hw = (long long)v.h * v.w, pixels = (long long)v.n * hw;
    long long begin = (long long)blockIdx.x * LOSS_CHUNK;
    long long end = begin + LOSS_CHUNK < pixels ? begin + LOSS_CHUNK : pixels;
    double acc[1] = {0.0};
    for (long long p = begin + threadIdx.x; p < end; p += UNET_THREADS) {
        int n = (int)(p / hw);
        long long r = p - n * hw;
        int y = (int)(r / v.w), x = (int)(r - (long long)y * v.w);
        int32_t l = label_at(v, n, y, x);
        if (l < 0 || l >= v.k) continue;
        double m, s = softmax_denominator(v, n, r, &m);
        acc[0] += weight_at(v, n, y, x) * (log(s) - ((double)unet_ld(v.z, v.at(n, l, r)) - m));
    }
    unet_block_sum<1>(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc[0];
}

/* One block: the partials in a fixed order, divided by the pixel count. */
static __global__ void ce_finish_kernel(const double *partial, long long chunks, double pixels, float *out) {
    double acc[1] = {0.0};
    for (long long i = threadIdx.x; i < chunks; i += UNET_THREADS) acc[0] += partial[i];
    unet_block_sum<1>(acc);
    if (threadIdx.x == 0) out[0] = (float)(acc[0] / pixels);
}

/* dz = coef * w * (softmax - onehot), one thread per pixel writing its K
 * gradients (and zeros into its padding channels). */
template <class F>
static __global__ void ce_backward_kernel(loss_view<F> v, double coef, typename F::T *dz, int accumulate) {
    long long hw = (long long)v.h * v.w, pixels = (long long)v.n * hw;
    for (long long p = unet_global_thread(); p < pixels; p += unet_grid_threads()) {
        int n = (int)(p / hw);
        long long r = p - n * hw;
        int y = (int)(r / v.w), x = (int)(r - (long long)y * v.w);
        int32_t l = label_at(v, n, y, x);
        int valid = l >= 0 && l < v.k;
        double m, s = softmax_denominator(v, n, r, &m);
        double c = valid ? coef * weight_at(v, n, y, x) : 0.0;
        for (int j = 0; j < v.k; j++) {
            long long i = v.at(n, j, r);
            double prob = exp((double)unet_ld(v.z, i) - m) / s;
            unet_store_grad_t(dz, i, (float)(c * (prob - (j == l ? 1.0 : 0.0))), accumulate);
        }
        for (int j = v.k; j < v.kp; j++) unet_st(dz, v.at(n, j, r), 0.0f);
    }
}

/* ---- BCE + Dice ---- */

/* Per (image, chunk): weighted BCE, sum p*y, sum p, sum y. */
#define BD_SUMS 4

static int bd_chunks(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    return (int)(((long long)s.h * s.w + LOSS_CHUNK - 1) / LOSS_CHUNK);
}

/* Partials, then per image the Dice numerator and denominator. */
static size_t bd_partial_bytes(const unet_op_args *a) {
    size_t b = (size_t)a->in_shape[0].n * (size_t)bd_chunks(a) * BD_SUMS * sizeof(double);
    return (b + 255) / 256 * 256;
}

static size_t bd_workspace_bytes(const unet_op_args *a) {
    return bd_partial_bytes(a) + 2 * (size_t)a->in_shape[0].n * sizeof(double);
}

static __device__ __forceinline__ double sigmoid(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* Block (chunk, image). */
template <class F> static __global__ void bd_partial_kernel(loss_view<F> v, double *partial) {
    int n = blockIdx.y;
    long long hw = (long long)v.h * v.w;
    long long begin = (long long)blockIdx.x * LOSS_CHUNK, end = begin + LOSS_CHUNK < hw ? begin + LOSS_CHUNK : hw;
    double acc[BD_SUMS] = {0.0, 0.0, 0.0, 0.0};
    for (long long r = begin + threadIdx.x; r < end; r += UNET_THREADS) {
        int y = (int)(r / v.w), x = (int)(r - (long long)y * v.w);
        double zv = unet_ld(v.z, v.at(n, 0, r)), t = label_at(v, n, y, x), p = sigmoid(zv);
        /* BCE with logits, stable: max(z, 0) - z*y + log(1 + exp(-|z|)) */
        double bce = (zv > 0.0 ? zv : 0.0) - zv * t + log1p(exp(-fabs(zv)));
        acc[0] += weight_at(v, n, y, x) * bce;
        acc[1] += p * t;
        acc[2] += p;
        acc[3] += t;
    }
    unet_block_sum<BD_SUMS>(acc);
    if (threadIdx.x == 0) {
        double *out = partial + BD_SUMS * ((long long)n * gridDim.x + blockIdx.x);
        for (int i = 0; i < BD_SUMS; i++) out[i] = acc[i];
    }
}

/* One block: per image its sums (fixed tree), its Dice terms into dice
 * (numerator, denominator pairs), and, when out is given, the loss. */
static __global__ void bd_finish_kernel(const double *partial, int chunks, int images, double pixels, double *dice,
                                        float *out) {
    double bce = 0.0, dice_sum = 0.0;
    for (int n = 0; n < images; n++) {
        double acc[BD_SUMS] = {0.0, 0.0, 0.0, 0.0};
        for (int i = threadIdx.x; i < chunks; i += UNET_THREADS)
            for (int j = 0; j < BD_SUMS; j++) acc[j] += partial[BD_SUMS * ((long long)n * chunks + i) + j];
        unet_block_sum<BD_SUMS>(acc);
        if (threadIdx.x == 0) {
            double numer = 2.0 * acc[1] + 1.0, denom = acc[2] + acc[3] + 1.0;
            dice[2 * n] = numer;
            dice[2 * n + 1] = denom;
            bce += acc[0];
            dice_sum += numer / denom;
        }
    }
    if (threadIdx.x == 0 && out) out[0] = (float)(bce / pixels + 1.0 - dice_sum / images);
}

/* d/dz = bce_coef * w * (p - y) - dice_coef * (2 y denom - numer) / denom^2 * p (1 - p);
 * zeros into the padding channels. */
template <class F>
static __global__ void bd_backward_kernel(loss_view<F> v, const double *dice, double bce_coef, double dice_coef,
                                          typename F::T *dz, int accumulate) {
    long long hw = (long long)v.h * v.w, pixels = (long long)v.n * hw;
    for (long long i = unet_global_thread(); i < pixels; i += unet_grid_threads()) {
        int n = (int)(i / hw);
        long long r = i - n * hw;
        int y = (int)(r / v.w), x = (int)(r - (long long)y * v.w);
        double t = label_at(v, n, y, x), p = sigmoid(unet_ld(v.z, v.at(n, 0, r)));
        double numer = dice[2 * n], denom = dice[2 * n + 1];
        double g = bce_coef * weight_at(v, n, y, x) * (p - t) -
                   dice_coef * (2.0 * t * denom - numer) / (denom * denom) * p * (1.0 - p);
        unet_store_grad_t(dz, v.at(n, 0, r), (float)g, accumulate);
        for (int j = 1; j < v.kp; j++) unet_st(dz, v.at(n, j, r), 0.0f);
    }
}

/* ---- host side ---- */

static void check_loss_args(const unet_op_args *a, int backward) {
    unet_shape s = a->in_shape[0], l = a->in_shape[1];
    const char *bad = NULL;
    if (a->n_in < 2 || a->n_in > 3)
        bad = "a loss takes logits, label and an optional weight map";
    else if (!a->in[0] || !a->in[1] || (a->n_in > 2 && !a->in[2]))
        bad = "a loss input pointer is NULL";
    else if (l.n != s.n || l.c != 1 || l.h < s.h || l.w < s.w)
        bad = "the label must be (N,1,H,W) with H,W at least the logits'";
    else if (a->n_in > 2 &&
             (a->in_shape[2].n != s.n || a->in_shape[2].c != 1 || a->in_shape[2].h < s.h || a->in_shape[2].w < s.w))
        bad = "the weight map must be (N,1,H,W) with H,W at least the logits'";
    else if (!a->workspace)
        bad = "a loss needs its workspace";
    else if (!backward && !a->out)
        bad = "a loss forward needs out";
    else if (s.n > 65535)
        bad = "a loss supports at most 65535 images in a batch";
    if (bad) unet_cuda_fail(__FILE__, __LINE__, "argument check", bad, a);
}

static long long pixels_of(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    return (long long)s.n * s.h * s.w;
}

/* The launches below, for the logits' storage format F. */
template <class F> static void ce_forward_t(const unet_op_args *a, long long chunks, double *partial) {
    ce_partial_kernel<<<(unsigned)chunks, UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(view_of<F>(a), partial);
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void ce_backward_t(const unet_op_args *a, long long pixels, double coef) {
    ce_backward_kernel<<<unet_blocks_for(pixels), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        view_of<F>(a), coef, (typename F::T *)a->din[0], a->din_accumulate[0]);
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void bd_partial_t(const unet_op_args *a, int chunks, double *partial) {
    dim3 grid((unsigned)chunks, (unsigned)a->in_shape[0].n);
    bd_partial_kernel<<<grid, UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(view_of<F>(a), partial);
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void bd_backward_t(const unet_op_args *a, long long pixels, const double *dice) {
    double scale = a->node->scale;
    bd_backward_kernel<<<unet_blocks_for(pixels), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        view_of<F>(a), dice, scale / (double)pixels, scale / a->in_shape[0].n, (typename F::T *)a->din[0],
        a->din_accumulate[0]);
    UNET_CUDA_LAUNCHED(a);
}

static void ce_forward(const unet_op_args *a) {
    check_loss_args(a, 0);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    long long chunks = ce_chunks(a), pixels = pixels_of(a);
    double *partial = (double *)a->workspace;
    if (chunks > 0) {
        unet_dispatch(a, [&](auto f) { ce_forward_t<decltype(f)>(a, chunks, partial); });
    }
    /* an empty batch has no mean: NaN, as the CPU's 0/0 */
    ce_finish_kernel<<<1, UNET_THREADS, 0, stream>>>(partial, chunks, (double)pixels, (float *)a->out);
    UNET_CUDA_LAUNCHED(a);
}

static void ce_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    check_loss_args(a, 1);
    long long pixels = pixels_of(a);
    if (pixels == 0) return;
    double coef = (double)a->node->scale / (double)pixels;
    unet_dispatch(a, [&](auto f) { ce_backward_t<decltype(f)>(a, pixels, coef); });
}

/* Partials and per-image Dice terms into the workspace; the loss into out when given. */
static double *bd_sums(const unet_op_args *a, float *out) {
    unet_shape s = a->in_shape[0];
    if (s.c != 1) unet_cuda_fail(__FILE__, __LINE__, "shape check", "bce_dice needs one logit channel", a);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int chunks = bd_chunks(a);
    double *partial = (double *)a->workspace;
    double *dice = (double *)((char *)a->workspace + bd_partial_bytes(a));
    if (chunks > 0 && s.n > 0) {
        unet_dispatch(a, [&](auto f) { bd_partial_t<decltype(f)>(a, chunks, partial); });
    }
    bd_finish_kernel<<<1, UNET_THREADS, 0, stream>>>(partial, chunks, s.n, (double)pixels_of(a), dice, out);
    UNET_CUDA_LAUNCHED(a);
    return dice;
}

static void bd_forward(const unet_op_args *a) {
    check_loss_args(a, 0);
    bd_sums(a, (float *)a->out);
}

static void bd_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    check_loss_args(a, 1);
    double *dice = bd_sums(a, NULL);
    long long pixels = pixels_of(a);
    if (pixels == 0) return;
    unet_dispatch(a, [&](auto f) { bd_backward_t<decltype(f)>(a, pixels, dice); });
}

extern "C" const unet_op_impl unet_cuda_softmax_ce = {ce_forward, ce_backward, ce_workspace_bytes, NULL};
extern "C" const unet_op_impl unet_cuda_bce_dice = {bd_forward, bd_backward, bd_workspace_bytes, NULL};
