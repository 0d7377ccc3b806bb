/* The configuration JSON (unet_config_from_json in src/host/cli/options.c),
 * the unet.config a checkpoint carries: a document is either refused with one
 * line, or read into a configuration that writes back as JSON reading back to
 * the same configuration (predict rebuilds a model from it). */
#include "fuzz_common.h"
#include "unet/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size + 1);
    memcpy(json, data, size);
    json[size] = 0;
    unet_config cfg;
    unet_config_defaults(&cfg);
    char err[1024] = "";
    if (unet_config_from_json(&cfg, json, err, sizeof err)) {
        fuzz_check_message(err);
        free(json);
        return 0;
    }
    free(json);
    char *once = unet_config_to_json(&cfg, 0);
    unet_config back;
    unet_config_defaults(&back);
    if (unet_config_from_json(&back, once, err, sizeof err)) {
        fprintf(stderr, "fuzz_config_json: the written configuration does not read back: %s\n%s\n", err, once);
        abort();
    }
    char *twice = unet_config_to_json(&back, 0);
    if (strcmp(once, twice) || memcmp(&cfg.model, &back.model, sizeof cfg.model)) {
        fprintf(stderr, "fuzz_config_json: the configuration changed on a round trip:\n%s\n%s\n", once, twice);
        abort();
    }
    free(once);
    free(twice);
    return 0;
}
