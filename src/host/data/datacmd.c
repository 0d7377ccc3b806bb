/* unet data weights, split and info (include/unet/datacmd.h). HDF5 calls
 * hold the process-wide lock (host/data/hdf5_lock.h) like every other. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>
#include <omp.h>

#include "host/data/hdf5_lock.h"
#include "unet/data.h"
#include "unet/datacmd.h"
#include "unet/rng.h"
#include "unet/weightmap.h"

static int fail(const char *err, int code) {
    fprintf(stderr, "unet: %s\n", err);
    return code;
}

static unet_dataset_opts dataset_opts(const unet_config *cfg) {
    unet_dataset_opts o = {.raw_key = cfg->raw_key[0] ? cfg->raw_key : NULL,
                           .label_key = cfg->label_key[0] ? cfg->label_key : NULL,
                           .weight_key = cfg->weight_key[0] ? cfg->weight_key : NULL};
    return o;
}

/* ---- writing a changed copy of a file -------------------------------------------- */

typedef struct {
    hid_t dst;
    const char *skip; /* top-level link not to copy, or NULL */
    int rc;
} copy_ctx;

static herr_t copy_link(hid_t src, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    copy_ctx *c = data;
    if (c->skip && !strcmp(name, c->skip)) return 0;
    if (H5Ocopy(src, name, c->dst, name, H5P_DEFAULT, H5P_DEFAULT) < 0) c->rc = -1;
    return c->rc;
}

static herr_t copy_attribute(hid_t src, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    copy_ctx *c = data;
    hid_t a = H5Aopen(src, name, H5P_DEFAULT), type = H5Aget_type(a), space = H5Aget_space(a);
    hssize_t count = H5Sget_simple_extent_npoints(space);
    size_t bytes = H5Tget_size(type) * (size_t)(count > 0 ? count : 1);
    void *buf = calloc(1, bytes);
    hid_t b = -1;
    if (!buf || H5Aread(a, type, buf) < 0 ||
        (b = H5Acreate2(c->dst, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0 || H5Awrite(b, type, buf) < 0)
        c->rc = -1;
    /* variable-length strings were allocated by the read */
    if (buf && (H5Tdetect_class(type, H5T_VLEN) > 0 || H5Tis_variable_str(type) > 0))
        H5Dvlen_reclaim(type, space, H5P_DEFAULT, buf);
    free(buf);
    if (b >= 0) H5Aclose(b);
    H5Sclose(space), H5Tclose(type), H5Aclose(a);
    return c->rc;
}

/* A chunked (one image per chunk), gzip + shuffle dataset; intermediate groups made. */
static hid_t create_images(hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims) {
    hsize_t chunk[4];
    for (int i = 0; i < rank; i++) chunk[i] = i == 0 && rank >= 3 ? 1 : dims[i];
    for (int i = 0; i < rank; i++)
        if (!chunk[i]) chunk[i] = 1;
    hid_t space = H5Screate_simple(rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE),
          lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_chunk(dcpl, rank, chunk);
    H5Pset_shuffle(dcpl);
    H5Pset_deflate(dcpl, 4);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t d = H5Dcreate2(file, name, type, space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(lcpl), H5Pclose(dcpl), H5Sclose(space);
    return d;
}

static void set_double_attribute(hid_t obj, const char *name, double v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, H5T_NATIVE_DOUBLE, &v), H5Aclose(a);
    H5Sclose(space);
}

/* Commits a temporary file over the target: the rename is atomic on one file system. */
static int commit(const char *tmp, const char *path, char *err, size_t errlen) {
    if (rename(tmp, path) == 0) return 0;
    unlink(tmp);
    snprintf(err, errlen, "cannot replace %s (is its directory writable?)", path);
    return -1;
}

/* ---- unet data weights ------------------------------------------------------------- */

int unet_run_data_weights(unet_config *cfg) {
    char err[1024];
    if (!cfg->data[0])
        return fail("unet data weights needs a dataset: unet data weights D.h5 [--w0 10] [--sigma 5] [--no-balance]",
                    2);
    unet_dataset_opts o = dataset_opts(cfg);
    unet_dataset *ds;
    if (unet_dataset_open(cfg->data, &o, &ds, err, sizeof err)) return fail(err, 2);
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    const int n = info.n, h = info.h, w = info.w;
    const size_t plane = (size_t)h * w;
    float *weights = malloc((size_t)n * plane * sizeof *weights);
    if (!weights) {
        unet_dataset_close(ds);
        snprintf(err, sizeof err, "out of memory for the weights of %d images of %dx%d", n, h, w);
        return fail(err, 1);
    }
    unet_weightmap_cfg wc = {cfg->w0, cfg->sigma, !cfg->no_balance};
    long cells = 0;
    int rc = 0;
    err[0] = 0;
#pragma omp parallel reduction(+ : cells)
    {
        int32_t *label = malloc(plane * sizeof *label),
                *inst = info.has_instances ? malloc(plane * sizeof *inst) : NULL;
        char why[1024];
#pragma omp for schedule(dynamic)
        for (int i = 0; i < n; i++) {
            int bad = !label || (info.has_instances && !inst);
            if (!bad)
                bad = unet_dataset_read(ds, i, 0, h, NULL, label, NULL, inst, why, sizeof why) != 0;
            else
                snprintf(why, sizeof why, "out of memory for a %dx%d image", h, w);
            int k = bad ? -1 : unet_weight_map(label, inst, h, w, &wc, weights + (size_t)i * plane);
            if (!bad && k < 0) bad = 1, snprintf(why, sizeof why, "out of memory for the weight map of image %d", i);
            if (bad) {
#pragma omp critical
                if (!rc) rc = 1, snprintf(err, sizeof err, "%s", why);
            } else {
                cells += k;
            }
        }
        free(label), free(inst);
    }
    unet_dataset_close(ds);
    if (rc) {
        free(weights);
        return fail(err, 1);
    }

    /* a new file with every other object, then the weights, renamed over the old */
    const char *key = cfg->weight_key[0] ? cfg->weight_key : "weight";
    char top[512], *tmp = malloc(strlen(cfg->data) + 32);
    snprintf(top, sizeof top, "%s", key[0] == '/' ? key + 1 : key);
    top[strcspn(top, "/")] = 0;
    sprintf(tmp, "%s.tmp.%d", cfg->data, (int)getpid());
    unet_hdf5_lock();
    hid_t src = H5Fopen(cfg->data, H5F_ACC_RDONLY, H5P_DEFAULT),
          dst = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    copy_ctx c = {dst, strchr(key[0] == '/' ? key + 1 : key, '/') ? NULL : top, src < 0 || dst < 0 ? -1 : 0};
    if (!c.rc) H5Literate(src, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_link, &c);
    if (!c.rc) H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attribute, &c);
    if (!c.rc && H5Lexists(dst, key, H5P_DEFAULT) > 0) H5Ldelete(dst, key, H5P_DEFAULT); /* inside a copied group */
    hid_t d = -1;
    if (!c.rc) {
        hsize_t dims[3] = {(hsize_t)n, (hsize_t)h, (hsize_t)w};
        d = create_images(dst, key, H5T_IEEE_F32LE, 3, dims);
        if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, weights) < 0) c.rc = -1;
        if (d >= 0) {
            set_double_attribute(d, "w0", cfg->w0);
            set_double_attribute(d, "sigma", cfg->sigma);
            set_double_attribute(d, "balance", !cfg->no_balance);
            H5Dclose(d);
        }
    }
    if (src >= 0) H5Fclose(src);
    if (dst >= 0 && H5Fclose(dst) < 0) c.rc = -1;
    unet_hdf5_unlock();
    free(weights);
    if (c.rc) {
        unlink(tmp);
        free(tmp);
        snprintf(err, sizeof err, "writing the weights beside %s failed (is the directory writable, is there space?)",
                 cfg->data);
        return fail(err, 1);
    }
    rc = commit(tmp, cfg->data, err, sizeof err);
    free(tmp);
    if (rc) return fail(err, 1);
    printf("%s: %s (%d, %d, %d) float32, w0 %g, sigma %g, %s; %ld cells%s\n", cfg->data, key, n, h, w, (double)cfg->w0,
           (double)cfg->sigma, cfg->no_balance ? "no class balance" : "class-balanced", cells,
           info.has_instances ? " (from instances)" : " (4-connected components of label > 0)");
    return 0;
}

/* ---- unet data split ---------------------------------------------------------------- */

typedef struct {
    hid_t src, dst;
    hsize_t n;
    const int *pick; /* images to keep, in order */
    int count, rc;
} split_ctx;

/* Every dataset whose first axis has the images (rank >= 3, or the raw's N)
 * keeps the picked images; any other object is copied as it is. */
static herr_t split_object(hid_t root, const char *name, const H5O_info_t *info, void *data) {
    (void)root;
    split_ctx *c = data;
    if (c->rc || !strcmp(name, ".")) return c->rc;
    if (info->type == H5O_TYPE_GROUP) {
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        hid_t g = H5Lexists(c->dst, name, H5P_DEFAULT) > 0 ? H5Gopen2(c->dst, name, H5P_DEFAULT)
                                                           : H5Gcreate2(c->dst, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        H5Pclose(lcpl);
        if (g < 0)
            c->rc = -1;
        else
            H5Gclose(g);
        return c->rc;
    }
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(c->src, name, H5P_DEFAULT), space = H5Dget_space(d), type = H5Dget_type(d);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[8] = {0};
    H5Sget_simple_extent_dims(space, dims, NULL);
    if (rank < 3 || rank > 4 || dims[0] != c->n) {
        H5Sclose(space), H5Tclose(type), H5Dclose(d);
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        if (H5Ocopy(c->src, name, c->dst, name, H5P_DEFAULT, lcpl) < 0) c->rc = -1;
        H5Pclose(lcpl);
        return c->rc;
    }
    hsize_t out_dims[4], one[4], start[4] = {0}, image = 1;
    for (int i = 0; i < rank; i++) out_dims[i] = i ? dims[i] : (hsize_t)c->count, one[i] = i ? dims[i] : 1;
    for (int i = 1; i < rank; i++) image *= dims[i];
    hid_t mem = H5Tget_native_type(type, H5T_DIR_DEFAULT), out = create_images(c->dst, name, type, rank, out_dims);
    void *buf = malloc(image * H5Tget_size(mem));
    hid_t mspace = H5Screate_simple(rank, one, NULL), ospace = out >= 0 ? H5Dget_space(out) : -1;
    if (!buf || out < 0) c->rc = -1;
    for (int j = 0; j < c->count && !c->rc; j++) {
        start[0] = (hsize_t)c->pick[j];
        H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, one, NULL);
        start[0] = (hsize_t)j;
        H5Sselect_hyperslab(ospace, H5S_SELECT_SET, start, NULL, one, NULL);
        if (H5Dread(d, mem, mspace, space, H5P_DEFAULT, buf) < 0 ||
            H5Dwrite(out, mem, mspace, ospace, H5P_DEFAULT, buf) < 0)
            c->rc = -1;
    }
    free(buf);
    H5Sclose(mspace);
    if (ospace >= 0) H5Sclose(ospace);
    if (out >= 0) H5Dclose(out);
    H5Tclose(mem), H5Sclose(space), H5Tclose(type), H5Dclose(d);
    return c->rc;
}

static int write_split(const char *path, const char *out, hsize_t n, const int *pick, int count, char *err,
                       size_t errlen) {
    char *tmp = malloc(strlen(out) + 32);
    sprintf(tmp, "%s.tmp.%d", out, (int)getpid());
    unet_hdf5_lock();
    hid_t src = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT),
          dst = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    split_ctx c = {src, dst, n, pick, count, src < 0 || dst < 0 ? -1 : 0};
    if (!c.rc) H5Ovisit(src, H5_INDEX_NAME, H5_ITER_INC, split_object, &c);
    copy_ctx a = {dst, NULL, c.rc};
    if (!c.rc) H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attribute, &a);
    if (src >= 0) H5Fclose(src);
    if (dst >= 0 && H5Fclose(dst) < 0) a.rc = -1;
    unet_hdf5_unlock();
    int rc = a.rc;
    if (rc) {
        unlink(tmp);
        snprintf(err, errlen, "writing %s failed (is the directory writable, is there space?)", out);
    } else {
        rc = commit(tmp, out, err, errlen);
    }
    free(tmp);
    return rc;
}

int unet_run_data_split(unet_config *cfg) {
    char err[1024];
    if (cfg->val[0]) {
        /* `unet data split D.h5 --val 0.2`: here --val is the held-out share */
        char *end;
        double f = strtod(cfg->val, &end);
        if (*end || !(f > 0 && f < 1)) {
            snprintf(err, sizeof err, "data split --val takes the share of images to hold out, in (0, 1), got '%s'",
                     cfg->val);
            return fail(err, 2);
        }
        cfg->val_fraction = (float)f;
    }
    if (!cfg->data[0] || !(cfg->val_fraction > 0))
        return fail("unet data split needs a dataset and a share: unet data split D.h5 --val 0.2 [--seed S]", 2);
    unet_dataset_opts o = dataset_opts(cfg);
    o.label_optional = 1;
    unet_dataset *ds;
    if (unet_dataset_open(cfg->data, &o, &ds, err, sizeof err)) return fail(err, 2);
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    unet_dataset_close(ds);
    const int n = info.n;
    if (n < 2) {
        snprintf(err, sizeof err,
                 "%s has a single image: data split keeps whole images; train --val-fraction %g "
                 "holds out its bottom rows instead",
                 cfg->data, (double)cfg->val_fraction);
        return fail(err, 2);
    }
    int nval = (int)lround(cfg->val_fraction * n);
    nval = nval < 1 ? 1 : nval > n - 1 ? n - 1 : nval;
    /* a permutation keyed by the seed; each side keeps the file's order */
    int *order = malloc((size_t)n * sizeof *order), *val = malloc((size_t)n * sizeof *val),
        *train = malloc((size_t)n * sizeof *train);
    char *is_val = calloc((size_t)n, 1);
    uint64_t key = unet_rng_key(cfg->seed, 0x73706c6974, 0);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(unet_mix64(key ^ unet_mix64((uint64_t)i)) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    for (int i = 0; i < nval; i++) is_val[order[i]] = 1;
    int nv = 0, nt = 0;
    for (int i = 0; i < n; i++) {
        if (is_val[i])
            val[nv++] = i;
        else
            train[nt++] = i;
    }
    /* D.h5 -> D-train.h5, D-val.h5 */
    size_t len = strlen(cfg->data);
    const char *dot = strrchr(cfg->data, '.'), *slash = strrchr(cfg->data, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - cfg->data) : len;
    char *train_path = malloc(len + 16), *val_path = malloc(len + 16);
    sprintf(train_path, "%.*s-train%s", (int)stem, cfg->data, cfg->data + stem);
    sprintf(val_path, "%.*s-val%s", (int)stem, cfg->data, cfg->data + stem);
    int rc = write_split(cfg->data, train_path, (hsize_t)n, train, nt, err, sizeof err);
    if (!rc) rc = write_split(cfg->data, val_path, (hsize_t)n, val, nv, err, sizeof err);
    if (!rc) {
        printf("%s: %d images\n%s: %d images (", train_path, nt, val_path, nv);
        for (int i = 0; i < nv; i++) printf("%s%d", i ? " " : "", val[i]);
        printf(" of %s, seed %llu)\n", cfg->data, (unsigned long long)cfg->seed);
    }
    free(order), free(val), free(train), free(is_val), free(train_path), free(val_path);
    return rc ? fail(err, 1) : 0;
}

/* ---- unet data info ---------------------------------------------------------------- */

typedef struct {
    FILE *f;
    int json, count;
} info_ctx;

static void type_name(hid_t type, char *buf, size_t len) {
    H5T_class_t cls = H5Tget_class(type);
    size_t bits = H5Tget_size(type) * 8;
    if (cls == H5T_INTEGER)
        snprintf(buf, len, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
    else if (cls == H5T_FLOAT)
        snprintf(buf, len, "float%zu", bits);
    else if (cls == H5T_STRING)
        snprintf(buf, len, "string");
    else
        snprintf(buf, len, "other(class %d)", (int)cls);
}

/* One line (or JSON object) per dataset: shape, type, chunks, filters. */
static herr_t describe_dataset(hid_t root, const char *name, const H5O_info_t *info, void *data) {
    info_ctx *c = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(root, name, H5P_DEFAULT), space = H5Dget_space(d), type = H5Dget_type(d),
          dcpl = H5Dget_create_plist(d);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[32] = {0}, chunk[32] = {0};
    H5Sget_simple_extent_dims(space, dims, NULL);
    int chunked = H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 32, chunk) >= 0;
    char shape[256] = "", chunks[256] = "", filters[256] = "", tname[64];
    type_name(type, tname, sizeof tname);
    const char *open = c->json ? "[" : "(", *close = c->json ? "]" : ")";
    size_t n = (size_t)snprintf(shape, sizeof shape, "%s", open);
    for (int i = 0; i < rank; i++)
        n += (size_t)snprintf(shape + n, sizeof shape - n, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    snprintf(shape + n, sizeof shape - n, "%s", close);
    if (chunked) {
        n = (size_t)snprintf(chunks, sizeof chunks, "%s", open);
        for (int i = 0; i < rank; i++)
            n += (size_t)snprintf(chunks + n, sizeof chunks - n, "%s%llu", i ? ", " : "", (unsigned long long)chunk[i]);
        snprintf(chunks + n, sizeof chunks - n, "%s", close);
    }
    int nf = H5Pget_nfilters(dcpl);
    n = 0;
    for (int i = 0; i < nf; i++) {
        unsigned flags, conf, values[8];
        size_t nv = 8;
        char fname[64] = "";
        H5Z_filter_t f = H5Pget_filter2(dcpl, (unsigned)i, &flags, &nv, values, sizeof fname, fname, &conf);
        const char *shown = f == H5Z_FILTER_DEFLATE   ? "gzip"
                            : f == H5Z_FILTER_SHUFFLE ? "shuffle"
                            : fname[0]                ? fname
                                                      : "filter";
        if (f == H5Z_FILTER_DEFLATE && nv > 0)
            n += (size_t)snprintf(filters + n, sizeof filters - n, c->json ? "%s\"gzip:%u\"" : "%sgzip:%u",
                                  i ? ", " : "", values[0]);
        else
            n += (size_t)snprintf(filters + n, sizeof filters - n, c->json ? "%s\"%s\"" : "%s%s", i ? ", " : "", shown);
    }
    if (c->json)
        fprintf(c->f, "%s\"%s\": {\"shape\": %s, \"dtype\": \"%s\", \"chunks\": %s, \"filters\": [%s]}",
                c->count ? ", " : "", name, shape, tname, chunked ? chunks : "null", filters);
    else
        fprintf(c->f, "  %-24s %-20s %-8s chunks %-18s %s\n", name, shape, tname,
                chunked ? chunks : "none (contiguous)", nf ? filters : "uncompressed");
    c->count++;
    H5Pclose(dcpl), H5Tclose(type), H5Sclose(space), H5Dclose(d);
    return 0;
}

#define MAX_HISTOGRAM 256

static int compare_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int unet_run_data_info(unet_config *cfg) {
    char err[1024];
    if (!cfg->data[0]) return fail("unet data info needs a dataset: unet data info D.h5 [--json]", 2);
    unet_dataset_opts o = dataset_opts(cfg);
    o.label_optional = 1;
    unet_dataset *ds;
    if (unet_dataset_open(cfg->data, &o, &ds, err, sizeof err)) return fail(err, 2);
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    const size_t plane = (size_t)info.h * info.w;
    float *raw = malloc(plane * info.c * sizeof *raw), *wt = malloc(plane * sizeof *wt);
    int32_t *lab = malloc(plane * sizeof *lab), *inst = malloc(plane * sizeof *inst);
    double hist[MAX_HISTOGRAM] = {0}, other = 0, rmin = INFINITY, rmax = -INFINITY, rsum = 0;
    double wmin = INFINITY, wmax = -INFINITY, wsum = 0;
    int32_t lmin = INT32_MAX, lmax = INT32_MIN;
    long cells = 0;
    int rc = raw && wt && lab && inst ? 0 : -1;
    if (rc) snprintf(err, sizeof err, "out of memory for a %dx%d image", info.h, info.w);
    for (int i = 0; i < info.n && !rc; i++) {
        rc = unet_dataset_read(ds, i, 0, info.h, raw, info.has_label ? lab : NULL, wt, info.has_instances ? inst : NULL,
                               err, sizeof err);
        if (rc) break;
        for (size_t p = 0; p < plane * info.c; p++) {
            rmin = raw[p] < rmin ? raw[p] : rmin, rmax = raw[p] > rmax ? raw[p] : rmax;
            rsum += raw[p];
        }
        for (size_t p = 0; info.has_label && p < plane; p++) {
            int32_t v = lab[p];
            lmin = v < lmin ? v : lmin, lmax = v > lmax ? v : lmax;
            if (v >= 0 && v < MAX_HISTOGRAM)
                hist[v]++;
            else
                other++;
        }
        for (size_t p = 0; info.has_weight && p < plane; p++) {
            wmin = wt[p] < wmin ? wt[p] : wmin, wmax = wt[p] > wmax ? wt[p] : wmax;
            wsum += wt[p];
        }
        if (info.has_instances) {
            /* distinct non-zero ids of this image */
            size_t m = 0;
            for (size_t p = 0; p < plane; p++)
                if (inst[p]) inst[m++] = inst[p];
            qsort(inst, m, sizeof *inst, compare_i32);
            for (size_t p = 0; p < m; p++) cells += !p || inst[p] != inst[p - 1];
        }
    }
    unet_dataset_close(ds);
    free(raw), free(wt), free(lab), free(inst);
    if (rc) return fail(err, 1);

    info_ctx c = {stdout, cfg->json, 0};
    const double pixels = (double)info.n * plane;
    if (cfg->json) {
        printf(
            "{\"file\": \"%s\", \"images\": %d, \"channels\": %d, \"height\": %d, \"width\": %d, \"raw_type\": \"%s\", "
            "\"raw_min\": %.6g, \"raw_max\": %.6g, \"raw_mean\": %.6g, \"datasets\": {",
            cfg->data, info.n, info.c, info.h, info.w, info.raw_type, rmin, rmax, rsum / (pixels * info.c));
    } else {
        printf("%s: %d image(s) of %d channel(s), %dx%d; raw %s, values in [%.4g, %.4g] after scaling, mean %.4g\n"
               "datasets:\n",
               cfg->data, info.n, info.c, info.h, info.w, info.raw_type, rmin, rmax, rsum / (pixels * info.c));
    }
    unet_hdf5_lock();
    hid_t f = H5Fopen(cfg->data, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, describe_dataset, &c), H5Fclose(f);
    unet_hdf5_unlock();
    if (cfg->json) {
        printf("}, \"label\": ");
        if (info.has_label) {
            printf("{\"min\": %d, \"max\": %d, \"histogram\": {", lmin, lmax);
            int first = 1;
            for (int v = 0; v < MAX_HISTOGRAM; v++)
                if (hist[v] > 0) printf("%s\"%d\": %.0f", first ? "" : ", ", v, hist[v]), first = 0;
            printf("}, \"other\": %.0f}", other);
        } else {
            printf("null");
        }
        printf(", \"weight\": ");
        if (info.has_weight)
            printf("{\"min\": %.6g, \"max\": %.6g, \"mean\": %.6g}", wmin, wmax, wsum / pixels);
        else
            printf("null");
        printf(", \"instances\": ");
        if (info.has_instances)
            printf("{\"cells\": %ld}", cells);
        else
            printf("null");
        printf("}\n");
        return 0;
    }
    if (info.has_label) {
        printf("label: values %d..%d;", lmin, lmax);
        for (int v = 0; v < MAX_HISTOGRAM; v++)
            if (hist[v] > 0) printf(" %d: %.0f (%.1f%%)", v, hist[v], 100 * hist[v] / pixels);
        if (other > 0) printf(" outside 0..%d: %.0f", MAX_HISTOGRAM - 1, other);
        printf("\n");
    } else {
        printf("label: none (a file to predict)\n");
    }
    if (info.has_weight)
        printf("weight: min %.4g, max %.4g, mean %.4g\n", wmin, wmax, wsum / pixels);
    else
        printf("weight: none (unet data weights adds the U-Net border weight map)\n");
    if (info.has_instances)
        printf("instances: %ld cells over %d image(s)\n", cells, info.n);
    else
        printf("instances: none (weight maps take the 4-connected components of label > 0)\n");
    return 0;
}
