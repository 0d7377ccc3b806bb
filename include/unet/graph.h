/* The static computation graph: nodes on symbolic values, compiled once for a
 * batch and tile size into a plan (shapes, backward pass, memory offsets).
 *
 * A graph knows no sizes: values get their shapes when a plan is compiled.
 * It includes no CUDA, cuDNN, NCCL or HDF5 header. */
#ifndef UNET_GRAPH_H
#define UNET_GRAPH_H

#include "unet/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_MAX_IN    8 /* UNet++ X^{0,4}: the upsampled tensor and 4 skips */
#define UNET_MAX_PARAM 2 /* weight and bias (conv), gamma and beta (batch norm) */
#define UNET_NAME_LEN  64

/* The ops and their attributes (the fields of unet_node below), as PyTorch,
 * ONNX and cuDNN name them:
 *
 *   conv        Conv2d(in, out_c, k, stride, pad, groups, bias = param[1] >= 0), then act.
 *               k >= 1, stride >= 1, pad >= 0 on every side, zeros (PyTorch's padding = pad);
 *               out = (in + 2 pad - k) / stride + 1, rounded down. groups: 1, or the input
 *               channels with out_c equal to them (depthwise). Weight [out_c, in / groups, k, k]
 *               (PyTorch's OIHW); bias [out_c], or param[1] = -1 for none (a batch norm follows).
 *               ONNX Conv (kernel_shape, strides, pads, group) + Relu / Clip(0, 6).
 *   maxpool     MaxPool2d(k, stride, pad): padding counts as -inf, out = (in + 2 pad - k) /
 *               stride + 1 rounded down (ceil_mode False), pad <= k / 2; the gradient goes to
 *               the first maximum of a window in row-major order, a NaN being a maximum.
 *               ResNet's stem takes k 3, stride 2, pad 1. ONNX MaxPool.
 *   maxpool2    the 2x2 stride-2 special case of U-Net's encoder (even sizes only).
 *   crop_add    with equal shapes, a residual sum x0 + x1 (+ ...), in input order, then act
 *               (ResNet: relu; MobileNetV2's inverted residual: none). ONNX Add + Relu.
 *   upsample2   x2, mode upsample: bilinear with align_corners False (U-Net), or nearest
 *               (smp's decoders: F.interpolate(scale_factor = 2, mode = "nearest")).
 *               ONNX Resize (linear, half_pixel / nearest, asymmetric, floor).
 *   batchnorm   BatchNorm2d(eps, momentum), then act. Training: batch statistics, running
 *               mean and UNBIASED variance updated as (1 - momentum) r + momentum s; eval:
 *               the running statistics. frozen: the running statistics in training too, left
 *               unchanged, gamma and beta still trained (a BatchNorm2d in eval() inside a model
 *               in train(): --freeze-encoder-bn). ONNX BatchNormalization.
 *   relu        act: relu (and none, the default of a node, reads as relu) or relu6.
 *
 * act (conv, batchnorm, crop_add, relu): none; relu, max(x, 0); relu6, min(max(x, 0), 6)
 * (a NaN passes both). The backward masks the gradient by the output: relu passes it where
 * y > 0, relu6 where 0 < y < 6 (PyTorch's hardtanh_backward: 0 < x < 6, so none at 0 or 6). */
typedef enum {
    UNET_OP_CONV,        /* k x k conv, stride, pad, groups (1 or depthwise), optional bias, fused act */
    UNET_OP_CONV_T2,     /* 2x2 stride-2 transposed conv + bias; weight [in, out, 2, 2] */
    UNET_OP_BIAS,        /* y = x + b[c] */
    UNET_OP_RELU,        /* y = max(x, 0), or min(max(x, 0), 6) with act relu6 */
    UNET_OP_MAXPOOL2,    /* 2x2 stride 2; odd sizes are an error at compile time */
    UNET_OP_MAXPOOL,     /* k x k, stride, pad (-inf): ResNet's 3x3 stride-2 pad-1 stem pooling */
    UNET_OP_CROP_CONCAT, /* centre-crop every input to input 0's H,W, concat channels in input order */
    UNET_OP_CROP_ADD,    /* centre-crop every input to input 0's H,W, sum (all inputs: same C), fused act */
    UNET_OP_UPSAMPLE2,   /* x2: bilinear, align_corners = False (PyTorch's default), or nearest */
    UNET_OP_BATCHNORM,   /* per-channel, batch statistics when training (unless frozen), fused act */
    UNET_OP_DROPOUT,     /* inverted dropout: kept values scaled by 1 / (1 - p) */
    UNET_OP_SOFTMAX_CE,  /* in: logits (N,K,h,w), label (N,1,H,W) i32, [weight (N,1,H,W)]; out: scalar */
    UNET_OP_BCE_DICE,    /* in: logits (N,1,h,w), label (N,1,H,W) i32 in {0,1}, [weight]; out: scalar */
    UNET_OP_COUNT
} unet_op;

/* The activation fused after a conv, batch norm or residual sum, or applied by a relu node. */
typedef enum {
    UNET_ACT_NONE,
    UNET_ACT_RELU,
    UNET_ACT_RELU6,
} unet_act;

typedef enum {
    UNET_UPSAMPLE_BILINEAR, /* align_corners = False */
    UNET_UPSAMPLE_NEAREST,
} unet_upsample_mode;

/* Facts about each op, from the core's op table (src/host/core/op_table.c). */
const char *unet_op_name(unet_op op); /* "?" for a value that is no op */
/* A loss: its output is a scalar, its inputs after the first take no gradient. */
int unet_op_is_loss(unet_op op);
/* 0 when op's row in the op table is complete (a name, a shape rule, what its
 * backward reads), else -1 with what it lacks in err. */
int unet_op_check(unet_op op, char *err, size_t errlen);

/* A node as the builder describes it. Value ids refer to graph values
 * (inputs and node outputs), param ids to the graph's parameter table. */
typedef struct {
    unet_op op;
    char name[UNET_NAME_LEN]; /* grid name of the layer, e.g. "x1_2.conv1" */
    int n_in;
    int in[UNET_MAX_IN];
    int param[UNET_MAX_PARAM]; /* -1 when absent */
    int state[2];              /* batch norm running mean, running var (param-table ids), else -1 */
    /* attributes (see the table of ops above) */
    int k;                       /* conv, maxpool: kernel size */
    int stride;                  /* conv, maxpool: 1 (unet_node_make's default) or more */
    int pad;                     /* conv (zeros), maxpool (-inf): padding on every side */
    int groups;                  /* conv: 1 (the default), or the input channels (depthwise) */
    unet_act act;                /* conv / batch norm / crop_add: fused after; relu: which */
    int out_c;                   /* conv / transposed conv: output channels */
    unet_upsample_mode upsample; /* upsample2: bilinear (the default) or nearest */
    int frozen;                  /* batch norm: running statistics even when training, never updated */
    float p;                     /* dropout probability */
    float eps;                   /* batch norm epsilon (1e-5) */
    float momentum;              /* batch norm running-stat momentum (0.1, PyTorch's convention) */
    float scale;                 /* loss: weight of this loss in the total (1 / number of heads) */
    int out_value;               /* set by unet_graph_add */
} unet_node;

/* Which forward tensors the backward of a node reads (its inputs, its
 * output). Compiled plans pass NULL for the others and reuse their memory. */
int unet_backward_reads_inputs(const unet_node *n);
int unet_backward_reads_output(const unet_node *n);

typedef enum {
    UNET_INIT_HE,   /* normal, std sqrt(2 / fan_in) */
    UNET_INIT_ZERO, /* biases, batch norm beta, running mean */
    UNET_INIT_ONE,  /* batch norm gamma, running var */
} unet_init;

typedef enum {
    UNET_PARAM_TRAINABLE, /* in the parameter block, has a gradient and optimizer state */
    UNET_PARAM_STATE,     /* batch norm running statistics: saved, not trained */
} unet_param_kind;

typedef struct {
    char name[UNET_NAME_LEN]; /* checkpoint name, e.g. "x0_0.conv1.weight" */
    int ndim;
    int dims[4]; /* PyTorch layout */
    size_t count;
    size_t offset; /* in floats, within its block (trainable or state), a multiple of 16 */
    unet_param_kind kind;
    unet_init init;
    int fan_in;
} unet_param;

typedef enum {
    UNET_INPUT_IMAGE,  /* (N, C, H, W) float32 */
    UNET_INPUT_LABEL,  /* (N, 1, H, W) int32 */
    UNET_INPUT_WEIGHT, /* (N, 1, H, W) float32 */
} unet_input_kind;

typedef struct unet_graph unet_graph;

unet_graph *unet_graph_new(void);
void unet_graph_free(unet_graph *g);

/* Inputs. channels is C for the image and 1 for labels and weights.
 * requires_grad: a gradient is computed for it (op tests use this). */
int unet_graph_input(unet_graph *g, const char *name, unet_input_kind kind, int channels, int requires_grad);
/* A parameter (trainable or batch norm state); dims in PyTorch layout. Returns its id. */
int unet_graph_param(unet_graph *g, const char *name, unet_param_kind kind, int ndim, const int *dims, unet_init init,
                     int fan_in);
/* Adds a node; returns the id of its output value. */
int unet_graph_add(unet_graph *g, const unet_node *node);
/* Marks a value as an output (a head's logits); returns the output index. */
int unet_graph_mark_output(unet_graph *g, int value);

/* A node with defaults filled in: params and states -1, stride and groups 1,
 * eps 1e-5, momentum 0.1, scale 1, everything else 0. */
unet_node unet_node_make(unet_op op, const char *name);

int unet_graph_num_params(const unet_graph *g);
const unet_param *unet_graph_params(const unet_graph *g);
/* Floats in the trainable block and in the state block (with the 64-byte
 * alignment gaps between tensors), and the exact number of trainable values. */
size_t unet_graph_trainable_count(const unet_graph *g);
size_t unet_graph_state_count(const unet_graph *g);
size_t unet_graph_trainable_params(const unet_graph *g);
int unet_graph_num_nodes(const unet_graph *g);
const unet_node *unet_graph_nodes(const unet_graph *g);
int unet_graph_num_inputs(const unet_graph *g);
int unet_graph_input_value(const unet_graph *g, int index); /* the value id of input `index` */
int unet_graph_num_outputs(const unet_graph *g);
int unet_graph_output_value(const unet_graph *g, int index);
int unet_graph_num_values(const unet_graph *g);

#ifdef __cplusplus
}
#endif

#endif
