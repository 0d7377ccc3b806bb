/* What the emulator's cuDNN and NCCL (cudnn.cc, libs.cc) share with its
 * CUDA runtime (runtime.cc): the device lock, stream-ordered work, and the
 * checks of device pointers. */
#ifndef UNET_EMU_RUNTIME_H
#define UNET_EMU_RUNTIME_H

#include <stdint.h>
#include <string.h>

#include <functional>
#include <mutex>
#include <string>

#include "cuda_runtime.h"

namespace unet_emu {

/* One line on stderr, "unet CUDA emulator: ...". */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Every API call holds it: one piece of device work runs at a time. */
std::recursive_mutex &device_lock();

/* Runs work in the stream's order: now, or (stream capturing) when the graph is replayed, or (UNET_CUDA_EMU_DEFER=1,
 * or work already waiting on the stream) when the host next waits for the stream. */
cudaError_t enqueue(cudaStream_t stream, const char *what, std::function<void()> work);

/* Work that never finishes on the stream (a collective waiting for a dead peer): the stream's later work waits,
 * events after it never complete, and a host that waits for them waits forever, until release_hang. */
void enqueue_hang(cudaStream_t stream, const char *what);
/* The hang ends (the communicator is aborted): the stream's later work runs. */
void release_hang(cudaStream_t stream);

/* Whether [p, p + bytes) lies inside one live device allocation; why says what is wrong otherwise. */
bool device_range(const void *p, size_t bytes, std::string *why);

/* A fault on the device: says what on stderr, and every later call returns cudaErrorIllegalAddress, as a
 * GPU's context is lost after one. */
void device_fault(const std::string &what);

/* After a piece of device work: a write past the end of an allocation is a fault, named after `what`. */
void check_redzones(const char *what);

/* A float as tensor cores read it in TF32: 10 mantissa bits, rounded to nearest (ties away from zero). */
inline float tf32(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&v, &u, 4);
    return v;
}

} // namespace unet_emu

#endif
