/* The augmentation warp on the backend's device for the training loop
 * (augment_device.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/train/augment_device.h"

int gpu_augment_open(gpu_augment *g, const unet_augment_cfg *a, const unet_backend *b, unet_plan *plan, int batch,
                     int channels, int tile, int context, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    g->b = b, g->batch = batch, g->record_bytes = unet_augment_record_bytes(a);
    size_t pixels = (size_t)batch * tile * tile;
    g->raw = unet_plan_input_data(plan, UNET_INPUT_IMAGE);
    g->label = unet_plan_input_data(plan, UNET_INPUT_LABEL);
    g->weight = unet_plan_input_data(plan, UNET_INPUT_WEIGHT);
    if (!g->raw) {
        snprintf(err, errlen, "--augment-device cuda: the training graph has no image input to warp into");
        return -1;
    }
    int grid = a->elastic && a->elastic_sigma > 0 ? a->elastic_grid : 0;
    g->warper = b->warper_create(b, batch, channels, tile, context, grid, a->interp == UNET_INTERP_CUBIC, err, errlen);
    if (!g->warper) return -1;
    if (!g->label || !g->weight) {
        /* one plane each for labels and weights: the warp writes both */
        if (!(g->scratch = b->alloc(b, 2 * pixels * sizeof(float)))) {
            snprintf(err, errlen,
                     "--augment-device cuda: out of device memory for %.1f MiB of warp output; use "
                     "--augment-device cpu",
                     2 * pixels * sizeof(float) / 1048576.0);
            return -1;
        }
        if (!g->label) g->label = (int32_t *)g->scratch;
        if (!g->weight) g->weight = (float *)g->scratch + pixels;
    }
    size_t S = (size_t)tile + 2 * (size_t)context, windows = (size_t)batch * S * S;
    g->src_raw = malloc(windows * channels * sizeof(float));
    g->src_weight = malloc(windows * sizeof(float));
    g->src_label = malloc(windows * sizeof(int32_t));
    g->records = malloc((size_t)batch * g->record_bytes);
    g->warps = malloc((size_t)batch * sizeof *g->warps);
    if (!g->src_raw || !g->src_weight || !g->src_label || !g->records || !g->warps) {
        snprintf(err, errlen, "--augment-device cuda: out of host memory for source windows of %d x %d x %zu x %zu",
                 batch, channels, S, S);
        return -1;
    }
    return 0;
}

int gpu_augment_batch(gpu_augment *g, unet_loader *l, long step, char *err, size_t errlen) {
    if (unet_loader_sources(l, step, g->src_raw, g->src_label, g->src_weight, g->records, err, errlen)) return -1;
    for (int n = 0; n < g->batch; n++) unet_augment_record_warp(g->records + (size_t)n * g->record_bytes, &g->warps[n]);
    /* the host arrays are pageable: reusable once this returns (warp_batch, unet/backend.h) */
    return g->b->warp_batch(g->b, g->warper, g->batch, g->warps, g->src_raw, g->src_label, g->src_weight, g->raw,
                            g->label, g->weight, err, errlen);
}

void gpu_augment_close(gpu_augment *g) {
    if (g->warper) g->b->warper_free(g->b, g->warper);
    if (g->scratch) g->b->free(g->b, g->scratch);
    free(g->src_raw), free(g->src_weight), free(g->src_label), free(g->records), free(g->warps);
    memset(g, 0, sizeof *g);
}

int check_augment_device(const unet_config *cfg, const unet_augment_cfg *a, const unet_backend *b, char *err,
                         size_t errlen) {
    if (cfg->augment_device != UNET_AUGMENT_DEVICE_CUDA) return 0;
    if (unet_augment_has_intensity(a)) {
        const char *names[] = {a->gamma ? "gamma" : NULL, a->brightness ? "brightness" : NULL,
                               a->contrast ? "contrast" : NULL, a->noise ? "noise" : NULL};
        char which[64] = "";
        for (int i = 0; i < 4; i++)
            if (names[i])
                snprintf(which + strlen(which), sizeof which - strlen(which), "%s%s", which[0] ? ", " : "", names[i]);
        snprintf(err, errlen,
                 "--augment-device cuda applies the deformation only (elastic, flip, rot90, rotate, "
                 "scale), and --augment %s also asks for %s, which the GPU warp does not do: drop %s from --augment, "
                 "or use --augment-device cpu",
                 cfg->augment, which, strchr(which, ',') ? "them" : "it");
        return -1;
    }
    unet_layout held = b->warp_batch && b->layout ? b->layout(b, UNET_F32) : UNET_LAYOUT_NCHW;
    if (held != UNET_LAYOUT_NCHW) {
        /* the layout, not the sizes: NHWC with channels padded to 8 bf16 or 4 floats takes as many bytes as NCHW
         * float32 at 4 channels, and the warp would write float32 planes into it */
        if (held == UNET_LAYOUT_NHWC_BF16)
            snprintf(err, errlen,
                     "--augment-device cuda writes its tiles as NCHW float32, but --precision %s keeps "
                     "the images NHWC bfloat16 on the device: use --augment-device cpu, or --precision tf32 or fp32",
                     unet_config_choice_name("precision", cfg->precision));
        else
            snprintf(err, errlen,
                     "--augment-device cuda writes its tiles as NCHW float32, but --layout nhwc keeps the "
                     "images NHWC float32 on the device: use --augment-device cpu, or --layout nchw");
        return -1;
    }
    if (!b->warp_batch) {
        const char *absent = unet_cuda_absent();
        if (absent)
            snprintf(err, errlen, "--augment-device cuda warps on the GPU, but %s: use --augment-device cpu", absent);
        else
            snprintf(err, errlen,
                     "--augment-device cuda warps on the GPU, but this run is on the CPU (--device %s): "
                     "use --augment-device cpu, or --device cuda on a machine with a GPU",
                     cfg->device);
        return -1;
    }
    return 0;
}
