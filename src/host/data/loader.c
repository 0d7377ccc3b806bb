/* Training batches as a pure function of (seed, step), and evaluation tiles.
 *
 * Nothing about a batch depends on what came before it: the image order of an
 * epoch is a permutation keyed by (seed, epoch), a tile position and the
 * augmentation's draws are keyed by (seed, step, slot). So a resumed run gets
 * the same batches without saved loader state, and preparing step s+1 on a
 * background thread changes no bits. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/data.h"
#include "unet/rng.h"

/* Stream tags keep the permutation, the tile position and the augmentation
 * keys apart even where their counters coincide. */
enum { STREAM_PERMUTATION = 0x7065726d, STREAM_SAMPLE = 0x74696c65 };
enum { DRAW_TILE_Y = 0, DRAW_TILE_X = 1, DRAW_AUGMENT = 2 };

/* Uniform integer in [0, n): 64 random bits, so no float rounding can reach n. */
static uint64_t draw_below(uint64_t key, uint64_t index, uint64_t n) { return unet_mix64(key ^ unet_mix64(index)) % n; }

typedef struct {
    int64_t epoch; /* -1: empty */
    int *order;
} permutation_cache;

/* Fisher-Yates under a key from (seed, epoch). */
static void permutation_of(uint64_t seed, int64_t epoch, int n, int *order) {
    uint64_t key = unet_rng_key(seed ^ STREAM_PERMUTATION, (uint64_t)epoch, 0);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)draw_below(key, (uint64_t)i, (uint64_t)i + 1);
        int t = order[i];
        order[i] = order[j], order[j] = t;
    }
}

struct unet_loader {
    unet_data_view view;
    unet_loader_opts o;
    int channels, width;

    /* Owned by whichever thread fills batches (one at a time). */
    permutation_cache perm;
    void *scratch;
    float *src_raw, *src_weight; /* augmentation source windows */
    int32_t *src_label;

    /* The batch prepared in the background, and the handshake around it. */
    float *raw;
    int32_t *label;
    float *weight;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int64_t want, doing, have; /* steps requested, in progress, in the buffer; -1: none */
    int stop, have_rc;
    char have_err[512];
};

static uint64_t sample_key(const unet_loader *l, int64_t step, int slot) {
    return unet_rng_key(l->o.seed ^ STREAM_SAMPLE, (uint64_t)step, (uint64_t)slot);
}

/* One axis of a tile position: the output window (size - 2 margin) is uniform
 * over the positions that keep it inside the image, or, for an image smaller
 * than it, over those that keep the image inside the window. */
static int tile_start(uint64_t key, int draw, int extent, int tile, int margin) {
    int out = tile - 2 * margin;
    int lo = extent < out ? extent - out : 0, span = abs(extent - out) + 1;
    return lo + (int)draw_below(key, (uint64_t)draw, (uint64_t)span) - margin;
}

/* slot is this replica's; positions and random draws follow the global slot */
static void sample_at(const unet_loader *l, permutation_cache *pc, int64_t step, int slot, int *image, int *y0,
                      int *x0) {
    int n = l->view.images, world = l->o.world > 1 ? l->o.world : 1;
    slot += l->o.rank * l->o.batch;
    int64_t g = step * l->o.batch * world + slot;
    int64_t epoch = g / n;
    int pos = (int)(g % n);
    if (l->o.no_shuffle) {
        *image = pos;
    } else {
        if (pc->epoch != epoch) {
            permutation_of(l->o.seed, epoch, n, pc->order);
            pc->epoch = epoch;
        }
        *image = pc->order[pos];
    }
    uint64_t key = sample_key(l, step, slot);
    *y0 = tile_start(key, DRAW_TILE_Y, l->view.rows, l->o.tile, l->o.margin);
    *x0 = tile_start(key, DRAW_TILE_X, l->width, l->o.tile, l->o.margin);
}

void unet_loader_sample(const unet_loader *l, int64_t step, int slot, int *image, int *y0, int *x0) {
    permutation_cache pc = {-1, malloc((size_t)l->view.images * sizeof(int))};
    if (!pc.order) {
        *image = *y0 = *x0 = -1;
        return;
    }
    sample_at(l, &pc, step, slot, image, y0, x0);
    free(pc.order);
}

static int fill_batch(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, char *err,
                      size_t errlen) {
    const int T = l->o.tile, C = l->channels, ctx = l->o.augment_context;
    const size_t plane = (size_t)T * T;
    for (int b = 0; b < l->o.batch; b++) {
        int k, y0, x0;
        sample_at(l, &l->perm, step, b, &k, &y0, &x0);
        float *r = raw + (size_t)b * C * plane, *w = weight + (size_t)b * plane;
        int32_t *lab = label + (size_t)b * plane;
        if (!l->o.augment) {
            if (unet_data_window(&l->view, k, y0, x0, T, r, lab, w, l->scratch, err, errlen)) return -1;
            continue;
        }
        if (unet_data_window(&l->view, k, y0 - ctx, x0 - ctx, T + 2 * ctx, l->src_raw, l->src_label, l->src_weight,
                             l->scratch, err, errlen))
            return -1;
        unet_augment_args a = {C, T, ctx, l->src_raw, l->src_label, l->src_weight, r, lab, w,
                               unet_rng_key(sample_key(l, step, l->o.rank * l->o.batch + b), DRAW_AUGMENT, 0)};
        if (l->o.augment(l->o.augment_ctx, &a, err, errlen)) return -1;
    }
    return 0;
}

static void *prefetch_main(void *arg) {
    unet_loader *l = arg;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (l->want < 0 && !l->stop) pthread_cond_wait(&l->changed, &l->lock);
        if (l->stop) break;
        l->doing = l->want;
        l->want = -1;
        pthread_mutex_unlock(&l->lock);
        char err[512] = "";
        int rc = fill_batch(l, l->doing, l->raw, l->label, l->weight, err, sizeof err);
        pthread_mutex_lock(&l->lock);
        l->have = l->doing, l->have_rc = rc, l->doing = -1;
        memcpy(l->have_err, err, sizeof err);
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

int unet_loader_create(const unet_data_view *v, const unet_loader_opts *o, unet_loader **out, char *err,
                       size_t errlen) {
    *out = NULL;
    unet_dataset_info info;
    unet_dataset_get_info(v->ds, &info);
    const char *path = unet_dataset_path(v->ds);
    if (!info.has_label) {
        snprintf(err, errlen, "%s has no label dataset: training needs labels (name them with --label-key)", path);
        return -1;
    }
    if (o->world < 0 || o->rank < 0 || (o->rank > 0 && o->rank >= o->world)) {
        snprintf(err, errlen, "loader: rank %d of world %d: need 0 <= rank < world", o->rank, o->world);
        return -1;
    }
    if (o->batch < 1 || o->tile < 1 || o->margin < 0 || 2 * o->margin >= o->tile || o->augment_context < 0 ||
        v->images < 1 || v->rows < 1) {
        snprintf(err, errlen, "loader: batch %d, tile %d, margin %d, augment context %d on %d images of %d rows: "
                 "need batch >= 1, 0 <= 2 margin < tile, context >= 0 and a non-empty view",
                 o->batch, o->tile, o->margin, o->augment_context, v->images, v->rows);
        return -1;
    }
    unet_loader *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->view = *v;
    l->o = *o;
    if (!o->augment) l->o.augment_context = 0;
    l->channels = info.c, l->width = info.w;
    l->perm.epoch = -1;
    l->want = l->doing = l->have = -1;
    const int T = o->tile, S = T + 2 * l->o.augment_context, C = info.c;
    l->perm.order = malloc((size_t)v->images * sizeof(int));
    size_t scratch = unet_data_window_scratch(v, S);
    if (scratch && !(l->scratch = malloc(scratch))) goto oom;
    if (o->augment) {
        l->src_raw = malloc((size_t)C * S * S * sizeof(float));
        l->src_label = malloc((size_t)S * S * sizeof(int32_t));
        l->src_weight = malloc((size_t)S * S * sizeof(float));
        if (!l->src_raw || !l->src_label || !l->src_weight) goto oom;
    }
    /* Batches are made here and copied out, prefetched or not: one path. */
    l->raw = malloc((size_t)o->batch * C * T * T * sizeof(float));
    l->label = malloc((size_t)o->batch * T * T * sizeof(int32_t));
    l->weight = malloc((size_t)o->batch * T * T * sizeof(float));
    if (!l->perm.order || !l->raw || !l->label || !l->weight) goto oom;
    if (!o->no_prefetch) {
        pthread_mutex_init(&l->lock, NULL);
        pthread_cond_init(&l->changed, NULL);
        if (pthread_create(&l->thread, NULL, prefetch_main, l) != 0) {
            pthread_cond_destroy(&l->changed);
            pthread_mutex_destroy(&l->lock);
            unet_loader_free(l);
            snprintf(err, errlen, "loader: cannot start the prefetch thread: use --no-prefetch");
            return -1;
        }
        l->thread_started = 1;
    }
    *out = l;
    return 0;
oom:
    unet_loader_free(l);
    snprintf(err, errlen, "loader: out of memory for batches of %d x %d x %d x %d", o->batch, info.c, o->tile,
             o->tile);
    return -1;
}

void unet_loader_free(unet_loader *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->lock);
        l->stop = 1;
        pthread_cond_broadcast(&l->changed);
        pthread_mutex_unlock(&l->lock);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->changed);
        pthread_mutex_destroy(&l->lock);
    }
    free(l->perm.order);
    free(l->scratch);
    free(l->src_raw), free(l->src_label), free(l->src_weight);
    free(l->raw), free(l->label), free(l->weight);
    free(l);
}

static void copy_out(const unet_loader *l, float *raw, int32_t *label, float *weight) {
    const size_t n = (size_t)l->o.batch * l->o.tile * l->o.tile;
    memcpy(raw, l->raw, n * l->channels * sizeof(float));
    if (label) memcpy(label, l->label, n * sizeof(int32_t));
    if (weight) memcpy(weight, l->weight, n * sizeof(float));
}

int unet_loader_batch(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, char *err,
                      size_t errlen) {
    if (!l->thread_started) {
        if (fill_batch(l, step, l->raw, l->label, l->weight, err, errlen)) return -1;
        copy_out(l, raw, label, weight);
        return 0;
    }
    pthread_mutex_lock(&l->lock);
    for (;;) {
        int idle = l->doing < 0 && l->want < 0;
        if (idle && l->have == step) break;
        if (idle) {
            l->want = step;
            pthread_cond_broadcast(&l->changed);
        }
        pthread_cond_wait(&l->changed, &l->lock);
    }
    int rc = l->have_rc;
    if (rc) {
        snprintf(err, errlen, "%s", l->have_err);
        l->have = -1; /* a retry reads again */
    } else {
        copy_out(l, raw, label, weight);
        l->want = step + 1;
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->lock);
    return rc;
}

/* ---- evaluation tiles ------------------------------------------------------------- */

static int windows_along(int extent, int out) { return extent <= out ? 1 : (extent + out - 1) / out; }

/* Output window i along an axis, moved back to end at the edge; centred when the image is smaller. */
static int window_start(int i, int extent, int out) {
    if (extent <= out) return -((out - extent) / 2);
    int s = i * out;
    return s + out > extent ? extent - out : s;
}

int unet_eval_tiles_init(unet_eval_tiles *it, const unet_data_view *v, int tile, int margin, int batch, char *err,
                         size_t errlen) {
    memset(it, 0, sizeof *it);
    if (batch < 1 || tile < 1 || margin < 0 || 2 * margin >= tile) {
        snprintf(err, errlen, "evaluation tiles: batch %d, tile %d, margin %d: need batch >= 1 and 0 <= 2 margin < tile",
                 batch, tile, margin);
        return -1;
    }
    it->view = *v;
    it->tile = tile, it->margin = margin, it->batch = batch;
    size_t scratch = unet_data_window_scratch(v, tile);
    if (scratch && !(it->scratch = malloc(scratch))) {
        snprintf(err, errlen, "evaluation tiles: out of memory");
        return -1;
    }
    return 0;
}

static int view_width(const unet_data_view *v) {
    unet_dataset_info info;
    unet_dataset_get_info(v->ds, &info);
    return info.w;
}

int unet_eval_tiles_count(const unet_eval_tiles *it) {
    int out = it->tile - 2 * it->margin;
    return it->view.images * windows_along(it->view.rows, out) * windows_along(view_width(&it->view), out);
}

int unet_eval_tiles_next(unet_eval_tiles *it, float *raw, int32_t *label, float *weight, int *count, char *err,
                         size_t errlen) {
    const int T = it->tile, out = T - 2 * it->margin, W = view_width(&it->view);
    const int ny = windows_along(it->view.rows, out), nx = windows_along(W, out);
    unet_dataset_info info;
    unet_dataset_get_info(it->view.ds, &info);
    const size_t plane = (size_t)T * T;
    *count = 0;
    while (*count < it->batch && it->image < it->view.images) {
        int b = *count;
        int y0 = window_start(it->ty, it->view.rows, out) - it->margin;
        int x0 = window_start(it->tx, W, out) - it->margin;
        if (unet_data_window(&it->view, it->image, y0, x0, T, raw ? raw + (size_t)b * info.c * plane : NULL,
                             label ? label + (size_t)b * plane : NULL, weight ? weight + (size_t)b * plane : NULL,
                             it->scratch, err, errlen))
            return -1;
        (*count)++;
        if (++it->tx == nx) {
            it->tx = 0;
            if (++it->ty == ny) it->ty = 0, it->image++;
        }
    }
    return 0;
}

void unet_eval_tiles_free(unet_eval_tiles *it) {
    free(it->scratch);
    it->scratch = NULL;
}
