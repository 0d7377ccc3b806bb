/* 2x2 stride-2 max pooling on the GPU, twin of src/kernels/cpu/pool.c.
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
