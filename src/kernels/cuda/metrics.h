/* Segmentation statistics on the GPU: the confusion counts of a batch of
 * logits against labels, without copying the logits to the host. Counts the
 * same as unet_seg_stats_add (src/host/train/metrics.c): the prediction is
 * the first maximal channel (K >= 2) or logit > 0 (K = 1); the label is
 * centre-cropped to the logits' h,w; tp, fp and fn per class below
 * UNET_MAX_CLASSES, correct and total pixels. */
#ifndef UNET_CUDA_METRICS_H
#define UNET_CUDA_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "unet/backend.h"
#include "unet/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device scratch the counting needs for logits of this shape. */
size_t unet_cuda_seg_counts_workspace_bytes(unet_shape logits);

/* Adds a batch to s: logits (N,K,h,w) and label (N,1,label_h,label_w) int32
 * are device tensors of the CUDA backend b (the logits in its layout:
 * float32 NCHW, or bf16 NHWC under bf16); workspace holds
 * unet_cuda_seg_counts_workspace_bytes(shape) device bytes. Waits for the
 * counts (one small download). The counts are integers, summed exactly: the
 * same for any order, so deterministic. */
void unet_cuda_seg_stats_add(const unet_backend *b, unet_seg_stats *s, const void *logits, unet_shape shape,
                             const int32_t *label, int label_h, int label_w, void *workspace);

#ifdef __cplusplus
}
#endif

#endif
