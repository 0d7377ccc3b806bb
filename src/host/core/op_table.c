/* The op table: every op's name, whether it is a loss, which forward tensors
 * its backward reads, its shape rule and its FLOPs, in one row. Adding an op:
 * its enum value (include/unet/graph.h), its row here, its forward and
 * backward in each backend's op table, its case in tests/cpu/test_ops_table.py. */
#include <stdlib.h>

#include "host/core/graph_internal.h"
#include "host/core/op_table.h"

static int fail(char *err, size_t errlen, const unet_node *n, const char *what, unet_shape s) {
    snprintf(err, errlen, "%s (%s): %s, input %dx%d", n->name, unet_op_name(n->op), what, s.h, s.w);
    return -1;
}

static int keeps_shape(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                       size_t errlen) {
    (void)g, (void)n, (void)in, (void)out, (void)err, (void)errlen;
    return 0;
}

/* Output size of a k-window at stride over size + 2 pad (PyTorch: rounded
 * down), or 0 when the window does not fit. */
static int window_out(int size, int k, int stride, int pad) {
    return size + 2 * pad < k ? 0 : (size + 2 * pad - k) / stride + 1;
}

static int bad_attrs(char *err, size_t errlen, const unet_node *n, const char *what) {
    snprintf(err, errlen, "%s (%s): %s", n->name, unet_op_name(n->op), what);
    return -1;
}

static int infer_conv(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                      size_t errlen) {
    if (n->k < 1 || n->stride < 1 || n->pad < 0 || n->out_c < 1)
        return bad_attrs(err, errlen, n, "needs k >= 1, stride >= 1, pad >= 0 and out_c >= 1");
    if (n->groups != 1 && !(n->groups == in[0].c && n->out_c == in[0].c))
        return bad_attrs(err, errlen, n, "groups is 1, or the input channels with as many output channels (depthwise)");
    const unet_param *w = &g->params[n->param[0]];
    int wc = in[0].c / n->groups;
    if (w->ndim != 4 || w->dims[0] != n->out_c || w->dims[1] != wc || w->dims[2] != n->k || w->dims[3] != n->k) {
        snprintf(err, errlen, "%s: weight is %dx%dx%dx%d, the convolution needs %dx%dx%dx%d", n->name, w->dims[0],
                 w->dims[1], w->dims[2], w->dims[3], n->out_c, wc, n->k, n->k);
        return -1;
    }
    if (n->param[1] >= 0 && g->params[n->param[1]].count != (size_t)n->out_c) {
        snprintf(err, errlen, "%s: bias has %zu values for %d output channels", n->name, g->params[n->param[1]].count,
                 n->out_c);
        return -1;
    }
    out->c = n->out_c;
    out->h = window_out(in[0].h, n->k, n->stride, n->pad);
    out->w = window_out(in[0].w, n->k, n->stride, n->pad);
    if (out->h < 1 || out->w < 1) return fail(err, errlen, n, "the tile is too small for this convolution", in[0]);
    return 0;
}

static int infer_conv_t2(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                         size_t errlen) {
    (void)g, (void)err, (void)errlen;
    out->c = n->out_c;
    out->h = 2 * in[0].h;
    out->w = 2 * in[0].w;
    return 0;
}

static int infer_upsample2(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                           size_t errlen) {
    (void)g, (void)n, (void)err, (void)errlen;
    out->h = 2 * in[0].h;
    out->w = 2 * in[0].w;
    return 0;
}

static int infer_maxpool2(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                          size_t errlen) {
    (void)g;
    if (in[0].h % 2 || in[0].w % 2) return fail(err, errlen, n, "2x2 max-pooling needs an even size", in[0]);
    out->h = in[0].h / 2;
    out->w = in[0].w / 2;
    return 0;
}

/* PyTorch's rule: padding at most half the window, so that no window lies
 * wholly in the padding (its -inf would reach the output). */
static int infer_maxpool(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                         size_t errlen) {
    (void)g;
    if (n->k < 1 || n->stride < 1 || n->pad < 0 || 2 * n->pad > n->k)
        return bad_attrs(err, errlen, n, "needs k >= 1, stride >= 1 and 0 <= pad <= k / 2");
    out->h = window_out(in[0].h, n->k, n->stride, n->pad);
    out->w = window_out(in[0].w, n->k, n->stride, n->pad);
    if (out->h < 1 || out->w < 1) return fail(err, errlen, n, "the tile is too small for this pooling", in[0]);
    return 0;
}

/* Every input centre-cropped to input 0's size: none may be smaller. The
 * inputs are checked in order, each completely, so the first bad one is named. */
static int infer_crop(const unet_node *n, const unet_shape *in, unet_shape *out, int sum, char *err, size_t errlen) {
    unet_shape x = in[0];
    out->c = 0;
    for (int i = 0; i < n->n_in; i++) {
        if (in[i].h < x.h || in[i].w < x.w) {
            snprintf(err, errlen, "%s: skip input %d is %dx%d, smaller than the upsampled %dx%d", n->name, i, in[i].h,
                     in[i].w, x.h, x.w);
            return -1;
        }
        if (in[i].n != x.n) {
            snprintf(err, errlen, "%s: batch sizes differ", n->name);
            return -1;
        }
        if (sum) {
            if (in[i].c != x.c) {
                snprintf(err, errlen, "%s: fusion by sum needs equal channels, got %d and %d", n->name, x.c, in[i].c);
                return -1;
            }
            out->c = x.c;
        } else {
            out->c += in[i].c;
        }
    }
    return 0;
}

static int infer_crop_concat(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                             size_t errlen) {
    (void)g;
    return infer_crop(n, in, out, 0, err, errlen);
}

static int infer_crop_add(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                          size_t errlen) {
    (void)g;
    return infer_crop(n, in, out, 1, err, errlen);
}

/* A loss: labels and weights at least the logits' size (centre-cropped to
 * them), a scalar out. */
static int infer_loss(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                      size_t errlen) {
    (void)g;
    for (int i = 1; i < n->n_in; i++)
        if (in[i].h < in[0].h || in[i].w < in[0].w || in[i].n != in[0].n) {
            snprintf(err, errlen, "%s: label/weight %dx%d smaller than the output %dx%d", n->name, in[i].h, in[i].w,
                     in[0].h, in[0].w);
            return -1;
        }
    *out = (unet_shape){1, 1, 1, 1};
    return 0;
}

static int infer_bce_dice(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                          size_t errlen) {
    if (infer_loss(g, n, in, out, err, errlen)) return -1;
    if (in[0].c != 1) {
        snprintf(err, errlen, "%s: BCE + Dice needs one output channel, got %d", n->name, in[0].c);
        return -1;
    }
    return 0;
}

/* each output sums k * k taps of in / groups channels */
static double conv_flops(const unet_node *n, const unet_shape *in, unet_shape out) {
    return 2.0 * unet_shape_count(out) * (in[0].c / n->groups) * n->k * n->k;
}

/* one tap of the 2x2 kernel per output pixel */
static double conv_t2_flops(const unet_node *n, const unet_shape *in, unet_shape out) {
    (void)n;
    return 2.0 * unet_shape_count(out) * in[0].c;
}

/* short names, to keep each row on one line */
#define NEVER  UNET_READS_NEVER
#define ALWAYS UNET_READS_ALWAYS
#define IF_ACT UNET_READS_IF_ACT

/* Columns: name, loss, what the backward reads of the inputs and of the
 * output, shape rule, FLOPs. */
static const unet_op_row op_table[] = {
    [UNET_OP_CONV] = {"conv", 0, ALWAYS, IF_ACT, infer_conv, conv_flops},
    [UNET_OP_CONV_T2] = {"conv_t2", 0, ALWAYS, NEVER, infer_conv_t2, conv_t2_flops},
    [UNET_OP_BIAS] = {"bias", 0, NEVER, NEVER, keeps_shape, NULL},
    [UNET_OP_RELU] = {"relu", 0, NEVER, ALWAYS, keeps_shape, NULL},
    [UNET_OP_MAXPOOL2] = {"maxpool2", 0, ALWAYS, ALWAYS, infer_maxpool2, NULL},
    [UNET_OP_MAXPOOL] = {"maxpool", 0, ALWAYS, NEVER, infer_maxpool, NULL},
    [UNET_OP_CROP_CONCAT] = {"crop_concat", 0, NEVER, NEVER, infer_crop_concat, NULL},
    [UNET_OP_CROP_ADD] = {"crop_add", 0, NEVER, IF_ACT, infer_crop_add, NULL},
    [UNET_OP_UPSAMPLE2] = {"upsample2", 0, NEVER, NEVER, infer_upsample2, NULL},
    [UNET_OP_BATCHNORM] = {"batchnorm", 0, ALWAYS, ALWAYS, keeps_shape, NULL},
    [UNET_OP_DROPOUT] = {"dropout", 0, NEVER, NEVER, keeps_shape, NULL},
    [UNET_OP_SOFTMAX_CE] = {"softmax_ce", 1, ALWAYS, NEVER, infer_loss, NULL},
    [UNET_OP_BCE_DICE] = {"bce_dice", 1, ALWAYS, NEVER, infer_bce_dice, NULL},
};
/* A missing last row shortens the table; a missing row elsewhere is left
 * zero, which unet_op_check refuses. */
_Static_assert(sizeof op_table / sizeof op_table[0] == UNET_OP_COUNT, "one row per unet_op in op_table");

#undef NEVER
#undef ALWAYS
#undef IF_ACT

int unet_op_check(unet_op op, char *err, size_t errlen) {
    if (op < 0 || op >= UNET_OP_COUNT) {
        snprintf(err, errlen, "op %d is not a unet_op (0 to %d)", (int)op, UNET_OP_COUNT - 1);
        return -1;
    }
    const unet_op_row *r = &op_table[op];
    const char *lacks = !r->name                              ? "a name"
                        : !r->infer                           ? "a shape rule"
                        : r->reads_inputs == UNET_READS_UNSET ? "whether its backward reads its inputs"
                        : r->reads_output == UNET_READS_UNSET ? "whether its backward reads its output"
                                                              : NULL;
    if (!lacks) return 0;
    snprintf(err, errlen, "op %d (%s): its row in the op table (src/host/core/op_table.c) lacks %s", (int)op,
             r->name ? r->name : "unnamed", lacks);
    return -1;
}

const unet_op_row *unet_op_row_of(unet_op op) {
    char err[256];
    if (unet_op_check(op, err, sizeof err)) {
        fprintf(stderr, "unet: internal error: %s\n", err);
        abort();
    }
    return &op_table[op];
}

const char *unet_op_name(unet_op op) {
    return op >= 0 && op < UNET_OP_COUNT && op_table[op].name ? op_table[op].name : "?";
}

int unet_op_is_loss(unet_op op) { return unet_op_row_of(op)->is_loss; }

static int reads(unet_reads r, const unet_node *n) {
    return r == UNET_READS_ALWAYS || (r == UNET_READS_IF_ACT && n->act != UNET_ACT_NONE);
}

int unet_backward_reads_inputs(const unet_node *n) { return reads(unet_op_row_of(n->op)->reads_inputs, n); }
int unet_backward_reads_output(const unet_node *n) { return reads(unet_op_row_of(n->op)->reads_output, n); }
