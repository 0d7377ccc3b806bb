/* Driver for tests/cpu/test_config.py and test_checkpoint.py: the option
 * table, the configuration JSON and checkpoints, through the library.
 *
 *   unet_cfgtest parse CMD [options]        {"config": .., "model": .., "explicit": [..]}; error: exit 2
 *   unet_cfgtest help CMD | usage
 *   unet_cfgtest print CMD [options]        the configuration printed at start
 *   unet_cfgtest roundtrip CMD [options]    parse, JSON, back, JSON again: prints the JSON, exit 1 on a difference
 *   unet_cfgtest fromjson CMD FILE          defaults + the JSON in FILE, printed as JSON
 *   unet_cfgtest merge CMD FILE [options]   options over the model of the config JSON in FILE (as predict does)
 *   unet_cfgtest device CMD [options]       "cuda index" of --device
 *
 *   unet_cfgtest ckpt-save DIR PATH [train options]    He init (--seed), random state and optimizer blocks
 *                                                      (per --optimizer), step --steps; writes the blocks to DIR
 *   unet_cfgtest ckpt-save-weights DIR PATH [train options]    the same without optimizer state
 *   unet_cfgtest ckpt-init DIR PATH [train options]    --init: weights into zeroed blocks, written to DIR
 *   unet_cfgtest ckpt-resume DIR PATH [train options]  --resume: weights, optimizer blocks, DIR/step.txt
 *   unet_cfgtest ckpt-meta PATH                        the metadata as JSON
 *   unet_cfgtest st-dump DIR PATH                      header as JSON; tensor i to DIR/i.bin (f32 or i64)
 *
 * DIR gets list.txt ("name kind offset count dims...") and params.bin, state.bin, opt_a.bin, opt_b.bin. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "unet/checkpoint.h"
#include "unet/config.h"
#include "unet/model.h"
#include "unet/plan.h"
#include "unet/rng.h"
#include "unet/safetensors.h"

#define TOOL_NAME "unet_cfgtest"
#include "tool_common.h"

static char err[2048];

static unet_config *parse_or_die(unet_config *cfg, const char *cmd, int argc, char **argv) {
    unet_config_defaults(cfg);
    int rc = unet_config_parse(cfg, cmd, argc, argv, err, sizeof err);
    if (rc == 1) {
        unet_config_help(stdout, cmd);
        exit(0);
    }
    if (rc) {
        fprintf(stderr, "unet %s: %s\n", cmd, err);
        exit(2);
    }
    return cfg;
}

static void print_parsed(const unet_config *cfg) {
    static const char *const names[] = {"model",
                                        "filters",
                                        "base",
                                        "levels",
                                        "padding",
                                        "in-channels",
                                        "classes",
                                        "norm",
                                        "upsample",
                                        "fusion",
                                        "deep-supervision",
                                        "dropout",
                                        "loss",
                                        "depth",
                                        "tile",
                                        "batch",
                                        "steps",
                                        "optimizer",
                                        "lr",
                                        "momentum",
                                        "weight-decay",
                                        "beta1",
                                        "beta2",
                                        "adam-eps",
                                        "schedule",
                                        "warmup",
                                        "seed",
                                        "no-shuffle",
                                        "augment",
                                        "val-fraction",
                                        "data",
                                        "val",
                                        "input",
                                        "raw-key",
                                        "label-key",
                                        "weight-key",
                                        "checkpoint",
                                        "init",
                                        "resume",
                                        "save",
                                        "output",
                                        "log",
                                        "log-every",
                                        "val-every",
                                        "json",
                                        "mode",
                                        "overlap",
                                        "device",
                                        "precision",
                                        "workers",
                                        "threads",
                                        "bench-warmup"};
    char *full = unet_config_to_json(cfg, 0), *model = unet_config_to_json(cfg, 1);
    printf("{\"config\": %s, \"model\": %s, \"total_steps\": %ld, \"explicit\": [", full, model,
           cfg->optim.total_steps);
    int first = 1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (unet_config_is_set(cfg, names[i])) printf("%s\"%s\"", first ? "" : ", ", names[i]), first = 0;
    printf("]}\n");
    free(full);
    free(model);
}

typedef struct {
    unet_model model;
    size_t nt, ns;
    float *params, *state, *opt_a, *opt_b;
} blocks;

static void build(const unet_config *cfg, blocks *b) {
    if (unet_model_build(&cfg->model, 0, 0, &b->model, err, sizeof err)) die(err, NULL);
    const unet_graph *g = b->model.graph;
    b->nt = unet_graph_trainable_count(g);
    b->ns = unet_graph_state_count(g);
    b->params = calloc(b->nt + 1, sizeof(float));
    b->state = calloc(b->ns + 1, sizeof(float));
    b->opt_a = calloc(b->nt + 1, sizeof(float));
    b->opt_b = cfg->optim.kind != UNET_OPT_SGD ? calloc(b->nt + 1, sizeof(float)) : NULL;
}

static void dump_blocks(const char *dir, const blocks *b) {
    char path[4096];
    snprintf(path, sizeof path, "%s/list.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) die("cannot write list.txt", NULL);
    const unet_param *p = unet_graph_params(b->model.graph);
    for (int k = 0; k < unet_graph_num_params(b->model.graph); k++) {
        fprintf(f, "%s %s %zu %zu", p[k].name, p[k].kind == UNET_PARAM_TRAINABLE ? "param" : "state", p[k].offset,
                p[k].count);
        for (int d = 0; d < p[k].ndim; d++) fprintf(f, " %d", p[k].dims[d]);
        fprintf(f, "\n");
    }
    fclose(f);
    write_file(dir, "params.bin", b->params, b->nt * sizeof(float));
    write_file(dir, "state.bin", b->state, b->ns * sizeof(float));
    write_file(dir, "opt_a.bin", b->opt_a, b->nt * sizeof(float));
    if (b->opt_b) write_file(dir, "opt_b.bin", b->opt_b, b->nt * sizeof(float));
}

/* Values unlike any initialisation, so a swapped block shows; the alignment
 * gaps between tensors stay zero, as a loaded block leaves them. */
static void fill(const unet_graph *g, unet_param_kind kind, float *block, uint64_t key) {
    const unet_param *p = unet_graph_params(g);
    for (int k = 0; k < unet_graph_num_params(g); k++)
        if (p[k].kind == kind)
            for (size_t i = 0; i < p[k].count; i++) block[p[k].offset + i] = unet_uniform(key, p[k].offset + i) * 2 - 1;
}

static int st_dump(const char *dir, const char *path) {
    unet_st_file *f;
    if (unet_st_open(path, &f, err, sizeof err)) die(err, NULL);
    json_object *root = json_object_new_object(), *list = json_object_new_array(), *meta = json_object_new_object();
    for (int i = 0; i < unet_st_count(f); i++) {
        const unet_st_tensor *t = unet_st_at(f, i);
        json_object *e = json_object_new_object(), *shape = json_object_new_array();
        json_object_object_add(e, "name", json_object_new_string(t->name));
        json_object_object_add(e, "dtype", json_object_new_string(unet_st_dtype_name(t->dtype)));
        for (int d = 0; d < t->ndim; d++) json_object_array_add(shape, json_object_new_int64(t->shape[d]));
        json_object_object_add(e, "shape", shape);
        json_object_array_add(list, e);
        size_t n = unet_st_numel(t);
        char name[32];
        snprintf(name, sizeof name, "%d.bin", i);
        if (t->dtype == UNET_ST_F32 || t->dtype == UNET_ST_F64 || t->dtype == UNET_ST_F16 || t->dtype == UNET_ST_BF16) {
            float *x = malloc((n + 1) * sizeof(float));
            if (unet_st_read_f32(f, t, x, err, sizeof err)) die(err, NULL);
            write_file(dir, name, x, n * sizeof(float));
            free(x);
        } else {
            int64_t *x = malloc((n + 1) * sizeof(int64_t));
            if (unet_st_read_i64(f, t, x, err, sizeof err)) die(err, NULL);
            write_file(dir, name, x, n * sizeof(int64_t));
            free(x);
        }
    }
    for (int i = 0; i < unet_st_meta_count(f); i++)
        json_object_object_add(meta, unet_st_meta_at(f, i)->key, json_object_new_string(unet_st_meta_at(f, i)->value));
    json_object_object_add(root, "tensors", list);
    json_object_object_add(root, "metadata", meta);
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
    json_object_put(root);
    unet_st_close(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        die("usage: unet_cfgtest parse|help|usage|print|roundtrip|fromjson|merge|device|ckpt-*|st-dump ...", NULL);
    const char *what = argv[1];
    if (!strcmp(what, "usage")) {
        unet_config_usage(stdout);
        return 0;
    }
    if (argc < 3) die("missing arguments", NULL);
    if (!strcmp(what, "parse")) {
        unet_config cfg;
        print_parsed(parse_or_die(&cfg, argv[2], argc - 3, argv + 3));
        return 0;
    }
    if (!strcmp(what, "help")) {
        unet_config_help(stdout, argv[2]);
        return 0;
    }
    if (!strcmp(what, "print")) {
        unet_config cfg;
        unet_config_print(stdout, parse_or_die(&cfg, argv[2], argc - 3, argv + 3), argv[2]);
        return 0;
    }
    if (!strcmp(what, "device")) {
        int cuda, index;
        unet_config cfg;
        if (unet_config_device(parse_or_die(&cfg, argv[2], argc - 3, argv + 3), &cuda, &index)) die("bad device", NULL);
        printf("%d %d\n", cuda, index);
        return 0;
    }
    if (!strcmp(what, "roundtrip")) {
        unet_config cfg_, back_, *cfg = parse_or_die(&cfg_, argv[2], argc - 3, argv + 3), *back = &back_;
        char *j1 = unet_config_to_json(cfg, 0);
        unet_config_defaults(back);
        if (unet_config_from_json(back, j1, err, sizeof err)) die(err, NULL);
        char *j2 = unet_config_to_json(back, 0);
        printf("%s\n", j1);
        /* the model must come back bit for bit: it rebuilds the network of a checkpoint */
        if (strcmp(j1, j2) || memcmp(&cfg->model, &back->model, sizeof cfg->model) ||
            memcmp(&cfg->optim, &back->optim, sizeof cfg->optim)) {
            fprintf(stderr, "round trip differs:\n%s\n%s\n", j1, j2);
            return 1;
        }
        free(j1);
        free(j2);
        return 0;
    }
    if (!strcmp(what, "fromjson") || !strcmp(what, "merge")) {
        if (argc < 4) die("missing FILE", NULL);
        size_t bytes;
        char *json = read_file(NULL, argv[3], &bytes);
        if (!json) die("cannot open the JSON file", argv[3]);
        unet_config from, cfg;
        unet_config_defaults(&from);
        int rc = unet_config_from_json(&from, json, err, sizeof err);
        free(json);
        if (rc) {
            fprintf(stderr, "unet %s: %s\n", argv[2], err);
            return 2;
        }
        if (!strcmp(what, "fromjson")) {
            print_parsed(&from);
            return 0;
        }
        parse_or_die(&cfg, argv[2], argc - 4, argv + 4);
        unet_config_merge(&cfg, &from, UNET_GROUP_MODEL);
        print_parsed(&cfg);
        return 0;
    }
    if (!strcmp(what, "ckpt-meta")) {
        unet_checkpoint_meta m;
        if (unet_checkpoint_read_meta(argv[2], &m, err, sizeof err)) die(err, NULL);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "config", m.config_json ? json_object_new_string(m.config_json) : NULL);
        json_object_object_add(o, "step", json_object_new_int64(m.progress.step));
        json_object_object_add(o, "format_version", json_object_new_int(m.format_version));
        json_object_object_add(o, "optimizer_state", json_object_new_string(m.optimizer_state));
        printf("%s\n", json_object_to_json_string(o));
        json_object_put(o);
        unet_checkpoint_meta_free(&m);
        return 0;
    }
    if (argc < 4) die("missing DIR PATH", NULL);
    const char *dir = argv[2], *path = argv[3];
    if (!strcmp(what, "st-dump")) return st_dump(dir, path);
    unet_config cfg_, *cfg = parse_or_die(&cfg_, "train", argc - 4, argv + 4);
    blocks b;
    build(cfg, &b);
    const unet_graph *g = b.model.graph;
    if (!strcmp(what, "ckpt-save") || !strcmp(what, "ckpt-save-weights")) {
        unet_param_init_host(g, cfg->seed, b.params, b.state);
        fill(g, UNET_PARAM_STATE, b.state, unet_rng_key(cfg->seed, 1, 0));
        fill(g, UNET_PARAM_TRAINABLE, b.opt_a, unet_rng_key(cfg->seed, 2, 0));
        if (b.opt_b) fill(g, UNET_PARAM_TRAINABLE, b.opt_b, unet_rng_key(cfg->seed, 3, 0));
        char *json = unet_config_to_json(cfg, 0);
        const int weights_only = !strcmp(what, "ckpt-save-weights");
        unet_run_progress progress = {.step = cfg->steps};
        if (unet_checkpoint_save(path, g, b.params, b.state, weights_only ? NULL : b.opt_a,
                                 weights_only ? NULL : b.opt_b, &progress, json, err, sizeof err))
            die(err, NULL);
        free(json);
    } else if (!strcmp(what, "ckpt-init")) {
        if (unet_checkpoint_load_weights(path, g, b.params, b.state, err, sizeof err)) die(err, NULL);
    } else if (!strcmp(what, "ckpt-resume")) {
        unet_run_progress progress;
        if (unet_checkpoint_load_resume(path, g, b.params, b.state, b.opt_a, b.opt_b, &progress, err, sizeof err))
            die(err, NULL);
        char text[32];
        snprintf(text, sizeof text, "%ld\n", progress.step);
        write_file(dir, "step.txt", text, strlen(text));
    } else {
        die("unknown subcommand", NULL);
    }
    dump_blocks(dir, &b);
    free(b.params);
    free(b.state);
    free(b.opt_a);
    free(b.opt_b);
    unet_model_free(&b.model);
    return 0;
}
