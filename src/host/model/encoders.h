/* The backbones (encoders.c): model-internal. */
#ifndef UNET_MODEL_ENCODERS_H
#define UNET_MODEL_ENCODERS_H

#include "unet/model.h"

/* Adds the backbone m->encoder (not plain) on the image value and sets features[i] to the value of X^{i,0},
 * i = 1..UNET_ENCODER_STAGES. */
void unet_encoder_build(unet_graph *g, const unet_model_cfg *m, int image, int *features);

#endif
