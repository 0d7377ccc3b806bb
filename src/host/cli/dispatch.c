/* From argv to a subcommand's handler: the command name, its options parsed
 * into defaults, --help, and the one-line error with exit code 2. The
 * handlers hold the work; this file only routes. */
#include <stdlib.h>
#include <string.h>

#include "unet/config.h"

int unet_cli_dispatch(int argc, char **argv, const unet_cli_command_impl *impls, int n_impls) {
    if (argc < 2) {
        unet_config_usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
        if (argc > 2 && unet_config_command(argv[2]))
            unet_config_help(stdout, argv[2]);
        else
            unet_config_usage(stdout);
        return 0;
    }
    unet_config *cfg = malloc(sizeof *cfg); /* tens of kilobytes of paths: not on the stack */
    if (!cfg) {
        fprintf(stderr, "unet: out of memory\n");
        return 2;
    }
    unet_config_defaults(cfg);
    char err[1024];
    int rc = unet_config_parse(cfg, name, argc - 2, argv + 2, err, sizeof err);
    if (rc == 1) {
        unet_config_help(stdout, name);
        free(cfg);
        return 0;
    }
    if (rc < 0) {
        if (unet_config_command(name))
            fprintf(stderr, "unet %s: %s\n", name, err);
        else
            fprintf(stderr, "unet: %s\n", err);
        free(cfg);
        return 2;
    }
    const unet_cli_command_impl *impl = NULL;
    for (int i = 0; i < n_impls; i++)
        if (!strcmp(impls[i].name, name)) impl = &impls[i];
    if (!impl || !impl->run) {
        fprintf(stderr, "unet: the command '%s' is not available in this build\n", name);
        free(cfg);
        return 2;
    }
    rc = impl->run(cfg);
    free(cfg);
    return rc;
}
