/* Checks of the CUDA emulator itself (tests/emu/test_emulator.py): that it
 * runs CUDA as CUDA runs, and stops what a GPU would punish.
 *
 *   unet_emu_selftest MODE      MODE: reduce, replay, bf16 (print results and
 *                               exit 0 when they are right), divergent,
 *                               shuffle-exit, overrun, host-pointer, capture
 *                               (each breaks a rule; the emulator must say so) */
#include <stdio.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            printf("%s: %s\n", #call, cudaGetErrorString(e_));                                                         \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* A block sums its threads' values through a shuffle tree and shared memory. */
static __global__ void reduce_kernel(const double *in, double *out) {
    __shared__ double warp_sums[8];
    double v = in[blockIdx.x * blockDim.x + threadIdx.x];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int w = 0; w < 8; w++) s += warp_sums[w];
        out[blockIdx.x] = s;
    }
}

static __global__ void add_from_kernel(int *x, const int *step) { *x += *step; }

static __global__ void divergent_kernel(int *x) {
    if (threadIdx.x >= 128) return;
    __syncthreads();
    x[threadIdx.x] = 1;
}

static __global__ void shuffle_exit_kernel(int *x) {
    if ((threadIdx.x & 31) >= 16) return;
    x[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}

static __global__ void overrun_kernel(float *p, int n) { p[n + threadIdx.x] = 1.0f; }

static int reduce() {
    const int blocks = 3, threads = 256;
    double host[blocks * threads], sums[blocks], *in, *out;
    for (int i = 0; i < blocks * threads; i++) host[i] = i % 7 - 3 + 0.25 * (i % 5);
    CHECK(cudaMalloc((void **)&in, sizeof host));
    CHECK(cudaMalloc((void **)&out, sizeof sums));
    CHECK(cudaMemcpy(in, host, sizeof host, cudaMemcpyHostToDevice));
    reduce_kernel<<<blocks, threads>>>(in, out);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(sums, out, sizeof sums, cudaMemcpyDeviceToHost));
    for (int b = 0; b < blocks; b++) {
        double want = 0;
        for (int t = 0; t < threads; t++) want += host[b * threads + t];
        printf("block %d sum %g want %g\n", b, sums[b], want);
        if (sums[b] != want) return 1;
    }
    return 0;
}

/* A captured graph reads device memory when replayed, with the kernel arguments of its capture. */
static int replay() {
    int *x, *step, one = 1, five = 5, got = 0;
    cudaStream_t s;
    cudaGraph_t g;
    cudaGraphExec_t e;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaMalloc((void **)&x, sizeof(int)));
    CHECK(cudaMalloc((void **)&step, sizeof(int)));
    CHECK(cudaMemset(x, 0, sizeof(int)));
    CHECK(cudaMemcpy(step, &one, sizeof one, cudaMemcpyHostToDevice));
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    add_from_kernel<<<1, 1, 0, s>>>(x, step);
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&e, g, 0));
    CHECK(cudaMemcpy(&got, x, sizeof got, cudaMemcpyDeviceToHost));
    printf("after capture %d\n", got); /* nothing ran */
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaMemcpy(step, &five, sizeof five, cudaMemcpyHostToDevice));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(&got, x, sizeof got, cudaMemcpyDeviceToHost));
    printf("after two replays %d\n", got);
    return got == 6 ? 0 : 1;
}

static int bf16() {
    /* 1 + 2^-8 lies halfway between two bf16 values: to even (1); 1 + 3 * 2^-8 halfway again: to even (1 + 2^-6) */
    float ties[2] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256};
    unsigned short want[2] = {0x3f80, 0x3f82};
    for (int i = 0; i < 2; i++) {
        unsigned short got = __bfloat16_as_ushort(__float2bfloat16_rn(ties[i]));
        printf("bf16(%.9g) = 0x%04x want 0x%04x\n", ties[i], got, want[i]);
        if (got != want[i]) return 1;
    }
    float nan;
    unsigned int bits = 0xffc00001u;
    memcpy(&nan, &bits, 4);
    return __bfloat16_as_ushort(__float2bfloat16_rn(nan)) == 0x7fff ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    CHECK(cudaSetDevice(0));
    if (!strcmp(mode, "reduce")) return reduce();
    if (!strcmp(mode, "replay")) return replay();
    if (!strcmp(mode, "bf16")) return bf16();
    int *x;
    CHECK(cudaMalloc((void **)&x, 256 * sizeof(int)));
    if (!strcmp(mode, "divergent") || !strcmp(mode, "shuffle-exit")) {
        if (mode[0] == 'd')
            divergent_kernel<<<1, 256>>>(x);
        else
            shuffle_exit_kernel<<<1, 32>>>(x);
        printf("the kernel ran to its end\n");
        return 0;
    }
    if (!strcmp(mode, "overrun")) {
        float *p;
        CHECK(cudaMalloc((void **)&p, 10 * sizeof(float)));
        overrun_kernel<<<1, 4>>>(p, 10);
        printf("after the kernel: %s\n", cudaGetErrorString(cudaDeviceSynchronize()));
        return 0;
    }
    if (!strcmp(mode, "host-pointer")) {
        int host[4] = {0}, other[4];
        printf("host to 'device' %s\n",
               cudaGetErrorString(cudaMemcpy(other, host, sizeof host, cudaMemcpyHostToDevice)));
        printf("past the end %s\n",
               cudaGetErrorString(cudaMemcpy(x + 250, host, 8 * sizeof(int), cudaMemcpyHostToDevice)));
        return 0;
    }
    if (!strcmp(mode, "capture")) {
        cudaStream_t s;
        cudaGraph_t g;
        void *p;
        CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        add_from_kernel<<<1, 1, 0, s>>>(x, x);
        printf("cudaMalloc while capturing: %s\n", cudaGetErrorString(cudaMalloc(&p, 16)));
        printf("end of the capture: %s\n", cudaGetErrorString(cudaStreamEndCapture(s, &g)));
        return 0;
    }
    printf("unknown mode '%s'\n", mode);
    return 2;
}
