/* The losses: softmax cross-entropy and BCE + Dice, each with an optional
 * per-pixel weight map. Labels and weights may be larger than the logits
 * (valid padding): they are centre-cropped to the logits' h,w.
 *
 * out is the unscaled loss; the backward, a root with no dout, writes
 * node->scale times its gradient. Sums run per logit row, in double, into
 * the workspace, and rows are then added in a fixed order: the same bits for
 * any thread count. A label outside 0..K-1 adds nothing to the loss or the
 * gradient (still counted in the mean), so a bad label cannot read out of
 * bounds. */
#include <math.h>
#include <stdint.h>

#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* The loss is a mean over N*h*w logit pixels, computed row by row. */
typedef struct {
    int n, k, h, w; /* logits */
    const float *z;
    const int32_t *label;
    const float *weight; /* NULL: every pixel weighs 1 */
    unet_shape label_shape, weight_shape;
} loss_inputs;

static loss_inputs loss_inputs_of(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    loss_inputs in = {s.n, s.c, s.h, s.w, a->in[0], a->in[1], NULL, a->in_shape[1], {0, 0, 0, 0}};
    if (a->n_in > 2) {
        in.weight = a->in[2];
        in.weight_shape = a->in_shape[2];
    }
    return in;
}

/* Index of (n, 0, y, 0) of the centre crop of a (N,1,H,W) tensor to h,w. */
static size_t cropped_row(unet_shape s, const loss_inputs *in, int n, int y) {
    int oy = unet_crop_offset(s.h, in->h), ox = unet_crop_offset(s.w, in->w);
    return ((size_t)n * s.h + (size_t)(oy + y)) * s.w + (size_t)ox;
}

static size_t rows_of(const unet_op_args *a) { return (size_t)a->in_shape[0].n * a->in_shape[0].h; }

/* ---- softmax cross-entropy ---- */

static size_t ce_workspace_bytes(const unet_op_args *a) { return rows_of(a) * sizeof(double); }

/* sum_k exp(z_k - max) at one pixel whose K logits lie stride apart; *max gets the max. */
static double softmax_denominator(const float *z, size_t stride, int k, double *max) {
    double m = z[0];
    for (int j = 1; j < k; j++)
        if (z[(size_t)j * stride] > m) m = z[(size_t)j * stride];
    double s = 0.0;
    for (int j = 0; j < k; j++) s += exp((double)z[(size_t)j * stride] - m);
    *max = m;
    return s;
}

static void ce_forward(const unet_op_args *a) {
    loss_inputs in = loss_inputs_of(a);
    double *row_loss = a->workspace;
    size_t hw = (size_t)in.h * in.w;
    long rows = (long)rows_of(a);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        int n = (int)(r / in.h), y = (int)(r % in.h);
        const float *z = in.z + (size_t)n * in.k * hw + (size_t)y * in.w;
        const int32_t *lab = in.label + cropped_row(in.label_shape, &in, n, y);
        const float *wt = in.weight ? in.weight + cropped_row(in.weight_shape, &in, n, y) : NULL;
        double acc = 0.0;
        for (int x = 0; x < in.w; x++) {
            int32_t l = lab[x];
            if (l < 0 || l >= in.k) continue;
            double m, s = softmax_denominator(z + x, hw, in.k, &m);
            double nll = log(s) - ((double)z[(size_t)l * hw + x] - m);
            acc += (wt ? (double)wt[x] : 1.0) * nll;
        }
        row_loss[r] = acc;
    }
    double total = 0.0;
    for (long r = 0; r < rows; r++) total += row_loss[r];
    *(float *)a->out = (float)(total / ((double)rows * in.w));
}

static void ce_backward(const unet_op_args *a) {
    float *dz = a->din[0];
    if (!dz) return;
    loss_inputs in = loss_inputs_of(a);
    size_t hw = (size_t)in.h * in.w;
    long rows = (long)rows_of(a);
    double coef = (double)a->node->scale / ((double)rows * in.w);
    int acc = a->din_accumulate[0];
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        int n = (int)(r / in.h), y = (int)(r % in.h);
        size_t row = (size_t)n * in.k * hw + (size_t)y * in.w;
        const int32_t *lab = in.label + cropped_row(in.label_shape, &in, n, y);
        const float *wt = in.weight ? in.weight + cropped_row(in.weight_shape, &in, n, y) : NULL;
        for (int x = 0; x < in.w; x++) {
            int32_t l = lab[x];
            int valid = l >= 0 && l < in.k;
            double m, s = softmax_denominator(in.z + row + x, hw, in.k, &m);
            double c = valid ? coef * (wt ? (double)wt[x] : 1.0) : 0.0;
            for (int j = 0; j < in.k; j++) {
                size_t i = row + (size_t)j * hw + x;
                double p = exp((double)in.z[i] - m) / s;
                unet_grad_store(dz, i, (float)(c * (p - (j == l ? 1.0 : 0.0))), acc);
            }
        }
    }
}

/* ---- BCE + Dice ---- */

/* Per-row partial sums; rows of one image add up to its Dice terms. */
typedef struct {
    double bce; /* weighted BCE */
    double py, p, y;
} bce_dice_row;

/* Per image: Dice = numer / denom, numer = 2 sum(p*y) + 1, denom = sum(p) + sum(y) + 1. */
typedef struct {
    double numer, denom;
} dice_terms;

static size_t bce_dice_workspace_bytes(const unet_op_args *a) {
    return rows_of(a) * sizeof(bce_dice_row) + (size_t)a->in_shape[0].n * sizeof(dice_terms);
}

static inline double sigmoid(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* Fills the per-image Dice terms (after the row sums in the workspace) and
 * returns the sum of the weighted BCE over all pixels. */
static double bce_dice_sums(const unet_op_args *a, const loss_inputs *in, dice_terms **dice_out) {
    bce_dice_row *part = a->workspace;
    long rows = (long)rows_of(a);
    dice_terms *dice = (dice_terms *)(part + rows);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        int n = (int)(r / in->h), yy = (int)(r % in->h);
        const float *z = in->z + ((size_t)n * in->h + yy) * in->w;
        const int32_t *lab = in->label + cropped_row(in->label_shape, in, n, yy);
        const float *wt = in->weight ? in->weight + cropped_row(in->weight_shape, in, n, yy) : NULL;
        bce_dice_row s = {0.0, 0.0, 0.0, 0.0};
        for (int x = 0; x < in->w; x++) {
            double zv = z[x], y = lab[x], p = sigmoid(zv);
            /* BCE with logits, stable: max(z,0) - z*y + log(1 + exp(-|z|)) */
            double bce = (zv > 0.0 ? zv : 0.0) - zv * y + log1p(exp(-fabs(zv)));
            s.bce += (wt ? (double)wt[x] : 1.0) * bce;
            s.py += p * y;
            s.p += p;
            s.y += y;
        }
        part[r] = s;
    }
    double bce = 0.0;
    for (int n = 0; n < in->n; n++) {
        double py = 0.0, p = 0.0, y = 0.0;
        for (int yy = 0; yy < in->h; yy++) {
            const bce_dice_row *s = &part[(size_t)n * in->h + yy];
            bce += s->bce;
            py += s->py;
            p += s->p;
            y += s->y;
        }
        dice[n] = (dice_terms){2.0 * py + 1.0, p + y + 1.0};
    }
    *dice_out = dice;
    return bce;
}

static void bce_dice_forward(const unet_op_args *a) {
    loss_inputs in = loss_inputs_of(a);
    dice_terms *dice;
    double bce = bce_dice_sums(a, &in, &dice);
    double dice_mean = 0.0;
    for (int n = 0; n < in.n; n++) dice_mean += dice[n].numer / dice[n].denom;
    dice_mean /= in.n;
    *(float *)a->out = (float)(bce / ((double)in.n * in.h * in.w) + 1.0 - dice_mean);
}

/* d/dz = w (p - y) / (N h w)  -  (1/N) (2 y denom - numer) / denom^2 * p (1 - p) */
static void bce_dice_backward(const unet_op_args *a) {
    float *dz = a->din[0];
    if (!dz) return;
    loss_inputs in = loss_inputs_of(a);
    dice_terms *dice;
    bce_dice_sums(a, &in, &dice);
    double scale = a->node->scale, bce_coef = scale / ((double)in.n * in.h * in.w), dice_coef = scale / in.n;
    int acc = a->din_accumulate[0];
    long rows = (long)rows_of(a);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        int n = (int)(r / in.h), yy = (int)(r % in.h);
        size_t row = ((size_t)n * in.h + yy) * in.w;
        const int32_t *lab = in.label + cropped_row(in.label_shape, &in, n, yy);
        const float *wt = in.weight ? in.weight + cropped_row(in.weight_shape, &in, n, yy) : NULL;
        double numer = dice[n].numer, denom = dice[n].denom;
        for (int x = 0; x < in.w; x++) {
            double y = lab[x], p = sigmoid(in.z[row + x]);
            double g = bce_coef * (wt ? (double)wt[x] : 1.0) * (p - y) -
                       dice_coef * (2.0 * y * denom - numer) / (denom * denom) * p * (1.0 - p);
            unet_grad_store(dz, row + x, (float)g, acc);
        }
    }
}

const unet_op_impl unet_cpu_softmax_ce = {
    .forward = ce_forward,
    .backward = ce_backward,
    .workspace_bytes = ce_workspace_bytes,
};
const unet_op_impl unet_cpu_bce_dice = {
    .forward = bce_dice_forward,
    .backward = bce_dice_backward,
    .workspace_bytes = bce_dice_workspace_bytes,
};
