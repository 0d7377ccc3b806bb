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

/* Poolings in the (pruned) network: tiles of overlap-tile prediction align to 2^this. */
int unet_pool_levels(const unet_model_cfg *m);

/* Predicts every image of a view whole (overlap-tile, exact for valid
 * padding) and adds each head's confusion counts to per_head[h]. */
int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, int classes,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen);

#endif
