/* The CUDA backend's host-side layout conversions (src/kernels/cuda/
 * layout.h) on raw files, for tests/cpu/test_cuda_layout.py to compare with
 * PyTorch's bfloat16 and NHWC. Plain C: runs with or without a GPU or a CUDA
 * build. FORMAT: bf16 (NHWC bfloat16, the default), nhwc (NHWC float32) or
 * fp32 (NCHW float32).
 *
 *   unet_layouttest round IN OUT                    float32 values -> bf16 bits (uint16)
 *   unet_layouttest pack N C H W IN OUT [FORMAT]    NCHW float32 -> NHWC, padded channels
 *   unet_layouttest unpack N C H W IN OUT [FORMAT]  NHWC, padded -> NCHW float32
 *   unet_layouttest bytes N C H W FORMAT f32|i32    the tensor's bytes in that layout
 * Exit 0 on success, 2 on bad arguments or files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/layout.h"

#define TOOL_NAME "unet_layouttest"
#include "tool_common.h"

static int usage(void) {
    fprintf(stderr, "usage: unet_layouttest round IN OUT | pack|unpack N C H W IN OUT [bf16|nhwc] | bytes N C H W "
                    "bf16|nhwc|fp32 f32|i32\n");
    return 2;
}

static unet_cuda_format format_of(const char *s) {
    return !strcmp(s, "bf16") ? UNET_FMT_NHWC_BF16 : !strcmp(s, "nhwc") ? UNET_FMT_NHWC_F32 : UNET_FMT_NCHW_F32;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "round")) {
        size_t bytes;
        float *in = read_file(NULL, argv[2], &bytes);
        if (!in) return usage();
        size_t n = bytes / sizeof(float);
        uint16_t *out = malloc(n ? n * sizeof *out : 1);
        for (size_t i = 0; i < n; i++) out[i] = unet_bf16_from_float(in[i]);
        write_file(NULL, argv[3], out, n * sizeof *out);
        free(in);
        free(out);
        return 0;
    }
    if (argc < 6) return usage();
    unet_shape s = {atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5])};
    if (argc == 8 && !strcmp(argv[1], "bytes")) {
        unet_dtype t = !strcmp(argv[7], "i32") ? UNET_I32 : UNET_F32;
        printf("%zu\n", unet_cuda_layout_bytes(unet_cuda_layout_of(format_of(argv[6]), s, t)));
        return 0;
    }
    if (argc != 8 && argc != 9) return usage();
    unet_cuda_layout l = unet_cuda_layout_of(argc == 9 ? format_of(argv[8]) : UNET_FMT_NHWC_BF16, s, UNET_F32);
    if (l.format == UNET_FMT_NCHW_F32) return usage();
    size_t bytes;
    void *in = read_file(NULL, argv[6], &bytes);
    if (!in) return usage();
    /* everything freed on the way out, so a sanitizer's leak check speaks only of the layout code */
    int rc = 0;
    if (!strcmp(argv[1], "pack") && bytes == unet_shape_count(s) * sizeof(float)) {
        void *out = malloc(unet_cuda_layout_bytes(l) + 1);
        unet_cuda_pack(l, out, in);
        write_file(NULL, argv[7], out, unet_cuda_layout_bytes(l));
        free(out);
    } else if (!strcmp(argv[1], "unpack") && bytes == unet_cuda_layout_bytes(l)) {
        float *out = malloc(unet_shape_count(s) * sizeof(float) + 1);
        unet_cuda_unpack(l, out, in);
        write_file(NULL, argv[7], out, unet_shape_count(s) * sizeof(float));
        free(out);
    } else {
        rc = usage();
    }
    free(in);
    return rc;
}
