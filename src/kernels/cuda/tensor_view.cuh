/* Activation tensors as the custom kernels see them, in either layout of
 * layout.h: one kernel body per op, a template over the element type T,
 * which also picks the layout:
 *
 *   float      fp32 and tf32: NCHW, the CPU's layout and type; the
 *              instantiation does exactly the float operations the kernels
 *              did before bf16 existed (same loads, order and roundings).
 *   unet_bf16  bf16: NHWC, channels padded to a multiple of 8 with zeros.
 *              Values are read into float, computed in float and rounded
 *              once, to nearest even, when stored (__float2bfloat16_rn).
 *
 * Kernels address logical elements (n, c, y, x) through unet_act_at (or a
 * view, or unet_plane_at), which maps them to memory. The padding channels
 * must hold zeros after every write of a tensor, and arena memory is
 * reused: a kernel that writes a tensor plane by plane also covers the
 * padding planes (cp planes per image, not c) and writes zeros there; one
 * that maps memory element by element (relu, dropout) maps the zeros it
 * reads to zeros. */
#ifndef UNET_CUDA_TENSOR_VIEW_CUH
#define UNET_CUDA_TENSOR_VIEW_CUH

#include <cuda_bf16.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/layout.h"

typedef __nv_bfloat16 unet_bf16;

/* Scalar loads and stores of either element type, in float. */
static __device__ __forceinline__ float unet_ld(const float *p, long long i) { return p[i]; }
static __device__ __forceinline__ float unet_ld(const unet_bf16 *p, long long i) { return __bfloat162float(p[i]); }
static __device__ __forceinline__ void unet_st(float *p, long long i, float v) { p[i] = v; }
static __device__ __forceinline__ void unet_st(unet_bf16 *p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

/* A gradient store (see unet_store_grad): the sum in float, rounded once. */
template <class T>
static __device__ __forceinline__ void unet_store_grad_t(T *d, long long i, float v, int accumulate) {
    unet_st(d, i, accumulate ? unet_ld(d, i) + v : v);
}

/* Four consecutive memory elements 4q .. 4q+3: one float4 for float (the
 * caller checked alignment), four scalars for bf16. */
static __device__ __forceinline__ float4 unet_ld4(const float *p, long long q) {
    return reinterpret_cast<const float4 *>(p)[q];
}
static __device__ __forceinline__ float4 unet_ld4(const unet_bf16 *p, long long q) {
    return make_float4(unet_ld(p, 4 * q), unet_ld(p, 4 * q + 1), unet_ld(p, 4 * q + 2), unet_ld(p, 4 * q + 3));
}
static __device__ __forceinline__ void unet_st4(float *p, long long q, float4 v) {
    reinterpret_cast<float4 *>(p)[q] = v;
}
static __device__ __forceinline__ void unet_st4(unet_bf16 *p, long long q, float4 v) {
    unet_st(p, 4 * q, v.x);
    unet_st(p, 4 * q + 1, v.y);
    unet_st(p, 4 * q + 2, v.z);
    unet_st(p, 4 * q + 3, v.w);
}

/* The memory index of logical element (n, c, y, x) of a tensor with cp
 * channels in memory and planes h x w, by its element type: the backend
 * keeps float32 tensors NCHW (cp = c) and bf16 ones NHWC. The pointer only
 * picks the layout. */
static __device__ __forceinline__ long long unet_act_at(const float *, int n, int c, int cp, int h, int w, int y,
                                                        int x) {
    return (((long long)n * cp + c) * h + y) * w + x;
}
static __device__ __forceinline__ long long unet_act_at(const unet_bf16 *, int n, int c, int cp, int h, int w, int y,
                                                        int x) {
    return (((long long)n * h + y) * w + x) * cp + c;
}

/* The same for element r = y * w + x of plane (n, c), planes of hw elements. */
static __device__ __forceinline__ long long unet_plane_at(const float *, long long n, int c, int cp, long long hw,
                                                          long long r) {
    return (n * cp + c) * hw + r;
}
static __device__ __forceinline__ long long unet_plane_at(const unet_bf16 *, long long n, int c, int cp, long long hw,
                                                          long long r) {
    return (n * hw + r) * cp + c;
}

/* An activation tensor of logical shape (n, c, h, w) as the plane-wise
 * kernels of pool.cu and upsample.cu take it; the element type picks the
 * layout (unet_act_at). T is const-qualified for inputs. */
template <class T>
struct unet_act_view {
    T *p;
    int c, h, w;
    int cp; /* channels in memory: the planes per image a plane-wise kernel covers */
    __device__ __forceinline__ long long at(int n, int ch, int y, int x) const {
        return unet_act_at(p, n, ch, cp, h, w, y, x);
    }
};

static inline int unet_cuda_is_bf16(const unet_op_args *a) {
    return ((const unet_cuda_ctx *)a->backend->ctx)->precision == UNET_PREC_BF16;
}

/* Host: the view of a tensor of shape s at p (float: NCHW, bf16: NHWC padded). */
template <class T>
static inline unet_act_view<T> unet_view(T *p, unet_shape s) {
    int bf16 = sizeof(T) == sizeof(unet_bf16);
    unet_act_view<T> v = {p, s.c, s.h, s.w, unet_cuda_layout_of(bf16, s, UNET_F32).cp};
    return v;
}

/* Channels of an activation tensor in memory: the planes per image of a plane-wise launch. */
static inline int unet_cuda_planes_c(const unet_op_args *a, unet_shape s) {
    return unet_cuda_layout_of(unet_cuda_is_bf16(a), s, UNET_F32).cp;
}

/* Elements of an activation tensor in memory (padding included). */
static inline long long unet_cuda_act_elements(const unet_op_args *a, unet_shape s) {
    return (long long)unet_cuda_layout_elements(unet_cuda_layout_of(unet_cuda_is_bf16(a), s, UNET_F32));
}

#endif
