/* unet data import: folders of TIFF (libtiff) or PNG (libpng) images and
 * masks into the HDF5 layout the loader reads. Images and masks pair by
 * file name without the extension; all images have one size, one channel
 * count and one bit depth (8 or 16), kept as they are (uint8 or uint16: the
 * loader scales by the type's maximum). */
#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>
#include <png.h>
#include <tiffio.h>

#include "host/common/util.h"
#include "host/data/hdf5_lock.h"
#include "host/data/image_read.h"
#include "unet/datacmd.h"

/* A header claiming more pixel bytes than its file can hold, even compressed
 * at `ratio` (the best a codec reaches) to one, is damage, a cut file or a
 * corrupt header: said in `why` before that many bytes are allocated. */
static int claim_too_large(const char *path, const char *what, unsigned w, unsigned h, double bytes, double ratio,
                           char *why, size_t n) {
    struct stat st;
    if (stat(path, &st) != 0 || bytes <= ratio * ((double)st.st_size + 1)) return 0;
    snprintf(why, n, "its header claims %s of %u x %u pixels, more than its %lld bytes can hold (truncated?)", what, w,
             h, (long long)st.st_size);
    return 1;
}

/* ---- PNG --------------------------------------------------------------------- */

enum { PNG_MESSAGE_MAX = 256 };

/* libpng's error text goes into our one line (its default prints it on stderr); its warnings are dropped */
static void png_error_text(png_structp png, png_const_charp msg) {
    snprintf(png_get_error_ptr(png), PNG_MESSAGE_MAX, "%s", msg);
    png_longjmp(png, 1);
}

static void png_no_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

/* The rows as stored (a filter byte each), before the image they claim is allocated: deflate packs at most 1032
 * bytes into one (zlib's limit). */
static void png_check_claim(png_structp png, png_infop info, const char *path) {
    unsigned w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    char why[PNG_MESSAGE_MAX];
    if (claim_too_large(path, "an image", w, h, ((double)png_get_rowbytes(png, info) + 1) * h, 1032, why, sizeof why))
        png_error(png, why);
}

static int read_png(const char *path, int is_mask, unet_image *im, char *err, size_t errlen) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        unet_errorf(err, errlen, "cannot read %s", path);
        return -1;
    }
    char why[PNG_MESSAGE_MAX] = "";
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, why, png_error_text, png_no_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *volatile rows = NULL; /* volatile: set after setjmp, freed after the longjmp */
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(fp);
        free(rows), free(im->pixels);
        im->pixels = NULL;
        unet_errorf(err, errlen, "%s is not a readable PNG file%s%s", path, why[0] ? ": " : "", why);
        return -1;
    }
    png_init_io(png, fp);
    png_read_info(png, info);
    png_check_claim(png, info, path);
    int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
    if (depth < 8) png_set_packing(png); /* 1, 2, 4 bits: one byte a pixel, values kept */
    if (depth == 16) png_set_swap(png);  /* to the host's little-endian uint16 */
    if (type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
    /* a palette mask is its indices; a palette image means its colours */
    if (type == PNG_COLOR_TYPE_PALETTE && !is_mask) png_set_palette_to_rgb(png);
    png_read_update_info(png, info);
    im->w = (int)png_get_image_width(png, info), im->h = (int)png_get_image_height(png, info);
    im->c = png_get_channels(png, info), im->bits = depth == 16 ? 16 : 8;
    size_t rowbytes = png_get_rowbytes(png, info);
    im->pixels = malloc(rowbytes * im->h);
    rows = malloc(sizeof *rows * im->h);
    if (!im->pixels || !rows) png_error(png, "out of memory");
    for (int y = 0; y < im->h; y++) rows[y] = (png_bytep)im->pixels + rowbytes * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    fclose(fp);
    return 0;
}

/* ---- TIFF -------------------------------------------------------------------- */

static char tiff_message[512];
/* libtiff's messages may span lines (a tag's complaint on a second, indented line); ours are one line, so each run
 * of control characters and the spaces after it becomes one space. */
static void tiff_error(const char *module, const char *fmt, va_list ap) {
    (void)module;
    char raw[sizeof tiff_message];
    vsnprintf(raw, sizeof raw, fmt, ap);
    size_t n = 0;
    for (const char *c = raw; *c; c++) {
        if ((unsigned char)*c >= ' ') {
            tiff_message[n++] = *c;
            continue;
        }
        while (c[1] && ((unsigned char)c[1] < ' ' || c[1] == ' ')) c++;
        if (n && tiff_message[n - 1] != ' ') tiff_message[n++] = ' ';
    }
    while (n && tiff_message[n - 1] == ' ') n--;
    tiff_message[n] = 0;
}

/* Decoded bytes per stored byte at most, by codec: a bound, not an estimate (PackBits 128 from 2, LZW about 1400
 * at 12-bit codes, deflate 1032; others, ZSTD and LZMA among them, under 2^16). */
static double tiff_max_ratio(uint16_t compression) {
    switch (compression) {
    case COMPRESSION_NONE:
        return 1;
    case COMPRESSION_PACKBITS:
        return 64;
    case COMPRESSION_LZW:
        return 2048;
    case COMPRESSION_DEFLATE:
    case COMPRESSION_ADOBE_DEFLATE:
        return 1032;
    default:
        return 65536;
    }
}

/* A TIFF's pixel layout as read_tiff reads it. */
typedef struct {
    uint32_t w, h, tw, th; /* tw, th: tile size, 0 for strips */
    size_t spp, bpp, per;  /* samples a pixel, bytes a sample, samples a pixel in a row or a tile (1: planes apart) */
} tiff_layout;

/* Why the rows or tiles are not what the readers below index, plain samples of the sizes they claim (YCbCr
 * subsampling, say), or hold more than the file can: said in `why` (left empty when they can be read) before
 * anything is allocated, so that a damaged header is one line, not a read past a buffer or an allocation of what it
 * claims. */
static void tiff_check_layout(TIFF *t, const char *path, const tiff_layout *l, char *why, size_t n) {
    uint16_t compression = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(t, TIFFTAG_COMPRESSION, &compression);
    const double ratio = tiff_max_ratio(compression), row = (double)l->w * l->spp * l->bpp;
    if (l->w > INT_MAX || l->h > INT_MAX)
        snprintf(why, n, "its header claims %u x %u pixels", l->w, l->h);
    else if (TIFFIsTiled(t) ? !l->tw || !l->th || TIFFTileSize64(t) != (uint64_t)l->tw * l->th * l->per * l->bpp
                            : TIFFScanlineSize64(t) != (uint64_t)l->w * l->per * l->bpp)
        snprintf(why, n, "its %s hold other than one value a sample (YCbCr subsampling?): save it as gray or RGB",
                 TIFFIsTiled(t) ? "tiles" : "rows");
    else if (!claim_too_large(path, "an image", l->w, l->h, row * l->h, ratio, why, n) && l->tw)
        claim_too_large(path, "tiles", l->tw, l->th, (double)l->tw * l->th * l->per * l->bpp, ratio, why, n);
}

static int read_tiles(TIFF *t, const tiff_layout *l, unsigned char *pixels) {
    unsigned char *tile = malloc((size_t)l->tw * l->th * l->per * l->bpp);
    int rc = tile ? 0 : -1;
    const int planes = l->per == 1 ? (int)l->spp : 1;
    for (int s = 0; s < planes && !rc; s++)
        for (uint32_t y0 = 0; y0 < l->h && !rc; y0 += l->th)
            for (uint32_t x0 = 0; x0 < l->w && !rc; x0 += l->tw) {
                if (TIFFReadTile(t, tile, x0, y0, 0, (uint16_t)s) < 0) {
                    rc = -1;
                    break;
                }
                for (uint32_t y = y0; y < y0 + l->th && y < l->h; y++)
                    for (uint32_t x = x0; x < x0 + l->tw && x < l->w; x++)
                        for (size_t k = 0; k < l->per; k++) {
                            size_t src = (((size_t)(y - y0) * l->tw + (x - x0)) * l->per + k) * l->bpp;
                            size_t dst = ((size_t)y * l->w + x) * l->spp + (l->per == 1 ? (size_t)s : k);
                            memcpy(pixels + dst * l->bpp, tile + src, l->bpp);
                        }
            }
    free(tile);
    return rc;
}

static int read_strips(TIFF *t, const tiff_layout *l, unsigned char *pixels) {
    const size_t row = (size_t)l->w * l->spp * l->bpp;
    unsigned char *line = malloc(row);
    int rc = line ? 0 : -1;
    const int planes = l->per == 1 ? (int)l->spp : 1;
    for (int s = 0; s < planes && !rc; s++)
        for (uint32_t y = 0; y < l->h && !rc; y++) {
            if (TIFFReadScanline(t, line, y, (uint16_t)s) < 0) {
                rc = -1;
                break;
            }
            unsigned char *dst = pixels + (size_t)y * row;
            if (planes == 1)
                memcpy(dst, line, row);
            else
                for (uint32_t x = 0; x < l->w; x++)
                    memcpy(dst + ((size_t)x * l->spp + s) * l->bpp, line + (size_t)x * l->bpp, l->bpp);
        }
    free(line);
    return rc;
}

static int read_tiff(const char *path, unet_image *im, char *err, size_t errlen) {
    TIFFSetWarningHandler(NULL);
    TIFFSetErrorHandler(tiff_error);
    tiff_message[0] = 0;
    TIFF *t = TIFFOpen(path, "r");
    if (!t) {
        unet_errorf(err, errlen, "%s is not a readable TIFF file%s%s", path, tiff_message[0] ? ": " : "", tiff_message);
        return -1;
    }
    uint32_t w = 0, h = 0;
    uint16_t spp = 1, bps = 8, format = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &format);
    TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &planar);
    int pages = TIFFNumberOfDirectories(t);
    if (pages > 1 || (bps != 8 && bps != 16) || format != SAMPLEFORMAT_UINT || spp < 1 || spp > 4 || !w || !h) {
        if (pages > 1)
            unet_errorf(err, errlen, "%s has %d pages: import takes one 2D image per file (split the stack first)",
                        path, pages);
        else
            unet_errorf(err, errlen,
                        "%s is %u-bit %s with %u samples a pixel: import takes 8- or 16-bit unsigned images with 1 "
                        "to 4 channels",
                        path, bps,
                        format == SAMPLEFORMAT_INT      ? "signed"
                        : format == SAMPLEFORMAT_IEEEFP ? "float"
                                                        : "unsigned",
                        spp);
        TIFFClose(t);
        return -1;
    }
    tiff_layout l = {w, h, 0, 0, spp, bps / 8, planar == PLANARCONFIG_SEPARATE ? 1 : spp};
    if (TIFFIsTiled(t)) TIFFGetField(t, TIFFTAG_TILEWIDTH, &l.tw), TIFFGetField(t, TIFFTAG_TILELENGTH, &l.th);
    char why[256] = "";
    tiff_check_layout(t, path, &l, why, sizeof why);
    if (why[0]) {
        unet_errorf(err, errlen, "%s is not a readable TIFF file: %s", path, why);
        TIFFClose(t);
        return -1;
    }
    im->w = (int)w, im->h = (int)h, im->c = spp, im->bits = bps;
    tiff_message[0] = 0; /* what libtiff said of the header is no reason for a failed read */
    im->pixels = malloc((size_t)w * h * l.spp * l.bpp);
    int rc = !im->pixels ? -1 : TIFFIsTiled(t) ? read_tiles(t, &l, im->pixels) : read_strips(t, &l, im->pixels);
    TIFFClose(t);
    if (rc) {
        free(im->pixels);
        im->pixels = NULL;
        unet_errorf(err, errlen, "%s: reading the pixels failed%s%s", path, tiff_message[0] ? ": " : "", tiff_message);
    }
    return rc;
}

/* ---- folders ------------------------------------------------------------------- */

static const char *extension(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? dot + 1 : "";
}

static int is_tiff(const char *name) {
    return !strcasecmp(extension(name), "tif") || !strcasecmp(extension(name), "tiff");
}
static int is_png(const char *name) { return !strcasecmp(extension(name), "png"); }

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The image files of a folder, sorted by name. */
static char **list_images(const char *dir, int *count, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) {
        unet_errorf(err, errlen, "cannot open the folder %s: give a folder of .tif, .tiff or .png files", dir);
        return NULL;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !(is_tiff(e->d_name) || is_png(e->d_name))) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, sizeof *names * cap);
            if (!grown) break;
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (!n) {
        unet_errorf(err, errlen, "%s has no .tif, .tiff or .png files", dir);
        free(names);
        return NULL;
    }
    qsort(names, n, sizeof *names, compare_names);
    *count = n;
    return names;
}

static void free_names(char **names, int n) {
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
}

static size_t stem_length(const char *name) { return strlen(name) - strlen(extension(name)) - 1; }

int unet_image_read(const char *path, int is_mask, unet_image *im, char *err, size_t errlen) {
    memset(im, 0, sizeof *im);
    return is_png(path) ? read_png(path, is_mask, im, err, errlen) : read_tiff(path, im, err, errlen);
}

static int read_image(const char *dir, const char *name, int is_mask, unet_image *im, char *err, size_t errlen) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return unet_image_read(path, is_mask, im, err, errlen);
}

static uint32_t pixel(const unet_image *im, size_t i) {
    return im->bits == 16 ? ((const uint16_t *)im->pixels)[i] : ((const uint8_t *)im->pixels)[i];
}

static hid_t create_stack(hid_t f, const char *name, hid_t type, int rank, const hsize_t *dims) {
    hsize_t chunk[4];
    for (int i = 0; i < rank; i++) chunk[i] = i ? dims[i] : 1;
    hid_t space = H5Screate_simple(rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, rank, chunk);
    H5Pset_shuffle(dcpl);
    H5Pset_deflate(dcpl, 4);
    hid_t d = H5Dcreate2(f, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl), H5Sclose(space);
    return d;
}

static int write_image(hid_t d, int rank, const hsize_t *dims, int index, hid_t mem, const void *buf) {
    hsize_t start[4] = {(hsize_t)index, 0, 0, 0}, count[4];
    for (int i = 0; i < rank; i++) count[i] = i ? dims[i] : 1;
    hid_t fs = H5Dget_space(d), ms = H5Screate_simple(rank, count, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    herr_t rc = H5Dwrite(d, mem, ms, fs, H5P_DEFAULT, buf);
    H5Sclose(ms), H5Sclose(fs);
    return rc < 0 ? -1 : 0;
}

int unet_run_data_import(unet_config *cfg) {
    char err[2048] = "";
    if (!cfg->images[0] || !cfg->masks[0] || !cfg->output[0]) {
        fprintf(stderr, "unet: unet data import needs --images DIR --masks DIR --output D.h5\n");
        return 2;
    }
    int n = 0, nm = 0, code = 2;
    char **names = NULL, **masks = NULL;
    if (unet_check_output_file(cfg->output, "--output", err, sizeof err)) goto fail; /* before reading any image */
    names = list_images(cfg->images, &n, err, sizeof err);
    if (names) masks = list_images(cfg->masks, &nm, err, sizeof err);
    if (!names || !masks) goto fail;
    /* pair by stem */
    int *match = malloc(sizeof *match * n);
    for (int i = 0; match && i < n; i++) {
        match[i] = -1;
        for (int j = 0; j < nm && match[i] < 0; j++)
            if (stem_length(names[i]) == stem_length(masks[j]) && !strncmp(names[i], masks[j], stem_length(names[i])))
                match[i] = j;
        if (match[i] < 0) {
            unet_errorf(err, sizeof err, "%s/%s has no mask in %s: name the mask like the image (%.*s.tif or .png)",
                        cfg->images, names[i], cfg->masks, (int)stem_length(names[i]), names[i]);
            free(match);
            goto fail;
        }
    }
    /* all masks first: whether they are binary or instance ids decides the layout */
    unet_image first;
    if (read_image(cfg->images, names[0], 0, &first, err, sizeof err)) goto fail_match;
    const int H = first.h, W = first.w, C = first.c, bits = first.bits;
    free(first.pixels);
    const size_t plane = (size_t)H * W;
    int32_t *ids = malloc(sizeof *ids * plane * n);
    int instances = 0;
    for (int i = 0; ids && i < n; i++) {
        unet_image m;
        if (read_image(cfg->masks, masks[match[i]], 1, &m, err, sizeof err)) goto fail_ids;
        if (m.h != H || m.w != W || m.c != 1) {
            unet_errorf(err, sizeof err,
                        "%s/%s is %dx%d with %d channel(s); masks must be single-channel and the size of the "
                        "images (%dx%d)",
                        cfg->masks, masks[match[i]], m.h, m.w, m.c, H, W);
            free(m.pixels);
            goto fail_ids;
        }
        uint32_t seen = 0;
        for (size_t p = 0; p < plane; p++) {
            uint32_t v = pixel(&m, p);
            ids[(size_t)i * plane + p] = (int32_t)v;
            if (v && seen && v != seen) instances = 1;
            if (v) seen = v;
        }
        free(m.pixels);
    }
    if (!ids) {
        unet_errorf(err, sizeof err, "out of memory for %d masks of %dx%d", n, H, W);
        goto fail_match;
    }

    char *tmp = malloc(strlen(cfg->output) + 32);
    sprintf(tmp, "%s.tmp.%d", cfg->output, (int)getpid());
    code = 1;
    unet_hdf5_lock();
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t rdims[4] = {(hsize_t)n, (hsize_t)C, (hsize_t)H, (hsize_t)W},
            ldims[3] = {(hsize_t)n, (hsize_t)H, (hsize_t)W};
    if (C == 1) rdims[1] = (hsize_t)H, rdims[2] = (hsize_t)W;
    int rrank = C == 1 ? 3 : 4;
    hid_t rtype = bits == 16 ? H5T_STD_U16LE : H5T_STD_U8LE, rmem = bits == 16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT8;
    hid_t draw = f >= 0 ? create_stack(f, "raw", rtype, rrank, rdims) : -1;
    hid_t dlab = f >= 0 ? create_stack(f, "label", H5T_STD_U8LE, 3, ldims) : -1;
    hid_t dins = f >= 0 && instances ? create_stack(f, "instances", H5T_STD_I32LE, 3, ldims) : -1;
    int rc = f < 0 || draw < 0 || dlab < 0 || (instances && dins < 0) ? -1 : 0;
    if (rc) unet_errorf(err, sizeof err, "cannot create %s (is the directory writable?)", cfg->output);
    unet_hdf5_unlock();
    uint8_t *lab = malloc(plane);
    unsigned char *planar = malloc(plane * C * (bits / 8));
    for (int i = 0; i < n && !rc; i++) {
        unet_image im;
        rc = read_image(cfg->images, names[i], 0, &im, err, sizeof err);
        if (rc) break;
        if (im.h != H || im.w != W || im.c != C || im.bits != bits) {
            unet_errorf(err, sizeof err,
                        "%s/%s is %dx%d, %d channel(s), %d-bit; %s/%s is %dx%d, %d channel(s), %d-bit: all "
                        "images must match",
                        cfg->images, names[i], im.h, im.w, im.c, im.bits, cfg->images, names[0], H, W, C, bits);
            free(im.pixels);
            rc = -1;
            break;
        }
        /* (H, W, C) interleaved -> (C, H, W) */
        size_t bpp = bits / 8;
        for (size_t p = 0; p < plane; p++)
            for (int c = 0; c < C; c++)
                memcpy(planar + ((size_t)c * plane + p) * bpp, (unsigned char *)im.pixels + (p * C + c) * bpp, bpp);
        free(im.pixels);
        for (size_t p = 0; p < plane; p++) lab[p] = ids[(size_t)i * plane + p] > 0;
        unet_hdf5_lock();
        rc = write_image(draw, rrank, rdims, i, rmem, planar) ||
             write_image(dlab, 3, ldims, i, H5T_NATIVE_UINT8, lab) ||
             (instances && write_image(dins, 3, ldims, i, H5T_NATIVE_INT32, ids + (size_t)i * plane));
        unet_hdf5_unlock();
        if (rc) unet_errorf(err, sizeof err, "writing image %d to %s failed (disk full?)", i, tmp);
    }
    free(lab), free(planar);
    unet_hdf5_lock();
    if (draw >= 0) H5Dclose(draw);
    if (dlab >= 0) H5Dclose(dlab);
    if (dins >= 0) H5Dclose(dins);
    if (f >= 0 && H5Fclose(f) < 0 && !rc) rc = -1, unet_errorf(err, sizeof err, "could not finish %s", tmp);
    unet_hdf5_unlock();
    if (!rc && rename(tmp, cfg->output) != 0) rc = -1, unet_errorf(err, sizeof err, "cannot write %s", cfg->output);
    if (rc) unlink(tmp);
    free(tmp);
    if (!rc) {
        long fg = 0;
        for (size_t p = 0; p < plane * n; p++) fg += ids[p] > 0;
        char shape[96];
        if (C == 1)
            snprintf(shape, sizeof shape, "(%d, %d, %d)", n, H, W);
        else
            snprintf(shape, sizeof shape, "(%d, %d, %d, %d)", n, C, H, W);
        printf("%s: raw %s uint%d, label uint8 {0,1} (%.1f%% foreground)%s, from %d image/mask pairs\n", cfg->output,
               shape, bits, 100.0 * fg / ((double)plane * n),
               instances ? ", instances int32 (masks with several ids)" : " (binary masks: no instances)", n);
        code = 0;
    }
    free(ids), free(match);
    free_names(names, n), free_names(masks, nm);
    if (code) fprintf(stderr, "unet: %s\n", err);
    return code;
fail_ids:
    free(ids);
fail_match:
    free(match);
fail:
    free_names(names, n), free_names(masks, nm);
    fprintf(stderr, "unet: %s\n", err);
    return code;
}
