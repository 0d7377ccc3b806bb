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
 * Every format of tensor_view.cuh; the arithmetic is float in all. NCHW
 * float32 walks planes (n, c); NHWC gives a thread one 16-byte vector of
 * channels of a pixel (nhwc.cuh), with per channel the same operations in
 * the same order. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nhwc.cuh"
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

/* The output value from its four taps a0 a1 / b0 b1 (rows ty, columns tx). */
static __device__ __forceinline__ float bilinear(const lerp_taps &ty, const lerp_taps &tx, float a0, float a1, float b0,
                                                 float b1) {
    return lerp(ty.w0, lerp(tx.w0, a0, tx.w1, a1), ty.w1, lerp(tx.w0, b0, tx.w1, b1));
}

/* The output rows (or columns) whose taps reach input index i: lo .. hi, and their weights on i. */
typedef struct {
    int lo, hi;
    float w[4];
} gather_taps;

static __device__ __forceinline__ gather_taps gather_of(int i, int in_size, int out_size) {
    gather_taps g;
    g.lo = max(2 * i - 1, 0);
    g.hi = min(2 * i + 2, out_size - 1);
    for (int o = g.lo; o <= g.hi; o++) g.w[o - g.lo] = tap_weight(o, i, in_size);
    return g;
}

/* grid.x: planes (n, c), padding planes included (zeros). */
template <class VX, class VY> static __global__ void upsample2_forward_kernel(VX x, VY y, int out_items) {
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
        unet_st(y.p, y.at(n, c, oy, ox), bilinear(ty, tx, a0, a1, b0, b1));
    }
}

/* grid.x: planes (n, c) of the input gradient, padding planes included (zeros). */
template <class VG, class VD> static __global__ void upsample2_backward_kernel(VG dy, VD dx, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)dx.cp), c = (int)(blockIdx.x % (unsigned)dx.cp);
    int in_h = dx.h, in_w = dx.w, out_h = dy.h, out_w = dy.w, in_items = in_h * in_w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < in_items; e += gridDim.y * blockDim.x) {
        int iy = e / in_w, ix = e - iy * in_w;
        if (c >= dx.c) {
            unet_st(dx.p, dx.at(n, c, iy, ix), 0.0f);
            continue;
        }
        gather_taps gy = gather_of(iy, in_h, out_h), gx = gather_of(ix, in_w, out_w);
        float sum = 0.0f;
        for (int oy = gy.lo; oy <= gy.hi; oy++) {
            float wy = gy.w[oy - gy.lo];
            if (wy == 0.0f) continue;
            float rs = 0.0f;
            for (int ox = gx.lo; ox <= gx.hi; ox++) rs += gx.w[ox - gx.lo] * unet_ld(dy.p, dy.at(n, c, oy, ox));
            sum += wy * rs;
        }
        unet_store_grad_t(dx.p, dx.at(n, c, iy, ix), sum, accumulate);
    }
}

/* ---- nearest: output (oy, ox) is input (oy / 2, ox / 2); an input's
 * gradient is the sum of its four outputs' in row-major order, as on the
 * CPU: the same bits. ---- */

/* NCHW: grid.x planes (n, c), grid.y along the plane. */
template <class VX, class VY> static __global__ void nearest_forward_kernel(VX x, VY y, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        unet_st(y.p, y.at(n, c, oy, ox), c < x.c ? unet_ld(x.p, x.at(n, c, oy / 2, ox / 2)) : 0.0f);
    }
}

template <class VG, class VD> static __global__ void nearest_backward_kernel(VG dy, VD dx, int accumulate) {
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

/* NHWC: item i is (pixel, channel vector), the vector fastest, of the tensor
 * a thread writes (the output forward, the input gradient backward); per
 * channel the operations of the NCHW kernels above, in their order. */
typedef struct {
    int channels, vectors;
    int in_h, in_w, out_h, out_w;
    unsigned items;
} upsample_nhwc;

template <class F, bool Nearest>
static __global__ void upsample2_nhwc_forward_kernel(const typename F::T *x, typename F::T *y, upsample_nhwc s) {
    long long cp = (long long)s.vectors * F::V;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        int n, oy, ox, c0 = (int)(i % (unsigned)s.vectors) * F::V;
        unet_pixel_of(i, s.vectors, s.out_h, s.out_w, n, oy, ox);
        unet_vec<F> r;
        if constexpr (Nearest) {
            r = unet_ldv<F>(x, (((long long)n * s.in_h + oy / 2) * s.in_w + ox / 2) * cp + c0);
        } else {
            lerp_taps ty = taps_of(oy, s.in_h), tx = taps_of(ox, s.in_w);
            long long row0 = ((long long)n * s.in_h + ty.i0) * s.in_w, row1 = ((long long)n * s.in_h + ty.i1) * s.in_w;
            unet_vec<F> a0 = unet_ldv<F>(x, (row0 + tx.i0) * cp + c0), a1 = unet_ldv<F>(x, (row0 + tx.i1) * cp + c0);
            unet_vec<F> b0 = unet_ldv<F>(x, (row1 + tx.i0) * cp + c0), b1 = unet_ldv<F>(x, (row1 + tx.i1) * cp + c0);
#pragma unroll
            for (int j = 0; j < F::V; j++) r.v[j] = bilinear(ty, tx, a0.v[j], a1.v[j], b0.v[j], b1.v[j]);
        }
#pragma unroll
        for (int j = 0; j < F::V; j++)
            if (c0 + j >= s.channels) r.v[j] = 0.0f;
        unet_stv<F>(y, (long long)i * F::V, r);
    }
}

/* The gradient of input pixel (n, iy, ix), channels c0.., into sum: bilinear's gather. */
template <class F>
static __device__ __forceinline__ void bilinear_grad(const typename F::T *dy, const upsample_nhwc &s, int n, int iy,
                                                     int ix, int c0, float (&sum)[F::V]) {
    long long cp = (long long)s.vectors * F::V;
    gather_taps gy = gather_of(iy, s.in_h, s.out_h), gx = gather_of(ix, s.in_w, s.out_w);
    for (int j = 0; j < F::V; j++) sum[j] = 0.0f;
    for (int oy = gy.lo; oy <= gy.hi; oy++) {
        float wy = gy.w[oy - gy.lo];
        if (wy == 0.0f) continue;
        float rs[F::V];
        for (int j = 0; j < F::V; j++) rs[j] = 0.0f;
        for (int ox = gx.lo; ox <= gx.hi; ox++) {
            unet_vec<F> g = unet_ldv<F>(dy, (((long long)n * s.out_h + oy) * s.out_w + ox) * cp + c0);
#pragma unroll
            for (int j = 0; j < F::V; j++) rs[j] += gx.w[ox - gx.lo] * g.v[j];
        }
#pragma unroll
        for (int j = 0; j < F::V; j++) sum[j] += wy * rs[j];
    }
}

/* The same for nearest: its four outputs in row-major order. */
template <class F>
static __device__ __forceinline__ void nearest_grad(const typename F::T *dy, const upsample_nhwc &s, int n, int iy,
                                                    int ix, int c0, float (&sum)[F::V]) {
    long long cp = (long long)s.vectors * F::V;
    long long row0 = ((long long)n * s.out_h + 2 * iy) * s.out_w + 2 * ix, row1 = row0 + s.out_w;
    unet_vec<F> a0 = unet_ldv<F>(dy, row0 * cp + c0), a1 = unet_ldv<F>(dy, (row0 + 1) * cp + c0);
    unet_vec<F> b0 = unet_ldv<F>(dy, row1 * cp + c0), b1 = unet_ldv<F>(dy, (row1 + 1) * cp + c0);
#pragma unroll
    for (int j = 0; j < F::V; j++) sum[j] = a0.v[j] + a1.v[j] + b0.v[j] + b1.v[j];
}

template <class F, bool Nearest>
static __global__ void upsample2_nhwc_backward_kernel(const typename F::T *dy, typename F::T *dx, upsample_nhwc s,
                                                      int accumulate) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        int n, iy, ix, c0 = (int)(i % (unsigned)s.vectors) * F::V;
        unet_pixel_of(i, s.vectors, s.in_h, s.in_w, n, iy, ix);
        float sum[F::V];
        if constexpr (Nearest)
            nearest_grad<F>(dy, s, n, iy, ix, c0, sum);
        else
            bilinear_grad<F>(dy, s, n, iy, ix, c0, sum);
        unet_vec<F> old, d;
        if (accumulate) old = unet_ldv<F>(dx, (long long)i * F::V);
#pragma unroll
        for (int j = 0; j < F::V; j++) d.v[j] = c0 + j >= s.channels ? 0.0f : accumulate ? old.v[j] + sum[j] : sum[j];
        unet_stv<F>(dx, (long long)i * F::V, d);
    }
}

static void check_shapes(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    if (so.n != si.n || so.c != si.c || so.h != 2 * si.h || so.w != 2 * si.w)
        unet_cuda_fail(__FILE__, __LINE__, "shape check", "upsample2 needs out = (N, C, 2H, 2W) of in", a);
}

static int nearest(const unet_op_args *a) { return a->node->upsample == UNET_UPSAMPLE_NEAREST; }

template <class F> static upsample_nhwc upsample_nhwc_of(const unet_op_args *a, unet_shape written) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    upsample_nhwc s = {si.c, F::channels(si.c) / F::V, si.h, si.w, so.h, so.w, unet_vec_items<F>(a, written)};
    return s;
}

template <class F> static void upsample2_forward_t(const unet_op_args *a) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if constexpr (F::nhwc) {
        upsample_nhwc s = upsample_nhwc_of<F>(a, so);
        if (nearest(a))
            upsample2_nhwc_forward_kernel<F, true>
                <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->in[0], (T *)a->out, s);
        else
            upsample2_nhwc_forward_kernel<F, false>
                <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->in[0], (T *)a->out, s);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)so.n * so.c, (long long)so.h * so.w);
        if (nearest(a))
            nearest_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->in[0], a->in_shape[0]),
                                                                   unet_view_out<F>(a->out, so), so.h * so.w);
        else
            upsample2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->in[0], a->in_shape[0]),
                                                                     unet_view_out<F>(a->out, so), so.h * so.w);
    }
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void upsample2_backward_t(const unet_op_args *a) {
    typedef typename F::T T;
    unet_shape si = a->in_shape[0];
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if constexpr (F::nhwc) {
        upsample_nhwc s = upsample_nhwc_of<F>(a, si);
        if (nearest(a))
            upsample2_nhwc_backward_kernel<F, true>
                <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->dout, (T *)a->din[0], s, acc);
        else
            upsample2_nhwc_backward_kernel<F, false>
                <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->dout, (T *)a->din[0], s, acc);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)si.n * si.c, (long long)si.h * si.w);
        if (nearest(a))
            nearest_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->dout, a->out_shape),
                                                                    unet_view_out<F>(a->din[0], si), acc);
        else
            upsample2_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->dout, a->out_shape),
                                                                      unet_view_out<F>(a->din[0], si), acc);
    }
    UNET_CUDA_LAUNCHED(a);
}

static void upsample2_forward(const unet_op_args *a) {
    check_shapes(a);
    unet_shape so = a->out_shape;
    if ((long long)so.n * so.c * so.h * so.w == 0) return;
    unet_dispatch(a, [&](auto f) { upsample2_forward_t<decltype(f)>(a); });
}

static void upsample2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    check_shapes(a);
    unet_shape si = a->in_shape[0];
    if ((long long)si.n * si.c * si.h * si.w == 0) return;
    unet_dispatch(a, [&](auto f) { upsample2_backward_t<decltype(f)>(a); });
}

extern "C" const unet_op_impl unet_cuda_upsample2 = {upsample2_forward, upsample2_backward, NULL, NULL};
