/* Checkpoints (src/host/train/checkpoint.c, checkpoint_config.c): the
 * metadata and configuration that predict, eval, info and prune rebuild a
 * model from, then the weights and the optimizer state of a small model
 * (the one tests/fuzz/make_corpus.py saves the seeds of) loaded as --init
 * and --resume with SGD and with Adam would. */
#include "fuzz_common.h"
#include "host/train/checkpoint_config.h"
#include "unet/checkpoint.h"
#include "unet/config.h"
#include "unet/model.h"

static unet_model model;
static float *params, *state, *opt_a, *opt_b;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    unet_config cfg;
    unet_config_defaults(&cfg);
    char err[1024];
    /* --filters 2,4 --norm batch: the seeds' model, with batch-norm state */
    cfg.model.levels = 2, cfg.model.filters[0] = 2, cfg.model.filters[1] = 4, cfg.model.batch_norm = 1;
    if (unet_model_build(&cfg.model, 0, 0, &model, err, sizeof err)) {
        fprintf(stderr, "fuzz_checkpoint: %s\n", err);
        abort();
    }
    size_t nt = unet_graph_trainable_count(model.graph), ns = unet_graph_state_count(model.graph);
    params = calloc(nt + 1, sizeof *params), opt_a = calloc(nt + 1, sizeof *opt_a);
    opt_b = calloc(nt + 1, sizeof *opt_b), state = calloc(ns + 1, sizeof *state);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".safetensors");
    char err[1024] = "";
    unet_config saved;
    long step = 0;
    unet_run_progress progress;
    if (unet_checkpoint_config(path, &saved, &step, err, sizeof err) < 0) fuzz_check_message(err);
    err[0] = 0;
    if (unet_checkpoint_load_weights(path, model.graph, params, state, err, sizeof err)) fuzz_check_message(err);
    err[0] = 0;
    if (unet_checkpoint_load_resume(path, model.graph, params, state, opt_a, NULL, &progress, err, sizeof err))
        fuzz_check_message(err);
    err[0] = 0;
    if (unet_checkpoint_load_resume(path, model.graph, params, state, opt_a, opt_b, &progress, err, sizeof err))
        fuzz_check_message(err);
    return 0;
}
