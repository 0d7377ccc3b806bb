/* Loader throughput for bench/loader_throughput.py: the production loader
 * (include/unet/data.h) with the production augmentation, timed over steps.
 *
 *   unet_loaderbench --data D.h5 --tile T --batch B --steps N --workers W [--augment SPEC] [--margin M]
 *
 * Prints one JSON object: images per second after one untimed batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/augment.h"
#include "unet/data.h"

#define TOOL_NAME "unet_loaderbench"
#include "tool_common.h"

int main(int argc, char **argv) {
    const char *data = NULL, *spec = "paper";
    unet_loader_opts o = {.batch = 1, .tile = 572, .margin = 92, .seed = 1};
    int steps = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--tile"))
            o.tile = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.batch = atoi(v);
        else if (!strcmp(a, "--steps"))
            steps = atoi(v);
        else if (!strcmp(a, "--workers"))
            o.workers = atoi(v);
        else if (!strcmp(a, "--augment"))
            spec = v;
        else if (!strcmp(a, "--margin"))
            o.margin = atoi(v);
        else
            die("unknown argument", a);
    }
    char err[1024];
    unet_augment_cfg cfg;
    if (!data) die("needs --data D.h5", NULL);
    if (unet_augment_parse(spec, &cfg, err, sizeof err)) die(err, NULL);
    o.no_prefetch = o.workers == 0;
    if (unet_augment_active(&cfg))
        o.augment = unet_augment_apply, o.augment_ctx = &cfg, o.augment_context = unet_augment_context(&cfg, o.tile);
    unet_dataset *ds;
    unet_loader *l;
    if (unet_dataset_open(data, NULL, &ds, err, sizeof err)) die(err, NULL);
    unet_data_view v = unet_data_view_all(ds);
    if (unet_loader_create(&v, &o, &l, err, sizeof err)) die(err, NULL);
    size_t n = (size_t)o.batch * o.tile * o.tile;
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    float *raw = malloc(n * info.c * sizeof *raw), *wt = malloc(n * sizeof *wt);
    int32_t *lab = malloc(n * sizeof *lab);
    if (unet_loader_batch(l, 0, raw, lab, wt, err, sizeof err)) die(err, NULL);
    double t0 = now_ms();
    for (int s = 1; s <= steps; s++)
        if (unet_loader_batch(l, s, raw, lab, wt, err, sizeof err)) die(err, NULL);
    double t = (now_ms() - t0) / 1e3;
    printf("{\"workers\": %d, \"batch\": %d, \"tile\": %d, \"context\": %d, \"augment\": \"%s\", \"steps\": %d, "
           "\"images_per_s\": %.3f}\n",
           o.workers, o.batch, o.tile, o.augment_context, spec, steps, steps * o.batch / t);
    unet_loader_free(l);
    unet_dataset_close(ds);
    free(raw), free(wt), free(lab);
    return 0;
}
