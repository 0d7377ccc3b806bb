/* PNG import (read_png in src/host/data/image_import.c). */
#include "fuzz_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_image(data, size, ".png");
    return 0;
}
