/* Segmentation metrics from summed statistics: counts add up across batches,
 * images and ranks, and the ratios are taken once at the end. */
#ifndef UNET_METRICS_H
#define UNET_METRICS_H

#include <stdint.h>

#include "unet/tensor.h"

#define UNET_MAX_CLASSES 64

typedef struct {
    int classes;                         /* output channels: 1 (sigmoid) or K >= 2 (softmax) */
    double tp[UNET_MAX_CLASSES], fp[UNET_MAX_CLASSES], fn[UNET_MAX_CLASSES];
    double correct, total;               /* pixel accuracy */
    /* Rand scores summed over images (unet_seg_stats_add_rand), per class */
    double vrand_sum[UNET_MAX_CLASSES];
    double rand_images;
} unet_seg_stats;

void unet_seg_stats_init(unet_seg_stats *s, int classes);
/* Adds a batch: logits (N,K,h,w) NCHW, label (N,1,H,W) centre-cropped to (h,w). */
void unet_seg_stats_add(unet_seg_stats *s, const float *logits, unet_shape shape, const int32_t *label, int label_h,
                        int label_w);
/* Adds n pixels of hard predictions and labels. */
void unet_seg_stats_add_labels(unet_seg_stats *s, const uint8_t *pred, const int32_t *label, size_t n);
/* The foreground-restricted Rand score of the ISBI 2012 challenge
 * (Arganda-Carreras et al. 2015) of one whole image, per class c >= 1 (class 1
 * alone for one or two classes): segments are the 4-connected components of
 * pred == c and of label == c; only pixels with label == c count (the true
 * boundaries between cells are left out), and a predicted pixel of another
 * class there is a segment of its own. With p_ij the share of those pixels in
 * predicted segment i and true segment j, s_i and t_j its marginals,
 *   V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2),
 * 1 when the class is absent from the truth. Scores are averaged over images. */
void unet_seg_stats_add_rand(unet_seg_stats *s, const uint8_t *pred, const int32_t *label, int h, int w);
/* V_rand of one image and class, for tests. */
double unet_vrand(const uint8_t *pred, const int32_t *label, int h, int w, int cls);
/* Hard prediction of one pixel set: argmax (K >= 2) or p > 0.5 (K = 1); pred is (N,h,w). */
void unet_predict_labels(const float *logits, unet_shape shape, uint8_t *pred);
/* The same from probabilities (threshold 0.5 for one class). */
void unet_labels_from_probabilities(const float *prob, unet_shape shape, uint8_t *pred);
/* Probabilities in place: softmax over channels, or sigmoid for one class. */
void unet_probabilities(float *logits, unet_shape shape);

typedef struct {
    double iou, dice, pixel_accuracy;    /* foreground: class 1 for binary, mean over classes 1..K-1 otherwise */
    double iou_class[UNET_MAX_CLASSES], dice_class[UNET_MAX_CLASSES];
    double pixel_error;                  /* 1 - pixel accuracy */
    /* 1 - mean V_rand (foreground classes as for iou); -1 when no image was scored */
    double rand_error, rand_error_class[UNET_MAX_CLASSES];
} unet_seg_metrics;
unet_seg_metrics unet_seg_stats_finish(const unet_seg_stats *s);

#endif
