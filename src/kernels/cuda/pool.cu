/* 2x2 stride-2 max pooling on the GPU, twin of src/kernels/cpu/pool.c.
 * One thread per window (H and W are even: the shape inference rejects odd
 * sizes), blocks per plane (n, c). In float32 NCHW the two values of a
 * window row are adjacent and at an even index, read and written as one
 * float2; in NHWC (tensor_view.cuh) they are a pixel (cp values) apart.
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

template <class F>
static void maxpool2_forward_t(const unet_op_args *a, unet_plane_launch l, int items) {
    maxpool2_forward_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(
        unet_view_in<F>(a->in[0], a->in_shape[0]), unet_view_out<F>(a->out, a->out_shape), items);
    UNET_CUDA_LAUNCHED(a);
}

template <class F>
static void maxpool2_backward_t(const unet_op_args *a, unet_plane_launch l, int items) {
    maxpool2_backward_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(
        unet_view_in<F>(a->in[0], a->in_shape[0]), unet_view_in<F>(a->dout, a->out_shape),
        unet_view_out<F>(a->din[0], a->in_shape[0]), items, a->din_accumulate[0]);
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool2_forward(const unet_op_args *a) {
    unet_shape so = a->out_shape;
    check_pool_args(a, a->in[0], a->out, NULL);
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    unet_dispatch(a, [&](auto f) { maxpool2_forward_t<decltype(f)>(a, l, (int)items); });
}

static void maxpool2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    unet_shape so = a->out_shape;
    check_pool_args(a, a->in[0], a->din[0], a->dout);
    long long planes = (long long)so.n * unet_cuda_planes_c(a, so), items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    unet_dispatch(a, [&](auto f) { maxpool2_backward_t<decltype(f)>(a, l, (int)items); });
}

extern "C" const unet_op_impl unet_cuda_maxpool2 = {maxpool2_forward, maxpool2_backward, NULL, NULL};
