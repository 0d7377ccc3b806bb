/* The augmentation warp on the GPU, twin of unet_augment_warp
 * (src/host/data/augment.c): the elastic deformation of the U-Net paper with
 * the flips, quarter turns, rotation and scaling composed into one map, for
 * a batch of source windows at once: the CUDA backend's warp slots
 * (warper_create, warp_batch, warper_free in include/unet/backend.h).
 *
 * What is shared and what is not. The host draws (unet_augment_draw, the
 * same counter-based draws as the CPU path) and hands over each sample's
 * unet_warp; every number that decides a pixel is then computed by the
 * functions of src/common/warp_math.h, the CPU's own code, here compiled
 * for the device. This file compiles with -fmad=false (CMakeLists.txt): with
 * FMA contraction the device would round a * b + c once where the CPU rounds
 * twice, the source positions would differ in the last bit, and a label
 * sampled at a position that close to a half pixel would flip. The values
 * that need libm (cos, sin, pow) are computed here on the host, by the same
 * glibc functions the CPU path calls, and passed in.
 *
 * Work per call, all queued on the backend's stream:
 *   uploads     the source windows (C+2 planes of S x S per sample), the
 *               displacement grids and one job record per sample
 *   field       one block per elastic sample: thread 0 turns the g x g grid
 *               into B-spline coefficients (a few hundred flops), then one
 *               thread per tile row fills that row of W, Ry and Rx
 *   prefilter   for cubic samples, the window's B-spline coefficients:
 *               one thread per row (in double, the lines of neighbouring
 *               rows interleaved in a scratch buffer so that their accesses
 *               coalesce), then one thread per column
 *   warp        one thread per tile pixel, all channels, label and weight
 * No atomics and no reductions: every output element is written by exactly
 * one thread, so the result does not depend on the launch shape. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/warp_math.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/staging.h"
#include "unet/augment.h"

/* One sample as the kernels see it: the resolved warp with device pointers. */
typedef struct {
    unet_warp_map map;
    int prefilter;   /* cubic and not a copy: map.src is the coefficient buffer, filled first */
    double zn1_grid; /* pow(UNET_SPLINE_POLE, grid - 1), from the host */
} sample_job;

struct unet_warper {
    const unet_backend *b;
    unet_cuda_ctx *ctx;
    int batch, channels, tile, context, grid, window; /* window: S = tile + 2 context */
    int cubic;
    /* device */
    float *src_raw, *src_weight; /* (batch, C, S, S), (batch, S, S) */
    int32_t *src_label;          /* (batch, S, S) */
    float *coef;                 /* cubic: (batch, C, S, S) B-spline coefficients */
    double *lines;               /* cubic: (batch, C, S, S) the row pass's double lines */
    double *grids;               /* (batch, 2, G, G): dy, dx, turned into coefficients in place */
    double *tables;              /* (batch, 3, T, G): W, Ry, Rx */
    sample_job *jobs;            /* (batch) */
    /* host staging */
    sample_job *host_jobs;
    double *host_grids;
};

static size_t grid_stride(const unet_warper *w) { return (size_t)2 * w->grid * w->grid; }
static size_t table_stride(const unet_warper *w) { return (size_t)3 * w->tile * w->grid; }

/* ---------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------- */

static __global__ void field_kernel(const sample_job *jobs, double *grids, size_t grid_stride, double *tables,
                                    size_t table_stride) {
    const sample_job *j = &jobs[blockIdx.x];
    const int g = j->map.grid, T = j->map.tile;
    if (g == 0) return; /* the whole block: no barrier is skipped by part of it */
    double *cy = grids + blockIdx.x * grid_stride, *cx = cy + g * g;
    double *W = tables + blockIdx.x * table_stride, *Ry = W + (size_t)T * g, *Rx = Ry + (size_t)T * g;
    if (threadIdx.x == 0) {
        unet_warp_grid_coefficients(cy, g, j->zn1_grid);
        unet_warp_grid_coefficients(cx, g, j->zn1_grid);
    }
    __syncthreads();
    /* row t of Ry and Rx needs row t of W only: the same thread makes both */
    for (int t = threadIdx.x; t < T; t += blockDim.x) {
        unet_warp_weights_at(t, T, g, W + (size_t)t * g);
        unet_warp_field_row(W + (size_t)t * g, cy, cx, g, Ry + (size_t)t * g, Rx + (size_t)t * g);
    }
}

/* Row pass: thread e filters row e % S of plane e / S (sample plane / C).
 * Its double line lives in `lines` with stride S, so the threads of a warp,
 * on neighbouring rows, touch neighbouring doubles at each step. */
static __global__ void spline_rows_kernel(const sample_job *jobs, const float *src, float *coef, double *lines,
                                          int channels, int S, long long rows, double zn1) {
    const long long splane = (long long)S * S;
    for (long long e = unet_global_thread(); e < rows; e += unet_grid_threads()) {
        long long plane = e / S;
        int y = (int)(e - plane * S);
        if (!jobs[plane / channels].prefilter) continue;
        long long at = plane * splane + (long long)y * S;
        unet_spline_row(src + at, coef + at, S, lines + plane * splane + y, S, zn1);
    }
}

/* Column pass: thread e filters column e % S of plane e / S in place; the
 * threads of a warp read and write neighbouring floats of each row. */
static __global__ void spline_columns_kernel(const sample_job *jobs, float *coef, int channels, int S,
                                             long long columns, double zn1) {
    const long long splane = (long long)S * S;
    for (long long e = unet_global_thread(); e < columns; e += unet_grid_threads()) {
        long long plane = e / S;
        int x = (int)(e - plane * S);
        if (!jobs[plane / channels].prefilter) continue;
        double line;
        unet_spline_columns(coef + plane * splane, S, S, x, x + 1, &line, zn1);
    }
}

/* grid.x = sample, grid.y and the threads walk its tile pixels. */
static __global__ void warp_kernel(const sample_job *jobs, int items) {
    const unet_warp_map m = jobs[blockIdx.x].map;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < items; e += gridDim.y * blockDim.x) {
        int y = e / m.tile, x = e - y * m.tile;
        unet_warp_pixel(&m, y, x);
    }
}

/* ---------------------------------------------------------------------------
 * Errors: a failed CUDA call is not the user's mistake; like every check of
 * the backend (common.h) it is reported with the call, the warp's shapes and
 * the device, and ends the run.
 * ------------------------------------------------------------------------- */

typedef struct {
    char text[320];
} work_words;

/* The warp of `count` samples in words, for the reports of its calls. */
static work_words describe(const unet_warper *w, int count) {
    work_words d;
    snprintf(d.text, sizeof d.text,
             "augmentation warp of %d sample(s): source windows %d x %d x %d x %d -> tiles %d x %d x %d x %d, "
             "elastic grid up to %d, %s",
             count, count, w->channels, w->window, w->window, count, w->channels, w->tile, w->tile, w->grid,
             w->cubic ? "cubic" : "linear");
    return d;
}

/* ---------------------------------------------------------------------------
 * The backend's slots
 * ------------------------------------------------------------------------- */

void unet_cuda_warper_free(const unet_backend *b, unet_warper *w) {
    (void)b;
    if (!w) return;
    work_words d = describe(w, w->batch);
    const unet_cuda_site at = unet_at_work(w->b, d.text, 1);
    void *device[] = {w->src_raw, w->src_weight, w->src_label, w->coef, w->lines, w->grids, w->tables, w->jobs};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
        if (device[i]) UNET_CUDA_CHECK(cudaFree(device[i]), at);
    free(w->host_jobs);
    free(w->host_grids);
    free(w);
}

unet_warper *unet_cuda_warper_create(const unet_backend *b, int batch, int channels, int tile, int context, int grid,
                                     int cubic, char *err, size_t errlen) {
    const long long S = (long long)tile + 2LL * context;
    if (batch < 1 || channels < 1 || tile < 1 || context < 0 ||
        (grid != 0 && (grid < 2 || grid > UNET_WARP_MAX_GRID)) || (cubic && S < 2) ||
        (long long)tile * tile > (1LL << 30) || S * S * channels > (1LL << 40)) {
        snprintf(err, errlen,
                 "the GPU augmentation warp: batch %d, %d channel(s), tile %d, context %d, grid %d: need batch, "
                 "channels, tile >= 1, context >= 0, grid 0 or 2..%d, a window of 2 pixels or more for cubic, and "
                 "a tile of at most 2^30 pixels",
                 batch, channels, tile, context, grid, UNET_WARP_MAX_GRID);
        return NULL;
    }
    unet_warper *w = (unet_warper *)calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "the GPU augmentation warp: out of host memory");
        return NULL;
    }
    w->b = b;
    w->ctx = (unet_cuda_ctx *)b->ctx;
    w->batch = batch, w->channels = channels, w->tile = tile, w->context = context, w->grid = grid;
    w->window = (int)S, w->cubic = cubic != 0;
    /* the calling thread may not be the one that made the backend: allocate on the backend's device */
    work_words d = describe(w, batch);
    UNET_CUDA_CHECK(cudaSetDevice(w->ctx->device), unet_at_work(b, d.text, 0));

    const size_t windows = (size_t)batch * channels * S * S, planes = (size_t)batch * S * S;
    struct {
        void **p;
        size_t bytes;
    } want[] = {
        {(void **)&w->src_raw, windows * sizeof(float)},
        {(void **)&w->src_weight, planes * sizeof(float)},
        {(void **)&w->src_label, planes * sizeof(int32_t)},
        {(void **)&w->coef, w->cubic ? windows * sizeof(float) : 0},
        {(void **)&w->lines, w->cubic ? windows * sizeof(double) : 0},
        {(void **)&w->grids, (size_t)batch * grid_stride(w) * sizeof(double)},
        {(void **)&w->tables, (size_t)batch * table_stride(w) * sizeof(double)},
        {(void **)&w->jobs, (size_t)batch * sizeof(sample_job)},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) total += want[i].bytes;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!want[i].bytes) continue;
        cudaError_t e = cudaMalloc(want[i].p, want[i].bytes);
        if (e != cudaSuccess) {
            *want[i].p = NULL;
            cudaGetLastError(); /* an allocation failure is not sticky: clear it for the next check */
            snprintf(err, errlen,
                     "the GPU augmentation warp: cudaMalloc of %.1f MiB (of %.1f MiB for batches of %d x %d x %d x "
                     "%d from windows of %lld) failed on cuda:%d: %s; use a smaller --batch or --tile, or augment "
                     "on the CPU",
                     want[i].bytes / 1048576.0, total / 1048576.0, batch, channels, tile, tile, S, w->ctx->device,
                     cudaGetErrorString(e));
            unet_cuda_warper_free(b, w);
            return NULL;
        }
    }
    w->host_jobs = (sample_job *)calloc((size_t)batch, sizeof(sample_job));
    w->host_grids = grid ? (double *)calloc((size_t)batch * grid_stride(w), sizeof(double)) : NULL;
    if (!w->host_jobs || (grid && !w->host_grids)) {
        snprintf(err, errlen, "the GPU augmentation warp: out of host memory");
        unet_cuda_warper_free(b, w);
        return NULL;
    }
    return w;
}

/* Sample n's job: the CPU's decisions (unet_augment_warp), device pointers. */
static int make_job(const unet_warper *w, int n, const unet_warp *wp, float *raw, int32_t *label, float *weight,
                    sample_job *j, double *grid_values, char *err, size_t errlen) {
    const int T = w->tile, C = w->channels, S = w->window, g = wp->grid;
    const size_t splane = (size_t)S * S, plane = (size_t)T * T;
    const int elastic = wp->dy && wp->dx;
    if (elastic && (g < 2 || g > UNET_WARP_MAX_GRID)) {
        snprintf(err, errlen, "augmentation: an elastic grid of %d points per side; it takes 2 to %d", g,
                 UNET_WARP_MAX_GRID);
        return -1;
    }
    if (elastic && g > w->grid) {
        snprintf(err, errlen,
                 "the GPU augmentation warp: sample %d has an elastic grid of %d points a side, the "
                 "warper was made for %s",
                 n, g, w->grid ? "smaller grids" : "no elastic deformation");
        return -1;
    }
    memset(j, 0, sizeof *j);
    unet_warp_map *m = &j->map;
    m->tile = T, m->context = w->context, m->channels = C;
    m->flip_x = wp->flip_x, m->rot90 = wp->rot90 & 3;
    m->src = w->src_raw + (size_t)n * C * splane;
    m->src_label = w->src_label + (size_t)n * splane;
    m->src_weight = w->src_weight + (size_t)n * splane;
    m->raw = raw + (size_t)n * C * plane;
    m->label = label + (size_t)n * plane;
    m->weight = weight + (size_t)n * plane;
    if (!elastic && wp->angle == 0 && wp->scale == 1) {
        m->mode = UNET_WARP_COPY;
        return 0;
    }
    if (wp->interp == UNET_INTERP_CUBIC) {
        if (!w->cubic) {
            snprintf(err, errlen,
                     "the GPU augmentation warp: sample %d asks for cubic interpolation, the warper "
                     "was made for linear",
                     n);
            return -1;
        }
        m->mode = UNET_WARP_CUBIC;
        m->src = w->coef + (size_t)n * C * splane;
        j->prefilter = 1;
    } else {
        m->mode = UNET_WARP_LINEAR;
    }
    /* glibc's cos and sin, as the CPU path computes them (warp_math.h) */
    m->ca = cos(wp->angle) / wp->scale, m->sa = sin(wp->angle) / wp->scale;
    if (elastic) {
        double *W = w->tables + (size_t)n * table_stride(w);
        m->grid = g, m->W = W, m->Ry = W + (size_t)T * g, m->Rx = W + (size_t)2 * T * g;
        j->zn1_grid = pow(UNET_SPLINE_POLE, g - 1);
        memcpy(grid_values, wp->dy, (size_t)g * g * sizeof(double));
        memcpy(grid_values + g * g, wp->dx, (size_t)g * g * sizeof(double));
    }
    return 0;
}

int unet_cuda_warp_batch(const unet_backend *b, unet_warper *w, int count, const unet_warp *warps, const float *src_raw,
                         const int32_t *src_label, const float *src_weight, float *raw, int32_t *label, float *weight,
                         char *err, size_t errlen) {
    (void)b;
    if (count < 1 || count > w->batch || !warps || !src_raw || !src_label || !src_weight || !raw || !label || !weight) {
        snprintf(err, errlen,
                 "the GPU augmentation warp: %d sample(s) for a warper of %d, every array given: need "
                 "1 to %d and all nine arrays",
                 count, w->batch, w->batch);
        return -1;
    }
    int any_field = 0, any_prefilter = 0;
    for (int n = 0; n < count; n++) {
        if (make_job(w, n, &warps[n], raw, label, weight, &w->host_jobs[n],
                     w->host_grids ? w->host_grids + (size_t)n * grid_stride(w) : NULL, err, errlen))
            return -1;
        any_field |= w->host_jobs[n].map.grid > 0;
        any_prefilter |= w->host_jobs[n].prefilter;
    }
    const int C = w->channels, S = w->window, T = w->tile;
    const size_t windows = (size_t)count * C * S * S, planes = (size_t)count * S * S;
    const cudaStream_t stream = w->ctx->stream;
    work_words d = describe(w, count);
    const unet_cuda_site at = unet_at_work(w->b, d.text, 0);
    UNET_CUDA_CHECK(cudaSetDevice(w->ctx->device), at);
    /* through page-locked staging (staging.h): the host arrays may be reused at once, and the host need not wait
     * for the step that still reads the previous batch */
    unet_cuda_upload_staged(w->ctx, w->src_raw, src_raw, windows * sizeof(float), at);
    unet_cuda_upload_staged(w->ctx, w->src_label, src_label, planes * sizeof(int32_t), at);
    unet_cuda_upload_staged(w->ctx, w->src_weight, src_weight, planes * sizeof(float), at);
    if (any_field)
        unet_cuda_upload_staged(w->ctx, w->grids, w->host_grids, count * grid_stride(w) * sizeof(double), at);
    unet_cuda_upload_staged(w->ctx, w->jobs, w->host_jobs, count * sizeof(sample_job), at);
    if (any_field) {
        field_kernel<<<count, UNET_THREADS, 0, stream>>>(w->jobs, w->grids, grid_stride(w), w->tables, table_stride(w));
        UNET_CUDA_LAUNCHED_AT("field_kernel", at);
    }
    if (any_prefilter) {
        const long long lines = (long long)count * C * S;
        const double zn1 = pow(UNET_SPLINE_POLE, S - 1);
        spline_rows_kernel<<<unet_blocks_for(lines), UNET_THREADS, 0, stream>>>(w->jobs, w->src_raw, w->coef, w->lines,
                                                                                C, S, lines, zn1);
        UNET_CUDA_LAUNCHED_AT("spline_rows_kernel", at);
        spline_columns_kernel<<<unet_blocks_for(lines), UNET_THREADS, 0, stream>>>(w->jobs, w->coef, C, S, lines, zn1);
        UNET_CUDA_LAUNCHED_AT("spline_columns_kernel", at);
    }
    unet_plane_launch l = unet_plane_launch_for(NULL, count, (long long)T * T);
    warp_kernel<<<l.grid, l.block, 0, stream>>>(w->jobs, T * T);
    UNET_CUDA_LAUNCHED_AT("warp_kernel", at);
    return 0;
}
