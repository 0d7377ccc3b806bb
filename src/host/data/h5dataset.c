/* HDF5 datasets: open, validate, read images and mirrored windows.
 *
 * Every check a file can fail runs at open, so a training run never stops at
 * step 10000 on a bad label. Small files (the usual case: tens of 512x512
 * images) are read into memory once, converted to float32 raw and int32
 * labels; larger ones are read per window with hyperslabs. The default
 * libhdf5 is not thread-safe, so every HDF5 call in the process that goes
 * through here holds one lock. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "host/common/util.h"
#include "unet/data.h"
#include "unet/tiling.h"
#include "host/data/hdf5_lock.h"

static pthread_mutex_t hdf5_lock = PTHREAD_MUTEX_INITIALIZER;

void unet_hdf5_lock(void) { pthread_mutex_lock(&hdf5_lock); }
void unet_hdf5_unlock(void) { pthread_mutex_unlock(&hdf5_lock); }

enum { RAW_U8, RAW_U16, RAW_F32 };
static const char *const raw_type_names[] = {"uint8", "uint16", "float32"};

/* One of raw/label/weight/instances as stored: its id, rank and dims. */
typedef struct {
    hid_t id; /* -1 when absent */
    int rank;
    hsize_t dims[4];
    const char *key;
} h5_array;

struct unet_dataset {
    char *path;
    hid_t file;
    h5_array raw, label, weight, instances;
    int raw_kind;
    float raw_scale; /* the integer type's maximum; 1 for float32 */
    int n, c, h, w;
    float *raw_cache;     /* (N, C, H, W), NULL when read per window */
    int32_t *label_cache; /* (N, H, W) */
    float *weight_cache;  /* (N, H, W), NULL when the file has no weight */
};

/* ---- small helpers ---------------------------------------------------- */

static void format_dims(int rank, const hsize_t *dims, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = 0;
    used += (size_t)snprintf(buf + used, len - used, "(");
    for (int i = 0; i < rank && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? "," : "", (unsigned long long)dims[i]);
    if (used < len) snprintf(buf + used, len - used, ")");
}

typedef struct {
    char *buf;
    size_t len, used;
    int count;
} name_list;

static herr_t collect_dataset(hid_t group, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    name_list *l = data;
    hid_t obj = H5Oopen(group, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    if (H5Iget_type(obj) == H5I_DATASET && l->used + 1 < l->len) {
        l->used += (size_t)snprintf(l->buf + l->used, l->len - l->used, "%s%s", l->count ? ", " : "", name);
        if (l->used >= l->len) l->used = l->len - 1;
        l->count++;
    }
    H5Oclose(obj);
    return 0;
}

/* "raw, volumes/label, ..." or "no datasets": what the user could have meant. */
static void list_datasets(hid_t file, char *buf, size_t len) {
    name_list l = {buf, len, 0, 0};
    buf[0] = 0;
    H5Lvisit(file, H5_INDEX_NAME, H5_ITER_NATIVE, collect_dataset, &l);
    if (!l.count) snprintf(buf, len, "no datasets");
}

/* Every path component must exist before H5Dopen2, or HDF5 fails noisily. */
static int link_exists(hid_t file, const char *key) {
    char part[512];
    size_t n = strlen(key);
    if (n == 0 || n >= sizeof part) return 0;
    for (size_t i = 1; i <= n; i++) {
        if (key[i] != '/' && key[i] != 0) continue;
        memcpy(part, key, i);
        part[i] = 0;
        if (H5Lexists(file, part, H5P_DEFAULT) <= 0) return 0;
    }
    return 1;
}

/* A chunk larger than the array's fixed size, which libhdf5 never writes, makes libhdf5 1.10 read past its own
 * buffers. */
static int check_chunks(const unet_dataset *ds, const h5_array *a, hid_t dcpl, const hsize_t *maxdims, char *err,
                        size_t errlen) {
    if (H5Pget_layout(dcpl) != H5D_CHUNKED) return 0;
    hsize_t chunk[4] = {0};
    int bad = H5Pget_chunk(dcpl, 4, chunk) != a->rank;
    for (int i = 0; i < a->rank && !bad; i++)
        bad = chunk[i] == 0 || (maxdims[i] != H5S_UNLIMITED && chunk[i] > maxdims[i]);
    if (!bad) return 0;
    char shape[96], chunks[96];
    format_dims(a->rank, a->dims, shape, sizeof shape);
    format_dims(a->rank, chunk, chunks, sizeof chunks);
    unet_errorf(err, errlen, "%s: dataset \"%s\" is damaged: chunks of %s do not fit its shape %s", ds->path, a->key,
                chunks, shape);
    return -1;
}

/* A filter this libhdf5 lacks (blosc, lz4, ...) would be an opaque failure later. *ratio: the most bytes the
 * filters make of one stored byte, 1 without any, gzip's 1032 with gzip, shuffle and checksums; 0 when unbounded
 * (scale-offset, szip). */
static int check_filters(const unet_dataset *ds, const h5_array *a, hid_t dcpl, double *ratio, char *err,
                         size_t errlen) {
    *ratio = 1;
    int nf = H5Pget_nfilters(dcpl);
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, conf = 0;
        size_t nelem = 0;
        char fname[64] = "";
        H5Z_filter_t f = H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelem, NULL, sizeof fname, fname, &conf);
        if (f >= 0 && H5Zfilter_avail(f) <= 0) {
            unet_errorf(err, errlen,
                        "%s: dataset \"%s\" is compressed with filter %d (%s), which this libhdf5 cannot read: rewrite "
                        "it with gzip, e.g. h5repack -f %s:GZIP=4 %s out.h5",
                        ds->path, a->key, (int)f, fname[0] ? fname : "unknown", a->key, ds->path);
            return -1;
        }
        if (f == H5Z_FILTER_DEFLATE)
            *ratio = *ratio ? 1032 : 0;
        else if (f != H5Z_FILTER_SHUFFLE && f != H5Z_FILTER_FLETCHER32)
            *ratio = 0;
    }
    return 0;
}

/* The bytes the array claims against those the file stores for it, before the loader allocates what it claims:
 * a damaged header, or a file cut short or never finished, is one line here instead. */
static int check_stored_bytes(const unet_dataset *ds, const h5_array *a, hid_t dcpl, double ratio, char *err,
                              size_t errlen) {
    if (H5Pget_layout(dcpl) == H5D_VIRTUAL || H5Pget_external_count(dcpl) > 0) return 0; /* data in other files */
    double claimed = 1;
    for (int i = 0; i < a->rank; i++) claimed *= (double)a->dims[i];
    hid_t t = H5Dget_type(a->id);
    claimed *= (double)H5Tget_size(t);
    H5Tclose(t);
    hsize_t stored = H5Dget_storage_size(a->id), file = 0;
    H5Fget_filesize(ds->file, &file);
    if (claimed == 0 || (stored <= file && (ratio == 0 || claimed <= ratio * (double)stored))) return 0;
    char shape[96];
    format_dims(a->rank, a->dims, shape, sizeof shape);
    unet_errorf(err, errlen,
                "%s: dataset \"%s\" of shape %s needs %.0f bytes but the file stores %llu for it: the "
                "file is damaged or was not written to the end",
                ds->path, a->key, shape, claimed, (unsigned long long)stored);
    return -1;
}

/* How the array is stored, checked before anything is read. */
static int check_storage(const unet_dataset *ds, const h5_array *a, const hsize_t *maxdims, char *err, size_t errlen) {
    hid_t dcpl = H5Dget_create_plist(a->id);
    double ratio;
    int rc = check_chunks(ds, a, dcpl, maxdims, err, errlen) || check_filters(ds, a, dcpl, &ratio, err, errlen) ||
                     check_stored_bytes(ds, a, dcpl, ratio, err, errlen)
                 ? -1
                 : 0;
    H5Pclose(dcpl);
    return rc;
}

static int open_array(unet_dataset *ds, h5_array *a, const char *key, int required, char *err, size_t errlen) {
    a->id = -1;
    a->key = key;
    if (!link_exists(ds->file, key)) {
        if (!required) return 0;
        char names[400];
        list_datasets(ds->file, names, sizeof names);
        unet_errorf(err, errlen, "%s has no dataset \"%s\" (it has: %s): name the right one with --%s-key", ds->path,
                    key, names,
                    a == &ds->raw      ? "raw"
                    : a == &ds->label  ? "label"
                    : a == &ds->weight ? "weight"
                                       : "instances");
        return -1;
    }
    /* Chunk cache for random windows of per-image or per-tile chunks. */
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    H5Pset_chunk_cache(dapl, 12421, (size_t)64 << 20, 1.0);
    a->id = H5Dopen2(ds->file, key, dapl);
    H5Pclose(dapl);
    if (a->id < 0) {
        snprintf(err, errlen, "%s: \"%s\" is not a dataset (a group?): name a dataset with the %s key", ds->path, key,
                 key);
        return -1;
    }
    hid_t space = H5Dget_space(a->id);
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank < 0 || rank > 4) {
        H5Sclose(space);
        snprintf(err, errlen, "%s: dataset \"%s\" has %d dimensions; expected (N,H,W), (N,C,H,W) or (H,W)", ds->path,
                 key, rank);
        return -1;
    }
    a->rank = rank;
    hsize_t maxdims[4];
    H5Sget_simple_extent_dims(space, a->dims, maxdims);
    H5Sclose(space);
    for (int i = 0; i < rank; i++)
        if (a->dims[i] > INT_MAX) { /* sizes are ints from here on */
            char shape[96];
            format_dims(rank, a->dims, shape, sizeof shape);
            unet_errorf(err, errlen, "%s: dataset \"%s\" has shape %s, over 2^31 - 1 along an axis", ds->path, key,
                        shape);
            return -1;
        }
    return check_storage(ds, a, maxdims, err, errlen);
}

static void close_array(h5_array *a) {
    if (a->id >= 0) H5Dclose(a->id);
    a->id = -1;
}

/* Shape of a per-pixel dataset (label, weight, instances) against raw's
 * (N, H, W); (N,1,H,W) and, for a single image, (H,W) are accepted too. */
static int check_pixel_shape(const unet_dataset *ds, const h5_array *a, char *err, size_t errlen) {
    hsize_t n, h, w;
    char got[96], want[96];
    format_dims(a->rank, a->dims, got, sizeof got);
    format_dims(ds->raw.rank, ds->raw.dims, want, sizeof want);
    if (a->rank == 2) {
        n = 1, h = a->dims[0], w = a->dims[1];
    } else if (a->rank == 3) {
        n = a->dims[0], h = a->dims[1], w = a->dims[2];
    } else if (a->rank == 4 && a->dims[1] == 1) {
        n = a->dims[0], h = a->dims[2], w = a->dims[3];
    } else {
        snprintf(err, errlen, "%s: dataset \"%s\" has shape %s; expected (N,H,W) = (%d,%d,%d) to match \"%s\" %s",
                 ds->path, a->key, got, ds->n, ds->h, ds->w, ds->raw.key, want);
        return -1;
    }
    if (n == (hsize_t)ds->n && h == (hsize_t)ds->h && w == (hsize_t)ds->w) return 0;
    /* Same sizes in another order: the usual cause is a channels-last or transposed array. */
    hsize_t a3[3] = {n, h, w}, b3[3] = {(hsize_t)ds->n, (hsize_t)ds->h, (hsize_t)ds->w};
    int used[3] = {0}, permuted = 1;
    for (int i = 0; i < 3 && permuted; i++) {
        int found = 0;
        for (int j = 0; j < 3 && !found; j++)
            if (!used[j] && a3[i] == b3[j]) used[j] = found = 1;
        permuted = found;
    }
    if (permuted) {
        snprintf(err, errlen,
                 "%s: dataset \"%s\" has shape %s, the sizes of \"%s\" %s in another axis order: write both as "
                 "(N,H,W) (numpy.transpose)",
                 ds->path, a->key, got, ds->raw.key, want);
        return -1;
    }
    char which[64] = "";
    size_t used_len = 0;
    static const char *const dim_names[3] = {"N", "H", "W"};
    for (int i = 0; i < 3; i++)
        if (a3[i] != b3[i])
            used_len +=
                (size_t)snprintf(which + used_len, sizeof which - used_len, "%s%s %llu vs %llu", used_len ? ", " : "",
                                 dim_names[i], (unsigned long long)a3[i], (unsigned long long)b3[i]);
    snprintf(err, errlen, "%s: dataset \"%s\" has shape %s but \"%s\" has %s (%s): they must have the same N, H, W",
             ds->path, a->key, got, ds->raw.key, want, which);
    return -1;
}

/* Selects image `index`, rows [row0, row0+rows), columns [x0, x0+cols) (all
 * channels) and reads it as mem_type into buf. Caller holds hdf5_lock. */
static int read_rect_locked(const h5_array *a, hid_t mem_type, int index, int row0, int rows, int x0, int cols,
                            void *buf) {
    hsize_t start[4] = {0}, count[4] = {0};
    int r = a->rank;
    if (r >= 3) start[0] = (hsize_t)index, count[0] = 1;
    if (r == 4) start[1] = 0, count[1] = a->dims[1];
    start[r - 2] = (hsize_t)row0, count[r - 2] = (hsize_t)rows;
    start[r - 1] = (hsize_t)x0, count[r - 1] = (hsize_t)cols;
    hsize_t total = 1;
    for (int i = 0; i < r; i++) total *= count[i];
    hid_t fspace = H5Dget_space(a->id);
    hid_t mspace = H5Screate_simple(1, &total, NULL);
    herr_t rc = H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
    if (rc >= 0) rc = H5Dread(a->id, mem_type, mspace, fspace, H5P_DEFAULT, buf);
    H5Sclose(mspace);
    H5Sclose(fspace);
    return rc < 0 ? -1 : 0;
}

static int read_rect(const unet_dataset *ds, const h5_array *a, hid_t mem_type, int index, int row0, int rows, int x0,
                     int cols, void *buf, char *err, size_t errlen) {
    pthread_mutex_lock(&hdf5_lock);
    int rc = read_rect_locked(a, mem_type, index, row0, rows, x0, cols, buf);
    pthread_mutex_unlock(&hdf5_lock);
    if (rc < 0)
        snprintf(err, errlen, "%s: reading rows %d..%d of image %d of \"%s\" failed (H5Dread): the file may be damaged",
                 ds->path, row0, row0 + rows - 1, index, a->key);
    return rc;
}

/* raw (C, rows, cols) as float32 in [0,1] for integer types. */
static int read_raw_rect(const unet_dataset *ds, int index, int row0, int rows, int x0, int cols, float *buf, char *err,
                         size_t errlen) {
    if (read_rect(ds, &ds->raw, H5T_NATIVE_FLOAT, index, row0, rows, x0, cols, buf, err, errlen)) return -1;
    if (ds->raw_kind != RAW_F32) {
        size_t count = (size_t)ds->c * rows * cols;
        /* Division, not multiplication by the reciprocal: the same bits as numpy's x / 255. */
        for (size_t i = 0; i < count; i++) buf[i] /= ds->raw_scale;
    }
    return 0;
}

/* ---- validation ----------------------------------------------------------- */

typedef struct {
    int32_t min, max;
    int only_0_255;
    int bad_index, bad_row, bad_col; /* first label outside the allowed range */
    int32_t bad_value;
} label_scan;

static void scan_labels(label_scan *s, const int32_t *lab, int index, int row0, int rows, int w, int classes) {
    int limit = classes < 2 ? 2 : classes;
    for (int y = 0; y < rows; y++)
        for (int x = 0; x < w; x++) {
            int32_t v = lab[(size_t)y * w + x];
            if (v < s->min) s->min = v;
            if (v > s->max) s->max = v;
            if (v != 0 && v != 255) s->only_0_255 = 0;
            if (classes > 0 && (v < 0 || v >= limit) && s->bad_index < 0) {
                s->bad_index = index, s->bad_row = row0 + y, s->bad_col = x, s->bad_value = v;
            }
        }
}

static int report_labels(const unet_dataset *ds, const label_scan *s, int classes, char *err, size_t errlen) {
    if (classes <= 0 || s->bad_index < 0) return 0;
    int limit = classes < 2 ? 2 : classes;
    if (s->only_0_255 && s->max == 255) {
        snprintf(err, errlen,
                 "%s: dataset \"%s\": labels are {0,255}: use --classes 2 with a mask converted to {0,1} "
                 "(label = (label > 0).astype(numpy.uint8)), e.g. by the scripts in datasets/",
                 ds->path, ds->label.key);
    } else if (s->min < 0) {
        snprintf(err, errlen,
                 "%s: dataset \"%s\" has label %d (image %d, row %d, column %d); labels must be in [0, %d): "
                 "remap negative labels",
                 ds->path, ds->label.key, (int)s->bad_value, s->bad_index, s->bad_row, s->bad_col, limit);
    } else {
        snprintf(err, errlen,
                 "%s: dataset \"%s\" has labels up to %d (first outside the range: %d at image %d, row %d, column "
                 "%d), outside [0, %d): use --classes %d, or remap the labels",
                 ds->path, ds->label.key, (int)s->max, (int)s->bad_value, s->bad_index, s->bad_row, s->bad_col, limit,
                 (int)s->max + 1);
    }
    return -1;
}

static int check_finite_raw(const unet_dataset *ds, const float *raw, int index, int row0, int rows, char *err,
                            size_t errlen) {
    if (ds->raw_kind != RAW_F32) return 0;
    size_t plane = (size_t)rows * ds->w;
    for (int c = 0; c < ds->c; c++)
        for (size_t i = 0; i < plane; i++) {
            float v = raw[c * plane + i];
            if (!isfinite(v)) {
                snprintf(err, errlen,
                         "%s: dataset \"%s\" has %s at image %d, channel %d, row %d, column %d: replace non-finite "
                         "values (numpy.nan_to_num) before training",
                         ds->path, ds->raw.key, isnan(v) ? "NaN" : "Inf", index, c, row0 + (int)(i / ds->w),
                         (int)(i % ds->w));
                return -1;
            }
        }
    return 0;
}

static int check_weights(const unet_dataset *ds, const float *wt, int index, int row0, int rows, char *err,
                         size_t errlen) {
    size_t plane = (size_t)rows * ds->w;
    for (size_t i = 0; i < plane; i++)
        if (!isfinite(wt[i]) || wt[i] < 0) {
            snprintf(err, errlen,
                     "%s: dataset \"%s\" has weight %g at image %d, row %d, column %d: weights must be finite and >= 0",
                     ds->path, ds->weight.key, (double)wt[i], index, row0 + (int)(i / ds->w), (int)(i % ds->w));
            return -1;
        }
    return 0;
}

static int check_dtypes(unet_dataset *ds, char *err, size_t errlen) {
    hid_t t = H5Dget_type(ds->raw.id);
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(t) : H5T_SGN_NONE;
    H5Tclose(t);
    if (cls == H5T_INTEGER && sign == H5T_SGN_NONE && size == 1) {
        ds->raw_kind = RAW_U8, ds->raw_scale = 255.0f;
    } else if (cls == H5T_INTEGER && sign == H5T_SGN_NONE && size == 2) {
        ds->raw_kind = RAW_U16, ds->raw_scale = 65535.0f;
    } else if (cls == H5T_FLOAT && size == 4) {
        ds->raw_kind = RAW_F32, ds->raw_scale = 1.0f;
    } else {
        snprintf(err, errlen,
                 "%s: dataset \"%s\" is %s%zu-bit %s; raw must be uint8, uint16 or float32: convert it "
                 "(numpy .astype)",
                 ds->path, ds->raw.key, cls == H5T_INTEGER ? (sign == H5T_SGN_NONE ? "unsigned " : "signed ") : "",
                 size * 8,
                 cls == H5T_INTEGER ? "integer"
                 : cls == H5T_FLOAT ? "float"
                                    : "non-numeric data");
        return -1;
    }
    const h5_array *ints[2] = {&ds->label, &ds->instances};
    for (int i = 0; i < 2; i++) {
        if (ints[i]->id < 0) continue;
        t = H5Dget_type(ints[i]->id);
        cls = H5Tget_class(t);
        H5Tclose(t);
        if (cls != H5T_INTEGER) {
            snprintf(err, errlen,
                     "%s: dataset \"%s\" is not an integer type; %s must be integers: convert it (numpy "
                     ".astype(numpy.uint8) or int32)",
                     ds->path, ints[i]->key, i == 0 ? "labels" : "instance ids");
            return -1;
        }
    }
    if (ds->weight.id >= 0) {
        t = H5Dget_type(ds->weight.id);
        cls = H5Tget_class(t);
        size = H5Tget_size(t);
        H5Tclose(t);
        if (cls != H5T_FLOAT || size != 4) {
            snprintf(err, errlen,
                     "%s: dataset \"%s\" is not float32; weights must be float32: convert it (numpy "
                     ".astype(numpy.float32))",
                     ds->path, ds->weight.key);
            return -1;
        }
    }
    return 0;
}

/* Reads every image once: into the cache when there is one, else through a
 * block of rows at a time, checking raw, labels and weights as it goes. */
static int scan_all(unet_dataset *ds, int classes, char *err, size_t errlen) {
    int cached = ds->raw_cache != NULL;
    size_t plane = (size_t)ds->h * ds->w;
    int block = cached ? ds->h : (int)((size_t)(16 << 20) / ((size_t)ds->w * ((size_t)ds->c + 2)));
    if (block < 1) block = 1;
    if (block > ds->h) block = ds->h;
    float *raw = NULL, *wt = NULL;
    int32_t *lab = NULL;
    if (!cached) {
        raw = malloc((size_t)block * ds->w * ds->c * sizeof(float));
        lab = malloc((size_t)block * ds->w * sizeof(int32_t));
        wt = malloc((size_t)block * ds->w * sizeof(float));
        if (!raw || !lab || !wt) {
            free(raw), free(lab), free(wt);
            snprintf(err, errlen, "%s: out of memory reading %d rows of %d columns", ds->path, block, ds->w);
            return -1;
        }
    }
    label_scan ls = {INT32_MAX, INT32_MIN, 1, -1, 0, 0, 0};
    int rc = 0;
    for (int i = 0; i < ds->n && !rc; i++)
        for (int r0 = 0; r0 < ds->h && !rc; r0 += block) {
            int rows = ds->h - r0 < block ? ds->h - r0 : block;
            float *r = cached ? ds->raw_cache + (size_t)i * ds->c * plane : raw;
            int32_t *l = cached ? (ds->label_cache ? ds->label_cache + (size_t)i * plane : NULL) : lab;
            float *w = cached ? (ds->weight_cache ? ds->weight_cache + (size_t)i * plane : NULL) : wt;
            rc = read_raw_rect(ds, i, r0, rows, 0, ds->w, r, err, errlen) ||
                 check_finite_raw(ds, r, i, r0, rows, err, errlen);
            if (!rc && ds->label.id >= 0) {
                rc = read_rect(ds, &ds->label, H5T_NATIVE_INT32, i, r0, rows, 0, ds->w, l, err, errlen);
                if (!rc) scan_labels(&ls, l, i, r0, rows, ds->w, classes);
            }
            if (!rc && ds->weight.id >= 0)
                rc = read_rect(ds, &ds->weight, H5T_NATIVE_FLOAT, i, r0, rows, 0, ds->w, w, err, errlen) ||
                     check_weights(ds, w, i, r0, rows, err, errlen);
        }
    free(raw), free(lab), free(wt);
    if (rc) return -1;
    return report_labels(ds, &ls, classes, err, errlen);
}

/* ---- public ------------------------------------------------------------------ */

int unet_dataset_open(const char *path, const unet_dataset_opts *opts, unet_dataset **out, char *err, size_t errlen) {
    static const unet_dataset_opts defaults = {0};
    if (!opts) opts = &defaults;
    *out = NULL;
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen,
                 "cannot open dataset %s: %s: give an existing HDF5 file (datasets/ has scripts that make "
                 "them)",
                 path, strerror(errno));
        return -1;
    }
    unet_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    ds->path = strdup(path);
    ds->file = -1;
    ds->raw.id = ds->label.id = ds->weight.id = ds->instances.id = -1;

    pthread_mutex_lock(&hdf5_lock);
    /* Our own checks report every failure in one line; HDF5's stack dumps would only bury it. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    int rc = 0;
    if (H5Fis_hdf5(path) <= 0) {
        snprintf(err, errlen,
                 "%s is not an HDF5 file: give an .h5 file with datasets raw and label (datasets/ has "
                 "scripts that convert images)",
                 path);
        rc = -1;
    }
    if (!rc && (ds->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
        snprintf(err, errlen, "%s: H5Fopen failed: the file is damaged or still being written", path);
        rc = -1;
    }
    if (!rc) rc = open_array(ds, &ds->raw, opts->raw_key ? opts->raw_key : "raw", 1, err, errlen);
    if (!rc)
        rc =
            open_array(ds, &ds->label, opts->label_key ? opts->label_key : "label", !opts->label_optional, err, errlen);
    if (!rc) rc = open_array(ds, &ds->weight, opts->weight_key ? opts->weight_key : "weight", 0, err, errlen);
    if (!rc)
        rc = open_array(ds, &ds->instances, opts->instances_key ? opts->instances_key : "instances", 0, err, errlen);
    if (!rc) rc = check_dtypes(ds, err, errlen);
    pthread_mutex_unlock(&hdf5_lock);

    if (!rc) {
        const h5_array *r = &ds->raw;
        if (r->rank == 2) {
            ds->n = 1, ds->c = 1, ds->h = (int)r->dims[0], ds->w = (int)r->dims[1];
        } else if (r->rank == 3) {
            ds->n = (int)r->dims[0], ds->c = 1, ds->h = (int)r->dims[1], ds->w = (int)r->dims[2];
        } else if (r->rank == 4) {
            ds->n = (int)r->dims[0], ds->c = (int)r->dims[1], ds->h = (int)r->dims[2], ds->w = (int)r->dims[3];
        } else {
            char got[96];
            format_dims(r->rank, r->dims, got, sizeof got);
            snprintf(err, errlen, "%s: dataset \"%s\" has shape %s; raw must be (N,H,W), (N,C,H,W) or (H,W)", path,
                     r->key, got);
            rc = -1;
        }
        if (!rc && (ds->n < 1 || ds->c < 1 || ds->h < 1 || ds->w < 1)) {
            char got[96];
            format_dims(r->rank, r->dims, got, sizeof got);
            snprintf(err, errlen, "%s: dataset \"%s\" is empty, shape %s: it needs at least one image", path, r->key,
                     got);
            rc = -1;
        }
    }
    const h5_array *pix[3] = {&ds->label, &ds->weight, &ds->instances};
    for (int i = 0; i < 3 && !rc; i++)
        if (pix[i]->id >= 0) rc = check_pixel_shape(ds, pix[i], err, errlen);

    if (!rc) {
        size_t plane = (size_t)ds->h * ds->w;
        size_t bytes =
            (size_t)ds->n * plane * sizeof(float) * ((size_t)ds->c + (ds->label.id >= 0) + (ds->weight.id >= 0));
        size_t cap = opts->cache_bytes ? opts->cache_bytes : UNET_DATA_CACHE_DEFAULT;
        if (bytes <= cap) {
            ds->raw_cache = malloc((size_t)ds->n * ds->c * plane * sizeof(float));
            if (ds->label.id >= 0) ds->label_cache = malloc((size_t)ds->n * plane * sizeof(int32_t));
            if (ds->weight.id >= 0) ds->weight_cache = malloc((size_t)ds->n * plane * sizeof(float));
            if (!ds->raw_cache || (ds->label.id >= 0 && !ds->label_cache) ||
                (ds->weight.id >= 0 && !ds->weight_cache)) {
                /* Not fatal: read per window instead. */
                free(ds->raw_cache), free(ds->label_cache), free(ds->weight_cache);
                ds->raw_cache = NULL, ds->label_cache = NULL, ds->weight_cache = NULL;
            }
        }
        rc = scan_all(ds, opts->classes, err, errlen);
    }
    if (rc) {
        unet_dataset_close(ds);
        return -1;
    }
    *out = ds;
    return 0;
}

void unet_dataset_close(unet_dataset *ds) {
    if (!ds) return;
    pthread_mutex_lock(&hdf5_lock);
    close_array(&ds->raw), close_array(&ds->label), close_array(&ds->weight), close_array(&ds->instances);
    if (ds->file >= 0) H5Fclose(ds->file);
    pthread_mutex_unlock(&hdf5_lock);
    free(ds->raw_cache), free(ds->label_cache), free(ds->weight_cache);
    free(ds->path);
    free(ds);
}

void unet_dataset_get_info(const unet_dataset *ds, unet_dataset_info *info) {
    info->n = ds->n, info->c = ds->c, info->h = ds->h, info->w = ds->w;
    info->has_label = ds->label.id >= 0;
    info->has_weight = ds->weight.id >= 0;
    info->has_instances = ds->instances.id >= 0;
    info->cached = ds->raw_cache != NULL;
    info->raw_type = raw_type_names[ds->raw_kind];
}

const char *unet_dataset_path(const unet_dataset *ds) { return ds->path; }

static int missing_array(const unet_dataset *ds, const h5_array *a, const char *what, char *err, size_t errlen) {
    snprintf(err, errlen, "%s has no dataset \"%s\", needed for %s: add it, or name it with --%s-key", ds->path, a->key,
             what, a == &ds->label ? "label" : "instances");
    return -1;
}

int unet_dataset_read(unet_dataset *ds, int index, int row0, int rows, float *raw, int32_t *label, float *weight,
                      int32_t *instances, char *err, size_t errlen) {
    if (index < 0 || index >= ds->n || row0 < 0 || rows < 1 || row0 + rows > ds->h) {
        snprintf(err, errlen, "%s: image %d rows %d..%d is outside the dataset (%d images of %d rows)", ds->path, index,
                 row0, row0 + rows - 1, ds->n, ds->h);
        return -1;
    }
    if (label && ds->label.id < 0) return missing_array(ds, &ds->label, "training or evaluation", err, errlen);
    if (instances && ds->instances.id < 0) return missing_array(ds, &ds->instances, "weight maps", err, errlen);
    size_t plane = (size_t)ds->h * ds->w, part = (size_t)rows * ds->w;
    if (raw) {
        if (ds->raw_cache) {
            for (int c = 0; c < ds->c; c++)
                memcpy(raw + c * part, ds->raw_cache + ((size_t)index * ds->c + c) * plane + (size_t)row0 * ds->w,
                       part * sizeof(float));
        } else if (read_raw_rect(ds, index, row0, rows, 0, ds->w, raw, err, errlen)) {
            return -1;
        }
    }
    if (label) {
        if (ds->label_cache)
            memcpy(label, ds->label_cache + (size_t)index * plane + (size_t)row0 * ds->w, part * sizeof(int32_t));
        else if (read_rect(ds, &ds->label, H5T_NATIVE_INT32, index, row0, rows, 0, ds->w, label, err, errlen))
            return -1;
    }
    if (weight) {
        if (ds->weight.id < 0) {
            for (size_t i = 0; i < part; i++) weight[i] = 1.0f;
        } else if (ds->weight_cache) {
            memcpy(weight, ds->weight_cache + (size_t)index * plane + (size_t)row0 * ds->w, part * sizeof(float));
        } else if (read_rect(ds, &ds->weight, H5T_NATIVE_FLOAT, index, row0, rows, 0, ds->w, weight, err, errlen)) {
            return -1;
        }
    }
    if (instances &&
        read_rect(ds, &ds->instances, H5T_NATIVE_INT32, index, row0, rows, 0, ds->w, instances, err, errlen))
        return -1;
    return 0;
}

/* ---- views and windows ----------------------------------------------------------- */

unet_data_view unet_data_view_all(unet_dataset *ds) {
    unet_data_view v = {ds, 0, ds->n, 0, ds->h};
    return v;
}

int unet_data_split(unet_dataset *ds, double fraction, unet_data_view *train, unet_data_view *val, char *err,
                    size_t errlen) {
    if (!(fraction > 0.0 && fraction < 1.0)) {
        snprintf(err, errlen, "--val-fraction must be in (0, 1), got %g", fraction);
        return -1;
    }
    *train = *val = unet_data_view_all(ds);
    if (ds->n >= 2) {
        int nval = (int)ceil(fraction * ds->n - 1e-9);
        if (nval < 1) nval = 1;
        if (nval > ds->n - 1) nval = ds->n - 1;
        train->images = ds->n - nval;
        val->image0 = ds->n - nval, val->images = nval;
        return 0;
    }
    int rows = (int)ceil(fraction * ds->h - 1e-9);
    if (rows < 1 || rows > ds->h - 1) {
        snprintf(err, errlen,
                 "%s: --val-fraction %g of a single image of %d rows leaves no rows for %s: choose a "
                 "fraction between %g and %g",
                 ds->path, fraction, ds->h, rows < 1 ? "validation" : "training", 1.0 / ds->h,
                 (double)(ds->h - 1) / ds->h);
        return -1;
    }
    train->rows = ds->h - rows;
    val->row0 = ds->h - rows, val->rows = rows;
    return 0;
}

int unet_data_view_read(const unet_data_view *v, int k, float *raw, int32_t *label, float *weight, char *err,
                        size_t errlen) {
    if (k < 0 || k >= v->images) {
        snprintf(err, errlen, "%s: image %d is outside the view of %d images", v->ds->path, k, v->images);
        return -1;
    }
    return unet_dataset_read(v->ds, v->image0 + k, v->row0, v->rows, raw, label, weight, NULL, err, errlen);
}

size_t unet_data_window_scratch(const unet_data_view *v, int size) {
    const unet_dataset *ds = v->ds;
    if (ds->raw_cache) return 0;
    size_t rows = (size_t)(size < v->rows ? size : v->rows), cols = (size_t)(size < ds->w ? size : ds->w);
    return rows * cols * ((size_t)ds->c + 2) * 4;
}

/* The bounding interval of the reflected source positions of [start, start+size). */
static void reflected_span(int start, int size, int n, int *lo, int *hi) {
    *lo = n, *hi = -1;
    for (int i = 0; i < size; i++) {
        int s = unet_reflect(start + i, n);
        if (s < *lo) *lo = s;
        if (s > *hi) *hi = s;
    }
}

int unet_data_window(const unet_data_view *v, int k, int y0, int x0, int size, float *raw, int32_t *label,
                     float *weight, void *scratch, char *err, size_t errlen) {
    const unet_dataset *ds = v->ds;
    const int C = ds->c, W = ds->w, image = v->image0 + k;
    if (k < 0 || k >= v->images) {
        snprintf(err, errlen, "%s: image %d is outside the view of %d images", ds->path, k, v->images);
        return -1;
    }
    if (label && ds->label.id < 0) return missing_array(ds, &ds->label, "training or evaluation", err, errlen);
    /* Source: the cached image, or the rectangle of the file the reflected window touches. */
    const float *src_raw, *src_weight = NULL;
    const int32_t *src_label = NULL;
    int rlo = 0, clo = 0, stride_w = W;
    size_t src_plane;
    void *owned = NULL;
    if (ds->raw_cache) {
        size_t plane = (size_t)ds->h * W;
        src_raw = ds->raw_cache + (size_t)image * C * plane + (size_t)v->row0 * W;
        if (ds->label_cache) src_label = ds->label_cache + (size_t)image * plane + (size_t)v->row0 * W;
        if (ds->weight_cache) src_weight = ds->weight_cache + (size_t)image * plane + (size_t)v->row0 * W;
        src_plane = plane;
    } else {
        int rhi, chi;
        reflected_span(y0, size, v->rows, &rlo, &rhi);
        reflected_span(x0, size, W, &clo, &chi);
        int rect_rows = rhi - rlo + 1;
        stride_w = chi - clo + 1;
        src_plane = (size_t)rect_rows * stride_w;
        if (!scratch) scratch = owned = malloc(unet_data_window_scratch(v, size));
        if (!scratch) {
            snprintf(err, errlen, "%s: out of memory for a %d x %d window", ds->path, size, size);
            return -1;
        }
        float *r = scratch;
        int32_t *l = (int32_t *)((char *)scratch + src_plane * C * 4);
        float *w = (float *)((char *)scratch + src_plane * ((size_t)C + 1) * 4);
        int row = v->row0 + rlo;
        int rc = read_raw_rect(ds, image, row, rect_rows, clo, stride_w, r, err, errlen);
        if (!rc && label)
            rc = read_rect(ds, &ds->label, H5T_NATIVE_INT32, image, row, rect_rows, clo, stride_w, l, err, errlen);
        if (!rc && weight && ds->weight.id >= 0)
            rc = read_rect(ds, &ds->weight, H5T_NATIVE_FLOAT, image, row, rect_rows, clo, stride_w, w, err, errlen);
        if (rc) {
            free(owned);
            return -1;
        }
        src_raw = r, src_label = l;
        if (ds->weight.id >= 0) src_weight = w;
    }
    int *cols = malloc((size_t)size * sizeof(int));
    if (!cols) {
        free(owned);
        snprintf(err, errlen, "%s: out of memory for a %d x %d window", ds->path, size, size);
        return -1;
    }
    for (int x = 0; x < size; x++) cols[x] = unet_reflect(x0 + x, W) - clo;
    for (int y = 0; y < size; y++) {
        size_t srow = (size_t)(unet_reflect(y0 + y, v->rows) - rlo) * stride_w;
        size_t drow = (size_t)y * size;
        if (raw)
            for (int c = 0; c < C; c++) {
                const float *s = src_raw + c * src_plane + srow;
                float *d = raw + (size_t)c * size * size + drow;
                for (int x = 0; x < size; x++) d[x] = s[cols[x]];
            }
        if (label)
            for (int x = 0; x < size; x++) label[drow + x] = src_label[srow + cols[x]];
        if (weight) {
            if (src_weight)
                for (int x = 0; x < size; x++) weight[drow + x] = src_weight[srow + cols[x]];
            else
                for (int x = 0; x < size; x++) weight[drow + x] = 1.0f;
        }
    }
    free(cols);
    free(owned);
    return 0;
}
