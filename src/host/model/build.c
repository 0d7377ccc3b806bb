/* The U-Net family from one grid (DESIGN.md):
 *
 *   X^{i,0} = block(i == 0 ? input : maxpool(X^{i-1,0}))
 *   X^{i,j} = block(fuse[ up(X^{i+1,j-1}), crop(s) for s in S(i,j) ])   j >= 1, i + j <= L
 *
 *   S(i,j): unet, unet_e -> {X^{i,0}};  unet_plus -> {X^{i,j-1}};  unetpp -> {X^{i,0..j-1}}
 *
 * Only the nodes some head depends on are built, so U-Net is the grid with
 * one head on X^{0,L}, and pruning to depth d is the grid cut to i + j <= d
 * with head d: a smaller graph, not a larger one with outputs ignored.
 *
 * A backbone (encoders.c) replaces the column X^{i,0}, i = 1..5, and the
 * decoder on it is segmentation_models_pytorch's (smp) Unet or UnetPlusPlus,
 * the same grid with smp's choices: up is nearest x2 (no parameters), the
 * top row has no skip (smp drops the stride-1 feature), UnetPlusPlus
 * concatenates its skips nearest column first, the nodes X^{i,5-i} that lead
 * to the head have the widths of --decoder-channels and UnetPlusPlus's others
 * their row's backbone width, blocks are conv (no bias) + batch norm + ReLU,
 * and the head is a 3x3 convolution. Names are smp's (decoder.blocks.0.conv1.0
 * for Unet's X^{4,1}, decoder.blocks.x_{5-i-j}_{4-i}.conv1.0 for
 * UnetPlusPlus's X^{i,j}, segmentation_head.0), so state dicts move between
 * the two unchanged. */
#include <stdio.h>
#include <string.h>

#include "host/model/encoders.h"
#include "host/model/layers.h"
#include "unet/model.h"

static const char *kind_names[] = {"unet", "unet_e", "unet_plus", "unetpp"};

const char *unet_model_kind_name(unet_model_kind k) { return kind_names[k]; }

int unet_model_kind_parse(const char *s, unet_model_kind *out) {
    for (int k = 0; k < 4; k++)
        if (strcmp(s, kind_names[k]) == 0) {
            *out = (unet_model_kind)k;
            return 0;
        }
    return -1;
}

/* The checks of a backbone model: smp's decoders, and what they leave out. */
static int validate_encoder(const unet_model_cfg *m, char *err, size_t errlen) {
    const char *enc = unet_encoder_name(m->encoder);
    if (m->kind != UNET_MODEL_UNET && m->kind != UNET_MODEL_UNETPP) {
        snprintf(err, errlen,
                 "--encoder %s takes --model unet or unetpp (smp's Unet and UnetPlusPlus decoders); %s "
                 "is a model of the plain grid: use --encoder plain",
                 enc, unet_model_kind_name(m->kind));
        return -1;
    }
    if (!m->same_padding) {
        snprintf(err, errlen,
                 "--encoder %s needs --padding same: the backbone's convolutions and poolings pad their "
                 "input (as torchvision's do), so valid padding would leave its features and the decoder's no common "
                 "size",
                 enc);
        return -1;
    }
    if (m->upsample != UNET_UP_NEAREST || m->fusion_add) {
        snprintf(err, errlen,
                 "--encoder %s has smp's decoder, which upsamples by nearest x2 and concatenates: use "
                 "--upsample nearest --fusion concat (the defaults with an encoder)",
                 enc);
        return -1;
    }
    if (m->decoder_levels != UNET_ENCODER_STAGES) {
        snprintf(err, errlen,
                 "--decoder-channels needs %d widths, one per stage of the backbone (smp's default "
                 "256,128,64,32,16), got %d",
                 UNET_ENCODER_STAGES, m->decoder_levels);
        return -1;
    }
    for (int j = 0; j < m->decoder_levels; j++)
        if (m->decoder_channels[j] < 1) {
            snprintf(err, errlen, "--decoder-channels: width %d must be positive, got %d", j + 1,
                     m->decoder_channels[j]);
            return -1;
        }
    if (m->deep_supervision) {
        snprintf(err, errlen,
                 "--deep-supervision puts a head on every full-resolution node X^{0,j}, but on a "
                 "backbone smp's UnetPlusPlus has only one, X^{0,5}: the backbone has no stride-1 feature, so "
                 "X^{0,1..4} do not exist (its X^{1,j} are at half resolution, with the backbone's widths); train "
                 "without --deep-supervision, or with --encoder plain");
        return -1;
    }
    if (m->prune_depth) {
        snprintf(err, errlen,
                 "--depth %d prunes to the nodes with i + j <= %d and a head on X^{0,%d}, but on a "
                 "backbone the only full-resolution node is X^{0,5}, which needs the whole network: use --depth 0 "
                 "(the full model), or --encoder plain",
                 m->prune_depth, m->prune_depth, m->prune_depth);
        return -1;
    }
    return 0;
}

/* The checks of the plain grid's filters, and of what only a backbone takes. */
static int validate_plain(const unet_model_cfg *m, char *err, size_t errlen) {
    if (m->levels < 2 || m->levels > UNET_MAX_LEVELS) {
        snprintf(err, errlen, "the network needs 2 to %d filter levels, got %d", UNET_MAX_LEVELS, m->levels);
        return -1;
    }
    for (int i = 0; i < m->levels; i++)
        if (m->filters[i] < 1) {
            snprintf(err, errlen, "filter count %d of level %d must be positive", m->filters[i], i);
            return -1;
        }
    if (m->upsample == UNET_UP_NEAREST) {
        snprintf(err, errlen,
                 "--upsample nearest (no convolution, channels kept) is smp's decoder, for --encoder "
                 "models; the plain grid upsamples f_{i+1} -> f_i channels: use transposed or bilinear");
        return -1;
    }
    if (m->freeze_encoder_bn) {
        snprintf(err, errlen,
                 "--freeze-encoder-bn freezes the batch norms of a backbone: it needs --encoder "
                 "resnet18|resnet34|resnet50|mobilenet_v2");
        return -1;
    }
    int L = m->levels - 1;
    if (m->prune_depth < 0 || m->prune_depth > L) {
        snprintf(err, errlen, "--depth must be between 1 and %d for %d filter levels, got %d", L, m->levels,
                 m->prune_depth);
        return -1;
    }
    if (m->kind == UNET_MODEL_UNET && (m->deep_supervision || (m->prune_depth && m->prune_depth != L))) {
        snprintf(err, errlen,
                 "U-Net has one head on X^{0,%d}: deep supervision and pruning need --model unet_e, "
                 "unet_plus or unetpp",
                 L);
        return -1;
    }
    return 0;
}

int unet_model_validate(const unet_model_cfg *m, char *err, size_t errlen) {
    if (m->encoder < 0 || m->encoder >= UNET_ENCODER_COUNT) {
        snprintf(err, errlen, "encoder %d is none of plain, resnet18, resnet34, resnet50, mobilenet_v2", m->encoder);
        return -1;
    }
    if (m->in_channels < 1) {
        snprintf(err, errlen, "--in-channels must be at least 1, got %d", m->in_channels);
        return -1;
    }
    if (m->classes < 1) {
        snprintf(err, errlen, "--classes must be at least 1, got %d", m->classes);
        return -1;
    }
    if (m->loss == UNET_LOSS_CE && m->classes < 2) {
        snprintf(err, errlen,
                 "--loss ce needs --classes >= 2 (softmax over classes); use --loss bce_dice for one class");
        return -1;
    }
    if (m->loss == UNET_LOSS_BCE_DICE && m->classes != 1) {
        snprintf(err, errlen, "--loss bce_dice needs --classes 1 (one sigmoid output), got %d", m->classes);
        return -1;
    }
    if (!(m->dropout >= 0.0f && m->dropout < 1.0f)) {
        snprintf(err, errlen, "--dropout must be in [0, 1), got %g", (double)m->dropout);
        return -1;
    }
    return m->encoder ? validate_encoder(m, err, errlen) : validate_plain(m, err, errlen);
}

int unet_pool_levels(const unet_model_cfg *m) {
    if (m->encoder) return UNET_ENCODER_STAGES;
    return m->prune_depth ? m->prune_depth : m->levels - 1;
}

typedef struct {
    const unet_model_cfg *m;
    unet_graph *g;
    int L; /* deepest level of the (pruned) grid */
    char needed[UNET_MAX_LEVELS][UNET_MAX_LEVELS];
    int value[UNET_MAX_LEVELS][UNET_MAX_LEVELS]; /* output value of X^{i,j} */
} grid;

/* Channels of X^{i,j}. */
static int width(const grid *G, int i, int j) {
    const unet_model_cfg *m = G->m;
    if (!m->encoder) return m->filters[i];
    /* smp: the nodes on the way to the head have the decoder's widths, UnetPlusPlus's others their row's */
    if (j > 0 && i + j == G->L) return m->decoder_channels[j - 1];
    return unet_encoder_channels(m->encoder, i);
}

/* The columns of the skips S(i,j) feeding X^{i,j}, in the order they are concatenated; returns their number. */
static int skip_columns(const grid *G, int i, int j, int *cols) {
    const unet_model_cfg *m = G->m;
    int first = 0, last = 0, n = 0;
    switch (m->kind) {
    case UNET_MODEL_UNET:
    case UNET_MODEL_UNET_E:
        first = last = 0;
        break;
    case UNET_MODEL_UNET_PLUS:
        first = last = j - 1;
        break;
    case UNET_MODEL_UNETPP:
        first = 0, last = j - 1;
        break;
    }
    if (!m->encoder) {
        for (int k = first; k <= last; k++) cols[n++] = k;
        return n;
    }
    /* smp: no stride-1 feature, so no skip in the top row; UnetPlusPlus takes the nearest column first */
    if (i > 0)
        for (int k = last; k >= first; k--) cols[n++] = k;
    return n;
}

static void mark_needed(grid *G, int i, int j) {
    if (G->needed[i][j]) return;
    G->needed[i][j] = 1;
    if (j == 0) {
        if (i > 0) mark_needed(G, i - 1, 0);
        return;
    }
    mark_needed(G, i + 1, j - 1);
    int cols[UNET_MAX_LEVELS];
    int n = skip_columns(G, i, j, cols);
    for (int k = 0; k < n; k++) mark_needed(G, i, cols[k]);
}

/* Conv layer `prefix` (k x k), then batch norm `norm_prefix` when
 * configured; ReLU fused into the last of the two when relu is set. */
static int conv_layer(grid *G, const char *prefix, const char *norm_prefix, int x, int cin, int cout, int k, int relu) {
    const unet_model_cfg *m = G->m;
    int use_norm = m->batch_norm && norm_prefix;
    /* smp's convolutions before a batch norm have no bias; the plain grid's keep theirs, as they always had */
    unet_conv_spec c = {.k = k,
                        .stride = 1,
                        .groups = 1,
                        .same = m->same_padding,
                        .bias = !(m->encoder && use_norm),
                        .act = relu && !use_norm ? UNET_ACT_RELU : UNET_ACT_NONE};
    int y = unet_layer_conv(G->g, prefix, x, cin, cout, c);
    if (!use_norm) return y;
    return unet_layer_batchnorm(G->g, norm_prefix, y, cout, relu ? UNET_ACT_RELU : UNET_ACT_NONE, 0);
}

#define NODE_NAME_LEN 48 /* the longest, "decoder.blocks.x_3_3", and room for a layer's name after it */

/* The name of node X^{i,j}: the grid's, or smp's decoder block (Unet numbers its blocks from the deepest,
 * UnetPlusPlus names them x_{depth}_{layer}). */
static void node_name(const grid *G, int i, int j, char *buf, size_t n) {
    if (!G->m->encoder)
        snprintf(buf, n, "x%d_%d", i, j);
    else if (G->m->kind == UNET_MODEL_UNET)
        snprintf(buf, n, "decoder.blocks.%d", j - 1);
    else
        snprintf(buf, n, "decoder.blocks.x_%d_%d", G->L - i - j, G->L - 1 - i);
}

/* block: two 3x3 convolutions, each followed by an optional norm and ReLU. */
static int block(grid *G, int i, int j, int x, int cin) {
    char node[NODE_NAME_LEN], c1[UNET_NAME_LEN], c2[UNET_NAME_LEN], n1[UNET_NAME_LEN], n2[UNET_NAME_LEN];
    node_name(G, i, j, node, sizeof node);
    /* smp's Conv2dReLU is a Sequential: conv, norm, activation */
    const int smp = G->m->encoder != UNET_ENCODER_PLAIN;
    snprintf(c1, sizeof c1, smp ? "%s.conv1.0" : "%s.conv1", node);
    snprintf(c2, sizeof c2, smp ? "%s.conv2.0" : "%s.conv2", node);
    snprintf(n1, sizeof n1, smp ? "%s.conv1.1" : "%s.norm1", node);
    snprintf(n2, sizeof n2, smp ? "%s.conv2.1" : "%s.norm2", node);
    int f = width(G, i, j);
    x = conv_layer(G, c1, n1, x, cin, f, 3, 1);
    return conv_layer(G, c2, n2, x, f, f, 3, 1);
}

/* up(X^{i+1,j-1}) for X^{i,j}: f_{i+1} -> f_i channels by a transposed or a bilinear + 1x1 convolution, or nearest
 * x2 keeping the channels (smp). */
static int upsample(grid *G, int i, int j, int x) {
    const unet_model_cfg *m = G->m;
    char prefix[NODE_NAME_LEN], name[UNET_NAME_LEN];
    if (m->upsample == UNET_UP_NEAREST) {
        node_name(G, i, j, prefix, sizeof prefix);
        snprintf(name, sizeof name, "%s.upsample", prefix);
        return unet_layer_upsample_nearest(G->g, name, x);
    }
    snprintf(prefix, sizeof prefix, "x%d_%d.up", i, j);
    int fin = m->filters[i + 1], fout = m->filters[i];
    if (m->upsample == UNET_UP_BILINEAR) {
        snprintf(name, sizeof name, "%s.bilinear", prefix);
        x = unet_layer_simple(G->g, UNET_OP_UPSAMPLE2, name, x);
        unet_conv_spec c = {.k = 1, .stride = 1, .groups = 1, .bias = 1};
        return unet_layer_conv(G->g, prefix, x, fin, fout, c);
    }
    unet_node n = unet_node_make(UNET_OP_CONV_T2, prefix);
    n.n_in = 1;
    n.in[0] = x;
    n.out_c = fout;
    /* PyTorch's ConvTranspose2d layout [in, out, kh, kw]; each output pixel sees fin inputs */
    int wdims[4] = {fin, fout, 2, 2}, bdims[1] = {fout};
    n.param[0] = unet_layer_param(G->g, prefix, "weight", 4, wdims, UNET_INIT_HE, fin, UNET_PARAM_TRAINABLE);
    n.param[1] = unet_layer_param(G->g, prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    return unet_graph_add(G->g, &n);
}

/* Channels of up(X^{i+1,j-1}) as X^{i,j} receives them. */
static int up_width(const grid *G, int i, int j) {
    return G->m->upsample == UNET_UP_NEAREST ? width(G, i + 1, j - 1) : width(G, i, j);
}

/* The dropout at the end of the contracting path, as in the paper. */
static int dropout(grid *G, int i, int x) {
    unet_node d = unet_node_make(UNET_OP_DROPOUT, "");
    snprintf(d.name, sizeof d.name, "x%d_0.dropout", i);
    d.n_in = 1;
    d.in[0] = x;
    d.p = G->m->dropout;
    return unet_graph_add(G->g, &d);
}

/* The column X^{i,0} of the paper: blocks and 2x2 max-pooling. */
static void plain_column(grid *G, int image) {
    const unet_model_cfg *m = G->m;
    for (int i = 0; i <= G->L && G->needed[i][0]; i++) {
        int in = image, cin = m->in_channels;
        if (i > 0) {
            char name[32];
            snprintf(name, sizeof name, "x%d_0.pool", i);
            in = unet_layer_simple(G->g, UNET_OP_MAXPOOL2, name, G->value[i - 1][0]);
            cin = m->filters[i - 1];
        }
        G->value[i][0] = block(G, i, 0, in, cin);
        if (i == m->levels - 1 && m->dropout > 0.0f) G->value[i][0] = dropout(G, i, G->value[i][0]);
    }
}

/* The column X^{i,0}, i = 1..5, of a backbone. */
static void backbone_column(grid *G, int image) {
    int features[UNET_ENCODER_STAGES + 1];
    unet_encoder_build(G->g, G->m, image, features);
    for (int i = 1; i <= UNET_ENCODER_STAGES; i++) G->value[i][0] = features[i];
    if (G->m->dropout > 0.0f) G->value[G->L][0] = dropout(G, G->L, G->value[G->L][0]);
}

/* Decoder node X^{i,j}: its upsampled input fused with its skips, then a block. */
static int decoder_node(grid *G, int i, int j) {
    const unet_model_cfg *m = G->m;
    int up = upsample(G, i, j, G->value[i + 1][j - 1]);
    int cols[UNET_MAX_LEVELS];
    int n = skip_columns(G, i, j, cols);
    if (n == 0) return block(G, i, j, up, up_width(G, i, j));
    unet_node fuse = unet_node_make(m->fusion_add ? UNET_OP_CROP_ADD : UNET_OP_CROP_CONCAT, "");
    char node[NODE_NAME_LEN];
    node_name(G, i, j, node, sizeof node);
    snprintf(fuse.name, sizeof fuse.name, "%s.%s", node, m->fusion_add ? "add" : "concat");
    fuse.in[fuse.n_in++] = up;
    int cin = up_width(G, i, j);
    for (int k = 0; k < n; k++) {
        fuse.in[fuse.n_in++] = G->value[i][cols[k]];
        if (!m->fusion_add) cin += width(G, i, cols[k]);
    }
    return block(G, i, j, unet_graph_add(G->g, &fuse), cin);
}

/* The head on X^{0,j}: a 1x1 convolution (the grid's head{j}), or smp's 3x3 segmentation head. Returns the logits. */
static int head(grid *G, int j, char *prefix, size_t n) {
    const unet_model_cfg *m = G->m;
    const int smp = m->encoder != UNET_ENCODER_PLAIN;
    if (smp)
        snprintf(prefix, n, "segmentation_head.0");
    else
        snprintf(prefix, n, "head%d", j);
    unet_conv_spec c = {.k = smp ? 3 : 1, .stride = 1, .groups = 1, .bias = 1, .same = 1};
    return unet_layer_conv(G->g, prefix, G->value[0][j], width(G, 0, j), m->classes, c);
}

int unet_model_build(const unet_model_cfg *m, int with_loss, int with_weight, unet_model *out, char *err,
                     size_t errlen) {
    memset(out, 0, sizeof *out);
    if (unet_model_validate(m, err, errlen)) return -1;
    grid G;
    memset(&G, 0, sizeof G);
    G.m = m;
    G.L = unet_pool_levels(m);
    G.g = unet_graph_new();
    const int L = G.L;

    int heads[UNET_MAX_LEVELS], n_heads = 0;
    if (m->deep_supervision)
        for (int j = 1; j <= L; j++) heads[n_heads++] = j;
    else
        heads[n_heads++] = L;
    for (int h = 0; h < n_heads; h++) mark_needed(&G, 0, heads[h]);

    int x = unet_graph_input(G.g, "image", UNET_INPUT_IMAGE, m->in_channels, 0);
    int label = -1, weight = -1;
    if (with_loss) {
        label = unet_graph_input(G.g, "label", UNET_INPUT_LABEL, 1, 0);
        if (with_weight) weight = unet_graph_input(G.g, "weight", UNET_INPUT_WEIGHT, 1, 0);
    }
    if (m->encoder)
        backbone_column(&G, x);
    else
        plain_column(&G, x);
    /* decoder, column by column: X^{i,j} needs column j-1 below it and its own row's earlier columns */
    for (int j = 1; j <= L; j++)
        for (int i = L - j; i >= 0; i--)
            if (G.needed[i][j]) G.value[i][j] = decoder_node(&G, i, j);
    for (int h = 0; h < n_heads; h++) {
        char prefix[32];
        int logits = head(&G, heads[h], prefix, sizeof prefix);
        unet_graph_mark_output(G.g, logits);
        out->head_column[h] = heads[h];
        if (with_loss) {
            unet_node l = unet_node_make(m->loss == UNET_LOSS_CE ? UNET_OP_SOFTMAX_CE : UNET_OP_BCE_DICE, "");
            snprintf(l.name, sizeof l.name, "%s.loss", prefix);
            l.in[l.n_in++] = logits;
            l.in[l.n_in++] = label;
            if (weight >= 0) l.in[l.n_in++] = weight;
            l.scale = 1.0f / (float)n_heads; /* deep supervision: the mean over heads */
            unet_graph_add(G.g, &l);
        }
    }
    /* value 0 is the image: no feature (a backbone's X^{0,0}, a column cut short) */
    for (int i = 0; i < UNET_MAX_LEVELS; i++) out->feature[i] = i <= L && G.value[i][0] > 0 ? G.value[i][0] : -1;
    out->graph = G.g;
    out->n_heads = n_heads;
    return 0;
}

void unet_model_free(unet_model *out) {
    unet_graph_free(out->graph);
    memset(out, 0, sizeof *out);
}
