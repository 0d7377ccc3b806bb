/* Layers as graph nodes under PyTorch's names (layers.h). The order in which
 * a layer adds its parameters and nodes is part of the model: parameters are
 * initialised by their index, so the plain models' layers keep theirs. */
#include <stdio.h>

#include "host/model/layers.h"

int unet_layer_param(unet_graph *g, const char *prefix, const char *what, int ndim, const int *dims, unet_init init,
                     int fan_in, unet_param_kind kind) {
    char name[UNET_NAME_LEN];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    return unet_graph_param(g, name, kind, ndim, dims, init, fan_in);
}

int unet_layer_conv(unet_graph *g, const char *name, int x, int cin, int cout, unet_conv_spec c) {
    unet_node n = unet_node_make(UNET_OP_CONV, name);
    n.n_in = 1;
    n.in[0] = x;
    int groups = c.groups > 1 ? c.groups : 1;
    n.k = c.k;
    n.stride = c.stride > 1 ? c.stride : 1;
    n.pad = c.same ? c.k / 2 : 0;
    n.groups = groups;
    n.out_c = cout;
    n.act = c.act;
    int wdims[4] = {cout, cin / groups, c.k, c.k}, bdims[1] = {cout};
    int fan_in = cin / groups * c.k * c.k;
    n.param[0] = unet_layer_param(g, name, "weight", 4, wdims, UNET_INIT_HE, fan_in, UNET_PARAM_TRAINABLE);
    if (c.bias) n.param[1] = unet_layer_param(g, name, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    return unet_graph_add(g, &n);
}

int unet_layer_batchnorm(unet_graph *g, const char *name, int x, int c, unet_act act, int frozen) {
    int dims[1] = {c};
    unet_node n = unet_node_make(UNET_OP_BATCHNORM, name);
    n.n_in = 1;
    n.in[0] = x;
    n.act = act;
    n.frozen = frozen;
    n.param[0] = unet_layer_param(g, name, "weight", 1, dims, UNET_INIT_ONE, 0, UNET_PARAM_TRAINABLE);
    n.param[1] = unet_layer_param(g, name, "bias", 1, dims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    n.state[0] = unet_layer_param(g, name, "running_mean", 1, dims, UNET_INIT_ZERO, 0, UNET_PARAM_STATE);
    n.state[1] = unet_layer_param(g, name, "running_var", 1, dims, UNET_INIT_ONE, 0, UNET_PARAM_STATE);
    return unet_graph_add(g, &n);
}

int unet_layer_simple(unet_graph *g, unet_op op, const char *name, int x) {
    unet_node n = unet_node_make(op, name);
    n.n_in = 1;
    n.in[0] = x;
    return unet_graph_add(g, &n);
}

int unet_layer_maxpool3s2(unet_graph *g, const char *name, int x) {
    unet_node n = unet_node_make(UNET_OP_MAXPOOL, name);
    n.n_in = 1;
    n.in[0] = x;
    n.k = 3;
    n.stride = 2;
    n.pad = 1;
    return unet_graph_add(g, &n);
}

int unet_layer_upsample_nearest(unet_graph *g, const char *name, int x) {
    unet_node n = unet_node_make(UNET_OP_UPSAMPLE2, name);
    n.n_in = 1;
    n.in[0] = x;
    n.upsample = UNET_UPSAMPLE_NEAREST;
    return unet_graph_add(g, &n);
}

int unet_layer_residual(unet_graph *g, const char *name, int a, int b, unet_act act) {
    unet_node n = unet_node_make(UNET_OP_CROP_ADD, name);
    n.n_in = 2;
    n.in[0] = a;
    n.in[1] = b;
    n.act = act;
    return unet_graph_add(g, &n);
}
