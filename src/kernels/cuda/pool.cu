/* Max pooling on the GPU, twins of src/kernels/cpu/pool.c: maxpool2 (2x2
 * stride 2) and, at the end, maxpool (k x k, stride, -inf padding).
 *
 * maxpool2:
 * One thread per window (H and W are even: the shape inference rejects odd
 * sizes). In float32 NCHW, blocks per plane (n, c): the two values of a
 * window row are adjacent and at an even index, read and written as one
 * float2. In NHWC (tensor_view.cuh, nhwc.cuh) a thread takes a window's
 * four pixels for one 16-byte vector of channels, and consecutive threads
 * consecutive vectors. The comparisons are the same, in the same order.
 *
 * The backward recomputes each window's argmax from the input with the
 * forward's rule (the first maximum in row-major order; a NaN wins), so the
 * gradient lands where the forward took its value from; each window writes
 * its own four input gradients: no atomics, no overlap. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nhwc.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* Whether v replaces the running maximum m (see the CPU twin). */
static __device__ __forceinline__ bool takes_max(float v, float m) { return v > m || isnan(v); }

/* Which of the window a b / c d holds its maximum: 0..3 in row-major order. */
static __device__ __forceinline__ int window_argmax(float a, float b, float c, float d) {
    int win = 0;
    float m = a;
    if (takes_max(b, m)) win = 1, m = b;
    if (takes_max(c, m)) win = 2, m = c;
    if (takes_max(d, m)) win = 3;
    return win;
}

/* The maximum of the window a b / c d, taken in that order. */
static __device__ __forceinline__ float window_max(float a, float b, float c, float d) {
    float m = a;
    m = takes_max(b, m) ? b : m;
    m = takes_max(c, m) ? c : m;
    return takes_max(d, m) ? d : m;
}

/* The two horizontally adjacent values at memory index i (x even): one
 * float2 in NCHW float32, two loads a pixel apart in NHWC. */
template <class F, class T>
static __device__ __forceinline__ float2 ld_pair(const unet_act_view<F, T> &v, long long i) {
    if constexpr (F::nhwc)
        return make_float2(unet_ld(v.p, i), unet_ld(v.p, i + v.cp));
    else
        return *reinterpret_cast<const float2 *>(v.p + i);
}

/* A gradient store of such a pair (see unet_store_grad). */
template <class F, class T>
static __device__ __forceinline__ void store_grad2(const unet_act_view<F, T> &d, long long i, float2 v,
                                                   int accumulate) {
    if constexpr (F::nhwc) {
        unet_store_grad_t(d.p, i, v.x, accumulate);
        unet_store_grad_t(d.p, i + d.cp, v.y, accumulate);
    } else {
        float2 *p = reinterpret_cast<float2 *>(d.p + i);
        if (accumulate) {
            float2 o = *p;
            v.x += o.x;
            v.y += o.y;
        }
        *p = v;
    }
}

/* grid.x: planes (n, c) of the output, padding planes included (zeros). */
template <class VX, class VY> static __global__ void maxpool2_forward_kernel(VX x, VY y, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        if (c >= x.c) {
            unet_st(y.p, y.at(n, c, oy, ox), 0.0f);
            continue;
        }
        float2 top = ld_pair(x, x.at(n, c, 2 * oy, 2 * ox));
        float2 bottom = ld_pair(x, x.at(n, c, 2 * oy + 1, 2 * ox));
        unet_st(y.p, y.at(n, c, oy, ox), window_max(top.x, top.y, bottom.x, bottom.y));
    }
}

template <class VX, class VG, class VD>
static __global__ void maxpool2_backward_kernel(VX x, VG dy, VD dx, int out_items, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / dy.w, ox = e - oy * dy.w;
        long long top = x.at(n, c, 2 * oy, 2 * ox), bottom = x.at(n, c, 2 * oy + 1, 2 * ox);
        if (c >= x.c) {
            store_grad2(dx, top, make_float2(0.0f, 0.0f), 0);
            store_grad2(dx, bottom, make_float2(0.0f, 0.0f), 0);
            continue;
        }
        float2 t = ld_pair(x, top);
        float2 b = ld_pair(x, bottom);
        float g = unet_ld(dy.p, dy.at(n, c, oy, ox));
        int win = window_argmax(t.x, t.y, b.x, b.y);
        store_grad2(dx, top, make_float2(win == 0 ? g : 0.0f, win == 1 ? g : 0.0f), accumulate);
        store_grad2(dx, bottom, make_float2(win == 2 ? g : 0.0f, win == 3 ? g : 0.0f), accumulate);
    }
}

/* NHWC: item i is (output pixel, channel vector), the vector fastest; the
 * window of output pixel (n, oy, ox) starts at input pixel (n, 2oy, 2ox). */
typedef struct {
    int channels, vectors, out_h, out_w;
    unsigned items;
} pool_nhwc;

/* The memory index of the window's top-left vector; the others are cp and a row of pixels further. */
template <class F> static __device__ __forceinline__ long long window_at(const pool_nhwc &s, unsigned i) {
    int n, oy, ox, vec = (int)(i % (unsigned)s.vectors);
    unet_pixel_of(i, s.vectors, s.out_h, s.out_w, n, oy, ox);
    return (((long long)n * 2 * s.out_h + 2 * oy) * (2 * s.out_w) + 2 * ox) * (s.vectors * F::V) + vec * F::V;
}

template <class F>
static __global__ void maxpool2_nhwc_forward_kernel(const typename F::T *x, typename F::T *y, pool_nhwc s) {
    long long cp = (long long)s.vectors * F::V, row = 2LL * s.out_w * cp;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        long long at = window_at<F>(s, i);
        unet_vec<F> a = unet_ldv<F>(x, at), b = unet_ldv<F>(x, at + cp);
        unet_vec<F> c = unet_ldv<F>(x, at + row), d = unet_ldv<F>(x, at + row + cp), m;
        int c0 = (int)(i % (unsigned)s.vectors) * F::V;
#pragma unroll
        for (int j = 0; j < F::V; j++) m.v[j] = c0 + j < s.channels ? window_max(a.v[j], b.v[j], c.v[j], d.v[j]) : 0.0f;
        unet_stv<F>(y, (long long)i * F::V, m);
    }
}

template <class F>
static __global__ void maxpool2_nhwc_backward_kernel(const typename F::T *x, const typename F::T *dy, typename F::T *dx,
                                                     pool_nhwc s, int accumulate) {
    long long cp = (long long)s.vectors * F::V, row = 2LL * s.out_w * cp;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        long long at[4];
        at[0] = window_at<F>(s, i), at[1] = at[0] + cp, at[2] = at[0] + row, at[3] = at[0] + row + cp;
        unet_vec<F> w[4], g = unet_ldv<F>(dy, (long long)i * F::V);
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = unet_ldv<F>(x, at[k]);
        int win[F::V], c0 = (int)(i % (unsigned)s.vectors) * F::V;
#pragma unroll
        for (int j = 0; j < F::V; j++) win[j] = window_argmax(w[0].v[j], w[1].v[j], w[2].v[j], w[3].v[j]);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            unet_vec<F> old, d;
            if (accumulate) old = unet_ldv<F>(dx, at[k]);
#pragma unroll
            for (int j = 0; j < F::V; j++) {
                float v = win[j] == k ? g.v[j] : 0.0f;
                d.v[j] = c0 + j >= s.channels ? 0.0f : accumulate ? old.v[j] + v : v;
            }
            unet_stv<F>(dx, at[k], d);
        }
    }
}

/* The kernels read and write window rows as float2 (NCHW) or 16-byte channel
 * vectors (NHWC): the tensors must start on 8 or 16 bytes (every arena
 * tensor starts on 256) with even H and W. */
static void check_pool_args(const unet_op_args *a, const void *x, const void *y, const void *third) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    char msg[256] = "";
    if (si.h % 2 || si.w % 2 || so.h != si.h / 2 || so.w != si.w / 2 || so.n != si.n || so.c != si.c)
        snprintf(msg, sizeof msg, "maxpool2 needs even H, W and out = in / 2");
    else if (!x || !y)
        snprintf(msg, sizeof msg, "maxpool2 backward needs the forward input (in[0] is NULL)");
    else if (((uintptr_t)x | (uintptr_t)y | (uintptr_t)third) & 15)
        snprintf(msg, sizeof msg, "maxpool2 tensors must start on 16-byte boundaries");
    if (msg[0]) unet_cuda_fail(__FILE__, __LINE__, "argument check", msg, a);
}

template <class F> static pool_nhwc pool_nhwc_of(const unet_op_args *a) {
    unet_shape so = a->out_shape;
    pool_nhwc s = {so.c, F::channels(so.c) / F::V, so.h, so.w, unet_vec_items<F>(a, so)};
    return s;
}

template <class F> static void maxpool2_forward_t(const unet_op_args *a) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if constexpr (F::nhwc) {
        pool_nhwc s = pool_nhwc_of<F>(a);
        maxpool2_nhwc_forward_kernel<F>
            <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->in[0], (T *)a->out, s);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)so.n * so.c, (long long)so.h * so.w);
        maxpool2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->in[0], a->in_shape[0]),
                                                                unet_view_out<F>(a->out, so), so.h * so.w);
    }
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void maxpool2_backward_t(const unet_op_args *a) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if constexpr (F::nhwc) {
        pool_nhwc s = pool_nhwc_of<F>(a);
        maxpool2_nhwc_backward_kernel<F><<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>(
            (const T *)a->in[0], (const T *)a->dout, (T *)a->din[0], s, acc);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)so.n * so.c, (long long)so.h * so.w);
        maxpool2_backward_kernel<<<l.grid, l.block, 0, stream>>>(
            unet_view_in<F>(a->in[0], a->in_shape[0]), unet_view_in<F>(a->dout, so),
            unet_view_out<F>(a->din[0], a->in_shape[0]), so.h * so.w, acc);
    }
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool2_forward(const unet_op_args *a) {
    unet_shape so = a->out_shape;
    check_pool_args(a, a->in[0], a->out, NULL);
    if ((long long)so.n * so.c * so.h * so.w == 0) return;
    unet_dispatch(a, [&](auto f) { maxpool2_forward_t<decltype(f)>(a); });
}

static void maxpool2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    unet_shape so = a->out_shape;
    check_pool_args(a, a->in[0], a->din[0], a->dout);
    if ((long long)so.n * so.c * so.h * so.w == 0) return;
    unet_dispatch(a, [&](auto f) { maxpool2_backward_t<decltype(f)>(a); });
}

extern "C" const unet_op_impl unet_cuda_maxpool2 = {maxpool2_forward, maxpool2_backward, NULL, NULL};

/* ---- maxpool: k x k, stride, pad (-inf) ----
 * Forward: one thread per output, the window scanned as the CPU scans it.
 * Backward as a gather, without atomics: one thread per input element walks
 * the windows that contain it in row-major order, recomputes each one's
 * maximum, and adds the gradient of those whose maximum it is, starting from
 * the gradient already there when accumulating: the CPU's scatter adds in
 * that order, so the two agree bit for bit. NCHW walks planes (n, c); NHWC
 * gives a thread one 16-byte vector of channels of a pixel, as maxpool2. */

struct pool_geom {
    int k, stride, pad;
};

/* The (row, column) of window (oy, ox)'s maximum in x's plane (n, c): the
 * first in row-major order, a NaN winning; padding never wins. */
template <class VX>
static __device__ __forceinline__ int2 window_max_at(const VX &x, int n, int c, pool_geom g, int oy, int ox) {
    int y0 = oy * g.stride - g.pad, x0 = ox * g.stride - g.pad;
    int ya = max(y0, 0), yb = min(y0 + g.k, x.h), xa = max(x0, 0), xb = min(x0 + g.k, x.w);
    int2 best = make_int2(ya, xa);
    float m = unet_ld(x.p, x.at(n, c, ya, xa));
    for (int y = ya; y < yb; y++)
        for (int xx = xa; xx < xb; xx++) {
            float v = unet_ld(x.p, x.at(n, c, y, xx));
            if (takes_max(v, m)) m = v, best = make_int2(y, xx);
        }
    return best;
}

/* grid.x: planes (n, c) of the output, padding planes included (zeros). */
template <class VX, class VY> static __global__ void maxpool_forward_kernel(VX x, VY y, pool_geom g, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        float v = 0.0f;
        if (c < x.c) {
            int2 at = window_max_at(x, n, c, g, oy, ox);
            v = unet_ld(x.p, x.at(n, c, at.x, at.y));
        }
        unet_st(y.p, y.at(n, c, oy, ox), v);
    }
}

/* The first window index whose window reaches input index i, and the last (inclusive). */
static __device__ __forceinline__ int2 windows_over(int i, pool_geom g, int out_size) {
    int lo = i + g.pad - g.k + 1, hi = i + g.pad;
    lo = lo <= 0 ? 0 : (lo + g.stride - 1) / g.stride;
    return make_int2(lo, min(hi / g.stride, out_size - 1));
}

/* grid.x: planes (n, c) of the input gradient, padding planes included (zeros). */
template <class VX, class VG, class VD>
static __global__ void maxpool_backward_kernel(VX x, VG dy, VD dx, pool_geom g, int in_items, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)dx.cp), c = (int)(blockIdx.x % (unsigned)dx.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < in_items; e += gridDim.y * blockDim.x) {
        int iy = e / dx.w, ix = e - iy * dx.w;
        long long at = dx.at(n, c, iy, ix);
        if (c >= dx.c) {
            unet_st(dx.p, at, 0.0f);
            continue;
        }
        float sum = accumulate ? unet_ld(dx.p, at) : 0.0f;
        int2 ry = windows_over(iy, g, dy.h), rx = windows_over(ix, g, dy.w);
        for (int oy = ry.x; oy <= ry.y; oy++)
            for (int ox = rx.x; ox <= rx.y; ox++) {
                int2 m = window_max_at(x, n, c, g, oy, ox);
                if (m.x == iy && m.y == ix) sum += unet_ld(dy.p, dy.at(n, c, oy, ox));
            }
        unet_st(dx.p, at, sum);
    }
}

/* NHWC: item i is (pixel, channel vector), the vector fastest, of the tensor
 * a thread writes (the output forward, the input gradient backward); per
 * lane the same scan, comparisons and sums, in the same order, as above. */
typedef struct {
    pool_geom g;
    int channels, vectors;
    int in_h, in_w, out_h, out_w;
    unsigned items;
} maxpool_nhwc;

/* Per lane, the maximum of window (oy, ox) of image n and its input pixel
 * (y * in_w + x): the first in row-major order, a NaN winning. */
template <class F>
static __device__ __forceinline__ void window_max_nhwc(const typename F::T *x, const maxpool_nhwc &s, int n, int c0,
                                                       int oy, int ox, float (&m)[F::V], int (&best)[F::V]) {
    long long cp = (long long)s.vectors * F::V;
    int y0 = oy * s.g.stride - s.g.pad, x0 = ox * s.g.stride - s.g.pad;
    int ya = max(y0, 0), yb = min(y0 + s.g.k, s.in_h), xa = max(x0, 0), xb = min(x0 + s.g.k, s.in_w);
    for (int y = ya; y < yb; y++)
        for (int xx = xa; xx < xb; xx++) {
            unet_vec<F> v = unet_ldv<F>(x, (((long long)n * s.in_h + y) * s.in_w + xx) * cp + c0);
#pragma unroll
            for (int j = 0; j < F::V; j++)
                if ((y == ya && xx == xa) || takes_max(v.v[j], m[j])) m[j] = v.v[j], best[j] = y * s.in_w + xx;
        }
}

template <class F>
static __global__ void maxpool_nhwc_forward_kernel(const typename F::T *x, typename F::T *y, maxpool_nhwc s) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        int n, oy, ox, c0 = (int)(i % (unsigned)s.vectors) * F::V;
        unet_pixel_of(i, s.vectors, s.out_h, s.out_w, n, oy, ox);
        float m[F::V];
        int best[F::V];
        window_max_nhwc<F>(x, s, n, c0, oy, ox, m, best);
        unet_vec<F> r;
#pragma unroll
        for (int j = 0; j < F::V; j++) r.v[j] = c0 + j < s.channels ? m[j] : 0.0f;
        unet_stv<F>(y, (long long)i * F::V, r);
    }
}

template <class F>
static __global__ void maxpool_nhwc_backward_kernel(const typename F::T *x, const typename F::T *dy, typename F::T *dx,
                                                    maxpool_nhwc s, int accumulate) {
    long long cp = (long long)s.vectors * F::V;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < s.items; i += gridDim.x * blockDim.x) {
        int n, iy, ix, c0 = (int)(i % (unsigned)s.vectors) * F::V;
        unet_pixel_of(i, s.vectors, s.in_h, s.in_w, n, iy, ix);
        float sum[F::V];
        unet_vec<F> old;
        if (accumulate) old = unet_ldv<F>(dx, (long long)i * F::V);
#pragma unroll
        for (int j = 0; j < F::V; j++) sum[j] = accumulate ? old.v[j] : 0.0f;
        int2 ry = windows_over(iy, s.g, s.out_h), rx = windows_over(ix, s.g, s.out_w);
        for (int oy = ry.x; oy <= ry.y; oy++)
            for (int ox = rx.x; ox <= rx.y; ox++) {
                float m[F::V];
                int best[F::V];
                window_max_nhwc<F>(x, s, n, c0, oy, ox, m, best);
                unet_vec<F> g = unet_ldv<F>(dy, (((long long)n * s.out_h + oy) * s.out_w + ox) * cp + c0);
#pragma unroll
                for (int j = 0; j < F::V; j++)
                    if (best[j] == iy * s.in_w + ix) sum[j] += g.v[j];
            }
        unet_vec<F> d;
#pragma unroll
        for (int j = 0; j < F::V; j++) d.v[j] = c0 + j < s.channels ? sum[j] : 0.0f;
        unet_stv<F>(dx, (long long)i * F::V, d);
    }
}

static pool_geom pool_geom_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const unet_node *nd = a->node;
    pool_geom g = {nd->k, nd->stride, nd->pad};
    if (g.k < 1 || g.stride < 1 || g.pad < 0 || 2 * g.pad > g.k || so.n != si.n || so.c != si.c ||
        so.h != (si.h + 2 * g.pad - g.k) / g.stride + 1 || so.w != (si.w + 2 * g.pad - g.k) / g.stride + 1) {
        char msg[256];
        snprintf(msg, sizeof msg, "maxpool k %d stride %d pad %d cannot map (%d,%d,%d,%d) to (%d,%d,%d,%d)", g.k,
                 g.stride, g.pad, si.n, si.c, si.h, si.w, so.n, so.c, so.h, so.w);
        unet_cuda_fail(__FILE__, __LINE__, "shape check", msg, a);
    }
    return g;
}

template <class F> static maxpool_nhwc maxpool_nhwc_of(const unet_op_args *a, pool_geom g, unet_shape written) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    maxpool_nhwc s = {g, si.c, F::channels(si.c) / F::V, si.h, si.w, so.h, so.w, unet_vec_items<F>(a, written)};
    return s;
}

template <class F> static void maxpool_forward_t(const unet_op_args *a, pool_geom g) {
    typedef typename F::T T;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if constexpr (F::nhwc) {
        maxpool_nhwc s = maxpool_nhwc_of<F>(a, g, so);
        maxpool_nhwc_forward_kernel<F>
            <<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>((const T *)a->in[0], (T *)a->out, s);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)so.n * so.c, (long long)so.h * so.w);
        maxpool_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->in[0], si),
                                                               unet_view_out<F>(a->out, so), g, so.h * so.w);
    }
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void maxpool_backward_t(const unet_op_args *a, pool_geom g) {
    typedef typename F::T T;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if constexpr (F::nhwc) {
        maxpool_nhwc s = maxpool_nhwc_of<F>(a, g, si);
        maxpool_nhwc_backward_kernel<F><<<unet_blocks_for(s.items), UNET_THREADS, 0, stream>>>(
            (const T *)a->in[0], (const T *)a->dout, (T *)a->din[0], s, acc);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)si.n * si.c, (long long)si.h * si.w);
        maxpool_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view_in<F>(a->in[0], si),
                                                                unet_view_in<F>(a->dout, so),
                                                                unet_view_out<F>(a->din[0], si), g, si.h * si.w, acc);
    }
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool_forward(const unet_op_args *a) {
    pool_geom g = pool_geom_of(a);
    unet_shape so = a->out_shape;
    if ((long long)so.n * so.c * so.h * so.w == 0) return;
    unet_dispatch(a, [&](auto f) { maxpool_forward_t<decltype(f)>(a, g); });
}

static void maxpool_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    pool_geom g = pool_geom_of(a);
    if (!a->in[0] || !a->dout)
        unet_cuda_fail(__FILE__, __LINE__, "argument check", "maxpool backward needs the forward input and dout", a);
    unet_shape si = a->in_shape[0];
    if ((long long)si.n * si.c * si.h * si.w == 0) return;
    unet_dispatch(a, [&](auto f) { maxpool_backward_t<decltype(f)>(a, g); });
}

extern "C" const unet_op_impl unet_cuda_maxpool = {maxpool_forward, maxpool_backward, NULL, NULL};
