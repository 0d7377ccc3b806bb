/* unet compare: the benchmark of the UNet++ paper, U-Net against its
 * nested relatives at matched parameter counts. Every model is trained by
 * the training run itself (unet_run_train, in this process) under one
 * configuration that differs only in the model: same data, split, seeds,
 * schedule, augmentation and steps. Costs come from the code paths of
 * `unet info` (parameters, FLOPs, planned memory) and `unet bench` (timed
 * steps); deep-supervised models are also evaluated pruned to every depth,
 * through the same whole-image evaluation validation uses. The numbers go
 * to DIR/report.json, the runs' logs to DIR/runs/; scripts/compare_report.py
 * writes the report (DIR/report.md and its plots) from those files, again
 * as each run finishes.
 *
 * A comparison can be left alone: each finished run leaves
 * DIR/runs/<model>_seed<S>.result.json, and the same command run again
 * keeps those runs, continues the unfinished one from its newest periodic
 * checkpoint (--save-every, --save-every-min) and trains the rest.
 *
 * In-process rather than one subprocess per run: the runs share the
 * backend, report.json gets numbers rather than parsed text, and nothing
 * depends on where the executable lives (only the report's script does). */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "host/common/util.h"
#include "host/model/match.h"
#include "host/train/checkpoint_config.h"
#include "host/train/depths.h"
#include "host/train/run_files.h"
#include "host/train/session.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"

extern char **environ;

#define MAX_MODELS 8
#define PATH_LEN   (UNET_CONFIG_STRING_MAX + 128)

typedef struct {
    double *v; /* one value per seed */
    int n;
} runs;

static double mean_of(const runs *r) {
    double s = 0;
    for (int i = 0; i < r->n; i++) s += r->v[i];
    return r->n ? s / r->n : NAN;
}

/* Sample standard deviation over the seeds (0 for one seed). */
static double sd_of(const runs *r) {
    if (r->n < 2) return 0;
    double m = mean_of(r), s = 0;
    for (int i = 0; i < r->n; i++) s += (r->v[i] - m) * (r->v[i] - m);
    return sqrt(s / (r->n - 1));
}

/* The validation metrics of the runs (include/unet/metrics.h): the headline
 * figures, and IoU and Dice of each foreground class c = 1..n_classes. */
typedef struct {
    runs iou, dice, pixel_error, rand_error;
    runs iou_class[UNET_MAX_CLASSES], dice_class[UNET_MAX_CLASSES]; /* [c] */
    int n_classes;
} val_runs;

typedef struct {
    size_t params;
    double flops, infer_ms; /* forward FLOPs per image, ms per tile of inference */
    val_runs val;
} depth_result;

typedef struct {
    char name[32];  /* as in --models: a kind, wide_unet, or kind:encoder */
    char label[48]; /* in the report: U-Net, UNet++ (resnet34), ... */
    unet_model_cfg model;
    int pruned_depths;             /* deep supervision: depths 1..L evaluated pruned; else 0 */
    size_t params, encoder_params; /* encoder_params: of the backbone, 0 for the plain encoder */
    double flops, train_images_per_s, infer_ms;
    size_t train_activation_bytes;
    val_runs val;
    depth_result depth[UNET_MAX_LEVELS + 1]; /* [d], d = 1..pruned_depths */
} model_result;

static const char *const model_names[] = {"unet", "unet_e", "unet_plus", "unetpp", "wide_unet"};
#define WIDE_UNET 4

/* A file under --out (at most UNET_CONFIG_STRING_MAX characters, so PATH_LEN holds it). */
static void out_path(char *buf, size_t n, const char *dir, const char *name) {
    if (snprintf(buf, n, "%s/%s", dir, name) >= (int)n) abort();
}

/* One run's file: DIR/runs/<model>_seed<S>.<ext>, the ':' of an encoder model's name a '-' (unet-resnet34_seed1);
 * dir "runs" gives the name relative to --out. */
static void run_path(char *buf, size_t n, const char *dir, const char *model, uint64_t seed, const char *ext) {
    char name[128];
    snprintf(name, sizeof name, "%.31s_seed%llu.%.15s", model, (unsigned long long)seed, ext);
    for (char *c = name; *c; c++)
        if (*c == ':') *c = '-';
    if (strcmp(dir, "runs")) {
        char runs[PATH_LEN];
        out_path(runs, sizeof runs, dir, "runs");
        out_path(buf, n, runs, name);
    } else {
        out_path(buf, n, dir, name);
    }
}

static const char *kind_label(unet_model_kind k, int wide) {
    if (wide) return "wide U-Net";
    static const char *const labels[] = {"U-Net", "U-Net^e", "UNet+", "UNet++"};
    return labels[k];
}

/* One name of --models: a kind, wide_unet, or kind:encoder (unet:resnet34, smp's decoder on a backbone), with the
 * encoder's defaults where the flags did not set them. */
static int parse_model(const unet_config *cfg, const char *s, size_t len, model_result *m, char *err, size_t errlen) {
    char name[32], *colon;
    if (len >= sizeof name) len = sizeof name - 1;
    snprintf(name, sizeof name, "%.*s", (int)len, s);
    snprintf(m->name, sizeof m->name, "%s", name);
    unet_encoder_kind encoder = UNET_ENCODER_PLAIN;
    if ((colon = strchr(name, ':'))) {
        *colon = 0;
        if (unet_encoder_parse(colon + 1, &encoder) || encoder == UNET_ENCODER_PLAIN) {
            snprintf(err, errlen,
                     "--models: unknown encoder in '%s'; after the ':' come resnet18, resnet34, resnet50 "
                     "and mobilenet_v2 (unet:resnet34)",
                     m->name);
            return -1;
        }
    }
    int k = -1;
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, model_names[i])) k = i;
    if (k < 0 || (encoder && k == WIDE_UNET)) {
        snprintf(err, errlen,
                 "--models: unknown model '%s'; the models are unet, unet_e, unet_plus, unetpp and "
                 "wide_unet, and unet or unetpp on a backbone (unet:resnet34, unetpp:mobilenet_v2)",
                 m->name);
        return -1;
    }
    unet_config probe = *cfg;
    probe.model.encoder = encoder;
    if (encoder) unet_config_encoder_defaults(&probe);
    m->model = probe.model;
    if (k == WIDE_UNET) {
        if (!cfg->match_params[0]) {
            snprintf(err, errlen,
                     "wide_unet is the U-Net matched to another model's parameter count: add "
                     "--match-params (unetpp), --match-params MODEL or --match-params N");
            return -1;
        }
        m->model.kind = UNET_MODEL_UNET;
    } else {
        unet_model_kind_parse(model_names[k], &m->model.kind);
    }
    /* U-Net has one head, and so has smp's decoder on a backbone: deep supervision and pruning are for the rest */
    if (m->model.kind == UNET_MODEL_UNET || encoder) m->model.deep_supervision = 0;
    m->pruned_depths = m->model.deep_supervision ? m->model.levels - 1 : 0;
    if (encoder)
        snprintf(m->label, sizeof m->label, "%s (%s)", kind_label(m->model.kind, 0), unet_encoder_name(encoder));
    else
        snprintf(m->label, sizeof m->label, "%s", kind_label(m->model.kind, k == WIDE_UNET));
    return 0;
}

/* --models: known names, no repeats; wide_unet needs something to match. */
static int parse_models(const unet_config *cfg, model_result *out, int *n, char *err, size_t errlen) {
    *n = 0;
    const char *s = cfg->models;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (*n == MAX_MODELS) {
            snprintf(err, errlen, "--models takes at most %d models", MAX_MODELS);
            return -1;
        }
        model_result *m = &out[*n];
        memset(m, 0, sizeof *m);
        if (parse_model(cfg, s, len, m, err, errlen)) return -1;
        for (int i = 0; i < *n; i++)
            if (!strcmp(out[i].name, m->name)) {
                snprintf(err, errlen, "--models names %s twice", m->name);
                return -1;
            }
        (*n)++;
        s += len;
        if (*s == ',') s++;
    }
    if (!*n) {
        snprintf(err, errlen, "--models needs at least one model, such as unet,unetpp");
        return -1;
    }
    return 0;
}

static int alloc_runs(runs *r, int seeds, char *err, size_t errlen) {
    r->v = unet_alloc_zeroed((size_t)seeds, sizeof(double), "the runs' metrics", err, errlen);
    r->n = 0;
    return r->v ? 0 : -1;
}

static int alloc_val_runs(val_runs *r, int classes, int seeds, char *err, size_t errlen) {
    unet_seg_metrics m = {.classes = classes};
    r->n_classes = unet_seg_metrics_foreground(&m);
    if (alloc_runs(&r->iou, seeds, err, errlen) || alloc_runs(&r->dice, seeds, err, errlen) ||
        alloc_runs(&r->pixel_error, seeds, err, errlen) || alloc_runs(&r->rand_error, seeds, err, errlen))
        return -1;
    for (int c = 1; c <= r->n_classes; c++)
        if (alloc_runs(&r->iou_class[c], seeds, err, errlen) || alloc_runs(&r->dice_class[c], seeds, err, errlen))
            return -1;
    return 0;
}

/* A place for every seed's metrics: of the model as trained, and pruned to each depth. */
static int alloc_results(model_result *m, int classes, int seeds, char *err, size_t errlen) {
    if (alloc_val_runs(&m->val, classes, seeds, err, errlen)) return -1;
    for (int d = 1; d <= m->pruned_depths; d++)
        if (alloc_val_runs(&m->depth[d].val, classes, seeds, err, errlen)) return -1;
    return 0;
}

static void free_val_runs(val_runs *r) {
    free(r->iou.v);
    free(r->dice.v);
    free(r->pixel_error.v);
    free(r->rand_error.v);
    for (int c = 0; c < UNET_MAX_CLASSES; c++) {
        free(r->iou_class[c].v);
        free(r->dice_class[c].v);
    }
}

/* One run's metrics, appended to every list. */
static void add_run(val_runs *r, const unet_seg_metrics *m) {
    r->iou.v[r->iou.n++] = m->iou;
    r->dice.v[r->dice.n++] = m->dice;
    r->pixel_error.v[r->pixel_error.n++] = m->pixel_error;
    r->rand_error.v[r->rand_error.n++] = m->rand_error;
    for (int c = 1; c <= r->n_classes; c++) {
        r->iou_class[c].v[r->iou_class[c].n++] = m->iou_class[c];
        r->dice_class[c].v[r->dice_class[c].n++] = m->dice_class[c];
    }
}

static void free_result(model_result *m) {
    free_val_runs(&m->val);
    for (int d = 0; d <= UNET_MAX_LEVELS; d++) free_val_runs(&m->depth[d].val);
}

static double member(json_object *o, const char *prefix, const char *key) {
    char name[96];
    json_object *v;
    snprintf(name, sizeof name, "%s%s", prefix, key);
    return json_object_object_get_ex(o, name, &v) ? json_object_get_double(v) : NAN;
}

/* The metrics unet_seg_metrics_json wrote into o with this prefix; 0 when o
 * has none. */
static int metrics_from_json(json_object *o, const char *prefix, int classes, unet_seg_metrics *m) {
    memset(m, 0, sizeof *m);
    m->classes = classes;
    m->iou = member(o, prefix, "iou");
    if (isnan(m->iou)) return 0;
    m->dice = member(o, prefix, "dice");
    m->pixel_accuracy = member(o, prefix, "pixel_accuracy");
    m->pixel_error = member(o, prefix, "pixel_error");
    m->rand_error = member(o, prefix, "rand_error");
    m->loss = member(o, prefix, "loss"); /* NaN where no loss was logged; never the 0 of the memset */
    for (int c = 1; c <= unet_seg_metrics_foreground(m); c++) {
        char key[64];
        snprintf(key, sizeof key, "iou_class%d", c);
        m->iou_class[c] = member(o, prefix, key);
        snprintf(key, sizeof key, "dice_class%d", c);
        m->dice_class[c] = member(o, prefix, key);
        snprintf(key, sizeof key, "rand_error_class%d", c);
        m->rand_error_class[c] = member(o, prefix, key);
    }
    return 1;
}

/* The last validation of a run's log, and the step it was taken at. */
static int last_validation(const char *log, int classes, unet_seg_metrics *m, long *step, char *err, size_t errlen) {
    FILE *f = fopen(log, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read the run's log %.900s", log);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int found = 0;
    while (getline(&line, &cap, f) > 0) {
        json_object *o = json_tokener_parse(line), *v;
        unet_seg_metrics here;
        if (o && metrics_from_json(o, "val_", classes, &here)) {
            *m = here;
            if (json_object_object_get_ex(o, "step", &v)) *step = json_object_get_int64(v);
            found = 1;
        }
        json_object_put(o);
    }
    free(line);
    fclose(f);
    if (!found) snprintf(err, errlen, "the run's log %.900s has no validation", log);
    return found ? 0 : -1;
}

static json_object *runs_json(const runs *r) {
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    for (int i = 0; i < r->n; i++) json_object_array_add(a, json_object_new_double(r->v[i]));
    json_object_object_add(o, "mean", json_object_new_double(mean_of(r)));
    json_object_object_add(o, "sd", json_object_new_double(sd_of(r)));
    json_object_object_add(o, "runs", a);
    return o;
}

/* val_iou, val_dice, val_pixel_error, val_rand_error, then val_iou_class<c>
 * and val_dice_class<c>: the keys of the logs. */
static void val_runs_json(json_object *o, const val_runs *r) {
    json_object_object_add(o, "val_iou", runs_json(&r->iou));
    json_object_object_add(o, "val_dice", runs_json(&r->dice));
    json_object_object_add(o, "val_pixel_error", runs_json(&r->pixel_error));
    json_object_object_add(o, "val_rand_error", runs_json(&r->rand_error));
    for (int c = 1; c <= r->n_classes; c++) {
        char key[64];
        snprintf(key, sizeof key, "val_iou_class%d", c);
        json_object_object_add(o, key, runs_json(&r->iou_class[c]));
        snprintf(key, sizeof key, "val_dice_class%d", c);
        json_object_object_add(o, key, runs_json(&r->dice_class[c]));
    }
}

static json_object *filters_json(const unet_model_cfg *m) {
    json_object *a = json_object_new_array();
    for (int i = 0; i < m->levels; i++) json_object_array_add(a, json_object_new_int(m->filters[i]));
    return a;
}

/* Where and when: the report says what machine its timings come from. */
static void machine_text(char *buf, size_t n) {
    struct utsname u;
    char cpu[256] = "";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
                cpu[strcspn(cpu, "\n")] = 0;
                break;
            }
        fclose(f);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (uname(&u)) snprintf(u.machine, sizeof u.machine, "?");
    snprintf(buf, n, "%s%s%ld cores, %s", cpu, cpu[0] ? ", " : "", cores, u.machine);
}

/* One comparison: the models with their results, and what their runs share. */
typedef struct {
    unet_config *cfg;
    model_result models[MAX_MODELS];
    int n_models;
    size_t match_target;      /* --match-params: the count wide_unet matches; 0: none */
    unet_model_cfg match_ref; /* the model of that count (levels 0: a number was given) */
    const unet_backend *backend;
    char device[128]; /* the backend in words */
    unet_val_data val;
    double t0;
    double run_s[MAX_MODELS]; /* each model's finished runs' wall time, as for whole runs: for the time left */
    int runs_timed[MAX_MODELS];
    double measured_s;  /* the finished runs' wall time as measured */
    int runs_continued; /* of those, the runs continued from a checkpoint: their time before it is unknown */
    int runs_done;
} comparison;

/* The flags, the models and the count wide_unet matches, the backend,
 * DIR/runs and the validation images: every mistake of the input before
 * any work. */
static int compare_open(comparison *c, unet_config *cfg, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->cfg = cfg;
    c->t0 = unet_now_s();
    if (!cfg->out_dir[0] || !cfg->data[0] || (!cfg->val[0] && !(cfg->val_fraction > 0))) {
        snprintf(err, errlen, "needs --data D.h5, validation data (--val V.h5 or --val-fraction F) and --out DIR");
        return -1;
    }
    if (unet_config_is_set(cfg, "model") || unet_config_is_set(cfg, "depth") || unet_config_is_set(cfg, "encoder")) {
        snprintf(err, errlen,
                 "--models says which models to train (an encoder after a ':', unet:resnet34), and every "
                 "pruning depth of a deep-supervised model is evaluated: drop --model, --encoder and --depth");
        return -1;
    }
    if (parse_models(cfg, c->models, &c->n_models, err, errlen)) return -1;
    for (int i = 0; i < c->n_models; i++)
        if (unet_model_validate(&c->models[i].model, err, errlen) ||
            alloc_results(&c->models[i], cfg->model.classes, cfg->seeds, err, errlen))
            return -1;
    if (cfg->match_params[0]) {
        unet_params_match match;
        if (unet_match_target(cfg, &c->match_target, &c->match_ref, err, errlen) ||
            unet_match_params(&cfg->model, c->match_target, &match, err, errlen))
            return -1;
        for (int i = 0; i < c->n_models; i++)
            if (!strcmp(c->models[i].name, "wide_unet"))
                memcpy(c->models[i].model.filters, match.best->filters, sizeof match.best->filters);
    }
    c->backend = unet_select_backend(cfg, c->device, sizeof c->device, err, errlen);
    if (!c->backend) return -1;
    char runs_dir[PATH_LEN];
    out_path(runs_dir, sizeof runs_dir, cfg->out_dir, "runs");
    /* fail fast on outputs: the report goes to DIR, the runs' logs and checkpoints to DIR/runs */
    return unet_check_output_dir(cfg->out_dir, "--out", 1, err, errlen) ||
                   unet_check_output_dir(runs_dir, "--out", 1, err, errlen) ||
                   unet_val_data_open(cfg, &c->val, err, errlen)
               ? -1
               : 0;
}

static void compare_close(comparison *c) {
    unet_val_data_close(&c->val);
    for (int i = 0; i < MAX_MODELS; i++) free_result(&c->models[i]);
}

/* Costs first: a model that cannot run at this tile fails before any training. */
static int measure_models(comparison *c, char *err, size_t errlen) {
    for (int i = 0; i < c->n_models; i++) {
        model_result *m = &c->models[i];
        printf("== %s: parameters, FLOPs, memory and timing\n", m->name);
        fflush(stdout);
        unet_model_costs k;
        if (unet_measure_costs(c->cfg, c->backend, &m->model, 1, &k, err, errlen)) return -1;
        m->params = k.params, m->encoder_params = k.encoder_params, m->flops = k.flops;
        m->train_activation_bytes = k.train_bytes;
        m->train_images_per_s = k.train_images_per_s, m->infer_ms = k.infer_ms;
        for (int d = 1; d <= m->pruned_depths; d++) {
            unet_model_cfg p = m->model;
            p.prune_depth = d;
            p.deep_supervision = 0;
            depth_result *r = &m->depth[d];
            if (unet_measure_costs(c->cfg, c->backend, &p, 0, &k, err, errlen)) return -1;
            r->params = k.params, r->flops = k.flops, r->infer_ms = k.infer_ms;
        }
    }
    return 0;
}

/* The settings the runs shared, and where and when they ran: the report
 * says what machine its timings come from. */
static json_object *settings_json(const comparison *c) {
    const unet_config *cfg = c->cfg;
    char machine[512], date[64];
    machine_text(machine, sizeof machine);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    json_object *settings = json_object_new_object();
    char *cj = unet_config_to_json(cfg, 0);
    json_object_object_add(settings, "config", json_tokener_parse(cj));
    free(cj);
    json_object_object_add(settings, "seeds", json_object_new_int(cfg->seeds));
    json_object_object_add(settings, "device", json_object_new_string(c->device));
    json_object_object_add(settings, "machine", json_object_new_string(machine));
    json_object_object_add(settings, "date", json_object_new_string(date));
    json_object_object_add(settings, "wall_s", json_object_new_double(unet_now_s() - c->t0));
    json_object_object_add(settings, "runs_done", json_object_new_int(c->runs_done));
    json_object_object_add(settings, "runs_total", json_object_new_int(cfg->seeds * c->n_models));
    json_object_object_add(settings, "runs_wall_s", json_object_new_double(c->measured_s));
    json_object_object_add(settings, "runs_continued", json_object_new_int(c->runs_continued));
    json_object_object_add(settings, "bench_steps", json_object_new_int(UNET_COST_BENCH_STEPS));
    return settings;
}

/* --match-params: the count wide_unet matches, and the model it is the count of. */
static json_object *match_json(const comparison *c) {
    json_object *mt = json_object_new_object();
    json_object_object_add(mt, "target_params", json_object_new_int64((int64_t)c->match_target));
    if (c->match_ref.levels) {
        json_object_object_add(mt, "reference", json_object_new_string(unet_model_kind_name(c->match_ref.kind)));
        json_object_object_add(mt, "filters", filters_json(&c->match_ref));
    }
    return mt;
}

/* A model's costs, metrics (each seed's, their mean and deviation), logs,
 * and the same of every depth it was pruned to. */
static json_object *model_json(const comparison *c, const model_result *m) {
    const unet_config *cfg = c->cfg;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(m->name));
    json_object_object_add(o, "label", json_object_new_string(m->label));
    json_object_object_add(o, "model", json_object_new_string(unet_model_kind_name(m->model.kind)));
    json_object_object_add(o, "encoder", json_object_new_string(unet_encoder_name(m->model.encoder)));
    if (m->model.encoder) {
        json_object *dc = json_object_new_array();
        for (int j = 0; j < m->model.decoder_levels; j++)
            json_object_array_add(dc, json_object_new_int(m->model.decoder_channels[j]));
        json_object_object_add(o, "decoder_channels", dc);
        json_object_object_add(o, "encoder_params", json_object_new_int64((int64_t)m->encoder_params));
        json_object_object_add(o, "padding", json_object_new_string(m->model.same_padding ? "same" : "valid"));
    } else {
        json_object_object_add(o, "filters", filters_json(&m->model));
    }
    json_object_object_add(o, "deep_supervision", json_object_new_boolean(m->model.deep_supervision));
    json_object_object_add(o, "params", json_object_new_int64((int64_t)m->params));
    json_object_object_add(o, "flops_per_image", json_object_new_double(m->flops));
    json_object_object_add(o, "train_images_per_s", json_object_new_double(m->train_images_per_s));
    json_object_object_add(o, "train_activation_bytes", json_object_new_int64((int64_t)m->train_activation_bytes));
    json_object_object_add(o, "inference_ms_per_tile", json_object_new_double(m->infer_ms));
    val_runs_json(o, &m->val);
    json_object *logs = json_object_new_array();
    for (int s = 0; s < cfg->seeds; s++) {
        char p[PATH_LEN];
        run_path(p, sizeof p, "runs", m->name, cfg->seed + (uint64_t)s, "jsonl");
        json_object_array_add(logs, json_object_new_string(p));
    }
    json_object_object_add(o, "logs", logs);
    json_object *depths = json_object_new_array();
    for (int d = 1; d <= m->pruned_depths; d++) {
        const depth_result *p = &m->depth[d];
        json_object *x = json_object_new_object();
        json_object_object_add(x, "depth", json_object_new_int(d));
        json_object_object_add(x, "params", json_object_new_int64((int64_t)p->params));
        json_object_object_add(x, "flops_per_image", json_object_new_double(p->flops));
        json_object_object_add(x, "inference_ms_per_tile", json_object_new_double(p->infer_ms));
        json_object_object_add(x, "speedup", json_object_new_double(m->infer_ms / p->infer_ms));
        val_runs_json(x, &p->val);
        json_object_array_add(depths, x);
    }
    json_object_object_add(o, "pruning", depths);
    return o;
}

/* DIR/report.json, every number of the comparison, written atomically. */
static int write_json(const comparison *c, char *err, size_t errlen) {
    json_object *root = json_object_new_object(), *models = json_object_new_array();
    json_object_object_add(root, "settings", settings_json(c));
    if (c->match_target) json_object_object_add(root, "match", match_json(c));
    for (int i = 0; i < c->n_models; i++) json_object_array_add(models, model_json(c, &c->models[i]));
    json_object_object_add(root, "models", models);
    char path[PATH_LEN], tmp[PATH_LEN + 8];
    out_path(path, sizeof path, c->cfg->out_dir, "report.json");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_object_to_file_ext(tmp, root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE) ||
             rename(tmp, path);
    json_object_put(root);
    if (rc) {
        snprintf(err, errlen, "cannot write %.900s", path);
        unlink(tmp);
    }
    return rc ? -1 : 0;
}

/* scripts/compare_report.py next to the source tree of this executable, or
 * under the working directory; 0 when neither is there. */
static int find_report_script(char *buf, size_t n) {
    char exe[PATH_LEN];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            if (snprintf(buf, n, "%s/../scripts/compare_report.py", exe) < (int)n && access(buf, R_OK) == 0) return 1;
        }
    }
    snprintf(buf, n, "scripts/compare_report.py");
    return access(buf, R_OK) == 0;
}

/* DIR/report.md and its plots, written from report.json by
 * scripts/compare_report.py. A missing script or Python costs the report's
 * text and pictures, not the comparison: report.json holds every number. */
static void write_report(const char *dir) {
    char script[PATH_LEN];
    if (!find_report_script(script, sizeof script)) {
        printf("report: scripts/compare_report.py not found; every number is in %s/report.json\n", dir);
        return;
    }
    /* Debian's python3 has matplotlib (python3-matplotlib); a python3 first on PATH may not */
    const char *python = getenv("UNET_PYTHON");
    if (!python || !python[0]) python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char *argv[] = {(char *)python, script, (char *)dir, NULL};
    pid_t pid;
    int status = 0;
    fflush(stdout);
    if (posix_spawnp(&pid, python, NULL, NULL, argv, environ) || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status))
        printf("report: %s %s %s failed; every number is in %s/report.json\n", python, script, dir, dir);
}

/* One run's files under DIR/runs: its log, its checkpoint (the periodic
 * ones beside it while it trains) and, once trained and evaluated, its result. */
typedef struct {
    char log[PATH_LEN], ckpt[PATH_LEN], result[PATH_LEN];
} run_files;

static void run_files_of(const char *dir, const char *model, uint64_t seed, run_files *f) {
    run_path(f->log, sizeof f->log, dir, model, seed, "jsonl");
    run_path(f->ckpt, sizeof f->ckpt, dir, model, seed, "safetensors");
    run_path(f->result, sizeof f->result, dir, model, seed, "result.json");
}

/* What a finished run leaves: its metrics, as trained and pruned to each depth. */
typedef struct {
    unet_seg_metrics val, depth[UNET_MAX_LEVELS + 1]; /* depth[d], d = 1..pruned_depths */
    long steps;
    double wall_s;       /* of this process's part of the run */
    long continued_from; /* the step it continued from after an interruption; 0: trained in one go */
} run_result;

typedef struct {
    const run_result *r;
    int depths;
} result_text;

/* {"steps": N, "wall_s": t, "val_iou": ..., "L1_val_iou": ..., ...}: the
 * validation keys of the logs, "L<d>_" before those of depth d. */
static int print_result(FILE *f, void *ctx) {
    const result_text *t = ctx;
    char buf[16384];
    fprintf(f, "{\"steps\": %ld, \"wall_s\": %.3f", t->r->steps, t->r->wall_s);
    if (t->r->continued_from) fprintf(f, ", \"continued_from_step\": %ld", t->r->continued_from);
    unet_seg_metrics_json(buf, sizeof buf, &t->r->val, "val_");
    fputs(buf, f);
    for (int d = 1; d <= t->depths; d++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "L%d_val_", d);
        unet_seg_metrics_json(buf, sizeof buf, &t->r->depth[d], prefix);
        fputs(buf, f);
    }
    return fprintf(f, "}\n") < 0 ? -1 : 0;
}

/* A finished run's result file: 1 when it is there (a rerun keeps the run),
 * 0 when not, -1 when it is not of this comparison. */
static int load_result(const run_files *f, const comparison *c, const model_result *m, run_result *r, char *err,
                       size_t errlen) {
    if (access(f->result, F_OK)) return 0;
    json_object *o = json_object_from_file(f->result), *v;
    int ok = o && metrics_from_json(o, "val_", c->cfg->model.classes, &r->val);
    for (int d = 1; ok && d <= m->pruned_depths; d++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "L%d_val_", d);
        ok = metrics_from_json(o, prefix, c->cfg->model.classes, &r->depth[d]);
    }
    r->steps = ok && json_object_object_get_ex(o, "steps", &v) ? json_object_get_int64(v) : -1;
    r->wall_s = ok && json_object_object_get_ex(o, "wall_s", &v) ? json_object_get_double(v) : NAN;
    r->continued_from = ok && json_object_object_get_ex(o, "continued_from_step", &v) ? json_object_get_int64(v) : 0;
    json_object_put(o);
    if (!ok || r->steps != c->cfg->steps) {
        snprintf(err, errlen,
                 "%.900s is not the result of a %ld-step run of this comparison: give another --out, or "
                 "remove the file to train that run again",
                 f->result, c->cfg->steps);
        return -1;
    }
    return 1;
}

/* Whether what an earlier invocation left (`what`: its report.json, or an
 * unfinished run's checkpoint) came from this comparison: its model,
 * training and data options must be this command's, or its runs would be
 * mixed with ones trained otherwise. A rerun may add seeds, start at another
 * seed, and change how and where the runs compute and write. */
static int check_same_settings(const unet_config *earlier, const unet_config *now, const char *what, char *err,
                               size_t errlen) {
    static const char *const may_change[] = {"seed", "seeds", "stop-after", "resume", NULL};
    char first[512]; /* the message keeps 400 of it */
    if (!unet_config_first_difference(earlier, now, UNET_GROUP_MODEL | UNET_GROUP_TRAINING | UNET_GROUP_DATA,
                                      may_change, first, sizeof first))
        return 0;
    snprintf(err, errlen,
             "%.400s is from another comparison (its settings against this command's: %.400s): give its options "
             "again, or another --out",
             what, first);
    return -1;
}

/* The newest checkpoint an interrupted run left (a periodic one, or the one
 * a signal wrote to --save), with the configuration and step it holds: 1,
 * or 0 when there is none. */
static int unfinished_checkpoint(const run_files *f, char *newest, size_t n, unet_config *saved, long *step, char *err,
                                 size_t errlen) {
    char ignored[256];
    if (unet_run_newest_checkpoint(f->ckpt, newest, n, NULL, ignored, sizeof ignored)) return 0;
    return unet_checkpoint_config(newest, saved, step, err, errlen) < 0 ? -1 : 1;
}

/* The configuration one run trains with: the comparison's, with the run's
 * model, seed and files. */
static unet_config run_config(const comparison *c, const model_result *m, uint64_t seed, const run_files *f) {
    unet_config run = *c->cfg;
    run.model = m->model;
    run.seed = seed;
    if (!m->model.encoder) run.init_encoder = ""; /* torchvision's weights are for the backbones */
    run.log = f->log;
    run.save = f->ckpt;
    return run;
}

/* Trains one run by unet train's own run, or continues it from the newest
 * checkpoint an interrupted comparison left (its settings checked before
 * any work); not at all when its final checkpoint is there (the
 * interruption came while its depths were evaluated). */
static int train_or_continue(unet_config *run, const run_files *f, const char *name, long *from_step, char *err,
                             size_t errlen) {
    char newest[PATH_LEN];
    unet_config saved;
    long step = 0;
    int found = unfinished_checkpoint(f, newest, sizeof newest, &saved, &step, err, errlen);
    if (found < 0) return -1;
    if (found) {
        *from_step = step;
        if (step == run->steps) return 0;
        printf("   continuing from %s (step %ld of %ld)\n", newest, step, run->steps);
        fflush(stdout);
        run->resume = newest;
    }
    if (unet_run_train(run)) {
        snprintf(err, errlen,
                 "training %.31s with seed %llu failed (its message is above); run the same command "
                 "again to continue the comparison",
                 name, (unsigned long long)run->seed);
        return -1;
    }
    return 0;
}

/* One run of one model: trained into DIR/runs/<model>_seed<S>.jsonl, its
 * metrics those of the log's last validation, then every pruned depth
 * evaluated from its checkpoint. */
static int train_and_evaluate(const comparison *c, const model_result *m, uint64_t seed, const run_files *f,
                              run_result *r, char *err, size_t errlen) {
    const unet_config *cfg = c->cfg;
    unet_config run = run_config(c, m, seed, f);
    if (train_or_continue(&run, f, m->name, &r->continued_from, err, errlen)) return -1;
    long step = 0;
    if (last_validation(f->log, cfg->model.classes, &r->val, &step, err, errlen)) return -1;
    if (step != cfg->steps) {
        snprintf(err, errlen, "the %.31s run stopped at step %ld of %ld: the comparison is incomplete", m->name, step,
                 cfg->steps);
        return -1;
    }
    r->steps = step;
    for (int d = 1; d <= m->pruned_depths; d++) {
        unet_seg_metrics *pm = &r->depth[d];
        if (unet_evaluate_pruned(cfg, &m->model, d, f->ckpt, &c->val, pm, err, errlen)) return -1;
        printf("   pruned to L%d: IoU %.4f  Dice %.4f  pixel error %.4f  Rand error %.4f\n", d, pm->iou, pm->dice,
               pm->pixel_error, pm->rand_error);
        unet_seg_metrics_print_classes(stdout, pm, "     ");
    }
    return 0;
}

/* One run: kept from an earlier invocation when its result file is there,
 * else trained and evaluated, its result written and its checkpoints removed
 * (a full comparison would leave gigabytes behind). */
static int run_one(comparison *c, int i, uint64_t seed, int number, char *err, size_t errlen) {
    model_result *m = &c->models[i];
    run_files f;
    run_files_of(c->cfg->out_dir, m->name, seed, &f);
    run_result r = {0};
    int kept = load_result(&f, c, m, &r, err, errlen);
    if (kept < 0) return -1;
    printf("== %s, seed %llu (run %d of %d)%s\n", m->name, (unsigned long long)seed, number,
           c->cfg->seeds * c->n_models, kept ? ": finished earlier, kept" : "");
    fflush(stdout);
    if (!kept) {
        double t0 = unet_now_s();
        if (train_and_evaluate(c, m, seed, &f, &r, err, errlen)) return -1;
        r.wall_s = unet_now_s() - t0;
        result_text t = {&r, m->pruned_depths};
        /* the numbers as the file holds them (the logs' precision), so that a run kept by a rerun reports the
         * same as one trained in this process */
        if (unet_write_atomic(f.result, print_result, &t, err, errlen) || load_result(&f, c, m, &r, err, errlen) < 0)
            return -1;
        unlink(f.ckpt);
        unet_run_prune_periodic(f.ckpt, c->cfg->steps, 0);
    }
    add_run(&m->val, &r.val);
    for (int d = 1; d <= m->pruned_depths; d++) add_run(&m->depth[d].val, &r.depth[d]);
    /* a continued run's time, scaled to the whole run for the time left (its
     * evaluation of the depths counted as training); not at all when only
     * that evaluation was left */
    long steps = c->cfg->steps, from = r.continued_from;
    if (isfinite(r.wall_s) && from < steps) c->run_s[i] += r.wall_s * steps / (steps - from), c->runs_timed[i]++;
    if (isfinite(r.wall_s)) c->measured_s += r.wall_s, c->runs_continued += from > 0;
    c->runs_done++;
    return 0;
}

/* The settings of the comparison whose runs DIR keeps, from its report.json. */
static int check_report_settings(const comparison *c, char *err, size_t errlen) {
    char path[PATH_LEN], why[512];
    out_path(path, sizeof path, c->cfg->out_dir, "report.json");
    if (access(path, F_OK)) return 0; /* runs from before report.json: their steps were checked */
    json_object *o = json_object_from_file(path), *settings, *config;
    unet_config earlier;
    unet_config_defaults(&earlier);
    int ok = o && json_object_object_get_ex(o, "settings", &settings) &&
             json_object_object_get_ex(settings, "config", &config) &&
             !unet_config_from_json(&earlier, json_object_to_json_string(config), why, sizeof why);
    json_object_put(o);
    if (!ok) {
        snprintf(err, errlen, "%.900s is not the report of a unet compare: give another --out", path);
        return -1;
    }
    return check_same_settings(&earlier, c->cfg, path, err, errlen);
}

/* An unfinished run's newest checkpoint, of this comparison's settings. */
static int check_unfinished_run(const comparison *c, const model_result *m, uint64_t seed, const run_files *f,
                                char *err, size_t errlen) {
    char newest[PATH_LEN];
    unet_config saved, run = run_config(c, m, seed, f);
    long step;
    int found = unfinished_checkpoint(f, newest, sizeof newest, &saved, &step, err, errlen);
    return found < 0 ? -1 : found ? check_same_settings(&saved, &run, newest, err, errlen) : 0;
}

/* What an earlier invocation left (result files, an unfinished run's
 * checkpoints): a mistake of the input (an --out of another comparison)
 * found before any work. */
static int check_kept_runs(const comparison *c, char *err, size_t errlen) {
    int kept = 0;
    for (int s = 0; s < c->cfg->seeds; s++)
        for (int i = 0; i < c->n_models; i++) {
            const model_result *m = &c->models[i];
            uint64_t seed = c->cfg->seed + (uint64_t)s;
            run_files f;
            run_result r;
            run_files_of(c->cfg->out_dir, m->name, seed, &f);
            int k = load_result(&f, c, m, &r, err, errlen);
            if (k < 0 || (!k && check_unfinished_run(c, m, seed, &f, err, errlen))) return -1;
            kept += k;
        }
    return kept ? check_report_settings(c, err, errlen) : 0;
}

/* "1 h 05 min", "12 min", "40 s" */
static void duration_text(char *buf, size_t n, double s) {
    if (s >= 3600)
        snprintf(buf, n, "%d h %02d min", (int)(s / 3600), (int)(s / 60) % 60);
    else if (s >= 60)
        snprintf(buf, n, "%d min", (int)(s / 60 + 0.5));
    else
        snprintf(buf, n, "%.0f s", s);
}

/* "progress: k of n runs done, about T left": each model's runs still to go
 * at the mean wall time of its finished ones (of every model's, while it
 * has none). */
static void print_progress(const comparison *c) {
    const int total = c->cfg->seeds * c->n_models;
    double all_s = 0, left = 0;
    int timed = 0;
    for (int i = 0; i < c->n_models; i++) all_s += c->run_s[i], timed += c->runs_timed[i];
    for (int i = 0; i < c->n_models; i++) {
        int to_go = c->cfg->seeds - c->models[i].val.iou.n;
        double per_run = c->runs_timed[i] ? c->run_s[i] / c->runs_timed[i] : timed ? all_s / timed : NAN;
        if (to_go > 0) left += to_go * per_run;
    }
    char text[64];
    duration_text(text, sizeof text, left);
    if (c->runs_done == total)
        printf("progress: %d of %d runs done\n", total, total);
    else if (isnan(left))
        printf("progress: %d of %d runs done\n", c->runs_done, total);
    else
        printf("progress: %d of %d runs done, about %s left\n", c->runs_done, total, text);
    fflush(stdout);
}

/* Seed by seed, every model once per seed, the report rewritten as each run
 * finishes: an interrupted comparison leaves the report of the runs it
 * finished, and the same command continues it. */
static int run_models(comparison *c, char *err, size_t errlen) {
    for (int s = 0; s < c->cfg->seeds; s++)
        for (int i = 0; i < c->n_models; i++) {
            print_progress(c);
            if (run_one(c, i, c->cfg->seed + (uint64_t)s, s * c->n_models + i + 1, err, errlen) ||
                write_json(c, err, errlen))
                return -1;
            write_report(c->cfg->out_dir);
        }
    print_progress(c);
    return 0;
}

int unet_run_compare(unet_config *cfg) {
    char err[1024] = "";
    comparison c;
    int code = 2; /* until the runs start, failures are the input's */
    if (!compare_open(&c, cfg, err, sizeof err) && !check_kept_runs(&c, err, sizeof err)) {
        code = 1;
        if (!measure_models(&c, err, sizeof err) && !run_models(&c, err, sizeof err)) {
            printf("wrote %s/report.json and runs/ (%.0f s)\n", cfg->out_dir, unet_now_s() - c.t0);
            code = 0;
        }
    }
    if (code) fprintf(stderr, "unet compare: %s\n", err);
    compare_close(&c);
    return code;
}
