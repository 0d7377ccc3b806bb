/* The unet command: routes a subcommand to its run. Flags are parsed by the
 * one option table (src/host/cli/options.c); the work is in the library. */
#include <stdio.h>
#include <unistd.h>

#include "unet/commands.h"
#include "unet/config.h"
#include "unet/datacmd.h"

static const unet_cli_command_impl commands[] = {
    {"train", unet_run_train},
    {"predict", unet_run_predict},
    {"eval", unet_run_eval},
    {"info", unet_run_info},
    {"bench", unet_run_bench},
    {"prune", unet_run_prune},
    {"compare", unet_run_compare},
    {"export", unet_run_export},
    {"data weights", unet_run_data_weights},
    {"data import", unet_run_data_import},
    {"data split", unet_run_data_split},
    {"data info", unet_run_data_info},
};

int main(int argc, char **argv) {
    /* a job's log (stdout to a file under Slurm) shows each line as it is written, not a block minutes later */
    if (!isatty(STDOUT_FILENO)) setvbuf(stdout, NULL, _IOLBF, 0);
    return unet_cli_dispatch(argc, argv, commands, (int)(sizeof commands / sizeof commands[0]));
}
