/* What train, predict, eval, bench and compare share: the backend a run asks
 * for and the model it builds there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "host/common/util.h"
#include "host/train/session.h"

const unet_backend *unet_config_cuda_backend(const unet_config *cfg, int index, const char **precision, char *why,
                                             size_t whylen) {
    /* bf16 is in the CUDA backend but has not yet run on a GPU: auto means tf32 until it has */
    *precision = cfg->precision == UNET_PRECISION_AUTO ? "tf32" : unet_config_choice_name("precision", cfg->precision);
    return unet_cuda_backend(index < 0 ? 0 : index, *precision, unet_config_choice_name("layout", cfg->layout),
                             !cfg->fast_nondeterministic, why, whylen);
}

const unet_backend *unet_select_backend(const unet_config *cfg, char *desc, size_t desclen, char *err, size_t errlen) {
    if (cfg->threads > 0) omp_set_num_threads(cfg->threads);
    int cuda, index;
    if (unet_config_device(cfg, &cuda, &index)) {
        snprintf(err, errlen, "--device must be cpu, cuda, cuda:N or auto, got '%s'", cfg->device);
        return NULL;
    }
    if (cuda != 0) {
        const char *prec;
        char why[512];
        const unet_backend *b = unet_config_cuda_backend(cfg, index, &prec, why, sizeof why);
        if (b) {
            snprintf(desc, desclen, "cuda:%d (%s%s%s%s)", index < 0 ? 0 : index, prec,
                     cfg->layout != UNET_LAYOUT_CHOICE_AUTO ? ", " : "",
                     cfg->layout != UNET_LAYOUT_CHOICE_AUTO ? unet_config_choice_name("layout", cfg->layout) : "",
                     cfg->fast_nondeterministic ? ", nondeterministic engines allowed" : "");
            return b;
        }
        if (cuda == 1) {
            snprintf(err, errlen, "--device %s: %s (use --device cpu)", cfg->device, why);
            return NULL;
        }
    }
    snprintf(desc, desclen, "cpu (%d threads)", omp_get_max_threads());
    return unet_cpu_backend();
}

int unet_session_build(unet_session *s, const unet_config *cfg, int training, int with_weight, char *err,
                       size_t errlen) {
    memset(s, 0, sizeof *s);
    s->backend = unet_select_backend(cfg, s->device, sizeof s->device, err, errlen);
    if (!s->backend) return -1;
    if (unet_model_build(&cfg->model, training, with_weight, &s->model, err, errlen)) return -1;
    if (unet_param_blocks_alloc(&s->pb, s->backend, s->model.graph, cfg->optim.kind != UNET_OPT_SGD, err, errlen))
        return -1;
    s->host_params = unet_alloc_zeroed(s->pb.n_trainable, sizeof(float), "the parameters", err, errlen);
    if (!s->host_params) return -1;
    s->host_state = unet_alloc_zeroed(s->pb.n_state, sizeof(float), "the batch norm statistics", err, errlen);
    return s->host_state ? 0 : -1;
}

void unet_session_upload(unet_session *s) {
    const unet_backend *b = s->backend;
    b->upload_f32(b, s->pb.params, s->host_params, s->pb.n_trainable);
    if (s->pb.n_state) {
        b->upload_f32(b, s->pb.state, s->host_state, s->pb.n_state);
        /* what a step the guard drops goes back to (unet_backend.guard) */
        b->upload_f32(b, s->pb.state_good, s->host_state, s->pb.n_state);
    }
}

void unet_session_download(unet_session *s) {
    const unet_backend *b = s->backend;
    b->download_f32(b, s->host_params, s->pb.params, s->pb.n_trainable);
    if (s->pb.n_state) b->download_f32(b, s->host_state, s->pb.state, s->pb.n_state);
}

void unet_session_free(unet_session *s) {
    unet_param_blocks_free(&s->pb);
    unet_model_free(&s->model);
    free(s->host_params);
    free(s->host_state);
    memset(s, 0, sizeof *s);
}
