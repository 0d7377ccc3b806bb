/* One PNG or TIFF image file as `unet data import` reads it (library-internal:
 * the importer and the fuzz target of tests/fuzz call it). */
#ifndef UNET_IMAGE_READ_H
#define UNET_IMAGE_READ_H

#include <stddef.h>

typedef struct {
    int h, w, c, bits; /* bits 8 or 16 */
    void *pixels;      /* (H, W, C) interleaved, uint8 or uint16; free() it */
} unet_image;

/* PNG or TIFF by the file's extension (.png, else TIFF). is_mask: a palette
 * PNG gives its indices, not its colours. 0, or -1 with one line naming the
 * file (pixels NULL). */
int unet_image_read(const char *path, int is_mask, unet_image *im, char *err, size_t errlen);

#endif
