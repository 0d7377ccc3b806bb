/* What the fuzz targets share. Every reader under test takes a path (HDF5,
 * libtiff and the mmap of safetensors read files, not memory), so a target
 * writes its input to a file of its own first; and every reader promises the
 * house's answer to bad input, one line saying what is wrong, which a target
 * checks on each refusal: an empty or multi-line message is a bug too.
 *
 * Each fuzz_*.c is a program of its own, so these are static inline. */
#ifndef UNET_FUZZ_COMMON_H
#define UNET_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The input as a file named by the process id and `suffix` (the image reader
 * goes by the extension), in $TMPDIR, else /dev/shm where there is one (a
 * file rewritten on a disk file system costs a flush per input: a quarter of
 * the speed), else /tmp; removed at exit. */
static char fuzz_path_[4096];

static inline void fuzz_remove_file_(void) { unlink(fuzz_path_); }

static inline const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix) {
    if (!fuzz_path_[0]) {
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_path_, sizeof fuzz_path_, "%s/unet-fuzz-%ld%s", dir, (long)getpid(), suffix);
        atexit(fuzz_remove_file_);
    }
    FILE *f = fopen(fuzz_path_, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) {
        perror(fuzz_path_);
        abort();
    }
    return fuzz_path_;
}

/* A refusal must say why, in one line. */
static inline void fuzz_check_message(const char *err) {
    if (!err[0] || strchr(err, '\n')) {
        fprintf(stderr, "fuzz: a refusal without a one-line message: \"%s\"\n", err);
        abort();
    }
}

#endif
