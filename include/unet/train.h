/* The runs behind the subcommands: each takes the parsed configuration and
 * returns the process exit code (0 done, 1 a failure of the run, 2 bad input,
 * with one line on stderr saying what is wrong and what would be right). */
#ifndef UNET_TRAIN_H
#define UNET_TRAIN_H

#include "unet/backend.h"
#include "unet/config.h"

#ifdef __cplusplus
extern "C" {
#endif

int unet_run_train(unet_config *cfg);
int unet_run_predict(unet_config *cfg);
int unet_run_eval(unet_config *cfg);
int unet_run_info(unet_config *cfg);
int unet_run_bench(unet_config *cfg);
int unet_run_prune(unet_config *cfg);
int unet_run_compare(unet_config *cfg);

/* --match-params: the parameter count to match, either the number given or
 * the count of the configured model as the given kind (then *reference is
 * that model; its levels are 0 for a number). */
int unet_match_target(const unet_config *cfg, size_t *target, unet_model_cfg *reference, char *err, size_t errlen);

/* The backend --device and --precision ask for (auto: CUDA when a device is
 * present, else the CPU), with a one-line description of it in desc. NULL
 * with a message in err when it cannot be had. Also applies --threads. */
const unet_backend *unet_select_backend(const unet_config *cfg, char *desc, size_t desclen, char *err, size_t errlen);
/* The CUDA backend the flags ask for on device `index` (-1: 0): --precision
 * (auto: tf32 until bf16 has run on a GPU) and --fast-nondeterministic. NULL
 * with the reason in why. *precision: the precision's name. */
const unet_backend *unet_config_cuda_backend(const unet_config *cfg, int index, const char **precision, char *why,
                                             size_t whylen);

#ifdef __cplusplus
}
#endif

#endif
