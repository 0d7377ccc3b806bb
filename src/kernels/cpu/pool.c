/* Max pooling: maxpool2, 2x2 stride 2 (H and W even: the shape inference
 * rejects odd sizes), and maxpool, a k x k window at a stride with -inf
 * padding (ResNet's 3x3 stride-2 pad-1). */
#include <math.h>
#include <string.h>

#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* Whether v replaces the running maximum m of a window scanned in row-major
 * order. Strict comparison keeps the first of equal values, so forward and
 * backward agree on ties; a NaN wins, as in PyTorch, so a diverging run
 * shows NaN instead of hiding it. */
static inline int takes_max(float v, float m) { return v > m || isnan(v); }

/* Which of the window a b / c d (row-major) holds its maximum, as four 0/1 flags. */
typedef struct {
    int a, b, c, d;
} window_winner;

static inline window_winner window_argmax(float a, float b, float c, float d) {
    int tb = takes_max(b, a);
    float m = tb ? b : a;
    int tc = takes_max(c, m);
    m = tc ? c : m;
    int td = takes_max(d, m);
    return (window_winner){!(tb | tc | td), tb & !(tc | td), tc & !td, td};
}

static void maxpool2_forward(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *x = a->in[0];
    float *y = a->out;
    long planes = (long)so.n * so.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * si.h * si.w;
        float *yp = y + (size_t)pl * so.h * so.w;
        for (int oy = 0; oy < so.h; oy++) {
            const float *r0 = xp + (size_t)(2 * oy) * si.w, *r1 = r0 + si.w;
            float *yrow = yp + (size_t)oy * so.w;
            for (int ox = 0; ox < so.w; ox++) {
                float m = r0[2 * ox];
                m = takes_max(r0[2 * ox + 1], m) ? r0[2 * ox + 1] : m;
                m = takes_max(r1[2 * ox], m) ? r1[2 * ox] : m;
                m = takes_max(r1[2 * ox + 1], m) ? r1[2 * ox + 1] : m;
                yrow[ox] = m;
            }
        }
    }
}

/* One row of windows: dout goes to each window's maximum, zero to the rest.
 * Called with a literal accumulate, so that each variant is a straight loop. */
static inline void route_row(float *d0, float *d1, const float *r0, const float *r1, const float *grow, int w,
                             int acc) {
    for (int ox = 0; ox < w; ox++) {
        float g = grow[ox];
        window_winner win = window_argmax(r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
        unet_grad_store(d0, (size_t)(2 * ox), win.a ? g : 0.0f, acc);
        unet_grad_store(d0, (size_t)(2 * ox + 1), win.b ? g : 0.0f, acc);
        unet_grad_store(d1, (size_t)(2 * ox), win.c ? g : 0.0f, acc);
        unet_grad_store(d1, (size_t)(2 * ox + 1), win.d ? g : 0.0f, acc);
    }
}

/* The argmax is recomputed from the input with the forward's own rule, so
 * the gradient lands exactly where the forward took its value from. */
static void maxpool2_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *x = a->in[0], *dy = a->dout;
    int acc = a->din_accumulate[0];
    long planes = (long)so.n * so.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * si.h * si.w;
        float *dxp = dx + (size_t)pl * si.h * si.w;
        const float *dyp = dy + (size_t)pl * so.h * so.w;
        for (int oy = 0; oy < so.h; oy++) {
            const float *r0 = xp + (size_t)(2 * oy) * si.w, *r1 = r0 + si.w;
            float *d0 = dxp + (size_t)(2 * oy) * si.w, *d1 = d0 + si.w;
            const float *grow = dyp + (size_t)oy * so.w;
            if (acc)
                route_row(d0, d1, r0, r1, grow, so.w, 1);
            else
                route_row(d0, d1, r0, r1, grow, so.w, 0);
        }
    }
}

const unet_op_impl unet_cpu_maxpool2 = {.forward = maxpool2_forward, .backward = maxpool2_backward};

/* ---------------------------------------------------------------- maxpool -- */

typedef struct {
    int k, stride, pad;
    int h, w, oh, ow;
} pool_geom;

static pool_geom pool_geom_of(const unet_op_args *a) {
    const unet_node *n = a->node;
    return (pool_geom){n->k, n->stride, n->pad, a->in_shape[0].h, a->in_shape[0].w, a->out_shape.h, a->out_shape.w};
}

/* The memory index, within its plane, of the maximum of window (oy, ox):
 * the first in row-major order, a NaN winning (takes_max). Padding is -inf:
 * it never wins, so the window is scanned over its rows and columns inside
 * the plane (at least one: pad <= k / 2). */
static inline size_t window_max_at(const float *xp, const pool_geom *g, int oy, int ox) {
    int y0 = oy * g->stride - g->pad, x0 = ox * g->stride - g->pad;
    int ya = y0 < 0 ? 0 : y0, yb = y0 + g->k < g->h ? y0 + g->k : g->h;
    int xa = x0 < 0 ? 0 : x0, xb = x0 + g->k < g->w ? x0 + g->k : g->w;
    size_t best = (size_t)ya * g->w + xa;
    float m = xp[best];
    for (int y = ya; y < yb; y++)
        for (int x = xa; x < xb; x++) {
            size_t i = (size_t)y * g->w + x;
            if (takes_max(xp[i], m)) m = xp[i], best = i;
        }
    return best;
}

static void maxpool_forward(const unet_op_args *a) {
    pool_geom g = pool_geom_of(a);
    const float *x = a->in[0];
    float *y = a->out;
    long planes = (long)a->out_shape.n * a->out_shape.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * g.h * g.w;
        float *yp = y + (size_t)pl * g.oh * g.ow;
        for (int oy = 0; oy < g.oh; oy++)
            for (int ox = 0; ox < g.ow; ox++) yp[(size_t)oy * g.ow + ox] = xp[window_max_at(xp, &g, oy, ox)];
    }
}

/* Each window's gradient to its maximum (recomputed from the input with the
 * forward's rule), windows in row-major order; a thread owns whole planes:
 * deterministic. Overlapping windows (stride < k) may add several into one
 * input. */
static void maxpool_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    pool_geom g = pool_geom_of(a);
    const float *x = a->in[0], *dy = a->dout;
    int acc = a->din_accumulate[0];
    long planes = (long)a->out_shape.n * a->out_shape.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * g.h * g.w, *gp = dy + (size_t)pl * g.oh * g.ow;
        float *dxp = dx + (size_t)pl * g.h * g.w;
        if (!acc) memset(dxp, 0, (size_t)g.h * g.w * sizeof(float));
        for (int oy = 0; oy < g.oh; oy++)
            for (int ox = 0; ox < g.ow; ox++) dxp[window_max_at(xp, &g, oy, ox)] += gp[(size_t)oy * g.ow + ox];
    }
}

const unet_op_impl unet_cpu_maxpool = {.forward = maxpool_forward, .backward = maxpool_backward};
