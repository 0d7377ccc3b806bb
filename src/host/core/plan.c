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
    unet_shape *shapes;  /* per value */
    int *act, *grad;     /* per value: tensor index or -1 */
    int *aux;            /* per node */
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
    p->tensors[p->n_tensors] = (plan_tensor){.bytes = (bytes + ALIGN - 1) / ALIGN * ALIGN, .first = first, .last = first};
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

unet_plan *unet_plan_compile(const unet_graph *g, unet_param_blocks *pb, unet_plan_cfg cfg, char *err,
                             size_t errlen) {
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
    p->g = g;
    p->pb = pb;
    p->b = pb->backend;
    p->cfg = cfg;
    p->shapes = shapes;
    const int NV = g->n_values, NN = g->n_nodes;
    p->act = xcalloc((size_t)NV, sizeof(int));
    p->grad = xcalloc((size_t)NV, sizeof(int));
    p->aux = xcalloc((size_t)NN, sizeof(int));
    for (int v = 0; v < NV; v++) p->act[v] = p->grad[v] = -1;
    for (int k = 0; k < NN; k++) p->aux[k] = -1;

    /* Forward steps: every node in order (the builder appends them in a
     * topological order); loss nodes only when training. */
    int *fwd_step = xcalloc((size_t)NN, sizeof(int)); /* node -> step, -1 when inactive */
    int *fwd_nodes = xcalloc((size_t)NN, sizeof(int));
    for (int k = 0; k < NN; k++) {
        fwd_step[k] = -1;
        if (!cfg.training && unet_op_is_loss(g->nodes[k].op)) continue;
        fwd_step[k] = p->n_fwd;
        fwd_nodes[p->n_fwd++] = k;
    }

    /* Backward derivation: which values need a gradient, which nodes run a
     * backward, in reverse order, and who writes a gradient first. */
    char *requires = xcalloc((size_t)NV, 1), *has_grad = xcalloc((size_t)NV, 1), *written = xcalloc((size_t)NV, 1);
    int *bwd_step = xcalloc((size_t)NN, sizeof(int));
    int *bwd_nodes = xcalloc((size_t)NN, sizeof(int));
    int has_loss = 0;
    for (int k = 0; k < NN; k++) {
        bwd_step[k] = -1;
        if (fwd_step[k] >= 0 && unet_op_is_loss(g->nodes[k].op)) has_loss = 1;
    }
    int end = p->n_fwd; /* the step after the last, updated once backward is known */
    if (cfg.training) {
        for (int i = 0; i < g->n_inputs; i++) requires[g->inputs[i].value] = (char)g->inputs[i].requires_grad;
        for (int k = 0; k < NN; k++) {
            const unet_node *n = &g->nodes[k];
            int r = 0;
            for (int i = 0; i < n->n_in; i++) r |= requires[n->in[i]];
            for (int j = 0; j < UNET_MAX_PARAM; j++)
                if (n->param[j] >= 0 && g->params[n->param[j]].kind == UNET_PARAM_TRAINABLE) r = 1;
            requires[n->out_value] = (char)r;
        }
        if (!has_loss)
            for (int o = 0; o < g->n_outputs; o++) {
                has_grad[g->outputs[o]] = requires[g->outputs[o]];
                written[g->outputs[o]] = 1; /* the caller's gradient is there first */
            }
        for (int k = NN - 1; k >= 0; k--) {
            const unet_node *n = &g->nodes[k];
            if (fwd_step[k] < 0 || !requires[n->out_value]) continue;
            if (!unet_op_is_loss(n->op) && !has_grad[n->out_value]) continue;
            bwd_step[k] = p->n_fwd + p->n_bwd;
            bwd_nodes[p->n_bwd++] = k;
            for (int i = 0; i < n->n_in; i++)
                if (requires[n->in[i]] && !(unet_op_is_loss(n->op) && i > 0)) has_grad[n->in[i]] = 1;
        }
        end = p->n_fwd + p->n_bwd;
    }

    /* Tensors and their lifetimes. */
    const unet_backend *b = p->b;
    for (int i = 0; i < g->n_inputs; i++) {
        int v = g->inputs[i].value;
        p->act[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], input_dtype(g->inputs[i].kind)), 0);
        /* inputs keep their memory for the whole step: a caller may set them
         * once and run many steps (benchmarks, inference of one batch) */
        use(p, p->act[v], end);
        if (has_grad[v]) {
            p->grad[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], UNET_F32), p->n_fwd);
            use(p, p->grad[v], end); /* read by the caller after backward */
        }
    }
    for (int s = 0; s < p->n_fwd; s++) {
        int k = fwd_nodes[s];
        const unet_node *n = &g->nodes[k];
        int v = n->out_value;
        /* a loss value is float32 whatever the backend's precision */
        unet_dtype t = unet_op_is_loss(n->op) ? UNET_F32_EXACT : UNET_F32;
        p->act[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], t), s);
        if (has_grad[v]) p->grad[v] = new_tensor(p, b->tensor_bytes(b, p->shapes[v], UNET_F32), end);
        for (int i = 0; i < n->n_in; i++) {
            use(p, p->act[n->in[i]], s);
            if (bwd_step[k] >= 0 && unet_backward_reads_inputs(n)) use(p, p->act[n->in[i]], bwd_step[k]);
        }
        if (bwd_step[k] >= 0 && unet_backward_reads_output(n)) use(p, p->act[v], bwd_step[k]);
        if (unet_op_is_loss(n->op)) use(p, p->act[v], end);
    }
    for (int o = 0; o < g->n_outputs; o++) use(p, p->act[g->outputs[o]], end);
    for (int s = 0; s < p->n_bwd; s++) {
        int k = bwd_nodes[s];
        const unet_node *n = &g->nodes[k];
        use(p, p->grad[n->out_value], bwd_step[k]);
        for (int i = 0; i < n->n_in; i++) use(p, p->grad[n->in[i]], bwd_step[k]);
    }
    if (!has_loss)
        for (int o = 0; o < g->n_outputs; o++) use(p, p->grad[g->outputs[o]], p->n_fwd);

    /* Per-node args (shapes first: the backends size workspace and aux from them). */
    p->fwd = xcalloc((size_t)p->n_fwd, sizeof *p->fwd);
    p->bwd = xcalloc((size_t)p->n_bwd, sizeof *p->bwd);
    size_t ws = 0;
    for (int s = 0; s < p->n_fwd; s++) {
        int k = fwd_nodes[s];
        const unet_node *n = &g->nodes[k];
        unet_op_args *a = &p->fwd[s];
        const unet_op_impl *impl = b->ops[n->op];
        if (!impl || !impl->forward || (bwd_step[k] >= 0 && !impl->backward)) {
            snprintf(err, errlen, "the %s backend has no %s for op %s", b->name,
                     impl && impl->forward ? "backward" : "forward", unet_op_name(n->op));
            goto fail;
        }
        a->node = n;
        a->node_index = k;
        a->backend = b;
        a->training = cfg.training;
        a->n_in = n->n_in;
        a->replica_sum = cfg.replica_sum;
        for (int i = 0; i < n->n_in; i++) a->in_shape[i] = p->shapes[n->in[i]];
        a->out_shape = p->shapes[n->out_value];
        double (*flops)(const unet_node *, const unet_shape *, unet_shape) = unet_op_row_of(n->op)->flops;
        if (flops) p->flops += flops(n, a->in_shape, a->out_shape);
        size_t w = impl->workspace_bytes ? impl->workspace_bytes(a) : 0;
        if (w > ws) ws = w;
        size_t x = impl->aux_bytes ? impl->aux_bytes(a) : 0;
        if (x) {
            p->aux[k] = new_tensor(p, x, s);
            use(p, p->aux[k], bwd_step[k] >= 0 ? bwd_step[k] : s);
        }
    }

    for (int t = 0; t < p->n_tensors; t++) p->unplanned_bytes += p->tensors[t].bytes;
    /* the most bytes alive at any one step: no placement can use less */
    for (int step = 0; step <= end; step++) {
        size_t live = 0;
        for (int t = 0; t < p->n_tensors; t++)
            if (p->tensors[t].first <= step && step <= p->tensors[t].last) live += p->tensors[t].bytes;
        if (live > p->peak_live_bytes) p->peak_live_bytes = live;
    }
    p->arena_bytes = assign_offsets(p->tensors, p->n_tensors);
    p->workspace_bytes = ws;
    if (cfg.plan_only) goto done;
    p->arena = b->alloc(b, p->arena_bytes ? p->arena_bytes : ALIGN);
    p->workspace = b->alloc(b, ws ? ws : ALIGN);
    p->seed = b->alloc(b, sizeof *p->seed);
    if (!p->arena || !p->workspace || !p->seed) {
        snprintf(err, errlen, "out of %s memory: the plan needs %.1f MiB of activations and %.1f MiB of workspace "
                 "(try a smaller --batch or --tile)", b->name, p->arena_bytes / 1048576.0, ws / 1048576.0);
        goto fail;
    }
    b->memset0(b, p->seed, sizeof *p->seed); /* seed 0 until the caller sets one */
#define PTR(t) ((t) >= 0 ? (void *)(p->arena + p->tensors[t].offset) : NULL)
    for (int s = 0; s < p->n_fwd; s++) {
        int k = fwd_nodes[s];
        const unet_node *n = &g->nodes[k];
        unet_op_args *a = &p->fwd[s];
        for (int i = 0; i < n->n_in; i++) a->in[i] = PTR(p->act[n->in[i]]);
        a->out = PTR(p->act[n->out_value]);
        for (int j = 0; j < UNET_MAX_PARAM; j++)
            if (n->param[j] >= 0) {
                const unet_param *pr = &g->params[n->param[j]];
                a->param[j] = pb->params + pr->offset;
                a->dparam[j] = pb->grads ? pb->grads + pr->offset : NULL;
            }
        for (int j = 0; j < 2; j++)
            if (n->state[j] >= 0) a->state[j] = pb->state + g->params[n->state[j]].offset;
        a->aux = PTR(p->aux[k]);
        a->workspace = p->workspace;
        a->seed = p->seed;
        if (bwd_step[k] >= 0) {
            unet_op_args *ba = &p->bwd[bwd_step[k] - p->n_fwd];
            *ba = *a;
            for (int i = 0; i < n->n_in; i++) {
                if (!unet_backward_reads_inputs(n)) ba->in[i] = NULL;
                if (unet_op_is_loss(n->op) && i > 0) continue;
                ba->din[i] = PTR(p->grad[n->in[i]]);
            }
            if (!unet_backward_reads_output(n)) ba->out = NULL;
            ba->dout = unet_op_is_loss(n->op) ? NULL : PTR(p->grad[n->out_value]);
        }
    }
    /* Who writes each gradient first, in execution order: that one overwrites,
     * later consumers add. */
    for (int s = 0; s < p->n_bwd; s++) {
        unet_op_args *ba = &p->bwd[s];
        for (int i = 0; i < ba->n_in; i++) {
            if (!ba->din[i]) continue;
            int v = ba->node->in[i];
            ba->din_accumulate[i] = written[v];
            written[v] = 1;
        }
    }
#undef PTR
    if (cfg.training) gradient_readiness(p, bwd_step);
    for (int s = 0; s < p->n_fwd; s++)
        if (unet_op_is_loss(g->nodes[fwd_nodes[s]].op)) p->n_loss++;
    p->loss_nodes = xcalloc((size_t)p->n_loss, sizeof(int));
    p->loss_host = xcalloc((size_t)p->n_loss, sizeof(float));
    p->n_loss = 0;
    for (int s = 0; s < p->n_fwd; s++)
        if (unet_op_is_loss(g->nodes[fwd_nodes[s]].op)) p->loss_nodes[p->n_loss++] = fwd_nodes[s];
    size_t max_hw = 0;
    for (int i = 0; i < g->n_inputs; i++)
        if (g->inputs[i].kind == UNET_INPUT_WEIGHT) max_hw = unet_shape_count(p->shapes[g->inputs[i].value]);
    p->ones = xcalloc(max_hw, sizeof(float));
    for (size_t i = 0; i < max_hw; i++) p->ones[i] = 1.0f;
    /* Gradients of parameters whose node runs no backward stay zero. */
    if (cfg.training && pb->grads) b->memset0(b, pb->grads, pb->n_trainable * sizeof(float));
    goto done;
fail:
    unet_plan_free(p);
    p = NULL;
done:
    free(fwd_step);
    free(fwd_nodes);
    free(bwd_step);
    free(bwd_nodes);
    free(requires);
    free(has_grad);
    free(written);
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

static void *tensor_ptr(const unet_plan *p, int t) { return t >= 0 ? p->arena + p->tensors[t].offset : NULL; }

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
