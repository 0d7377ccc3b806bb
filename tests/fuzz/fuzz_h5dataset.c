/* The HDF5 dataset opener (src/host/data/h5dataset.c): open and validate a
 * file as training does (labels checked against 2 classes), then read its
 * first image and a mirrored window at its corner, from the in-memory copy or
 * (inputs of odd length) through hyperslabs of the file. */
#include "fuzz_common.h"
#include "unet/data.h"

enum { WINDOW = 8, MAX_READ = 1 << 22 /* values: a larger image is opened and checked, not read again */ };

static void read_some(unet_dataset *ds) {
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    size_t plane = (size_t)info.h * info.w;
    if ((size_t)info.c * plane > MAX_READ) return;
    float *raw = malloc((size_t)info.c * plane * sizeof *raw), *weight = malloc(plane * sizeof *weight);
    int32_t *label = malloc(plane * sizeof *label), *ids = malloc(plane * sizeof *ids);
    char err[1024] = "";
    if (unet_dataset_read(ds, 0, 0, info.h, raw, info.has_label ? label : NULL, weight, info.has_instances ? ids : NULL,
                          err, sizeof err))
        fuzz_check_message(err);
    unet_data_view v = unet_data_view_all(ds);
    float *wraw = malloc((size_t)info.c * WINDOW * WINDOW * sizeof *wraw), wweight[WINDOW * WINDOW];
    int32_t wlabel[WINDOW * WINDOW];
    if (unet_data_window(&v, 0, -3, -3, WINDOW, wraw, info.has_label ? wlabel : NULL, wweight, NULL, err, sizeof err))
        fuzz_check_message(err);
    free(raw), free(weight), free(label), free(ids), free(wraw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".h5");
    unet_dataset_opts opts = {.classes = 2, .cache_bytes = size % 2 ? 1 : 0};
    unet_dataset *ds;
    char err[1024] = "";
    if (unet_dataset_open(path, &opts, &ds, err, sizeof err)) {
        fuzz_check_message(err);
        return 0;
    }
    read_some(ds);
    unet_dataset_close(ds);
    return 0;
}
