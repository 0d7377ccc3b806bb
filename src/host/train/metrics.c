/* IoU, Dice and pixel accuracy from confusion counts; the Rand score of
 * the ISBI 2012 challenge from segment overlaps. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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
                count(s, pixel_class(z, plane, (size_t)y * sh.w + x, sh.c, 0.0f),
                      lab[(size_t)(y + oy) * label_w + x + ox]);
    }
}

void unet_seg_stats_add_labels(unet_seg_stats *s, const uint8_t *pred, const int32_t *label, size_t n) {
    for (size_t i = 0; i < n; i++) count(s, pred[i], label[i]);
}

void unet_seg_stats_add_loss(unet_seg_stats *s, double loss) {
    s->loss_sum += loss;
    s->loss_images += 1;
}

unet_seg_metrics unet_seg_stats_finish(const unet_seg_stats *s) {
    unet_seg_metrics m;
    memset(&m, 0, sizeof m);
    m.classes = s->classes;
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
    m.pixel_error = s->total > 0 ? 1.0 - m.pixel_accuracy : 0.0;
    m.rand_error = -1;
    for (int c = 1; c < ncls && c < UNET_MAX_CLASSES; c++) m.rand_error_class[c] = -1;
    if (s->rand_images > 0) {
        double sum = 0;
        for (int c = 1; c < ncls && c < UNET_MAX_CLASSES; c++) {
            m.rand_error_class[c] = 1.0 - s->vrand_sum[c] / s->rand_images;
            sum += m.rand_error_class[c];
        }
        m.rand_error = sum / (ncls - 1);
    }
    m.loss = s->loss_images > 0 ? s->loss_sum / s->loss_images : NAN;
    return m;
}

int unet_seg_metrics_foreground(const unet_seg_metrics *m) {
    int n = m->classes <= 2 ? 1 : m->classes - 1;
    return n < UNET_MAX_CLASSES ? n : UNET_MAX_CLASSES - 1;
}

/* snprintf at buf + *used, never past len; *used counts what would have been written */
static void append(char *buf, size_t len, int *used, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t at = (size_t)*used < len ? (size_t)*used : len;
    int n = vsnprintf(buf ? buf + at : NULL, len - at, fmt, ap);
    va_end(ap);
    if (n > 0) *used += n;
}

int unet_seg_metrics_json(char *buf, size_t len, const unet_seg_metrics *m, const char *prefix) {
    int used = 0;
    append(buf, len, &used,
           ", \"%siou\": %.6f, \"%sdice\": %.6f, \"%spixel_accuracy\": %.6f, \"%spixel_error\": %.6f, "
           "\"%srand_error\": %.6f",
           prefix, m->iou, prefix, m->dice, prefix, m->pixel_accuracy, prefix, m->pixel_error, prefix, m->rand_error);
    if (isfinite(m->loss)) append(buf, len, &used, ", \"%sloss\": %.6f", prefix, m->loss);
    for (int c = 1; c <= unet_seg_metrics_foreground(m); c++)
        append(buf, len, &used, ", \"%siou_class%d\": %.6f, \"%sdice_class%d\": %.6f, \"%srand_error_class%d\": %.6f",
               prefix, c, m->iou_class[c], prefix, c, m->dice_class[c], prefix, c, m->rand_error_class[c]);
    return used;
}

void unet_seg_metrics_print_classes(FILE *f, const unet_seg_metrics *m, const char *indent) {
    if (m->classes < 3) return;
    for (int c = 1; c <= unet_seg_metrics_foreground(m); c++)
        fprintf(f, "%sclass %d: IoU %.4f  Dice %.4f  Rand error %.4f\n", indent, c, m->iou_class[c], m->dice_class[c],
                m->rand_error_class[c]);
}

/* ---- Rand score ---------------------------------------------------------------- */

/* 4-connected components of mask into ids 1..K; returns K. */
static int32_t components(const uint8_t *mask, int h, int w, int32_t *ids, int32_t *stack) {
    size_t n = (size_t)h * w;
    memset(ids, 0, n * sizeof *ids);
    int32_t k = 0;
    for (size_t p = 0; p < n; p++) {
        if (!mask[p] || ids[p]) continue;
        ids[p] = ++k;
        size_t top = 0;
        stack[top++] = (int32_t)p;
        while (top) {
            int32_t q = stack[--top];
            int y = q / w, x = q % w;
            int32_t nb[4] = {y > 0 ? q - w : -1, y < h - 1 ? q + w : -1, x > 0 ? q - 1 : -1, x < w - 1 ? q + 1 : -1};
            for (int i = 0; i < 4; i++)
                if (nb[i] >= 0 && mask[nb[i]] && !ids[nb[i]]) ids[nb[i]] = k, stack[top++] = nb[i];
        }
    }
    return k;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sum of squared run lengths of a sorted array: the sum of squared counts of its values. */
static double squared_counts(const uint64_t *v, size_t n) {
    double sum = 0;
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && v[j] == v[i];) j++;
        sum += (double)(j - i) * (double)(j - i);
    }
    return sum;
}

/* V_rand over buffers of n pixels: mask (n), pid, tid, stack (n int32), pairs, marg (n uint64). */
static double vrand(const uint8_t *pred, const int32_t *label, int h, int w, int cls, uint8_t *mask, int32_t *pid,
                    int32_t *tid, int32_t *stack, uint64_t *pairs, uint64_t *marg) {
    size_t n = (size_t)h * w, m = 0;
    for (size_t p = 0; p < n; p++) mask[p] = pred[p] == cls;
    int32_t kp = components(mask, h, w, pid, stack);
    for (size_t p = 0; p < n; p++) mask[p] = label[p] == cls;
    components(mask, h, w, tid, stack);
    /* pairs (predicted segment, true segment) over the true foreground; another
     * predicted class is a singleton: an id of its own past the components */
    int64_t singleton = kp;
    for (size_t p = 0; p < n; p++) {
        if (!tid[p]) continue;
        int64_t s = pid[p] ? pid[p] : ++singleton;
        pairs[m++] = (uint64_t)s << 32 | (uint32_t)tid[p];
    }
    if (!m) return 1.0; /* nothing of this class to split or merge */
    qsort(pairs, m, sizeof *pairs, compare_u64);
    double sum_p = squared_counts(pairs, m);
    for (size_t i = 0; i < m; i++) marg[i] = pairs[i] >> 32; /* sorted already */
    double sum_s = squared_counts(marg, m);
    for (size_t i = 0; i < m; i++) marg[i] = pairs[i] & 0xffffffffu;
    qsort(marg, m, sizeof *marg, compare_u64);
    double sum_t = squared_counts(marg, m);
    return sum_p / (0.5 * sum_s + 0.5 * sum_t);
}

double unet_vrand(const uint8_t *pred, const int32_t *label, int h, int w, int cls) {
    size_t n = (size_t)h * w;
    uint8_t *mask = calloc(n ? n : 1, 1); /* calloc: the compiler cannot see every byte is written */
    int32_t *pid = malloc(n * sizeof *pid), *tid = malloc(n * sizeof *tid), *stack = malloc(n * sizeof *stack);
    uint64_t *pairs = malloc(n * sizeof *pairs), *marg = malloc(n * sizeof *marg);
    double v = mask && pid && tid && stack && pairs && marg
                   ? vrand(pred, label, h, w, cls, mask, pid, tid, stack, pairs, marg)
                   : NAN;
    free(mask), free(pid), free(tid), free(stack), free(pairs), free(marg);
    return v;
}

void unet_seg_stats_add_rand(unet_seg_stats *s, const uint8_t *pred, const int32_t *label, int h, int w) {
    int ncls = s->classes == 1 ? 2 : s->classes;
    for (int c = 1; c < ncls && c < UNET_MAX_CLASSES; c++) s->vrand_sum[c] += unet_vrand(pred, label, h, w, c);
    s->rand_images += 1;
}
