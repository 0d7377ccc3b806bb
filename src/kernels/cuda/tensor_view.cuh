/* Activation tensors as the custom kernels see them, in every format of
 * layout.h: one kernel body per op, a template over the storage format F,
 * which names the element type (F::T) and the memory order (F::nhwc):
 *
 *   unet_f32_nchw   fp32 and tf32 (--layout nchw, the default): NCHW float,
 *                   the CPU's layout and type; the instantiation does exactly
 *                   the float operations the kernels did before other formats
 *                   existed (same loads, order and roundings).
 *   unet_f32_nhwc   fp32 and tf32 with --layout nhwc: NHWC float, channels
 *                   padded to a multiple of 4 with zeros; the same float
 *                   operations per element as NCHW.
 *   unet_bf16_nhwc  bf16: NHWC, channels padded to a multiple of 8 with
 *                   zeros. Values are read into float, computed in float and
 *                   rounded once, to nearest even, when stored
 *                   (__float2bfloat16_rn).
 *
 * Kernels address logical elements (n, c, y, x) through F::at (or a view,
 * or F::plane_at), which maps them to memory; the element type alone never
 * decides the layout. The padding channels must hold zeros after every
 * write of a tensor, and arena memory is reused: a kernel that writes a
 * tensor plane by plane also covers the padding planes (cp planes per
 * image, not c) and writes zeros there; one that maps memory element by
 * element (relu, dropout) maps the zeros it reads to zeros.
 *
 * An op picks F once, on the host, with unet_dispatch (below): the one place
 * where the backend's format meets the kernels' templates. */
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

/* bf16 moved two to a 32-bit word (little endian: the lower index in the
 * low half), so that several go in one 8- or 16-byte access: widening is
 * exact (the bits shifted up), narrowing rounds each value to nearest even
 * as __float2bfloat16_rn does. */
static __device__ __forceinline__ float unet_bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
static __device__ __forceinline__ float unet_bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
static __device__ __forceinline__ unsigned unet_bf16_pair(float lo, float hi) {
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}

/* Four consecutive memory elements 4q .. 4q+3 as one access (the caller
 * checked alignment): a float4, or 8 bytes of bf16. */
static __device__ __forceinline__ float4 unet_ld4(const float *p, long long q) {
    return reinterpret_cast<const float4 *>(p)[q];
}
static __device__ __forceinline__ float4 unet_ld4(const unet_bf16 *p, long long q) {
    int2 w = reinterpret_cast<const int2 *>(p)[q];
    return make_float4(unet_bf16_lo((unsigned)w.x), unet_bf16_hi((unsigned)w.x), unet_bf16_lo((unsigned)w.y),
                       unet_bf16_hi((unsigned)w.y));
}
static __device__ __forceinline__ void unet_st4(float *p, long long q, float4 v) {
    reinterpret_cast<float4 *>(p)[q] = v;
}
static __device__ __forceinline__ void unet_st4(unet_bf16 *p, long long q, float4 v) {
    reinterpret_cast<int2 *>(p)[q] = make_int2((int)unet_bf16_pair(v.x, v.y), (int)unet_bf16_pair(v.z, v.w));
}

/* A storage format of activations: element type Elem, channels last (and
 * padded, layout.h) or not. */
template <class Elem, unet_cuda_format Format> struct unet_fmt {
    typedef Elem T;
    static constexpr unet_cuda_format format = Format;
    static constexpr bool nhwc = Format != UNET_FMT_NCHW_F32;
    /* Channels of a 16-byte vector (4 floats, 8 bf16): NHWC pads a pixel's
     * channels to whole vectors (layout.h), so they move as such. */
    static constexpr int V = 16 / (int)sizeof(Elem);

    /* The memory index of logical element (n, c, y, x) of a tensor with cp
     * channels in memory and planes h x w. */
    static __host__ __device__ __forceinline__ long long at(int n, int c, int cp, int h, int w, int y, int x) {
        return nhwc ? (((long long)n * h + y) * w + x) * cp + c : (((long long)n * cp + c) * h + y) * w + x;
    }
    /* The same for element r = y * w + x of plane (n, c), planes of hw elements. */
    static __host__ __device__ __forceinline__ long long plane_at(long long n, int c, int cp, long long hw,
                                                                  long long r) {
        return nhwc ? (n * hw + r) * cp + c : (n * cp + c) * hw + r;
    }
    /* Channels in memory of a tensor of c channels. */
    static __host__ __device__ __forceinline__ int channels(int c) { return unet_cuda_channels_in_memory(Format, c); }
};

/* NHWC: V channels of one pixel, in float, moved as one 16-byte access at
 * memory index i (a multiple of V: every pixel and every tensor starts on 16
 * bytes). */
template <class F> struct unet_vec { float v[F::V]; };

template <class F> static __device__ __forceinline__ unet_vec<F> unet_ldv(const typename F::T *p, long long i) {
    unet_vec<F> r;
    if constexpr (F::V == 4) {
        float4 q = *reinterpret_cast<const float4 *>(p + i);
        r.v[0] = q.x, r.v[1] = q.y, r.v[2] = q.z, r.v[3] = q.w;
    } else {
        int4 q = *reinterpret_cast<const int4 *>(p + i);
        unsigned w[4] = {(unsigned)q.x, (unsigned)q.y, (unsigned)q.z, (unsigned)q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) r.v[2 * k] = unet_bf16_lo(w[k]), r.v[2 * k + 1] = unet_bf16_hi(w[k]);
    }
    return r;
}

template <class F>
static __device__ __forceinline__ void unet_stv(typename F::T *p, long long i, const unet_vec<F> &r) {
    if constexpr (F::V == 4) {
        *reinterpret_cast<float4 *>(p + i) = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
    } else {
        *reinterpret_cast<int4 *>(p + i) =
            make_int4((int)unet_bf16_pair(r.v[0], r.v[1]), (int)unet_bf16_pair(r.v[2], r.v[3]),
                      (int)unet_bf16_pair(r.v[4], r.v[5]), (int)unet_bf16_pair(r.v[6], r.v[7]));
    }
}

typedef unet_fmt<float, UNET_FMT_NCHW_F32> unet_f32_nchw;
typedef unet_fmt<float, UNET_FMT_NHWC_F32> unet_f32_nhwc;
typedef unet_fmt<unet_bf16, UNET_FMT_NHWC_BF16> unet_bf16_nhwc;

/* Runs fn(F()) with the storage format F of the op's backend: an op's
 * host code is a template over F, instantiated for every format here and
 * nowhere else, e.g.
 *     unet_dispatch(a, [&](auto f) { relu_forward_t<decltype(f)>(a); }); */
template <class Fn> static inline void unet_dispatch(const unet_op_args *a, Fn &&fn) {
    switch (unet_cuda_ctx_of(a)->act_format) {
    case UNET_FMT_NHWC_BF16:
        fn(unet_bf16_nhwc());
        return;
    case UNET_FMT_NHWC_F32:
        fn(unet_f32_nhwc());
        return;
    case UNET_FMT_NCHW_F32:
        fn(unet_f32_nchw());
        return;
    }
    unet_cuda_fail(__FILE__, __LINE__, "unet_dispatch", "unknown activation format", a);
}

/* An activation tensor of logical shape (n, c, h, w) in format F, as the
 * plane-wise kernels of pool.cu and upsample.cu take it. T is F::T,
 * const-qualified for inputs. */
template <class F, class T> struct unet_act_view {
    T *p;
    int c, h, w;
    int cp; /* channels in memory: the planes per image a plane-wise kernel covers */
    __device__ __forceinline__ long long at(int n, int ch, int y, int x) const { return F::at(n, ch, cp, h, w, y, x); }
};

template <class F> using unet_in_view = unet_act_view<F, const typename F::T>;
template <class F> using unet_out_view = unet_act_view<F, typename F::T>;

/* Host: the views of a tensor of shape s at p, an input and an output. */
template <class F> static inline unet_in_view<F> unet_view_in(const void *p, unet_shape s) {
    unet_in_view<F> v = {(const typename F::T *)p, s.c, s.h, s.w, F::channels(s.c)};
    return v;
}
template <class F> static inline unet_out_view<F> unet_view_out(void *p, unet_shape s) {
    unet_out_view<F> v = {(typename F::T *)p, s.c, s.h, s.w, F::channels(s.c)};
    return v;
}

/* The layout of an activation tensor of shape s on the op's backend. */
static inline unet_cuda_layout unet_cuda_act_layout(const unet_op_args *a, unet_shape s) {
    return unet_cuda_layout_of(unet_cuda_ctx_of(a)->act_format, s, UNET_F32);
}

/* Channels of an activation tensor in memory: the planes per image of a plane-wise launch. */
static inline int unet_cuda_planes_c(const unet_op_args *a, unet_shape s) { return unet_cuda_act_layout(a, s).cp; }

/* Elements of an activation tensor in memory (padding included). */
static inline long long unet_cuda_act_elements(const unet_op_args *a, unet_shape s) {
    return (long long)unet_cuda_layout_elements(unet_cuda_act_layout(a, s));
}

#endif
