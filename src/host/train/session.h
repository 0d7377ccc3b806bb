/* A run's backend and model (train, predict, eval, bench, compare, info):
 * library-internal. */
#ifndef UNET_SESSION_H
#define UNET_SESSION_H

#include "unet/backend.h"
#include "unet/config.h"
#include "unet/model.h"
#include "unet/plan.h"

/* The backend --device and --precision ask for (auto: CUDA when a device is
 * present, else the CPU), with a one-line description of it in desc. NULL
 * with a message in err when it cannot be had. Also applies --threads. */
const unet_backend *unet_select_backend(const unet_config *cfg, char *desc, size_t desclen, char *err, size_t errlen);
/* The CUDA backend the flags ask for on device `index` (-1: 0): --precision
 * (auto: tf32 until bf16 has run on a GPU), --layout and
 * --fast-nondeterministic. NULL
 * with the reason in why. *precision: the precision's name. */
const unet_backend *unet_config_cuda_backend(const unet_config *cfg, int index, const char **precision, char *why,
                                             size_t whylen);

/* A model on a backend with its parameter blocks and host copies of them. */
typedef struct {
    const unet_backend *backend;
    char device[128]; /* what --device resolved to, for the log */
    unet_model model;
    unet_param_blocks pb;
    float *host_params; /* n_trainable, the alignment gaps zero */
    float *host_state;  /* n_state */
} unet_session;

/* Backend, model (with loss nodes when training), parameter blocks. */
int unet_session_build(unet_session *s, const unet_config *cfg, int training, int with_weight, char *err,
                       size_t errlen);
void unet_session_upload(unet_session *s);   /* host copies -> backend */
void unet_session_download(unet_session *s); /* backend -> host copies */
void unet_session_free(unet_session *s);

#endif
