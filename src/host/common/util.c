#include "host/common/util.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void unet_errorf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* a name a message quotes from a file (a tensor, a JSON key) may hold any byte: the message stays one line */
    for (char *c = err; errlen && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

double unet_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *alloc(size_t count, size_t size, int zero, const char *what, char *err, size_t errlen) {
    if (size && count > SIZE_MAX / size) {
        unet_errorf(err, errlen, "out of host memory for %s (%zu x %zu bytes)", what, count, size);
        return NULL;
    }
    /* one byte at least: malloc(0) may answer NULL, which is no failure */
    size_t bytes = count * size;
    if (!bytes) bytes = 1;
    void *p = zero ? calloc(1, bytes) : malloc(bytes);
    if (!p && bytes >= 1 << 20)
        unet_errorf(err, errlen, "out of host memory for %s (%.1f MiB)", what, bytes / 1048576.0);
    else if (!p)
        unet_errorf(err, errlen, "out of host memory for %s (%zu bytes)", what, bytes);
    return p;
}

void *unet_alloc(size_t count, size_t size, const char *what, char *err, size_t errlen) {
    return alloc(count, size, 0, what, err, errlen);
}

void *unet_alloc_zeroed(size_t count, size_t size, const char *what, char *err, size_t errlen) {
    return alloc(count, size, 1, what, err, errlen);
}
