/* The compiler and executor of a plan: backward derivation, liveness-based
 * memory planning into one arena, and the flat step arrays a training step
 * walks. All allocation happens here, at compile time. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "host/core/op_table.h"
#include "host/core/shapes.h"
#include "unet/plan.h"

#define ALIGN 256 /* arena offsets: enough for any vector load and cuDNN's alignment rules */

typedef struct {
    size_t bytes, offset;
    int first, last; /* step interval in which the tensor holds live data */
} plan_tensor;

struct unet_plan {
    const unet_graph *g;
    unet_param_blocks *pb;
    const unet_backend *b;
    unet_plan_cfg cfg;
    unet_shape *shapes; /* per value */
    int *act, *grad;    /* per value: tensor index or -1 */
    int *aux;           /* per node */
    plan_tensor *tensors;
    int n_tensors;
    char *arena;
    size_t arena_bytes, unplanned_bytes, peak_live_bytes;
    void *workspace;
    size_t workspace_bytes;
    unet_op_args *fwd, *bwd;
    int n_fwd, n_bwd;
    int *loss_nodes;
    int n_loss;
    float *loss_host; /* per loss node, read by unet_plan_loss */
    float *ones;      /* host: the weight map used when a batch has none */
    uint64_t *seed;   /* backend memory: the step's dropout seed, read by the ops when they run */
    double flops;
    /* after backward step s, gradients [ready_from[s], n_trainable) are final */
    size_t *ready_from;
    unet_grads_ready_fn grads_ready;
    void *grads_ready_ctx;
};

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) abort();
    return p;
}

/* How an input is held: labels int32, weight maps float32 in every precision, images as activations. */
static unet_dtype input_dtype(unet_input_kind kind) {
    return kind == UNET_INPUT_LABEL ? UNET_I32 : kind == UNET_INPUT_WEIGHT ? UNET_F32_EXACT : UNET_F32;
}

static int new_tensor(unet_plan *p, size_t bytes, int first) {
    p->tensors = realloc(p->tensors, (size_t)(p->n_tensors + 1) * sizeof *p->tensors);
    if (!p->tensors) abort();
    p->tensors[p->n_tensors] =
        (plan_tensor){.bytes = (bytes + ALIGN - 1) / ALIGN * ALIGN, .first = first, .last = first};
    return p->n_tensors++;
}

static void use(unet_plan *p, int t, int step) {
    if (t < 0) return;
    if (step < p->tensors[t].first) p->tensors[t].first = step;
    if (step > p->tensors[t].last) p->tensors[t].last = step;
}

/* Orders tried by the placement: largest first; longest-lived first; first
 * born first (ties by size). No single order wins on every graph, and trying
 * three is cheap next to a training run. */
typedef int (*tensor_order)(const plan_tensor *a, const plan_tensor *b);
static int by_size(const plan_tensor *a, const plan_tensor *b) {
    return a->bytes != b->bytes ? (a->bytes < b->bytes ? 1 : -1) : 0;
}
static int by_lifetime(const plan_tensor *a, const plan_tensor *b) {
    int la = a->last - a->first, lb = b->last - b->first;
    return la != lb ? lb - la : by_size(a, b);
}
static int by_birth(const plan_tensor *a, const plan_tensor *b) {
    return a->first != b->first ? a->first - b->first : by_size(a, b);
}

/* Each tensor, in the given order, goes to the lowest offset that overlaps no
 * already-placed tensor alive at the same time. Writes offsets, returns the
 * arena size. */
static size_t place(plan_tensor *t, int n, tensor_order order) {
    int *idx = xcalloc((size_t)n, sizeof *idx);
    for (int i = 0; i < n; i++) idx[i] = i;
    /* insertion sort: stable and deterministic; n is a few hundred */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && order(&t[idx[j - 1]], &t[idx[j]]) > 0; j--) {
            int tmp = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = tmp;
        }
    size_t total = 0;
    for (int k = 0; k < n; k++) {
        plan_tensor *x = &t[idx[k]];
        size_t offset = 0;
        for (int moved = 1; moved;) {
            moved = 0;
            for (int q = 0; q < k; q++) {
                plan_tensor *y = &t[idx[q]];
                int overlap_time = !(x->last < y->first || y->last < x->first);
                int overlap_space = offset < y->offset + y->bytes && y->offset < offset + x->bytes;
                if (overlap_time && overlap_space) {
                    offset = y->offset + y->bytes;
                    moved = 1;
                }
            }
        }
        x->offset = offset;
        if (offset + x->bytes > total) total = offset + x->bytes;
    }
    free(idx);
    return total;
}

static size_t assign_offsets(plan_tensor *t, int n) {
    static const tensor_order orders[] = {by_size, by_lifetime, by_birth};
    int best = 0;
    size_t best_total = (size_t)-1;
    for (int o = 0; o < 3; o++) {
        size_t total = place(t, n, orders[o]);
        if (total < best_total) best_total = total, best = o;
    }
    return place(t, n, orders[best]);
}

/* Where the final part of the gradient block begins after each backward
 * step: a parameter's gradient is final once its node's backward has run (a
 * parameter whose node runs none keeps the zeros set at compile time), and the
 * final part is the longest tail of the block, in offsets, whose parameters
 * are all final. Alignment gaps hold zeros and belong to whichever range
 * covers them. */
static void gradient_readiness(unet_plan *p, const int *bwd_step) {
    const unet_graph *g = p->g;
    int *done = xcalloc((size_t)g->n_params, sizeof(int)); /* backward index that finishes it; -1: from the start */
    int *order = xcalloc((size_t)g->n_params, sizeof(int));
    int n = 0;
    for (int k = 0; k < g->n_params; k++) done[k] = -1;
    for (int k = 0; k < g->n_nodes; k++)
        for (int j = 0; j < UNET_MAX_PARAM; j++) {
            int q = g->nodes[k].param[j];
            if (q >= 0 && bwd_step[k] >= 0) done[q] = bwd_step[k] - p->n_fwd;
        }
    for (int k = 0; k < g->n_params; k++)
        if (g->params[k].kind == UNET_PARAM_TRAINABLE) order[n++] = k;
    /* highest offset first; insertion sort, n is a few hundred */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && g->params[order[j - 1]].offset < g->params[order[j]].offset; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    p->ready_from = xcalloc((size_t)p->n_bwd, sizeof(size_t));
    int i = 0;
    for (int s = 0; s < p->n_bwd; s++) {
        while (i < n && done[order[i]] <= s) i++;
        p->ready_from[s] = i == n ? 0 : g->params[order[i]].offset + g->params[order[i]].count;
    }
    free(done);
    free(order);
}

/* What the compiler's stages hand one another, freed once the plan is built. */
typedef struct {
    int *fwd_nodes, *bwd_nodes; /* forward step -> node; backward step (from 0) -> node */
    /* node -> the step that runs its forward, its backward; -1: none. Steps
     * number on through the backward: the backward's first is n_fwd. */
    int *fwd_step, *bwd_step;
    char *has_grad; /* per value: a gradient tensor is computed for it */
    int has_loss;   /* losses run: the backward starts from them, not from gradients the caller sets */
    int end;        /* the step after the last */
} schedule;

static schedule schedule_new(const unet_graph *g) {
    schedule s = {
        .fwd_nodes = xcalloc((size_t)g->n_nodes, sizeof(int)),
        .bwd_nodes = xcalloc((size_t)g->n_nodes, sizeof(int)),
        .fwd_step = xcalloc((size_t)g->n_nodes, sizeof(int)),
        .bwd_step = xcalloc((size_t)g->n_nodes, sizeof(int)),
        .has_grad = xcalloc((size_t)g->n_values, 1),
    };
    for (int k = 0; k < g->n_nodes; k++) s.fwd_step[k] = s.bwd_step[k] = -1;
    return s;
}

static void schedule_free(schedule *s) {
    free(s->fwd_nodes);
    free(s->bwd_nodes);
    free(s->fwd_step);
    free(s->bwd_step);
    free(s->has_grad);
}

/* Forward steps: every node in graph order, which the builder keeps
 * topological; losses only when training, where they are what the backward
 * starts from. */
static void order_forward(unet_plan *p, schedule *s) {
    const unet_graph *g = p->g;
    for (int k = 0; k < g->n_nodes; k++) {
        if (!p->cfg.training && unet_op_is_loss(g->nodes[k].op)) continue;
        s->fwd_step[k] = p->n_fwd;
        s->fwd_nodes[p->n_fwd++] = k;
        if (unet_op_is_loss(g->nodes[k].op)) s->has_loss = 1;
    }
    s->end = p->n_fwd;
}

/* Backward steps, when training: which values need a gradient (those that
 * depend on a trainable parameter or an input that asks for one), and which
 * nodes then run a backward, in reverse graph order. A node runs one when a
 * gradient reaches its output: from a loss, or, in a graph without losses (op
 * tests), from the gradient the caller sets on an output. A loss passes none
 * to its labels and weights. */
static void derive_backward(unet_plan *p, schedule *s) {
    const unet_graph *g = p->g;
    if (!p->cfg.training) return;
    char *requires = xcalloc((size_t)g->n_values, 1);
    for (int i = 0; i < g->n_inputs; i++) requires[g->inputs[i].value] = (char)g->inputs[i].requires_grad;
    for (int k = 0; k < g->n_nodes; k++) {
        const unet_node *n = &g->nodes[k];
        int r = 0;
        for (int i = 0; i < n->n_in; i++) r |= requires[n->in[i]];
        for (int j = 0; j < UNET_MAX_PARAM; j++)
            if (n->param[j] >= 0 && g->params[n->param[j]].kind == UNET_PARAM_TRAINABLE) r = 1;
        requires[n->out_value] = (char)r;
    }
    if (!s->has_loss)
        for (int o = 0; o < g->n_outputs; o++) s->has_grad[g->outputs[o]] = requires[g->outputs[o]];
    for (int k = g->n_nodes - 1; k >= 0; k--) {
        const unet_node *n = &g->nodes[k];
        if (s->fwd_step[k] < 0 || !requires[n->out_value]) continue;
        if (!unet_op_is_loss(n->op) && !s->has_grad[n->out_value]) continue;
        s->bwd_step[k] = p->n_fwd + p->n_bwd;
        s->bwd_nodes[p->n_bwd++] = k;
        for (int i = 0; i < n->n_in; i++)
            if (requires[n->in[i]] && !(unet_op_is_loss(n->op) && i > 0)) s->has_grad[n->in[i]] = 1;
    }
    s->end = p->n_fwd + p->n_bwd;
    free(requires);
}

/* Every activation and gradient as a tensor, alive from the step that writes
 * it to the last that reads it. A backward keeps alive only the forward
 * tensors its op reads (op_table.c): the others' memory can be reused
 * before it runs. */
static void tensor_lifetimes(unet_plan *p, const schedule *s) {
    const unet_graph *g = p->g;
    const unet_backend *b = p->b;
    for (int i = 0; i < g->n_inputs; i++) {
        int v = g->inputs[i].value;
        p->act[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], input_dtype(g->inputs[i].kind)), 0);
        /* inputs keep their memory for the whole step: a caller may set them
         * once and run many steps (benchmarks, inference of one batch) */
        use(p, p->act[v], s->end);
        if (s->has_grad[v]) {
            p->grad[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], UNET_F32), p->n_fwd);
            use(p, p->grad[v], s->end); /* read by the caller after backward */
        }
    }
    for (int f = 0; f < p->n_fwd; f++) {
        int k = s->fwd_nodes[f], back = s->bwd_step[k];
        const unet_node *n = &g->nodes[k];
        int v = n->out_value;
        /* a loss value is float32 whatever the backend's precision */
        unet_dtype t = unet_op_is_loss(n->op) ? UNET_F32_EXACT : UNET_F32;
        p->act[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], t), f);
        if (s->has_grad[v]) p->grad[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], UNET_F32), s->end);
        for (int i = 0; i < n->n_in; i++) {
            use(p, p->act[n->in[i]], f);
            if (back >= 0 && unet_backward_reads_inputs(n)) use(p, p->act[n->in[i]], back);
        }
        if (back >= 0 && unet_backward_reads_output(n)) use(p, p->act[v], back);
        if (unet_op_is_loss(n->op)) use(p, p->act[v], s->end);
    }
    for (int o = 0; o < g->n_outputs; o++) use(p, p->act[g->outputs[o]], s->end);
    for (int i = 0; i < p->n_bwd; i++) {
        int k = s->bwd_nodes[i];
        const unet_node *n = &g->nodes[k];
        use(p, p->grad[n->out_value], s->bwd_step[k]);
        for (int j = 0; j < n->n_in; j++) use(p, p->grad[n->in[j]], s->bwd_step[k]);
    }
    if (!s->has_loss)
        for (int o = 0; o < g->n_outputs; o++) use(p, p->grad[g->outputs[o]], p->n_fwd);
}

/* Each forward step's args without pointers, which the backend sizes its
 * memory from: the workspace all nodes share (the largest any asks), and a
 * node's saved data (aux: batch statistics, dropout masks), a tensor alive
 * from its forward to its backward. Counts the FLOPs on the way. Fails when
 * the backend lacks a kernel the plan runs. */
static int describe_nodes(unet_plan *p, const schedule *s, char *err, size_t errlen) {
    const unet_graph *g = p->g;
    const unet_backend *b = p->b;
    p->fwd = xcalloc((size_t)p->n_fwd, sizeof *p->fwd);
    p->bwd = xcalloc((size_t)p->n_bwd, sizeof *p->bwd);
    for (int f = 0; f < p->n_fwd; f++) {
        int k = s->fwd_nodes[f], back = s->bwd_step[k];
        const unet_node *n = &g->nodes[k];
        unet_op_args *a = &p->fwd[f];
        const unet_op_impl *impl = b->ops[n->op];
        if (!impl || !impl->forward || (back >= 0 && !impl->backward)) {
            snprintf(err, errlen, "the %s backend has no %s for op %s", b->name,
                     impl && impl->forward ? "backward" : "forward", unet_op_name(n->op));
            return -1;
        }
        a->node = n;
        a->node_index = k;
        a->backend = b;
        a->training = p->cfg.training;
        a->sizing_only = p->cfg.plan_only;
        a->n_in = n->n_in;
        a->replica_sum = p->cfg.replica_sum;
        for (int i = 0; i < n->n_in; i++) a->in_shape[i] = p->shapes[n->in[i]];
        a->out_shape = p->shapes[n->out_value];
        double (*flops)(const unet_node *, const unet_shape *, unet_shape) = unet_op_row_of(n->op)->flops;
        if (flops) p->flops += flops(n, a->in_shape, a->out_shape);
        size_t w = impl->workspace_bytes ? impl->workspace_bytes(a) : 0;
        if (w > p->workspace_bytes) p->workspace_bytes = w;
        size_t x = impl->aux_bytes ? impl->aux_bytes(a) : 0;
        if (x) {
            p->aux[k] = new_tensor(p, x, f);
            use(p, p->aux[k], back >= 0 ? back : f);
        }
    }
    return 0;
}

/* Offsets in the arena for every tensor, and the statistics that say how well
 * they pack: what no reuse would take, and the most alive at one step, which
 * no placement can beat. */
static void place_tensors(unet_plan *p, int end) {
    for (int t = 0; t < p->n_tensors; t++) p->unplanned_bytes += p->tensors[t].bytes;
    for (int step = 0; step <= end; step++) {
        size_t live = 0;
        for (int t = 0; t < p->n_tensors; t++)
            if (p->tensors[t].first <= step && step <= p->tensors[t].last) live += p->tensors[t].bytes;
        if (live > p->peak_live_bytes) p->peak_live_bytes = live;
    }
    p->arena_bytes = assign_offsets(p->tensors, p->n_tensors);
}

/* The plan's backend memory: the arena, the workspace, the step's seed. */
static int allocate(unet_plan *p, char *err, size_t errlen) {
    const unet_backend *b = p->b;
    p->arena = b->alloc(b, p->arena_bytes ? p->arena_bytes : ALIGN);
    p->workspace = b->alloc(b, p->workspace_bytes ? p->workspace_bytes : ALIGN);
    p->seed = b->alloc(b, sizeof *p->seed);
    if (!p->arena || !p->workspace || !p->seed) {
        snprintf(err, errlen,
                 "out of %s memory: the plan needs %.1f MiB of activations and %.1f MiB of workspace "
                 "(try a smaller --batch or --tile)",
                 b->name, p->arena_bytes / 1048576.0, p->workspace_bytes / 1048576.0);
        return -1;
    }
    b->memset0(b, p->seed, sizeof *p->seed); /* seed 0 until the caller sets one */
    return 0;
}

static void *tensor_ptr(const unet_plan *p, int t) { return t >= 0 ? p->arena + p->tensors[t].offset : NULL; }

/* Every pointer a step needs, resolved once. A backward's args are its
 * forward's, less the forward tensors its op does not read (NULL: their
 * memory may hold something else by then), plus the gradients. */
static void bind_pointers(unet_plan *p, const schedule *s) {
    const unet_graph *g = p->g;
    const unet_param_blocks *pb = p->pb;
    for (int f = 0; f < p->n_fwd; f++) {
        int k = s->fwd_nodes[f];
        const unet_node *n = &g->nodes[k];
        unet_op_args *a = &p->fwd[f];
        for (int i = 0; i < n->n_in; i++) a->in[i] = tensor_ptr(p, p->act[n->in[i]]);
        a->out = tensor_ptr(p, p->act[n->out_value]);
        for (int j = 0; j < UNET_MAX_PARAM; j++)
            if (n->param[j] >= 0) {
                const unet_param *pr = &g->params[n->param[j]];
                a->param[j] = pb->params + pr->offset;
                a->dparam[j] = pb->grads ? pb->grads + pr->offset : NULL;
            }
        for (int j = 0; j < 2; j++)
            if (n->state[j] >= 0) a->state[j] = pb->state + g->params[n->state[j]].offset;
        a->aux = tensor_ptr(p, p->aux[k]);
        a->workspace = p->workspace;
        a->seed = p->seed;
        if (s->bwd_step[k] < 0) continue;
        unet_op_args *ba = &p->bwd[s->bwd_step[k] - p->n_fwd];
        *ba = *a;
        for (int i = 0; i < n->n_in; i++) {
            if (!unet_backward_reads_inputs(n)) ba->in[i] = NULL;
            if (unet_op_is_loss(n->op) && i > 0) continue;
            ba->din[i] = tensor_ptr(p, p->grad[n->in[i]]);
        }
        if (!unet_backward_reads_output(n)) ba->out = NULL;
        ba->dout = unet_op_is_loss(n->op) ? NULL : tensor_ptr(p, p->grad[n->out_value]);
    }
}

/* Who writes each gradient first, in execution order: that one overwrites,
 * later consumers add. Without losses the caller's output gradient is there
 * before any. */
static void mark_accumulating_gradients(unet_plan *p, const schedule *s) {
    const unet_graph *g = p->g;
    char *written = xcalloc((size_t)g->n_values, 1);
    if (!s->has_loss)
        for (int o = 0; o < g->n_outputs; o++) written[g->outputs[o]] = 1;
    for (int step = 0; step < p->n_bwd; step++) {
        unet_op_args *ba = &p->bwd[step];
        for (int i = 0; i < ba->n_in; i++) {
            if (!ba->din[i]) continue;
            int v = ba->node->in[i];
            ba->din_accumulate[i] = written[v];
            written[v] = 1;
        }
    }
    free(written);
}

/* The loss nodes, in forward order, which unet_plan_loss reads back. */
static void find_losses(unet_plan *p, const schedule *s) {
    const unet_graph *g = p->g;
    p->loss_nodes = xcalloc((size_t)p->n_fwd, sizeof(int));
    for (int f = 0; f < p->n_fwd; f++)
        if (unet_op_is_loss(g->nodes[s->fwd_nodes[f]].op)) p->loss_nodes[p->n_loss++] = s->fwd_nodes[f];
    p->loss_host = xcalloc((size_t)p->n_loss, sizeof(float));
}

/* The weight map uploaded when a batch brings none: all ones. */
static void default_weights(unet_plan *p) {
    const unet_graph *g = p->g;
    size_t max_hw = 0;
    for (int i = 0; i < g->n_inputs; i++)
        if (g->inputs[i].kind == UNET_INPUT_WEIGHT) max_hw = unet_shape_count(p->shapes[g->inputs[i].value]);
    p->ones = xcalloc(max_hw, sizeof(float));
    for (size_t i = 0; i < max_hw; i++) p->ones[i] = 1.0f;
}

/* The compiler's stages in order. A plan_only plan stops once its memory is
 * planned. */
static int build(unet_plan *p, schedule *s, char *err, size_t errlen) {
    order_forward(p, s);
    derive_backward(p, s);
    tensor_lifetimes(p, s);
    if (describe_nodes(p, s, err, errlen)) return -1;
    place_tensors(p, s->end);
    if (p->cfg.plan_only) return 0;
    if (allocate(p, err, errlen)) return -1;
    bind_pointers(p, s);
    mark_accumulating_gradients(p, s);
    if (p->cfg.training) gradient_readiness(p, s->bwd_step);
    find_losses(p, s);
    default_weights(p);
    /* Gradients of parameters whose node runs no backward stay zero. */
    if (p->cfg.training && p->pb->grads) p->b->memset0(p->b, p->pb->grads, p->pb->n_trainable * sizeof(float));
    return 0;
}

unet_plan *unet_plan_compile(const unet_graph *g, unet_param_blocks *pb, unet_plan_cfg cfg, char *err, size_t errlen) {
    if (cfg.batch < 1) {
        snprintf(err, errlen, "batch size must be at least 1, got %d", cfg.batch);
        return NULL;
    }
    unet_shape *shapes = xcalloc((size_t)g->n_values, sizeof *shapes);
    if (unet_infer_tile(g, cfg, shapes, err, errlen)) {
        free(shapes);
        return NULL;
    }
    unet_plan *p = xcalloc(1, sizeof *p);
    *p = (unet_plan){.g = g, .pb = pb, .b = pb->backend, .cfg = cfg, .shapes = shapes};
    p->act = xcalloc((size_t)g->n_values, sizeof(int));
    p->grad = xcalloc((size_t)g->n_values, sizeof(int));
    p->aux = xcalloc((size_t)g->n_nodes, sizeof(int));
    for (int v = 0; v < g->n_values; v++) p->act[v] = p->grad[v] = -1;
    for (int k = 0; k < g->n_nodes; k++) p->aux[k] = -1;
    schedule s = schedule_new(g);
    int rc = build(p, &s, err, errlen);
    schedule_free(&s);
    if (rc) {
        unet_plan_free(p);
        return NULL;
    }
    return p;
}

void unet_plan_free(unet_plan *p) {
    if (!p) return;
    if (p->arena) p->b->free(p->b, p->arena);
    if (p->workspace) p->b->free(p->b, p->workspace);
    if (p->seed) p->b->free(p->b, p->seed);
    free(p->shapes);
    free(p->act);
    free(p->grad);
    free(p->aux);
    free(p->tensors);
    free(p->fwd);
    free(p->bwd);
    free(p->loss_nodes);
    free(p->loss_host);
    free(p->ones);
    free(p->ready_from);
    free(p);
}

void unet_plan_set_inputs(unet_plan *p, const float *image, const int32_t *label, const float *weight) {
    const unet_graph *g = p->g;
    for (int i = 0; i < g->n_inputs; i++) {
        int v = g->inputs[i].value;
        void *dst = tensor_ptr(p, p->act[v]);
        unet_shape s = p->shapes[v];
        switch (g->inputs[i].kind) {
        case UNET_INPUT_IMAGE:
            if (image) p->b->upload(p->b, dst, image, s, UNET_F32);
            break;
        case UNET_INPUT_LABEL:
            if (label) p->b->upload(p->b, dst, label, s, UNET_I32);
            break;
        case UNET_INPUT_WEIGHT:
            p->b->upload(p->b, dst, weight ? weight : p->ones, s, UNET_F32_EXACT);
            break;
        }
    }
}

/* Op tests feed several float inputs: the n-th image-kind input takes the n-th array. */
void unet_plan_set_input(unet_plan *p, int input_index, const void *host) {
    int v = p->g->inputs[input_index].value;
    p->b->upload(p->b, tensor_ptr(p, p->act[v]), host, p->shapes[v], input_dtype(p->g->inputs[input_index].kind));
}

void unet_plan_set_seed(unet_plan *p, uint64_t seed) { p->b->upload_bytes(p->b, p->seed, &seed, sizeof seed); }

void unet_plan_set_first_sample(unet_plan *p, uint64_t first_sample) {
    for (int s = 0; s < p->n_fwd; s++) p->fwd[s].first_sample = first_sample;
    for (int s = 0; s < p->n_bwd; s++) p->bwd[s].first_sample = first_sample;
}

/* Nothing here waits for the backend: the same walk is what a CUDA graph
 * records (src/host/train/step.c). */
void unet_plan_forward(unet_plan *p) {
    for (int s = 0; s < p->n_fwd; s++) p->b->ops[p->fwd[s].node->op]->forward(&p->fwd[s]);
}

void unet_plan_backward(unet_plan *p) {
    size_t final_from = p->pb->n_trainable;
    for (int s = 0; s < p->n_bwd; s++) {
        p->b->ops[p->bwd[s].node->op]->backward(&p->bwd[s]);
        if (p->grads_ready && p->ready_from[s] < final_from) {
            p->grads_ready(p->grads_ready_ctx, p->ready_from[s], final_from);
            final_from = p->ready_from[s];
        }
    }
    if (p->grads_ready && final_from > 0) p->grads_ready(p->grads_ready_ctx, 0, final_from);
}

void unet_plan_on_grads_ready(unet_plan *p, unet_grads_ready_fn fn, void *ctx) {
    p->grads_ready = fn;
    p->grads_ready_ctx = ctx;
}

void unet_plan_set_output_grad(unet_plan *p, int index, const float *host) {
    int v = p->g->outputs[index];
    if (p->grad[v] >= 0) p->b->upload(p->b, tensor_ptr(p, p->grad[v]), host, p->shapes[v], UNET_F32);
}

double unet_plan_loss(unet_plan *p, double *per_head) {
    double total = 0;
    for (int l = 0; l < p->n_loss; l++) {
        const unet_node *n = &p->g->nodes[p->loss_nodes[l]];
        p->b->download(p->b, &p->loss_host[l], tensor_ptr(p, p->act[n->out_value]), (unet_shape){1, 1, 1, 1},
                       UNET_F32_EXACT);
        if (per_head) per_head[l] = p->loss_host[l];
        total += (double)n->scale * p->loss_host[l];
    }
    return total;
}

int unet_plan_num_outputs(const unet_plan *p) { return p->g->n_outputs; }
unet_shape unet_plan_output_shape(const unet_plan *p, int index) { return p->shapes[p->g->outputs[index]]; }
unet_shape unet_plan_value_shape(const unet_plan *p, int value) { return p->shapes[value]; }
unet_shape unet_plan_input_shape(const unet_plan *p, int input_index) {
    return p->shapes[p->g->inputs[input_index].value];
}

void *unet_plan_input_data(unet_plan *p, unet_input_kind kind) {
    for (int i = 0; i < p->g->n_inputs; i++)
        if (p->g->inputs[i].kind == kind) return tensor_ptr(p, p->act[p->g->inputs[i].value]);
    return NULL;
}

void unet_plan_read_output(unet_plan *p, int index, float *host) {
    int v = p->g->outputs[index];
    p->b->download(p->b, host, tensor_ptr(p, p->act[v]), p->shapes[v], UNET_F32);
}

void unet_plan_read_input_grad(unet_plan *p, int input_index, float *host) {
    int v = p->g->inputs[input_index].value;
    if (p->grad[v] >= 0) p->b->download(p->b, host, tensor_ptr(p, p->grad[v]), p->shapes[v], UNET_F32);
}

unet_plan_stats unet_plan_get_stats(const unet_plan *p) {
    unet_plan_stats s;
    memset(&s, 0, sizeof s);
    s.arena_bytes = p->arena_bytes;
    s.unplanned_bytes = p->unplanned_bytes;
    s.peak_live_bytes = p->peak_live_bytes;
    s.workspace_bytes = p->workspace_bytes;
    /* parameters, gradients and one optimizer block (SGD momentum); Adam's second moment when allocated */
    size_t blocks = 3 + (p->pb->opt_b ? 1 : 0);
    s.param_bytes = (p->g->trainable_count * blocks + p->g->state_count) * sizeof(float);
    s.n_tensors = p->n_tensors;
    s.n_steps = p->n_fwd + p->n_bwd;
    s.forward_flops = p->flops;
    return s;
}
