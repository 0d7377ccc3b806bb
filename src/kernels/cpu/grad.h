/* Gradient stores shared by the CPU ops. A value consumed by several nodes
 * gets its gradient from each: the first backward in execution order
 * overwrites it, the later ones add into it (unet_op_args.din_accumulate). */
#ifndef UNET_CPU_GRAD_H
#define UNET_CPU_GRAD_H

#include <stddef.h>

static inline void unet_grad_store(float *din, size_t i, float v, int accumulate) {
    din[i] = accumulate ? din[i] + v : v;
}

#endif
