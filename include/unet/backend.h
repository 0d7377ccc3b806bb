/* The backend interface: one op table per backend (CPU, CUDA), plus memory,
 * transfers and the optimizer passes over the contiguous parameter block,
 * and the optional work a backend may offer beyond the ops (the free memory
 * of its device, the augmentation warp on it, collective communication
 * between devices). Everything a backend offers is reached through this
 * table, never by a backend's function name: the callers need no #ifdef.
 *
 * The core resolves every pointer of a step once, at compile time, into a
 * unet_op_args; a training step is then a flat walk calling forward and
 * backward functions with their prebuilt args. Nothing is allocated inside a
 * step: scratch memory comes from the plan's workspace, per-node saved data
 * (batch statistics, dropout masks) from the arena as `aux`.
 *
 * Values that change from one step to the next (the dropout seed, the
 * learning rate, Adam's bias corrections) are never passed by value to the
 * work a step enqueues: the host writes them into backend memory before the
 * step and the kernels read them there. The same walk can then be recorded
 * once (a CUDA graph) and replayed for every later step. */
#ifndef UNET_BACKEND_H
#define UNET_BACKEND_H

#include "unet/graph.h"
#include "unet/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct unet_backend unet_backend;

/* How a backend holds the tensors of one element type in its memory (its
 * layout slot): what writes into them from outside the op table (the
 * augmentation warp) must write that. */
typedef enum {
    UNET_LAYOUT_NCHW,      /* NCHW, 4-byte elements (float32, int32): the host's own bytes */
    UNET_LAYOUT_NHWC_BF16, /* NHWC bfloat16, channels padded: the CUDA backend's bf16 activations */
    UNET_LAYOUT_NHWC_F32,  /* NHWC float32, channels padded: its fp32/tf32 activations with --layout nhwc */
} unet_layout;

/* Sums n doubles over the replicas of a data-parallel run, in place, on the
 * host (synchronised batch norm). Every replica calls it at the same point. */
typedef struct {
    void (*sum)(void *ctx, double *values, int n);
    void *ctx;
} unet_replica_sum;

typedef struct {
    const unet_node *node;
    int node_index; /* position in the graph: with the step seed, keys random streams */
    const unet_backend *backend;
    int training;    /* batch norm: batch statistics; dropout: active */
    int sizing_only; /* the plan only sizes memory (unet info): never runs, so nothing is timed */
    int n_in;
    unet_shape in_shape[UNET_MAX_IN];
    unet_shape out_shape;
    const void *in[UNET_MAX_IN];
    void *out;
    /* backward: gradient of each input (NULL: not needed), and whether to add
     * into it (another consumer wrote it first) or overwrite it */
    void *din[UNET_MAX_IN];
    int din_accumulate[UNET_MAX_IN];
    /* backward: gradient of the output. Backward may clobber it: it has no
     * other reader. Loss nodes have none: they are the roots. */
    void *dout;
    const float *param[UNET_MAX_PARAM];
    float *dparam[UNET_MAX_PARAM]; /* overwritten, never accumulated */
    float *state[2];               /* batch norm running mean, running var */
    void *aux;                     /* aux_bytes() of per-node saved data, alive forward to backward */
    void *workspace;               /* workspace_bytes() of scratch, shared by all nodes */
    /* the plan's per-step seed (dropout), in backend memory: read when the op
     * runs, not when it is enqueued, so a replayed step uses its own seed */
    const uint64_t *seed;
    /* the global index of the batch's first sample (data parallel: rank x
     * per-rank batch; else 0). Dropout keys its mask by the global element
     * index, so the ranks together draw the single-process batch's masks. */
    uint64_t first_sample;
    const unet_replica_sum *replica_sum; /* batch norm: statistics over all replicas; NULL: this one's */
} unet_op_args;

typedef struct {
    void (*forward)(const unet_op_args *a);
    void (*backward)(const unet_op_args *a); /* NULL: inference-only */
    /* Sizes asked at compile time; args carry shapes and node, no pointers. NULL: 0. */
    size_t (*workspace_bytes)(const unet_op_args *a);
    size_t (*aux_bytes)(const unet_op_args *a);
} unet_op_impl;

/* The optimizer's values for one step, derived on the host once for every
 * backend (unet_optim_scalars_at, src/host/train/optim.c). They live in
 * backend memory (unet_param_blocks.scalars) and the update passes read them
 * there. */
typedef struct {
    float lr;
    float decay;     /* AdamW: 1 - lr * wd (1 otherwise) */
    float step_size; /* Adam: lr / (1 - beta1^t) */
    float bc2_sqrt;  /* Adam: sqrt(1 - beta2^t) */
    int first;       /* SGD: 1 on step 0, where the momentum buffer starts as the gradient */
    /* 0 from the host; the guard pass (unet_backend.guard) sets it to 1 when this step's update is to be dropped,
     * and the update passes then change nothing */
    int skip;
    int64_t step; /* 0-based: where the guard records a non-finite step */
} unet_optim_scalars;

/* The guard of the update pass against non-finite values, in backend memory
 * (unet_param_blocks.guard). The host sets the policy and the count once (a
 * fresh or resumed run) and reads it back when it reads the loss and before
 * it writes a checkpoint: a replayed step needs no host check of its own. */
typedef struct {
    int32_t skip_policy; /* 1: drop a non-finite step's update and go on; 0: the first one latches (below) */
    int32_t found;       /* the check's scratch: nonzero once a value is not finite; 0 between steps */
    int32_t latched;     /* policy 0: a non-finite step was seen, and every update since has been dropped */
    int32_t unused;
    int64_t bad_steps; /* steps whose update was dropped because a value was not finite */
    int64_t first_bad; /* step + 1 of the first of them (0: none) */
    int64_t last_bad;  /* step + 1 of the latest */
} unet_update_guard;

/* A step recorded by a backend that can replay work (a CUDA graph). */
typedef struct unet_capture unet_capture;

/* One sample's augmentation draw (unet/augment.h), and a backend's buffers
 * for warping batches of them on its device. */
typedef struct unet_warp unet_warp;
typedef struct unet_warper unet_warper;

/* One face of a data-parallel run's communicator (unet/dist.h): it moves
 * bytes, and the bucketing, the watchdog and the choice of face are
 * src/host/dist's. MPI's face sums host memory (src/host/dist/mpi.c); a
 * backend may open one between its devices (NCCL on CUDA: dist_open). */
typedef struct unet_dist_face unet_dist_face;
struct unet_dist_face {
    const char *name;
    int host_memory; /* data lives on the host: ops can sum inside a kernel (synchronised batch norm) */
    /* 1: wait, sum_f64 and barrier watch for a dead peer themselves: each
     * gives up after timeout_s, or sooner when the communicator reports a
     * failure, with its communicator aborted (so that the peers' waits end
     * too) and one line in err. 0: they block, and the communicator's
     * watchdog (src/host/dist) ends a wait that lasts too long. */
    int gives_up;
    /* Starts summing n floats of backend memory in place over the ranks
     * (average: then divided by the world size); wait finishes every start.
     * wait, sum_f64 and barrier return 0, or -1 when they gave up. */
    void (*start_sum)(unet_dist_face *f, float *data, size_t n, int average);
    void (*progress)(unet_dist_face *f); /* NULL: the face progresses by itself */
    int (*wait)(unet_dist_face *f, double timeout_s, char *err, size_t errlen);
    /* host memory, blocking */
    int (*sum_f64)(unet_dist_face *f, double *values, int n, double timeout_s, char *err, size_t errlen);
    int (*barrier)(unet_dist_face *f, double timeout_s, char *err, size_t errlen);
    void (*abort)(unet_dist_face *f, int code);
    void (*close)(unet_dist_face *f);
};
/* The bytes rank 0 hands every rank so that their faces find each other. */
#define UNET_DIST_ID_BYTES 128

struct unet_backend {
    const char *name;                       /* "cpu", "cuda" */
    const unet_op_impl *ops[UNET_OP_COUNT]; /* indexed by unet_op */
    void *ctx;                              /* backend state (CUDA: device, stream, handles) */

    size_t (*tensor_bytes)(const unet_backend *b, unet_shape s, unet_dtype t);
    void *(*alloc)(const unet_backend *b, size_t bytes); /* NULL on failure */
    void (*free)(const unet_backend *b, void *p);
    void (*memset0)(const unet_backend *b, void *p, size_t bytes);
    /* Host NCHW data <-> a tensor in this backend's layout. */
    void (*upload)(const unet_backend *b, void *dst, const void *host, unet_shape s, unet_dtype t);
    void (*download)(const unet_backend *b, void *host, const void *src, unet_shape s, unet_dtype t);
    /* Plain float arrays (parameter blocks) in both directions. */
    void (*upload_f32)(const unet_backend *b, float *dst, const float *host, size_t n);
    void (*download_f32)(const unet_backend *b, float *host, const float *src, size_t n);
    /* A few bytes (per-step values) into backend memory, in order with the
     * work enqueued around it; the host copy may be reused when it returns. */
    void (*upload_bytes)(const unet_backend *b, void *dst, const void *host, size_t bytes);
    void (*sync)(const unet_backend *b);

    /* Optimizers: one pass over the contiguous block, PyTorch semantics.
     * SGD: buf = first ? g + wd*p : mom*buf + g + wd*p;  p -= lr*buf.
     * Adam: decoupled (AdamW) when adamw, else L2 added to the gradient.
     * s points into backend memory and is read when the pass runs (nothing
     * changes when s->skip is set); the arguments passed by value are the
     * same on every step. */
    void (*sgd)(const unet_backend *b, float *p, const float *g, float *buf, size_t n, const unet_optim_scalars *s,
                float momentum, float wd);
    void (*adam)(const unet_backend *b, float *p, const float *g, float *m, float *v, size_t n,
                 const unet_optim_scalars *s, float beta1, float beta2, float eps, float wd, int adamw);
    /* Before the update: one reduction over the gradient block g (n) and the batch norm statistics (state,
     * n_state, which the step's forward moved) finds any NaN or infinity. Such a step is dropped: s->skip = 1
     * (sgd and adam then change nothing), the statistics go back to state_good, and the guard counts it; a
     * finite step leaves state_good a copy of the statistics. Under policy 0 the first dropped step latches
     * every later one. Runs on the stream like the update, reading and writing backend memory only. */
    void (*guard)(const unet_backend *b, const float *g, size_t n, float *state, float *state_good, size_t n_state,
                  unet_optim_scalars *s, unet_update_guard *guard);

    /* Recording and replaying a whole step (CUDA graphs); NULL on backends
     * that cannot (the CPU). Between begin_capture and end_capture the work
     * the host enqueues is recorded and not run. end_capture returns the
     * recorded step, ready to replay, and its number of nodes; or NULL with
     * what failed in why, the backend back to running work as it is enqueued
     * and its error state cleared. begin_capture may refuse (-1, why). A
     * replay runs the recorded work on the backend's stream with whatever
     * the per-step memory (inputs, seed, optimizer scalars) holds by then. */
    int (*begin_capture)(const unet_backend *b, char *why, size_t whylen);
    unet_capture *(*end_capture)(const unet_backend *b, size_t *nodes, char *why, size_t whylen);
    void (*replay)(const unet_backend *b, unet_capture *c);
    void (*release)(const unet_backend *b, unet_capture *c);

    /* The rest is optional: NULL on a backend that does not offer it (the
     * CPU backend offers none of it). */

    /* The layout of tensors of element type t. NULL: NCHW for every type. */
    unet_layout (*layout)(const unet_backend *b, unet_dtype t);

    /* After the plans are compiled: NULL, or one line saying that this run
     * is not deterministic although it asked to be (a convolution that only
     * a nondeterministic library routine runs), for the line that names the
     * run's device. */
    const char *(*nondeterminism)(const unet_backend *b);

    /* The free and total memory of the backend's device, for planning a run
     * before it allocates anything (unet info: the largest batch that fits).
     * free counts what this process and every other holds already, the
     * backend's own context and handles included. 0, or -1 with one line in
     * err. */
    int (*memory_info)(const unet_backend *b, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen);

    /* The augmentation warp on the device, twin of unet_augment_warp
     * (unet/augment.h) with the same arithmetic (src/common/warp_math.h): the
     * host draws and reads the source windows, the device warps them
     * straight into the tensors a step reads. No op of the table: the warp
     * has no backward and is no node of the graph, so the core never sees it.
     *
     * warper_create: buffers for batches of up to `batch` samples of
     * `channels` x tile x tile, from source windows of S = tile + 2 context
     * pixels a side, elastic grids of up to `grid` points a side (0: no
     * elastic deformation), raw sampled by a cubic B-spline (cubic: 1, which
     * also takes S x S x 12 bytes a channel and sample for the prefilter) or
     * bilinearly. NULL with one line in err (out of device memory, sizes it
     * cannot take).
     * warp_batch: warps samples 0 .. count - 1, warps[n] applied to source
     * window n of the host arrays src_raw (count, C, S, S), src_label and
     * src_weight (count, S, S), into the device arrays raw (count, C, T, T),
     * label and weight (count, T, T), as unet_augment_warp would write them;
     * queued in order with the backend's other work (no synchronisation with
     * the step that reads them). Host arrays in pageable memory (malloc) may
     * be reused when it returns. -1 with one line in err for a warp the
     * warper was not made for (count, grid, interpolation). */
    unet_warper *(*warper_create)(const unet_backend *b, int batch, int channels, int tile, int context, int grid,
                                  int cubic, char *err, size_t errlen);
    int (*warp_batch)(const unet_backend *b, unet_warper *w, int count, const unet_warp *warps, const float *src_raw,
                      const int32_t *src_label, const float *src_weight, float *raw, int32_t *label, float *weight,
                      char *err, size_t errlen);
    void (*warper_free)(const unet_backend *b, unet_warper *w);

    /* Collective communication between the devices of a data-parallel run
     * (NCCL on CUDA): rank 0 makes the id, the ranks exchange it (src/host/
     * dist), and every rank opens its face with it on this backend's device,
     * summing gradients on its own stream after the backend's work. -1 / NULL
     * with one line in err. */
    int (*dist_id)(const unet_backend *b, unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen);
    unet_dist_face *(*dist_open)(const unet_backend *b, int rank, int world, const unsigned char id[UNET_DIST_ID_BYTES],
                                 char *err, size_t errlen);
};

/* The CPU backend: the reference, always built. */
const unet_backend *unet_cpu_backend(void);

/* The CUDA backend when built with UNET_CUDA; NULL with a message in err when
 * unavailable (not built, no device). device: index, precision and layout
 * as the flags (layout NULL: auto; nchw or nhwc for fp32 and tf32, bf16 is
 * always nhwc); deterministic: 1 keeps cuDNN to engines without atomics in
 * their reductions (the same bits run to run), 0 lets it pick
 * nondeterministic ones too (--fast-nondeterministic). */
const unet_backend *unet_cuda_backend(int device, const char *precision, const char *layout, int deterministic,
                                      char *err, size_t errlen);
/* CUDA devices this process sees, without making a backend (a rank picks
 * its device by them); 0 without CUDA. */
int unet_cuda_devices(void);
/* What a CUDA build was built against and loads (unet --version): the
 * toolkit, cuDNN and NCCL, one line into buf; in a build without CUDA,
 * that it has none. */
void unet_cuda_versions(char *buf, size_t n);
/* In a build without the CUDA backend, why, in words every refusal of CUDA
 * work quotes ("this unet was built without CUDA (configure with ...)");
 * NULL in a build with it. */
const char *unet_cuda_absent(void);

#ifdef __cplusplus
}
#endif

#endif
