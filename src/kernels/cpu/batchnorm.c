/* Batch normalisation over N,H,W per channel, with an optional fused
 * activation (ReLU or ReLU6).
 *
 * Reductions run one channel per thread, each a sequential sum in double:
 * the same bits for any thread count. The element-wise passes run over N*C
 * planes, so that a layer with few channels still uses every thread.
 * aux (forward to backward): the mean and inverse standard deviation the
 * forward normalised with, C floats each. */
#include <math.h>

#include "kernels/cpu/act.h"
#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* Batch statistics when training, unless frozen (--freeze-encoder-bn: a
 * BatchNorm2d in eval() inside a model in train()), as PyTorch also does when
 * a model has no running statistics to use. */
static int uses_batch_stats(const unet_op_args *a) {
    return (a->training && !a->node->frozen) || !a->state[0] || !a->state[1];
}

static size_t bn_aux_bytes(const unet_op_args *a) { return 2 * (size_t)a->in_shape[0].c * sizeof(float); }

/* Per-channel sums in double: forward, of x and of squared deviations;
 * backward, of dy and dy * xhat; one more for the pixel count, which
 * synchronised batch norm sums over the replicas with them. */
static size_t bn_workspace_bytes(const unet_op_args *a) { return (2 * (size_t)a->in_shape[0].c + 2) * sizeof(double); }

/* Sums over every replica's batch under synchronised batch norm; a no-op otherwise. */
static void replica_sum(const unet_op_args *a, double *values, int n) {
    if (a->replica_sum) a->replica_sum->sum(a->replica_sum->ctx, values, n);
}

/* Per-plane sums in double over four interleaved partial sums added in a
 * fixed order: the same bits every run, without one long chain of dependent
 * additions (which would make the reduction latency-bound). */
#define LANES 4

static double plane_sum(const float *p, size_t n) {
    double s[LANES] = {0.0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) s[l] += p[i + l];
    for (; i < n; i++) s[0] += p[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static double plane_squared_deviation(const float *p, size_t n, double mu) {
    double s[LANES] = {0.0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) s[l] += ((double)p[i + l] - mu) * ((double)p[i + l] - mu);
    for (; i < n; i++) s[0] += ((double)p[i] - mu) * ((double)p[i] - mu);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* sum of g * (x - mu) */
static double plane_centred_dot(const float *g, const float *x, size_t n, double mu) {
    double s[LANES] = {0.0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) s[l] += (double)g[i + l] * ((double)x[i + l] - mu);
    for (; i < n; i++) s[0] += (double)g[i] * ((double)x[i] - mu);
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static void bn_forward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    size_t hw = (size_t)s.h * s.w, m = (size_t)s.n * hw;
    const float *x = a->in[0], *gamma = a->param[0], *beta = a->param[1];
    float *y = a->out, *mean = a->aux, *invstd = mean + s.c;
    double eps = a->node->eps, momentum = a->node->momentum;
    if (uses_batch_stats(a)) {
        /* two passes, each summed over the replicas under synchronised batch
         * norm: the variance of activations with a large mean keeps its digits */
        double *sums = a->workspace, *count = sums + s.c, *squares = count + 1;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < s.c; c++) {
            double sum = 0.0;
            for (int n = 0; n < s.n; n++) sum += plane_sum(x + ((size_t)n * s.c + c) * hw, hw);
            sums[c] = sum;
        }
        *count = (double)m;
        replica_sum(a, sums, s.c + 1);
        double total = *count;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < s.c; c++) {
            double mu = sums[c] / total, ss = 0.0;
            for (int n = 0; n < s.n; n++) ss += plane_squared_deviation(x + ((size_t)n * s.c + c) * hw, hw, mu);
            sums[c] = mu;
            squares[c] = ss;
        }
        replica_sum(a, squares, s.c);
#pragma omp parallel for schedule(static)
        for (int c = 0; c < s.c; c++) {
            double mu = sums[c], ss = squares[c], var = ss / total;
            mean[c] = (float)mu;
            invstd[c] = (float)(1.0 / sqrt(var + eps));
            if (a->training && !a->node->frozen && a->state[0] && a->state[1]) {
                /* one value per channel has no unbiased variance (PyTorch refuses to train
                 * on it); the biased one, 0, keeps the running variance finite */
                double unbiased = total > 1 ? ss / (total - 1) : var;
                a->state[0][c] = (float)((1.0 - momentum) * a->state[0][c] + momentum * mu);
                a->state[1][c] = (float)((1.0 - momentum) * a->state[1][c] + momentum * unbiased);
            }
        }
    } else {
        for (int c = 0; c < s.c; c++) {
            mean[c] = a->state[0][c];
            invstd[c] = (float)(1.0 / sqrt((double)a->state[1][c] + eps));
        }
    }
    long planes = (long)s.n * s.c;
    unet_act act = a->node->act;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        int c = (int)(pl % s.c);
        float mu = mean[c], scale = gamma[c] * invstd[c], shift = beta[c];
        const float *xp = x + (size_t)pl * hw;
        float *yp = y + (size_t)pl * hw;
        if (act == UNET_ACT_RELU6)
            for (size_t i = 0; i < hw; i++) yp[i] = unet_relu6((xp[i] - mu) * scale + shift);
        else
            for (size_t i = 0; i < hw; i++) {
                float v = (xp[i] - mu) * scale + shift;
                yp[i] = act == UNET_ACT_RELU && v < 0.0f ? 0.0f : v;
            }
    }
}

/* Training: dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)),
 * the batch statistics being functions of x. Eval and frozen: dx = gamma *
 * invstd * dy. With a fused activation, dy = dout masked by it (out > 0 for
 * ReLU, 0 < out < 6 for ReLU6), in place (dout has no other reader). */
static void bn_backward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    size_t hw = (size_t)s.h * s.w, m = (size_t)s.n * hw;
    const float *x = a->in[0], *y = a->out, *gamma = a->param[0];
    const float *mean = a->aux, *invstd = mean + s.c;
    float *dy = a->dout;
    double *sum_dy = a->workspace, *sum_dy_xhat = sum_dy + s.c, *count = sum_dy_xhat + s.c;
    unet_act act = a->node->act;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < s.c; c++) {
        double sd = 0.0, sdx = 0.0;
        for (int n = 0; n < s.n; n++) {
            size_t base = ((size_t)n * s.c + c) * hw;
            float *g = dy + base;
            unet_act_mask(act, g, y + base, hw);
            sd += plane_sum(g, hw);
            sdx += plane_centred_dot(g, x + base, hw, mean[c]);
        }
        sdx *= invstd[c];
        sum_dy[c] = sd;
        sum_dy_xhat[c] = sdx;
        if (a->dparam[0]) a->dparam[0][c] = (float)sdx;
        if (a->dparam[1]) a->dparam[1][c] = (float)sd;
    }
    float *dx = a->din[0];
    if (!dx) return;
    int batch_stats = uses_batch_stats(a), acc = a->din_accumulate[0];
    /* gamma and beta keep this replica's sums (the gradient allreduce adds
     * them); dx sees the statistics of the batch the forward normalised */
    *count = (double)m;
    if (batch_stats) replica_sum(a, sum_dy, 2 * s.c + 1);
    double total = *count;
    long planes = (long)s.n * s.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        int c = (int)(pl % s.c);
        double mu = mean[c], is = invstd[c], k = (double)gamma[c] * is;
        double mean_dy = batch_stats ? sum_dy[c] / total : 0.0;
        double mean_dy_xhat = batch_stats ? sum_dy_xhat[c] / total : 0.0;
        const float *xp = x + (size_t)pl * hw, *dyp = dy + (size_t)pl * hw;
        float *dxp = dx + (size_t)pl * hw;
        for (size_t i = 0; i < hw; i++) {
            double xhat = ((double)xp[i] - mu) * is;
            unet_grad_store(dxp, i, (float)(k * ((double)dyp[i] - mean_dy - xhat * mean_dy_xhat)), acc);
        }
    }
}

const unet_op_impl unet_cpu_batchnorm = {
    .forward = bn_forward,
    .backward = bn_backward,
    .workspace_bytes = bn_workspace_bytes,
    .aux_bytes = bn_aux_bytes,
};
