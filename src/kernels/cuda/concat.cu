/* Skip fusion on the GPU, twins of src/kernels/cpu/concat.c: every input
 * centre-cropped to input 0's H,W, then concatenated along channels
 * (crop_concat) or summed in input order (crop_add).
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
 * inputs in input order, as the CPU does, so the bits agree. */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"

/* One input (forward) or input gradient (backward) as the kernels see it. */
typedef struct {
    const float *src; /* forward: the input */
    float *din;       /* backward: its gradient */
    int c, c0;        /* channels, first channel in the output */
    int h, w, oy, ox; /* size and crop offset into it */
    int acc;          /* backward: add into din */
    int vec_src;      /* forward: src rows load as float4 at the crop's column (w, ox multiples of 4, aligned) */
    int vec_din;      /* backward: din rows store as float4 (w a multiple of 4, aligned) */
    long long plane_begin; /* backward: first global plane of this input */
} crop_part;

typedef struct {
    crop_part part[UNET_MAX_IN];
    int n;
} crop_parts;

static __device__ __forceinline__ float4 ld4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
static __device__ __forceinline__ void st4(float *p, float4 v) { *reinterpret_cast<float4 *>(p) = v; }

/* The part a block works on: the last whose first channel is <= channel
 * (forward) or whose first plane is <= plane (backward). The loop has
 * constant indices, so the part is read from the kernel parameters into
 * registers, never copied to local memory by a dynamic index. */
static __device__ __forceinline__ crop_part the_part(const crop_parts &parts, int channel, long long plane) {
    crop_part p = parts.part[0];
#pragma unroll
    for (int j = 1; j < UNET_MAX_IN; j++)
        if (j < parts.n && (plane < 0 ? channel >= parts.part[j].c0 : plane >= parts.part[j].plane_begin))
            p = parts.part[j];
    return p;
}

/* ---- forward ---- */

/* grid.x: output planes (n, c). vec_out: output rows are stored as float4. */
static __global__ void crop_concat_kernel(crop_parts parts, float *out, int out_c, int out_h, int out_w, int vec_out) {
    int n = (int)(blockIdx.x / (unsigned)out_c), c = (int)(blockIdx.x % (unsigned)out_c);
    crop_part p = the_part(parts, c, -1);
    const float *src = p.src + (((long long)n * p.c + (c - p.c0)) * p.h + p.oy) * p.w + p.ox;
    float *dst = out + (long long)blockIdx.x * out_h * out_w;
    int stride = gridDim.y * blockDim.x;
    if (vec_out) {
        int wq = out_w / 4, items = out_h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            const float *s = src + (long long)y * p.w + x;
            st4(dst + (long long)y * out_w + x, p.vec_src ? ld4(s) : make_float4(s[0], s[1], s[2], s[3]));
        }
        return;
    }
    int items = out_h * out_w;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
        int y = e / out_w, x = e - y * out_w;
        dst[e] = src[(long long)y * p.w + x];
    }
}

/* grid.x: output planes (n, c); every input has the output's channels. */
static __global__ void crop_add_kernel(crop_parts parts, float *out, int out_c, int out_h, int out_w, int vec) {
    int n = (int)(blockIdx.x / (unsigned)out_c), c = (int)(blockIdx.x % (unsigned)out_c);
    float *dst = out + (long long)blockIdx.x * out_h * out_w;
    int stride = gridDim.y * blockDim.x;
    if (vec) {
        int wq = out_w / 4, items = out_h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int i = 0; i < UNET_MAX_IN; i++) {
                if (i >= parts.n) break;
                const crop_part &p = parts.part[i];
                float4 v = ld4(p.src + (((long long)n * p.c + c) * p.h + p.oy + y) * p.w + p.ox + x);
                if (i == 0) {
                    sum = v;
                } else {
                    sum.x += v.x;
                    sum.y += v.y;
                    sum.z += v.z;
                    sum.w += v.w;
                }
            }
            st4(dst + (long long)y * out_w + x, sum);
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
            const crop_part &p = parts.part[i];
            float v = p.src[(((long long)n * p.c + c) * p.h + p.oy + y) * p.w + p.ox + x];
            sum = i == 0 ? v : sum + v;
        }
        dst[e] = sum;
    }
}

/* ---- backward ---- */

/* The gradient of one input element (y, x): dout's inside the crop window,
 * else 0. g points at the input's first channel plane of dout. */
static __device__ __forceinline__ float window_grad(const float *g, const crop_part &p, int y, int x, int out_h,
                                                    int out_w) {
    int wy = y - p.oy, wx = x - p.ox;
    return wy >= 0 && wy < out_h && wx >= 0 && wx < out_w ? g[(long long)wy * out_w + wx] : 0.0f;
}

/* grid.x: the planes of every input gradient, input after input. */
static __global__ void crop_grad_kernel(crop_parts parts, const float *dout, int out_c, int out_h, int out_w) {
    long long plane = blockIdx.x;
    crop_part p = the_part(parts, -1, plane);
    int local = (int)(plane - p.plane_begin);
    int n = local / p.c, ch = local - n * p.c;
    const float *g = dout + ((long long)n * out_c + p.c0 + ch) * out_h * out_w;
    float *d = p.din + (long long)local * p.h * p.w;
    int stride = gridDim.y * blockDim.x;
    if (p.vec_din) {
        int wq = p.w / 4, items = p.h * wq;
        for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += stride) {
            int y = e / wq, x = 4 * (e - y * wq);
            float4 v = make_float4(window_grad(g, p, y, x, out_h, out_w), window_grad(g, p, y, x + 1, out_h, out_w),
                                   window_grad(g, p, y, x + 2, out_h, out_w), window_grad(g, p, y, x + 3, out_h, out_w));
            float *dst = d + (long long)y * p.w + x;
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
        unet_store_grad(d, e, window_grad(g, p, y, x, out_h, out_w), p.acc);
    }
}

/* ---- host side ---- */

static void bad_shapes(const unet_op_args *a, const char *what) {
    unet_cuda_fail(__FILE__, __LINE__, "shape check", what, a);
}

/* The parts of a node; for the backward, only the inputs whose gradient is asked. */
static crop_parts parts_of(const unet_op_args *a, int concat, int backward) {
    unet_shape so = a->out_shape;
    crop_parts ps;
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
        crop_part p;
        p.src = backward ? NULL : (const float *)a->in[i];
        p.din = backward ? (float *)a->din[i] : NULL;
        p.c = si.c;
        p.c0 = c0;
        p.h = si.h;
        p.w = si.w;
        p.oy = (si.h - so.h) / 2;
        p.ox = (si.w - so.w) / 2;
        p.acc = backward ? a->din_accumulate[i] : 0;
        p.vec_src = !backward && si.w % 4 == 0 && p.ox % 4 == 0 && unet_aligned16(p.src);
        p.vec_din = backward && si.w % 4 == 0 && unet_aligned16(p.din);
        p.plane_begin = planes;
        planes += (long long)si.n * si.c;
        ps.part[ps.n++] = p;
    }
    if (concat && !backward && c0 != so.c) bad_shapes(a, "crop_concat output channels must be the sum of the inputs'");
    return ps;
}

static void crop_forward(const unet_op_args *a, int concat) {
    unet_shape so = a->out_shape;
    crop_parts ps = parts_of(a, concat, 0);
    long long planes = (long long)so.n * so.c, plane_items = (long long)so.h * so.w;
    if (planes == 0 || plane_items == 0) return;
    int vec = so.w % 4 == 0 && unet_aligned16(a->out);
    if (!concat)
        for (int i = 0; i < ps.n; i++) vec = vec && ps.part[i].vec_src;
    unet_plane_launch l = unet_plane_launch_for(a, planes, vec ? plane_items / 4 : plane_items);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if (concat)
        crop_concat_kernel<<<l.grid, l.block, 0, stream>>>(ps, (float *)a->out, so.c, so.h, so.w, vec);
    else
        crop_add_kernel<<<l.grid, l.block, 0, stream>>>(ps, (float *)a->out, so.c, so.h, so.w, vec);
    UNET_CUDA_LAUNCHED(a);
}

static void crop_backward(const unet_op_args *a, int concat) {
    unet_shape so = a->out_shape;
    crop_parts ps = parts_of(a, concat, 1);
    long long planes = 0, max_items = 0;
    for (int i = 0; i < ps.n; i++) {
        const crop_part &p = ps.part[i];
        long long items = (long long)p.h * p.w / (p.vec_din ? 4 : 1);
        planes += (long long)so.n * p.c;
        if (items > max_items) max_items = items;
    }
    if (planes == 0 || max_items == 0) return;
    if (!a->dout) bad_shapes(a, "crop backward needs dout (NULL)");
    unet_plane_launch l = unet_plane_launch_for(a, planes, max_items);
    crop_grad_kernel<<<l.grid, l.block, 0, unet_cuda_ctx_of(a)->stream>>>(ps, (const float *)a->dout, so.c, so.h,
                                                                          so.w);
    UNET_CUDA_LAUNCHED(a);
}

static void crop_concat_forward(const unet_op_args *a) { crop_forward(a, 1); }
static void crop_concat_backward(const unet_op_args *a) { crop_backward(a, 1); }
static void crop_add_forward(const unet_op_args *a) { crop_forward(a, 0); }
static void crop_add_backward(const unet_op_args *a) { crop_backward(a, 0); }

extern "C" const unet_op_impl unet_cuda_crop_concat = {crop_concat_forward, crop_concat_backward, NULL, NULL};
extern "C" const unet_op_impl unet_cuda_crop_add = {crop_add_forward, crop_add_backward, NULL, NULL};
