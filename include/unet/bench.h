/* `unet bench`: training-step and inference throughput of a model on random
 * data, timed inside the process (after warm-up), for the benchmarks in bench/. */
#ifndef UNET_BENCH_H
#define UNET_BENCH_H

#include "unet/backend.h"
#include "unet/model.h"
#include "unet/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int tile, batch, warmup, steps;
    int inference; /* time forward passes of an inference plan instead of training steps */
    unsigned long long seed;
    /* time replays of the step captured as a CUDA graph where the backend can
     * (--cuda-graph auto); the warm-up then covers at least the capture */
    int graph;
} unet_bench_cfg;

typedef struct {
    double ms_median, ms_p90, ms_min;
    double cpu_ms_median; /* process CPU time of a step, every thread's (with one thread: what load disturbs least) */
    double images_per_s;  /* batch / median step time */
    double tflops;        /* achieved: images/s x (3 x forward FLOPs) for training, 1x for inference */
    double flops_per_image;
    size_t activation_bytes, workspace_bytes, param_bytes;
    double first_loss, last_loss;
    int cuda_graph;             /* 1: the timed steps were replays of one CUDA graph */
    char cuda_graph_note[1100]; /* why not, where a graph was asked for and the backend has them; else "" */
} unet_bench_result;

int unet_bench_run(const unet_model_cfg *m, const unet_optim_cfg *o, const unet_backend *b, const unet_bench_cfg *c,
                   unet_bench_result *r, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
