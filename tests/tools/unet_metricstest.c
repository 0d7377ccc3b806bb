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

static void die(const char *msg, const char *arg) {
    fprintf(stderr, "unet_metricstest: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    exit(2);
}

static unet_shape parse_shape(const char *s) {
    unet_shape sh;
    if (sscanf(s, "%d,%d,%d,%d", &sh.n, &sh.c, &sh.h, &sh.w) != 4) die("shape must be N,C,H,W", s);
    return sh;
}

static void *read_file(const char *dir, const char *name, size_t bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf || fread(buf, 1, bytes, f) != bytes) die("short read (wrong size?)", path);
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    const char *backend = "cpu", *dir = NULL;
    unet_shape zs = {0, 0, 0, 0}, ls = {0, 0, 0, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--backend")) backend = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--logits")) zs = parse_shape(argv[i + 1]);
        else if (!strcmp(argv[i], "--label")) ls = parse_shape(argv[i + 1]);
        else die("unknown option", argv[i]);
    }
    if (!dir || zs.n <= 0 || ls.n != zs.n || ls.c != 1) die("need --dir, --logits N,K,h,w and --label N,1,H,W", NULL);
    size_t zn = unet_shape_count(zs), ln = unet_shape_count(ls);
    float *z = read_file(dir, "logits.bin", zn * sizeof(float));
    int32_t *label = read_file(dir, "label.bin", ln * sizeof(int32_t));
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
    char path[1024];
    snprintf(path, sizeof path, "%s/stats.bin", dir);
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write", path);
    fwrite(s.tp, sizeof(double), UNET_MAX_CLASSES, f);
    fwrite(s.fp, sizeof(double), UNET_MAX_CLASSES, f);
    fwrite(s.fn, sizeof(double), UNET_MAX_CLASSES, f);
    fwrite(&s.correct, sizeof(double), 1, f);
    fwrite(&s.total, sizeof(double), 1, f);
    fclose(f);
    free(z);
    free(label);
    return 0;
}
