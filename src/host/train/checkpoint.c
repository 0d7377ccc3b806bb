/* Checkpoints on top of safetensors: the graph's parameter table names the
 * tensors and gives their shapes and offsets in the host blocks, so saving
 * and loading are walks over that table (layout in include/unet/checkpoint.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "unet/checkpoint.h"
#include "unet/safetensors.h"

#define OPT_PREFIX_LEN  32
#define TENSOR_NAME_LEN (UNET_NAME_LEN + OPT_PREFIX_LEN)

static int ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && !strcmp(s + ls - lx, suffix);
}

/* Names of the optimizer state blocks, PyTorch's state keys: SGD keeps a
 * momentum buffer, Adam two moments. */
static const char *const sgd_names[] = {"momentum_buffer"};
static const char *const adam_names[] = {"exp_avg", "exp_avg_sq"};

static void shape_text(int ndim, const int64_t *dims, char *buf, size_t n) {
    buf[0] = 0;
    snprintf(buf, n, "[");
    for (int d = 0; d < ndim; d++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%lld", d ? ", " : "", (long long)dims[d]);
    snprintf(buf + strlen(buf), n - strlen(buf), "]");
}

static void param_shape(const unet_param *p, int64_t *dims) {
    for (int d = 0; d < p->ndim; d++) dims[d] = p->dims[d];
}

int unet_checkpoint_save(const char *path, const unet_graph *g, const float *params, const float *state,
                         const float *opt_a, const float *opt_b, const unet_run_progress *progress,
                         const char *config_json, char *err, size_t errlen) {
    const long step = progress->step;
    const int np = unet_graph_num_params(g);
    const unet_param *p = unet_graph_params(g);
    int n_bn = 0, n_train = 0;
    for (int k = 0; k < np; k++) {
        n_bn += p[k].kind == UNET_PARAM_STATE && ends_with(p[k].name, ".running_var");
        n_train += p[k].kind == UNET_PARAM_TRAINABLE;
    }
    const float *opt_blocks[2] = {opt_a, opt_b};
    const char *const *opt_names = opt_b ? adam_names : sgd_names;
    int n_opt = !opt_a ? 0 : opt_b ? 2 : 1;
    int total = np + n_bn + n_opt * n_train, nt = 0, nn = 0;
    unet_st_tensor *t = calloc((size_t)total + 1, sizeof *t);
    char(*names)[TENSOR_NAME_LEN] = calloc((size_t)(n_bn + n_opt * n_train) + 1, sizeof *names);
    if (!t || !names) {
        free(t);
        free(names);
        unet_errorf(err, errlen, "cannot write %s: out of memory", path);
        return -1;
    }
    const int64_t tracked = step; /* PyTorch's BatchNorm2d counts its training forward passes */
    for (int k = 0; k < np; k++) {
        const float *block = p[k].kind == UNET_PARAM_TRAINABLE ? params : state;
        t[nt] =
            (unet_st_tensor){.name = p[k].name, .dtype = UNET_ST_F32, .ndim = p[k].ndim, .data = block + p[k].offset};
        param_shape(&p[k], t[nt].shape);
        nt++;
        if (p[k].kind == UNET_PARAM_STATE && ends_with(p[k].name, ".running_var")) {
            snprintf(names[nn], TENSOR_NAME_LEN, "%.*s.num_batches_tracked",
                     (int)(strlen(p[k].name) - strlen(".running_var")), p[k].name);
            t[nt++] = (unet_st_tensor){.name = names[nn++], .dtype = UNET_ST_I64, .ndim = 0, .data = &tracked};
        }
    }
    for (int b = 0; b < n_opt; b++)
        for (int k = 0; k < np; k++) {
            if (p[k].kind != UNET_PARAM_TRAINABLE) continue;
            snprintf(names[nn], TENSOR_NAME_LEN, "optimizer.%s.%s", opt_names[b], p[k].name);
            t[nt] = (unet_st_tensor){
                .name = names[nn++], .dtype = UNET_ST_F32, .ndim = p[k].ndim, .data = opt_blocks[b] + p[k].offset};
            param_shape(&p[k], t[nt].shape);
            nt++;
        }
    char step_text[32], version[16], skipped[32], best_value[40], best_step[32];
    snprintf(step_text, sizeof step_text, "%ld", step);
    snprintf(version, sizeof version, "%d", UNET_CHECKPOINT_FORMAT_VERSION);
    unet_st_meta meta[10] = {{"format", "pt"},
                             {"unet.format_version", version},
                             {"unet.step", step_text},
                             {"unet.optimizer_state", !opt_a  ? "none"
                                                      : opt_b ? "adam"
                                                              : "sgd"}};
    int n_meta = 4;
    if (config_json) meta[n_meta++] = (unet_st_meta){"unet.config", config_json};
    if (progress->skipped_steps) {
        snprintf(skipped, sizeof skipped, "%ld", progress->skipped_steps);
        meta[n_meta++] = (unet_st_meta){"unet.skipped_steps", skipped};
    }
    if (progress->best_metric[0] && progress->best_step) {
        /* %.17g reads back to the same double: a resumed run compares against the very value */
        snprintf(best_value, sizeof best_value, "%.17g", progress->best_value);
        snprintf(best_step, sizeof best_step, "%ld", progress->best_step);
        meta[n_meta++] = (unet_st_meta){"unet.best_metric", progress->best_metric};
        meta[n_meta++] = (unet_st_meta){"unet.best_value", best_value};
        meta[n_meta++] = (unet_st_meta){"unet.best_step", best_step};
    }
    int rc = unet_st_write(path, t, nt, meta, n_meta, err, errlen);
    free(t);
    free(names);
    return rc;
}

/* ---- loading ----------------------------------------------------------- */

static int check_version(const unet_st_file *f, char *err, size_t errlen) {
    const char *v = unet_st_meta_get(f, "unet.format_version");
    if (v && atoi(v) > UNET_CHECKPOINT_FORMAT_VERSION) {
        unet_errorf(err, errlen, "%s was written by a newer unet (checkpoint format %s; this one reads up to %d)",
                    unet_st_path(f), v, UNET_CHECKPOINT_FORMAT_VERSION);
        return -1;
    }
    return 0;
}

/* One tensor into dst, after checking it exists and has the model's shape. */
static int load_tensor(const unet_st_file *f, const char *name, const unet_param *p, float *dst, char *err,
                       size_t errlen) {
    int64_t want[4];
    param_shape(p, want);
    char want_text[64], have_text[128];
    shape_text(p->ndim, want, want_text, sizeof want_text);
    const unet_st_tensor *t = unet_st_find(f, name);
    if (!t) {
        unet_errorf(err, errlen,
                    "%s has no tensor %s %s that the model needs (a checkpoint of another model? the "
                    "model flags must describe the one it was saved from)",
                    unet_st_path(f), name, want_text);
        return -1;
    }
    int same = t->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == want[d];
    if (!same) {
        shape_text(t->ndim, t->shape, have_text, sizeof have_text);
        unet_errorf(err, errlen, "%s: tensor %s has shape %s, the model needs %s", unet_st_path(f), name, have_text,
                    want_text);
        return -1;
    }
    return unet_st_read_f32(f, t, dst, err, errlen);
}

static int load_weights(const unet_st_file *f, const unet_graph *g, float *params, float *state, char *err,
                        size_t errlen) {
    const unet_param *p = unet_graph_params(g);
    for (int k = 0; k < unet_graph_num_params(g); k++) {
        float *block = p[k].kind == UNET_PARAM_TRAINABLE ? params : state;
        if (load_tensor(f, p[k].name, &p[k], block + p[k].offset, err, errlen)) return -1;
    }
    return 0;
}

int unet_checkpoint_load_weights(const char *path, const unet_graph *g, float *params, float *state, char *err,
                                 size_t errlen) {
    unet_st_file *f;
    if (unet_st_open(path, &f, err, errlen)) return -1;
    int rc = check_version(f, err, errlen) || load_weights(f, g, params, state, err, errlen) ? -1 : 0;
    unet_st_close(f);
    return rc;
}

/* ---- --init-encoder: torchvision's weights into a backbone ------------------------------------------------- */

#define ENCODER_PREFIX "encoder."

/* Tensors of a torchvision state dict that no backbone holds: the classifier smp deletes, BatchNorm2d's counters. */
static int outside_backbone(const char *name) {
    return !strncmp(name, "fc.", 3) || !strncmp(name, "classifier.", 11) || ends_with(name, ".num_batches_tracked");
}

static int graph_has(const unet_graph *g, const char *name) {
    const unet_param *p = unet_graph_params(g);
    for (int k = 0; k < unet_graph_num_params(g); k++)
        if (!strcmp(p[k].name, name)) return 1;
    return 0;
}

/* A 3-channel first convolution t for p's `in` input channels, as smp's patch_first_conv adapts pretrained weights:
 * one channel takes the sum of the three, more take them in turn scaled by 3 / in. */
static int load_first_conv(const unet_st_file *f, const unet_st_tensor *t, const unet_param *p, float *dst, char *err,
                           size_t errlen) {
    const int out = p->dims[0], in = p->dims[1];
    const size_t kk = (size_t)p->dims[2] * p->dims[3];
    float *w3 = unet_alloc(unet_st_numel(t), sizeof(float), "the first convolution", err, errlen);
    if (!w3 || unet_st_read_f32(f, t, w3, err, errlen)) {
        free(w3);
        return -1;
    }
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++)
            for (size_t e = 0; e < kk; e++) {
                const float *src = w3 + (size_t)o * 3 * kk + e;
                dst[((size_t)o * in + i) * kk + e] =
                    in == 1 ? (src[0] + src[kk]) + src[2 * kk] : src[(size_t)(i % 3) * kk] * (3.0f / (float)in);
            }
    free(w3);
    return 0;
}

/* The file's tensor for p, or -1 with a message saying what the file should be. */
static const unet_st_tensor *backbone_tensor(const unet_st_file *f, const char *encoder, const unet_param *p, char *err,
                                             size_t errlen) {
    const char *name = p->name + strlen(ENCODER_PREFIX);
    const unet_st_tensor *t = unet_st_find(f, name);
    if (!t)
        unet_errorf(err, errlen,
                    "%s has no tensor %s, which the %s backbone needs: --init-encoder takes torchvision's "
                    "%s state dict under its own names (scripts/torchvision_weights.py converts a .pth)",
                    unet_st_path(f), name, encoder, encoder);
    return t;
}

static int load_backbone(const unet_st_file *f, const char *encoder, const unet_graph *g, float *params, float *state,
                         char *err, size_t errlen) {
    const char *converted = unet_st_meta_get(f, "unet.encoder");
    if (converted && strcmp(converted, encoder)) {
        unet_errorf(err, errlen, "%s holds the weights of %s, but the model's encoder is %s (--encoder %s)",
                    unet_st_path(f), converted, encoder, converted);
        return -1;
    }
    const unet_param *p = unet_graph_params(g);
    int first_conv = 1;
    for (int k = 0; k < unet_graph_num_params(g); k++) {
        if (strncmp(p[k].name, ENCODER_PREFIX, strlen(ENCODER_PREFIX))) continue;
        float *dst = (p[k].kind == UNET_PARAM_TRAINABLE ? params : state) + p[k].offset;
        const unet_st_tensor *t = backbone_tensor(f, encoder, &p[k], err, errlen);
        if (!t) return -1;
        /* ImageNet's three colours for a model of --in-channels other than 3 */
        int adapt = first_conv && p[k].ndim == 4 && t->ndim == 4 && t->shape[0] == p[k].dims[0] && t->shape[1] == 3 &&
                    p[k].dims[1] != 3 && t->shape[2] == p[k].dims[2] && t->shape[3] == p[k].dims[3];
        if (p[k].ndim == 4) first_conv = 0;
        if (adapt ? load_first_conv(f, t, &p[k], dst, err, errlen)
                  : load_tensor(f, p[k].name + strlen(ENCODER_PREFIX), &p[k], dst, err, errlen))
            return -1;
    }
    /* a deeper network's file holds every tensor of a shallower one (resnet34's, resnet18's): refuse what is left */
    for (int i = 0; i < unet_st_count(f); i++) {
        const char *name = unet_st_at(f, i)->name;
        char full[TENSOR_NAME_LEN];
        snprintf(full, sizeof full, "%s%s", ENCODER_PREFIX, name);
        if (!outside_backbone(name) && !graph_has(g, full)) {
            unet_errorf(err, errlen,
                        "%s has a tensor %s that the %s backbone lacks: the weights of another network "
                        "(give the --encoder they were trained as)",
                        unet_st_path(f), name, encoder);
            return -1;
        }
    }
    return 0;
}

int unet_checkpoint_load_encoder(const char *path, const char *encoder, const unet_graph *g, float *params,
                                 float *state, char *err, size_t errlen) {
    unet_st_file *f;
    if (unet_st_open(path, &f, err, errlen)) return -1;
    int rc = load_backbone(f, encoder, g, params, state, err, errlen);
    unet_st_close(f);
    return rc;
}

/* Which optimizer's state the file holds, by the names of its tensors:
 * "sgd", "adam" or NULL. */
static const char *saved_optimizer(const unet_st_file *f) {
    for (int i = 0; i < unet_st_count(f); i++) {
        const char *n = unet_st_at(f, i)->name;
        if (!strncmp(n, "optimizer.momentum_buffer.", 26)) return "sgd";
        if (!strncmp(n, "optimizer.exp_avg.", 18)) return "adam";
    }
    return NULL;
}

static int parse_step(const char *s, long *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < 0) return -1;
    *out = v;
    return 0;
}

/* The run's progress from the metadata: -1 when the step is missing or
 * malformed; the rest is optional (absent: nothing recorded). */
static int read_progress(const unet_st_file *f, unet_run_progress *p) {
    memset(p, 0, sizeof *p);
    int rc = parse_step(unet_st_meta_get(f, "unet.step"), &p->step);
    if (parse_step(unet_st_meta_get(f, "unet.skipped_steps"), &p->skipped_steps)) p->skipped_steps = 0;
    const char *metric = unet_st_meta_get(f, "unet.best_metric"), *value = unet_st_meta_get(f, "unet.best_value");
    char *end = NULL;
    double v = value ? strtod(value, &end) : 0.0;
    if (metric && strlen(metric) < sizeof p->best_metric && value && *value && !*end &&
        !parse_step(unet_st_meta_get(f, "unet.best_step"), &p->best_step)) {
        snprintf(p->best_metric, sizeof p->best_metric, "%s", metric);
        p->best_value = v;
    } else {
        p->best_step = 0;
    }
    return rc;
}

int unet_checkpoint_load_resume(const char *path, const unet_graph *g, float *params, float *state, float *opt_a,
                                float *opt_b, unet_run_progress *progress, char *err, size_t errlen) {
    unet_st_file *f;
    if (unet_st_open(path, &f, err, errlen)) return -1;
    int rc = -1;
    const char *want = opt_b ? "adam" : "sgd", *have = saved_optimizer(f);
    if (check_version(f, err, errlen) || load_weights(f, g, params, state, err, errlen)) goto out;
    if (!have) {
        unet_errorf(err, errlen,
                    "%s holds weights but no optimizer state, so a run cannot continue from it: start "
                    "from its weights with --init %s instead of --resume",
                    path, path);
        goto out;
    }
    if (strcmp(have, want)) {
        unet_errorf(err, errlen,
                    "%s holds the optimizer state of %s, but this run uses %s: resume with the "
                    "--optimizer it was trained with, or start from its weights with --init %s",
                    path, !strcmp(have, "sgd") ? "SGD (momentum buffers)" : "Adam (moments)", opt_b ? "Adam" : "SGD",
                    path);
        goto out;
    }
    const char *const *names = opt_b ? adam_names : sgd_names;
    float *blocks[2] = {opt_a, opt_b};
    const unet_param *p = unet_graph_params(g);
    for (int b = 0; b < (opt_b ? 2 : 1); b++)
        for (int k = 0; k < unet_graph_num_params(g); k++) {
            if (p[k].kind != UNET_PARAM_TRAINABLE) continue;
            char name[TENSOR_NAME_LEN];
            snprintf(name, sizeof name, "optimizer.%s.%s", names[b], p[k].name);
            if (load_tensor(f, name, &p[k], blocks[b] + p[k].offset, err, errlen)) goto out;
        }
    if (read_progress(f, progress)) {
        unet_errorf(err, errlen,
                    "%s has optimizer state but no valid \"unet.step\" in its metadata, so the step to "
                    "continue from is unknown",
                    path);
        goto out;
    }
    rc = 0;
out:
    unet_st_close(f);
    return rc;
}

int unet_checkpoint_read_meta(const char *path, unet_checkpoint_meta *meta, char *err, size_t errlen) {
    memset(meta, 0, sizeof *meta);
    snprintf(meta->optimizer_state, sizeof meta->optimizer_state, "none");
    unet_st_file *f;
    if (unet_st_open(path, &f, err, errlen)) return -1;
    int rc = check_version(f, err, errlen);
    if (!rc) {
        const char *config = unet_st_meta_get(f, "unet.config"), *v = unet_st_meta_get(f, "unet.format_version");
        const char *opt = unet_st_meta_get(f, "unet.optimizer_state");
        if (config) meta->config_json = strdup(config);
        if (v) meta->format_version = atoi(v);
        if (read_progress(f, &meta->progress)) meta->progress.step = 0;
        if (opt) snprintf(meta->optimizer_state, sizeof meta->optimizer_state, "%s", opt);
    }
    unet_st_close(f);
    return rc;
}

void unet_checkpoint_meta_free(unet_checkpoint_meta *meta) {
    free(meta->config_json);
    meta->config_json = NULL;
}
