/* x2 upsampling on the GPU, twin of src/kernels/cpu/upsample.c: bilinear
 * with align_corners = False, or nearest (at the end).
 *
 * Bilinear:
 * Forward: one thread per output element, with the CPU's taps and its
 * operation order, each operation rounded on its own (no FMA contraction),
 * so both backends give the same bits.
 *
 * Backward without atomics, as a gather: one thread per input element sums
 * the contributions of the output elements whose taps reach it. For x2 those
 * are the output rows (and columns) 2i-1 .. 2i+2, each weighing the sum of
 * its tap weights on i (both taps land on i at a clamped border). Every sum
 * has a fixed order: deterministic. The order differs from the CPU's
 * scatter, so the two agree to rounding (a few float ulps), not bit for bit.
 *
 * Both layouts of tensor_view.cuh; the arithmetic is float in both. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* The two source taps of output index o along an axis of in_size inputs
 * (the CPU twin's taps_of): PyTorch's source index (o + 0.5) / 2 - 0.5,
 * clamped at 0; weights 1, 0.75 or 0.25, exact in float. */
typedef struct {
    int i0, i1;
    float w0, w1;
} lerp_taps;

static __device__ __forceinline__ lerp_taps taps_of(int o, int in_size) {
    float src = __fsub_rn(__fmul_rn(0.5f, __fadd_rn((float)o, 0.5f)), 0.5f);
    if (src < 0.0f) src = 0.0f;
    lerp_taps t;
    t.i0 = (int)src;
    t.i1 = t.i0 + (t.i0 < in_size - 1);
    t.w1 = __fsub_rn(src, (float)t.i0);
    t.w0 = __fsub_rn(1.0f, t.w1);
    return t;
}

/* The weight with which output index o reads input index i (0 if it does not). */
static __device__ __forceinline__ float tap_weight(int o, int i, int in_size) {
    lerp_taps t = taps_of(o, in_size);
    return (t.i0 == i ? t.w0 : 0.0f) + (t.i1 == i ? t.w1 : 0.0f);
}

static __device__ __forceinline__ float lerp(float w0, float a, float w1, float b) {
    return __fadd_rn(__fmul_rn(w0, a), __fmul_rn(w1, b));
}

/* grid.x: planes (n, c), padding planes included (zeros). */
template <class VX, class VY>
static __global__ void upsample2_forward_kernel(VX x, VY y, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        if (c >= x.c) {
            unet_st(y.p, y.at(n, c, oy, ox), 0.0f);
            continue;
        }
        lerp_taps ty = taps_of(oy, x.h), tx = taps_of(ox, x.w);
        float a0 = unet_ld(x.p, x.at(n, c, ty.i0, tx.i0)), a1 = unet_ld(x.p, x.at(n, c, ty.i0, tx.i1));
        float b0 = unet_ld(x.p, x.at(n, c, ty.i1, tx.i0)), b1 = unet_ld(x.p, x.at(n, c, ty.i1, tx.i1));
        unet_st(y.p, y.at(n, c, oy, ox), lerp(ty.w0, lerp(tx.w0, a0, tx.w1, a1), ty.w1, lerp(tx.w0, b0, tx.w1, b1)));
    }
}

/* grid.x: planes (n, c) of the input gradient, padding planes included (zeros). */
template <class VG, class VD>
static __global__ void upsample2_backward_kernel(VG dy, VD dx, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)dx.cp), c = (int)(blockIdx.x % (unsigned)dx.cp);
    int in_h = dx.h, in_w = dx.w, out_h = dy.h, out_w = dy.w, in_items = in_h * in_w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < in_items; e += gridDim.y * blockDim.x) {
        int iy = e / in_w, ix = e - iy * in_w;
        if (c >= dx.c) {
            unet_st(dx.p, dx.at(n, c, iy, ix), 0.0f);
            continue;
        }
        int oy_lo = max(2 * iy - 1, 0), oy_hi = min(2 * iy + 2, out_h - 1);
        int ox_lo = max(2 * ix - 1, 0), ox_hi = min(2 * ix + 2, out_w - 1);
        float wx[4];
        for (int ox = ox_lo; ox <= ox_hi; ox++) wx[ox - ox_lo] = tap_weight(ox, ix, in_w);
        float sum = 0.0f;
        for (int oy = oy_lo; oy <= oy_hi; oy++) {
            float wy = tap_weight(oy, iy, in_h);
            if (wy == 0.0f) continue;
            float rs = 0.0f;
            for (int ox = ox_lo; ox <= ox_hi; ox++) rs += wx[ox - ox_lo] * unet_ld(dy.p, dy.at(n, c, oy, ox));
            sum += wy * rs;
        }
        unet_store_grad_t(dx.p, dx.at(n, c, iy, ix), sum, accumulate);
    }
}

static void check_shapes(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    if (so.n != si.n || so.c != si.c || so.h != 2 * si.h || so.w != 2 * si.w)
        unet_cuda_fail(__FILE__, __LINE__, "shape check", "upsample2 needs out = (N, C, 2H, 2W) of in", a);
}

/* ---- nearest: output (oy, ox) is input (oy / 2, ox / 2); an input's
 * gradient is the sum of its four outputs' in row-major order, as on the
 * CPU: the same bits. ---- */

template <class VX, class VY>
static __global__ void nearest_forward_kernel(VX x, VY y, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        unet_st(y.p, y.at(n, c, oy, ox), c < x.c ? unet_ld(x.p, x.at(n, c, oy / 2, ox / 2)) : 0.0f);
    }
}

template <class VG, class VD>
static __global__ void nearest_backward_kernel(VG dy, VD dx, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)dx.cp), c = (int)(blockIdx.x % (unsigned)dx.cp), in_items = dx.h * dx.w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < in_items; e += gridDim.y * blockDim.x) {
        int iy = e / dx.w, ix = e - iy * dx.w;
        if (c >= dx.c) {
            unet_st(dx.p, dx.at(n, c, iy, ix), 0.0f);
            continue;
        }
        float g = unet_ld(dy.p, dy.at(n, c, 2 * iy, 2 * ix)) + unet_ld(dy.p, dy.at(n, c, 2 * iy, 2 * ix + 1)) +
                  unet_ld(dy.p, dy.at(n, c, 2 * iy + 1, 2 * ix)) + unet_ld(dy.p, dy.at(n, c, 2 * iy + 1, 2 * ix + 1));
        unet_store_grad_t(dx.p, dx.at(n, c, iy, ix), g, accumulate);
    }
}

static int nearest(const unet_op_args *a) { return a->node->upsample == UNET_UPSAMPLE_NEAREST; }

static void upsample2_forward(const unet_op_args *a) {
    check_shapes(a);
    unet_shape si = a->in_shape[0], so = a->out_shape;
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if (unet_cuda_is_bf16(a) && nearest(a))
        nearest_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->in[0], si),
                                                               unet_view((unet_bf16 *)a->out, so), (int)items);
    else if (nearest(a))
        nearest_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->in[0], si),
                                                               unet_view((float *)a->out, so), (int)items);
    else if (unet_cuda_is_bf16(a))
        upsample2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->in[0], si),
                                                                 unet_view((unet_bf16 *)a->out, so), (int)items);
    else
        upsample2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->in[0], si),
                                                                 unet_view((float *)a->out, so), (int)items);
    UNET_CUDA_LAUNCHED(a);
}

static void upsample2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    check_shapes(a);
    unet_shape si = a->in_shape[0], so = a->out_shape;
    long long planes = (long long)si.n * unet_cuda_planes_c(a, si), items = (long long)si.h * si.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if (unet_cuda_is_bf16(a) && nearest(a))
        nearest_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->dout, so),
                                                                unet_view((unet_bf16 *)a->din[0], si), acc);
    else if (nearest(a))
        nearest_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->dout, so),
                                                                unet_view((float *)a->din[0], si), acc);
    else if (unet_cuda_is_bf16(a))
        upsample2_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->dout, so),
                                                                  unet_view((unet_bf16 *)a->din[0], si), acc);
    else
        upsample2_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->dout, so),
                                                                  unet_view((float *)a->din[0], si), acc);
    UNET_CUDA_LAUNCHED(a);
}

extern "C" const unet_op_impl unet_cuda_upsample2 = {upsample2_forward, upsample2_backward, NULL, NULL};
