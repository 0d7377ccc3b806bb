/* unet compare: several models trained under identical settings, one report. */
#include <stdio.h>

#include "unet/train.h"

int unet_run_compare(unet_config *cfg) {
    (void)cfg;
    fprintf(stderr, "unet compare: not built yet\n");
    return 2;
}
