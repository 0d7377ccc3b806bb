/* Skip fusion on the GPU, twins of src/kernels/cpu/concat.c: every input
 * centre-cropped to input 0's H,W, then concatenated along channels
 * (crop_concat) or summed in input order (crop_add; with equal shapes also
 * the encoders' residual sum, then an optional activation whose mask the
 * backward applies to dout first).
 *
 * The hottest copy of UNet++: one launch per node whatever the number of
 * inputs. Blocks own one plane (grid.x = output or input plane, grid.y along
 * it), so a block's input, channel and crop offsets are uniform, looked up
 * once, and the per-element index arithmetic is 32-bit. Consecutive threads
 * touch consecutive addresses (coalesced); rows go as float4 when the row
 * length is a multiple of 4 and the pointers are 16-byte aligned, and the
 * source side too when the crop offset keeps it aligned (always with same
 * padding, where the crop is the identity). The backward is one launch over
 * the planes of every input gradient asked for: the matching slice of dout
 * inside the crop window, zero outside. No reductions; crop_add sums its
 * inputs in input order, as the CPU does, so the bits agree.
 *
 * NHWC (tensor_view.cuh, nhwc.cuh) has kernels of its own: a thread takes
 * one 16-byte vector of channels of a pixel (consecutive threads consecutive
 * vectors), read from its input as one vector where that input's channels
 * start on a whole vector, else channel by channel; the padding channels are
 * written as zeros. Per value the same loads, sums and order as NCHW. */
#include <stdio.h>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nhwc.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* One input (forward) or input gradient (backward) as the kernels see it. */
template <class F> struct crop_part {
    const typename F::T *src; /* forward: the input */
    typename F::T *din;       /* backward: its gradient */
    int c, c0;                /* channels, first channel in the output */
    int cp;                   /* channels in memory (NHWC: padded) */
    int h, w, oy, ox;         /* size and crop offset into it */
    int acc;                  /* backward: add into din */
    int vec_src;     /* forward: src rows load as float4 at the crop's column (w, ox multiples of 4, aligned) */
    int vec_din;     /* backward: din rows store as float4 (w a multiple of 4, aligned) */
    long long begin; /* backward: first global plane (NCHW) or (pixel, vector) item (NHWC) of this input */
};

template <class F> struct crop_parts {
    crop_part<F> part[UNET_MAX_IN];
    int n;
    long long end; /* backward: the planes (NCHW) or items (NHWC) of all the parts */
};

/* Four consecutive values at p: float4 (aligned, checked by the host), or
 * scalars. The vector paths only run for float32. */
static __device__ __forceinline__ float4 ld4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
static __device__ __forceinline__ void st4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }
static __device__ __forceinline__ float4 ld4(const unet_bf16 *p) {
    return make_float4(unet_ld(p, 0), unet_ld(p, 1), unet_ld(p, 2), unet_ld(p, 3));
}
static __device__ __forceinline__ void st4(unet_bf16 *p, float4 v) {
    unet_st(p, 0, v.x);
    unet_st(p, 1, v.y);
    unet_st(p, 2, v.z);
    unet_st(p, 3, v.w);
}

/* The part a block works on: the last whose first channel is <= channel
 * (forward) or whose first plane or item is <= plane (backward). The loop has
 * constant indices, so the part is read from the kernel parameters into
 * registers, never copied to local memory by a dynamic index. */
template <class F>
static __device__ __forceinline__ crop_part<F> the_part(const crop_parts<F> &parts, int channel, long long plane) {
    crop_part<F> p = parts.part[0];
#pragma unroll
    for (int j = 1; j < UNET_MAX_IN; j++)
        if (j < parts.n && (plane < 0 ? channel >= parts.part[j].c0 : plane >= parts.part[j].begin)) p = parts.part[j];
    return p;
}

/* Zeros over the padding plane (n, c) of an NHWC tensor. */
template <class F> static __device__ void zero_plane(typename F::T *t, int n, int c, int cp, int h, int w) {
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < h * w; e += gridDim.y * blockDim.x) {
        int y = e / w, x = e - y * w;
        unet_st(t, F::at(n, c, cp, h, w, y, x), 0.0f);
    }
}

/* ---- forward ---- */

/* grid.x: output planes (n, c), padding planes included. vec_out: output
 * rows are stored as float4. */
template <class F>
static __global__ void crop_concat_kernel(crop_parts<F> parts, typename F::T *out, int out_c, int out_cp, int out_h,
                                          int out_w, int vec_out) {
    typedef typename F::T T;
    int n = (int)(blockIdx.x / (unsigned)out_cp), c = (int)(blockIdx.x % (unsigned)out_cp);
    if (c >= out_c) {
        zero_plane<F>(out, n, c, out_cp, out_h, out_w);
        return;
    }
    crop_part<F> p = the_part(parts, c, -1);
    int stride = gridDim.y * blockDim.x;
    if (vec_out) {
        const T *src = p.src + F::at(n, c - p.c0, p.cp, p.h, p.w, p.oy, p.ox);
        T *dst = out + (long long)blockIdx.x * out_h * out_w;
        int wq = out_w / 4, items = out_h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            const T *s = src + (long long)y * p.w + x;
            st4(dst + (long long)y * out_w + x,
                p.vec_src ? ld4(s) : make_float4(unet_ld(s, 0), unet_ld(s, 1), unet_ld(s, 2), unet_ld(s, 3)));
        }
        return;
    }
    int items = out_h * out_w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
        int y = e / out_w, x = e - y * out_w;
        float v = unet_ld(p.src, F::at(n, c - p.c0, p.cp, p.h, p.w, p.oy + y, p.ox + x));
        unet_st(out, F::at(n, c, out_cp, out_h, out_w, y, x), v);
    }
}

/* The activation crop_add fuses after its sum (the CPU twin's act_of). */
static __device__ __forceinline__ float act_of(int act, float v) {
    return act == UNET_ACT_RELU ? (v < 0.0f ? 0.0f : v) : act == UNET_ACT_RELU6 ? unet_relu6(v) : v;
}

/* grid.x: output planes (n, c), padding planes included; every input has
 * the output's channels; the sum, then the activation. */
template <class F>
static __global__ void crop_add_kernel(crop_parts<F> parts, typename F::T *out, int out_c, int out_cp, int out_h,
                                       int out_w, int vec, int act) {
    typedef typename F::T T;
    int n = (int)(blockIdx.x / (unsigned)out_cp), c = (int)(blockIdx.x % (unsigned)out_cp);
    if (c >= out_c) {
        zero_plane<F>(out, n, c, out_cp, out_h, out_w);
        return;
    }
    int stride = gridDim.y * blockDim.x;
    if (vec) {
        T *dst = out + (long long)blockIdx.x * out_h * out_w;
        int wq = out_w / 4, items = out_h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int i = 0; i < UNET_MAX_IN; i++) {
                if (i >= parts.n) break;
                const crop_part<F> &p = parts.part[i];
                float4 v = ld4(p.src + F::at(n, c, p.cp, p.h, p.w, p.oy + y, p.ox + x));
                if (i == 0) {
                    sum = v;
                } else {
                    sum.x += v.x;
                    sum.y += v.y;
                    sum.z += v.z;
                    sum.w += v.w;
                }
            }
            st4(dst + (long long)y * out_w + x,
                make_float4(act_of(act, sum.x), act_of(act, sum.y), act_of(act, sum.z), act_of(act, sum.w)));
        }
        return;
    }
    int items = out_h * out_w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
        int y = e / out_w, x = e - y * out_w;
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < UNET_MAX_IN; i++) {
            if (i >= parts.n) break;
            const crop_part<F> &p = parts.part[i];
            float v = unet_ld(p.src, F::at(n, c, p.cp, p.h, p.w, p.oy + y, p.ox + x));
            sum = i == 0 ? v : sum + v;
        }
        unet_st(out, F::at(n, c, out_cp, out_h, out_w, y, x), act_of(act, sum));
    }
}

/* ---- backward ---- */

/* crop_add with an activation: dout = 0 where it stops the gradient of out,
 * in place (dout has no other reader), over memory (padding: out is 0). */
template <class T> static __global__ void act_mask_kernel(T *dout, const T *out, long long n, int act) {
    for (long long i = unet_global_thread(); i < n; i += unet_grid_threads())
        if (!unet_act_passes(act, unet_ld(out, i))) unet_st(dout, i, 0.0f);
}

/* The gradient of one input element (y, x) of channel ch: dout's inside the
 * crop window, else 0. */
template <class F>
static __device__ __forceinline__ float window_grad(const typename F::T *dout, const crop_part<F> &p, int n, int ch,
                                                    int y, int x, int out_cp, int out_h, int out_w) {
    int wy = y - p.oy, wx = x - p.ox;
    return wy >= 0 && wy < out_h && wx >= 0 && wx < out_w
               ? unet_ld(dout, F::at(n, p.c0 + ch, out_cp, out_h, out_w, wy, wx))
               : 0.0f;
}

/* grid.x: the planes of every input gradient, input after input, padding
 * planes included (NHWC: zeros). */
template <class F>
static __global__ void crop_grad_kernel(crop_parts<F> parts, const typename F::T *dout, int out_cp, int out_h,
                                        int out_w) {
    typedef typename F::T T;
    long long plane = blockIdx.x;
    crop_part<F> p = the_part(parts, -1, plane);
    int local = (int)(plane - p.begin);
    int n = local / p.cp, ch = local - n * p.cp;
    if (ch >= p.c) {
        zero_plane<F>(p.din, n, ch, p.cp, p.h, p.w);
        return;
    }
    int stride = gridDim.y * blockDim.x;
    if (p.vec_din) {
        T *d = p.din + (long long)local * p.h * p.w;
        int wq = p.w / 4, items = p.h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            float4 v = make_float4(window_grad(dout, p, n, ch, y, x, out_cp, out_h, out_w),
                                   window_grad(dout, p, n, ch, y, x + 1, out_cp, out_h, out_w),
                                   window_grad(dout, p, n, ch, y, x + 2, out_cp, out_h, out_w),
                                   window_grad(dout, p, n, ch, y, x + 3, out_cp, out_h, out_w));
            T *dst = d + (long long)y * p.w + x;
            if (p.acc) {
                float4 o = ld4(dst);
                v.x += o.x;
                v.y += o.y;
                v.z += o.z;
                v.w += o.w;
            }
            st4(dst, v);
        }
        return;
    }
    int items = p.h * p.w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
        int y = e / p.w, x = e - y * p.w;
        unet_store_grad_t(p.din, F::at(n, ch, p.cp, p.h, p.w, y, x),
                          window_grad(dout, p, n, ch, y, x, out_cp, out_h, out_w), p.acc);
    }
}

/* ---- NHWC: channel vectors ---- */

/* Output channels c0 .. c0 + V - 1 at output pixel (n, y, x): one vector load
 * where they all come from one input and start on one of its vectors, else
 * one load a channel. Channels past out_c are zeros. */
template <class F>
static __device__ __forceinline__ unet_vec<F> concat_vector(const crop_parts<F> &parts, int out_c, int c0, int n, int y,
                                                            int x) {
    crop_part<F> p = the_part(parts, c0, -1);
    int last = min(c0 + F::V, out_c) - 1;
    unet_vec<F> r;
    if (last < p.c0 + p.c && (c0 - p.c0) % F::V == 0) {
        r = unet_ldv<F>(p.src, F::at(n, c0 - p.c0, p.cp, p.h, p.w, p.oy + y, p.ox + x));
        for (int j = last - c0 + 1; j < F::V; j++) r.v[j] = 0.0f;
        return r;
    }
    for (int j = 0; j < F::V; j++) {
        int c = c0 + j;
        crop_part<F> q = the_part(parts, c, -1);
        r.v[j] = c < out_c ? unet_ld(q.src, F::at(n, c - q.c0, q.cp, q.h, q.w, q.oy + y, q.ox + x)) : 0.0f;
    }
    return r;
}

/* crop_add: every input has the output's channels: the vectors at the same
 * channel offset, summed in input order, then the activation; channels past
 * out_c are zeros. */
template <class F>
static __device__ __forceinline__ unet_vec<F> add_vector(const crop_parts<F> &parts, int out_c, int c0, int n, int y,
                                                         int x, int act) {
    unet_vec<F> sum;
#pragma unroll
    for (int k = 0; k < UNET_MAX_IN; k++) {
        if (k >= parts.n) break;
        const crop_part<F> &p = parts.part[k];
        unet_vec<F> v = unet_ldv<F>(p.src, F::at(n, c0, p.cp, p.h, p.w, p.oy + y, p.ox + x));
#pragma unroll
        for (int j = 0; j < F::V; j++) sum.v[j] = k == 0 ? v.v[j] : sum.v[j] + v.v[j];
    }
#pragma unroll
    for (int j = 0; j < F::V; j++) sum.v[j] = c0 + j < out_c ? act_of(act, sum.v[j]) : 0.0f;
    return sum;
}

/* Item i: (output pixel, channel vector), the vector fastest. */
template <class F>
static __global__ void crop_nhwc_kernel(crop_parts<F> parts, typename F::T *out, int out_c, int out_vectors, int out_h,
                                        int out_w, unsigned items, int concat, int act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        int n, y, x, c0 = (int)(i % (unsigned)out_vectors) * F::V;
        unet_pixel_of(i, out_vectors, out_h, out_w, n, y, x);
        unet_stv<F>(out, (long long)i * F::V,
                    concat ? concat_vector(parts, out_c, c0, n, y, x) : add_vector(parts, out_c, c0, n, y, x, act));
    }
}

/* Items of every input gradient, input after input (their begin): dout's
 * channels p.c0 + ch inside the crop window, 0 outside and past p.c. */
template <class F>
static __global__ void crop_grad_nhwc_kernel(crop_parts<F> parts, const typename F::T *dout, int out_cp, int out_h,
                                             int out_w, unsigned items) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        crop_part<F> p = the_part(parts, -1, i);
        unsigned local = i - (unsigned)p.begin;
        int vectors = p.cp / F::V, n, y, x;
        unet_pixel_of(local, vectors, p.h, p.w, n, y, x);
        int ch0 = (int)(local % (unsigned)vectors) * F::V, wy = y - p.oy, wx = x - p.ox;
        unet_vec<F> g;
        if (wy < 0 || wy >= out_h || wx < 0 || wx >= out_w) {
            for (int j = 0; j < F::V; j++) g.v[j] = 0.0f;
        } else if (p.c0 % F::V == 0) {
            g = unet_ldv<F>(dout, F::at(n, p.c0 + ch0, out_cp, out_h, out_w, wy, wx));
        } else {
            for (int j = 0; j < F::V; j++)
                g.v[j] = ch0 + j < p.c ? unet_ld(dout, F::at(n, p.c0 + ch0 + j, out_cp, out_h, out_w, wy, wx)) : 0.0f;
        }
        long long at = (long long)local * F::V;
        unet_vec<F> old;
        if (p.acc) old = unet_ldv<F>(p.din, at);
#pragma unroll
        for (int j = 0; j < F::V; j++) g.v[j] = ch0 + j >= p.c ? 0.0f : p.acc ? old.v[j] + g.v[j] : g.v[j];
        unet_stv<F>(p.din, at, g);
    }
}

/* ---- host side ---- */

static void bad_shapes(const unet_op_args *a, const char *what) {
    unet_cuda_fail(__FILE__, __LINE__, "shape check", what, a);
}

/* The parts of a node; for the backward, only the inputs whose gradient is asked. */
template <class F> static crop_parts<F> parts_of(const unet_op_args *a, int concat, int backward) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    crop_parts<F> ps;
    ps.n = 0;
    int c0 = 0;
    long long planes = 0;
    if (a->n_in < 1 || a->n_in > UNET_MAX_IN) bad_shapes(a, "crop needs 1 to UNET_MAX_IN inputs");
    for (int i = 0; i < a->n_in; c0 += concat ? a->in_shape[i].c : 0, i++) {
        unet_shape si = a->in_shape[i];
        if (si.n != so.n || si.h < so.h || si.w < so.w || (!concat && si.c != so.c))
            bad_shapes(a, concat ? "crop_concat inputs must share N and be at least the output's H,W"
                                 : "crop_add inputs must share N and C and be at least the output's H,W");
        if (backward ? !a->din[i] : !a->in[i]) {
            if (!backward) bad_shapes(a, "a crop input pointer is NULL");
            continue;
        }
        /* float4 only for float32 NCHW rows */
        int f32 = !F::nhwc;
        crop_part<F> p;
        p.src = backward ? NULL : (const T *)a->in[i];
        p.din = backward ? (T *)a->din[i] : NULL;
        p.c = si.c;
        p.c0 = c0;
        p.cp = unet_cuda_planes_c(a, si);
        p.h = si.h;
        p.w = si.w;
        p.oy = (si.h - so.h) / 2;
        p.ox = (si.w - so.w) / 2;
        p.acc = backward ? a->din_accumulate[i] : 0;
        p.vec_src = f32 && !backward && si.w % 4 == 0 && p.ox % 4 == 0 && unet_aligned16(p.src);
        p.vec_din = f32 && backward && si.w % 4 == 0 && unet_aligned16(p.din);
        p.begin = planes;
        planes += F::nhwc ? (long long)si.n * si.h * si.w * (p.cp / F::V) : (long long)si.n * p.cp;
        ps.part[ps.n++] = p;
    }
    if (concat && !backward && c0 != so.c) bad_shapes(a, "crop_concat output channels must be the sum of the inputs'");
    ps.end = planes;
    return ps;
}

template <class F> static void crop_forward_nhwc(const unet_op_args *a, int concat, const crop_parts<F> &ps) {
    unet_shape so = a->out_shape;
    unsigned items = unet_vec_items<F>(a, so);
    crop_nhwc_kernel<F><<<unet_blocks_for(items), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        ps, (typename F::T *)a->out, so.c, F::channels(so.c) / F::V, so.h, so.w, items, concat, a->node->act);
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void crop_forward_t(const unet_op_args *a, int concat) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    crop_parts<F> ps = parts_of<F>(a, concat, 0);
    int out_cp = unet_cuda_planes_c(a, so);
    long long planes = (long long)so.n * out_cp, plane_items = (long long)so.h * so.w;
    if (planes == 0 || plane_items == 0) return;
    if constexpr (F::nhwc) {
        crop_forward_nhwc<F>(a, concat, ps);
        return;
    }
    int vec = !F::nhwc && so.w % 4 == 0 && unet_aligned16(a->out);
    if (!concat)
        for (int i = 0; i < ps.n; i++) vec = vec && ps.part[i].vec_src;
    unet_plane_launch l = unet_plane_launch_for(a, planes, vec ? plane_items / 4 : plane_items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if (concat)
        crop_concat_kernel<<<l.grid, l.block, 0, stream>>>(ps, (T *)a->out, so.c, out_cp, so.h, so.w, vec);
    else
        crop_add_kernel<<<l.grid, l.block, 0, stream>>>(ps, (T *)a->out, so.c, out_cp, so.h, so.w, vec, a->node->act);
    UNET_CUDA_LAUNCHED(a);
}

/* crop_add with an activation: dout masked in place before the inputs' gradients read it. */
template <class F> static void mask_dout(const unet_op_args *a, int concat) {
    typedef typename F::T T;
    if (concat || a->node->act == UNET_ACT_NONE) return;
    if (!a->out) bad_shapes(a, "crop_add backward with an activation needs the forward output (NULL)");
    long long n = unet_cuda_act_elements(a, a->out_shape);
    act_mask_kernel<<<unet_blocks_for(n), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        (T *)a->dout, (const T *)a->out, n, a->node->act);
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void crop_backward_t(const unet_op_args *a, int concat) {
    typedef typename F::T T;
    unet_shape so = a->out_shape;
    crop_parts<F> ps = parts_of<F>(a, concat, 1);
    if constexpr (F::nhwc) {
        if (ps.end == 0) return;
        if (!a->dout) bad_shapes(a, "crop backward needs dout (NULL)");
        if (ps.end > 0x7fffffffLL) bad_shapes(a, "crop backward: more than 2^31 - 1 channel vectors");
        mask_dout<F>(a, concat);
        crop_grad_nhwc_kernel<F><<<unet_blocks_for(ps.end), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
            ps, (const T *)a->dout, unet_cuda_planes_c(a, so), so.h, so.w, (unsigned)ps.end);
        UNET_CUDA_LAUNCHED(a);
        return;
    }
    long long planes = 0, max_items = 0;
    for (int i = 0; i < ps.n; i++) {
        const crop_part<F> &p = ps.part[i];
        long long items = (long long)p.h * p.w / (p.vec_din ? 4 : 1);
        planes += (long long)so.n * p.cp;
        if (items > max_items) max_items = items;
    }
    if (planes == 0 || max_items == 0) return;
    if (!a->dout) bad_shapes(a, "crop backward needs dout (NULL)");
    mask_dout<F>(a, concat);
    unet_plane_launch l = unet_plane_launch_for(a, planes, max_items);
    crop_grad_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(ps, (const T *)a->dout,
                                                                          unet_cuda_planes_c(a, so), so.h, so.w);
    UNET_CUDA_LAUNCHED(a);
}

static void crop_forward(const unet_op_args *a, int concat) {
    unet_dispatch(a, [&](auto f) { crop_forward_t<decltype(f)>(a, concat); });
}

static void crop_backward(const unet_op_args *a, int concat) {
    unet_dispatch(a, [&](auto f) { crop_backward_t<decltype(f)>(a, concat); });
}

static void crop_concat_forward(const unet_op_args *a) { crop_forward(a, 1); }
static void crop_concat_backward(const unet_op_args *a) { crop_backward(a, 1); }
static void crop_add_forward(const unet_op_args *a) { crop_forward(a, 0); }
static void crop_add_backward(const unet_op_args *a) { crop_backward(a, 0); }

extern "C" const unet_op_impl unet_cuda_crop_concat = {crop_concat_forward, crop_concat_backward, NULL, NULL};
extern "C" const unet_op_impl unet_cuda_crop_add = {crop_add_forward, crop_add_backward, NULL, NULL};
