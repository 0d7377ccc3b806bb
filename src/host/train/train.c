/* unet train: the training loop. Batches come from the loader as a pure
 * function of (seed, step), the dropout seed is a function of (seed, step),
 * and the checkpoint holds parameters, optimizer state, the step and the
 * run's counters, so a run resumed at step k continues with exactly the bits
 * of an unbroken run. Checkpoints are written at the end, at a stop, every
 * --save-every steps or --save-every-min minutes and at the best validation,
 * never with a value that is not finite (run_files.h names them). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/common/util.h"
#include "host/train/augment_device.h"
#include "host/train/evaluate.h"
#include "host/train/run_files.h"
#include "host/train/session.h"
#include "host/train/step.h"
#include "host/common/test_hooks.h"
#include "unet/augment.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"
#include "unet/dist.h"
#include "unet/optim.h"
#include "unet/rng.h"

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

/* A one-line progress bar on a terminal; nothing when stderr is a file. */
static void progress(long step, long steps, double loss, double ips, double elapsed) {
    if (!isatty(2)) return;
    int width = 30, done = steps ? (int)(width * step / steps) : width;
    double eta = step ? elapsed / step * (steps - step) : 0;
    fprintf(stderr, "\r[%.*s%*s] step %ld/%ld  loss %.4f  %.1f img/s  eta %dm%02ds ", done,
            "##############################", width - done, "", step, steps, loss, ips, (int)eta / 60, (int)eta % 60);
    if (step == steps) fputc('\n', stderr);
    fflush(stderr);
}

/* Host copies of the optimizer's state blocks, zeroed: opt_a, and opt_b
 * when the optimizer has a second one (Adam's second moment), else NULL. */
static int alloc_opt_state(const unet_session *s, float **opt_a, float **opt_b, char *err, size_t errlen) {
    size_t n = s->pb.n_trainable;
    *opt_b = NULL;
    *opt_a = unet_alloc_zeroed(n, sizeof(float), "the optimizer state", err, errlen);
    if (*opt_a && s->pb.opt_b && !(*opt_b = unet_alloc_zeroed(n, sizeof(float), "the optimizer state", err, errlen))) {
        free(*opt_a);
        *opt_a = NULL;
    }
    return *opt_a ? 0 : -1;
}

/* --init-encoder: torchvision's weights over the backbone of a model started from --init or He initialisation. */
static int init_encoder(const unet_config *cfg, unet_session *s, char *err, size_t errlen) {
    if (cfg->model.encoder == UNET_ENCODER_PLAIN) {
        snprintf(err, errlen,
                 "--init-encoder loads the weights of a backbone: it needs --encoder resnet18, resnet34, "
                 "resnet50 or mobilenet_v2");
        return -1;
    }
    return unet_checkpoint_load_encoder(cfg->init_encoder, unet_encoder_name(cfg->model.encoder), s->model.graph,
                                        s->host_params, s->host_state, err, errlen);
}

/* Validation counts of every rank's share of the images, summed: ratios are
 * taken from the totals, so the metrics are those of one process. */
static void sum_seg_stats(unet_dist *dist, unet_seg_stats *stats, int n_heads) {
    enum { PER_HEAD = 4 * UNET_MAX_CLASSES + 5 };
    double buf[UNET_MAX_LEVELS * PER_HEAD];
    for (int h = 0; h < n_heads; h++) {
        double *b = buf + h * PER_HEAD;
        memcpy(b, stats[h].tp, sizeof stats[h].tp);
        memcpy(b + UNET_MAX_CLASSES, stats[h].fp, sizeof stats[h].fp);
        memcpy(b + 2 * UNET_MAX_CLASSES, stats[h].fn, sizeof stats[h].fn);
        b[3 * UNET_MAX_CLASSES] = stats[h].correct, b[3 * UNET_MAX_CLASSES + 1] = stats[h].total;
        memcpy(b + 3 * UNET_MAX_CLASSES + 2, stats[h].vrand_sum, sizeof stats[h].vrand_sum);
        b[4 * UNET_MAX_CLASSES + 2] = stats[h].rand_images;
        b[4 * UNET_MAX_CLASSES + 3] = stats[h].loss_sum, b[4 * UNET_MAX_CLASSES + 4] = stats[h].loss_images;
    }
    unet_dist_sum_f64(dist, buf, n_heads * PER_HEAD);
    for (int h = 0; h < n_heads; h++) {
        const double *b = buf + h * PER_HEAD;
        memcpy(stats[h].tp, b, sizeof stats[h].tp);
        memcpy(stats[h].fp, b + UNET_MAX_CLASSES, sizeof stats[h].fp);
        memcpy(stats[h].fn, b + 2 * UNET_MAX_CLASSES, sizeof stats[h].fn);
        stats[h].correct = b[3 * UNET_MAX_CLASSES], stats[h].total = b[3 * UNET_MAX_CLASSES + 1];
        memcpy(stats[h].vrand_sum, b + 3 * UNET_MAX_CLASSES + 2, sizeof stats[h].vrand_sum);
        stats[h].rand_images = b[4 * UNET_MAX_CLASSES + 2];
        stats[h].loss_sum = b[4 * UNET_MAX_CLASSES + 3], stats[h].loss_images = b[4 * UNET_MAX_CLASSES + 4];
    }
}

/* One line of the JSONL log, flushed as written: a job's log is followed
 * as it runs. A line that cannot be written (a full disk) fails the run. */
static int log_json(FILE *log, const char *path, const char *line, char *err, size_t errlen) {
    if (!log) return 0;
    if (fprintf(log, "%s\n", line) < 0 || fflush(log)) {
        unet_errorf(err, errlen, "cannot write the log %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Everything a training run holds: opened stage by stage (train_open),
 * stepped (train_steps), closed whatever was opened (train_close). */
typedef struct {
    unet_config *cfg;
    char rank_device[64];     /* cfg->device of a rank of several: cuda:<local rank> */
    unet_augment_cfg augment; /* outlives the loader, which calls it */
    unet_dataset *train_ds, *val_ds;
    unet_dataset_info info;
    unet_data_view train_view, val_view;
    unet_data_view my_val; /* this rank's share of the validation images */
    unet_session s;
    unet_dist *dist;
    int rank, world;
    const unet_replica_sum *replica_sum; /* --sync-bn across the ranks; NULL: none */
    unet_plan *plan, *eval_plan;
    unet_shape out;     /* the deepest head's output */
    unet_tiling tiling; /* of eval_plan */
    long start;         /* the first step: 0, or the resumed checkpoint's */
    unet_loader *loader;
    int warp_on_gpu; /* --augment-device cuda: the loader draws, gpu_aug warps */
    gpu_augment gpu_aug;
    float *raw, *weight; /* the host batch, when the loader makes it */
    int32_t *label;
    FILE *log; /* rank 0's JSONL log; NULL: none */
    unet_stepper stepper;
    double t0, t_log; /* when the steps started, and the last log line */
    double t_saved;   /* when the last periodic checkpoint was written (or the steps started) */
    long imgs_since_log;
    int all_ranks_failed;              /* every rank fails at this step: none waits for another */
    unet_update_guard guard;           /* the update pass's record of non-finite steps, as last read */
    long bad_reported;                 /* of guard.bad_steps, those the run has reported */
    unet_run_progress progress;        /* what a checkpoint records besides the step: counters, the best validation */
    char resumed[UNET_RUN_PATH_MAX];   /* the checkpoint --resume took */
    char last_good[UNET_RUN_PATH_MAX]; /* the newest checkpoint of this run, written or resumed ("": none) */
    long last_good_step;
} train_run;

/* What a step leaves for the stages after it. */
typedef struct {
    long step, done; /* the step's index, and the steps done counting it */
    int logged;      /* a log line at this step */
    int have_loss;   /* the loss was read (and, with several ranks, agreed on) */
    double loss, per_head[UNET_MAX_LEVELS];
    int signalled; /* a stop signal, on any rank */
} step_result;

/* --data and the validation images (--val, or the --val-fraction split of
 * --data), and the augmentation the loader will apply. */
static int open_data(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    if (!cfg->data[0]) {
        snprintf(err, errlen, "unet train needs --data FILE.h5 (an HDF5 file with raw and label)");
        return -1;
    }
    if (unet_augment_parse(cfg->augment, &t->augment, err, errlen)) return -1;
    unet_dataset_opts dopts = {.raw_key = cfg->raw_key[0] ? cfg->raw_key : NULL,
                               .label_key = cfg->label_key[0] ? cfg->label_key : NULL,
                               .weight_key = cfg->weight_key[0] ? cfg->weight_key : NULL,
                               .classes = cfg->model.classes};
    if (unet_dataset_open(cfg->data, &dopts, &t->train_ds, err, errlen)) return -1;
    unet_dataset_get_info(t->train_ds, &t->info);
    if (t->info.c != cfg->model.in_channels) {
        snprintf(err, errlen, "%s has %d channel(s) but the model takes --in-channels %d", cfg->data, t->info.c,
                 cfg->model.in_channels);
        return -1;
    }
    t->train_view = unet_data_view_all(t->train_ds);
    if (cfg->val[0]) {
        if (unet_dataset_open(cfg->val, &dopts, &t->val_ds, err, errlen)) return -1;
        t->val_view = unet_data_view_all(t->val_ds);
    } else if (cfg->val_fraction > 0) {
        if (unet_data_split(t->train_ds, cfg->val_fraction, &t->train_view, &t->val_view, err, errlen)) return -1;
    }
    return 0;
}

/* Data parallel: one process per device, the device from the local rank;
 * the model on it, and the communicator between the ranks. */
static int open_dist(train_run *t, char *err, size_t errlen) {
    unet_config *cfg = t->cfg;
    unet_dist_place place;
    if (unet_dist_place_from_env(cfg->rank, cfg->world_size, cfg->local_rank, &place, err, errlen)) return -1;
    if (place.world > 1)
        cfg->device = unet_dist_device(cfg->device, place.local_rank, t->rank_device, sizeof t->rank_device);
    if (unet_session_build(&t->s, cfg, 1, t->info.has_weight, err, errlen)) return -1;
    if (check_augment_device(cfg, &t->augment, t->s.backend, err, errlen)) return -1;
    unet_dist_opts dist_opts = {.kind = (unet_dist_kind)cfg->dist,
                                .rank = cfg->rank,
                                .world = cfg->world_size,
                                .local_rank = cfg->local_rank,
                                .timeout_s = cfg->dist_timeout,
                                .bucket_bytes = (size_t)(cfg->bucket_mb * 1048576.0)};
    if (unet_dist_open(&dist_opts, t->s.backend, &t->dist, err, errlen)) return -1;
    t->rank = unet_dist_rank(t->dist), t->world = unet_dist_world(t->dist);
    if (t->world > 1 || cfg->dist == UNET_DIST_NCCL || cfg->dist == UNET_DIST_MPI) {
        printf("rank %d of %d (local rank %d) on %s: device %s, %s, batch %d of a global %d\n", t->rank, t->world,
               unet_dist_local_rank(t->dist), unet_dist_host(t->dist), t->s.device, unet_dist_name(t->dist), cfg->batch,
               cfg->batch * t->world);
        fflush(stdout);
    }
    t->replica_sum = cfg->sync_bn ? unet_dist_replica_sum(t->dist) : NULL;
    if (cfg->sync_bn && t->world > 1 && !t->replica_sum) {
        snprintf(err, errlen,
                 "--sync-bn is implemented on the CPU backend (--dist mpi) only for now; on %s batch "
                 "norm is per process: drop --sync-bn",
                 t->s.device);
        return -1;
    }
    return 0;
}

/* The training plan (its gradients handed to the communicator as the
 * backward finishes them) and, with validation images, the inference plan
 * and tiling that evaluate this rank's share of them. */
static int open_plans(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    unet_plan_cfg pc = {
        .batch = cfg->batch, .height = cfg->tile, .width = cfg->tile, .training = 1, .replica_sum = t->replica_sum};
    t->plan = unet_plan_compile(t->s.model.graph, &t->s.pb, pc, err, errlen);
    if (!t->plan) return -1;
    if (strcmp(unet_dist_name(t->dist), "none")) unet_plan_on_grads_ready(t->plan, unet_dist_grads_ready, t->dist);
    t->out = unet_plan_output_shape(t->plan, unet_plan_num_outputs(t->plan) - 1);
    if (!t->val_view.ds) return 0;
    pc.training = 0;
    pc.replica_sum = NULL;
    t->eval_plan = unet_plan_compile(t->s.model.graph, &t->s.pb, pc, err, errlen);
    if (!t->eval_plan ||
        unet_tiling_init(&t->tiling, t->eval_plan, unet_pool_levels(&cfg->model), cfg->overlap, err, errlen))
        return -1;
    int lo = (int)((long)t->val_view.images * t->rank / t->world);
    int hi = (int)((long)t->val_view.images * (t->rank + 1) / t->world);
    t->my_val = t->val_view;
    t->my_val.image0 += lo, t->my_val.images = hi - lo;
    return 0;
}

/* The loader of training batches, and where a batch goes: host buffers the
 * plan's inputs are set from, or (--augment-device cuda) the GPU warp. */
static int open_loader(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    /* the context a valid network loses per side, from the deepest head's output */
    unet_loader_opts lo = {.batch = cfg->batch,
                           .tile = cfg->tile,
                           .margin = (cfg->tile - t->out.h) / 2,
                           .seed = cfg->seed,
                           .no_shuffle = cfg->no_shuffle,
                           .rank = t->rank,
                           .world = t->world,
                           .workers = cfg->workers,
                           .no_prefetch = cfg->workers == 0};
    /* with --augment-device cuda the loader only reads and draws; the GPU warps (gpu_augment) */
    t->warp_on_gpu = cfg->augment_device == UNET_AUGMENT_DEVICE_CUDA && unet_augment_active(&t->augment);
    if (unet_augment_active(&t->augment)) {
        lo.augment = unet_augment_apply, lo.augment_ctx = &t->augment;
        lo.augment_context = unet_augment_context(&t->augment, cfg->tile);
    }
    if (t->warp_on_gpu)
        lo.augment = NULL, lo.draw = unet_augment_record, lo.record_bytes = unet_augment_record_bytes(&t->augment);
    if (unet_loader_create(&t->train_view, &lo, &t->loader, err, errlen)) return -1;
    if (t->warp_on_gpu)
        return gpu_augment_open(&t->gpu_aug, &t->augment, t->s.backend, t->plan, cfg->batch, t->info.c, cfg->tile,
                                lo.augment_context, err, errlen);
    size_t npix = (size_t)cfg->batch * cfg->tile * cfg->tile;
    if (!(t->raw = unet_alloc(npix * t->info.c, sizeof(float), "a training batch", err, errlen)) ||
        !(t->label = unet_alloc(npix, sizeof(int32_t), "a training batch's labels", err, errlen)))
        return -1;
    if (t->info.has_weight && !(t->weight = unet_alloc(npix, sizeof(float), "a training batch's weights", err, errlen)))
        return -1;
    return 0;
}

/* --resume: the newest complete checkpoint it names, with the run's weights,
 * optimizer state, step and counters. */
static int load_resume(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    unet_session *s = &t->s;
    if (unet_run_newest_checkpoint(cfg->resume, t->resumed, sizeof t->resumed, t->rank == 0 ? stderr : NULL, err,
                                   errlen))
        return -1;
    float *opt_a, *opt_b;
    if (alloc_opt_state(s, &opt_a, &opt_b, err, errlen)) return -1;
    int rc = unet_checkpoint_load_resume(t->resumed, s->model.graph, s->host_params, s->host_state, opt_a, opt_b,
                                         &t->progress, err, errlen);
    if (!rc) {
        s->backend->upload_f32(s->backend, s->pb.opt_a, opt_a, s->pb.n_trainable);
        if (opt_b) s->backend->upload_f32(s->backend, s->pb.opt_b, opt_b, s->pb.n_trainable);
    }
    free(opt_a);
    free(opt_b);
    if (rc) return -1;
    t->start = t->progress.step;
    if (t->start > cfg->steps) {
        unet_errorf(err, errlen, "%s is at step %ld, past --steps %ld: ask for more steps to continue", t->resumed,
                    t->start, cfg->steps);
        return -1;
    }
    snprintf(t->last_good, sizeof t->last_good, "%s", t->resumed);
    t->last_good_step = t->start;
    return 0;
}

/* Parameters to start from: a resumed checkpoint, --init weights, or He
 * initialisation; then the update pass's guard, with the policy and the
 * steps a resumed run had dropped, and --save-best's record (a resumed
 * one's when it kept the same metric). */
static int load_start(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    unet_session *s = &t->s;
    if (cfg->resume[0]) {
        if (load_resume(t, err, errlen)) return -1;
    } else if (cfg->init[0]) {
        unet_param_init_host(s->model.graph, cfg->seed, s->host_params, s->host_state);
        if (unet_checkpoint_load_weights(cfg->init, s->model.graph, s->host_params, s->host_state, err, errlen))
            return -1;
    } else {
        unet_param_init_host(s->model.graph, cfg->seed, s->host_params, s->host_state);
    }
    if (cfg->init_encoder[0] && init_encoder(cfg, s, err, errlen)) return -1;
    unet_session_upload(s);
    unet_optim_guard_set(&s->pb, cfg->on_nonfinite == UNET_NONFINITE_SKIP, t->progress.skipped_steps);
    t->bad_reported = t->progress.skipped_steps;
    const char *metric = cfg->save_best ? unet_config_choice_name("save-best", (int)cfg->save_best) : "";
    if (strcmp(t->progress.best_metric, metric)) t->progress.best_step = 0;
    snprintf(t->progress.best_metric, sizeof t->progress.best_metric, "%s", metric);
    return 0;
}

/* The flags that write beside --save, and what they need. */
static int check_checkpoint_flags(const train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    const char *needs_save = cfg->save_every ? "--save-every" : cfg->save_best ? "--save-best" : NULL;
    if (needs_save && !cfg->save[0]) {
        snprintf(err, errlen, "%s writes its checkpoints beside --save C.safetensors: give --save", needs_save);
        return -1;
    }
    if (cfg->save_best && !t->eval_plan) {
        snprintf(err, errlen, "--save-best %s needs validation images: give --val V.h5 or --val-fraction F",
                 unet_config_choice_name("save-best", (int)cfg->save_best));
        return -1;
    }
    return 0;
}

/* A fresh run under the name of one that did not finish (its periodic
 * checkpoints are there) would mix their files: it is refused, so that the
 * earlier run's steps are not lost by a forgotten --resume. */
static int check_no_unfinished_run(const unet_config *cfg, char *err, size_t errlen) {
    long newest[1];
    if (cfg->resume[0] || unet_run_periodic_steps(cfg->save, newest, 1) == 0) return 0;
    char path[UNET_RUN_PATH_MAX];
    unet_run_periodic_path(cfg->save, newest[0], path, sizeof path);
    unet_errorf(err, errlen,
                "--save %s: %s is there, from a run that did not finish: continue it with --resume %s, "
                "or remove its periodic checkpoints to start afresh",
                cfg->save, path, cfg->save);
    return -1;
}

/* The files the run writes as it goes, checked or opened before the first
 * step so that a bad path fails at once (one line, exit 2): rank 0 alone
 * writes the checkpoints and the log (appended to when resuming). The rest
 * of a checkpoint write a crash interrupted is cleared away. */
static int open_outputs(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    if (check_checkpoint_flags(t, err, errlen)) return -1;
    if (t->rank != 0) return 0;
    if (cfg->save[0]) {
        if (unet_check_output_file(cfg->save, "--save", err, errlen) || check_no_unfinished_run(cfg, err, errlen))
            return -1;
        unet_run_remove_partial(cfg->save, stdout);
    }
    if (cfg->log[0]) {
        if (unet_check_output_file(cfg->log, "--log", err, errlen)) return -1;
        if (!(t->log = fopen(cfg->log, t->start ? "a" : "w"))) {
            snprintf(err, errlen, "cannot write the log %s: %s", cfg->log, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Rank 0 says what runs: the configuration, the device, the sizes. */
static void announce(const train_run *t) {
    const unet_config *cfg = t->cfg;
    if (t->rank == 0) {
        unet_config_print(stdout, cfg, "train");
        unet_plan_stats st = unet_plan_get_stats(t->plan);
        const unet_backend *b = t->s.backend;
        const char *nondeterminism = b->nondeterminism ? b->nondeterminism(b) : NULL;
        printf("device: %s%s%s; %zu parameters; training images %d x %dx%d; tile %d -> output %d; "
               "activations %.1f MiB (%.1f MiB without reuse)\n",
               t->s.device, nondeterminism ? ", " : "", nondeterminism ? nondeterminism : "",
               unet_graph_trainable_params(t->s.model.graph), t->train_view.images, t->train_view.rows, t->info.w,
               cfg->tile, t->out.h, st.arena_bytes / 1048576.0, st.unplanned_bytes / 1048576.0);
        if (cfg->resume[0]) printf("resuming %s at step %ld\n", t->resumed, t->start);
    }
    fflush(stdout);
}

/* The step runner (eager, or captured and replayed where the backend can),
 * and this rank's samples: the rank-th contiguous slice of the global batch. */
static void open_stepper(train_run *t) {
    const unet_config *cfg = t->cfg;
    unet_stepper_cfg step_cfg = {.plan = t->plan,
                                 .pb = &t->s.pb,
                                 .optim = &cfg->optim,
                                 .dist = t->dist,
                                 .average_state = t->world > 1 && !t->replica_sum,
                                 .graph = cfg->cuda_graph == UNET_CUDA_GRAPH_AUTO,
                                 .notes = t->rank == 0 ? stdout : NULL};
    unet_stepper_init(&t->stepper, &step_cfg);
    unet_plan_set_first_sample(t->plan, (uint64_t)t->rank * (uint64_t)cfg->batch);
}

/* Everything the steps need, in the order a failure should be reported in:
 * the input's mistakes (bad data, flags, files) before any work. */
static int train_open(train_run *t, unet_config *cfg, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    t->world = 1;
    if (open_data(t, err, errlen) || open_dist(t, err, errlen) || open_plans(t, err, errlen) ||
        load_start(t, err, errlen) || open_loader(t, err, errlen) || open_outputs(t, err, errlen))
        return -1;
    announce(t);
    open_stepper(t);
    return 0;
}

static void train_close(train_run *t) {
    if (t->log) fclose(t->log);
    unet_stepper_free(&t->stepper);
    unet_dist_close(t->dist);
    unet_loader_free(t->loader);
    gpu_augment_close(&t->gpu_aug);
    unet_plan_free(t->plan);
    unet_plan_free(t->eval_plan);
    unet_session_free(&t->s);
    if (t->train_ds) unet_dataset_close(t->train_ds);
    if (t->val_ds) unet_dataset_close(t->val_ds);
    free(t->raw);
    free(t->label);
    free(t->weight);
}

/* Step `step`'s batch into the plan's inputs: warped on the GPU, or made by
 * the loader on the host. */
static int feed_batch(train_run *t, long step, char *err, size_t errlen) {
    if (t->warp_on_gpu) return gpu_augment_batch(&t->gpu_aug, t->loader, step, err, errlen);
    if (unet_loader_batch(t->loader, step, t->raw, t->label, t->weight, err, errlen)) return -1;
    if (step + 1 == unet_test_nan_step()) t->raw[0] = NAN;
    unet_plan_set_inputs(t->plan, t->raw, t->label, t->weight);
    return 0;
}

/* The loss of the global batch (the mean of the ranks' means), and a stop
 * signal seen by any rank stops all of them at the same step. */
static void agree_over_ranks(train_run *t, step_result *r) {
    int n_heads = t->s.model.n_heads;
    double v[2 + UNET_MAX_LEVELS] = {r->loss, r->signalled};
    for (int h = 0; h < n_heads; h++) v[2 + h] = r->per_head[h];
    unet_dist_sum_f64(t->dist, v, 2 + n_heads);
    r->loss = v[0] / t->world, r->signalled = v[1] > 0;
    for (int h = 0; h < n_heads; h++) r->per_head[h] = v[2 + h] / t->world;
}

/* One training step: the batch in, then forward, backward, gradient
 * averaging and update; its loss, where it is read, agreed over the ranks. */
static int take_step(train_run *t, long step, step_result *r, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    if (feed_batch(t, step, err, errlen)) return -1;
    /* dropout: one stream for every rank, each drawing its slice of the
     * global batch's masks (unet_plan_set_first_sample) */
    unet_stepper_run(&t->stepper, step, unet_rng_key(cfg->seed, 0xd0, (uint64_t)step));
    memset(r, 0, sizeof *r);
    r->step = step, r->done = step + 1;
    r->logged = cfg->log_every > 0 && (r->done % cfg->log_every == 0 || r->done == cfg->steps);
    /* Reading the loss waits for the step. A replayed step is read only
     * when logged, so that the host prepares the next batch while the
     * device computes; eager steps are checked every step. */
    r->have_loss = r->logged || t->world > 1 || !unet_stepper_replaying(&t->stepper);
    if (r->have_loss) {
        r->loss = unet_plan_loss(t->plan, r->per_head);
        /* the step is done: what its guard found costs no wait */
        unet_optim_guard_read(&t->s.pb, &t->guard);
    }
    r->signalled = stop_signal != 0;
    if (t->world > 1) agree_over_ranks(t, r);
    return 0;
}

/* The first tensor of `kind` with a value in `block` (the graph's layout)
 * that is not finite; NULL when there is none. */
static const char *nonfinite_tensor(const unet_graph *g, unet_param_kind kind, const float *block) {
    const unet_param *p = unet_graph_params(g);
    for (int k = 0; k < unet_graph_num_params(g); k++)
        for (size_t i = 0; p[k].kind == kind && i < p[k].count; i++)
            if (!isfinite(block[p[k].offset + i])) return p[k].name;
    return NULL;
}

/* What was not finite at a step the guard dropped, as a clause: a head's
 * loss, else the first gradient that is not (read back: this is the rare
 * path), else the batch norm statistics, which the guard has put back
 * already. Known only when the host reads the step that did it (replayed
 * steps are read when logged). */
static void describe_nonfinite(const train_run *t, const step_result *r, long bad_step, char *what, size_t n) {
    const unet_session *s = &t->s;
    if (bad_step != r->done) {
        snprintf(what, n,
                 "a loss, gradient or statistic is NaN or infinite (found at step %ld: replayed steps are "
                 "read when logged)",
                 r->done);
        return;
    }
    for (int h = 0; h < s->model.n_heads; h++)
        if (!isfinite(r->per_head[h])) {
            if (s->model.n_heads > 1)
                snprintf(what, n, "the loss of head %d is %g", s->model.head_column[h], r->per_head[h]);
            else
                snprintf(what, n, "the loss is %g", r->per_head[h]);
            return;
        }
    float *grads = malloc((s->pb.n_trainable ? s->pb.n_trainable : 1) * sizeof(float));
    const char *name = NULL;
    if (grads) {
        s->backend->download_f32(s->backend, grads, s->pb.grads, s->pb.n_trainable);
        name = nonfinite_tensor(s->model.graph, UNET_PARAM_TRAINABLE, grads);
        free(grads);
    }
    if (name)
        snprintf(what, n, "the gradient of %s is NaN or infinite", name);
    else
        snprintf(what, n, "%s",
                 grads ? "the batch norm statistics are NaN or infinite"
                       : "a gradient or statistic is NaN or infinite");
}

/* "the last good checkpoint is ...", or that there is none. */
static void last_good_text(const train_run *t, char *text, size_t n) {
    if (t->last_good[0])
        snprintf(text, n, "the last good checkpoint is %s (step %ld)", t->last_good, t->last_good_step);
    else
        snprintf(text, n, "no checkpoint was written before it");
}

/* The run stops at its first non-finite step: which step, what, and where to
 * go on from. The update of that step and every later one were dropped. */
static int stop_nonfinite(train_run *t, const char *what, char *err, size_t errlen) {
    char good[UNET_RUN_PATH_MAX + 64];
    last_good_text(t, good, sizeof good);
    unet_errorf(err, errlen,
                "step %ld is not finite: %s. The run diverged, or the batch holds NaN or infinity "
                "(lower --lr, now %g; --on-nonfinite skip drops such steps); its update was dropped and nothing "
                "saved after it: %s",
                (long)t->guard.first_bad, what, (double)t->cfg->optim.lr, good);
    /* every rank reads the same guard (the gradients are averaged first): all of them stop here */
    t->all_ranks_failed = t->world > 1;
    return -1;
}

/* A step whose loss, gradient or statistics are not finite has had its
 * update dropped by the guard (unet_backend.guard), which the host reads
 * with the loss. Then the run stops (--on-nonfinite stop), or says so and
 * goes on (skip), until more than --max-skips steps were dropped. */
static int check_finite(train_run *t, const step_result *r, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    const unet_update_guard *g = &t->guard;
    if (!r->have_loss) return 0;
    char what[UNET_NAME_LEN + 160];
    if (g->bad_steps == t->bad_reported) {
        if (isfinite(r->loss)) return 0;
        /* a loss that is no number over finite gradients: the update went through, the run ends */
        unet_errorf(err, errlen, "the loss became %g at step %ld: the run diverged (lower --lr, now %g)", r->loss,
                    r->done, (double)cfg->optim.lr);
        t->all_ranks_failed = t->world > 1;
        return -1;
    }
    if (cfg->on_nonfinite == UNET_NONFINITE_STOP) {
        describe_nonfinite(t, r, (long)g->first_bad, what, sizeof what);
        return stop_nonfinite(t, what, err, errlen);
    }
    describe_nonfinite(t, r, (long)g->last_bad, what, sizeof what);
    t->bad_reported = (long)g->bad_steps;
    if (g->bad_steps > cfg->max_skips) {
        char good[UNET_RUN_PATH_MAX + 64];
        last_good_text(t, good, sizeof good);
        unet_errorf(err, errlen,
                    "%ld step(s) dropped for NaN or infinity, more than --max-skips %d (the last, step "
                    "%ld: %s): the run diverged or the data is bad (lower --lr, now %g); %s",
                    (long)g->bad_steps, cfg->max_skips, (long)g->last_bad, what, (double)cfg->optim.lr, good);
        t->all_ranks_failed = t->world > 1;
        return -1;
    }
    if (t->rank == 0) {
        if (isatty(2)) fputc('\n', stderr);
        printf("step %ld: %s: its update was dropped (%ld step%s dropped so far; the run stops past --max-skips "
               "%d)\n",
               (long)g->last_bad, what, (long)g->bad_steps, g->bad_steps > 1 ? "s" : "", cfg->max_skips);
    }
    return 0;
}

/* A number in a JSON line: JSON has no NaN or infinity (a skipped step's
 * loss), which are null. */
static void json_number(double v, char *buf, size_t n) {
    if (isfinite(v))
        snprintf(buf, n, "%.6g", v);
    else
        snprintf(buf, n, "null");
}

/* The step's images counted for the throughput; at a logged step the JSON
 * line, a step line on stdout when stderr is no terminal, and the progress
 * bar when it is. */
static int log_step(train_run *t, const step_result *r, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    t->imgs_since_log += (long)cfg->batch * t->world; /* the job's images, not this rank's */
    if (!r->logged) return 0;
    t->s.backend->sync(t->s.backend);
    double now = unet_now_s(), ips = t->imgs_since_log / (now - t->t_log);
    t->t_log = now;
    t->imgs_since_log = 0;
    char line[1024]; /* the loss of up to UNET_MAX_LEVELS heads */
    char loss[32];
    json_number(r->loss, loss, sizeof loss);
    int n = snprintf(line, sizeof line, "{\"step\": %ld, \"loss\": %s, \"lr\": %.6g, \"images_per_s\": %.4g", r->done,
                     loss, (double)unet_lr_at(&cfg->optim, r->step), ips);
    if (t->s.model.n_heads > 1)
        for (int h = 0; h < t->s.model.n_heads; h++) {
            json_number(r->per_head[h], loss, sizeof loss);
            n += snprintf(line + n, sizeof line - n, ", \"loss_head%d\": %s", t->s.model.head_column[h], loss);
        }
    unet_dist_stats ds = unet_dist_take_stats(t->dist);
    if (ds.steps)
        n += snprintf(line + n, sizeof line - n, ", \"world\": %d, \"comm_wait_s\": %.4g", t->world,
                      ds.wait_s / ds.steps);
    if (cfg->on_nonfinite == UNET_NONFINITE_SKIP)
        n += snprintf(line + n, sizeof line - n, ", \"skipped_steps\": %ld", (long)t->guard.bad_steps);
    snprintf(line + n, sizeof line - n, "}");
    if (log_json(t->log, cfg->log, line, err, errlen)) return -1;
    if (t->rank == 0 && !isatty(2)) printf("step %ld/%ld loss %.4f %.2f img/s\n", r->done, cfg->steps, r->loss, ips);
    if (t->rank == 0) progress(r->done, cfg->steps, r->loss, ips, now - t->t0);
    return 0;
}

/* Every --val-every steps, and after the last step the run takes. */
static int validation_due(const train_run *t, long done, int last) {
    return t->eval_plan && ((t->cfg->val_every > 0 && done % t->cfg->val_every == 0) || last);
}

/* The validation images predicted whole, each rank its share, the counts
 * summed over the ranks: the metrics of every head in the log, the deepest
 * head's on stdout and in *deepest. */
static int validate(train_run *t, long done, unet_seg_metrics *deepest, char *err, size_t errlen) {
    const int n_heads = t->s.model.n_heads;
    unet_seg_stats stats[UNET_MAX_LEVELS];
    if (unet_evaluate_view(t->eval_plan, &t->tiling, &t->my_val, &t->cfg->model, stats, n_heads, err, errlen))
        return -1;
    if (t->world > 1) sum_seg_stats(t->dist, stats, n_heads);
    char line[16384]; /* per-class metrics of up to 64 classes, per-head of up to 8 heads */
    int n = snprintf(line, sizeof line, "{\"step\": %ld", done);
    for (int h = n_heads - 1; h >= 0; h--) {
        unet_seg_metrics m = unet_seg_stats_finish(&stats[h]);
        if (h == n_heads - 1) *deepest = m;
        if (h == n_heads - 1) n += unet_seg_metrics_json(line + n, sizeof line - n, &m, "val_");
        if (n_heads > 1)
            n += snprintf(line + n, sizeof line - n, ", \"val_iou_head%d\": %.6f, \"val_dice_head%d\": %.6f",
                          t->s.model.head_column[h], m.iou, t->s.model.head_column[h], m.dice);
        if (h == n_heads - 1 && t->rank == 0) {
            if (isatty(2)) fputc('\n', stderr);
            printf("validation at step %ld: IoU %.4f  Dice %.4f  pixel accuracy %.4f  Rand error %.4f  loss %.4f\n",
                   done, m.iou, m.dice, m.pixel_accuracy, m.rand_error, m.loss);
            unet_seg_metrics_print_classes(stdout, &m, "  ");
        }
    }
    snprintf(line + n, sizeof line - n, "}");
    return log_json(t->log, t->cfg->log, line, err, errlen);
}

/* The checkpoint of the run after `done` steps at path: parameters, batch
 * norm statistics and optimizer state from the backend, the progress and the
 * configuration. Never a state that is not finite: a run the guard stopped,
 * or a value that is not (an update that overflowed, say), is refused, and
 * the last good checkpoint stays the newest. */
static int save_checkpoint(train_run *t, const char *path, long done, char *err, size_t errlen) {
    unet_session *s = &t->s;
    const unet_backend *b = s->backend;
    unet_optim_guard_read(&s->pb, &t->guard);
    if (t->guard.latched) {
        char what[UNET_RUN_PATH_MAX + 128];
        snprintf(what, sizeof what, "a loss, gradient or statistic is NaN or infinite (found before writing %s)", path);
        return stop_nonfinite(t, what, err, errlen);
    }
    float *opt_a, *opt_b;
    if (alloc_opt_state(s, &opt_a, &opt_b, err, errlen)) return -1;
    unet_session_download(s);
    b->download_f32(b, opt_a, s->pb.opt_a, s->pb.n_trainable);
    if (opt_b) b->download_f32(b, opt_b, s->pb.opt_b, s->pb.n_trainable);
    const unet_graph *g = s->model.graph;
    const char *bad = nonfinite_tensor(g, UNET_PARAM_TRAINABLE, s->host_params);
    if (!bad) bad = nonfinite_tensor(g, UNET_PARAM_STATE, s->host_state);
    if (!bad) bad = nonfinite_tensor(g, UNET_PARAM_TRAINABLE, opt_a);
    if (!bad && opt_b) bad = nonfinite_tensor(g, UNET_PARAM_TRAINABLE, opt_b);
    int rc = -1;
    if (bad) {
        char good[UNET_RUN_PATH_MAX + 64];
        last_good_text(t, good, sizeof good);
        unet_errorf(err, errlen,
                    "not writing %s: %s (or its optimizer state) is NaN or infinite after step %ld: "
                    "the run diverged (lower --lr, now %g); %s",
                    path, bad, done, (double)t->cfg->optim.lr, good);
    } else {
        t->progress.step = done;
        t->progress.skipped_steps = (long)t->guard.bad_steps;
        char *json = unet_config_to_json(t->cfg, 0);
        rc =
            unet_checkpoint_save(path, g, s->host_params, s->host_state, opt_a, opt_b, &t->progress, json, err, errlen);
        free(json);
    }
    free(opt_a);
    free(opt_b);
    if (rc) return -1;
    snprintf(t->last_good, sizeof t->last_good, "%s", path);
    t->last_good_step = done;
    return 0;
}

/* --save-best: the validation's value of the metric, and whether higher is
 * better; NAN when the validation has none (no image scored for Rand). */
static double best_metric_value(unet_best_metric which, const unet_seg_metrics *m, int *higher) {
    *higher = which != UNET_BEST_PIXEL_ERROR && which != UNET_BEST_RAND_ERROR && which != UNET_BEST_LOSS;
    switch (which) {
    case UNET_BEST_IOU:
        return m->iou;
    case UNET_BEST_DICE:
        return m->dice;
    case UNET_BEST_PIXEL_ACCURACY:
        return m->pixel_accuracy;
    case UNET_BEST_PIXEL_ERROR:
        return m->pixel_error;
    case UNET_BEST_RAND_ERROR:
        return m->rand_error < 0 ? NAN : m->rand_error;
    case UNET_BEST_LOSS:
        return m->loss;
    default:
        return NAN;
    }
}

/* C.best.safetensors when this validation beats every earlier one (its
 * record is in every checkpoint, so a resumed run compares as the unbroken
 * one does). */
static int save_best(train_run *t, long done, const unet_seg_metrics *m, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    int higher;
    double v = best_metric_value(cfg->save_best, m, &higher);
    unet_run_progress *p = &t->progress;
    if (!isfinite(v) || (p->best_step && !(higher ? v > p->best_value : v < p->best_value))) return 0;
    p->best_value = v, p->best_step = done;
    char path[UNET_RUN_PATH_MAX];
    unet_run_best_path(cfg->save, path, sizeof path);
    if (save_checkpoint(t, path, done, err, errlen)) return -1;
    printf("best %s %.4f at step %ld: %s\n", p->best_metric, v, done, path);
    return 0;
}

/* The checkpoints due after a step, written by rank 0 beside --save: the best
 * validation's, and the periodic one every --save-every steps or
 * --save-every-min minutes (the last step and a stop write their own), after
 * which the oldest beyond --keep go. */
static int save_due(train_run *t, const step_result *r, const unet_seg_metrics *val, int stopping, char *err,
                    size_t errlen) {
    const unet_config *cfg = t->cfg;
    if (t->rank != 0 || !cfg->save[0]) return 0;
    if (val && cfg->save_best && save_best(t, r->done, val, err, errlen)) return -1;
    int by_steps = cfg->save_every > 0 && r->done % cfg->save_every == 0;
    int by_time = cfg->save_every_min > 0 && unet_now_s() - t->t_saved >= 60.0 * cfg->save_every_min;
    if (!(by_steps || by_time) || stopping || r->done == cfg->steps) return 0;
    char path[UNET_RUN_PATH_MAX];
    unet_run_periodic_path(cfg->save, r->done, path, sizeof path);
    if (save_checkpoint(t, path, r->done, err, errlen)) return -1;
    unet_test_kill_point("checkpoint-saved", -1);
    unet_run_prune_periodic(cfg->save, r->done, cfg->keep);
    t->t_saved = unet_now_s();
    return 0;
}

/* A signal or --stop-after: the checkpoint (--save, else the --resume file)
 * that a run with the same --steps continues from. 0 once it is written, 1
 * when there is nowhere to write it, -1 on a failure. */
static int stop_and_save(train_run *t, const step_result *r, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    const char *path = cfg->save[0] ? cfg->save : t->resumed;
    char why[64];
    if (stop_signal)
        snprintf(why, sizeof why, "stopped by signal %d", (int)stop_signal);
    else if (r->signalled)
        snprintf(why, sizeof why, "stopped by signal (on another rank)");
    else
        snprintf(why, sizeof why, "stopped after step %ld (--stop-after)", r->done);
    if (!path[0]) {
        if (t->rank == 0) fprintf(stderr, "unet: %s at step %ld (no --save given: nothing written)\n", why, r->done);
        return 1;
    }
    if (t->rank == 0 && save_checkpoint(t, path, r->done, err, errlen)) return -1;
    if (t->rank == 0)
        fprintf(stderr, "unet: %s at step %ld; checkpoint %s (continue with --resume %s)\n", why, r->done, path, path);
    return 0;
}

/* --save after the last step; the periodic checkpoints, which only guard
 * against a crash, go once it is written. */
static int save_final(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    if (!cfg->save[0] || t->rank != 0) return 0;
    if (save_checkpoint(t, cfg->save, cfg->steps, err, errlen)) return -1;
    unet_run_prune_periodic(cfg->save, cfg->steps, 0);
    printf("saved %s (step %ld)\n", cfg->save, cfg->steps);
    return 0;
}

/* The steps from t->start to --steps, or to a stop: the process exit code
 * (0 done, 1 stopped with nowhere to save), or -1 with a message in err. */
static int train_steps(train_run *t, char *err, size_t errlen) {
    const unet_config *cfg = t->cfg;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGUSR1, on_signal);
    t->t0 = t->t_log = t->t_saved = unet_now_s();
    for (long step = t->start; step < cfg->steps; step++) {
        step_result r;
        if (take_step(t, step, &r, err, errlen) || check_finite(t, &r, err, errlen) || log_step(t, &r, err, errlen))
            return -1;
        /* a signal, or --stop-after: save and stop, resumable with the same --steps */
        int stop = r.signalled || (cfg->stop_after > 0 && r.done == cfg->stop_after);
        unet_seg_metrics val;
        int validated = validation_due(t, r.done, stop || r.done == cfg->steps);
        if (validated && validate(t, r.done, &val, err, errlen)) return -1;
        if (save_due(t, &r, validated ? &val : NULL, stop, err, errlen)) return -1;
        if (stop) return stop_and_save(t, &r, err, errlen);
        unet_test_kill_point("step", r.done);
    }
    return save_final(t, err, errlen);
}

/* One line on stderr, naming the rank when there are several; a failure of
 * this rank alone must not leave the others waiting for it. */
static void report_failure(const train_run *t, int code, const char *err) {
    if (t->world > 1)
        fprintf(stderr, "unet: rank %d of %d: %s\n", t->rank, t->world, err);
    else
        fprintf(stderr, "unet: %s\n", err);
    if (t->world > 1 && !t->all_ranks_failed) unet_dist_abort(t->dist, code);
}

int unet_run_train(unet_config *cfg) {
    char err[1024] = "";
    train_run t;
    int code = 2; /* until the run starts, failures are the input's */
    int failed = train_open(&t, cfg, err, sizeof err) != 0;
    if (!failed) {
        code = 1; /* from here on a failure is the run's */
        int rc = train_steps(&t, err, sizeof err);
        failed = rc < 0;
        if (!failed) code = rc;
    }
    if (failed) report_failure(&t, code, err);
    train_close(&t);
    return code;
}
