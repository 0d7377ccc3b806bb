/* Counts the confusion statistics of logits against labels read from files,
 * on the CPU (unet_seg_stats_add) and, where built with CUDA, on the GPU
 * (src/kernels/cuda/metrics.h), so that the test can hold the two against
 * each other and against numpy (tests/gpu/test_twins.py).
 *
 *   unet_metricstest --backend cpu|cuda --dir D --logits N,K,h,w --label N,1,H,W
 *
 * Reads D/logits.bin (float32) and D/label.bin (int32); writes D/stats.bin:
 * float64 tp[64], fp[64], fn[64], correct, total. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/backend.h"
#include "unet/metrics.h"
#ifdef UNET_HAVE_CUDA
#include "kernels/cuda/metrics.h"
#endif

#define TOOL_NAME "unet_metricstest"
#include "tool_common.h"

int main(int argc, char **argv) {
    const char *backend = "cpu", *dir = NULL;
    unet_shape zs = {0, 0, 0, 0}, ls = {0, 0, 0, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) backend = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--logits")) zs = parse_shape(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--label")) ls = parse_shape(argv[i + 1], NULL);
        else die("unknown option", argv[i]);
    }
    if (!dir || zs.n <= 0 || ls.n != zs.n || ls.c != 1) die("need --dir, --logits N,K,h,w and --label N,1,H,W", NULL);
    size_t zn = unet_shape_count(zs), ln = unet_shape_count(ls);
    float *z = read_exact(dir, "logits.bin", zn * sizeof(float));
    int32_t *label = read_exact(dir, "label.bin", ln * sizeof(int32_t));
    unet_seg_stats s;
    unet_seg_stats_init(&s, zs.c);
    if (!strcmp(backend, "cpu")) {
        unet_seg_stats_add(&s, z, zs, label, ls.h, ls.w);
    } else {
#ifdef UNET_HAVE_CUDA
        char err[512];
        const unet_backend *b = unet_cuda_backend(0, "fp32", 1, err, sizeof err);
        if (!b) die(err, NULL);
        float *dz = b->alloc(b, zn * sizeof(float));
        int32_t *dl = b->alloc(b, ln * sizeof(int32_t));
        void *ws = b->alloc(b, unet_cuda_seg_counts_workspace_bytes(zs));
        if (!dz || !dl || !ws) die("device allocation failed", NULL);
        b->upload(b, dz, z, zs, UNET_F32);
        b->upload(b, dl, label, ls, UNET_I32);
        unet_cuda_seg_stats_add(b, &s, dz, zs, dl, ls.h, ls.w, ws);
#else
        die("this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc is installed)", NULL);
#endif
    }
    enum { M = UNET_MAX_CLASSES };
    double stats[3 * M + 2]; /* the layout of stats.bin (top of the file) */
    memcpy(stats, s.tp, sizeof s.tp);
    memcpy(stats + M, s.fp, sizeof s.fp);
    memcpy(stats + 2 * M, s.fn, sizeof s.fn);
    stats[3 * M] = s.correct;
    stats[3 * M + 1] = s.total;
    write_file(dir, "stats.bin", stats, sizeof stats);
    free(z);
    free(label);
    return 0;
}
