/* Page-locked, double-buffered staging of the uploads a step makes anew
 * (staging.h says why and how the buffers are ordered). */
#include "kernels/cuda/staging.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Destinations kept at once: a training run uploads to a handful (the
 * batch's inputs, the seed, the optimizer's values, the warp's windows);
 * past this many, the one used longest ago gives its buffers back. */
#define STAGED_DESTINATIONS 32

typedef struct {
    void *host; /* page-locked */
    size_t capacity;
    cudaEvent_t read; /* recorded after the copy that last read host; NULL before the first */
} stage_buffer;

typedef struct {
    void *dst;
    stage_buffer buf[2];
    int next;                /* the buffer the next upload into dst fills */
    unsigned long long used; /* when last staged into */
} stage_entry;

struct unet_cuda_staging {
    stage_entry entries[STAGED_DESTINATIONS];
    int n;
    unsigned long long clock;
};

static unet_cuda_site waiting(unet_cuda_site at) {
    at.waits = 1; /* waiting for a copy, a fault of an earlier kernel may surface */
    return at;
}

/* Waits until the copy that last read b has read it: then b may be written or freed. */
static void wait_read(const stage_buffer *b, unet_cuda_site at) {
    if (b->read) UNET_CUDA_CHECK(cudaEventSynchronize(b->read), waiting(at));
}

static void release(stage_entry *e, unet_cuda_site at) {
    for (int i = 0; i < 2; i++) {
        stage_buffer *b = &e->buf[i];
        wait_read(b, at);
        if (b->host) UNET_CUDA_CHECK(cudaFreeHost(b->host), at);
        if (b->read) UNET_CUDA_CHECK(cudaEventDestroy(b->read), at);
    }
    memset(e, 0, sizeof *e);
}

static stage_entry *find(struct unet_cuda_staging *s, const void *dst) {
    for (int i = 0; i < s->n; i++)
        if (s->entries[i].dst == dst) return &s->entries[i];
    return NULL;
}

/* dst's entry, made on first use; a full table gives the least recently used one to it. */
static stage_entry *entry_for(unet_cuda_ctx *ctx, void *dst, unet_cuda_site at) {
    if (!ctx->staging) {
        ctx->staging = (struct unet_cuda_staging *)calloc(1, sizeof *ctx->staging);
        if (!ctx->staging) unet_cuda_fail_at(__FILE__, __LINE__, "calloc", "out of host memory for staging", at);
    }
    struct unet_cuda_staging *s = ctx->staging;
    stage_entry *e = find(s, dst);
    if (!e) {
        if (s->n < STAGED_DESTINATIONS) {
            e = &s->entries[s->n++];
        } else {
            e = &s->entries[0];
            for (int i = 1; i < s->n; i++)
                if (s->entries[i].used < e->used) e = &s->entries[i];
            release(e, at);
        }
        e->dst = dst;
    }
    e->used = ++s->clock;
    return e;
}

void *unet_cuda_stage(unet_cuda_ctx *ctx, void *dst, size_t bytes, unet_cuda_site at) {
    stage_entry *e = entry_for(ctx, dst, at);
    stage_buffer *b = &e->buf[e->next];
    /* the copy before last into dst read this buffer: the host writes it only once that copy is done */
    wait_read(b, at);
    if (!b->read) UNET_CUDA_CHECK(cudaEventCreateWithFlags(&b->read, cudaEventDisableTiming), at);
    if (b->capacity < bytes) {
        if (b->host) UNET_CUDA_CHECK(cudaFreeHost(b->host), at);
        b->host = NULL;
        b->capacity = 0;
        cudaError_t err = cudaHostAlloc(&b->host, bytes, cudaHostAllocDefault);
        if (err != cudaSuccess) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s, asking for %zu bytes of page-locked host memory to stage uploads",
                     cudaGetErrorString(err), bytes);
            unet_cuda_fail_at(__FILE__, __LINE__, "cudaHostAlloc", msg, at);
        }
        b->capacity = bytes;
    }
    return b->host;
}

void unet_cuda_stage_copy(unet_cuda_ctx *ctx, void *dst, size_t bytes, unet_cuda_site at) {
    stage_entry *e = find(ctx->staging, dst);
    if (!e) unet_cuda_fail_at(__FILE__, __LINE__, "unet_cuda_stage_copy", "no buffer was staged for dst", at);
    stage_buffer *b = &e->buf[e->next];
    UNET_CUDA_CHECK(cudaMemcpyAsync(dst, b->host, bytes, cudaMemcpyHostToDevice, ctx->stream), at);
    UNET_CUDA_CHECK(cudaEventRecord(b->read, ctx->stream), at);
    e->next ^= 1;
}

void unet_cuda_upload_staged(unet_cuda_ctx *ctx, void *dst, const void *host, size_t bytes, unet_cuda_site at) {
    if (!bytes) return;
    memcpy(unet_cuda_stage(ctx, dst, bytes, at), host, bytes);
    unet_cuda_stage_copy(ctx, dst, bytes, at);
}
