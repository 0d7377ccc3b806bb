/* STUB: to be implemented. */
#include "kernels/cpu/ops.h"

const unet_op_impl unet_cpu_batchnorm = {0};
