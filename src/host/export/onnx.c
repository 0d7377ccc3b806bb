/* The engine's inference graph as an ONNX graph. Every op has a row in the
 * emitter table below, pinned to the op count as the core's op table is, so
 * that a new op cannot reach an export unnoticed: the row says which ONNX
 * nodes compute it, or that inference skips it (dropout), or that it only
 * trains (the losses). Names follow the engine's: an ONNX node is named after
 * the engine node it comes from, an initializer after its checkpoint tensor. */
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "host/export/onnx.h"
#include "host/export/onnx_builder.h"

typedef struct {
    onnx_builder *b;
    const unet_onnx_export *x;
    const unet_param *params;
} emit_ctx;

/* Writes the ONNX nodes of engine node n, whose inputs are named in[] and
 * whose output is to be named out. */
typedef void (*emit_fn)(emit_ctx *c, const unet_node *n, const char *const *in, const char *out);

static unet_shape shape_of(const emit_ctx *c, int value) { return unet_plan_value_shape(c->x->plan, value); }

/* An initializer for parameter `id` under its checkpoint name, in its
 * PyTorch layout (which is ONNX's: OIHW, and IOHW for ConvTranspose). */
static const char *param(emit_ctx *c, int id) {
    const unet_param *p = &c->params[id];
    const float *block = p->kind == UNET_PARAM_TRAINABLE ? c->x->params : c->x->state;
    int64_t dims[4];
    for (int i = 0; i < p->ndim; i++) dims[i] = p->dims[i];
    onnx_add_f32(c->b, p->name, p->ndim, dims, block + p->offset);
    return p->name;
}

static void one_input(emit_ctx *c, const char *op, const char *name, const char *in, const char *out) {
    onnx_add_node(c->b, op, name, 1, &in, out);
}

/* An activation fused into n (its `act`): the op's own output under
 * `<name>.pre_act`, then Relu, or Clip(0, 6) for ReLU6, writing out. */
static const char *before_act(emit_ctx *c, const unet_node *n, const char *out) {
    return n->act != UNET_ACT_NONE ? onnx_str(c->b, "%s.pre_act", n->name) : out;
}

/* y -> out through activation act (none: nothing to write; y is out). */
static void emit_act(emit_ctx *c, const char *name, unet_act act, const char *y, const char *out) {
    if (act == UNET_ACT_RELU) one_input(c, "Relu", name, y, out);
    if (act != UNET_ACT_RELU6) return;
    const char *lo = onnx_str(c->b, "%s.min", name), *hi = onnx_str(c->b, "%s.max", name);
    static const float zero = 0.0f, six = 6.0f; /* the builder keeps the pointers until it writes */
    onnx_add_f32(c->b, lo, 0, NULL, &zero);
    onnx_add_f32(c->b, hi, 0, NULL, &six);
    const char *args[3] = {y, lo, hi};
    onnx_add_node(c->b, "Clip", name, 3, args, out);
}

static void after_act(emit_ctx *c, const unet_node *n, const char *y, const char *out) {
    emit_act(c, onnx_str(c->b, "%s.act", n->name), n->act, y, out);
}

/* Any kernel, stride, padding and group count (depthwise: one group per
 * channel); without a bias (param[1] == -1) Conv takes two inputs. */
static void emit_conv(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *y = before_act(c, n, out);
    const int with_bias = n->param[1] >= 0;
    const char *args[3] = {in[0], param(c, n->param[0]), with_bias ? param(c, n->param[1]) : NULL};
    onnx_node *node = onnx_add_node(c->b, "Conv", n->name, with_bias ? 3 : 2, args, y);
    int64_t kernel[2] = {n->k, n->k}, strides[2] = {n->stride, n->stride}, pads[4] = {n->pad, n->pad, n->pad, n->pad};
    onnx_attr_ints(c->b, node, "kernel_shape", 2, kernel);
    onnx_attr_ints(c->b, node, "strides", 2, strides);
    onnx_attr_ints(c->b, node, "pads", 4, pads);
    if (n->groups > 1) onnx_attr_int(c->b, node, "group", n->groups);
    after_act(c, n, y, out);
}

static void emit_conv_t2(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *args[3] = {in[0], param(c, n->param[0]), param(c, n->param[1])};
    onnx_node *node = onnx_add_node(c->b, "ConvTranspose", n->name, 3, args, out);
    int64_t two[2] = {2, 2};
    onnx_attr_ints(c->b, node, "kernel_shape", 2, two);
    onnx_attr_ints(c->b, node, "strides", 2, two);
}

/* y = x + b[c]: the bias broadcast as (C, 1, 1), the same floats as the checkpoint's (C). */
static void emit_bias(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const unet_param *p = &c->params[n->param[0]];
    int64_t dims[3] = {p->dims[0], 1, 1};
    onnx_add_f32(c->b, p->name, 3, dims, c->x->params + p->offset);
    const char *args[2] = {in[0], p->name};
    onnx_add_node(c->b, "Add", n->name, 2, args, out);
}

/* The relu op: ReLU, or ReLU6 when its act says so (none means ReLU, graph.h). */
static void emit_relu(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    emit_act(c, n->name, n->act == UNET_ACT_RELU6 ? UNET_ACT_RELU6 : UNET_ACT_RELU, in[0], out);
}

static void emit_maxpool2(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    onnx_node *node = onnx_add_node(c->b, "MaxPool", n->name, 1, in, out);
    int64_t two[2] = {2, 2};
    onnx_attr_ints(c->b, node, "kernel_shape", 2, two);
    onnx_attr_ints(c->b, node, "strides", 2, two);
}

/* k x k, stride, padding: ONNX's MaxPool ignores padded positions, as the
 * engine's -inf padding does. */
static void emit_maxpool(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    onnx_node *node = onnx_add_node(c->b, "MaxPool", n->name, 1, in, out);
    int64_t kernel[2] = {n->k, n->k}, strides[2] = {n->stride, n->stride}, pads[4] = {n->pad, n->pad, n->pad, n->pad};
    onnx_attr_ints(c->b, node, "kernel_shape", 2, kernel);
    onnx_attr_ints(c->b, node, "strides", 2, strides);
    onnx_attr_ints(c->b, node, "pads", 4, pads);
}

/* A centre crop from shape s to u (the engine's crop: offset floor((s - u) / 2)
 * on each axis) as a Slice named `name`; the input itself when it has that
 * size already, as every input of a same-padding network has. */
static const char *centre_crop(emit_ctx *c, const char *name, const char *in, unet_shape s, unet_shape u) {
    if (s.h == u.h && s.w == u.w) return in;
    const char *starts = onnx_str(c->b, "%s.starts", name), *ends = onnx_str(c->b, "%s.ends", name);
    const char *axes = onnx_str(c->b, "%s.axes", name);
    int64_t oy = (s.h - u.h) / 2, ox = (s.w - u.w) / 2;
    int64_t st[2] = {oy, ox}, en[2] = {oy + u.h, ox + u.w}, ax[2] = {2, 3};
    onnx_add_i64_list(c->b, starts, 2, st);
    onnx_add_i64_list(c->b, ends, 2, en);
    onnx_add_i64_list(c->b, axes, 2, ax);
    const char *args[4] = {in, starts, ends, axes};
    onnx_add_node(c->b, "Slice", name, 4, args, name);
    return name;
}

/* Input i of a fusion node, cropped to the node's output size. */
static const char *crop(emit_ctx *c, const unet_node *n, int i, const char *in) {
    return centre_crop(c, onnx_str(c->b, "%s.crop%d", n->name, i), in, shape_of(c, n->in[i]),
                       shape_of(c, n->out_value));
}

static void emit_crop_concat(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *parts[UNET_MAX_IN];
    for (int i = 0; i < n->n_in; i++) parts[i] = crop(c, n, i, in[i]);
    onnx_node *node = onnx_add_node(c->b, "Concat", n->name, n->n_in, parts, out);
    onnx_attr_int(c->b, node, "axis", 1);
}

/* Summed in input order, as the engine sums them: ((x0 + x1) + x2) + ...,
 * then the fused activation (a residual block's ReLU). */
static void emit_crop_add(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *y = before_act(c, n, out);
    const char *sum = crop(c, n, 0, in[0]);
    if (n->n_in == 1) one_input(c, "Identity", n->name, sum, y);
    for (int i = 1; i < n->n_in; i++) {
        const char *to = i == n->n_in - 1 ? y : onnx_str(c->b, "%s.sum%d", n->name, i);
        const char *args[2] = {sum, crop(c, n, i, in[i])};
        onnx_add_node(c->b, "Add", i == n->n_in - 1 ? n->name : to, 2, args, to);
        sum = to;
    }
    after_act(c, n, y, out);
}

/* Bilinear x2 with align_corners = False: ONNX's half_pixel source
 * coordinates (o + 0.5) / 2 - 0.5, clamped at the border as the engine's are.
 * Nearest x2 (PyTorch's mode="nearest"): source floor(o / 2), ONNX's
 * asymmetric coordinates rounded down. */
static void emit_upsample2(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *scales = onnx_str(c->b, "%s.scales", n->name);
    const float s[4] = {1, 1, 2, 2};
    onnx_add_f32_list(c->b, scales, 4, s);
    const char *args[3] = {in[0], "", scales};
    onnx_node *node = onnx_add_node(c->b, "Resize", n->name, 3, args, out);
    if (n->upsample == UNET_UPSAMPLE_NEAREST) {
        onnx_attr_string(c->b, node, "mode", "nearest");
        onnx_attr_string(c->b, node, "coordinate_transformation_mode", "asymmetric");
        onnx_attr_string(c->b, node, "nearest_mode", "floor");
        return;
    }
    onnx_attr_string(c->b, node, "mode", "linear");
    onnx_attr_string(c->b, node, "coordinate_transformation_mode", "half_pixel");
}

/* Inference normalises with the running statistics, as predict does; the
 * node is kept (not folded into the convolution before it), so the model
 * carries the checkpoint's tensors as they are. */
static void emit_batchnorm(emit_ctx *c, const unet_node *n, const char *const *in, const char *out) {
    const char *y = before_act(c, n, out);
    const char *args[5] = {in[0], param(c, n->param[0]), param(c, n->param[1]), param(c, n->state[0]),
                           param(c, n->state[1])};
    onnx_node *node = onnx_add_node(c->b, "BatchNormalization", n->name, 5, args, y);
    onnx_attr_float(c->b, node, "epsilon", n->eps);
    after_act(c, n, y, out);
}

typedef enum {
    EMIT_MISSING,       /* zero: a row left out of the table */
    EMIT_NODES,         /* written as the ONNX nodes of `emit` */
    EMIT_IDENTITY,      /* nothing in inference: the output is the input */
    EMIT_TRAINING_ONLY, /* never in an inference graph */
} emission;

static const struct {
    emission kind;
    emit_fn emit;
} emitters[] = {
    [UNET_OP_CONV] = {EMIT_NODES, emit_conv},
    [UNET_OP_CONV_T2] = {EMIT_NODES, emit_conv_t2},
    [UNET_OP_BIAS] = {EMIT_NODES, emit_bias},
    [UNET_OP_RELU] = {EMIT_NODES, emit_relu},
    [UNET_OP_MAXPOOL2] = {EMIT_NODES, emit_maxpool2},
    [UNET_OP_MAXPOOL] = {EMIT_NODES, emit_maxpool},
    [UNET_OP_CROP_CONCAT] = {EMIT_NODES, emit_crop_concat},
    [UNET_OP_CROP_ADD] = {EMIT_NODES, emit_crop_add},
    [UNET_OP_UPSAMPLE2] = {EMIT_NODES, emit_upsample2},
    [UNET_OP_BATCHNORM] = {EMIT_NODES, emit_batchnorm},
    [UNET_OP_DROPOUT] = {EMIT_IDENTITY, NULL},
    [UNET_OP_SOFTMAX_CE] = {EMIT_TRAINING_ONLY, NULL},
    [UNET_OP_BCE_DICE] = {EMIT_TRAINING_ONLY, NULL},
};
_Static_assert(sizeof emitters / sizeof emitters[0] == UNET_OP_COUNT, "one row per unet_op in the ONNX emitters");

const char *unet_onnx_op_emission(unet_op op) {
    if (op < 0 || op >= UNET_OP_COUNT) return NULL;
    switch (emitters[op].kind) {
    case EMIT_NODES:
        return emitters[op].emit ? "nodes" : NULL;
    case EMIT_IDENTITY:
        return "identity";
    case EMIT_TRAINING_ONLY:
        return "training only";
    case EMIT_MISSING:
        break;
    }
    return NULL;
}

/* Which nodes the exported heads need: the walk writes only these (a
 * deep-supervised network exported for its deepest head leaves the other
 * heads, and the nodes only they feed, behind). */
static char *needed_nodes(const unet_onnx_export *x, char *err, size_t errlen) {
    const unet_graph *g = x->graph;
    const int n_values = unet_graph_num_values(g), n_nodes = unet_graph_num_nodes(g);
    const unet_node *nodes = unet_graph_nodes(g);
    char *value = unet_alloc_zeroed((size_t)n_values, 1, "the export's value marks", err, errlen);
    char *node = unet_alloc_zeroed((size_t)n_nodes, 1, "the export's node marks", err, errlen);
    if (!value || !node) {
        free(value);
        free(node);
        return NULL;
    }
    for (int h = 0; h < x->n_heads; h++) value[unet_graph_output_value(g, x->heads[h])] = 1;
    /* nodes come in topological order: walking back, a node's consumers come before it */
    for (int k = n_nodes - 1; k >= 0; k--) {
        if (!value[nodes[k].out_value]) continue;
        node[k] = 1;
        for (int i = 0; i < nodes[k].n_in; i++) value[nodes[k].in[i]] = 1;
    }
    free(value);
    return node;
}

static const char *logits_name(emit_ctx *c, int h) { return onnx_str(c->b, "logits_head%d", c->x->head_column[h]); }

/* A model's one input is the image; a graph of several (an op's test) names the others input<i>. */
static const char *input_name(emit_ctx *c, int i) { return i ? onnx_str(c->b, "input%d", i) : "image"; }

/* The graph's nodes through the emitter table. names[v]: the ONNX name of value v. */
static int emit_graph(emit_ctx *c, const char *needed, const char **names, char *err, size_t errlen) {
    const unet_graph *g = c->x->graph;
    const unet_node *nodes = unet_graph_nodes(g);
    for (int i = 0; i < unet_graph_num_inputs(g); i++) names[unet_graph_input_value(g, i)] = input_name(c, i);
    for (int k = 0; k < unet_graph_num_nodes(g); k++) {
        const unet_node *n = &nodes[k];
        if (!needed[k]) continue;
        const char *in[UNET_MAX_IN];
        for (int i = 0; i < n->n_in; i++) in[i] = names[n->in[i]];
        /* a head's logits are a graph output, under the name the outputs give them */
        int head = -1;
        for (int h = 0; h < c->x->n_heads; h++)
            if (unet_graph_output_value(g, c->x->heads[h]) == n->out_value) head = h;
        const char *out = head >= 0 ? logits_name(c, head) : n->name;
        switch (emitters[n->op].kind) {
        case EMIT_NODES:
            emitters[n->op].emit(c, n, in, out);
            names[n->out_value] = out;
            break;
        case EMIT_IDENTITY:
            if (head >= 0) one_input(c, "Identity", n->name, in[0], out);
            names[n->out_value] = head >= 0 ? out : in[0];
            break;
        case EMIT_MISSING: /* refused by check_table before the walk */
        case EMIT_TRAINING_ONLY:
            unet_errorf(err, errlen, "%s (%s) trains a model and has no place in an exported inference graph", n->name,
                        unet_op_name(n->op));
            return -1;
        }
    }
    return 0;
}

static unet_shape head_shape(const unet_onnx_export *x, int h) { return unet_plan_output_shape(x->plan, x->heads[h]); }

/* The smallest head: the size of `prob` (under valid padding the deeper a
 * head, the smaller; under same padding all heads have the input's size). */
static unet_shape smallest_head(const unet_onnx_export *x) {
    unet_shape smallest = head_shape(x, 0);
    for (int h = 1; h < x->n_heads; h++)
        if (head_shape(x, h).h < smallest.h) smallest = head_shape(x, h);
    return smallest;
}

/* Each head's probabilities (what unet_probabilities computes: a sigmoid
 * for one class, a softmax over the classes), the larger heads of a
 * valid-padding network centre-cropped to the smallest, and their mean. */
static void emit_probabilities(emit_ctx *c) {
    const int n = c->x->n_heads;
    const unet_shape smallest = smallest_head(c->x);
    const char *probs[UNET_MAX_LEVELS];
    for (int h = 0; h < n; h++) {
        const int j = c->x->head_column[h];
        const unet_shape s = head_shape(c->x, h);
        const char *p = n == 1 ? "prob" : onnx_str(c->b, "prob_head%d", j);
        const char *logits = logits_name(c, h);
        onnx_node *node = onnx_add_node(c->b, s.c == 1 ? "Sigmoid" : "Softmax", p, 1, &logits, p);
        if (s.c > 1) onnx_attr_int(c->b, node, "axis", 1);
        probs[h] = centre_crop(c, onnx_str(c->b, "prob_head%d.crop", j), p, s, smallest);
    }
    if (n > 1) onnx_add_node(c->b, "Mean", "prob", n, probs, "prob");
}

/* Input and outputs with their shapes: batch always named, height and width
 * named too when the network takes any multiple of its pooling grid. */
static void emit_io(emit_ctx *c) {
    const unet_onnx_export *x = c->x;
    const char *names[4] = {"N", NULL, "H", "W"};
    const int named = x->dynamic_hw;
    for (int i = 0; i < unet_graph_num_inputs(x->graph); i++) {
        unet_shape in = unet_plan_input_shape(x->plan, i);
        int64_t dims[4] = {0, in.c, named ? 0 : in.h, named ? 0 : in.w};
        onnx_add_io(c->b, 0, input_name(c, i), 4, dims, names);
    }
    unet_shape p = smallest_head(x);
    int64_t pd[4] = {0, p.c, named ? 0 : p.h, named ? 0 : p.w};
    onnx_add_io(c->b, 1, "prob", 4, pd, names);
    for (int h = 0; h < x->n_heads; h++) {
        unet_shape s = head_shape(x, h);
        int64_t ld[4] = {0, s.c, named ? 0 : s.h, named ? 0 : s.w};
        onnx_add_io(c->b, 1, logits_name(c, h), 4, ld, names);
    }
}

/* A row left out of the emitter table (its count is pinned, not its rows) is
 * refused before anything is written. */
static int check_table(char *err, size_t errlen) {
    for (int op = 0; op < UNET_OP_COUNT; op++)
        if (!unet_onnx_op_emission((unet_op)op)) {
            unet_errorf(err, errlen,
                        "internal error: op %s has no row in the ONNX emitter table "
                        "(src/host/export/onnx.c)",
                        unet_op_name((unet_op)op));
            return -1;
        }
    return 0;
}

int unet_onnx_write(const char *path, const unet_onnx_export *x, char *err, size_t errlen) {
    if (check_table(err, errlen)) return -1;
    onnx_builder *b = onnx_builder_new(x->opset);
    char *needed = needed_nodes(x, err, errlen);
    const char **names = unet_alloc_zeroed((size_t)unet_graph_num_values(x->graph), sizeof *names,
                                           "the export's value names", err, errlen);
    int rc = -1;
    if (!b) unet_errorf(err, errlen, "out of host memory building the ONNX model for %s", path);
    if (!b || !needed || !names) goto out;
    emit_ctx c = {b, x, unet_graph_params(x->graph)};
    emit_io(&c);
    if (emit_graph(&c, needed, names, err, errlen)) goto out;
    emit_probabilities(&c);
    for (int i = 0; i < x->n_meta; i++) onnx_add_meta(b, x->meta[i].key, x->meta[i].value);
    onnx_set_doc(b, x->graph_name, x->doc);
    rc = onnx_builder_write(b, path, err, errlen);
out:
    onnx_builder_free(b);
    free(needed);
    free(names);
    return rc;
}
