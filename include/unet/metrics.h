/* Segmentation metrics from summed statistics: counts add up across batches,
 * images and ranks, and the ratios are taken once at the end. */
#ifndef UNET_METRICS_H
#define UNET_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "unet/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_MAX_CLASSES 64

typedef struct {
    int classes; /* output channels: 1 (sigmoid) or K >= 2 (softmax) */
    double tp[UNET_MAX_CLASSES], fp[UNET_MAX_CLASSES], fn[UNET_MAX_CLASSES];
    double correct, total; /* pixel accuracy */
    /* Rand scores summed over images (unet_seg_stats_add_rand), per class */
    double vrand_sum[UNET_MAX_CLASSES];
    double rand_images;
    /* the training loss of whole images (unet_seg_stats_add_loss), summed over images */
    double loss_sum, loss_images;
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
/* Adds one whole image's loss (the loss the model trains on); the mean over images is the validation loss. */
void unet_seg_stats_add_loss(unet_seg_stats *s, double loss);
/* V_rand of one image and class, for tests. */
double unet_vrand(const uint8_t *pred, const int32_t *label, int h, int w, int cls);
/* Hard prediction of one pixel set: argmax (K >= 2) or p > 0.5 (K = 1); pred is (N,h,w). */
void unet_predict_labels(const float *logits, unet_shape shape, uint8_t *pred);
/* The same from probabilities (threshold 0.5 for one class). */
void unet_labels_from_probabilities(const float *prob, unet_shape shape, uint8_t *pred);
/* Probabilities in place: softmax over channels, or sigmoid for one class. */
void unet_probabilities(float *logits, unet_shape shape);

/* The headline figures are those of the foreground: class 1 for one or two
 * classes, and for K >= 3 the unweighted mean over the classes 1..K-1 of each
 * class's own figure (the mean of the per-class IoUs, the mean of the
 * per-class Dice scores, the mean of the per-class Rand errors), so that the
 * binary figures are the class-1 ones. Background (class 0) is in no mean. A
 * class absent from both prediction and truth scores IoU and Dice 1. Pixel
 * accuracy and error count every pixel of every class. */
typedef struct {
    int classes;                      /* as in unet_seg_stats: 1 (sigmoid) or K >= 2 */
    double iou, dice, pixel_accuracy; /* foreground, as above */
    double iou_class[UNET_MAX_CLASSES], dice_class[UNET_MAX_CLASSES];
    double pixel_error; /* 1 - pixel accuracy */
    /* 1 - mean V_rand over images (foreground classes as for iou); -1 when no image was scored */
    double rand_error, rand_error_class[UNET_MAX_CLASSES];
    double loss; /* mean loss over images; NAN when none was added */
} unet_seg_metrics;
unet_seg_metrics unet_seg_stats_finish(const unet_seg_stats *s);

/* The foreground classes 1..n: n = 1 for one or two classes, K - 1 otherwise. */
int unet_seg_metrics_foreground(const unet_seg_metrics *m);
/* The metrics as members of a JSON object, appended in snprintf's manner
 * (returns the length written, or that would have been): `, "<prefix>iou": x`
 * for iou, dice, pixel_accuracy, pixel_error and rand_error (and loss where
 * images added one), then for each
 * foreground class c <prefix>iou_class<c>, <prefix>dice_class<c> and
 * <prefix>rand_error_class<c>. The same keys in `unet eval --json` (prefix
 * "") and in the validation lines of the training log ("val_"). */
int unet_seg_metrics_json(char *buf, size_t len, const unet_seg_metrics *m, const char *prefix);
/* For K >= 3 classes, one line per foreground class:
 * "<indent>class c: IoU x  Dice y  Rand error z"; nothing for fewer. */
void unet_seg_metrics_print_classes(FILE *f, const unet_seg_metrics *m, const char *indent);

#ifdef __cplusplus
}
#endif

#endif
