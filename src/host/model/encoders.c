/* The backbones that replace the column X^{i,0} (DESIGN.md): torchvision's
 * ResNet-18/34/50 and MobileNetV2 as segmentation_models_pytorch (smp) uses
 * them, under smp's names (encoder.layer1.0.conv1.weight, ...). Stage i of a
 * backbone gives X^{i,0} at stride 2^i; smp drops the stride-1 feature (the
 * image itself), so the decoder's top row has no skip.
 *
 *   ResNet       X^{1,0} = relu(bn1(conv1 7x7/2)), then maxpool 3x3/2 + layer1 (X^{2,0}), layer2 .. layer4
 *   MobileNetV2  features.0 .. features.18, tapped after features 1, 3, 6, 13 and 18
 *
 * Every convolution pads by k/2, as torchvision's do, so the features of a
 * tile that is a multiple of 32 line up with the decoder's upsampling. */
#include <stdio.h>
#include <string.h>

#include "host/model/encoders.h"
#include "host/model/layers.h"

typedef struct {
    unet_graph *g;
    int frozen; /* --freeze-encoder-bn */
} backbone;

/* conv (no bias) then batch norm with an activation: torchvision's conv-bn(-act) pattern. */
static int conv_bn(backbone *B, const char *conv, const char *bn, int x, int cin, int cout, int k, int stride,
                   int groups, unet_act act) {
    unet_conv_spec c = {.k = k, .stride = stride, .groups = groups, .same = 1};
    x = unet_layer_conv(B->g, conv, x, cin, cout, c);
    return unet_layer_batchnorm(B->g, bn, x, cout, act, B->frozen);
}

/* ---- ResNet ------------------------------------------------------------------------------------------------ */

/* torchvision's BasicBlock (ResNet-18/34, two 3x3) or Bottleneck (ResNet-50: 1x1, 3x3 with the stride, 1x1 to
 * 4 planes), with a 1x1 strided projection of the input where the shape changes. */
static int resnet_block(backbone *B, const char *prefix, int x, int cin, int planes, int stride, int bottleneck,
                        int *cout) {
    char c[3][UNET_NAME_LEN], bn[3][UNET_NAME_LEN], down[2][UNET_NAME_LEN], add[UNET_NAME_LEN];
    for (int k = 0; k < 3; k++) {
        snprintf(c[k], sizeof c[k], "%s.conv%d", prefix, k + 1);
        snprintf(bn[k], sizeof bn[k], "%s.bn%d", prefix, k + 1);
    }
    snprintf(down[0], sizeof down[0], "%s.downsample.0", prefix);
    snprintf(down[1], sizeof down[1], "%s.downsample.1", prefix);
    snprintf(add, sizeof add, "%s.add", prefix);
    const int out = bottleneck ? 4 * planes : planes;
    int y;
    if (bottleneck) {
        y = conv_bn(B, c[0], bn[0], x, cin, planes, 1, 1, 1, UNET_ACT_RELU);
        y = conv_bn(B, c[1], bn[1], y, planes, planes, 3, stride, 1, UNET_ACT_RELU);
        y = conv_bn(B, c[2], bn[2], y, planes, out, 1, 1, 1, UNET_ACT_NONE);
    } else {
        y = conv_bn(B, c[0], bn[0], x, cin, planes, 3, stride, 1, UNET_ACT_RELU);
        y = conv_bn(B, c[1], bn[1], y, planes, planes, 3, 1, 1, UNET_ACT_NONE);
    }
    int identity = x;
    if (stride != 1 || cin != out) identity = conv_bn(B, down[0], down[1], x, cin, out, 1, stride, 1, UNET_ACT_NONE);
    *cout = out;
    return unet_layer_residual(B->g, add, y, identity, UNET_ACT_RELU);
}

static void resnet(backbone *B, int x, int in_channels, const int *blocks, int bottleneck, int *features) {
    x = conv_bn(B, "encoder.conv1", "encoder.bn1", x, in_channels, 64, 7, 2, 1, UNET_ACT_RELU);
    features[1] = x;
    x = unet_layer_maxpool3s2(B->g, "encoder.maxpool", x);
    int c = 64;
    for (int layer = 0; layer < 4; layer++)
        for (int b = 0; b < blocks[layer]; b++) {
            char prefix[32]; /* "encoder.layer4.2" */
            snprintf(prefix, sizeof prefix, "encoder.layer%d.%d", layer + 1, b);
            int stride = layer > 0 && b == 0 ? 2 : 1;
            x = resnet_block(B, prefix, x, c, 64 << layer, stride, bottleneck, &c);
            features[layer + 2] = x;
        }
}

static void resnet18(backbone *B, int x, int in_channels, int *features) {
    static const int blocks[4] = {2, 2, 2, 2};
    resnet(B, x, in_channels, blocks, 0, features);
}

static void resnet34(backbone *B, int x, int in_channels, int *features) {
    static const int blocks[4] = {3, 4, 6, 3};
    resnet(B, x, in_channels, blocks, 0, features);
}

static void resnet50(backbone *B, int x, int in_channels, int *features) {
    static const int blocks[4] = {3, 4, 6, 3};
    resnet(B, x, in_channels, blocks, 1, features);
}

/* ---- MobileNetV2 ------------------------------------------------------------------------------------------- */

/* torchvision's InvertedResidual: a 1x1 expansion to t x cin (left out for t = 1), a 3x3 depthwise convolution with
 * the stride, both with ReLU6, then a linear 1x1 projection; the input added back where the shape is kept. Its
 * layers are numbered conv.0, conv.1, ... in that order (the projection's conv and bn take one number each). */
static int inverted_residual(backbone *B, int index, int x, int cin, int cout, int stride, int t) {
    char conv[UNET_NAME_LEN], bn[UNET_NAME_LEN], add[UNET_NAME_LEN];
    const int hidden = cin * t;
    int layer = 0, y = x;
    if (t != 1) {
        snprintf(conv, sizeof conv, "encoder.features.%d.conv.%d.0", index, layer);
        snprintf(bn, sizeof bn, "encoder.features.%d.conv.%d.1", index, layer);
        y = conv_bn(B, conv, bn, y, cin, hidden, 1, 1, 1, UNET_ACT_RELU6);
        layer++;
    }
    snprintf(conv, sizeof conv, "encoder.features.%d.conv.%d.0", index, layer);
    snprintf(bn, sizeof bn, "encoder.features.%d.conv.%d.1", index, layer);
    y = conv_bn(B, conv, bn, y, hidden, hidden, 3, stride, hidden, UNET_ACT_RELU6);
    layer++;
    snprintf(conv, sizeof conv, "encoder.features.%d.conv.%d", index, layer);
    snprintf(bn, sizeof bn, "encoder.features.%d.conv.%d", index, layer + 1);
    y = conv_bn(B, conv, bn, y, hidden, cout, 1, 1, 1, UNET_ACT_NONE);
    if (stride != 1 || cin != cout) return y;
    snprintf(add, sizeof add, "encoder.features.%d.add", index);
    return unet_layer_residual(B->g, add, y, x, UNET_ACT_NONE);
}

static void mobilenet_v2(backbone *B, int x, int in_channels, int *features) {
    /* torchvision's inverted_residual_setting: expansion t, channels c, repeats n, first stride s */
    static const int settings[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                       {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    static const int taps[UNET_ENCODER_STAGES] = {1, 3, 6, 13, 18}; /* smp's _out_indexes */
    x = conv_bn(B, "encoder.features.0.0", "encoder.features.0.1", x, in_channels, 32, 3, 2, 1, UNET_ACT_RELU6);
    int c = 32, index = 1, stage = 0;
    for (int s = 0; s < 7; s++)
        for (int r = 0; r < settings[s][2]; r++, index++) {
            x = inverted_residual(B, index, x, c, settings[s][1], r == 0 ? settings[s][3] : 1, settings[s][0]);
            c = settings[s][1];
            if (index == taps[stage]) features[++stage] = x;
        }
    x = conv_bn(B, "encoder.features.18.0", "encoder.features.18.1", x, c, 1280, 1, 1, 1, UNET_ACT_RELU6);
    features[++stage] = x;
}

/* ---- the table --------------------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int channels[UNET_ENCODER_STAGES + 1]; /* of X^{i,0}, i = 1..5 ([0]: the image, set by --in-channels) */
    void (*build)(backbone *B, int x, int in_channels, int *features);
} encoder_row;

static const encoder_row encoders[UNET_ENCODER_COUNT] = {
    [UNET_ENCODER_PLAIN] = {"plain", {0}, NULL},
    [UNET_ENCODER_RESNET18] = {"resnet18", {0, 64, 64, 128, 256, 512}, resnet18},
    [UNET_ENCODER_RESNET34] = {"resnet34", {0, 64, 64, 128, 256, 512}, resnet34},
    [UNET_ENCODER_RESNET50] = {"resnet50", {0, 64, 256, 512, 1024, 2048}, resnet50},
    [UNET_ENCODER_MOBILENET_V2] = {"mobilenet_v2", {0, 16, 24, 32, 96, 1280}, mobilenet_v2},
};

const char *unet_encoder_name(unet_encoder_kind e) { return e >= 0 && e < UNET_ENCODER_COUNT ? encoders[e].name : "?"; }

int unet_encoder_parse(const char *s, unet_encoder_kind *out) {
    for (int e = 0; e < UNET_ENCODER_COUNT; e++)
        if (!strcmp(s, encoders[e].name)) {
            *out = (unet_encoder_kind)e;
            return 0;
        }
    return -1;
}

int unet_encoder_channels(unet_encoder_kind e, int level) {
    return e > 0 && e < UNET_ENCODER_COUNT && level >= 1 && level <= UNET_ENCODER_STAGES ? encoders[e].channels[level]
                                                                                         : 0;
}

void unet_encoder_build(unet_graph *g, const unet_model_cfg *m, int image, int *features) {
    backbone B = {.g = g, .frozen = m->freeze_encoder_bn};
    encoders[m->encoder].build(&B, image, m->in_channels, features);
}
