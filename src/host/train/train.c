/* unet train: the training loop. Batches come from the loader as a pure
 * function of (seed, step), the dropout seed is a function of (seed, step),
 * and the checkpoint holds parameters, optimizer state and the step, so a
 * run resumed at step k continues with exactly the bits of an unbroken run. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "host/train/augment_device.h"
#include "host/train/session.h"
#include "host/train/step.h"
#include "unet/augment.h"
#include "unet/checkpoint.h"
#include "unet/dist.h"
#include "unet/optim.h"
#include "unet/rng.h"

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* A one-line progress bar on a terminal; nothing when stderr is a file. */
static void progress(long step, long steps, double loss, double ips, double elapsed) {
    if (!isatty(2)) return;
    int width = 30, done = steps ? (int)(width * step / steps) : width;
    double eta = step ? elapsed / step * (steps - step) : 0;
    fprintf(stderr, "\r[%.*s%*s] step %ld/%ld  loss %.4f  %.1f img/s  eta %dm%02ds ", done,
            "##############################", width - done, "", step, steps, loss, ips, (int)eta / 60,
            (int)eta % 60);
    if (step == steps) fputc('\n', stderr);
    fflush(stderr);
}

static int save(const unet_config *cfg, unet_session *s, const char *path, long step, char *err, size_t errlen) {
    unet_session_download(s);
    const unet_backend *b = s->backend;
    size_t n = s->pb.n_trainable;
    float *opt_a = malloc((n + 1) * sizeof(float)), *opt_b = s->pb.opt_b ? malloc((n + 1) * sizeof(float)) : NULL;
    b->download_f32(b, opt_a, s->pb.opt_a, n);
    if (opt_b) b->download_f32(b, opt_b, s->pb.opt_b, n);
    char *json = unet_config_to_json(cfg, 0);
    int rc = unet_checkpoint_save(path, s->model.graph, s->host_params, s->host_state, opt_a, opt_b, step, json, err,
                                  errlen);
    free(json);
    free(opt_a);
    free(opt_b);
    return rc;
}

/* Parameters to start from: a resumed checkpoint, --init weights, or He initialisation. */
static int load_start(const unet_config *cfg, unet_session *s, long *start, char *err, size_t errlen) {
    *start = 0;
    if (cfg->resume[0]) {
        size_t n = s->pb.n_trainable;
        float *opt_a = calloc(n + 1, sizeof(float)), *opt_b = s->pb.opt_b ? calloc(n + 1, sizeof(float)) : NULL;
        int rc = unet_checkpoint_load_resume(cfg->resume, s->model.graph, s->host_params, s->host_state, opt_a, opt_b,
                                             start, err, errlen);
        if (!rc) {
            s->backend->upload_f32(s->backend, s->pb.opt_a, opt_a, n);
            if (opt_b) s->backend->upload_f32(s->backend, s->pb.opt_b, opt_b, n);
        }
        free(opt_a);
        free(opt_b);
        if (rc) return -1;
        if (*start > cfg->steps) {
            snprintf(err, errlen, "%s is at step %ld, past --steps %ld: ask for more steps to continue", cfg->resume,
                     *start, cfg->steps);
            return -1;
        }
    } else if (cfg->init[0]) {
        unet_param_init_host(s->model.graph, cfg->seed, s->host_params, s->host_state);
        if (unet_checkpoint_load_weights(cfg->init, s->model.graph, s->host_params, s->host_state, err, errlen))
            return -1;
    } else {
        unet_param_init_host(s->model.graph, cfg->seed, s->host_params, s->host_state);
    }
    unet_session_upload(s);
    return 0;
}

/* Validation counts of every rank's share of the images, summed: ratios are
 * taken from the totals, so the metrics are those of one process. */
static void sum_seg_stats(unet_dist *dist, unet_seg_stats *stats, int n_heads) {
    enum { PER_HEAD = 4 * UNET_MAX_CLASSES + 3 };
    double buf[UNET_MAX_LEVELS * PER_HEAD];
    for (int h = 0; h < n_heads; h++) {
        double *b = buf + h * PER_HEAD;
        memcpy(b, stats[h].tp, sizeof stats[h].tp);
        memcpy(b + UNET_MAX_CLASSES, stats[h].fp, sizeof stats[h].fp);
        memcpy(b + 2 * UNET_MAX_CLASSES, stats[h].fn, sizeof stats[h].fn);
        b[3 * UNET_MAX_CLASSES] = stats[h].correct, b[3 * UNET_MAX_CLASSES + 1] = stats[h].total;
        memcpy(b + 3 * UNET_MAX_CLASSES + 2, stats[h].vrand_sum, sizeof stats[h].vrand_sum);
        b[4 * UNET_MAX_CLASSES + 2] = stats[h].rand_images;
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
    }
}

static void log_json(FILE *log, const char *line) {
    if (log) {
        fprintf(log, "%s\n", line);
        fflush(log);
    }
}

int unet_run_train(unet_config *cfg) {
    char err[1024] = "";
    int code = 2; /* until the run starts, failures are the input's */
    unet_session s;
    memset(&s, 0, sizeof s);
    unet_dataset *train_ds = NULL, *val_ds = NULL;
    unet_loader *loader = NULL;
    unet_plan *plan = NULL, *eval_plan = NULL;
    float *raw = NULL, *weight = NULL;
    int32_t *label = NULL;
    gpu_augment gpu_aug;
    memset(&gpu_aug, 0, sizeof gpu_aug);
    FILE *log = NULL;
    unet_dist *dist = NULL;
    unet_stepper stepper;
    memset(&stepper, 0, sizeof stepper);
    int rank = 0, world = 1, all_ranks_failed = 0;

    if (!cfg->data[0]) {
        snprintf(err, sizeof err, "unet train needs --data FILE.h5 (an HDF5 file with raw and label)");
        goto fail;
    }
    unet_augment_cfg augment; /* outlives the loader, which calls it */
    if (unet_augment_parse(cfg->augment, &augment, err, sizeof err)) goto fail;
    unet_dataset_opts dopts = {.raw_key = cfg->raw_key[0] ? cfg->raw_key : NULL,
                               .label_key = cfg->label_key[0] ? cfg->label_key : NULL,
                               .weight_key = cfg->weight_key[0] ? cfg->weight_key : NULL,
                               .classes = cfg->model.classes};
    if (unet_dataset_open(cfg->data, &dopts, &train_ds, err, sizeof err)) goto fail;
    unet_dataset_info info;
    unet_dataset_get_info(train_ds, &info);
    if (info.c != cfg->model.in_channels) {
        snprintf(err, sizeof err, "%s has %d channel(s) but the model takes --in-channels %d", cfg->data, info.c,
                 cfg->model.in_channels);
        goto fail;
    }
    unet_data_view train_view = unet_data_view_all(train_ds), val_view = {0};
    if (cfg->val[0]) {
        if (unet_dataset_open(cfg->val, &dopts, &val_ds, err, sizeof err)) goto fail;
        val_view = unet_data_view_all(val_ds);
    } else if (cfg->val_fraction > 0) {
        if (unet_data_split(train_ds, cfg->val_fraction, &train_view, &val_view, err, sizeof err)) goto fail;
    }
    /* data parallel: one process per device, the device from the local rank */
    unet_dist_place place;
    char rank_device[64];
    if (unet_dist_place_from_env(cfg->rank, cfg->world_size, cfg->local_rank, &place, err, sizeof err)) goto fail;
    if (place.world > 1) cfg->device = unet_dist_device(cfg->device, place.local_rank, rank_device, sizeof rank_device);
    if (unet_session_build(&s, cfg, 1, info.has_weight, err, sizeof err)) goto fail;
    if (check_augment_device(cfg, &augment, s.backend, err, sizeof err)) goto fail;
    unet_dist_opts dist_opts = {.kind = (unet_dist_kind)cfg->dist, .rank = cfg->rank, .world = cfg->world_size,
                            .local_rank = cfg->local_rank, .timeout_s = cfg->dist_timeout,
                            .bucket_bytes = (size_t)(cfg->bucket_mb * 1048576.0)};
    if (unet_dist_open(&dist_opts, s.backend, &dist, err, sizeof err)) goto fail;
    rank = unet_dist_rank(dist), world = unet_dist_world(dist);
    if (world > 1 || cfg->dist == UNET_DIST_NCCL || cfg->dist == UNET_DIST_MPI) {
        printf("rank %d of %d (local rank %d) on %s: device %s, %s, batch %d of a global %d\n", rank, world,
               unet_dist_local_rank(dist), unet_dist_host(dist), s.device, unet_dist_name(dist), cfg->batch,
               cfg->batch * world);
        fflush(stdout);
    }
    const unet_replica_sum *replica_sum = cfg->sync_bn ? unet_dist_replica_sum(dist) : NULL;
    if (cfg->sync_bn && world > 1 && !replica_sum) {
        snprintf(err, sizeof err, "--sync-bn is implemented on the CPU backend (--dist mpi) only for now; on %s batch "
                 "norm is per process: drop --sync-bn", s.device);
        goto fail;
    }
    unet_plan_cfg pc = {.batch = cfg->batch, .height = cfg->tile, .width = cfg->tile, .training = 1,
                        .replica_sum = replica_sum};
    plan = unet_plan_compile(s.model.graph, &s.pb, pc, err, sizeof err);
    if (!plan) goto fail;
    if (strcmp(unet_dist_name(dist), "none")) unet_plan_on_grads_ready(plan, unet_dist_grads_ready, dist);
    unet_tiling tiling;
    if (val_view.ds) {
        pc.training = 0;
        pc.replica_sum = NULL;
        eval_plan = unet_plan_compile(s.model.graph, &s.pb, pc, err, sizeof err);
        if (!eval_plan || unet_tiling_init(&tiling, eval_plan, unet_pool_levels(&cfg->model), cfg->overlap, err,
                                           sizeof err))
            goto fail;
    }
    long start;
    if (load_start(cfg, &s, &start, err, sizeof err)) goto fail;

    /* the context a valid network loses per side, from the deepest head's output */
    unet_shape out = unet_plan_output_shape(plan, unet_plan_num_outputs(plan) - 1);
    unet_loader_opts lo = {.batch = cfg->batch, .tile = cfg->tile, .margin = (cfg->tile - out.h) / 2,
                           .seed = cfg->seed, .no_shuffle = cfg->no_shuffle, .rank = rank, .world = world,
                           .workers = cfg->workers, .no_prefetch = cfg->workers == 0};
    /* with --augment-device cuda the loader only reads and draws; the GPU warps (gpu_augment) */
    int warp_on_gpu = cfg->augment_device == UNET_AUGMENT_DEVICE_CUDA && unet_augment_active(&augment);
    if (unet_augment_active(&augment)) {
        lo.augment = unet_augment_apply, lo.augment_ctx = &augment;
        lo.augment_context = unet_augment_context(&augment, cfg->tile);
    }
    if (warp_on_gpu)
        lo.augment = NULL, lo.draw = unet_augment_record, lo.record_bytes = unet_augment_record_bytes(&augment);
    if (unet_loader_create(&train_view, &lo, &loader, err, sizeof err)) goto fail;
    if (warp_on_gpu && gpu_augment_open(&gpu_aug, &augment, s.backend, plan, cfg->batch, info.c, cfg->tile,
                                        lo.augment_context, err, sizeof err))
        goto fail;
    size_t npix = (size_t)cfg->batch * cfg->tile * cfg->tile;
    if (!warp_on_gpu) {
        raw = malloc(npix * info.c * sizeof(float));
        label = malloc(npix * sizeof(int32_t));
        weight = info.has_weight ? malloc(npix * sizeof(float)) : NULL;
    }
    /* rank 0 alone writes the log and the checkpoints, and talks */
    if (rank == 0 && cfg->log[0] && !(log = fopen(cfg->log, start ? "a" : "w"))) {
        snprintf(err, sizeof err, "cannot write the log %s (is the directory there and writable?)", cfg->log);
        goto fail;
    }

    if (rank == 0) unet_config_print(stdout, cfg, "train");
    unet_plan_stats st = unet_plan_get_stats(plan);
    if (rank == 0) printf("device: %s; %zu parameters; training images %d x %dx%d; tile %d -> output %d; "
           "activations %.1f MiB (%.1f MiB without reuse)\n",
           s.device, unet_graph_trainable_params(s.model.graph), train_view.images, train_view.rows, info.w,
           cfg->tile, out.h, st.arena_bytes / 1048576.0, st.unplanned_bytes / 1048576.0);
    if (start && rank == 0) printf("resuming %s at step %ld\n", cfg->resume, start);
    fflush(stdout);
    unet_stepper_cfg step_cfg = {.plan = plan, .pb = &s.pb, .optim = &cfg->optim, .dist = dist,
                                 .average_state = world > 1 && !replica_sum,
                                 .graph = cfg->cuda_graph == UNET_CUDA_GRAPH_AUTO, .notes = rank == 0 ? stdout : NULL};
    unet_stepper_init(&stepper, &step_cfg);
    /* this rank's samples are the rank-th contiguous slice of the global batch */
    unet_plan_set_first_sample(plan, (uint64_t)rank * (uint64_t)cfg->batch);
    code = 1; /* from here on a failure is the run's */
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGUSR1, on_signal);

    double t0 = now_s(), t_log = t0;
    long imgs_since_log = 0;
    double loss = 0;
    char line[16384]; /* a validation line: per-class metrics of up to 64 classes, per-head of up to 8 heads */
    /* each rank's share of the validation images */
    unet_data_view my_val = val_view;
    if (val_view.ds) {
        int lo = (int)((long)val_view.images * rank / world), hi = (int)((long)val_view.images * (rank + 1) / world);
        my_val.image0 += lo, my_val.images = hi - lo;
    }
    for (long step = start; step < cfg->steps; step++) {
        if (warp_on_gpu) {
            if (gpu_augment_batch(&gpu_aug, loader, step, err, sizeof err)) goto fail;
        } else {
            if (unet_loader_batch(loader, step, raw, label, weight, err, sizeof err)) goto fail;
            unet_plan_set_inputs(plan, raw, label, weight);
        }
        /* dropout: one stream for every rank, each drawing its slice of the
         * global batch's masks (unet_plan_set_first_sample above) */
        unet_stepper_run(&stepper, step, unet_rng_key(cfg->seed, 0xd0, (uint64_t)step));
        long done = step + 1;
        int logged = cfg->log_every > 0 && (done % cfg->log_every == 0 || done == cfg->steps);
        /* Reading the loss waits for the step. A replayed step is read only
         * when logged, so that the host prepares the next batch while the
         * device computes; eager steps are checked every step. */
        int have_loss = logged || world > 1 || !unet_stepper_replaying(&stepper);
        double per_head[UNET_MAX_LEVELS] = {0};
        if (have_loss) loss = unet_plan_loss(plan, per_head);
        /* a signal, or --stop-after: save and stop, resumable with the same --steps */
        int signalled = stop_signal != 0;
        if (world > 1) {
            /* the loss of the global batch (the mean of the ranks' means), and a
             * stop signal seen by any rank stops all of them at the same step */
            double v[2 + UNET_MAX_LEVELS] = {loss, signalled};
            for (int h = 0; h < s.model.n_heads; h++) v[2 + h] = per_head[h];
            unet_dist_sum_f64(dist, v, 2 + s.model.n_heads);
            loss = v[0] / world, signalled = v[1] > 0;
            for (int h = 0; h < s.model.n_heads; h++) per_head[h] = v[2 + h] / world;
            all_ranks_failed = 1; /* a divergence below is every rank's */
        }
        int stop = signalled || (cfg->stop_after > 0 && step + 1 == cfg->stop_after);
        if (have_loss && !isfinite(loss)) {
            const char *when = unet_stepper_replaying(&stepper) ? " (or earlier: replayed steps are read when logged)" : "";
            snprintf(err, sizeof err, "the loss became %g at step %ld%s: the run diverged (lower --lr, now %g)", loss,
                     done, when, (double)cfg->optim.lr);
            goto fail;
        }
        all_ranks_failed = 0;
        imgs_since_log += (long)cfg->batch * world; /* the job's images, not this rank's */
        if (logged) {
            s.backend->sync(s.backend);
            double t = now_s(), ips = imgs_since_log / (t - t_log);
            t_log = t;
            imgs_since_log = 0;
            int n = snprintf(line, sizeof line, "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"images_per_s\": %.4g",
                             done, loss, (double)unet_lr_at(&cfg->optim, step), ips);
            if (s.model.n_heads > 1)
                for (int h = 0; h < s.model.n_heads; h++)
                    n += snprintf(line + n, sizeof line - n, ", \"loss_head%d\": %.6g", s.model.head_column[h],
                                  per_head[h]);
            unet_dist_stats ds = unet_dist_take_stats(dist);
            if (ds.steps)
                n += snprintf(line + n, sizeof line - n, ", \"world\": %d, \"comm_wait_s\": %.4g", world,
                              ds.wait_s / ds.steps);
            snprintf(line + n, sizeof line - n, "}");
            log_json(log, line);
            if (rank == 0 && !isatty(2))
                printf("step %ld/%ld loss %.4f %.2f img/s\n", done, cfg->steps, loss, ips);
            if (rank == 0) progress(done, cfg->steps, loss, ips, t - t0);
        }
        int last = done == cfg->steps || stop;
        if (eval_plan && ((cfg->val_every > 0 && done % cfg->val_every == 0) || last)) {
            unet_seg_stats stats[UNET_MAX_LEVELS];
            if (unet_evaluate_view(eval_plan, &tiling, &my_val, cfg->model.classes, stats, s.model.n_heads, err,
                                   sizeof err))
                goto fail;
            if (world > 1) sum_seg_stats(dist, stats, s.model.n_heads);
            int n = snprintf(line, sizeof line, "{\"step\": %ld", done);
            for (int h = s.model.n_heads - 1; h >= 0; h--) {
                unet_seg_metrics m = unet_seg_stats_finish(&stats[h]);
                if (h == s.model.n_heads - 1) n += unet_seg_metrics_json(line + n, sizeof line - n, &m, "val_");
                if (s.model.n_heads > 1)
                    n += snprintf(line + n, sizeof line - n, ", \"val_iou_head%d\": %.6f, \"val_dice_head%d\": %.6f",
                                  s.model.head_column[h], m.iou, s.model.head_column[h], m.dice);
                if (h == s.model.n_heads - 1 && rank == 0) {
                    if (isatty(2)) fputc('\n', stderr);
                    printf("validation at step %ld: IoU %.4f  Dice %.4f  pixel accuracy %.4f  Rand error %.4f\n",
                           done, m.iou, m.dice, m.pixel_accuracy, m.rand_error);
                    unet_seg_metrics_print_classes(stdout, &m, "  ");
                }
            }
            snprintf(line + n, sizeof line - n, "}");
            log_json(log, line);
        }
        if (stop) {
            const char *path = cfg->save[0] ? cfg->save : cfg->resume;
            char why[64];
            if (stop_signal)
                snprintf(why, sizeof why, "stopped by signal %d", (int)stop_signal);
            else if (signalled)
                snprintf(why, sizeof why, "stopped by signal (on another rank)");
            else
                snprintf(why, sizeof why, "stopped after step %ld (--stop-after)", done);
            if (!path[0]) {
                if (rank == 0) fprintf(stderr, "unet: %s at step %ld (no --save given: nothing written)\n", why, done);
                code = 1;
                goto done;
            }
            if (rank == 0 && save(cfg, &s, path, done, err, sizeof err)) goto fail;
            if (rank == 0)
                fprintf(stderr, "unet: %s at step %ld; checkpoint %s (continue with --resume %s)\n", why, done, path,
                        path);
            code = 0;
            goto done;
        }
    }
    if (cfg->save[0] && rank == 0) {
        if (save(cfg, &s, cfg->save, cfg->steps, err, sizeof err)) goto fail;
        printf("saved %s (step %ld)\n", cfg->save, cfg->steps);
    }
    code = 0;
    goto done;
fail:
    if (world > 1)
        fprintf(stderr, "unet: rank %d of %d: %s\n", rank, world, err);
    else
        fprintf(stderr, "unet: %s\n", err);
    /* a failure of this rank alone must not leave the others waiting for it */
    if (world > 1 && !all_ranks_failed) unet_dist_abort(dist, code);
done:
    if (log) fclose(log);
    unet_stepper_free(&stepper);
    unet_dist_close(dist);
    unet_loader_free(loader);
    gpu_augment_close(&gpu_aug);
    unet_plan_free(plan);
    unet_plan_free(eval_plan);
    unet_session_free(&s);
    if (train_ds) unet_dataset_close(train_ds);
    if (val_ds) unet_dataset_close(val_ds);
    free(raw);
    free(label);
    free(weight);
    return code;
}
