/* From argv to a subcommand's handler: the command name, its options parsed
 * into defaults, --help, and the one-line error with exit code 2. The
 * handlers hold the work; this file only routes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/config.h"

int unet_cli_dispatch(int argc, char **argv, const unet_cli_command_impl *impls, int n_impls) {
    if (argc < 2) {
        unet_config_usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--version") || !strcmp(name, "version")) {
        unet_print_version(stdout);
        return 0;
    }
    char two_words[64];
    /* `unet data weights ...`: the table knows it as "data weights" */
    int is_help = !strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help");
    int first = is_help ? 2 : 1;
    if (argc > first && !strcmp(argv[first], "data")) {
        if (argc <= first + 1 || argv[first + 1][0] == '-') {
            if (is_help ||
                (argc > first + 1 && (!strcmp(argv[first + 1], "-h") || !strcmp(argv[first + 1], "--help")))) {
                unet_config_usage(stdout);
                return 0;
            }
            fprintf(stderr, "unet data: name a data command: unet data weights|import|split|info (unet --help lists "
                            "them)\n");
            return 2;
        }
        snprintf(two_words, sizeof two_words, "data %s", argv[first + 1]);
        argv[first + 1] = two_words;
        argv++, argc--;
        if (!is_help) name = argv[1];
    }
    if (is_help) {
        if (argc > 2 && unet_config_command(argv[2]))
            unet_config_help(stdout, argv[2]);
        else
            unet_config_usage(stdout);
        return 0;
    }
    unet_config config; /* a few hundred bytes: the paths it names point into argv */
    unet_config *cfg = &config;
    unet_config_defaults(cfg);
    char err[1024];
    int rc = unet_config_parse(cfg, name, argc - 2, argv + 2, err, sizeof err);
    if (rc == 1) {
        unet_config_help(stdout, name);
        return 0;
    }
    if (rc < 0) {
        if (unet_config_command(name))
            fprintf(stderr, "unet %s: %s\n", name, err);
        else
            fprintf(stderr, "unet: %s\n", err);
        return 2;
    }
    const unet_cli_command_impl *impl = NULL;
    for (int i = 0; i < n_impls; i++)
        if (!strcmp(impls[i].name, name)) impl = &impls[i];
    if (!impl || !impl->run) {
        fprintf(stderr, "unet: the command '%s' is not available in this build\n", name);
        return 2;
    }
    return impl->run(cfg);
}
