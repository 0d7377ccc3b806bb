/* The runs behind the subcommands: each takes the parsed configuration and
 * returns the process exit code (0 done, 1 a failure of the run, 2 bad input,
 * with one line on stderr saying what is wrong and what would be right). */
#ifndef UNET_COMMANDS_H
#define UNET_COMMANDS_H

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
int unet_run_export(unet_config *cfg);

#ifdef __cplusplus
}
#endif

#endif
