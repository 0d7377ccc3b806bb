#include "host/common/util.h"

#include "host/common/test_hooks.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

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

/* A failed atomic write's message; on a full disk (or quota) with the room
 * left in the folder, so that the cause is plain. */
static void write_failed(const char *path, const char *tmp, const char *dir, const char *step, int e, char *err,
                         size_t errlen) {
    if (!strcmp(step, "rename")) {
        unet_errorf(err, errlen, "cannot write %s: cannot rename %s to it: %s", path, tmp, strerror(e));
        return;
    }
    char room[160] = "";
    struct statvfs vfs;
    if ((e == ENOSPC || e == EDQUOT) && statvfs(dir, &vfs) == 0)
        snprintf(room, sizeof room, " (%.1f MiB free in %.60s)",
                 (double)vfs.f_bavail * (double)vfs.f_frsize / 1048576.0, dir);
    unet_errorf(err, errlen, "cannot write %s: %s of %s failed: %s%s", path, step, tmp, strerror(e ? e : EIO), room);
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
    if (!bad) unet_test_kill_point("checkpoint-rename", -1);
    if (!bad && rename(tmp, path)) bad = 1, e = errno, step = "rename";
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    dirname(dir);
    if (bad) {
        unlink(tmp);
        write_failed(path, tmp, dir, step, e, err, errlen);
        return -1;
    }
    /* the rename itself survives a power cut once the directory is synced; best effort */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* A file can be made in `dir`: a probe created there and removed. */
static int probe_dir(const char *dir, const char *path, const char *what, char *err, size_t errlen) {
    struct stat st;
    if (stat(dir, &st)) {
        unet_errorf(err, errlen, "%s %s: the folder %s %s", what, path, dir,
                    errno == ENOENT ? "does not exist (make it first)" : strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        unet_errorf(err, errlen, "%s %s: %s is not a folder", what, path, dir);
        return -1;
    }
    char probe[4400];
    snprintf(probe, sizeof probe, "%s/.unet-probe.%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        /* a probe of an earlier process with this id, killed in between */
        unlink(probe);
        fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        unet_errorf(err, errlen, "%s %s: cannot create a file in %s: %s", what, path, dir, strerror(errno));
        return -1;
    }
    close(fd);
    if (unlink(probe)) {
        unet_errorf(err, errlen, "%s %s: cannot remove a file from %s: %s", what, path, dir, strerror(errno));
        return -1;
    }
    return 0;
}

int unet_check_output_file(const char *path, const char *what, char *err, size_t errlen) {
    struct stat st;
    if (!path[0]) {
        unet_errorf(err, errlen, "%s needs a file name", what);
        return -1;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        unet_errorf(err, errlen, "%s %s: that is a folder; name a file in it", what, path);
        return -1;
    }
    char dir[4200];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return probe_dir(dir, path, what, err, errlen);
}

/* mkdir -p: every missing folder of the path, each with its parent */
static int make_dirs(const char *dir, const char *what, char *err, size_t errlen) {
    char p[4200];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) {
        unet_errorf(err, errlen, "%s: the path is too long", what);
        return -1;
    }
    for (char *s = p + 1;; s++) {
        char c = *s;
        if (c == '/' || c == 0) {
            *s = 0;
            if (mkdir(p, 0777) && errno != EEXIST) {
                unet_errorf(err, errlen, "%s %s: cannot create the folder %s: %s", what, dir, p, strerror(errno));
                return -1;
            }
            *s = c;
        }
        if (!c) return 0;
    }
}

int unet_check_output_dir(const char *dir, const char *what, int create, char *err, size_t errlen) {
    if (!dir[0]) {
        unet_errorf(err, errlen, "%s needs a folder", what);
        return -1;
    }
    if (create && make_dirs(dir, what, err, errlen)) return -1;
    return probe_dir(dir, dir, what, err, errlen);
}
