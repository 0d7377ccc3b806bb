/* Small helpers every part of the host code shares: the one-line error
 * message, a monotonic clock, and an allocation that fails with a message
 * instead of an abort. Library-internal. */
#ifndef UNET_COMMON_UTIL_H
#define UNET_COMMON_UTIL_H

#include <stddef.h>

/* Writes the message into err (errlen bytes, truncated to fit): the way every
 * function of the library says what went wrong. Control characters become
 * '?', so that a message stays one line whatever it quotes. */
void unet_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Seconds on a monotonic clock: differences are elapsed time, unaffected by
 * changes of the wall clock. */
double unet_now_s(void);

/* count * size bytes of host memory (unet_alloc_zeroed: set to zero). On
 * failure, or when the size overflows, NULL with "out of host memory for
 * <what> (<size>)" in err, so that the caller fails cleanly with that line. */
void *unet_alloc(size_t count, size_t size, const char *what, char *err, size_t errlen);
void *unet_alloc_zeroed(size_t count, size_t size, const char *what, char *err, size_t errlen);

#endif
