/* Shared pieces of the runs (train, predict, eval, bench): library-internal. */
#ifndef UNET_SESSION_H
#define UNET_SESSION_H

#include "unet/config.h"
#include "unet/data.h"
#include "unet/metrics.h"
#include "unet/model.h"
#include "unet/plan.h"
#include "unet/tiling.h"
#include "unet/train.h"

/* A model on a backend with its parameter blocks and host copies of them. */
typedef struct {
    const unet_backend *backend;
    char device[128];      /* what --device resolved to, for the log */
    unet_model model;
    unet_param_blocks pb;
    float *host_params;    /* n_trainable, the alignment gaps zero */
    float *host_state;     /* n_state */
} unet_session;

/* Backend, model (with loss nodes when training), parameter blocks. */
int unet_session_build(unet_session *s, const unet_config *cfg, int training, int with_weight, char *err,
                       size_t errlen);
void unet_session_upload(unet_session *s);   /* host copies -> backend */
void unet_session_download(unet_session *s); /* backend -> host copies */
void unet_session_free(unet_session *s);

/* The configuration a checkpoint was trained with: 1 with *saved filled
 * (and *step when not NULL), 0 when the file has no unet.config metadata
 * (weights written by PyTorch, say), -1 with a message. */
int unet_checkpoint_config(const char *path, unet_config *saved, long *step, char *err, size_t errlen);
/* Takes the model (and the tile) of a checkpoint's configuration where the
 * command line did not set them. */
void unet_config_take_model(unet_config *cfg, const unet_config *saved);

/* Poolings in the (pruned) network: tiles of overlap-tile prediction align to 2^this. */
int unet_pool_levels(const unet_model_cfg *m);

/* Predicts every image of a view whole (overlap-tile, exact for valid
 * padding) and adds each head's confusion counts to per_head[h]. */
int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, int classes,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen);

#endif
