/* 2x2 stride-2 max pooling on the GPU, twin of src/kernels/cpu/pool.c.
 * One thread per window (H and W are even: the shape inference rejects odd
 * sizes), blocks per plane so that the plane's index arithmetic stays 32-bit
 * and only the plane offsets are 64-bit. The two values of a window row are
 * adjacent and at an even index, read and written as one float2.
 *
 * The backward recomputes each window's argmax from the input with the
 * forward's rule (the first maximum in row-major order; a NaN wins), so the
 * gradient lands where the forward took its value from; each window writes
 * its own four input gradients: no atomics, no overlap. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"

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

static __global__ void maxpool2_forward_kernel(const float *x, float *y, int in_w, long long in_plane, int out_w,
                                               int out_items) {
    const float *xp = x + (long long)blockIdx.x * in_plane;
    float *yp = y + (long long)blockIdx.x * out_items;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / out_w, ox = e - oy * out_w;
        const float *r0 = xp + (long long)(2 * oy) * in_w + 2 * ox;
        float2 top = *reinterpret_cast<const float2 *>(r0);
        float2 bottom = *reinterpret_cast<const float2 *>(r0 + in_w);
        float m = top.x;
        m = takes_max(top.y, m) ? top.y : m;
        m = takes_max(bottom.x, m) ? bottom.x : m;
        m = takes_max(bottom.y, m) ? bottom.y : m;
        yp[e] = m;
    }
}

static __device__ __forceinline__ void store_grad2(float *d, float2 v, int accumulate) {
    float2 *p = reinterpret_cast<float2 *>(d);
    if (accumulate) {
        float2 o = *p;
        v.x += o.x;
        v.y += o.y;
    }
    *p = v;
}

static __global__ void maxpool2_backward_kernel(const float *x, const float *dy, float *dx, int in_w,
                                                long long in_plane, int out_w, int out_items, int accumulate) {
    long long in_base = (long long)blockIdx.x * in_plane;
    const float *dyp = dy + (long long)blockIdx.x * out_items;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < out_items; e += gridDim.y * blockDim.x) {
        int oy = e / out_w, ox = e - oy * out_w;
        long long top = in_base + (long long)(2 * oy) * in_w + 2 * ox, bottom = top + in_w;
        float2 t = *reinterpret_cast<const float2 *>(x + top);
        float2 b = *reinterpret_cast<const float2 *>(x + bottom);
        float g = dyp[e];
        int win = window_argmax(t.x, t.y, b.x, b.y);
        store_grad2(dx + top, make_float2(win == 0 ? g : 0.0f, win == 1 ? g : 0.0f), accumulate);
        store_grad2(dx + bottom, make_float2(win == 2 ? g : 0.0f, win == 3 ? g : 0.0f), accumulate);
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
    long long planes = (long long)so.n * so.c, items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    maxpool2_forward_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(
        (const float *)a->in[0], (float *)a->out, si.w, (long long)si.h * si.w, so.w, (int)items);
    UNET_CUDA_LAUNCHED(a);
}

static void maxpool2_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    check_pool_args(a, a->in[0], a->din[0], a->dout);
    long long planes = (long long)so.n * so.c, items = (long long)so.h * so.w;
    if (planes == 0 || items == 0) return;
    unet_plane_launch l = unet_plane_launch_for(a, planes, items);
    maxpool2_backward_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(
        (const float *)a->in[0], (const float *)a->dout, (float *)a->din[0], si.w, (long long)si.h * si.w, so.w,
        (int)items, a->din_accumulate[0]);
    UNET_CUDA_LAUNCHED(a);
}

extern "C" const unet_op_impl unet_cuda_maxpool2 = {maxpool2_forward, maxpool2_backward, NULL, NULL};
