/* The one table of options. Parsing, --help, the configuration printed at
 * start and the JSON saved with a checkpoint all walk it; defaults are
 * written as they would be typed and go through the same parser as the
 * command line and the JSON, so there is one piece of code per value type. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "host/common/util.h"
#include "unet/config.h"

/* Enum options are stored through an int pointer. */
_Static_assert(sizeof(unet_model_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_loss_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_up_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_encoder_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_optimizer_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_schedule_kind) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_precision) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_layout_choice) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_predict_mode) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_cuda_graph_mode) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_augment_device) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_best_metric) == sizeof(int), "enum storage");
_Static_assert(sizeof(unet_nonfinite_policy) == sizeof(int), "enum storage");

typedef enum { OPT_INT, OPT_LONG, OPT_U64, OPT_FLOAT, OPT_STRING, OPT_FLAG, OPT_ENUM, OPT_INT_LIST } opt_type;

/* Input-only options, resolved into other fields (--base, --levels): not
 * printed, not saved. */
#define OPTF_NO_JSON 1u

typedef struct {
    const char *name; /* long name without dashes */
    opt_type type;
    size_t offset;              /* into unet_config */
    size_t size;                /* bytes of the field: string capacity, list capacity * sizeof(int) */
    size_t count_offset;        /* int lists: the int that holds the length */
    int min_count;              /* int lists: fewest elements */
    const char *const *choices; /* enums: NULL-terminated, stored as the index */
    double min, max;            /* numbers (list elements): allowed range */
    int min_open, max_open;     /* exclusive bounds */
    const char *def;            /* default as typed on the command line; NULL: zero, or derived */
    const char *meta;           /* the value's placeholder in --help */
    const char *help;
    unsigned commands; /* unet_command bits */
    unet_option_group group;
    unsigned flags;
    int (*check)(const char *value, char *err, size_t errlen);
    const char *bare; /* value when the option is given without one (--match-params alone); NULL: required */
} option;

typedef struct {
    const char *name;
    unsigned bit;
    const char *summary;
} command;

/* Adding a subcommand: a bit in unet_command, a line here, and its bit in
 * the sets below (or on single options). */
static const command commands[] = {
    {"train", UNET_CMD_TRAIN, "train a model on an HDF5 dataset and save a checkpoint"},
    {"predict", UNET_CMD_PREDICT, "predict probabilities and labels of an HDF5 dataset with a checkpoint"},
    {"eval", UNET_CMD_EVAL,
     "IoU, Dice, pixel and Rand error of a checkpoint on labelled data (per class, and their "
     "mean)"},
    {"info", UNET_CMD_INFO,
     "parameters, output size, FLOPs and memory of a model at a tile size; the largest batch "
     "that fits"},
    {"bench", UNET_CMD_BENCH, "time training steps (or inference, with --mode) of a model on random data"},
    {"prune", UNET_CMD_PRUNE, "write the network of a checkpoint pruned to --depth as a checkpoint of its own"},
    {"compare", UNET_CMD_COMPARE, "train several models under identical settings and report them side by side"},
    {"export", UNET_CMD_EXPORT, "write a checkpoint's inference network (as --mode runs it) as an ONNX model"},
    {"data weights", UNET_CMD_DATA_WEIGHTS, "add the U-Net paper's border weight map (weight) to an HDF5 dataset"},
    {"data import", UNET_CMD_DATA_IMPORT, "make an HDF5 dataset from folders of TIFF or PNG images and masks"},
    {"data split", UNET_CMD_DATA_SPLIT,
     "split an HDF5 dataset's images at random into a training and a validation file"},
    {"data info", UNET_CMD_DATA_INFO, "shapes, types, labels, weights and storage of an HDF5 dataset"},
};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

/* Commands that take one bare argument, and the option it sets (unet data info D.h5). */
static const struct {
    unsigned bit;
    const char *option;
} positionals[] = {{UNET_CMD_DATA_WEIGHTS, "data"}, {UNET_CMD_DATA_SPLIT, "data"}, {UNET_CMD_DATA_INFO, "data"}};

static const char *positional_of(unsigned bit) {
    for (size_t i = 0; i < sizeof positionals / sizeof positionals[0]; i++)
        if (positionals[i].bit == bit) return positionals[i].option;
    return NULL;
}

/* compare trains every model as train would, so it takes every training
 * option; the few that name one run's files say UNET_CMD_TRAIN alone */
#define TRAIN        (UNET_CMD_TRAIN | UNET_CMD_COMPARE)
#define TRAIN_ONLY   UNET_CMD_TRAIN
#define PRUNE        UNET_CMD_PRUNE
#define COMPARE      UNET_CMD_COMPARE
#define DATA_WEIGHTS UNET_CMD_DATA_WEIGHTS
#define DATA_FILES   (UNET_CMD_DATA_WEIGHTS | UNET_CMD_DATA_SPLIT | UNET_CMD_DATA_INFO) /* take D.h5 and its keys */
#define PREDICT      UNET_CMD_PREDICT
#define EVAL         UNET_CMD_EVAL
#define INFO         UNET_CMD_INFO
#define BENCH        UNET_CMD_BENCH
#define EXPORT       UNET_CMD_EXPORT
#define MODEL_USERS  (TRAIN | PREDICT | EVAL | INFO | BENCH) /* every command that builds a network */
#define MODEL_FLAGS                                                                                                    \
    (MODEL_USERS | PRUNE)                         /* the model's own options: prune, like predict, takes them for a    \
                                                     checkpoint without the engine's metadata */
#define RUNNERS  (TRAIN | PREDICT | EVAL | BENCH) /* every command that computes on a device */
#define STEPPERS (TRAIN | BENCH)                  /* every command that takes optimizer steps */

#define NOMAX    HUGE_VAL
#define TEXT_MAX (UNET_CONFIG_STRING_MAX + 64) /* any value as text */
#define F(field) .offset = offsetof(unet_config, field), .size = sizeof(((unet_config *)0)->field)

static const char *const model_kinds[] = {"unet", "unet_e", "unet_plus", "unetpp", NULL};
static const char *const paddings[] = {"valid", "same", NULL};
static const char *const norms[] = {"none", "batch", NULL};
static const char *const upsamples[] = {"transposed", "bilinear", "nearest", NULL}; /* unet_up_kind's order */
static const char *const encoders[] = {"plain", "resnet18", "resnet34", "resnet50", "mobilenet_v2", NULL};
static const char *const fusions[] = {"concat", "add", NULL};
static const char *const losses[] = {"ce", "bce_dice", NULL};
static const char *const optimizers[] = {"sgd", "adam", "adamw", NULL};
static const char *const schedules[] = {"constant", "cosine", "poly", NULL};
static const char *const precisions[] = {"auto", "fp32", "tf32", "bf16", NULL};
static const char *const layouts[] = {"auto", "nchw", "nhwc", NULL};           /* unet_layout_choice's order */
static const char *const dist_kinds[] = {"none", "mpi", "nccl", "auto", NULL}; /* unet_dist_kind's order */
static const char *const modes[] = {"deepest", "fast", "accurate", NULL};
static const char *const preset_names[] = {
    "none", "unet-paper", "unetpp-paper", "unet-resnet34", "unetpp-resnet34", "unet-mobilenet", NULL};
static const char *const cuda_graph_modes[] = {"auto", "off", NULL}; /* unet_cuda_graph_mode's order */
static const char *const augment_devices[] = {"cpu", "cuda", NULL};  /* unet_augment_device's order */
/* unet_best_metric's order; the names are the training log's keys */
static const char *const best_metrics[] = {
    "none", "val_iou", "val_dice", "val_pixel_accuracy", "val_pixel_error", "val_rand_error", "val_loss", NULL};
static const char *const nonfinite_policies[] = {"stop", "skip", NULL}; /* unet_nonfinite_policy's order */

/* What each preset sets, as typed on the command line (index as in
 * preset_names); explicit flags win. The loss follows the classes. */
static const char *const preset_values[][10] = {
    {NULL},
    /* Ronneberger et al. 2015: CE (weighted by the dataset's weight map when it has one), SGD momentum 0.99 */
    {"model=unet", "filters=64,128,256,512,1024", "padding=valid", "classes=2", "optimizer=sgd", "momentum=0.99",
     "tile=572", NULL},
    /* Zhou et al. 2018: BCE + Dice on every head, Adam 3e-4, 96 x 96 inputs */
    {"model=unetpp", "filters=32,64,128,256,512", "padding=same", "classes=1", "deep-supervision=true",
     "optimizer=adam", "lr=0.0003", "tile=96", NULL},
    /* what segmentation_models_pytorch's users reach for: its Unet / UnetPlusPlus on ResNet-34 or MobileNetV2 (same
     * padding, batch norm and nearest upsampling follow from the encoder), one sigmoid class, Adam 1e-4 */
    {"model=unet", "encoder=resnet34", "classes=1", "optimizer=adam", "lr=0.0001", "tile=256", NULL},
    {"model=unetpp", "encoder=resnet34", "classes=1", "optimizer=adam", "lr=0.0001", "tile=256", NULL},
    {"model=unet", "encoder=mobilenet_v2", "classes=1", "optimizer=adam", "lr=0.0001", "tile=256", NULL},
};

static int check_match_params(const char *value, char *err, size_t errlen);

static int check_device(const char *value, char *err, size_t errlen);

#define G_MODEL    UNET_GROUP_MODEL
#define G_TRAINING UNET_GROUP_TRAINING
#define G_DATA     UNET_GROUP_DATA
#define G_OUTPUT   UNET_GROUP_OUTPUT
#define G_DEVICE   UNET_GROUP_DEVICE

static const option options[] = {
    /* model: the fields of unet_model_cfg */
    {"model", OPT_ENUM, F(model.kind), .choices = model_kinds, .def = "unet", .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "family member: which skips feed a decoder node"},
    {"filters", OPT_INT_LIST, F(model.filters), .count_offset = offsetof(unet_config, model.levels), .min_count = 2,
     .min = 1, .max = 65536, .def = "64,128,256,512,1024", .meta = "F0,F1,...", .commands = MODEL_FLAGS,
     .group = G_MODEL, .help = "filters per level, f_0 .. f_L"},
    {"base", OPT_INT, F(base), .min = 1, .max = 65536, .meta = "B", .commands = MODEL_FLAGS, .group = G_MODEL,
     .flags = OPTF_NO_JSON, .help = "filters B * 2^i instead of --filters (with --levels N, or --depth N)"},
    {"levels", OPT_INT, F(levels), .min = 2, .max = UNET_MAX_LEVELS, .def = "5", .meta = "N", .commands = MODEL_FLAGS,
     .group = G_MODEL, .flags = OPTF_NO_JSON, .help = "filter levels with --base"},
    {"padding", OPT_ENUM, F(model.same_padding), .choices = paddings, .def = "valid", .commands = MODEL_FLAGS,
     .group = G_MODEL, .help = "3x3 convolutions without (valid, the paper) or with zero padding"},
    {"in-channels", OPT_INT, F(model.in_channels), .min = 1, .max = 4096, .def = "1", .meta = "C",
     .commands = MODEL_FLAGS, .group = G_MODEL, .help = "image channels"},
    {"classes", OPT_INT, F(model.classes), .min = 1, .max = 64, .def = "2", .meta = "K", .commands = MODEL_FLAGS,
     .group = G_MODEL, .help = "output channels: 1 (sigmoid) or K >= 2 (softmax)"},
    {"norm", OPT_ENUM, F(model.batch_norm), .choices = norms, .def = "none", .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "normalisation after each convolution"},
    {"upsample", OPT_ENUM, F(model.upsample), .choices = upsamples, .def = "transposed", .commands = MODEL_FLAGS,
     .group = G_MODEL,
     .help = "2x2 transposed convolution, or bilinear x2 and a 1x1 convolution; nearest x2 alone is smp's decoder "
             "(the default, and the only choice, with --encoder)"},
    {"fusion", OPT_ENUM, F(model.fusion_add), .choices = fusions, .def = "concat", .commands = MODEL_FLAGS,
     .group = G_MODEL, .help = "how a decoder node fuses its skips"},
    {"encoder", OPT_ENUM, F(model.encoder), .choices = encoders, .def = "plain", .commands = MODEL_FLAGS,
     .group = G_MODEL,
     .help = "the contracting path: the paper's blocks of --filters, or a torchvision backbone under "
             "segmentation_models_pytorch's names, with smp's Unet (--model unet) or UnetPlusPlus (unetpp) "
             "decoder: nearest x2 upsampling, conv + batch norm + ReLU blocks, a 3x3 head; tiles a multiple of 32. "
             "With an encoder --padding defaults to same, --norm to batch, --upsample to nearest"},
    {"decoder-channels", OPT_INT_LIST, F(model.decoder_channels),
     .count_offset = offsetof(unet_config, model.decoder_levels), .min_count = UNET_ENCODER_STAGES, .min = 1,
     .max = 65536, .def = "256,128,64,32,16", .meta = "D1,...,D5", .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "with --encoder: widths of the decoder nodes from the deepest to the head (smp's decoder_channels)"},
    {"freeze-encoder-bn", OPT_FLAG, F(model.freeze_encoder_bn), .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "with --encoder: the backbone's batch norms normalise with their running statistics in training too "
             "and keep them (PyTorch's BatchNorm2d in eval mode), for fine-tuning with small batches; their scale "
             "and shift still train"},
    {"deep-supervision", OPT_FLAG, F(model.deep_supervision), .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "a head on every X^{0,j} (not for --model unet)"},
    {"dropout", OPT_FLOAT, F(model.dropout), .min = 0, .max = 1, .max_open = 1, .def = "0", .meta = "P",
     .commands = MODEL_FLAGS, .group = G_MODEL, .help = "dropout probability at the end of the contracting path"},
    {"loss", OPT_ENUM, F(model.loss), .choices = losses, .commands = MODEL_FLAGS, .group = G_MODEL,
     .help = "softmax cross-entropy, or sigmoid BCE + soft Dice (default: ce for --classes >= 2, bce_dice for 1)"},
    {"depth", OPT_INT, F(model.prune_depth), .min = 0, .max = UNET_MAX_LEVELS, .def = "0", .meta = "D",
     .commands = MODEL_FLAGS | EXPORT, .group = G_MODEL,
     .help = "prune to depth D: the nodes with i + j <= D and head D; with --deep-supervision heads 1..D and the "
             "nodes they need (what a deep-supervised run trains; prune and predict --mode fast keep head D alone). "
             "0: the full model; with --base and no --levels: the number of levels"},
    {"preset", OPT_ENUM, F(preset), .choices = preset_names, .def = "none", .commands = TRAIN | INFO | BENCH,
     .group = G_MODEL, .flags = OPTF_NO_JSON,
     .help = "a paper's setup: unet-paper (filters 64..1024, valid, 2 classes, CE, SGD momentum 0.99) or "
             "unetpp-paper (filters 32..512, same, 1 class BCE + Dice, deep supervision, Adam 3e-4, tile 96); "
             "unet-resnet34, unetpp-resnet34, unet-mobilenet (smp's Unet or UnetPlusPlus on a ResNet-34 or "
             "MobileNetV2 encoder, 1 class BCE + Dice, Adam 1e-4, tile 256; add --init-encoder W to fine-tune "
             "ImageNet weights); explicit flags win"},
    {"match-params", OPT_STRING, F(match_params), .meta = "[MODEL|N]", .bare = "unetpp", .commands = INFO | COMPARE,
     .group = G_MODEL, .flags = OPTF_NO_JSON, .check = check_match_params,
     .help = "the U-Net width whose parameter count comes closest to the model of the other flags as --model MODEL "
             "(alone: unetpp), or to N parameters"},
    {"auto", OPT_FLAG, F(auto_depth), .commands = PRUNE, .group = G_MODEL, .flags = OPTF_NO_JSON,
     .help = "choose the depth: every head of a deep-supervised checkpoint scored on --val, the shallowest whose IoU "
             "is within --tolerance of the best head's"},
    {"tolerance", OPT_FLOAT, F(tolerance), .min = 0, .max = 1, .def = "0.01", .meta = "T", .commands = PRUNE,
     .group = G_MODEL, .flags = OPTF_NO_JSON,
     .help = "prune --auto: the IoU (0..1) the chosen depth may give up against the best head"},
    {"models", OPT_STRING, F(models), .def = "unet,unet_e,unet_plus,unetpp", .meta = "M1,M2,...", .commands = COMPARE,
     .group = G_MODEL, .flags = OPTF_NO_JSON,
     .help = "models to compare: unet, unet_e, unet_plus, unetpp, wide_unet (the U-Net of --match-params)"},

    /* training */
    {"tile", OPT_INT, F(tile), .min = 1, .max = 1 << 20, .def = "572", .meta = "S", .commands = MODEL_USERS | EXPORT,
     .group = G_TRAINING, .help = "input tile size, pixels per side"},
    {"batch", OPT_INT, F(batch), .min = 1, .max = 1 << 20, .def = "1", .meta = "B", .commands = MODEL_USERS,
     .group = G_TRAINING, .help = "tiles per step, per process"},
    {"steps", OPT_LONG, F(steps), .min = 0, .max = 1e15, .def = "1000", .meta = "N", .commands = STEPPERS,
     .group = G_TRAINING, .help = "training steps"},
    {"stop-after", OPT_LONG, F(stop_after), .min = 0, .max = 1e15, .def = "0", .meta = "K", .commands = TRAIN_ONLY,
     .group = G_TRAINING,
     .help = "stop after step K of the --steps schedule and save as a signal would (0: run to the end); "
             "--resume with the same --steps continues exactly"},
    {"optimizer", OPT_ENUM, F(optim.kind), .choices = optimizers, .def = "sgd", .commands = STEPPERS | INFO,
     .group = G_TRAINING,
     .help = "SGD with momentum, Adam, or AdamW (decoupled weight decay); info: its state in the memory of a run "
             "(one buffer for sgd, two for adam)"},
    {"lr", OPT_FLOAT, F(optim.lr), .min = 0, .min_open = 1, .max = NOMAX, .def = "0.01", .meta = "X",
     .commands = STEPPERS, .group = G_TRAINING, .help = "learning rate (peak, after warm-up)"},
    {"momentum", OPT_FLOAT, F(optim.momentum), .min = 0, .max = 1, .max_open = 1, .def = "0.99", .meta = "M",
     .commands = STEPPERS, .group = G_TRAINING, .help = "SGD momentum (0.99 in the U-Net paper)"},
    {"weight-decay", OPT_FLOAT, F(optim.weight_decay), .min = 0, .max = NOMAX, .def = "0", .meta = "W",
     .commands = STEPPERS, .group = G_TRAINING, .help = "weight decay (L2 for sgd and adam, decoupled for adamw)"},
    {"beta1", OPT_FLOAT, F(optim.beta1), .min = 0, .max = 1, .max_open = 1, .def = "0.9", .meta = "B1",
     .commands = STEPPERS, .group = G_TRAINING, .help = "Adam first-moment decay"},
    {"beta2", OPT_FLOAT, F(optim.beta2), .min = 0, .max = 1, .max_open = 1, .def = "0.999", .meta = "B2",
     .commands = STEPPERS, .group = G_TRAINING, .help = "Adam second-moment decay"},
    {"adam-eps", OPT_FLOAT, F(optim.eps), .min = 0, .min_open = 1, .max = NOMAX, .def = "1e-08", .meta = "E",
     .commands = STEPPERS, .group = G_TRAINING, .help = "Adam denominator epsilon"},
    {"schedule", OPT_ENUM, F(optim.schedule), .choices = schedules, .def = "constant", .commands = STEPPERS,
     .group = G_TRAINING, .help = "learning-rate schedule over --steps"},
    {"warmup", OPT_LONG, F(optim.warmup_steps), .min = 0, .max = 1e15, .def = "0", .meta = "N", .commands = STEPPERS,
     .group = G_TRAINING, .help = "linear learning-rate warm-up steps before the schedule"},
    {"seed", OPT_U64, F(seed), .def = "1", .meta = "S", .commands = TRAIN | INFO | BENCH | UNET_CMD_DATA_SPLIT,
     .group = G_TRAINING,
     .help = "seed of initialisation, sampling, augmentation and dropout (data split: of the pick)"},
    {"seeds", OPT_INT, F(seeds), .min = 1, .max = 1000, .def = "3", .meta = "N", .commands = COMPARE,
     .group = G_TRAINING, .help = "runs per model, with seeds --seed, --seed + 1, ..."},
    {"no-shuffle", OPT_FLAG, F(no_shuffle), .commands = TRAIN, .group = G_TRAINING,
     .help = "take images in order instead of a permutation per epoch"},
    {"augment", OPT_STRING, F(augment), .def = "none", .meta = "none|paper|LIST", .commands = TRAIN,
     .group = G_TRAINING,
     .help = "data augmentation. paper = elastic,flip,rot90: elastic deformation (random displacements on a 3x3 "
             "grid, sigma 10 px, bicubic field; raw cubic, labels nearest, mirrored borders), random flips and "
             "90-degree rotations. A LIST names any of elastic[:sigma=10:grid=3:interp=cubic|linear], flip, rot90, "
             "rotate[:deg=15], scale[:range=0.1], gamma[:range=0.3], brightness[:range=0.1], contrast[:range=0.2], "
             "noise[:std=0.03], e.g. paper,noise (see include/unet/augment.h)"},
    {"on-nonfinite", OPT_ENUM, F(on_nonfinite), .choices = nonfinite_policies, .def = "stop", .commands = TRAIN,
     .group = G_TRAINING,
     .help = "a step whose loss, gradients or batch norm statistics hold a NaN or infinity has its update dropped, "
             "and then the run stops (naming the step and the last good checkpoint), or goes on (skip: counted in "
             "the log, at most --max-skips times)"},
    {"max-skips", OPT_INT, F(max_skips), .min = 0, .max = INT_MAX, .def = "10", .meta = "N", .commands = TRAIN,
     .group = G_TRAINING, .help = "--on-nonfinite skip: the run stops at the (N+1)-th dropped step"},
    {"val-fraction", OPT_FLOAT, F(val_fraction), .min = 0, .max = 1, .max_open = 1, .def = "0", .meta = "F",
     .commands = TRAIN | UNET_CMD_DATA_SPLIT, .group = G_TRAINING,
     .help = "share F of --data for validation: train holds out the last images (rows of a single image) when "
             "there is no --val (0: none); data split picks whole images at random"},

    /* data: files read */
    {"data", OPT_STRING, F(data), .meta = "D.h5", .commands = TRAIN | EVAL | DATA_FILES, .group = G_DATA,
     .help = "HDF5 dataset: raw, label, optional weight and instances (data commands: also the bare argument)"},
    {"images", OPT_STRING, F(images), .meta = "DIR", .commands = UNET_CMD_DATA_IMPORT, .group = G_DATA,
     .help = "folder of images (.tif, .tiff, .png; 8 or 16 bit, gray or RGB), all of one size"},
    {"masks", OPT_STRING, F(masks), .meta = "DIR", .commands = UNET_CMD_DATA_IMPORT, .group = G_DATA,
     .help = "folder of masks named like the images: two values (a binary mask) give label = mask > 0; more give "
             "instances = mask and label = mask > 0"},
    {"val", OPT_STRING, F(val), .meta = "V.h5", .commands = TRAIN | PRUNE | UNET_CMD_DATA_SPLIT, .group = G_DATA,
     .help = "train: the validation dataset; prune --auto: the images its heads are scored on; data split: the "
             "share of images held out, as --val-fraction"},
    {"input", OPT_STRING, F(input), .meta = "D.h5", .commands = PREDICT, .group = G_DATA,
     .help = "HDF5 dataset to predict (raw)"},
    {"raw-key", OPT_STRING, F(raw_key), .def = "raw", .meta = "NAME", .commands = TRAIN | PREDICT | EVAL | DATA_WEIGHTS,
     .group = G_DATA, .help = "dataset name of the images inside the file"},
    {"label-key", OPT_STRING, F(label_key), .def = "label", .meta = "NAME", .commands = TRAIN | EVAL | DATA_WEIGHTS,
     .group = G_DATA, .help = "dataset name of the labels"},
    {"weight-key", OPT_STRING, F(weight_key), .def = "weight", .meta = "NAME", .commands = TRAIN | EVAL | DATA_WEIGHTS,
     .group = G_DATA, .help = "dataset name of the optional per-pixel loss weights"},
    {"checkpoint", OPT_STRING, F(checkpoint), .meta = "C.safetensors",
     .commands = PREDICT | EVAL | INFO | PRUNE | EXPORT, .group = G_DATA,
     .help = "checkpoint to run (the model comes from its metadata; explicit flags override)"},
    {"init", OPT_STRING, F(init), .meta = "W.safetensors", .commands = TRAIN_ONLY, .group = G_DATA,
     .help = "start from these weights (fine-tuning; PyTorch names and layouts)"},
    {"init-encoder", OPT_STRING, F(init_encoder), .meta = "W.safetensors", .commands = TRAIN, .group = G_DATA,
     .help = "start the --encoder backbone from torchvision's weights under torchvision's names (conv1.weight, "
             "layer1.0.bn1.running_mean, features.0.0.weight; a .pth converted by scripts/torchvision_weights.py); "
             "for --in-channels other than 3 the first convolution is adapted as smp does"},
    {"resume", OPT_STRING, F(resume), .meta = "C.safetensors|C|DIR", .commands = TRAIN_ONLY, .group = G_DATA,
     .help = "continue a run from its newest complete checkpoint: this file, the periodic ones beside it "
             "(C.step<N>.safetensors), or those in a folder; weights, optimizer state, step and counters"},

    /* output */
    {"save", OPT_STRING, F(save), .meta = "C.safetensors", .commands = TRAIN_ONLY, .group = G_OUTPUT,
     .help = "write the checkpoint here (atomically); periodic and best ones go beside it as C.step<N>.safetensors "
             "and C.best.safetensors"},
    {"save-every", OPT_LONG, F(save_every), .min = 0, .max = 1e15, .def = "0", .meta = "N", .commands = TRAIN,
     .group = G_OUTPUT, .help = "a checkpoint beside --save every N steps (0: by time alone)"},
    {"save-every-min", OPT_FLOAT, F(save_every_min), .min = 0, .max = 1e6, .def = "15", .meta = "M", .commands = TRAIN,
     .group = G_OUTPUT,
     .help = "a checkpoint beside --save every M minutes of wall time, so that a run killed without warning loses "
             "at most that (0: off)"},
    {"keep", OPT_INT, F(keep), .min = 1, .max = 1 << 20, .def = "2", .meta = "K", .commands = TRAIN_ONLY,
     .group = G_OUTPUT, .help = "periodic checkpoints kept (the oldest goes once a new one is written)"},
    {"save-best", OPT_ENUM, F(save_best), .choices = best_metrics, .def = "none", .commands = TRAIN_ONLY,
     .group = G_OUTPUT,
     .help = "keep the checkpoint of the best validation by this metric (the deepest head's) beside --save"},
    {"output", OPT_STRING, F(output), .meta = "FILE", .commands = PREDICT | PRUNE | EXPORT | UNET_CMD_DATA_IMPORT,
     .group = G_OUTPUT,
     .help = "(or -o FILE) predict: write prob (N,K,H,W) float32 and pred (N,H,W) uint8 to this .h5; prune: the pruned "
             "checkpoint; export: the .onnx model; data import: the dataset"},
    {"out", OPT_STRING, F(out_dir), .meta = "DIR", .commands = COMPARE, .group = G_OUTPUT,
     .help = "write report.md, report.json, the runs' logs and the plots here"},
    {"log", OPT_STRING, F(log), .meta = "M.jsonl", .commands = TRAIN_ONLY | EVAL, .group = G_OUTPUT,
     .help = "append one JSON object a line per logged step and per validation"},
    {"log-every", OPT_INT, F(log_every), .min = 1, .max = INT_MAX, .def = "10", .meta = "N", .commands = TRAIN,
     .group = G_OUTPUT, .help = "log every N steps"},
    {"val-every", OPT_INT, F(val_every), .min = 0, .max = INT_MAX, .def = "100", .meta = "N", .commands = TRAIN,
     .group = G_OUTPUT, .help = "validate every N steps and after the last (0: after the last only)"},
    {"json", OPT_FLAG, F(json), .commands = INFO | EVAL | BENCH | UNET_CMD_DATA_INFO, .group = G_OUTPUT,
     .help = "print one JSON object"},
    {"w0", OPT_FLOAT, F(w0), .min = 0, .max = NOMAX, .def = "10", .meta = "X", .commands = DATA_WEIGHTS,
     .group = G_OUTPUT, .help = "border weight of the weight map (the paper's w0)"},
    {"sigma", OPT_FLOAT, F(sigma), .min = 0, .min_open = 1, .max = NOMAX, .def = "5", .meta = "PX",
     .commands = DATA_WEIGHTS, .group = G_OUTPUT, .help = "width of the border term, pixels (the paper's sigma)"},
    {"no-balance", OPT_FLAG, F(no_balance), .commands = DATA_WEIGHTS, .group = G_OUTPUT,
     .help = "no class balancing: w_c = 1 instead of n / (2 n_class)"},
    {"mode", OPT_ENUM, F(mode), .choices = modes, .def = "deepest", .commands = PREDICT | EVAL | BENCH | EXPORT,
     .group = G_OUTPUT, .help = "the deepest head, the network pruned to --depth, or the mean of all heads"},
    {"overlap", OPT_FLOAT, F(overlap), .min = 0, .max = 1, .max_open = 1, .def = "0.5", .meta = "F",
     .commands = PREDICT | EVAL | COMPARE | EXPORT, .group = G_OUTPUT,
     .help = "overlap of same-padding tiles, blended (export: the tile stride it records)"},
    {"opset", OPT_INT, F(opset), .min = 13, .max = 17, .def = "17", .meta = "N", .commands = EXPORT, .group = G_OUTPUT,
     .flags = OPTF_NO_JSON,
     .help = "ONNX operator set of the exported model (13..17: the range of the ONNX IR version 8 it is written in)"},

    /* device */
    {"device", OPT_STRING, F(device), .def = "auto", .meta = "cpu|cuda[:N]|auto", .commands = MODEL_USERS,
     .group = G_DEVICE, .check = check_device, .help = "where to run (auto: cuda when a GPU is present)"},
    {"precision", OPT_ENUM, F(precision), .choices = precisions, .def = "auto", .commands = MODEL_USERS,
     .group = G_DEVICE, .help = "GPU arithmetic (auto: tf32, bf16 once verified on a GPU; the CPU is always fp32)"},
    {"layout", OPT_ENUM, F(layout), .choices = layouts, .def = "auto", .commands = MODEL_USERS, .group = G_DEVICE,
     .help = "GPU activations in fp32 and tf32: nchw, or nhwc (channels last, as tensor cores read them) (auto: nchw "
             "until measured on a GPU; bf16 is always nhwc, the CPU always nchw)"},
    {"fast-nondeterministic", OPT_FLAG, F(fast_nondeterministic), .commands = MODEL_USERS, .group = G_DEVICE,
     .help = "let cuDNN use engines with atomic reductions: maybe faster, not the same bits run to run (CUDA)"},
    {"workers", OPT_INT, F(workers), .min = 0, .max = 1024, .def = "1", .meta = "N", .commands = TRAIN,
     .group = G_DEVICE,
     .help = "data loader threads reading and augmenting the next batches (0: on the training thread); the "
             "batches are the same for any N"},
    {"augment-device", OPT_ENUM, F(augment_device), .choices = augment_devices, .def = "cpu", .commands = TRAIN,
     .group = G_DEVICE,
     .help = "where --augment's deformation (elastic, flips, turns, rotation, scaling) is applied: cpu, on the "
             "loader's threads, or cuda, on the GPU straight into the step's inputs (the same tiles; the loader only "
             "reads and draws). cuda needs --device cuda and takes no gamma, brightness, contrast or noise"},
    {"memory-budget", OPT_FLOAT, F(memory_budget), .min = 0, .min_open = 1, .max = 1 << 20, .meta = "GiB",
     .commands = INFO, .group = G_DEVICE, .flags = OPTF_NO_JSON,
     .help = "device memory to plan for: the largest --batch whose training run fits (default: the CUDA device's "
             "free memory; for a GPU this machine does not have, the CPU layout's planned sizes)"},
    {"threads", OPT_INT, F(threads), .min = 0, .max = 4096, .def = "0", .meta = "N", .commands = RUNNERS | INFO,
     .group = G_DEVICE, .help = "CPU compute threads (0: all cores)"},
    /* data parallel: rank, world size and local rank come from the launcher (srun, torchrun, mpirun) */
    {"dist", OPT_ENUM, F(dist), .choices = dist_kinds, .def = "auto", .commands = UNET_CMD_TRAIN, .group = G_DEVICE,
     .help = "who averages gradients across processes (auto: none for one process, nccl on GPUs, mpi on CPUs)"},
    {"rank", OPT_INT, F(rank), .min = -1, .max = 1 << 24, .def = "-1", .meta = "R", .commands = UNET_CMD_TRAIN,
     .group = G_DEVICE, .flags = OPTF_NO_JSON, .help = "this process's rank (-1: from SLURM_PROCID, RANK or mpirun)"},
    {"world-size", OPT_INT, F(world_size), .min = -1, .max = 1 << 24, .def = "-1", .meta = "W",
     .commands = UNET_CMD_TRAIN, .group = G_DEVICE, .flags = OPTF_NO_JSON,
     .help = "number of processes (-1: from SLURM_NTASKS, WORLD_SIZE or mpirun)"},
    {"local-rank", OPT_INT, F(local_rank), .min = -1, .max = 1 << 24, .def = "-1", .meta = "L",
     .commands = UNET_CMD_TRAIN, .group = G_DEVICE, .flags = OPTF_NO_JSON,
     .help = "rank on this node, picks the GPU (-1: from SLURM_LOCALID, LOCAL_RANK or mpirun)"},
    {"sync-bn", OPT_FLAG, F(sync_bn), .commands = UNET_CMD_TRAIN, .group = G_DEVICE,
     .help = "batch norm statistics over the global batch instead of each process's (CPU backend)"},
    {"dist-timeout", OPT_FLOAT, F(dist_timeout), .min = 0, .min_open = 1, .max = NOMAX, .def = "600", .meta = "S",
     .commands = UNET_CMD_TRAIN, .group = G_DEVICE,
     .help = "seconds a process waits for the others before it gives up with a message"},
    {"bucket-mb", OPT_FLOAT, F(bucket_mb), .min = 0, .min_open = 1, .max = 65536, .def = "25", .meta = "M",
     .commands = UNET_CMD_TRAIN, .group = G_DEVICE, .help = "gradient allreduce bucket size in MiB"},
    {"cuda-graph", OPT_ENUM, F(cuda_graph), .choices = cuda_graph_modes, .def = "auto", .commands = STEPPERS,
     .group = G_DEVICE,
     .help = "auto: on the CUDA backend, capture the training step as one CUDA graph after 3 eager steps and replay "
             "it (the same bits, less launch overhead; one process per job only); off: launch every op from the "
             "host. The CPU ignores it"},
    {"bench-warmup", OPT_INT, F(bench_warmup), .min = 0, .max = INT_MAX, .def = "5", .meta = "N",
     .commands = BENCH | COMPARE, .group = G_TRAINING, .help = "untimed steps before timing"},
};
#define N_OPTIONS ((int)(sizeof options / sizeof options[0]))
_Static_assert(sizeof options / sizeof options[0] <= UNET_CONFIG_MAX_OPTIONS, "raise UNET_CONFIG_MAX_OPTIONS");

static const struct {
    unet_option_group bit;
    const char *name;
} groups[] = {
    {G_MODEL, "model"}, {G_TRAINING, "training"}, {G_DATA, "data"}, {G_OUTPUT, "output"}, {G_DEVICE, "device"}};
#define N_GROUPS ((int)(sizeof groups / sizeof groups[0]))

static void *field(unet_config *cfg, const option *o) { return (char *)cfg + o->offset; }
static const void *cfield(const unet_config *cfg, const option *o) { return (const char *)cfg + o->offset; }

static int option_index(const char *name) {
    for (int k = 0; k < N_OPTIONS; k++)
        if (!strcmp(options[k].name, name)) return k;
    return -1;
}

static const command *find_command(const char *name) {
    for (int c = 0; c < N_COMMANDS; c++)
        if (!strcmp(commands[c].name, name)) return &commands[c];
    return NULL;
}

unsigned unet_config_command(const char *subcommand) {
    const command *c = subcommand ? find_command(subcommand) : NULL;
    return c ? c->bit : 0;
}

/* ---- did you mean ---------------------------------------------------- */

/* Edits (insert, delete, substitute, swap two neighbours) from a to b: a
 * swapped pair of letters is one typo, not two. */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    int d[65][65];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* The one name s abbreviates, or else the closest of names[0..n) to s when
 * it is close enough to be a typo; NULL otherwise. An abbreviation comes
 * first: --deep means --deep-supervision, not --keep one letter away. */
static const char *suggest(const char *s, const char *const *names, int n) {
    const char *best = NULL, *prefix_of = NULL;
    int best_d = INT_MAX, n_prefix = 0;
    size_t ls = strlen(s);
    for (int k = 0; k < n; k++) {
        int d = edit_distance(s, names[k]);
        if (d < best_d) best_d = d, best = names[k];
        if (ls >= 3 && !strncmp(names[k], s, ls)) n_prefix++, prefix_of = names[k];
    }
    int limit = ls < 6 ? 1 : ls < 12 ? 2 : 3;
    if (n_prefix == 1) return prefix_of;
    return best && best_d <= limit ? best : NULL;
}

static const char *suggest_option(const char *s) {
    const char *names[UNET_CONFIG_MAX_OPTIONS];
    for (int k = 0; k < N_OPTIONS; k++) names[k] = options[k].name;
    return suggest(s, names, N_OPTIONS);
}

static void unknown_command(const char *s, char *err, size_t errlen) {
    const char *names[N_COMMANDS];
    char list[256] = "";
    for (int c = 0; c < N_COMMANDS; c++) {
        names[c] = commands[c].name;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", c ? ", " : "", commands[c].name);
    }
    const char *s2 = suggest(s, names, N_COMMANDS);
    if (s2)
        unet_errorf(err, errlen, "unknown command '%s' (did you mean %s?); commands: %s", s, s2, list);
    else
        unet_errorf(err, errlen, "unknown command '%s'; commands: %s", s, list);
}

/* ---- values ---------------------------------------------------------- */

/* "in [0, 1)", ">= 1", "> 0": the allowed range as a user reads it. */
static void range_text(const option *o, char *buf, size_t n) {
    int has_max = isfinite(o->max) && !(o->type == OPT_INT && o->max >= INT_MAX);
    if (has_max)
        snprintf(buf, n, "in %c%.10g, %.10g%c", o->min_open ? '(' : '[', o->min, o->max, o->max_open ? ')' : ']');
    else
        snprintf(buf, n, "%s %.10g", o->min_open ? ">" : ">=", o->min);
}

static int in_range(const option *o, double v) {
    if (o->min_open ? !(v > o->min) : !(v >= o->min)) return 0;
    if (o->max_open ? !(v < o->max) : !(v <= o->max)) return 0;
    return 1;
}

/* A whole decimal integer, nothing before or after it. */
static int parse_integer(const char *s, long long *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static const char *type_meta(const option *o) {
    switch (o->type) {
    case OPT_INT:
    case OPT_LONG:
    case OPT_U64:
        return "an integer";
    case OPT_FLOAT:
        return "a number";
    case OPT_INT_LIST:
        return "comma-separated integers";
    case OPT_ENUM:
        return "one of its choices";
    default:
        return "a value";
    }
}

static void choices_text(const option *o, const char *sep, char *buf, size_t n) {
    buf[0] = 0;
    for (int c = 0; o->choices[c]; c++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", c ? sep : "", o->choices[c]);
}

/* String values outlive the text they came from (a JSON document, say) and
 * a configuration copies like a plain struct: each distinct string is kept
 * once for the life of the process, reachable from this table. Parsing runs
 * on one thread. */
static const char *intern(const char *s) {
    static char **kept;
    static size_t n_kept, cap;
    for (size_t i = 0; i < n_kept; i++)
        if (!strcmp(kept[i], s)) return kept[i];
    if (n_kept == cap) {
        size_t ncap = cap ? 2 * cap : 64;
        char **grown = realloc(kept, ncap * sizeof *grown);
        if (!grown) return NULL;
        kept = grown;
        cap = ncap;
    }
    char *copy = strdup(s);
    if (copy) kept[n_kept++] = copy;
    return copy;
}

/* Sets one option from its text: the command line, a default, or a JSON
 * value turned into text. One line in err on failure. */
static int set_value(unet_config *cfg, const option *o, const char *text, char *err, size_t errlen) {
    void *dst = field(cfg, o);
    char range[96];
    switch (o->type) {
    case OPT_INT:
    case OPT_LONG: {
        long long v;
        if (parse_integer(text, &v)) {
            unet_errorf(err, errlen, "--%s needs an integer, got '%s'", o->name, text);
            return -1;
        }
        if (!in_range(o, (double)v) || (o->type == OPT_INT && (v < INT_MIN || v > INT_MAX))) {
            range_text(o, range, sizeof range);
            unet_errorf(err, errlen, "--%s must be %s, got %s", o->name, range, text);
            return -1;
        }
        if (o->type == OPT_INT)
            *(int *)dst = (int)v;
        else
            *(long *)dst = (long)v;
        return 0;
    }
    case OPT_U64: {
        /* strtoull would take "-1" as 2^64 - 1 */
        char *end = NULL;
        unsigned long long v = 0;
        errno = 0;
        if (isdigit((unsigned char)text[0])) v = strtoull(text, &end, 10);
        if (!end || *end || errno) {
            unet_errorf(err, errlen, "--%s needs an integer in [0, 2^64), got '%s'", o->name, text);
            return -1;
        }
        *(uint64_t *)dst = (uint64_t)v;
        return 0;
    }
    case OPT_FLOAT: {
        double v;
        if (parse_float(text, &v)) {
            unet_errorf(err, errlen, "--%s needs a number, got '%s'", o->name, text);
            return -1;
        }
        float f = (float)v;
        if (!isfinite(f) || !in_range(o, (double)f)) {
            range_text(o, range, sizeof range);
            unet_errorf(err, errlen, "--%s must be %s, got %s", o->name, range, text);
            return -1;
        }
        *(float *)dst = f;
        return 0;
    }
    case OPT_STRING: {
        if (strlen(text) > UNET_CONFIG_STRING_MAX) {
            unet_errorf(err, errlen, "--%s is too long: %zu characters, at most %d", o->name, strlen(text),
                        UNET_CONFIG_STRING_MAX);
            return -1;
        }
        if (o->check && o->check(text, err, errlen)) return -1;
        const char *kept = intern(text);
        if (!kept) {
            unet_errorf(err, errlen, "out of memory for --%s", o->name);
            return -1;
        }
        *(const char **)dst = kept;
        return 0;
    }
    case OPT_FLAG:
        if (!strcmp(text, "true") || !strcmp(text, "1"))
            *(int *)dst = 1;
        else if (!strcmp(text, "false") || !strcmp(text, "0"))
            *(int *)dst = 0;
        else {
            unet_errorf(err, errlen, "--%s is a flag and takes no value, got '%s'", o->name, text);
            return -1;
        }
        return 0;
    case OPT_ENUM:
        for (int c = 0; o->choices[c]; c++)
            if (!strcmp(o->choices[c], text)) {
                *(int *)dst = c;
                return 0;
            }
        choices_text(o, ", ", range, sizeof range);
        unet_errorf(err, errlen, "--%s must be one of %s; got '%s'", o->name, range, text);
        return -1;
    case OPT_INT_LIST: {
        int cap = (int)(o->size / sizeof(int)), n = 0, vals[64];
        const char *s = text;
        for (;;) {
            const char *comma = strchr(s, ',');
            size_t len = comma ? (size_t)(comma - s) : strlen(s);
            char item[32];
            long long v;
            if (len == 0 || len >= sizeof item || n >= 64) goto malformed;
            memcpy(item, s, len);
            item[len] = 0;
            if (parse_integer(item, &v)) goto malformed;
            if (!in_range(o, (double)v)) {
                range_text(o, range, sizeof range);
                unet_errorf(err, errlen, "--%s: every value must be %s, got %s", o->name, range, item);
                return -1;
            }
            vals[n++] = (int)v;
            if (!comma) break;
            s = comma + 1;
        }
        if (n < o->min_count || n > cap) {
            unet_errorf(err, errlen, "--%s takes %d to %d values, got %d", o->name, o->min_count, cap, n);
            return -1;
        }
        memcpy(dst, vals, (size_t)n * sizeof(int));
        *(int *)((char *)cfg + o->count_offset) = n;
        return 0;
    malformed:
        unet_errorf(err, errlen, "--%s needs comma-separated integers such as %s, got '%s'", o->name,
                    o->def ? o->def : "1,2,3", text);
        return -1;
    }
    }
    return -1;
}

/* Shortest decimal that reads back to the same float: 0.99, not 0.99000001. */
static void float_text(float v, char *buf, size_t n) {
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, n, "%.*g", p, (double)v);
        if (strtof(buf, NULL) == v) return;
    }
}

/* The value as the command line would take it. */
static void value_text(const unet_config *cfg, const option *o, char *buf, size_t n) {
    const void *src = cfield(cfg, o);
    switch (o->type) {
    case OPT_INT:
        snprintf(buf, n, "%d", *(const int *)src);
        break;
    case OPT_LONG:
        snprintf(buf, n, "%ld", *(const long *)src);
        break;
    case OPT_U64:
        snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)src);
        break;
    case OPT_FLOAT:
        float_text(*(const float *)src, buf, n);
        break;
    case OPT_STRING:
        snprintf(buf, n, "%s", *(const char *const *)src);
        break;
    case OPT_FLAG:
        snprintf(buf, n, "%s", *(const int *)src ? "true" : "false");
        break;
    case OPT_ENUM: {
        int v = *(const int *)src, nc = 0;
        while (o->choices[nc]) nc++;
        snprintf(buf, n, "%s", v >= 0 && v < nc ? o->choices[v] : "?");
        break;
    }
    case OPT_INT_LIST: {
        int count = *(const int *)((const char *)cfg + o->count_offset);
        buf[0] = 0;
        for (int i = 0; i < count; i++)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%d", i ? "," : "", ((const int *)src)[i]);
        break;
    }
    }
}

static int check_device(const char *value, char *err, size_t errlen) {
    unet_config probe;
    probe.device = value;
    int cuda, index;
    if (unet_config_device(&probe, &cuda, &index) == 0) return 0;
    unet_errorf(err, errlen, "--device must be cpu, cuda, cuda:N (N a device index) or auto; got '%s'", value);
    return -1;
}

/* A model kind (the reference is the configured model of that kind) or a
 * positive parameter count. */
static int check_match_params(const char *value, char *err, size_t errlen) {
    long long n;
    if (!parse_integer(value, &n) && n > 0) return 0;
    for (int k = 0; model_kinds[k]; k++)
        if (!strcmp(value, model_kinds[k])) return 0;
    unet_errorf(err, errlen,
                "--match-params takes a model (unet, unet_e, unet_plus, unetpp) or a parameter count "
                "such as 9041601, got '%s'",
                value);
    return -1;
}

int unet_config_device(const unet_config *cfg, int *cuda, int *index) {
    const char *d = cfg->device;
    *index = -1;
    if (!strcmp(d, "cpu")) return *cuda = 0, 0;
    if (!strcmp(d, "auto")) return *cuda = -1, 0;
    if (!strcmp(d, "cuda")) return *cuda = 1, 0;
    long long v;
    if (!strncmp(d, "cuda:", 5) && isdigit((unsigned char)d[5]) && !parse_integer(d + 5, &v) && v < 4096) {
        *cuda = 1;
        *index = (int)v;
        return 0;
    }
    return -1;
}

const char *unet_config_choice_name(const char *option_name, int value) {
    int k = option_index(option_name);
    if (k < 0 || options[k].type != OPT_ENUM || value < 0) return NULL;
    for (int c = 0; options[k].choices[c]; c++)
        if (c == value) return options[k].choices[c];
    return NULL;
}

/* ---- defaults, parsing, merging --------------------------------------- */

static size_t expected_size(const option *o) {
    switch (o->type) {
    case OPT_INT:
    case OPT_FLAG:
    case OPT_ENUM:
        return sizeof(int);
    case OPT_LONG:
        return sizeof(long);
    case OPT_U64:
        return sizeof(uint64_t);
    case OPT_FLOAT:
        return sizeof(float);
    case OPT_STRING:
        return sizeof(const char *);
    default:
        return o->size;
    }
}

void unet_config_defaults(unet_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    for (int k = 0; k < N_OPTIONS; k++) {
        const option *o = &options[k];
        if (o->type == OPT_STRING) *(const char **)field(cfg, o) = ""; /* never NULL */
        /* a table entry that disagrees with its field is a programming error, caught by any run */
        if (o->size != expected_size(o) || (o->def && set_value(cfg, o, o->def, err, sizeof err))) {
            fprintf(stderr, "unet: option table entry --%s is inconsistent with unet_config (%s)\n", o->name,
                    o->size != expected_size(o) ? "field size" : err);
            abort();
        }
    }
    cfg->optim.total_steps = cfg->steps;
}

int unet_config_is_set(const unet_config *cfg, const char *name) {
    int k = option_index(name);
    return k >= 0 && cfg->explicit_set[k];
}

static void mark(unet_config *cfg, const char *name, int on) {
    cfg->explicit_set[option_index(name)] = (unsigned char)on;
}

static unet_loss_kind default_loss(int classes) { return classes == 1 ? UNET_LOSS_BCE_DICE : UNET_LOSS_CE; }

void unet_config_encoder_defaults(unet_config *cfg) {
    if (!unet_config_is_set(cfg, "padding")) cfg->model.same_padding = 1;
    if (!unet_config_is_set(cfg, "norm")) cfg->model.batch_norm = 1;
    if (!unet_config_is_set(cfg, "upsample")) cfg->model.upsample = UNET_UP_NEAREST;
}

/* --encoder: the plain encoder's widths mean nothing, smp's decoder defaults apply. */
static int resolve_encoder(unet_config *cfg, char *err, size_t errlen) {
    static const char *const plain_only[] = {"filters", "base", "levels"};
    for (size_t k = 0; k < sizeof plain_only / sizeof plain_only[0]; k++)
        if (unet_config_is_set(cfg, plain_only[k])) {
            unet_errorf(err, errlen,
                        "--%s sets the widths of the plain encoder; with --encoder %s the backbone has "
                        "its own, and --decoder-channels sets the decoder's",
                        plain_only[k], unet_config_choice_name("encoder", cfg->model.encoder));
            return -1;
        }
    unet_config_encoder_defaults(cfg);
    return 0;
}

/* What the options mean together: the filters of --base, the loss that
 * matches the classes, the schedule's horizon. */
static int resolve(unet_config *cfg, char *err, size_t errlen) {
    int base = unet_config_is_set(cfg, "base"), levels = unet_config_is_set(cfg, "levels");
    int depth = unet_config_is_set(cfg, "depth");
    if (base && unet_config_is_set(cfg, "filters")) {
        unet_errorf(err, errlen, "give either --filters or --base (with --levels), not both");
        return -1;
    }
    if (levels && !base) {
        unet_errorf(err, errlen,
                    "--levels goes with --base B (filters B * 2^i); with --filters the list's length is "
                    "the number of levels");
        return -1;
    }
    if (base) {
        const char *levels_flag = "--levels";
        if (!levels && depth) {
            /* the shorthand `--base 64 --depth 5`: depth counts levels here, not a pruning depth */
            levels_flag = "--depth";
            cfg->levels = cfg->model.prune_depth;
            cfg->model.prune_depth = 0;
            mark(cfg, "depth", 0);
            mark(cfg, "levels", 1);
        }
        if (cfg->levels < 2 || cfg->levels > UNET_MAX_LEVELS) {
            unet_errorf(err, errlen, "%s with --base must be between 2 and %d levels, got %d", levels_flag,
                        UNET_MAX_LEVELS, cfg->levels);
            return -1;
        }
        if ((long long)cfg->base << (cfg->levels - 1) > 65536) {
            unet_errorf(err, errlen,
                        "--base %d with %d levels gives %lld filters at the deepest level, more "
                        "than 65536",
                        cfg->base, cfg->levels, (long long)cfg->base << (cfg->levels - 1));
            return -1;
        }
        for (int i = 0; i < cfg->levels; i++) cfg->model.filters[i] = cfg->base << i;
        for (int i = cfg->levels; i < UNET_MAX_LEVELS; i++) cfg->model.filters[i] = 0;
        cfg->model.levels = cfg->levels;
        mark(cfg, "filters", 1);
    }
    /* a preset sets what the command line did not; its values go through the parser like typed ones */
    for (int v = 0; cfg->preset > 0 && preset_values[cfg->preset][v]; v++) {
        const char *item = preset_values[cfg->preset][v];
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(item, "="), item);
        int k = option_index(name);
        if (cfg->explicit_set[k]) continue;
        if (set_value(cfg, &options[k], strchr(item, '=') + 1, err, errlen)) return -1;
    }
    if (cfg->model.encoder != UNET_ENCODER_PLAIN && resolve_encoder(cfg, err, errlen)) return -1;
    if (unet_config_is_set(cfg, "init-encoder") && unet_config_is_set(cfg, "resume")) {
        unet_errorf(err, errlen,
                    "--init-encoder starts a run from torchvision's weights and --resume continues one "
                    "from its checkpoint: give one of them");
        return -1;
    }
    if (!unet_config_is_set(cfg, "loss")) cfg->model.loss = default_loss(cfg->model.classes);
    cfg->optim.total_steps = cfg->steps;
    return 0;
}

static void commands_taking(const option *o, char *buf, size_t n) {
    buf[0] = 0;
    for (int c = 0; c < N_COMMANDS; c++)
        if (o->commands & commands[c].bit)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? ", " : "", commands[c].name);
}

int unet_config_parse(unet_config *cfg, const char *subcommand, int argc, char **argv, char *err, size_t errlen) {
    const command *cmd = find_command(subcommand);
    if (!cmd) {
        unknown_command(subcommand, err, errlen);
        return -1;
    }
    memset(cfg->explicit_set, 0, sizeof cfg->explicit_set);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        const char *positional = positional_of(cmd->bit);
        if (positional && a[0] != '-' && !unet_config_is_set(cfg, positional)) {
            int k = option_index(positional);
            if (set_value(cfg, &options[k], a, err, errlen)) return -1;
            cfg->explicit_set[k] = 1;
            continue;
        }
        /* the one short option: -o FILE, as in `cc -o` and the issue's `unet data import ... -o D.h5` */
        if (!strcmp(a, "-o")) a = "--output";
        if (strncmp(a, "--", 2) || !a[2]) {
            if (a[0] == '-' && a[1] && a[1] != '-')
                unet_errorf(err, errlen, "unknown option %s: options are long, --name value (see unet %s --help)", a,
                            subcommand);
            else
                unet_errorf(err, errlen, "unexpected argument '%s': options are --name value (see unet %s --help)", a,
                            subcommand);
            return -1;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), a + 2);
        int k = len < sizeof name ? option_index(name) : -1;
        if (k < 0) {
            const char *s = suggest_option(name);
            if (s)
                unet_errorf(err, errlen, "unknown option --%s (did you mean --%s?)", name, s);
            else
                unet_errorf(err, errlen, "unknown option --%s (see unet %s --help)", name, subcommand);
            return -1;
        }
        const option *o = &options[k];
        if (!(o->commands & cmd->bit)) {
            char takers[128];
            commands_taking(o, takers, sizeof takers);
            unet_errorf(err, errlen, "--%s is not an option of %s (it is one of %s)", o->name, subcommand, takers);
            return -1;
        }
        const char *value;
        if (o->type == OPT_FLAG) {
            if (eq) {
                unet_errorf(err, errlen, "--%s is a flag and takes no value", o->name);
                return -1;
            }
            value = "true";
        } else if (eq) {
            value = eq + 1;
        } else if (o->bare && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
            value = o->bare;
        } else if (i + 1 >= argc || (!strncmp(argv[i + 1], "--", 2) && argv[i + 1][2])) {
            /* `--save --steps 10`: a forgotten value, not a file named --steps */
            char what[160];
            if (o->type == OPT_ENUM)
                choices_text(o, "|", what, sizeof what);
            else
                snprintf(what, sizeof what, "%s", o->meta ? o->meta : type_meta(o));
            unet_errorf(err, errlen, "--%s needs a value (%s)%s%s", o->name, what, i + 1 < argc ? ", got option " : "",
                        i + 1 < argc ? argv[i + 1] : "");
            return -1;
        } else {
            value = argv[++i];
        }
        if (set_value(cfg, o, value, err, errlen)) return -1;
        cfg->explicit_set[k] = 1;
    }
    return resolve(cfg, err, errlen);
}

void unet_config_merge(unet_config *dst, const unet_config *src, unsigned group_mask) {
    for (int k = 0; k < N_OPTIONS; k++) {
        const option *o = &options[k];
        if (!(o->group & group_mask) || dst->explicit_set[k]) continue;
        memcpy(field(dst, o), cfield(src, o), o->size);
        if (o->type == OPT_INT_LIST)
            memcpy((char *)dst + o->count_offset, (const char *)src + o->count_offset, sizeof(int));
    }
    /* `--classes 1` given over a two-class checkpoint: the loss follows */
    if ((group_mask & G_MODEL) && !unet_config_is_set(dst, "loss") && unet_config_is_set(dst, "classes"))
        dst->model.loss = default_loss(dst->model.classes);
    dst->optim.total_steps = dst->steps;
}

static int named_in(const char *const *names, const char *name) {
    for (; names && *names; names++)
        if (!strcmp(*names, name)) return 1;
    return 0;
}

int unet_config_first_difference(const unet_config *a, const unet_config *b, unsigned groups, const char *const *except,
                                 char *buf, size_t n) {
    for (int k = 0; k < N_OPTIONS; k++) {
        const option *o = &options[k];
        if (!(o->group & groups) || (o->flags & OPTF_NO_JSON) || named_in(except, o->name)) continue;
        char ta[TEXT_MAX], tb[TEXT_MAX];
        value_text(a, o, ta, sizeof ta);
        value_text(b, o, tb, sizeof tb);
        if (!strcmp(ta, tb)) continue;
        snprintf(buf, n, "--%s %s against %s", o->name, ta[0] ? ta : "(none)", tb[0] ? tb : "(none)");
        return 1;
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------ */

static void json_key(const option *o, char *buf, size_t n) {
    snprintf(buf, n, "%s", o->name);
    for (char *c = buf; *c; c++)
        if (*c == '-') *c = '_';
}

char *unet_config_to_json(const unet_config *cfg, int model_only) {
    json_object *root = json_object_new_object();
    for (int k = 0; k < N_OPTIONS; k++) {
        const option *o = &options[k];
        if ((o->flags & OPTF_NO_JSON) || (model_only && o->group != G_MODEL)) continue;
        const void *src = cfield(cfg, o);
        char key[64], text[TEXT_MAX];
        json_key(o, key, sizeof key);
        json_object *v = NULL;
        switch (o->type) {
        case OPT_INT:
            v = json_object_new_int(*(const int *)src);
            break;
        case OPT_LONG:
            v = json_object_new_int64(*(const long *)src);
            break;
        case OPT_U64:
            v = json_object_new_uint64(*(const uint64_t *)src);
            break;
        case OPT_FLOAT:
            value_text(cfg, o, text, sizeof text);
            v = json_object_new_double_s(*(const float *)src, text);
            break;
        case OPT_FLAG:
            v = json_object_new_boolean(*(const int *)src);
            break;
        case OPT_STRING:
        case OPT_ENUM:
            value_text(cfg, o, text, sizeof text);
            v = json_object_new_string(text);
            break;
        case OPT_INT_LIST: {
            int count = *(const int *)((const char *)cfg + o->count_offset);
            v = json_object_new_array();
            for (int i = 0; i < count; i++) json_object_array_add(v, json_object_new_int(((const int *)src)[i]));
            break;
        }
        }
        json_object_object_add(root, key, v);
    }
    char *out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
    return out;
}

/* A JSON value as the text the command line would give, after checking its
 * JSON type fits the option. */
static int json_value_text(const option *o, json_object *v, char *buf, size_t n, char *err, size_t errlen) {
    json_type t = json_object_get_type(v);
    const char *want = NULL;
    char key[64];
    json_key(o, key, sizeof key);
    switch (o->type) {
    case OPT_INT:
    case OPT_LONG:
    case OPT_U64:
        if (t != json_type_int) want = "an integer";
        break;
    case OPT_FLOAT:
        if (t != json_type_int && t != json_type_double) want = "a number";
        break;
    case OPT_STRING:
    case OPT_ENUM:
        if (t != json_type_string) want = "a string";
        break;
    case OPT_FLAG:
        if (t != json_type_boolean) want = "true or false";
        break;
    case OPT_INT_LIST:
        if (t != json_type_array) want = "an array of integers";
        break;
    }
    if (want) {
        unet_errorf(err, errlen, "\"%s\" must be %s, got %s", key, want, json_object_to_json_string(v));
        return -1;
    }
    if (o->type == OPT_FLOAT) {
        /* %.17g reads back to the same double, and a double that came from a float to the same float */
        snprintf(buf, n, "%.17g", json_object_get_double(v));
    } else if (o->type == OPT_INT_LIST) {
        buf[0] = 0;
        size_t len = json_object_array_length(v);
        for (size_t i = 0; i < len; i++) {
            json_object *e = json_object_array_get_idx(v, i);
            if (json_object_get_type(e) != json_type_int) {
                unet_errorf(err, errlen, "\"%s\" must be an array of integers, got %s", key,
                            json_object_to_json_string(v));
                return -1;
            }
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", i ? "," : "", json_object_get_string(e));
        }
    } else {
        snprintf(buf, n, "%s", json_object_get_string(v));
    }
    return 0;
}

int unet_config_from_json(unet_config *cfg, const char *json, char *err, size_t errlen) {
    enum json_tokener_error jerr;
    json_object *root = json_tokener_parse_verbose(json, &jerr);
    if (!root || json_object_get_type(root) != json_type_object) {
        unet_errorf(err, errlen, "configuration is not a JSON object (%s)",
                    root ? "another JSON value" : json_tokener_error_desc(jerr));
        json_object_put(root);
        return -1;
    }
    unet_config tmp = *cfg; /* all or nothing */
    int rc = 0, has_classes = 0, has_loss = 0;
    json_object_object_foreach(root, key, v) {
        int k = -1;
        for (int j = 0; j < N_OPTIONS && k < 0; j++) {
            char jk[64];
            json_key(&options[j], jk, sizeof jk);
            if (!(options[j].flags & OPTF_NO_JSON) && !strcmp(jk, key)) k = j;
        }
        if (k < 0) {
            unet_errorf(err, errlen, "configuration has an unknown key \"%s\" (written by a newer version?)", key);
            rc = -1;
            break;
        }
        char text[TEXT_MAX], why[512];
        if (json_value_text(&options[k], v, text, sizeof text, why, sizeof why) ||
            set_value(&tmp, &options[k], text, why, sizeof why)) {
            unet_errorf(err, errlen, "configuration: %s", why);
            rc = -1;
            break;
        }
        has_classes |= !strcmp(key, "classes");
        has_loss |= !strcmp(key, "loss");
    }
    json_object_put(root);
    if (rc) return -1;
    if (has_classes && !has_loss) tmp.model.loss = default_loss(tmp.model.classes);
    tmp.optim.total_steps = tmp.steps;
    *cfg = tmp;
    return 0;
}

/* ---- help and printing ------------------------------------------------ */

void unet_config_usage(FILE *f) {
    fprintf(f, "usage: unet <command> [options]\n\ncommands:\n");
    for (int c = 0; c < N_COMMANDS; c++) fprintf(f, "  %-13s %s\n", commands[c].name, commands[c].summary);
    fprintf(f, "\n'unet <command> --help' lists the options of a command; 'unet --version' says what this unet "
               "was built from.\n");
}

/* Words of text from column `indent` (where the cursor is) to `width`. */
static void print_wrapped(FILE *f, const char *text, int indent, int width) {
    int col = indent;
    for (const char *w = text; *w;) {
        size_t len = strcspn(w, " ");
        if (col > indent && col + 1 + (int)len > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        }
        col += fprintf(f, "%s%.*s", col > indent ? " " : "", (int)len, w);
        w += len;
        while (*w == ' ') w++;
    }
    fputc('\n', f);
}

void unet_config_help(FILE *f, const char *subcommand) {
    const command *cmd = find_command(subcommand);
    if (!cmd) {
        unet_config_usage(f);
        return;
    }
    fprintf(f, "usage: unet %s%s [options]\n%s.\n", cmd->name, positional_of(cmd->bit) ? " D.h5" : "", cmd->summary);
    for (int g = 0; g < N_GROUPS; g++) {
        int header = 0;
        for (int k = 0; k < N_OPTIONS; k++) {
            const option *o = &options[k];
            if (o->group != groups[g].bit || !(o->commands & cmd->bit)) continue;
            if (!header) fprintf(f, "\n%s:\n", groups[g].name), header = 1;
            char left[160], meta[128] = "";
            if (o->type == OPT_ENUM)
                choices_text(o, "|", meta, sizeof meta);
            else if (o->type != OPT_FLAG)
                snprintf(meta, sizeof meta, "%s", o->meta ? o->meta : "X");
            snprintf(left, sizeof left, "  --%s%s%s", o->name, meta[0] ? " " : "", meta);
            if (strlen(left) > 30)
                fprintf(f, "%s\n%-32s", left, "");
            else
                fprintf(f, "%-32s", left);
            char text[512];
            snprintf(text, sizeof text, "%s", o->help);
            if (o->def && o->def[0] && o->type != OPT_FLAG)
                snprintf(text + strlen(text), sizeof text - strlen(text), " (default: %s)", o->def);
            print_wrapped(f, text, 32, 100);
        }
    }
    fprintf(f, "\n  -h, --help                    this help\n");
}

void unet_config_print(FILE *f, const unet_config *cfg, const char *subcommand) {
    const command *cmd = find_command(subcommand);
    unsigned bit = cmd ? cmd->bit : ~0u;
    fprintf(f, "unet %s\n", cmd ? cmd->name : "");
    for (int g = 0; g < N_GROUPS; g++) {
        int col = 0;
        for (int k = 0; k < N_OPTIONS; k++) {
            const option *o = &options[k];
            if (o->group != groups[g].bit || !(o->commands & bit) || (o->flags & OPTF_NO_JSON)) continue;
            char text[TEXT_MAX];
            value_text(cfg, o, text, sizeof text);
            if (o->type == OPT_STRING && !text[0]) continue; /* an unset path says nothing */
            if (o->type == OPT_FLAG && !*(const int *)cfield(cfg, o)) continue;
            int len = (int)(strlen(o->name) + strlen(text) + 2);
            if (col == 0)
                col = fprintf(f, "  %-9s", groups[g].name);
            else if (col + len > 110)
                col = fprintf(f, "\n  %-9s", "") - 1;
            if (o->type == OPT_FLAG)
                col += fprintf(f, " %s", o->name);
            else
                col += fprintf(f, " %s=%s", o->name, text);
        }
        if (col) fputc('\n', f);
    }
}
