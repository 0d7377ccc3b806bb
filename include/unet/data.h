/* Datasets and the training batch loader.
 *
 * A dataset is one HDF5 file in the layout of pytorch-3dunet, CREMI and
 * ilastik: `raw` (N,H,W), (N,C,H,W) or a single image (H,W), as uint8,
 * uint16 (scaled to [0,1] by the type's maximum) or float32 (used as is);
 * `label` (N,H,W) of any integer type; optional `weight` (N,H,W) float and
 * `instances` (N,H,W) integer ids. Every problem the file can have is found at
 * open (missing datasets, shapes, types, labels outside [0, classes), NaN in
 * raw) and reported as one line naming the file, the dataset and the fix.
 *
 * The loader turns a view of a dataset into training batches that are a pure
 * function of (seed, step): a resumed run gets the same batches with no saved
 * state, and a background thread prepares step s+1 while step s runs. */
#ifndef UNET_DATA_H
#define UNET_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_DATA_CACHE_DEFAULT ((size_t)2 << 30) /* read whole files into memory below 2 GiB */

typedef struct unet_dataset unet_dataset;

typedef struct {
    /* Dataset names inside the file; NULL gives raw, label, weight, instances. */
    const char *raw_key, *label_key, *weight_key, *instances_key;
    /* Labels must lie in [0, max(classes, 2)) (one sigmoid class takes {0,1});
     * 0 skips the check. */
    int classes;
    int label_optional; /* prediction inputs: `label` may be absent */
    size_t cache_bytes; /* 0: UNET_DATA_CACHE_DEFAULT; files larger than this are read per tile */
} unet_dataset_opts;

typedef struct {
    int n, c, h, w; /* images, channels, rows, columns */
    int has_label, has_weight, has_instances;
    int cached;           /* raw, label and weight held in memory */
    const char *raw_type; /* "uint8", "uint16" or "float32" */
} unet_dataset_info;

/* Opens and validates a file; 0, or -1 with a one-line message in err. */
int unet_dataset_open(const char *path, const unet_dataset_opts *opts, unet_dataset **out, char *err, size_t errlen);
void unet_dataset_close(unet_dataset *ds);
void unet_dataset_get_info(const unet_dataset *ds, unet_dataset_info *info);
const char *unet_dataset_path(const unet_dataset *ds);

/* Reads rows [row0, row0 + rows) of image `index` (a hyperslab, or from the
 * cache): raw as float32 (C, rows, W), label int32, weight float32 (ones when
 * the file has none), instances int32. Any buffer may be NULL to skip it;
 * asking for a label or instances the file lacks is an error. Thread-safe:
 * HDF5 calls are serialised by one lock. */
int unet_dataset_read(unet_dataset *ds, int index, int row0, int rows, float *raw, int32_t *label, float *weight,
                      int32_t *instances, char *err, size_t errlen);

/* A view: images [image0, image0 + images), rows [row0, row0 + rows) of each.
 * Training and validation are views, so that a held-out split never copies
 * data, and mirroring at a view's border never reaches into the other view. */
typedef struct {
    unet_dataset *ds;
    int image0, images;
    int row0, rows;
} unet_data_view;

unet_data_view unet_data_view_all(unet_dataset *ds);

/* The held-out split of `--val-fraction f`, 0 < f < 1, for when there is no
 * separate `--val V.h5`: with N >= 2 images the last ceil(f*N) images
 * (at least one, and at least one left for training); with a single image the
 * bottom ceil(f*H) rows. Blocks rather than a random pick, because adjacent
 * slices and rows are correlated and a random split would leak. */
int unet_data_split(unet_dataset *ds, double fraction, unet_data_view *train, unet_data_view *val, char *err,
                    size_t errlen);

/* Reads image k of a view (the view's rows only); buffers as in unet_dataset_read. */
int unet_data_view_read(const unet_data_view *v, int k, float *raw, int32_t *label, float *weight, char *err,
                        size_t errlen);

/* Copies a size x size window at (y0, x0) of image k of a view, mirrored
 * where it leaves the view (reflection without repeating the edge pixel,
 * numpy.pad's 'reflect', repeated for windows larger than the image): raw
 * (C, size, size), label and weight (size, size); NULL skips one. scratch
 * holds the rectangle read from an uncached file: unet_data_window_scratch()
 * bytes (0 for a cached one), or NULL to allocate it for this call. */
int unet_data_window(const unet_data_view *v, int k, int y0, int x0, int size, float *raw, int32_t *label,
                     float *weight, void *scratch, char *err, size_t errlen);
size_t unet_data_window_scratch(const unet_data_view *v, int size);

/* The augmentation seam. The loader reads a source window `context` pixels
 * larger than the tile on every side (mirrored like the tile itself), and the
 * hook writes the tile from it: elastic deformation and rotations need the
 * pixels around the tile. key is this sample's own random stream
 * (unet_uniform(key, i)); one draw must move raw, label and weight together.
 * Runs outside the HDF5 lock, on the loader's worker threads, several at once
 * (so it must be thread-safe). Returns 0, or -1 with a one-line message.
 * The augmentations of the U-Net paper are unet_augment_apply (unet/augment.h). */
typedef struct {
    int channels, tile, context;
    const float *src_raw;     /* (C, S, S), S = tile + 2 * context */
    const int32_t *src_label; /* (S, S) */
    const float *src_weight;  /* (S, S) */
    float *raw;               /* (C, tile, tile) */
    int32_t *label;           /* (tile, tile) */
    float *weight;            /* (tile, tile) */
    uint64_t key;
} unet_augment_args;
typedef int (*unet_augment_fn)(void *ctx, const unet_augment_args *a, char *err, size_t errlen);

/* Images larger than the tile are sampled as random patches already: every
 * sample draws its tile position uniformly over the image (mirrored by the
 * margin), so a few large annotated images make a training set with no
 * --patch option. */
typedef struct {
    int batch, tile; /* B, T: batches are (B,C,T,T) raw, (B,1,T,T) label and weight */
    /* Context a valid-padding network loses per side, (tile - output) / 2:
     * tile positions range over the image mirrored by this much, so that
     * outputs cover the border pixels too. 0 for same padding. */
    int margin;
    uint64_t seed;
    int no_shuffle;  /* images in order instead of one permutation per epoch */
    int no_prefetch; /* prepare batches on the caller's thread only */
    /* Threads preparing samples ahead (0 or 1: one). The samples of a batch
     * and of the next batches are shared out among them; every sample is a
     * pure function of (seed, step, slot), so batches are the same bits
     * whatever the number of workers. */
    int workers;
    unet_augment_fn augment; /* NULL: no augmentation */
    void *augment_ctx;
    int augment_context;
    /* Deferred augmentation, for a warp done elsewhere (the GPU warp of
     * unet/augment.h), instead of augment: a worker reads the sample's source
     * window, tile + 2 augment_context a side, and draw(augment_ctx, key, ...)
     * writes the sample's random draws into record_bytes (a multiple of 8)
     * bytes, with the key augment would get. unet_loader_sources hands both
     * over; the reads and draws stay on the loader's threads. NULL: none. */
    int (*draw)(void *ctx, uint64_t key, void *record, char *err, size_t errlen);
    size_t record_bytes;
    /* Data parallel: this process is replica `rank` of `world` (0, 0: alone).
     * Global step s has G = batch * world samples, s*G .. s*G + G - 1 in the
     * epoch order, and replica r takes the r-th contiguous slice of batch of
     * them: W replicas of batch B see exactly the batches of one of W*B. */
    int rank, world;
} unet_loader_opts;

typedef struct unet_loader unet_loader;

int unet_loader_create(const unet_data_view *v, const unet_loader_opts *o, unet_loader **out, char *err, size_t errlen);
void unet_loader_free(unet_loader *l);

/* The batch of training step `step` into caller buffers: raw (B,C,T,T),
 * label (B,1,T,T), weight (B,1,T,T) (ones when the file has none); label or
 * weight may be NULL to skip. Then starts preparing step + 1 in the
 * background, so calling with step, step + 1, ... never waits for a read
 * that could have overlapped the previous step. Any step may be asked for
 * (a resumed run starts anywhere); one caller thread at a time. */
int unet_loader_batch(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, char *err,
                      size_t errlen);
/* The same for a loader with a deferred augmentation (opts.draw): the source
 * windows, raw (B,C,S,S), label and weight (B,1,S,S) with S = tile + 2
 * augment_context, and the B draw records, back to back, in records. */
int unet_loader_sources(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, void *records,
                        char *err, size_t errlen);

/* Which sample slot `slot` of step `step` is: image k of the view and the
 * tile's top-left corner (negative, or past the edge, where mirrored). Global
 * sample g = (step * world + rank) * B + slot is position g % n of epoch g / n's
 * order. */
void unet_loader_sample(const unet_loader *l, int64_t step, int slot, int *image, int *y0, int *x0);

/* Evaluation in fixed tiles: the output windows (tile - 2 * margin) of every
 * image in order, left to right and top to bottom, the last of a row or column
 * moved back to end at the image's edge (so border pixels are counted twice,
 * never outside the image); an image smaller than the output is centred.
 * For exact whole-image metrics read whole images (unet_data_view_read) and
 * predict them with unet_predict_tiled. */
typedef struct {
    unet_data_view view;
    int tile, margin, batch;
    int image, ty, tx; /* next window */
    void *scratch;
} unet_eval_tiles;

int unet_eval_tiles_init(unet_eval_tiles *it, const unet_data_view *v, int tile, int margin, int batch, char *err,
                         size_t errlen);
/* Total number of tiles over the view. */
int unet_eval_tiles_count(const unet_eval_tiles *it);
/* Fills up to `batch` tiles; *count = how many (0 when done). Unused slots of
 * the buffers are left as they were. */
int unet_eval_tiles_next(unet_eval_tiles *it, float *raw, int32_t *label, float *weight, int *count, char *err,
                         size_t errlen);
void unet_eval_tiles_free(unet_eval_tiles *it);

/* Prediction files: `prob` (N, K, H, W) float32 (softmax, or sigmoid for one
 * class) and `pred` (N, H, W) uint8, chunked per image, gzip. Written to a
 * temporary file beside the target and renamed by close(commit = 1), so a
 * failed or interrupted run never leaves a half-written file under the name. */
typedef struct unet_prediction_file unet_prediction_file;
int unet_prediction_file_create(const char *path, int n, int classes, int height, int width, unet_prediction_file **out,
                                char *err, size_t errlen);
int unet_prediction_file_write(unet_prediction_file *f, int index, const float *prob, const uint8_t *pred, char *err,
                               size_t errlen);
/* commit = 0 discards the file (an error happened). */
int unet_prediction_file_close(unet_prediction_file *f, int commit, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
