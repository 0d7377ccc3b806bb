/* TIFF import (read_tiff in src/host/data/image_import.c). */
#include "fuzz_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_image(data, size, ".tif");
    return 0;
}
