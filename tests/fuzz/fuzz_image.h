/* The PNG and TIFF targets: the image reader of `unet data import`
 * (src/host/data/image_import.c) on a file of the given extension, as an
 * image and as a mask; every pixel of what it returns is read, so a buffer
 * shorter than its H x W x C says so under AddressSanitizer. */
#ifndef UNET_FUZZ_IMAGE_H
#define UNET_FUZZ_IMAGE_H

#include "fuzz_common.h"
#include "host/data/image_read.h"

static volatile unsigned fuzz_image_sum; /* keeps the reading loop */

static inline void fuzz_image(const uint8_t *data, size_t size, const char *suffix) {
    const char *path = fuzz_file(data, size, suffix);
    for (int is_mask = 0; is_mask < 2; is_mask++) {
        unet_image im;
        char err[1024] = "";
        if (unet_image_read(path, is_mask, &im, err, sizeof err)) {
            fuzz_check_message(err);
            if (im.pixels) abort();
            continue;
        }
        if (im.h < 1 || im.w < 1 || im.c < 1 || im.c > 4 || (im.bits != 8 && im.bits != 16)) {
            fprintf(stderr, "fuzz: an image of %d x %d x %d, %d bits, accepted\n", im.h, im.w, im.c, im.bits);
            abort();
        }
        size_t bytes = (size_t)im.h * im.w * im.c * (im.bits / 8);
        unsigned sum = 0;
        for (size_t i = 0; i < bytes; i++) sum += ((const unsigned char *)im.pixels)[i];
        fuzz_image_sum = sum;
        free(im.pixels);
    }
}

#endif
