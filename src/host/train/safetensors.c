/* safetensors reading and writing (the format is described in
 * include/unet/safetensors.h). The header is checked as strictly as the
 * reference implementation does (known dtypes, sizes that match shapes,
 * tensors covering the data region exactly, nothing past it), so a file cut
 * short by a crash or a full disk is refused at open, naming the file. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "host/common/util.h"
#include "host/common/test_hooks.h"
#include "unet/safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this file copies it as it is in memory"
#endif

#define MAX_HEADER_BYTES (100u << 20) /* the reference implementation's limit */

static const struct {
    const char *name;
    size_t size;
} dtypes[UNET_ST_DTYPE_COUNT] = {
    [UNET_ST_F64] = {"F64", 8},   [UNET_ST_F32] = {"F32", 4},         [UNET_ST_F16] = {"F16", 2},
    [UNET_ST_BF16] = {"BF16", 2}, [UNET_ST_I64] = {"I64", 8},         [UNET_ST_I32] = {"I32", 4},
    [UNET_ST_I16] = {"I16", 2},   [UNET_ST_I8] = {"I8", 1},           [UNET_ST_U8] = {"U8", 1},
    [UNET_ST_BOOL] = {"BOOL", 1}, [UNET_ST_U16] = {"U16", 2},         [UNET_ST_U32] = {"U32", 4},
    [UNET_ST_U64] = {"U64", 8},   [UNET_ST_F8_E4M3] = {"F8_E4M3", 1}, [UNET_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *unet_st_dtype_name(unet_st_dtype t) { return t < UNET_ST_DTYPE_COUNT ? dtypes[t].name : "?"; }
size_t unet_st_dtype_size(unet_st_dtype t) { return t < UNET_ST_DTYPE_COUNT ? dtypes[t].size : 0; }

size_t unet_st_numel(const unet_st_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

/* ---- writing ---------------------------------------------------------- */

static json_object *shape_json(const unet_st_tensor *t) {
    json_object *a = json_object_new_array();
    for (int d = 0; d < t->ndim; d++) json_object_array_add(a, json_object_new_int64(t->shape[d]));
    return a;
}

/* The header text, padded with spaces to a multiple of 8 so that the data
 * region starts aligned. NULL with a message on a bad tensor description. */
static char *build_header(const unet_st_tensor *tensors, int n, const unet_st_meta *meta, int n_meta, size_t *len,
                          const char *path, char *err, size_t errlen) {
    json_object *root = json_object_new_object();
    if (n_meta > 0) {
        json_object *m = json_object_new_object();
        for (int i = 0; i < n_meta; i++) json_object_object_add(m, meta[i].key, json_object_new_string(meta[i].value));
        json_object_object_add(root, "__metadata__", m);
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const unet_st_tensor *t = &tensors[i];
        if (t->dtype >= UNET_ST_DTYPE_COUNT || t->ndim < 0 || t->ndim > UNET_ST_MAX_DIMS || !t->name ||
            !strcmp(t->name, "__metadata__") || json_object_object_get_ex(root, t->name, NULL)) {
            unet_errorf(err, errlen, "cannot write %s: tensor %d (%s) has a bad dtype, rank or a duplicate name", path,
                        i, t->name ? t->name : "unnamed");
            json_object_put(root);
            return NULL;
        }
        uint64_t bytes = unet_st_numel(t) * dtypes[t->dtype].size;
        json_object *e = json_object_new_object();
        json_object_object_add(e, "dtype", json_object_new_string(dtypes[t->dtype].name));
        json_object_object_add(e, "shape", shape_json(t));
        json_object *off = json_object_new_array();
        json_object_array_add(off, json_object_new_uint64(offset));
        json_object_array_add(off, json_object_new_uint64(offset + bytes));
        json_object_object_add(e, "data_offsets", off);
        json_object_object_add(root, t->name, e);
        offset += bytes;
    }
    const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t raw = strlen(text), padded = (raw + 7) / 8 * 8;
    char *h = malloc(padded + 1);
    memcpy(h, text, raw);
    memset(h + raw, ' ', padded - raw);
    h[padded] = 0;
    *len = padded;
    json_object_put(root);
    return h;
}

static int write_all(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1; }

/* What unet_write_atomic hands the file to: the header's length, the header, the tensors' data. */
typedef struct {
    const char *header;
    size_t header_len;
    const unet_st_tensor *tensors;
    int n_tensors;
} st_contents;

static int write_contents(FILE *f, void *ctx) {
    const st_contents *c = ctx;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)c->header_len >> (8 * i));
    int bad = write_all(f, len8, 8) || write_all(f, c->header, c->header_len);
    for (int i = 0; i < c->n_tensors && !bad; i++) {
        bad = write_all(f, c->tensors[i].data, unet_st_numel(&c->tensors[i]) * dtypes[c->tensors[i].dtype].size);
        /* the crash tests kill a write half done: the bytes so far in the file */
        if (i == c->n_tensors / 2 && !bad && !fflush(f)) unet_test_kill_point("checkpoint-write", -1);
    }
    return bad ? -1 : 0;
}

int unet_st_write(const char *path, const unet_st_tensor *tensors, int n_tensors, const unet_st_meta *meta, int n_meta,
                  char *err, size_t errlen) {
    size_t header_len;
    char *header = build_header(tensors, n_tensors, meta, n_meta, &header_len, path, err, errlen);
    if (!header) return -1;
    st_contents c = {header, header_len, tensors, n_tensors};
    int rc = unet_write_atomic(path, write_contents, &c, err, errlen);
    free(header);
    return rc;
}

/* ---- reading ---------------------------------------------------------- */

struct unet_st_file {
    char *path;
    unsigned char *map;
    size_t map_bytes;
    const unsigned char *data; /* start of the data region */
    int n;
    unet_st_tensor *tensors; /* sorted by offset */
    int n_meta;
    unet_st_meta *meta;
};

typedef struct {
    unet_st_tensor t;
    uint64_t begin, end;
} entry;

/* By begin, then end: an empty tensor sorts before the one that starts where it sits. */
static int cmp_begin(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return (x->begin > y->begin) - (x->begin < y->begin);
    return (x->end > y->end) - (x->end < y->end);
}

const char *unet_st_path(const unet_st_file *f) { return f->path; }
int unet_st_count(const unet_st_file *f) { return f->n; }
const unet_st_tensor *unet_st_at(const unet_st_file *f, int index) {
    return index >= 0 && index < f->n ? &f->tensors[index] : NULL;
}
const unet_st_tensor *unet_st_find(const unet_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}
const char *unet_st_meta_get(const unet_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}
int unet_st_meta_count(const unet_st_file *f) { return f->n_meta; }
const unet_st_meta *unet_st_meta_at(const unet_st_file *f, int index) {
    return index >= 0 && index < f->n_meta ? &f->meta[index] : NULL;
}

void unet_st_close(unet_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free((char *)f->meta[i].key);
        free((char *)f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    if (f->map) munmap(f->map, f->map_bytes);
    free(f->path);
    free(f);
}

/* A non-negative JSON integer. */
static int get_u64(json_object *v, uint64_t *out) {
    if (!v || json_object_get_type(v) != json_type_int) return -1;
    int64_t s = json_object_get_int64(v);
    if (s < 0) return -1;
    if (s == INT64_MAX) {
        /* json-c keeps integers above INT64_MAX as unsigned */
        uint64_t u = json_object_get_uint64(v);
        *out = u;
        return 0;
    }
    *out = (uint64_t)s;
    return 0;
}

/* One tensor entry of the header; -1 with the reason in why. */
static int parse_entry(const char *name, json_object *v, entry *e, char *why, size_t whylen) {
    memset(e, 0, sizeof *e);
    if (json_object_get_type(v) != json_type_object) {
        unet_errorf(why, whylen, "is not an object");
        return -1;
    }
    json_object *dtype = NULL, *shape = NULL, *offsets = NULL;
    json_object_object_foreach(v, key, val) {
        if (!strcmp(key, "dtype"))
            dtype = val;
        else if (!strcmp(key, "shape"))
            shape = val;
        else if (!strcmp(key, "data_offsets"))
            offsets = val;
        else {
            unet_errorf(why, whylen, "has an unknown field \"%s\"", key);
            return -1;
        }
    }
    if (!dtype || json_object_get_type(dtype) != json_type_string) {
        unet_errorf(why, whylen, "has no dtype string");
        return -1;
    }
    const char *dn = json_object_get_string(dtype);
    int found = -1;
    for (int d = 0; d < UNET_ST_DTYPE_COUNT; d++)
        if (!strcmp(dtypes[d].name, dn)) found = d;
    if (found < 0) {
        unet_errorf(why, whylen, "has an unknown dtype \"%s\"", dn);
        return -1;
    }
    e->t.dtype = (unet_st_dtype)found;
    if (!shape || json_object_get_type(shape) != json_type_array ||
        json_object_array_length(shape) > UNET_ST_MAX_DIMS) {
        unet_errorf(why, whylen, "has no shape (an array of at most %d sizes)", UNET_ST_MAX_DIMS);
        return -1;
    }
    e->t.ndim = (int)json_object_array_length(shape);
    uint64_t numel = 1;
    for (int d = 0; d < e->t.ndim; d++) {
        uint64_t s;
        if (get_u64(json_object_array_get_idx(shape, (size_t)d), &s) || s > ((uint64_t)1 << 48)) {
            unet_errorf(why, whylen, "has a bad shape %s",
                        json_object_to_json_string_ext(shape, JSON_C_TO_STRING_PLAIN));
            return -1;
        }
        e->t.shape[d] = (int64_t)s;
        if (s && numel > ((uint64_t)1 << 56) / s) {
            unet_errorf(why, whylen, "has an impossibly large shape %s",
                        json_object_to_json_string_ext(shape, JSON_C_TO_STRING_PLAIN));
            return -1;
        }
        numel *= s;
    }
    if (!offsets || json_object_get_type(offsets) != json_type_array || json_object_array_length(offsets) != 2 ||
        get_u64(json_object_array_get_idx(offsets, 0), &e->begin) ||
        get_u64(json_object_array_get_idx(offsets, 1), &e->end) || e->end < e->begin) {
        unet_errorf(why, whylen, "has bad data_offsets (want [begin, end], begin <= end)");
        return -1;
    }
    if (e->end - e->begin != numel * dtypes[found].size) {
        unet_errorf(why, whylen, "holds %llu bytes, but %s %s needs %llu bytes",
                    (unsigned long long)(e->end - e->begin), dn,
                    json_object_to_json_string_ext(shape, JSON_C_TO_STRING_PLAIN),
                    (unsigned long long)(numel * dtypes[found].size));
        return -1;
    }
    e->t.name = strdup(name);
    return 0;
}

static int parse_metadata(unet_st_file *f, json_object *m, char *why, size_t whylen) {
    if (json_object_get_type(m) != json_type_object) {
        unet_errorf(why, whylen, "__metadata__ is not an object of strings");
        return -1;
    }
    f->meta = calloc((size_t)json_object_object_length(m) + 1, sizeof *f->meta);
    json_object_object_foreach(m, key, val) {
        if (json_object_get_type(val) != json_type_string) {
            unet_errorf(why, whylen, "__metadata__ value of \"%s\" is not a string", key);
            return -1;
        }
        f->meta[f->n_meta].key = strdup(key);
        f->meta[f->n_meta].value = strdup(json_object_get_string(val));
        f->n_meta++;
    }
    return 0;
}

int unet_st_open(const char *path, unet_st_file **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        unet_errorf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        unet_errorf(err, errlen, "cannot read %s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        unet_errorf(err, errlen,
                    "%s is not a safetensors file (truncated?): %zu bytes, less than the 8-byte header "
                    "length",
                    path, size);
        close(fd);
        return -1;
    }
    unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        unet_errorf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        return -1;
    }
    unet_st_file *f = calloc(1, sizeof *f);
    f->path = strdup(path);
    f->map = map;
    f->map_bytes = size;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)map[i] << (8 * i);
    char why[512] = "";
    json_object *root = NULL;
    entry *entries = NULL;
    if (hlen > size - 8 || hlen > MAX_HEADER_BYTES) {
        unet_errorf(err, errlen,
                    "%s is truncated or not a safetensors file: its header claims %llu bytes, the "
                    "file has %zu",
                    path, (unsigned long long)hlen, size);
        goto bad_file;
    }
    if (hlen < 2 || map[8] != '{' || memchr(map + 8, 0, hlen)) {
        unet_errorf(why, sizeof why, "the header is not a JSON object");
        goto bad_header;
    }
    json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    root = json_tokener_parse_ex(tok, (const char *)map + 8, (int)hlen);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || jerr != json_tokener_success || json_object_get_type(root) != json_type_object) {
        unet_errorf(why, sizeof why, "the header is not valid JSON (%s)",
                    jerr != json_tokener_success ? json_tokener_error_desc(jerr) : "not an object");
        goto bad_header;
    }
    for (size_t i = end; i < hlen; i++)
        if (map[8 + i] != ' ' && map[8 + i] != '\n' && map[8 + i] != '\t' && map[8 + i] != '\r') {
            unet_errorf(why, sizeof why, "bytes after the JSON header");
            goto bad_header;
        }
    size_t data_bytes = size - 8 - (size_t)hlen;
    f->data = map + 8 + hlen;
    int cap = json_object_object_length(root);
    entries = calloc((size_t)cap + 1, sizeof *entries);
    json_object_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (parse_metadata(f, val, why, sizeof why)) goto bad_header;
            continue;
        }
        char inner[400];
        if (parse_entry(key, val, &entries[f->n], inner, sizeof inner)) {
            unet_errorf(why, sizeof why, "tensor \"%s\" %s", key, inner);
            goto bad_header;
        }
        f->n++;
    }
    /* the tensors must tile the data region exactly: no overlap, no gap, nothing missing at the end */
    qsort(entries, (size_t)f->n, sizeof *entries, cmp_begin);
    uint64_t at = 0;
    for (int i = 0; i < f->n; i++) {
        if (entries[i].begin != at) {
            if (entries[i].begin < at)
                unet_errorf(why, sizeof why, "tensor \"%s\" overlaps the one before it", entries[i].t.name);
            else
                unet_errorf(why, sizeof why, "a gap of %llu bytes before tensor \"%s\"",
                            (unsigned long long)(entries[i].begin - at), entries[i].t.name);
            goto bad_header;
        }
        at = entries[i].end;
    }
    if (at != data_bytes) {
        if (at > data_bytes)
            unet_errorf(err, errlen, "%s is truncated: its tensors need %llu bytes of data, the file has %zu", path,
                        (unsigned long long)at, data_bytes);
        else
            unet_errorf(err, errlen, "%s is corrupt: %zu bytes of data past its last tensor", path,
                        data_bytes - (size_t)at);
        goto bad_file;
    }
    f->tensors = calloc((size_t)f->n + 1, sizeof *f->tensors);
    for (int i = 0; i < f->n; i++) {
        f->tensors[i] = entries[i].t;
        f->tensors[i].data = f->data + entries[i].begin;
    }
    free(entries);
    json_object_put(root);
    *out = f;
    return 0;

bad_header:
    unet_errorf(err, errlen, "%s has a corrupt safetensors header: %s", path, why);
bad_file:
    for (int i = 0; entries && i < f->n; i++) free((char *)entries[i].t.name);
    free(entries);
    json_object_put(root);
    f->n = 0;
    unet_st_close(f);
    return -1;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24); /* zero and subnormals */
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

int unet_st_read_f32(const unet_st_file *f, const unet_st_tensor *t, float *dst, char *err, size_t errlen) {
    size_t n = unet_st_numel(t);
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case UNET_ST_F32:
        memcpy(dst, p, n * 4);
        return 0;
    case UNET_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    case UNET_ST_F16:
    case UNET_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if (t->dtype == UNET_ST_F16) {
                dst[i] = half_to_float(h);
            } else {
                uint32_t bits = (uint32_t)h << 16;
                memcpy(&dst[i], &bits, 4);
            }
        }
        return 0;
    default:
        unet_errorf(err, errlen, "%s: tensor %s has dtype %s, not a floating-point type (F32, F64, F16 or BF16)",
                    f->path, t->name, dtypes[t->dtype].name);
        return -1;
    }
}

int unet_st_read_i64(const unet_st_file *f, const unet_st_tensor *t, int64_t *dst, char *err, size_t errlen) {
    size_t n = unet_st_numel(t);
    const unsigned char *p = t->data;
    for (size_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case UNET_ST_I64:
            memcpy(&dst[i], p + 8 * i, 8);
            break;
        case UNET_ST_I32: {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = v;
            break;
        }
        case UNET_ST_I16: {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            dst[i] = v;
            break;
        }
        case UNET_ST_I8:
            dst[i] = (int8_t)p[i];
            break;
        case UNET_ST_U8:
        case UNET_ST_BOOL:
            dst[i] = p[i];
            break;
        default:
            unet_errorf(err, errlen, "%s: tensor %s has dtype %s, not a signed or 8-bit integer type", f->path, t->name,
                        dtypes[t->dtype].name);
            return -1;
        }
    }
    return 0;
}
