/* Checks, on a machine without a GPU, that cuDNN accepts every operation
 * graph the CUDA convolution ops build (src/kernels/cuda/cudnn_graph.c):
 * each tensor, convolution, pointwise and operation descriptor and the
 * operation graph finalize for every direction, fusion, precision and layout. Engines
 * need a device and are not asked; the GPU tests cover them.
 *
 *   unet_cudnn_graphcheck      one line per graph; exit 0 when all are
 *                              accepted, 1 when one is refused, 77 when
 *                              this unet was built without CUDA */
#include <stdio.h>

#ifdef UNET_HAVE_CUDA
#include <string.h>

#include "kernels/cuda/cudnn_graph.h"

/* A precision with the format of its activations. */
typedef struct {
    unet_precision precision;
    unet_cuda_format format;
    const char *name;
} variant;

static int check(variant v, unet_conv_problem p, const char *what) {
    char why[1024];
    int ok = unet_cudnn_graph_check(v.precision, v.format, &p, why, sizeof why);
    printf("%s %s %s: x (%d,%d,%d,%d) k %d r %d stride %d pad %d groups %d%s%s%s%s%s\n", ok ? "accepted" : "REFUSED",
           v.name, what, p.n, p.c, p.h, p.w, p.k, p.r, p.stride, p.pad, p.groups, p.bias ? " +bias" : "",
           p.act == UNET_ACT_RELU    ? " +relu"
           : p.act == UNET_ACT_RELU6 ? " +relu6"
                                     : "",
           p.accumulate ? " beta=1" : "", ok ? "" : ": ", ok ? "" : why);
    return ok;
}

int main(void) {
    /* NHWC: channels padded to 16 bytes (3 and 5 here become 8 in bf16, 4 and 8 in float) */
    static const variant variants[] = {{UNET_PREC_FP32, UNET_FMT_NCHW_F32, "fp32 nchw"},
                                       {UNET_PREC_FP32, UNET_FMT_NHWC_F32, "fp32 nhwc"},
                                       {UNET_PREC_TF32, UNET_FMT_NCHW_F32, "tf32 nchw"},
                                       {UNET_PREC_TF32, UNET_FMT_NHWC_F32, "tf32 nhwc"},
                                       {UNET_PREC_BF16, UNET_FMT_NHWC_BF16, "bf16 nhwc"}};
    /* (k, pad, stride, depthwise): U-Net's valid, same and 1x1 head; the encoders' 7x7 stride-2 stem,
     * 3x3 and 1x1 stride-2, depthwise 3x3 at stride 1 and 2 */
    static const int kernels[][4] = {{3, 0, 1, 0}, {3, 1, 1, 0}, {1, 0, 1, 0}, {7, 3, 2, 0},
                                     {3, 1, 2, 0}, {1, 0, 2, 0}, {3, 1, 1, 1}, {3, 1, 2, 1}};
    int all = 1;
    for (size_t q = 0; q < sizeof variants / sizeof variants[0]; q++) {
        for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++) {
            /* conv: forward alone and fused (ReLU, ReLU6), its data gradient
             * (overwriting and accumulating) and its weight gradient */
            unet_conv_problem p;
            memset(&p, 0, sizeof p);
            p.n = 2, p.c = 3, p.h = 9, p.w = 11, p.k = 5, p.r = kernels[i][0], p.stride = kernels[i][2],
            p.pad = kernels[i][1], p.groups = 1;
            if (kernels[i][3]) p.c = p.groups = 5; /* depthwise: 5 channels, 5 groups */
            p.dir = UNET_CONV_FWD;
            all &= check(variants[q], p, "conv forward");
            p.bias = 1;
            all &= check(variants[q], p, "conv forward");
            p.act = UNET_ACT_RELU;
            all &= check(variants[q], p, "conv forward");
            p.act = UNET_ACT_RELU6;
            all &= check(variants[q], p, "conv forward");
            p.bias = p.act = 0;
            p.dir = UNET_CONV_DGRAD;
            all &= check(variants[q], p, "conv backward-data");
            p.accumulate = 1;
            all &= check(variants[q], p, "conv backward-data");
            p.accumulate = 0;
            p.dir = UNET_CONV_WGRAD;
            all &= check(variants[q], p, "conv backward-filter");
        }
        /* conv_t2 (N=2, C=6, H=5, W=7 -> O=4): the stride-2 convolution G
         * from (2,4,10,14) to (2,6,5,7) in its three uses */
        unet_conv_problem g;
        memset(&g, 0, sizeof g);
        g.n = 2, g.c = 4, g.h = 10, g.w = 14, g.k = 6, g.r = 2, g.stride = 2, g.pad = 0, g.groups = 1;
        g.dir = UNET_CONV_DGRAD;
        all &= check(variants[q], g, "conv_t2 forward (G backward-data)");
        g.dir = UNET_CONV_FWD;
        all &= check(variants[q], g, "conv_t2 din (G forward)");
        g.accumulate = 1;
        all &= check(variants[q], g, "conv_t2 din (G forward)");
        g.accumulate = 0;
        g.dir = UNET_CONV_WGRAD;
        all &= check(variants[q], g, "conv_t2 dweight (G backward-filter)");
    }
    return all ? 0 : 1;
}
#else
int main(void) {
    fprintf(stderr, "unet_cudnn_graphcheck: this unet was built without CUDA\n");
    return 77;
}
#endif
