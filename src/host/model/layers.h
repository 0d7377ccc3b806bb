/* Layers as graph nodes with their parameters under PyTorch's names: what the
 * grid builder (build.c) and the backbones (encoders.c) share. Model-internal. */
#ifndef UNET_MODEL_LAYERS_H
#define UNET_MODEL_LAYERS_H

#include "unet/graph.h"

/* A k x k convolution of cin -> cout channels, padded by k/2 (same) or 0 (valid). groups: 1, or cin for a
 * depthwise convolution. bias: a bias parameter (smp's and torchvision's convolutions before a batch norm have
 * none). */
typedef struct {
    int k, stride, groups, bias, same;
    unet_act act;
} unet_conv_spec;

/* "<prefix>.<what>": a parameter of the layer `prefix`. */
int unet_layer_param(unet_graph *g, const char *prefix, const char *what, int ndim, const int *dims, unet_init init,
                     int fan_in, unet_param_kind kind);
/* The convolution `name` (parameters name.weight [cout, cin / groups, k, k], name.bias) on value x. */
int unet_layer_conv(unet_graph *g, const char *name, int x, int cin, int cout, unet_conv_spec c);
/* The batch norm `name` (name.weight, .bias, .running_mean, .running_var) over c channels. frozen: it normalises
 * with the running statistics in training too, and leaves them as they are. */
int unet_layer_batchnorm(unet_graph *g, const char *name, int x, int c, unet_act act, int frozen);
/* An op of one input and no parameters (pooling, upsampling, ReLU, dropout). */
int unet_layer_simple(unet_graph *g, unet_op op, const char *name, int x);
/* ResNet's stem pooling: 3x3 max-pooling, stride 2, padding 1. */
int unet_layer_maxpool3s2(unet_graph *g, const char *name, int x);
/* smp's decoder upsampling: nearest x2, no parameters. */
int unet_layer_upsample_nearest(unet_graph *g, const char *name, int x);
/* A residual sum a + b of equal shapes, then an activation (fused). */
int unet_layer_residual(unet_graph *g, const char *name, int a, int b, unet_act act);

#endif
