/* The `unet data` commands: each takes the parsed configuration and returns
 * the exit code (0 done, 1 a failure of the run, 2 bad input, with one line
 * on stderr). Files are written to a temporary name beside the target and
 * renamed, so an interrupted command never leaves a half-written dataset. */
#ifndef UNET_DATACMD_H
#define UNET_DATACMD_H

#include "unet/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* unet data weights D.h5 [--w0 10] [--sigma 5] [--no-balance]: the border
 * weight map of every image into `weight` (N,H,W) float32, by writing a new
 * file (every other object and the root attributes copied) and renaming it
 * over D.h5. */
int unet_run_data_weights(unet_config *cfg);
/* unet data import --images DIR --masks DIR --output D.h5 */
int unet_run_data_import(unet_config *cfg);
/* unet data split D.h5 --val-fraction F --seed S: D-train.h5 and D-val.h5 */
int unet_run_data_split(unet_config *cfg);
/* unet data info D.h5 [--json] */
int unet_run_data_info(unet_config *cfg);

#ifdef __cplusplus
}
#endif

#endif
