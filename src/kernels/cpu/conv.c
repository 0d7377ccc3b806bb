/* STUB: to be implemented. */
#include "kernels/cpu/ops.h"

const unet_op_impl unet_cpu_conv = {0};
const unet_op_impl unet_cpu_conv_t2 = {0};
const unet_op_impl unet_cpu_bias = {0};
