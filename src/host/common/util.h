/* Small helpers every part of the host code shares: the one-line error
 * message, a monotonic clock, an allocation that fails with a message
 * instead of an abort, and the check that an output can be written.
 * Library-internal. */
#ifndef UNET_COMMON_UTIL_H
#define UNET_COMMON_UTIL_H

#include <stddef.h>
#include <stdio.h>

/* Writes the message into err (errlen bytes, truncated to fit): the way every
 * function of the library says what went wrong. Control characters become
 * '?', so that a message stays one line whatever it quotes. */
void unet_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Seconds on a monotonic clock: differences are elapsed time, unaffected by
 * changes of the wall clock. */
double unet_now_s(void);
/* Seconds of CPU time this process has used, all its threads together: on a
 * machine shared with other load, the steadier measure of a one-thread run. */
double unet_cpu_s(void);

/* count * size bytes of host memory (unet_alloc_zeroed: set to zero). On
 * failure, or when the size overflows, NULL with "out of host memory for
 * <what> (<size>)" in err, so that the caller fails cleanly with that line. */
void *unet_alloc(size_t count, size_t size, const char *what, char *err, size_t errlen);
void *unet_alloc_zeroed(size_t count, size_t size, const char *what, char *err, size_t errlen);

/* Writes path atomically: write(f, ctx) fills a temporary file beside it
 * (path.tmp.<pid>), which is flushed, synced and renamed over path, so a
 * reader sees the old file or the whole new one, never a part. write returns
 * 0, or -1 when it failed (errno then says why). 0, or -1 with "cannot write
 * <path>: ..." in err and no temporary file left behind. */
int unet_write_atomic(const char *path, int (*write)(FILE *f, void *ctx), void *ctx, char *err, size_t errlen);
/* Fail fast on outputs: before any work, whether a file can be written at
 * `path` later. Its folder must be there and take a new file (a probe,
 * created beside the path and removed at once); an existing file at the
 * path is left alone. `what` names the flag in the one-line message ("--save
 * runs/x/c.safetensors: the folder runs/x does not exist"). 0 or -1. */
int unet_check_output_file(const char *path, const char *what, char *err, size_t errlen);
/* The same for a folder the command writes into, made first (mkdir -p) when
 * create is set. */
int unet_check_output_dir(const char *dir, const char *what, int create, char *err, size_t errlen);

#endif
