/* IoU, Dice and pixel accuracy from confusion counts. */
#include <math.h>
#include <string.h>

#include "unet/metrics.h"

void unet_seg_stats_init(unet_seg_stats *s, int classes) {
    memset(s, 0, sizeof *s);
    s->classes = classes;
}

/* argmax over channels, or for one channel the score above `threshold`
 * (0 for a logit, 0.5 for a probability: the same decision). */
static int pixel_class(const float *logits, size_t plane, size_t px, int k, float threshold) {
    if (k == 1) return logits[px] > threshold;
    int best = 0;
    for (int c = 1; c < k; c++)
        if (logits[c * plane + px] > logits[best * plane + px]) best = c;
    return best;
}

static void labels(const float *scores, unet_shape sh, uint8_t *pred, float threshold) {
    size_t plane = (size_t)sh.h * sh.w;
    for (int n = 0; n < sh.n; n++)
        for (size_t px = 0; px < plane; px++)
            pred[n * plane + px] = (uint8_t)pixel_class(scores + (size_t)n * sh.c * plane, plane, px, sh.c, threshold);
}

void unet_predict_labels(const float *logits, unet_shape sh, uint8_t *pred) { labels(logits, sh, pred, 0.0f); }
void unet_labels_from_probabilities(const float *prob, unet_shape sh, uint8_t *pred) { labels(prob, sh, pred, 0.5f); }

void unet_probabilities(float *logits, unet_shape sh) {
    size_t plane = (size_t)sh.h * sh.w;
    for (int n = 0; n < sh.n; n++) {
        float *z = logits + (size_t)n * sh.c * plane;
        for (size_t px = 0; px < plane; px++) {
            if (sh.c == 1) {
                z[px] = 1.0f / (1.0f + expf(-z[px]));
                continue;
            }
            float m = z[px];
            for (int c = 1; c < sh.c; c++) m = fmaxf(m, z[c * plane + px]);
            double sum = 0;
            for (int c = 0; c < sh.c; c++) sum += exp((double)(z[c * plane + px] - m));
            for (int c = 0; c < sh.c; c++) z[c * plane + px] = (float)(exp((double)(z[c * plane + px] - m)) / sum);
        }
    }
}

static void count(unet_seg_stats *s, int p, int t) {
    s->total += 1;
    if (p == t) {
        s->correct += 1;
        if (p < UNET_MAX_CLASSES) s->tp[p] += 1;
        return;
    }
    if (p < UNET_MAX_CLASSES) s->fp[p] += 1;
    if (t >= 0 && t < UNET_MAX_CLASSES) s->fn[t] += 1;
}

void unet_seg_stats_add(unet_seg_stats *s, const float *logits, unet_shape sh, const int32_t *label, int label_h,
                        int label_w) {
    size_t plane = (size_t)sh.h * sh.w;
    int oy = (label_h - sh.h) / 2, ox = (label_w - sh.w) / 2;
    for (int n = 0; n < sh.n; n++) {
        const float *z = logits + (size_t)n * sh.c * plane;
        const int32_t *lab = label + (size_t)n * label_h * label_w;
        for (int y = 0; y < sh.h; y++)
            for (int x = 0; x < sh.w; x++)
                count(s, pixel_class(z, plane, (size_t)y * sh.w + x, sh.c, 0.0f), lab[(size_t)(y + oy) * label_w + x + ox]);
    }
}

void unet_seg_stats_add_labels(unet_seg_stats *s, const uint8_t *pred, const int32_t *label, size_t n) {
    for (size_t i = 0; i < n; i++) count(s, pred[i], label[i]);
}

unet_seg_metrics unet_seg_stats_finish(const unet_seg_stats *s) {
    unet_seg_metrics m;
    memset(&m, 0, sizeof m);
    int ncls = s->classes == 1 ? 2 : s->classes;
    double iou = 0, dice = 0;
    for (int c = 0; c < ncls && c < UNET_MAX_CLASSES; c++) {
        double u = s->tp[c] + s->fp[c] + s->fn[c];
        /* a class absent from both prediction and truth is a perfect match */
        m.iou_class[c] = u > 0 ? s->tp[c] / u : 1.0;
        m.dice_class[c] = u > 0 ? 2 * s->tp[c] / (2 * s->tp[c] + s->fp[c] + s->fn[c]) : 1.0;
        if (c > 0) {
            iou += m.iou_class[c];
            dice += m.dice_class[c];
        }
    }
    m.iou = iou / (ncls - 1);
    m.dice = dice / (ncls - 1);
    m.pixel_accuracy = s->total > 0 ? s->correct / s->total : 0.0;
    return m;
}
