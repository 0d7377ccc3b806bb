/* The symbolic graph: values, nodes and the parameter table. */
#include <stdlib.h>
#include <string.h>

#include "host/core/graph_internal.h"

unet_node unet_node_make(unet_op op, const char *name) {
    unet_node n;
    memset(&n, 0, sizeof n);
    n.op = op;
    snprintf(n.name, sizeof n.name, "%s", name ? name : "");
    for (int i = 0; i < UNET_MAX_PARAM; i++) n.param[i] = -1;
    n.state[0] = n.state[1] = -1;
    n.stride = 1;
    n.groups = 1;
    n.eps = 1e-5f;
    n.momentum = 0.1f;
    n.scale = 1.0f;
    return n;
}

/* Growable arrays: graphs are built once, so doubling is plenty. */
#define GROW(arr, n, cap)                                                                                              \
    do {                                                                                                               \
        if ((n) == (cap)) {                                                                                            \
            (cap) = (cap) ? 2 * (cap) : 16;                                                                            \
            void *grown_ = realloc((arr), (size_t)(cap) * sizeof *(arr));                                              \
            if (!grown_) abort();                                                                                      \
            (arr) = grown_;                                                                                            \
        }                                                                                                              \
    } while (0)

unet_graph *unet_graph_new(void) {
    unet_graph *g = calloc(1, sizeof *g);
    if (!g) abort();
    return g;
}

void unet_graph_free(unet_graph *g) {
    if (!g) return;
    free(g->nodes);
    free(g->params);
    free(g->values);
    free(g->inputs);
    free(g->outputs);
    free(g);
}

static int new_value(unet_graph *g, int producer, int input_index) {
    GROW(g->values, g->n_values, g->cap_values);
    g->values[g->n_values] = (unet_value){.producer = producer, .input_index = input_index};
    return g->n_values++;
}

int unet_graph_input(unet_graph *g, const char *name, unet_input_kind kind, int channels, int requires_grad) {
    GROW(g->inputs, g->n_inputs, g->cap_inputs);
    unet_graph_input_desc *in = &g->inputs[g->n_inputs];
    memset(in, 0, sizeof *in);
    snprintf(in->name, sizeof in->name, "%s", name);
    in->kind = kind;
    in->channels = channels;
    in->requires_grad = requires_grad;
    in->value = new_value(g, -1, g->n_inputs);
    g->n_inputs++;
    return in->value;
}

int unet_graph_param(unet_graph *g, const char *name, unet_param_kind kind, int ndim, const int *dims, unet_init init,
                     int fan_in) {
    GROW(g->params, g->n_params, g->cap_params);
    unet_param *p = &g->params[g->n_params];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->count = 1;
    for (int i = 0; i < ndim; i++) {
        p->dims[i] = dims[i];
        p->count *= (size_t)dims[i];
    }
    p->kind = kind;
    p->init = init;
    p->fan_in = fan_in;
    /* Each tensor starts on a 64-byte boundary inside its block (vector loads,
     * cuDNN's alignment preferences); the gaps stay zero, parameters and
     * gradients alike. */
    size_t *block = kind == UNET_PARAM_TRAINABLE ? &g->trainable_count : &g->state_count;
    p->offset = *block;
    *block += (p->count + 15) / 16 * 16;
    if (kind == UNET_PARAM_TRAINABLE) g->trainable_params += p->count;
    return g->n_params++;
}

int unet_graph_add(unet_graph *g, const unet_node *node) {
    GROW(g->nodes, g->n_nodes, g->cap_nodes);
    g->nodes[g->n_nodes] = *node;
    int v = new_value(g, g->n_nodes, -1);
    g->nodes[g->n_nodes].out_value = v;
    g->n_nodes++;
    return v;
}

int unet_graph_mark_output(unet_graph *g, int value) {
    GROW(g->outputs, g->n_outputs, g->cap_outputs);
    g->outputs[g->n_outputs] = value;
    return g->n_outputs++;
}

int unet_graph_num_params(const unet_graph *g) { return g->n_params; }
const unet_param *unet_graph_params(const unet_graph *g) { return g->params; }
size_t unet_graph_trainable_count(const unet_graph *g) { return g->trainable_count; }
size_t unet_graph_state_count(const unet_graph *g) { return g->state_count; }
size_t unet_graph_trainable_params(const unet_graph *g) { return g->trainable_params; }
int unet_graph_num_nodes(const unet_graph *g) { return g->n_nodes; }
const unet_node *unet_graph_nodes(const unet_graph *g) { return g->nodes; }
int unet_graph_num_inputs(const unet_graph *g) { return g->n_inputs; }
int unet_graph_input_value(const unet_graph *g, int index) { return g->inputs[index].value; }
int unet_graph_num_outputs(const unet_graph *g) { return g->n_outputs; }
int unet_graph_output_value(const unet_graph *g, int index) { return g->outputs[index]; }
int unet_graph_num_values(const unet_graph *g) { return g->n_values; }
