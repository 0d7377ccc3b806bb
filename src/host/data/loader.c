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

/* What one thread needs to prepare samples: its own permutation cache and
 * read/augmentation buffers, so workers share nothing but the ring. */
typedef struct {
    permutation_cache perm;
    void *scratch;
    float *src_raw, *src_weight; /* augmentation source windows */
    int32_t *src_label;
} sample_worker;

/* A batch being prepared: its B slots are handed out to workers one by one. */
typedef struct {
    int64_t step;          /* the step it holds or is filling; -1: unassigned */
    int claimed, finished; /* slots handed out, slots done */
    int rc;
    char err[512];
    float *raw;
    int32_t *label;
    float *weight;
    unsigned char *records; /* deferred augmentation: each slot's draws */
} batch_buffer;

struct unet_loader {
    unet_data_view view;
    unet_loader_opts o;
    int channels, width;
    int size; /* side of what a slot holds: the tile, or with o.draw its source window */

    /* Steps base .. base + ring_size - 1 are prepared ahead in ring[step % ring_size]
     * by n_threads workers (0: on the caller's thread, in ring[0] with caller). */
    int n_threads, ring_size;
    sample_worker caller, *workers;
    batch_buffer *ring;
    pthread_t *threads;
    int threads_started;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    int64_t base;
    int in_flight, stop;
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

/* Sample `slot` of step `step` into its place in a batch buffer. */
static int fill_sample(const unet_loader *l, sample_worker *ws, int64_t step, int b, batch_buffer *buf, char *err,
                       size_t errlen) {
    const int T = l->o.tile, C = l->channels, ctx = l->o.augment_context;
    int k, y0, x0;
    sample_at(l, &ws->perm, step, b, &k, &y0, &x0);
    const size_t slot_plane = (size_t)l->size * l->size;
    float *r = buf->raw + (size_t)b * C * slot_plane, *w = buf->weight + (size_t)b * slot_plane;
    int32_t *lab = buf->label + (size_t)b * slot_plane;
    const uint64_t key = unet_rng_key(sample_key(l, step, l->o.rank * l->o.batch + b), DRAW_AUGMENT, 0);
    if (l->o.draw) {
        /* deferred: the source window itself is the slot's content, the draws go beside it */
        if (unet_data_window(&l->view, k, y0 - ctx, x0 - ctx, l->size, r, lab, w, ws->scratch, err, errlen)) return -1;
        return l->o.draw(l->o.augment_ctx, key, buf->records + (size_t)b * l->o.record_bytes, err, errlen);
    }
    if (!l->o.augment) return unet_data_window(&l->view, k, y0, x0, T, r, lab, w, ws->scratch, err, errlen);
    if (unet_data_window(&l->view, k, y0 - ctx, x0 - ctx, T + 2 * ctx, ws->src_raw, ws->src_label, ws->src_weight,
                         ws->scratch, err, errlen))
        return -1;
    unet_augment_args a = {C, T, ctx, ws->src_raw, ws->src_label, ws->src_weight, r, lab, w, key};
    return l->o.augment(l->o.augment_ctx, &a, err, errlen);
}

static void assign(batch_buffer *b, int64_t step) {
    b->step = step, b->claimed = b->finished = b->rc = 0, b->err[0] = 0;
}

/* A batch is ready when every slot handed out is done and either all were
 * handed out or one failed (the rest are then not started). */
static int batch_ready(const unet_loader *l, const batch_buffer *b) {
    return b->finished == b->claimed && (b->claimed == l->o.batch || b->rc);
}

typedef struct {
    unet_loader *l;
    int index;
} worker_arg;

/* Workers take the earliest unclaimed slot of the window, so the batch the
 * trainer waits for next is finished first and later ones fill idle time. */
static void *worker_main(void *arg) {
    unet_loader *l = ((worker_arg *)arg)->l;
    sample_worker *ws = &l->workers[((worker_arg *)arg)->index];
    free(arg);
    pthread_mutex_lock(&l->lock);
    while (!l->stop) {
        batch_buffer *b = NULL;
        for (int k = 0; k < l->ring_size && !b && l->base >= 0; k++) {
            int64_t st = l->base + k;
            batch_buffer *c = &l->ring[st % l->ring_size];
            if (c->step == st && c->claimed < l->o.batch && !c->rc) b = c;
        }
        if (!b) {
            pthread_cond_wait(&l->work, &l->lock);
            continue;
        }
        int64_t step = b->step;
        int slot = b->claimed++;
        l->in_flight++;
        pthread_mutex_unlock(&l->lock);
        char err[512] = "";
        int rc = fill_sample(l, ws, step, slot, b, err, sizeof err);
        pthread_mutex_lock(&l->lock);
        l->in_flight--;
        if (rc && !b->rc) b->rc = rc, memcpy(b->err, err, sizeof err);
        b->finished++;
        pthread_cond_broadcast(&l->done);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

static int alloc_worker(sample_worker *ws, const unet_data_view *v, int images, int augment, int S, int C) {
    ws->perm.epoch = -1;
    ws->perm.order = malloc((size_t)images * sizeof(int));
    size_t scratch = unet_data_window_scratch(v, S);
    if (scratch && !(ws->scratch = malloc(scratch))) return -1;
    if (augment) {
        ws->src_raw = malloc((size_t)C * S * S * sizeof(float));
        ws->src_label = malloc((size_t)S * S * sizeof(int32_t));
        ws->src_weight = malloc((size_t)S * S * sizeof(float));
        if (!ws->src_raw || !ws->src_label || !ws->src_weight) return -1;
    }
    return ws->perm.order ? 0 : -1;
}

static void free_worker(sample_worker *ws) {
    free(ws->perm.order);
    free(ws->scratch);
    free(ws->src_raw), free(ws->src_label), free(ws->src_weight);
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
    if (o->draw && (o->augment || o->record_bytes == 0 || o->record_bytes % 8)) {
        snprintf(err, errlen,
                 "loader: a deferred augmentation (draw) takes no augment hook and a record of a "
                 "positive multiple of 8 bytes, got %zu",
                 o->record_bytes);
        return -1;
    }
    if (o->batch < 1 || o->tile < 1 || o->margin < 0 || 2 * o->margin >= o->tile || o->augment_context < 0 ||
        o->workers < 0 || v->images < 1 || v->rows < 1) {
        snprintf(err, errlen,
                 "loader: batch %d, tile %d, margin %d, augment context %d, %d workers on %d images of "
                 "%d rows: need batch >= 1, 0 <= 2 margin < tile, context >= 0, workers >= 0 and a non-empty view",
                 o->batch, o->tile, o->margin, o->augment_context, o->workers, v->images, v->rows);
        return -1;
    }
    unet_loader *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->view = *v;
    l->o = *o;
    if (!o->augment && !o->draw) l->o.augment_context = 0;
    l->channels = info.c, l->width = info.w;
    l->base = -1;
    const int T = o->tile, S = T + 2 * l->o.augment_context, C = info.c;
    l->size = o->draw ? S : T;
    const size_t slot_plane = (size_t)l->size * l->size;
    l->n_threads = o->no_prefetch ? 0 : o->workers > 1 ? o->workers : 1;
    /* enough batches ahead that every worker has a slot to fill while the trainer holds one */
    l->ring_size = l->n_threads ? (l->n_threads + o->batch - 1) / o->batch + 1 : 1;
    if (alloc_worker(&l->caller, v, v->images, o->augment != NULL, S, C)) goto oom;
    l->ring = calloc((size_t)l->ring_size, sizeof *l->ring);
    if (!l->ring) goto oom;
    for (int i = 0; i < l->ring_size; i++) {
        batch_buffer *b = &l->ring[i];
        b->step = -1;
        b->raw = malloc((size_t)o->batch * C * slot_plane * sizeof(float));
        b->label = malloc((size_t)o->batch * slot_plane * sizeof(int32_t));
        b->weight = malloc((size_t)o->batch * slot_plane * sizeof(float));
        b->records = o->draw ? malloc((size_t)o->batch * o->record_bytes) : NULL;
        if (!b->raw || !b->label || !b->weight || (o->draw && !b->records)) goto oom;
    }
    if (l->n_threads) {
        l->workers = calloc((size_t)l->n_threads, sizeof *l->workers);
        l->threads = calloc((size_t)l->n_threads, sizeof *l->threads);
        if (!l->workers || !l->threads) goto oom;
        for (int i = 0; i < l->n_threads; i++)
            if (alloc_worker(&l->workers[i], v, v->images, o->augment != NULL, S, C)) goto oom;
        pthread_mutex_init(&l->lock, NULL);
        pthread_cond_init(&l->work, NULL);
        pthread_cond_init(&l->done, NULL);
        for (int i = 0; i < l->n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (wa) *wa = (worker_arg){l, i};
            if (!wa || pthread_create(&l->threads[i], NULL, worker_main, wa) != 0) {
                free(wa);
                unet_loader_free(l);
                snprintf(err, errlen, "loader: cannot start worker thread %d of %d: use fewer --workers, or 0", i + 1,
                         o->workers);
                return -1;
            }
            l->threads_started++;
        }
    }
    *out = l;
    return 0;
oom:
    unet_loader_free(l);
    {
        int side = o->draw ? o->tile + 2 * o->augment_context : o->tile;
        snprintf(err, errlen, "loader: out of memory for batches of %d x %d x %d x %d", o->batch, info.c, side, side);
    }
    return -1;
}

void unet_loader_free(unet_loader *l) {
    if (!l) return;
    if (l->n_threads && l->threads) {
        pthread_mutex_lock(&l->lock);
        l->stop = 1;
        pthread_cond_broadcast(&l->work);
        pthread_mutex_unlock(&l->lock);
        for (int i = 0; i < l->threads_started; i++) pthread_join(l->threads[i], NULL);
        pthread_cond_destroy(&l->work);
        pthread_cond_destroy(&l->done);
        pthread_mutex_destroy(&l->lock);
    }
    free_worker(&l->caller);
    for (int i = 0; l->workers && i < l->n_threads; i++) free_worker(&l->workers[i]);
    free(l->workers);
    free(l->threads);
    for (int i = 0; l->ring && i < l->ring_size; i++)
        free(l->ring[i].raw), free(l->ring[i].label), free(l->ring[i].weight), free(l->ring[i].records);
    free(l->ring);
    free(l);
}

static void copy_out(const unet_loader *l, const batch_buffer *b, float *raw, int32_t *label, float *weight,
                     void *records) {
    const size_t n = (size_t)l->o.batch * l->size * l->size;
    memcpy(raw, b->raw, n * l->channels * sizeof(float));
    if (label) memcpy(label, b->label, n * sizeof(int32_t));
    if (weight) memcpy(weight, b->weight, n * sizeof(float));
    if (records) memcpy(records, b->records, (size_t)l->o.batch * l->o.record_bytes);
}

static int take_batch(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, void *records, char *err,
                      size_t errlen) {
    if (!l->n_threads) {
        batch_buffer *b = &l->ring[0];
        for (int s = 0; s < l->o.batch; s++)
            if (fill_sample(l, &l->caller, step, s, b, err, errlen)) return -1;
        copy_out(l, b, raw, label, weight, records);
        return 0;
    }
    pthread_mutex_lock(&l->lock);
    batch_buffer *b = &l->ring[step % l->ring_size];
    if (step != l->base || b->step != step) {
        /* Not the next step (the first call, a resume, a jump): drop what was
         * prepared, once no worker is writing into it, and start here. */
        for (int i = 0; i < l->ring_size; i++) l->ring[i].step = -1;
        while (l->in_flight) pthread_cond_wait(&l->done, &l->lock);
        l->base = step;
        for (int k = 0; k < l->ring_size; k++) assign(&l->ring[(step + k) % l->ring_size], step + k);
        pthread_cond_broadcast(&l->work);
    }
    while (!batch_ready(l, b)) pthread_cond_wait(&l->done, &l->lock);
    int rc = b->rc;
    if (rc) {
        snprintf(err, errlen, "%s", b->err);
        assign(b, step); /* a retry reads again */
    } else {
        copy_out(l, b, raw, label, weight, records);
        l->base = step + 1;
        assign(b, step + l->ring_size);
    }
    pthread_cond_broadcast(&l->work);
    pthread_mutex_unlock(&l->lock);
    return rc;
}

int unet_loader_batch(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, char *err,
                      size_t errlen) {
    if (l->o.draw) {
        snprintf(err, errlen, "loader: this loader defers its augmentation; take its batches with unet_loader_sources");
        return -1;
    }
    return take_batch(l, step, raw, label, weight, NULL, err, errlen);
}

int unet_loader_sources(unet_loader *l, int64_t step, float *raw, int32_t *label, float *weight, void *records,
                        char *err, size_t errlen) {
    if (!l->o.draw || !records) {
        snprintf(err, errlen,
                 "loader: unet_loader_sources needs a loader with a deferred augmentation (draw) and a "
                 "records buffer");
        return -1;
    }
    return take_batch(l, step, raw, label, weight, records, err, errlen);
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
        snprintf(err, errlen,
                 "evaluation tiles: batch %d, tile %d, margin %d: need batch >= 1 and 0 <= 2 margin < tile", batch,
                 tile, margin);
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
