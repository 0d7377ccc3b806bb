/* Host-to-device copies of what every step uploads anew (a batch's inputs,
 * the per-step values, the augmentation warp's source windows) through
 * page-locked staging, double-buffered per destination, so that the host
 * writes step k+1's data while the device still works on step k.
 *
 * Why: a copy from pageable memory goes through the driver's own staging
 * and may wait for the stream (CUDA's "API synchronization behavior"): the
 * host would wait for step k before it could hand over step k+1's batch.
 * From page-locked memory the copy is a DMA queued on the stream and the
 * call returns at once; the price is that the host buffer must stay as it
 * is until the copy has read it. So each destination gets two page-locked
 * buffers used in turn, and an event recorded after each copy: before the
 * host writes a buffer again it waits for the event of the copy that last
 * read it, the copy before last into that destination. In a training loop
 * that copy precedes step k-1 on the stream, so the host runs up to two
 * steps ahead of the device and never further.
 *
 * The device side needs no event: the copy into a destination is queued on
 * the backend's stream after every step enqueued before it (the one that
 * reads the destination's previous contents included, eager or a replayed
 * CUDA graph, whose inputs sit at fixed addresses), and before the step
 * that reads it. No staging happens during a graph capture (the uploads of
 * a step come before it is enqueued). Library-internal to the CUDA backend. */
#ifndef UNET_CUDA_STAGING_H
#define UNET_CUDA_STAGING_H

#include <stddef.h>

#include "kernels/cuda/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The page-locked buffer to fill with `bytes` for the copy into dst: one of
 * dst's two, waited for until the copy that last read it is done. Grown (and
 * page-locked) on first use of a size; out of page-locked memory ends the
 * run through the backend's reporter, as a failed call does. */
void *unet_cuda_stage(unet_cuda_ctx *ctx, void *dst, size_t bytes, unet_cuda_site at);

/* Queues the copy of the buffer unet_cuda_stage just gave for dst into dst,
 * on ctx->stream, and records when it has been read. */
void unet_cuda_stage_copy(unet_cuda_ctx *ctx, void *dst, size_t bytes, unet_cuda_site at);

/* The two together for a plain copy of host bytes; host may be reused at once. */
void unet_cuda_upload_staged(unet_cuda_ctx *ctx, void *dst, const void *host, size_t bytes, unet_cuda_site at);

#ifdef __cplusplus
}
#endif

#endif
