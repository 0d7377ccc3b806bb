/* What CUDA device code sees, emulated on the CPU (C++ only; included by
 * cuda_runtime.h). See tests/emu/README.md for the model:
 *
 *  - a launch runs its blocks one after another, in order; the threads of a
 *    block are cooperative fibers on one OS thread, so __syncthreads is a
 *    real barrier of the block and a warp shuffle a real exchange among the
 *    32 lanes of a warp (a barrier of the warp);
 *  - __shared__ storage is static (one block at a time), atomics are plain
 *    read-modify-writes (one fiber at a time); nothing races, so a run is
 *    deterministic;
 *  - the _rn intrinsics are single IEEE operations that the compiler may
 *    not fuse (an empty asm keeps each result in a register). */
#ifndef UNET_EMU_DEVICE_H
#define UNET_EMU_DEVICE_H

#include <math.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __shared__      static
#define __constant__    static
#define __forceinline__ inline
#define __noinline__    __attribute__((noinline))
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
    double x, y;
};

static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return int2{x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static inline double2 make_double2(double x, double y) { return double2{x, y}; }

/* The running thread's coordinates: set by the scheduler before it resumes a fiber. */
extern uint3 unet_emu_threadIdx, unet_emu_blockIdx;
extern dim3 unet_emu_blockDim, unet_emu_gridDim;
#define threadIdx unet_emu_threadIdx
#define blockIdx  unet_emu_blockIdx
#define blockDim  unet_emu_blockDim
#define gridDim   unet_emu_gridDim
static constexpr int warpSize = 32;

void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);

namespace unet_emu {
/* One warp-wide exchange: this lane offers 8 bytes, and gets those of lane `from` (its own when out of range). */
unsigned long long warp_exchange(unsigned mask, unsigned long long mine, int from, const char *what);
int lane_id();
} // namespace unet_emu

template <class T> static inline T unet_emu_shfl(unsigned mask, T v, int from, const char *what) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned long long bits = 0, got;
    memcpy(&bits, &v, sizeof v);
    got = unet_emu::warp_exchange(mask, bits, from, what);
    T r;
    memcpy(&r, &got, sizeof r);
    return r;
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = unet_emu::lane_id(), seg = lane % width;
    return unet_emu_shfl(mask, v, seg + (int)delta < width ? lane + (int)delta : lane, "__shfl_down_sync");
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = unet_emu::lane_id(), seg = lane % width;
    return unet_emu_shfl(mask, v, seg >= (int)delta ? lane - (int)delta : lane, "__shfl_up_sync");
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = unet_emu::lane_id(), to = lane ^ lane_mask;
    return unet_emu_shfl(mask, v, to / width == lane / width ? to : lane, "__shfl_xor_sync");
}
template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int lane = unet_emu::lane_id();
    return unet_emu_shfl(mask, v, lane / width * width + ((src % width) + width) % width, "__shfl_sync");
}

/* One fiber runs at a time: a read-modify-write is atomic. */
template <class T> static inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T> static inline T atomicMax(T *p, T v) {
    T old = *p;
    *p = old < v ? v : old;
    return old;
}
template <class T> static inline T atomicMin(T *p, T v) {
    T old = *p;
    *p = v < old ? v : old;
    return old;
}
template <class T> static inline T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <class T> static inline T atomicCAS(T *p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}

/* Round-to-nearest single operations, never contracted into an FMA. */
#define UNET_EMU_KEEP(r) __asm__("" : "+x"(r))
static inline float __fadd_rn(float a, float b) {
    float r = a + b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __fsub_rn(float a, float b) {
    float r = a - b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __fmul_rn(float a, float b) {
    float r = a * b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __fdiv_rn(float a, float b) {
    float r = a / b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __fsqrt_rn(float a) {
    float r = sqrtf(a);
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __frcp_rn(float a) {
    float r = 1.0f / a;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) {
    double r = a + b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline double __dmul_rn(double a, double b) {
    double r = a * b;
    UNET_EMU_KEEP(r);
    return r;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}
#undef UNET_EMU_KEEP

/* Device code's min and max of the integer types (CUDA's math headers have them). */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

template <class T> static inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, T *entry) {
    return unet_emu_func_attributes(attr, reinterpret_cast<const void *>(entry));
}

namespace unet_emu {

/* A launch as the <<< >>> said it, and where. */
struct launch_config {
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
    const char *kernel, *file;
    int line;
};

static inline launch_config config(const char *kernel, const char *file, int line, dim3 grid, dim3 block,
                                   size_t shared_bytes = 0, cudaStream_t stream = 0) {
    return launch_config{grid, block, shared_bytes, stream, kernel, file, line};
}

/* Runs (or, during a capture, records) body once per thread of the grid. */
void launch_body(const launch_config &c, std::function<void()> body);

/* k<<<...>>>(args) becomes launch(config(...), [](auto... p) { k(p...); }, args): the arguments are evaluated
 * once, here, and copied (a recorded graph replays the values of its capture); every thread gets its own copy
 * of them, as the kernel's by-value parameters. */
template <class F, class... A> static inline void launch(const launch_config &c, F kernel, A... args) {
    launch_body(c, [kernel, saved = std::make_tuple(args...)]() { std::apply(kernel, saved); });
}

} // namespace unet_emu

#endif
