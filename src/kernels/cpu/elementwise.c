/* STUB: to be implemented. */
#include "kernels/cpu/ops.h"

const unet_op_impl unet_cpu_relu = {0};
const unet_op_impl unet_cpu_dropout = {0};
