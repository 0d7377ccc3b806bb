/* --augment-device cuda: the loader reads each sample's source window and
 * records its draws (unet_loader_sources), and the backend's warp (its
 * warper_create and warp_batch slots, unet/backend.h) writes the batch
 * straight into the plan's inputs: no tile is made or uploaded on the host.
 * The warp is queued on the backend's stream before the step and outside
 * any capture, so an eager step and a replayed graph alike read the inputs,
 * at their fixed addresses, after it (step.h). Library-internal, for the
 * training loop (train.c). */
#ifndef UNET_AUGMENT_DEVICE_H
#define UNET_AUGMENT_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "unet/augment.h"
#include "unet/backend.h"
#include "unet/config.h"
#include "unet/data.h"
#include "unet/plan.h"

typedef struct {
    const unet_backend *b;
    unet_warper *warper;
    int batch;
    size_t record_bytes;
    float *src_raw, *src_weight; /* host: (B,C,S,S), (B,1,S,S), S = tile + 2 context */
    int32_t *src_label;          /* host: (B,1,S,S) */
    unsigned char *records;      /* host: the B draws */
    unet_warp *warps;
    float *raw, *weight; /* device: the plan's inputs, weight in scratch when the graph takes none */
    int32_t *label;
    void *scratch; /* device: what the graph has no input for */
} gpu_augment;

/* The warp's buffers on b, a backend with a warp (check_augment_device
 * says so), for batches of `batch` samples of channels x tile x tile from
 * windows of `context` pixels more a side, writing into the plan's inputs.
 * -1 with one line in err. */
int gpu_augment_open(gpu_augment *g, const unet_augment_cfg *a, const unet_backend *b, unet_plan *plan, int batch,
                     int channels, int tile, int context, char *err, size_t errlen);
/* Step `step`'s batch into the plan's inputs, queued on the backend's stream. */
int gpu_augment_batch(gpu_augment *g, unet_loader *l, long step, char *err, size_t errlen);
void gpu_augment_close(gpu_augment *g);

/* --augment-device cuda: what the device warp cannot do, refused in one line
 * (what the run asks of the warp first, then where it runs). 0 when the run
 * asks for no device warp or can have it. */
int check_augment_device(const unet_config *cfg, const unet_augment_cfg *a, const unet_backend *b, char *err,
                         size_t errlen);

#endif
