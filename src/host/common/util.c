#include "host/common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void unet_errorf(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

double unet_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

double unet_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
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

int unet_write_atomic(const char *path, int (*write)(FILE *f, void *ctx), void *ctx, char *err, size_t errlen) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        unet_errorf(err, errlen, "cannot write %s: the path is too long", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) close(fd), unlink(tmp);
        unet_errorf(err, errlen, "cannot write %s: cannot create %s: %s", path, tmp, strerror(e));
        return -1;
    }
    const char *step = "write";
    errno = 0;
    int bad = write(f, ctx) != 0;
    if (!bad && fflush(f)) bad = 1;
    if (!bad && fsync(fileno(f))) bad = 1, step = "fsync";
    int e = errno;
    if (fclose(f) && !bad) bad = 1, e = errno, step = "close";
    if (!bad && rename(tmp, path)) bad = 1, e = errno, step = "rename";
    if (bad) {
        unlink(tmp);
        if (!strcmp(step, "rename"))
            unet_errorf(err, errlen, "cannot write %s: cannot rename %s to it: %s", path, tmp, strerror(e));
        else
            unet_errorf(err, errlen, "cannot write %s: %s of %s failed: %s", path, step, tmp, strerror(e ? e : EIO));
        return -1;
    }
    /* the rename itself survives a power cut once the directory is synced; best effort */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}
