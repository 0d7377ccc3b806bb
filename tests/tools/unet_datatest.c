/* Data driver for the tests: opens a dataset through include/unet/data.h and
 * dumps what the library made of it, so that tests/cpu/test_data.py can hold
 * it against numpy (scaling, mirroring, batches).
 *
 *   unet_datatest --data F.h5 [--raw-key K --label-key K --weight-key K --instances-key K]
 *       [--classes K] [--label-optional] [--cache-bytes N] [--val V.h5 | --val-fraction f] [--use-val]
 *       (--info | --read K | --window K,Y0,X0,SIZE | --batches | --eval-tiles) [--dir D]
 *       [--step S --count M --batch B --tile T --margin m --seed s --no-shuffle --no-prefetch --augment-test CTX
 *        --augment SPEC --workers N --defer cpu|cuda]
 *
 * --info prints the dataset and both views. --read writes D/raw.bin,
 * label.bin, weight.bin (instances.bin when the file has them) of image K of
 * the view. --window writes the mirrored window. --batches writes
 * D/raw.<step>.bin, label.<step>.bin, weight.<step>.bin for steps S..S+M-1 and
 * D/samples.txt ("step slot image y0 x0" a line). --eval-tiles writes all
 * evaluation tiles one after the other to D/raw.bin, label.bin, weight.bin.
 * --augment-test CTX plugs in an augmentation that crops the centre of its
 * CTX-larger source window (the identity, if the seam is right); --augment
 * plugs in unet_augment_apply with the --augment text SPEC, --workers N the
 * loader's worker threads. --defer cpu|cuda defers the --augment warp (no
 * intensity changes): the loader reads the source windows and records the
 * draws (unet_augment_record, unet_loader_sources), and the batch is warped
 * here, sample by sample by unet_augment_warp (cpu) or at once by
 * the CUDA backend's warp_batch (cuda); the files are the same as without it.
 * Errors: the library's one line on stderr, exit code 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/augment.h"
#include "unet/backend.h"
#include "unet/data.h"

#define TOOL_NAME "unet_datatest"
#include "tool_common.h"

static char err[1024];

static void fail(void) {
    fprintf(stderr, "%s\n", err);
    exit(2);
}

static int centre_crop(void *ctx, const unet_augment_args *a, char *e, size_t elen) {
    (void)ctx, (void)e, (void)elen;
    int S = a->tile + 2 * a->context, T = a->tile, c0 = a->context;
    for (int y = 0; y < T; y++)
        for (int x = 0; x < T; x++) {
            size_t s = (size_t)(y + c0) * S + x + c0, d = (size_t)y * T + x;
            for (int c = 0; c < a->channels; c++) a->raw[(size_t)c * T * T + d] = a->src_raw[(size_t)c * S * S + s];
            a->label[d] = a->src_label[s];
            a->weight[d] = a->src_weight[s];
        }
    return 0;
}

/* --defer: the source windows and records of a step, warped here. */
typedef struct {
    int cuda, B, C, T, S;
    size_t record_bytes;
    float *src_raw, *src_weight;
    int32_t *src_label;
    unsigned char *records;
    unet_warp *warps;
    const unet_backend *b;
    unet_warper *warper;
    float *d_raw, *d_weight;
    int32_t *d_label;
} deferred;

static void deferred_open(deferred *d, const char *device, const unet_loader_opts *o, int C,
                          const unet_augment_cfg *cfg) {
    memset(d, 0, sizeof *d);
    d->cuda = !strcmp(device, "cuda");
    if (!d->cuda && strcmp(device, "cpu")) die("--defer cpu|cuda", NULL);
    d->B = o->batch, d->C = C, d->T = o->tile, d->S = o->tile + 2 * o->augment_context;
    d->record_bytes = o->record_bytes;
    size_t windows = (size_t)d->B * d->S * d->S;
    d->src_raw = malloc(windows * C * sizeof(float)), d->src_weight = malloc(windows * sizeof(float));
    d->src_label = malloc(windows * sizeof(int32_t));
    d->records = malloc(d->B * d->record_bytes);
    d->warps = malloc(d->B * sizeof *d->warps);
    if (!d->src_raw || !d->src_weight || !d->src_label || !d->records || !d->warps) die("out of memory", NULL);
    if (!d->cuda) return;
    if (!(d->b = unet_cuda_backend(0, "fp32", NULL, 1, err, sizeof err))) fail();
    int grid = cfg->elastic && cfg->elastic_sigma > 0 ? cfg->elastic_grid : 0;
    d->warper = d->b->warper_create(d->b, d->B, C, d->T, o->augment_context, grid, cfg->interp == UNET_INTERP_CUBIC,
                                    err, sizeof err);
    if (!d->warper) fail();
    size_t tiles = (size_t)d->B * d->T * d->T;
    d->d_raw = d->b->alloc(d->b, tiles * C * sizeof(float)), d->d_weight = d->b->alloc(d->b, tiles * sizeof(float));
    d->d_label = d->b->alloc(d->b, tiles * sizeof(int32_t));
    if (!d->d_raw || !d->d_weight || !d->d_label) die("device allocation failed", NULL);
}

static void deferred_batch(deferred *d, unet_loader *l, int step, float *raw, int32_t *label, float *weight) {
    if (unet_loader_sources(l, step, d->src_raw, d->src_label, d->src_weight, d->records, err, sizeof err)) fail();
    for (int n = 0; n < d->B; n++) unet_augment_record_warp(d->records + n * d->record_bytes, &d->warps[n]);
    const size_t sp = (size_t)d->S * d->S, tp = (size_t)d->T * d->T;
    if (!d->cuda) {
        for (int n = 0; n < d->B; n++) {
            unet_augment_args a = {d->C,
                                   d->T,
                                   (d->S - d->T) / 2,
                                   d->src_raw + n * d->C * sp,
                                   d->src_label + n * sp,
                                   d->src_weight + n * sp,
                                   raw + n * d->C * tp,
                                   label + n * tp,
                                   weight + n * tp,
                                   0};
            if (unet_augment_warp(&d->warps[n], &a, err, sizeof err)) fail();
        }
        return;
    }
    if (d->b->warp_batch(d->b, d->warper, d->B, d->warps, d->src_raw, d->src_label, d->src_weight, d->d_raw, d->d_label,
                         d->d_weight, err, sizeof err))
        fail();
    unet_shape rs = {d->B, d->C, d->T, d->T}, ps = {d->B, 1, d->T, d->T};
    d->b->download(d->b, raw, d->d_raw, rs, UNET_F32);
    d->b->download(d->b, label, d->d_label, ps, UNET_I32);
    d->b->download(d->b, weight, d->d_weight, ps, UNET_F32);
}

static void deferred_close(deferred *d) {
    if (d->cuda) {
        d->b->warper_free(d->b, d->warper);
        d->b->free(d->b, d->d_raw), d->b->free(d->b, d->d_label), d->b->free(d->b, d->d_weight);
    }
    free(d->src_raw), free(d->src_weight), free(d->src_label), free(d->records), free(d->warps);
}

int main(int argc, char **argv) {
    unet_dataset_opts dopts = {0};
    unet_loader_opts lopts = {.batch = 1, .seed = 0};
    const char *data = NULL, *val = NULL, *dir = ".", *mode = NULL, *defer = NULL;
    double val_fraction = 0;
    int use_val = 0, index = 0, step = 0, count = 1, win[4] = {0};
    unet_augment_cfg augment;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("--data"))
            data = v;
        else if (ARG("--raw-key"))
            dopts.raw_key = v;
        else if (ARG("--label-key"))
            dopts.label_key = v;
        else if (ARG("--weight-key"))
            dopts.weight_key = v;
        else if (ARG("--instances-key"))
            dopts.instances_key = v;
        else if (ARG("--classes"))
            dopts.classes = atoi(v);
        else if (!strcmp(a, "--label-optional"))
            dopts.label_optional = 1;
        else if (ARG("--cache-bytes"))
            dopts.cache_bytes = strtoull(v, NULL, 10);
        else if (ARG("--val"))
            val = v;
        else if (ARG("--val-fraction"))
            val_fraction = atof(v);
        else if (!strcmp(a, "--use-val"))
            use_val = 1;
        else if (ARG("--dir"))
            dir = v;
        else if (!strcmp(a, "--info") || !strcmp(a, "--batches") || !strcmp(a, "--eval-tiles"))
            mode = a + 2;
        else if (ARG("--read"))
            mode = "read", index = atoi(v);
        else if (ARG("--window")) {
            mode = "window";
            if (sscanf(v, "%d,%d,%d,%d", &win[0], &win[1], &win[2], &win[3]) != 4) die("--window K,Y0,X0,SIZE", NULL);
        } else if (ARG("--step"))
            step = atoi(v);
        else if (ARG("--count"))
            count = atoi(v);
        else if (ARG("--batch"))
            lopts.batch = atoi(v);
        else if (ARG("--tile"))
            lopts.tile = atoi(v);
        else if (ARG("--margin"))
            lopts.margin = atoi(v);
        else if (ARG("--seed"))
            lopts.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--no-shuffle"))
            lopts.no_shuffle = 1;
        else if (!strcmp(a, "--no-prefetch"))
            lopts.no_prefetch = 1;
        else if (ARG("--augment-test"))
            lopts.augment = centre_crop, lopts.augment_context = atoi(v);
        else if (ARG("--augment")) {
            if (unet_augment_parse(v, &augment, err, sizeof err)) fail();
            lopts.augment = unet_augment_apply, lopts.augment_ctx = &augment;
            lopts.augment_context = -1; /* from the tile, below */
        } else if (ARG("--workers"))
            lopts.workers = atoi(v);
        else if (ARG("--defer"))
            defer = v;
        else
            die("unknown or incomplete argument", a);
#undef ARG
    }
    if (lopts.augment_context < 0) lopts.augment_context = unet_augment_context(&augment, lopts.tile);
    if (defer) {
        if (lopts.augment != unet_augment_apply || unet_augment_has_intensity(&augment))
            die("--defer needs --augment with no intensity changes (gamma, brightness, contrast, noise)", NULL);
        lopts.augment = NULL, lopts.draw = unet_augment_record;
        lopts.record_bytes = unet_augment_record_bytes(&augment);
    }
    if (!data || !mode) die("need --data F.h5 and one of --info, --read, --window, --batches, --eval-tiles", NULL);

    unet_dataset *ds, *vds = NULL;
    if (unet_dataset_open(data, &dopts, &ds, err, sizeof err)) fail();
    unet_data_view train = unet_data_view_all(ds), held = {0};
    if (val) {
        if (unet_dataset_open(val, &dopts, &vds, err, sizeof err)) fail();
        held = unet_data_view_all(vds);
    } else if (val_fraction > 0) {
        if (unet_data_split(ds, val_fraction, &train, &held, err, sizeof err)) fail();
    }
    const unet_data_view *view = use_val ? &held : &train;
    if (use_val && !held.ds) die("--use-val needs --val or --val-fraction", NULL);
    unet_dataset_info info;
    unet_dataset_get_info(view->ds, &info);
    const int C = info.c, W = info.w;

    if (!strcmp(mode, "info")) {
        printf("n %d c %d h %d w %d label %d weight %d instances %d cached %d type %s\n", info.n, info.c, info.h,
               info.w, info.has_label, info.has_weight, info.has_instances, info.cached, info.raw_type);
        printf("train %d %d %d %d\n", train.image0, train.images, train.row0, train.rows);
        if (held.ds) printf("val %d %d %d %d\n", held.image0, held.images, held.row0, held.rows);
    } else if (!strcmp(mode, "read")) {
        size_t plane = (size_t)view->rows * W;
        float *raw = malloc(plane * C * sizeof(float)), *wt = malloc(plane * sizeof(float));
        int32_t *lab = info.has_label ? malloc(plane * sizeof(int32_t)) : NULL;
        if (unet_data_view_read(view, index, raw, lab, wt, err, sizeof err)) fail();
        write_file(dir, "raw.bin", raw, plane * C * sizeof(float));
        if (lab) write_file(dir, "label.bin", lab, plane * sizeof(int32_t));
        write_file(dir, "weight.bin", wt, plane * sizeof(float));
        if (info.has_instances) {
            int32_t *inst = malloc(plane * sizeof(int32_t));
            if (unet_dataset_read(view->ds, view->image0 + index, view->row0, view->rows, NULL, NULL, NULL, inst, err,
                                  sizeof err))
                fail();
            write_file(dir, "instances.bin", inst, plane * sizeof(int32_t));
            free(inst);
        }
        free(raw), free(lab), free(wt);
    } else if (!strcmp(mode, "window")) {
        size_t plane = (size_t)win[3] * win[3];
        float *raw = malloc(plane * C * sizeof(float)), *wt = malloc(plane * sizeof(float));
        int32_t *lab = info.has_label ? malloc(plane * sizeof(int32_t)) : NULL;
        if (unet_data_window(view, win[0], win[1], win[2], win[3], raw, lab, wt, NULL, err, sizeof err)) fail();
        write_file(dir, "raw.bin", raw, plane * C * sizeof(float));
        if (lab) write_file(dir, "label.bin", lab, plane * sizeof(int32_t));
        write_file(dir, "weight.bin", wt, plane * sizeof(float));
        free(raw), free(lab), free(wt);
    } else if (!strcmp(mode, "batches")) {
        unet_loader *l;
        if (unet_loader_create(view, &lopts, &l, err, sizeof err)) fail();
        size_t n = (size_t)lopts.batch * lopts.tile * lopts.tile;
        float *raw = malloc(n * C * sizeof(float)), *wt = malloc(n * sizeof(float));
        int32_t *lab = malloc(n * sizeof(int32_t));
        char path[2048], name[64];
        snprintf(path, sizeof path, "%s/samples.txt", dir);
        FILE *samples = fopen(path, "w");
        if (!samples) die("cannot write samples.txt", NULL);
        deferred dw;
        if (defer) deferred_open(&dw, defer, &lopts, C, &augment);
        for (int s = step; s < step + count; s++) {
            if (defer)
                deferred_batch(&dw, l, s, raw, lab, wt);
            else if (unet_loader_batch(l, s, raw, lab, wt, err, sizeof err))
                fail();
            snprintf(name, sizeof name, "raw.%d.bin", s);
            write_file(dir, name, raw, n * C * sizeof(float));
            snprintf(name, sizeof name, "label.%d.bin", s);
            write_file(dir, name, lab, n * sizeof(int32_t));
            snprintf(name, sizeof name, "weight.%d.bin", s);
            write_file(dir, name, wt, n * sizeof(float));
            for (int b = 0; b < lopts.batch; b++) {
                int k, y0, x0;
                unet_loader_sample(l, s, b, &k, &y0, &x0);
                fprintf(samples, "%d %d %d %d %d\n", s, b, k, y0, x0);
            }
        }
        fclose(samples);
        if (defer) deferred_close(&dw);
        unet_loader_free(l);
        free(raw), free(lab), free(wt);
    } else {
        unet_eval_tiles it;
        if (unet_eval_tiles_init(&it, view, lopts.tile, lopts.margin, lopts.batch, err, sizeof err)) fail();
        int total = unet_eval_tiles_count(&it), got, done = 0;
        size_t n = (size_t)total * lopts.tile * lopts.tile;
        float *raw = malloc(n * C * sizeof(float)), *wt = malloc(n * sizeof(float));
        int32_t *lab = malloc(n * sizeof(int32_t));
        size_t plane = (size_t)lopts.tile * lopts.tile;
        for (;;) {
            if (unet_eval_tiles_next(&it, raw + done * plane * C, lab + done * plane, wt + done * plane, &got, err,
                                     sizeof err))
                fail();
            if (!got) break;
            done += got;
        }
        printf("tiles %d of %d\n", done, total);
        write_file(dir, "raw.bin", raw, n * C * sizeof(float));
        write_file(dir, "label.bin", lab, n * sizeof(int32_t));
        write_file(dir, "weight.bin", wt, n * sizeof(float));
        unet_eval_tiles_free(&it);
        free(raw), free(lab), free(wt);
    }
    unet_dataset_close(ds);
    unet_dataset_close(vds);
    return 0;
}
