/* Driver for the tests of the weight map, the augmentation and the Rand
 * score: raw arrays in, raw arrays out, so tests/cpu/test_weightmap.py,
 * test_augment.py and test_metrics_rand.py hold the library against numpy
 * and scipy references.
 *
 *   unet_augtest weightmap --h H --w W --dir D [--cells] [--w0 X --sigma S --no-balance] [--repeat N]
 *       reads D/label.bin (int32), D/cells.bin with --cells; writes D/weight.bin;
 *       prints "cells K ms T" (T: milliseconds per call, best of --repeat)
 *   unet_augtest warp --tile T --context X --channels C --dir D [--grid G] [--angle A --scale S
 *       --flip-x F --rot90 K --linear]
 *       reads D/src_raw.bin (C,S,S) float32, D/src_label.bin int32, D/src_weight.bin float32, with --grid
 *       D/dy.bin and D/dx.bin (G,G) float64; writes D/raw.bin, label.bin, weight.bin
 *   unet_augtest apply --spec TEXT --key K --tile T --context X|auto --channels C --dir D [--repeat N]
 *       the hook with its own draws, same files; prints "context X ms T"
 *   unet_augtest batch --device cpu|cuda --spec "TEXT;TEXT;..." --key K --batch N --tile T --context X|auto
 *       --channels C --dir D [--repeat R]
 *       the CPU warp and its CUDA twin side by side: reads D/src_raw.bin (N,C,S,S) float32, D/src_label.bin
 *       and D/src_weight.bin (N,S,S); sample n takes the n % count-th spec and key K + n, draws as the hook
 *       does (unet_augment_draw: the transform, not the intensity changes) and is warped by unet_augment_warp
 *       (cpu) or, the whole batch at once, by the CUDA backend's warp_batch (cuda); writes D/raw.bin, label.bin,
 *       weight.bin (N, ...). The outputs are poisoned first (NaN in raw and weight, INT32_MIN in label, on the
 *       device for cuda), so an element left unwritten shows. Prints "context X ms T" (cuda: the warp with
 *       its uploads, to the end of the stream, best of R)
 *   unet_augtest parse --spec TEXT --tile T      prints the description and the context, or the error (exit 2)
 *   unet_augtest vrand --h H --w W --class K --dir D   reads D/pred.bin (uint8), D/label.bin (int32); prints V_rand
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/augment.h"
#include "unet/backend.h"
#include "unet/metrics.h"
#include "unet/weightmap.h"

#define TOOL_NAME "unet_augtest"
#include "tool_common.h"

static void poison(float *raw, size_t n_raw, int32_t *label, float *weight, size_t n) {
    for (size_t i = 0; i < n_raw; i++) raw[i] = NAN;
    for (size_t i = 0; i < n; i++) label[i] = INT32_MIN, weight[i] = NAN;
}

/* The batch mode (see the top of the file). */
static int run_batch(const char *dir, const char *device, const char *specs, unsigned long long key, int batch,
                     int tile, const char *context_text, int channels, int repeat) {
    enum { MAX_SPECS = 16 };
    unet_augment_cfg cfg[MAX_SPECS];
    int n_specs = 0, context = 0, grid = 0;
    unet_interp interp = UNET_INTERP_LINEAR;
    char err[1024] = "", *copy = strdup(specs);
    for (char *s = strtok(copy, ";"); s; s = strtok(NULL, ";")) {
        if (n_specs == MAX_SPECS) die("batch: at most 16 specs", NULL);
        if (unet_augment_parse(s, &cfg[n_specs], err, sizeof err)) die(err, NULL);
        int c = unet_augment_context(&cfg[n_specs], tile);
        if (c > context) context = c;
        if (cfg[n_specs].elastic && cfg[n_specs].elastic_sigma > 0 && cfg[n_specs].elastic_grid > grid)
            grid = cfg[n_specs].elastic_grid;
        if (cfg[n_specs].interp == UNET_INTERP_CUBIC) interp = UNET_INTERP_CUBIC;
        n_specs++;
    }
    free(copy);
    if (!n_specs || batch < 1 || tile < 1) die("batch: need --spec, --batch >= 1 and --tile >= 1", NULL);
    if (strcmp(context_text, "auto")) context = atoi(context_text);
    const int S = tile + 2 * context, C = channels;
    const size_t splane = (size_t)S * S, plane = (size_t)tile * tile, G2 = 2 * 64 * 64;
    float *src_raw = read_exact(dir, "src_raw.bin", batch * C * splane * 4);
    int32_t *src_label = read_exact(dir, "src_label.bin", batch * splane * 4);
    float *src_weight = read_exact(dir, "src_weight.bin", batch * splane * 4);
    float *raw = malloc(batch * C * plane * sizeof *raw), *weight = malloc(batch * plane * sizeof *weight);
    int32_t *label = malloc(batch * plane * sizeof *label);
    unet_warp *warps = malloc(batch * sizeof *warps);
    double *grid_values = malloc(batch * G2 * sizeof *grid_values);
    if (!raw || !weight || !label || !warps || !grid_values) die("out of memory", NULL);
    for (int n = 0; n < batch; n++) unet_augment_draw(&cfg[n % n_specs], key + n, &warps[n], grid_values + n * G2);
    double best = 1e30;
    if (!strcmp(device, "cpu")) {
        for (int r = 0; r < repeat; r++) {
            poison(raw, batch * C * plane, label, weight, batch * plane);
            double t0 = now_ms();
            for (int n = 0; n < batch; n++) {
                unet_augment_args a = {C,
                                       tile,
                                       context,
                                       src_raw + n * C * splane,
                                       src_label + n * splane,
                                       src_weight + n * splane,
                                       raw + n * C * plane,
                                       label + n * plane,
                                       weight + n * plane,
                                       key + n};
                if (unet_augment_warp(&warps[n], &a, err, sizeof err)) die(err, NULL);
            }
            double t = now_ms() - t0;
            if (t < best) best = t;
        }
    } else if (!strcmp(device, "cuda")) {
        const unet_backend *b = unet_cuda_backend(0, "fp32", NULL, 1, err, sizeof err);
        if (!b) die(err, NULL);
        unet_shape rs = {batch, C, tile, tile}, ps = {batch, 1, tile, tile};
        float *d_raw = b->alloc(b, batch * C * plane * sizeof(float)), *d_weight = b->alloc(b, batch * plane * 4);
        int32_t *d_label = b->alloc(b, batch * plane * 4);
        if (!d_raw || !d_weight || !d_label) die("device allocation failed", NULL);
        int cubic = interp == UNET_INTERP_CUBIC;
        unet_warper *wp = b->warper_create(b, batch, C, tile, context, grid, cubic, err, sizeof err);
        if (!wp) die(err, NULL);
        for (int r = 0; r < repeat; r++) {
            poison(raw, batch * C * plane, label, weight, batch * plane);
            b->upload(b, d_raw, raw, rs, UNET_F32);
            b->upload(b, d_label, label, ps, UNET_I32);
            b->upload(b, d_weight, weight, ps, UNET_F32);
            b->sync(b);
            double t0 = now_ms();
            if (b->warp_batch(b, wp, batch, warps, src_raw, src_label, src_weight, d_raw, d_label, d_weight, err,
                              sizeof err))
                die(err, NULL);
            b->sync(b);
            double t = now_ms() - t0;
            if (t < best) best = t;
        }
        b->download(b, raw, d_raw, rs, UNET_F32);
        b->download(b, label, d_label, ps, UNET_I32);
        b->download(b, weight, d_weight, ps, UNET_F32);
        b->warper_free(b, wp);
        b->free(b, d_raw), b->free(b, d_label), b->free(b, d_weight);
    } else {
        die("batch: --device must be cpu or cuda", NULL);
    }
    write_file(dir, "raw.bin", raw, batch * C * plane * 4);
    write_file(dir, "label.bin", label, batch * plane * 4);
    write_file(dir, "weight.bin", weight, batch * plane * 4);
    printf("context %d ms %.3f\n", context, best);
    free(src_raw), free(src_label), free(src_weight), free(raw), free(label), free(weight), free(warps);
    free(grid_values);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: unet_augtest weightmap|warp|apply|batch|parse|vrand [options]", NULL);
    const char *mode = argv[1], *dir = ".", *spec = "none", *context_text = "0", *device = "cpu";
    int h = 0, w = 0, cells = 0, tile = 0, channels = 1, grid = 0, flip_x = 0, rot90 = 0, linear = 0, repeat = 1,
        cls = 1, batch = 1;
    double angle = 0, scale = 1;
    unsigned long long key = 0;
    unet_weightmap_cfg wcfg = UNET_WEIGHTMAP_DEFAULTS;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("--h"))
            h = atoi(v);
        else if (ARG("--w"))
            w = atoi(v);
        else if (ARG("--dir"))
            dir = v;
        else if (!strcmp(a, "--cells"))
            cells = 1;
        else if (ARG("--w0"))
            wcfg.w0 = atof(v);
        else if (ARG("--sigma"))
            wcfg.sigma = atof(v);
        else if (!strcmp(a, "--no-balance"))
            wcfg.balance = 0;
        else if (ARG("--repeat"))
            repeat = atoi(v);
        else if (ARG("--tile"))
            tile = atoi(v);
        else if (ARG("--context"))
            context_text = v;
        else if (ARG("--channels"))
            channels = atoi(v);
        else if (ARG("--grid"))
            grid = atoi(v);
        else if (ARG("--angle"))
            angle = atof(v);
        else if (ARG("--scale"))
            scale = atof(v);
        else if (ARG("--flip-x"))
            flip_x = atoi(v);
        else if (ARG("--rot90"))
            rot90 = atoi(v);
        else if (!strcmp(a, "--linear"))
            linear = 1;
        else if (ARG("--spec"))
            spec = v;
        else if (ARG("--key"))
            key = strtoull(v, NULL, 10);
        else if (ARG("--class"))
            cls = atoi(v);
        else if (ARG("--device"))
            device = v;
        else if (ARG("--batch"))
            batch = atoi(v);
        else
            die("unknown or incomplete argument", a);
#undef ARG
    }
    char err[1024] = "";
    if (!strcmp(mode, "weightmap")) {
        size_t n = (size_t)h * w;
        int32_t *label = read_exact(dir, "label.bin", n * 4), *c = cells ? read_exact(dir, "cells.bin", n * 4) : NULL;
        float *out = malloc(n * sizeof *out);
        double best = 1e30;
        int k = 0;
        for (int r = 0; r < repeat; r++) {
            double t0 = now_ms();
            k = unet_weight_map(label, c, h, w, &wcfg, out);
            double t = now_ms() - t0;
            if (t < best) best = t;
        }
        if (k < 0) die("out of memory", NULL);
        write_file(dir, "weight.bin", out, n * sizeof *out);
        printf("cells %d ms %.3f\n", k, best);
        free(label), free(c), free(out);
        return 0;
    }
    if (!strcmp(mode, "vrand")) {
        size_t n = (size_t)h * w;
        uint8_t *pred = read_exact(dir, "pred.bin", n);
        int32_t *label = read_exact(dir, "label.bin", n * 4);
        printf("%.17g\n", unet_vrand(pred, label, h, w, cls));
        free(pred), free(label);
        return 0;
    }
    if (!strcmp(mode, "batch")) return run_batch(dir, device, spec, key, batch, tile, context_text, channels, repeat);
    unet_augment_cfg cfg;
    if (!strcmp(mode, "parse")) {
        if (unet_augment_parse(spec, &cfg, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        char text[512];
        unet_augment_describe(&cfg, text, sizeof text);
        printf("%s\ncontext %d\nactive %d\n", text, unet_augment_context(&cfg, tile), unet_augment_active(&cfg));
        return 0;
    }
    if (strcmp(mode, "warp") && strcmp(mode, "apply"))
        die("mode must be weightmap, warp, apply, batch, parse or vrand", NULL);
    if (!strcmp(mode, "apply") && unet_augment_parse(spec, &cfg, err, sizeof err)) die(err, NULL);
    int context = !strcmp(context_text, "auto") ? unet_augment_context(&cfg, tile) : atoi(context_text);
    const int S = tile + 2 * context, C = channels;
    const size_t splane = (size_t)S * S, plane = (size_t)tile * tile;
    unet_augment_args a = {C,
                           tile,
                           context,
                           read_exact(dir, "src_raw.bin", splane * C * 4),
                           read_exact(dir, "src_label.bin", splane * 4),
                           read_exact(dir, "src_weight.bin", splane * 4),
                           malloc(plane * C * 4),
                           malloc(plane * 4),
                           malloc(plane * 4),
                           key};
    double best = 1e30;
    for (int r = 0; r < repeat; r++) {
        double t0 = now_ms();
        int rc;
        if (!strcmp(mode, "warp")) {
            double *dy = grid ? read_exact(dir, "dy.bin", (size_t)grid * grid * 8) : NULL;
            double *dx = grid ? read_exact(dir, "dx.bin", (size_t)grid * grid * 8) : NULL;
            unet_warp wp = {grid, dy, dx, angle, scale, flip_x, rot90, linear ? UNET_INTERP_LINEAR : UNET_INTERP_CUBIC};
            t0 = now_ms();
            rc = unet_augment_warp(&wp, &a, err, sizeof err);
            free(dy), free(dx);
        } else {
            rc = unet_augment_apply(&cfg, &a, err, sizeof err);
        }
        double t = now_ms() - t0;
        if (t < best) best = t;
        if (rc) die(err, NULL);
    }
    write_file(dir, "raw.bin", a.raw, plane * C * 4);
    write_file(dir, "label.bin", a.label, plane * 4);
    write_file(dir, "weight.bin", a.weight, plane * 4);
    printf("context %d ms %.3f\n", context, best);
    free((void *)a.src_raw), free((void *)a.src_label), free((void *)a.src_weight);
    free(a.raw), free(a.label), free(a.weight);
    return 0;
}
