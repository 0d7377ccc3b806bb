/* STUB: to be implemented. */
#include "kernels/cpu/ops.h"

const unet_op_impl unet_cpu_crop_concat = {0};
const unet_op_impl unet_cpu_crop_add = {0};
