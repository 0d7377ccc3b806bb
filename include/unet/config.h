/* Everything a run needs, in one struct, and the one table of options that
 * fills it: parsing, `--help`, the configuration printed at start and the
 * JSON saved with a checkpoint all walk the same table (src/host/cli/options.c),
 * so a flag added there is parsed, documented, printed and saved at once. */
#ifndef UNET_CONFIG_H
#define UNET_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "unet/model.h"
#include "unet/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_CONFIG_MAX_OPTIONS 128
#define UNET_CONFIG_STRING_MAX  4095 /* longest path or key a string option takes */

/* Subcommands, as bits: an option lists the subcommands that take it. */
typedef enum {
    UNET_CMD_TRAIN = 1u << 0,
    UNET_CMD_PREDICT = 1u << 1,
    UNET_CMD_EVAL = 1u << 2,
    UNET_CMD_INFO = 1u << 3,
    UNET_CMD_BENCH = 1u << 4,
    UNET_CMD_PRUNE = 1u << 5,
    UNET_CMD_COMPARE = 1u << 6,
    /* `unet data weights` etc.: two words on the command line, one name here */
    UNET_CMD_DATA_WEIGHTS = 1u << 7,
    UNET_CMD_DATA_IMPORT = 1u << 8,
    UNET_CMD_DATA_SPLIT = 1u << 9,
    UNET_CMD_DATA_INFO = 1u << 10,
    UNET_CMD_EXPORT = 1u << 11,
} unet_command;

/* Option groups: sections of --help and of the printed configuration. */
typedef enum {
    UNET_GROUP_MODEL = 1u << 0,
    UNET_GROUP_TRAINING = 1u << 1,
    UNET_GROUP_DATA = 1u << 2,
    UNET_GROUP_OUTPUT = 1u << 3,
    UNET_GROUP_DEVICE = 1u << 4,
} unet_option_group;

typedef enum { UNET_PRECISION_AUTO, UNET_PRECISION_FP32, UNET_PRECISION_TF32, UNET_PRECISION_BF16 } unet_precision;
/* --layout: how a CUDA run holds activations in fp32 and tf32 (auto: nchw until a GPU has measured both; bf16 is
 * always nhwc, the CPU always nchw) */
typedef enum { UNET_LAYOUT_CHOICE_AUTO, UNET_LAYOUT_CHOICE_NCHW, UNET_LAYOUT_CHOICE_NHWC } unet_layout_choice;
/* predict --mode: the deepest head, the network pruned to --depth, or the mean of all heads */
typedef enum { UNET_MODE_DEEPEST, UNET_MODE_FAST, UNET_MODE_ACCURATE } unet_predict_mode;
/* --cuda-graph: record the training step once and replay it where the backend can (auto), or never (off) */
typedef enum { UNET_CUDA_GRAPH_AUTO, UNET_CUDA_GRAPH_OFF } unet_cuda_graph_mode;
/* --augment-device: where the augmentation's warp runs: on the loader's threads (cpu), or on the GPU of a CUDA
 * run, written straight into the training step's inputs (cuda; the backend's warp_batch in unet/backend.h) */
typedef enum { UNET_AUGMENT_DEVICE_CPU, UNET_AUGMENT_DEVICE_CUDA } unet_augment_device;
/* --save-best: the validation metric whose best value keeps a checkpoint (the deepest head's, as logged) */
typedef enum {
    UNET_BEST_NONE,
    UNET_BEST_IOU,
    UNET_BEST_DICE,
    UNET_BEST_PIXEL_ACCURACY,
    UNET_BEST_PIXEL_ERROR,
    UNET_BEST_RAND_ERROR,
    UNET_BEST_LOSS /* the loss the model trains on, of whole validation images */
} unet_best_metric;
/* --on-nonfinite: what a step with a NaN or infinite loss, gradient or statistic does (its update is dropped
 * either way): stop the run, or go on (at most --max-skips times) */
typedef enum { UNET_NONFINITE_STOP, UNET_NONFINITE_SKIP } unet_nonfinite_policy;

typedef struct {
    /* model: the builder's own config, so nothing is translated twice */
    unet_model_cfg model; /* --model --filters --padding --in-channels --classes --norm --upsample
                             --fusion --deep-supervision --dropout --loss --depth (prune_depth)
                             --encoder --decoder-channels --freeze-encoder-bn */
    int base, levels;     /* --base B [--levels N]: filters B * 2^i, i < N; resolved into model.filters */

    /* training */
    int tile;  /* input tile, pixels per side */
    int batch; /* per process */
    long steps;
    long stop_after;      /* stop (and save) after this step; 0: run all --steps */
    unet_optim_cfg optim; /* --optimizer --lr --momentum --weight-decay --schedule --warmup --beta1
                             --beta2 --adam-eps; total_steps = steps */
    uint64_t seed;
    int no_shuffle;
    const char *augment;                /* none | paper | a list, checked by the augmentation */
    unet_augment_device augment_device; /* where --augment's warp runs */
    float val_fraction;                 /* held-out share of --data when there is no --val (0: none) */
    unet_nonfinite_policy on_nonfinite;
    int max_skips; /* --on-nonfinite skip: the most steps dropped before the run stops */

    /* data: files read. Strings are never NULL ("" when unset) and live as
     * long as the process (argv, literals, or interned copies from JSON), so
     * a configuration copies like a plain struct. */
    const char *data, *val, *input;
    const char *raw_key, *label_key, *weight_key;
    const char *init, *resume, *checkpoint;
    const char *init_encoder; /* --init-encoder: torchvision weights for the backbone */

    /* output: files written, logging */
    const char *save, *output, *log;
    int log_every, val_every;
    long save_every;            /* a periodic checkpoint beside --save every N steps (0: off) */
    float save_every_min;       /* ... and every M minutes of wall time (0: off) */
    int keep;                   /* periodic checkpoints kept */
    unet_best_metric save_best; /* the best validation's checkpoint beside --save */
    int json;
    unet_predict_mode mode;
    float overlap; /* same-padding tiles: overlap share for blending */
    int opset;     /* export: the ONNX operator set */

    /* device */
    const char *device; /* cpu | cuda | cuda:N | auto; see unet_config_device() */
    unet_precision precision;
    unet_layout_choice layout; /* CUDA fp32/tf32: NCHW or NHWC activations */
    int fast_nondeterministic; /* CUDA: let cuDNN pick engines with atomics (not the same bits run to run) */
    int workers, threads;
    float memory_budget; /* info: GiB of device memory to plan a run for (0: the CUDA device's free memory) */

    /* data parallel (include/unet/dist.h) */
    int dist;                         /* unet_dist_kind: none | mpi | nccl | auto */
    int rank, world_size, local_rank; /* -1: from the launcher's environment */
    int sync_bn;                      /* batch statistics over every rank's batch */
    float dist_timeout;               /* seconds a rank waits for the others before giving up */
    float bucket_mb;                  /* gradient allreduce bucket size, MiB */

    /* the step as one CUDA graph (src/host/train/step.h) */
    unet_cuda_graph_mode cuda_graph;

    /* bench */
    int bench_warmup; /* untimed steps before timing */

    /* data commands (include/unet/datacmd.h) */
    float w0, sigma;            /* data weights: border weight and its width, pixels */
    int no_balance;             /* data weights: w_c = 1 */
    const char *images, *masks; /* data import: folders of TIFF/PNG files */

    /* presets, matched parameter counts, compare */
    int preset;               /* --preset: 0 none, else the preset whose options are filled in */
    const char *match_params; /* "": off; a model kind (the reference is the configured model of that kind)
                                 or a parameter count: the U-Net width that comes closest */
    const char *models;       /* compare: comma-separated model names */
    const char *out_dir;      /* compare: report directory */
    int seeds;                /* compare: runs per model, seeds --seed, --seed + 1, ... */
    int auto_depth;           /* prune --auto: the shallowest depth within --tolerance of the best head */
    float tolerance;          /* prune --auto: IoU the chosen head may give up against the best */

    /* which options the command line (not a default, a checkpoint or a
     * preset) set, by index in the option table */
    unsigned char explicit_set[UNET_CONFIG_MAX_OPTIONS];
} unet_config;

/* Defaults: the original U-Net of the paper (1 -> 2 classes, filters
 * 64..1024, valid padding, SGD momentum 0.99, 572 x 572 tiles). */
void unet_config_defaults(unet_config *cfg);

/* Parses GNU long options (`--name value`, `--name=value`, bare flags) of
 * one subcommand into cfg, which should hold defaults. argv[0] is the first
 * option (not the program or subcommand name). Returns 0; 1 when --help or -h
 * was given (print unet_config_help and exit 0); -1 with one line in err
 * (unknown option with a suggestion, an option the subcommand does not take,
 * a missing or malformed value, a value out of range: exit code 2).
 * Afterwards: filters resolved from --base/--levels, loss defaulted from the
 * classes when not given, optim.total_steps = steps. */
int unet_config_parse(unet_config *cfg, const char *subcommand, int argc, char **argv, char *err, size_t errlen);

/* An encoder model's defaults where the command line did not set them: --padding same, --norm batch, --upsample
 * nearest (smp's decoder). parse applies them with --encoder (where --filters, --base or --levels are an error);
 * compare to the encoder models of its --models. */
void unet_config_encoder_defaults(unet_config *cfg);

/* Whether the command line set this option (long name without dashes). */
int unet_config_is_set(const unet_config *cfg, const char *name);

/* Copies from src every option of `groups` (unet_option_group bits) that the
 * command line did not set in dst: predict takes the model from a
 * checkpoint's metadata while explicit flags win; presets work the same way. */
void unet_config_merge(unet_config *dst, const unet_config *src, unsigned groups);

/* Whether a and b differ in an option of `groups` (JSON-kept options, those
 * named in the NULL-ended except aside): 1 with the first such option in buf
 * as "--lr 0.001 against 0.002" (a's value first), else 0. unet compare
 * refuses to add runs to a comparison of other settings. */
int unet_config_first_difference(const unet_config *a, const unet_config *b, unsigned groups, const char *const *except,
                                 char *buf, size_t n);

/* usage, the subcommand's summary and its options by group, with defaults */
void unet_config_help(FILE *f, const char *subcommand);
/* Top-level usage: the subcommands and their summaries. */
void unet_config_usage(FILE *f);
/* unet --version: the version (git describe at build time), the build's
 * options and the libraries' versions (src/host/cli/version.c). */
void unet_print_version(FILE *f);
/* The configuration printed at the start of a run: the subcommand's options
 * as name=value, a line per group (unset paths and off flags left out). */
void unet_config_print(FILE *f, const unet_config *cfg, const char *subcommand);

/* JSON of the configuration (malloc'd, free() it): with model_only, the
 * model's options alone (what a checkpoint needs to rebuild the network);
 * else every option. Keys are option names with '_' for '-'; enums as their
 * names; floats in the shortest form that reads back to the same float. */
char *unet_config_to_json(const unet_config *cfg, int model_only);
/* Sets the options present in json (either form above) on top of cfg; an
 * unknown key, a wrong type or a value out of range is -1 with one line.
 * Does not mark options explicit. */
int unet_config_from_json(unet_config *cfg, const char *json, char *err, size_t errlen);

/* --device: 0 with *cuda (0 cpu, 1 cuda, -1 auto) and *index (-1 when not given). */
int unet_config_device(const unet_config *cfg, int *cuda, int *index);
/* The name of an enum option's value ("precision", UNET_PRECISION_BF16 -> "bf16"); NULL if none. */
const char *unet_config_choice_name(const char *option, int value);
/* A subcommand's bit, 0 when unknown. */
unsigned unet_config_command(const char *subcommand);

/* A minimal dispatcher for main(): finds the subcommand, parses its options
 * into defaults, prints help or the one-line error ("unet: ...", exit 2), and
 * calls the matching handler with the configuration. */
typedef int (*unet_cli_handler)(unet_config *cfg);
typedef struct {
    const char *name;
    unet_cli_handler run;
} unet_cli_command_impl;
int unet_cli_dispatch(int argc, char **argv, const unet_cli_command_impl *impls, int n_impls);

#ifdef __cplusplus
}
#endif

#endif
