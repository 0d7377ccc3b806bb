/* The U-Net family from one grid (DESIGN.md):
 *
 *   X^{i,0} = block(i == 0 ? input : maxpool(X^{i-1,0}))
 *   X^{i,j} = block(fuse[ up(X^{i+1,j-1}), crop(s) for s in S(i,j) ])   j >= 1, i + j <= L
 *
 *   S(i,j): unet, unet_e -> {X^{i,0}};  unet_plus -> {X^{i,j-1}};  unetpp -> {X^{i,0..j-1}}
 *
 * Only the nodes some head depends on are built, so U-Net is the grid with
 * one head on X^{0,L}, and pruning to depth d is the grid cut to i + j <= d
 * with head d: a smaller graph, not a larger one with outputs ignored. */
#include <stdio.h>
#include <string.h>

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

int unet_model_validate(const unet_model_cfg *m, char *err, size_t errlen) {
    if (m->levels < 2 || m->levels > UNET_MAX_LEVELS) {
        snprintf(err, errlen, "the network needs 2 to %d filter levels, got %d", UNET_MAX_LEVELS, m->levels);
        return -1;
    }
    for (int i = 0; i < m->levels; i++)
        if (m->filters[i] < 1) {
            snprintf(err, errlen, "filter count %d of level %d must be positive", m->filters[i], i);
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
        snprintf(err, errlen, "--loss ce needs --classes >= 2 (softmax over classes); use --loss bce_dice for one class");
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
    int L = m->levels - 1;
    if (m->prune_depth < 0 || m->prune_depth > L) {
        snprintf(err, errlen, "--depth must be between 1 and %d for %d filter levels, got %d", L, m->levels,
                 m->prune_depth);
        return -1;
    }
    if (m->kind == UNET_MODEL_UNET && (m->deep_supervision || (m->prune_depth && m->prune_depth != L))) {
        snprintf(err, errlen, "U-Net has one head on X^{0,%d}: deep supervision and pruning need --model unet_e, "
                 "unet_plus or unetpp", L);
        return -1;
    }
    return 0;
}

int unet_pool_levels(const unet_model_cfg *m) { return m->prune_depth ? m->prune_depth : m->levels - 1; }

typedef struct {
    const unet_model_cfg *m;
    unet_graph *g;
    int L;                                       /* deepest level of the (pruned) grid */
    char needed[UNET_MAX_LEVELS][UNET_MAX_LEVELS];
    int value[UNET_MAX_LEVELS][UNET_MAX_LEVELS]; /* output value of X^{i,j} */
} grid;

/* The columns k of the skips S(i,j) feeding X^{i,j}: first..last. */
static void skip_columns(const unet_model_cfg *m, int j, int *first, int *last) {
    *first = *last = 0;
    switch (m->kind) {
    case UNET_MODEL_UNET:
    case UNET_MODEL_UNET_E: *first = *last = 0; break;
    case UNET_MODEL_UNET_PLUS: *first = *last = j - 1; break;
    case UNET_MODEL_UNETPP: *first = 0, *last = j - 1; break;
    }
}

static void mark_needed(grid *G, int i, int j) {
    if (G->needed[i][j]) return;
    G->needed[i][j] = 1;
    if (j == 0) {
        if (i > 0) mark_needed(G, i - 1, 0);
        return;
    }
    mark_needed(G, i + 1, j - 1);
    int first, last;
    skip_columns(G->m, j, &first, &last);
    for (int k = first; k <= last; k++) mark_needed(G, i, k);
}

static int param(grid *G, const char *prefix, const char *what, int ndim, const int *dims, unet_init init,
                 int fan_in, unet_param_kind kind) {
    char name[UNET_NAME_LEN];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    return unet_graph_param(G->g, name, kind, ndim, dims, init, fan_in);
}

/* Conv layer `prefix` (k x k, bias), then batch norm `norm_prefix` when
 * configured; ReLU fused into the last of the two when relu is set. */
static int conv_layer(grid *G, const char *prefix, const char *norm_prefix, int x, int cin, int cout, int k,
                      int relu) {
    const unet_model_cfg *m = G->m;
    unet_node n = unet_node_make(UNET_OP_CONV, prefix);
    n.n_in = 1;
    n.in[0] = x;
    n.k = k;
    n.pad = m->same_padding ? k / 2 : 0;
    n.out_c = cout;
    int wdims[4] = {cout, cin, k, k}, bdims[1] = {cout};
    n.param[0] = param(G, prefix, "weight", 4, wdims, UNET_INIT_HE, cin * k * k, UNET_PARAM_TRAINABLE);
    n.param[1] = param(G, prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    int use_norm = m->batch_norm && norm_prefix;
    n.act = relu && !use_norm ? UNET_ACT_RELU : UNET_ACT_NONE;
    int y = unet_graph_add(G->g, &n);
    if (!use_norm) return y;
    unet_node bn = unet_node_make(UNET_OP_BATCHNORM, norm_prefix);
    bn.n_in = 1;
    bn.in[0] = y;
    bn.act = relu ? UNET_ACT_RELU : UNET_ACT_NONE;
    bn.param[0] = param(G, norm_prefix, "weight", 1, bdims, UNET_INIT_ONE, 0, UNET_PARAM_TRAINABLE);
    bn.param[1] = param(G, norm_prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    bn.state[0] = param(G, norm_prefix, "running_mean", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_STATE);
    bn.state[1] = param(G, norm_prefix, "running_var", 1, bdims, UNET_INIT_ONE, 0, UNET_PARAM_STATE);
    return unet_graph_add(G->g, &bn);
}

/* block: two 3x3 convolutions, each followed by an optional norm and ReLU. */
static int block(grid *G, int i, int j, int x, int cin) {
    char node[32], c1[48], c2[48], n1[48], n2[48];
    snprintf(node, sizeof node, "x%d_%d", i, j);
    snprintf(c1, sizeof c1, "%s.conv1", node);
    snprintf(c2, sizeof c2, "%s.conv2", node);
    snprintf(n1, sizeof n1, "%s.norm1", node);
    snprintf(n2, sizeof n2, "%s.norm2", node);
    int f = G->m->filters[i];
    x = conv_layer(G, c1, n1, x, cin, f, 3, 1);
    return conv_layer(G, c2, n2, x, f, f, 3, 1);
}

static int simple_node(grid *G, unet_op op, const char *name, int x) {
    unet_node n = unet_node_make(op, name);
    n.n_in = 1;
    n.in[0] = x;
    return unet_graph_add(G->g, &n);
}

/* up(X^{i+1,j-1}) for X^{i,j}: f_{i+1} -> f_i channels either way. */
static int upsample(grid *G, int i, int j, int x) {
    const unet_model_cfg *m = G->m;
    char prefix[48], name[64];
    snprintf(prefix, sizeof prefix, "x%d_%d.up", i, j);
    int fin = m->filters[i + 1], fout = m->filters[i];
    int bdims[1] = {fout};
    if (m->bilinear) {
        snprintf(name, sizeof name, "%s.bilinear", prefix);
        x = simple_node(G, UNET_OP_UPSAMPLE2, name, x);
        unet_node n = unet_node_make(UNET_OP_CONV, prefix);
        n.n_in = 1;
        n.in[0] = x;
        n.k = 1;
        n.out_c = fout;
        int wdims[4] = {fout, fin, 1, 1};
        n.param[0] = param(G, prefix, "weight", 4, wdims, UNET_INIT_HE, fin, UNET_PARAM_TRAINABLE);
        n.param[1] = param(G, prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
        return unet_graph_add(G->g, &n);
    }
    unet_node n = unet_node_make(UNET_OP_CONV_T2, prefix);
    n.n_in = 1;
    n.in[0] = x;
    n.out_c = fout;
    /* PyTorch's ConvTranspose2d layout [in, out, kh, kw]; each output pixel sees fin inputs */
    int wdims[4] = {fin, fout, 2, 2};
    n.param[0] = param(G, prefix, "weight", 4, wdims, UNET_INIT_HE, fin, UNET_PARAM_TRAINABLE);
    n.param[1] = param(G, prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
    return unet_graph_add(G->g, &n);
}

int unet_model_build(const unet_model_cfg *m, int with_loss, int with_weight, unet_model *out, char *err,
                     size_t errlen) {
    memset(out, 0, sizeof *out);
    if (unet_model_validate(m, err, errlen)) return -1;
    grid G;
    memset(&G, 0, sizeof G);
    G.m = m;
    G.L = m->prune_depth ? m->prune_depth : m->levels - 1;
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
    /* contracting path; dropout at its end, as in the paper */
    for (int i = 0; i <= L && G.needed[i][0]; i++) {
        int in = x, cin = m->in_channels;
        if (i > 0) {
            char name[32];
            snprintf(name, sizeof name, "x%d_0.pool", i);
            in = simple_node(&G, UNET_OP_MAXPOOL2, name, G.value[i - 1][0]);
            cin = m->filters[i - 1];
        }
        G.value[i][0] = block(&G, i, 0, in, cin);
        if (i == m->levels - 1 && m->dropout > 0.0f) {
            unet_node d = unet_node_make(UNET_OP_DROPOUT, "");
            snprintf(d.name, sizeof d.name, "x%d_0.dropout", i);
            d.n_in = 1;
            d.in[0] = G.value[i][0];
            d.p = m->dropout;
            G.value[i][0] = unet_graph_add(G.g, &d);
        }
    }
    /* decoder, column by column: X^{i,j} needs column j-1 below it and its own row's earlier columns */
    for (int j = 1; j <= L; j++)
        for (int i = L - j; i >= 0; i--) {
            if (!G.needed[i][j]) continue;
            unet_node fuse = unet_node_make(m->fusion_add ? UNET_OP_CROP_ADD : UNET_OP_CROP_CONCAT, "");
            snprintf(fuse.name, sizeof fuse.name, "x%d_%d.%s", i, j, m->fusion_add ? "add" : "concat");
            fuse.in[fuse.n_in++] = upsample(&G, i, j, G.value[i + 1][j - 1]);
            int first, last;
            skip_columns(m, j, &first, &last);
            for (int k = first; k <= last; k++) fuse.in[fuse.n_in++] = G.value[i][k];
            int cin = m->fusion_add ? m->filters[i] : fuse.n_in * m->filters[i];
            G.value[i][j] = block(&G, i, j, unet_graph_add(G.g, &fuse), cin);
        }
    for (int h = 0; h < n_heads; h++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "head%d", heads[h]);
        unet_node n = unet_node_make(UNET_OP_CONV, prefix);
        n.n_in = 1;
        n.in[0] = G.value[0][heads[h]];
        n.k = 1;
        n.out_c = m->classes;
        int wdims[4] = {m->classes, m->filters[0], 1, 1}, bdims[1] = {m->classes};
        n.param[0] = param(&G, prefix, "weight", 4, wdims, UNET_INIT_HE, m->filters[0], UNET_PARAM_TRAINABLE);
        n.param[1] = param(&G, prefix, "bias", 1, bdims, UNET_INIT_ZERO, 0, UNET_PARAM_TRAINABLE);
        int logits = unet_graph_add(G.g, &n);
        unet_graph_mark_output(G.g, logits);
        out->head_column[h] = heads[h];
        if (with_loss) {
            unet_node l = unet_node_make(m->loss == UNET_LOSS_CE ? UNET_OP_SOFTMAX_CE : UNET_OP_BCE_DICE, "");
            snprintf(l.name, sizeof l.name, "head%d.loss", heads[h]);
            l.in[l.n_in++] = logits;
            l.in[l.n_in++] = label;
            if (weight >= 0) l.in[l.n_in++] = weight;
            l.scale = 1.0f / (float)n_heads; /* deep supervision: the mean over heads */
            unet_graph_add(G.g, &l);
        }
    }
    out->graph = G.g;
    out->n_heads = n_heads;
    return 0;
}

void unet_model_free(unet_model *out) {
    unet_graph_free(out->graph);
    memset(out, 0, sizeof *out);
}
