/* IoU, Dice and pixel accuracy from confusion counts. */
#include <math.h>
#include <string.h>

#include "unet/metrics.h"

void unet_seg_stats_init(unet_seg_stats *s, int classes) {
    memset(s, 0, sizeof *s);
    s->classes = classes;
}

static int pixel_class(const float *logits, size_t plane, size_t px, int k) {
    if (k == 1) return logits[px] > 0.0f; /* sigmoid(z) > 0.5 */
    int best = 0;
    for (int c = 1; c < k; c++)
        if (logits[c * plane + px] > logits[best * plane + px]) best = c;
    return best;
}

void unet_predict_labels(const float *logits, unet_shape sh, uint8_t *pred) {
    size_t plane = (size_t)sh.h * sh.w;
    for (int n = 0; n < sh.n; n++)
        for (size_t px = 0; px < plane; px++)
            pred[n * plane + px] = (uint8_t)pixel_class(logits + (size_t)n * sh.c * plane, plane, px, sh.c);
}

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

void unet_seg_stats_add(unet_seg_stats *s, const float *logits, unet_shape sh, const int32_t *label, int label_h,
                        int label_w) {
    size_t plane = (size_t)sh.h * sh.w;
    int oy = (label_h - sh.h) / 2, ox = (label_w - sh.w) / 2;
    int ncls = sh.c == 1 ? 2 : sh.c;
    for (int n = 0; n < sh.n; n++) {
        const float *z = logits + (size_t)n * sh.c * plane;
        const int32_t *lab = label + (size_t)n * label_h * label_w;
        for (int y = 0; y < sh.h; y++)
            for (int x = 0; x < sh.w; x++) {
                int p = pixel_class(z, plane, (size_t)y * sh.w + x, sh.c);
                int t = lab[(size_t)(y + oy) * label_w + x + ox];
                s->total += 1;
                if (p == t) s->correct += 1;
                for (int c = 0; c < ncls && c < UNET_MAX_CLASSES; c++) {
                    if (p == c && t == c) s->tp[c] += 1;
                    else if (p == c) s->fp[c] += 1;
                    else if (t == c) s->fn[c] += 1;
                }
            }
    }
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
