/* Test hooks (test_hooks.h): read from the environment once. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/test_hooks.h"

void unet_test_kill_point(const char *point, long index) {
    static long visits;
    const char *spec = getenv("UNET_TEST_KILL");
    if (!spec) return;
    size_t len = strlen(point);
    if (strncmp(spec, point, len) || spec[len] != ':') return;
    long n = strtol(spec + len + 1, NULL, 10);
    if (index < 0) index = ++visits;
    if (index == n) raise(SIGKILL);
}

long unet_test_nan_step(void) {
    const char *spec = getenv("UNET_TEST_NAN_STEP");
    return spec ? strtol(spec, NULL, 10) : 0;
}
