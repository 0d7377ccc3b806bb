/* What the test and benchmark drivers in tests/tools share: the house's
 * one-line error with exit code 2, raw files in and out of a test's folder,
 * N,C,H,W shapes, a node's attributes from flags and a clock in milliseconds.
 *
 * Every .c file in tests/tools is a program of its own (CMakeLists.txt builds each),
 * so this is a header of static inline functions: a driver carries only the
 * ones it calls, and an unused one is no warning. A driver defines TOOL_NAME,
 * the prefix of its messages, before including it. */
#ifndef UNET_TOOL_COMMON_H
#define UNET_TOOL_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "unet/graph.h"
#include "unet/tensor.h"

#ifndef TOOL_NAME
#error "define TOOL_NAME (the driver's name, the prefix of its messages) before including tool_common.h"
#endif

/* "TOOL_NAME: msg: arg" (or without arg when it is NULL) on stderr, exit code 2. */
_Noreturn static inline void die(const char *msg, const char *arg) {
    fprintf(stderr, TOOL_NAME ": %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    exit(2);
}

enum { TOOL_PATH_MAX = 4096 };

/* dir/name into path; dir NULL: name is the path. */
static inline void tool_path(char path[TOOL_PATH_MAX], const char *dir, const char *name) {
    int n = dir ? snprintf(path, TOOL_PATH_MAX, "%s/%s", dir, name) : snprintf(path, TOOL_PATH_MAX, "%s", name);
    if (n < 0 || n >= TOOL_PATH_MAX) die("path too long", name);
}

/* The whole of dir/name (dir NULL: name is the path) in a fresh buffer with a
 * 0 byte after its *bytes bytes, so that a text file reads as a string; NULL
 * when the file cannot be opened, for the callers to whom a missing file means
 * something. A file that opens but cannot be read dies. */
static inline void *read_file(const char *dir, const char *name, size_t *bytes) {
    char path[TOOL_PATH_MAX];
    tool_path(path, dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    long n = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET)) die("cannot read", path);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die("short read", path);
    buf[n] = 0;
    fclose(f);
    *bytes = (size_t)n;
    return buf;
}

/* dir/name, which must hold exactly `bytes` bytes (a wrong size dies: the test
 * and the driver disagree on a shape); NULL when it is not there. */
static inline void *read_exact_if_present(const char *dir, const char *name, size_t bytes) {
    size_t got;
    void *buf = read_file(dir, name, &got);
    if (buf && got != bytes) {
        char path[TOOL_PATH_MAX], msg[TOOL_PATH_MAX + 64];
        tool_path(path, dir, name);
        snprintf(msg, sizeof msg, "%s has %zu bytes, expected %zu", path, got, bytes);
        die(msg, NULL);
    }
    return buf;
}

/* dir/name, which must be there and hold exactly `bytes` bytes. */
static inline void *read_exact(const char *dir, const char *name, size_t bytes) {
    void *buf = read_exact_if_present(dir, name, bytes);
    if (!buf) {
        char path[TOOL_PATH_MAX];
        tool_path(path, dir, name);
        die("cannot open", path);
    }
    return buf;
}

/* bytes bytes of p to dir/name (dir NULL: name is the path), or die. */
static inline void write_file(const char *dir, const char *name, const void *p, size_t bytes) {
    char path[TOOL_PATH_MAX];
    tool_path(path, dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write", path);
    int ok = !bytes || fwrite(p, 1, bytes, f) == bytes; /* no fwrite of an empty (maybe NULL) buffer */
    if (fclose(f) || !ok) die("cannot write", path);
}

/* "N,C,H,W", and with t, an optional ":i32" for an int32 tensor (*t: UNET_I32, else UNET_F32). */
static inline unet_shape parse_shape(const char *s, unet_dtype *t) {
    unet_shape sh;
    char suffix[8] = "";
    int n = sscanf(s, "%d,%d,%d,%d:%7s", &sh.n, &sh.c, &sh.h, &sh.w, suffix);
    if (n < 4 || (suffix[0] && (!t || strcmp(suffix, "i32"))))
        die(t ? "shape must be N,C,H,W[:i32]" : "shape must be N,C,H,W", s);
    if (t) *t = suffix[0] ? UNET_I32 : UNET_F32;
    return sh;
}

/* Index of name in names[0..n), or die naming flag. */
static inline int name_index(const char *flag, const char *name, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(name, names[i])) return i;
    die(flag, name);
}

/* A node attribute given as a flag (--k 3, --stride 2, --act relu6, ...; --relu 1 is --act relu) into
 * *n: 1 when flag is one of them, else 0. The names are unet_node's fields. */
static inline int node_attr(unet_node *n, const char *flag, const char *v) {
    static const char *const acts[] = {"none", "relu", "relu6"}, *const modes[] = {"bilinear", "nearest"};
    if (!strcmp(flag, "--k"))
        n->k = atoi(v);
    else if (!strcmp(flag, "--stride"))
        n->stride = atoi(v);
    else if (!strcmp(flag, "--pad"))
        n->pad = atoi(v);
    else if (!strcmp(flag, "--groups"))
        n->groups = atoi(v);
    else if (!strcmp(flag, "--out-c"))
        n->out_c = atoi(v);
    else if (!strcmp(flag, "--act"))
        n->act = (unet_act)name_index("--act is none, relu or relu6", v, acts, 3);
    else if (!strcmp(flag, "--relu"))
        n->act = atoi(v) ? UNET_ACT_RELU : UNET_ACT_NONE;
    else if (!strcmp(flag, "--upsample"))
        n->upsample = (unet_upsample_mode)name_index("--upsample is bilinear or nearest", v, modes, 2);
    else if (!strcmp(flag, "--frozen"))
        n->frozen = atoi(v);
    else if (!strcmp(flag, "--p"))
        n->p = strtof(v, NULL);
    else if (!strcmp(flag, "--eps"))
        n->eps = strtof(v, NULL);
    else if (!strcmp(flag, "--momentum"))
        n->momentum = strtof(v, NULL);
    else if (!strcmp(flag, "--scale"))
        n->scale = strtof(v, NULL);
    else
        return 0;
    return 1;
}

/* Milliseconds on clock id: CLOCK_MONOTONIC for wall time, CLOCK_PROCESS_CPUTIME_ID for the process's CPU time. */
static inline double clock_ms(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* Wall-clock milliseconds. */
static inline double now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

#endif
