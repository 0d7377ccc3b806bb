/* Max pooling on the GPU, twins of src/kernels/cpu/pool.c: maxpool2 (2x2
 * stride 2) and, at the end, maxpool (k x k, stride, -inf padding).
 *
 * maxpool2:
 * One thread per window (H and W are even: the shape inference rejects odd
 * sizes), blocks per plane (n, c). In float32 NCHW the two values of a
 * window row are adjacent and at an even index, read and written as one
 * float2; in bf16 NHWC (tensor_view.cuh) they are a pixel (cp values) apart.
 *
 * The backward recomputes each window's argmax from the input with the
 * forward's rule (the first maximum in row-major order; a NaN wins), so the
 * gradient lands where the forward took its value from; each window writes
 * its own four input gradients: no atomics, no overlap. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
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

/* The two horizontally adjacent values at memory index i (x even): one
 * float2 in NCHW float32, two loads a pixel apart in NHWC bf16. */
static __device__ __forceinline__ float2 ld_pair(const unet_act_view<const float> &v, long long i) {
    return *reinterpret_cast<const float2 *>(v.p + i);
}
static __device__ __forceinline__ float2 ld_pair(const unet_act_view<const unet_bf16> &v, long long i) {
    return make_float2(unet_ld(v.p, i), unet_ld(v.p, i + v.cp));
}

/* A gradient store of such a pair (see unet_store_grad). */
static __device__ __forceinline__ void store_grad2(const unet_act_view<float> &d, long long i, float2 v,
                                                   int accumulate) {
    float2 *p = reinterpret_cast<float2 *>(d.p + i);
    if (accumulate) {
        float2 o = *p;
        v.x += o.x;
        v.y += o.y;
    }
    *p = v;
}
static __device__ __forceinline__ void store_grad2(const unet_act_view<unet_bf16> &d, long long i, float2 v,
                                                   int accumulate) {
    unet_store_grad_t(d.p, i, v.x, accumulate);
    unet_store_grad_t(d.p, i + d.cp, v.y, accumulate);
}

/* grid.x: planes (n, c) of the output, padding planes included (zeros). */
template <class VX, class VY>
static __global__ void maxpool2_forward_kernel(VX x, VY y, int out_items) {
    int n = (int)(blockIdx.x / (unsigned)x.cp), c = (int)(blockIdx.x % (unsigned)x.cp);
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / y.w, ox = e - oy * y.w;
        if (c >= x.c) {
            unet_st(y.p, y.at(n, c, oy, ox), 0.0f);
            continue;
        }
        float2 top = ld_pair(x, x.at(n, c, 2 * oy, 2 * ox));
        float2 bottom = ld_pair(x, x.at(n, c, 2 * oy + 1, 2 * ox));
        float m = top.x;
        m = takes_max(top.y, m) ? top.y : m;
        m = takes_max(bottom.x, m) ? bottom.x : m;
        m = takes_max(bottom.y, m) ? bottom.y : m;
        unet_st(y.p, y.at(n, c, oy, ox), m);
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

/* The kernels read and write window rows as float2: the tensors must start
 * on 8 bytes (every arena tensor starts on 256) with even H and W. */
static void check_pool_args(const unet_op_args *a, const void *x, const void *y, const void *third) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    char msg[256] = "";
    if (si.h % 2 || si.w % 2 || so.h != si.h / 2 || so.w != si.w / 2 || so.n != si.n || so.c != si.c)
        snprintf(msg, sizeof msg, "maxpool2 needs even H, W and out = in / 2");
    else if (!x || !y)
        snprintf(msg, sizeof msg, "maxpool2 backward needs the forward input (in[0] is NULL)");
    else if (((uintptr_t)x | (uintptr_t)y | (uintptr_t)third) & 7)
        snprintf(msg, sizeof msg, "maxpool2 tensors must start on 8-byte boundaries");
    if (msg[0]) unet_cuda_fail(__FILE__, __LINE__, "argument check", msg, a);
}

static void maxpool2_forward(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    check_pool_args(a, a->in[0], a->out, NULL);
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if (unet_cuda_is_bf16(a))
        maxpool2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->in[0], si),
                                                                unet_view((unet_bf16 *)a->out, so), (int)items);
    else
        maxpool2_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->in[0], si),
                                                                unet_view((float *)a->out, so), (int)items);
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    check_pool_args(a, a->in[0], a->din[0], a->dout);
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if (unet_cuda_is_bf16(a))
        maxpool2_backward_kernel<<<l.grid, l.block, 0, stream>>>(
            unet_view((const unet_bf16 *)a->in[0], si), unet_view((const unet_bf16 *)a->dout, so),
            unet_view((unet_bf16 *)a->din[0], si), (int)items, acc);
    else
        maxpool2_backward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->in[0], si),
                                                                 unet_view((const float *)a->dout, so),
                                                                 unet_view((float *)a->din[0], si), (int)items, acc);
    UNET_CUDA_LAUNCHED(a);
}

extern "C" const unet_op_impl unet_cuda_maxpool2 = {maxpool2_forward, maxpool2_backward, NULL, NULL};

/* ---- maxpool: k x k, stride, pad (-inf) ----
 * Forward: one thread per output, the window scanned as the CPU scans it.
 * Backward as a gather, without atomics: one thread per input element walks
 * the windows that contain it in row-major order, recomputes each one's
 * maximum, and adds the gradient of those whose maximum it is, starting from
 * the gradient already there when accumulating: the CPU's scatter adds in
 * that order, so the two agree bit for bit. */

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
template <class VX, class VY>
static __global__ void maxpool_forward_kernel(VX x, VY y, pool_geom g, int out_items) {
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

static void maxpool_forward(const unet_op_args *a) {
    pool_geom g = pool_geom_of(a);
    unet_shape si = a->in_shape[0], so = a->out_shape;
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if (unet_cuda_is_bf16(a))
        maxpool_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const unet_bf16 *)a->in[0], si),
                                                               unet_view((unet_bf16 *)a->out, so), g, (int)items);
    else
        maxpool_forward_kernel<<<l.grid, l.block, 0, stream>>>(unet_view((const float *)a->in[0], si),
                                                               unet_view((float *)a->out, so), g, (int)items);
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    pool_geom g = pool_geom_of(a);
    if (!a->in[0] || !a->dout)
        unet_cuda_fail(__FILE__, __LINE__, "argument check", "maxpool backward needs the forward input and dout", a);
    unet_shape si = a->in_shape[0], so = a->out_shape;
    long long planes = (long long)si.n * unet_cuda_planes_c(a, si), items = (long long)si.h * si.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int acc = a->din_accumulate[0];
    if (unet_cuda_is_bf16(a))
        maxpool_backward_kernel<<<l.grid, l.block, 0, stream>>>(
            unet_view((const unet_bf16 *)a->in[0], si), unet_view((const unet_bf16 *)a->dout, so),
            unet_view((unet_bf16 *)a->din[0], si), g, (int)items, acc);
    else
        maxpool_backward_kernel<<<l.grid, l.block, 0, stream>>>(
            unet_view((const float *)a->in[0], si), unet_view((const float *)a->dout, so),
            unet_view((float *)a->din[0], si), g, (int)items, acc);
    UNET_CUDA_LAUNCHED(a);
}

extern "C" const unet_op_impl unet_cuda_maxpool = {maxpool_forward, maxpool_backward, NULL, NULL};
