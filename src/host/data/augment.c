/* Augmentation (include/unet/augment.h): the --augment text, the random draws
 * of one sample, and the warp that samples a tile from its source window.
 *
 * Cubic sampling is a B-spline through the samples, as scipy.ndimage and the
 * elasticdeform package do it: the window is prefiltered once (Unser's
 * recursive filter, mirror boundary as scipy's spline_filter1d), and each
 * output pixel is 4 x 4 taps of the coefficients. The same interpolation
 * turns the coarse displacement grid into a per-pixel field. That arithmetic
 * lives in src/common/warp_math.h, shared with the CUDA twin (src/kernels/
 * cuda/augment.cu); this file keeps the loops, the memory and the draws. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/augment.h"
#include "unet/rng.h"
#include "common/warp_math.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* Counters of the sample's draws: each has its own, so turning one
 * augmentation on or off changes no other's values. */
enum {
    DRAW_FLIP = 0,
    DRAW_ROT90 = 1,
    DRAW_ANGLE = 2,
    DRAW_SCALE = 3,
    DRAW_GAMMA = 4,
    DRAW_BRIGHTNESS = 5,
    DRAW_CONTRAST = 6,
    DRAW_NOISE_STD = 7,
    DRAW_GRID = 1 << 8,   /* 2 uniforms per Gaussian, 2 grid^2 Gaussians */
    DRAW_NOISE = 1 << 20, /* 2 uniforms per pixel */
};
#define MAX_GRID UNET_WARP_MAX_GRID

static double uniform(uint64_t key, uint64_t i) { return unet_uniform(key, i); }

/* Box-Muller from two of the key's uniforms; 1 - u keeps the logarithm finite. */
static double gaussian(uint64_t key, uint64_t base, uint64_t i) {
    double u1 = 1.0 - unet_uniform(key, base + 2 * i), u2 = unet_uniform(key, base + 2 * i + 1);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* ---- the --augment text ------------------------------------------------ */

static const char *const NAMES = "elastic, flip, rot90, rotate, scale, gamma, brightness, contrast, noise";

static void defaults(unet_augment_cfg *c) {
    memset(c, 0, sizeof *c);
    c->elastic_sigma = 10, c->elastic_grid = 3, c->interp = UNET_INTERP_CUBIC;
    c->rotate_degrees = 15, c->scale_range = 0.1, c->gamma_range = 0.3;
    c->brightness_range = 0.1, c->contrast_range = 0.2, c->noise_std = 0.03;
}

static int parse_number(const char *item, const char *key, const char *text, double lo, double hi, double *out,
                        char *err, size_t errlen) {
    char *end;
    double v = strtod(text, &end);
    if (!*text || *end || !(v >= lo && v <= hi)) {
        snprintf(err, errlen, "--augment %s: %s must be a number in [%g, %g], got '%s'", item, key, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

/* One "name:key=value:..." item. */
static int parse_item(char *item, unet_augment_cfg *c, char *err, size_t errlen) {
    char *settings = strchr(item, ':');
    if (settings) *settings++ = 0;
    const char *name = item;
    int *on = !strcmp(name, "elastic")      ? &c->elastic
              : !strcmp(name, "flip")       ? &c->flip
              : !strcmp(name, "rot90")      ? &c->rot90
              : !strcmp(name, "rotate")     ? &c->rotate
              : !strcmp(name, "scale")      ? &c->scale
              : !strcmp(name, "gamma")      ? &c->gamma
              : !strcmp(name, "brightness") ? &c->brightness
              : !strcmp(name, "contrast")   ? &c->contrast
              : !strcmp(name, "noise")      ? &c->noise
                                            : NULL;
    if (!strcmp(name, "paper") && !settings) {
        c->elastic = c->flip = c->rot90 = 1;
        return 0;
    }
    if (!on) {
        snprintf(err, errlen, "--augment: unknown augmentation '%s': use none, paper, or a comma-separated list of %s",
                 name, NAMES);
        return -1;
    }
    *on = 1;
    while (settings && *settings) {
        char *next = strchr(settings, ':');
        if (next) *next++ = 0;
        char *eq = strchr(settings, '=');
        if (!eq) {
            snprintf(err, errlen, "--augment %s: setting '%s' needs the form key=value, e.g. %s:sigma=10", name,
                     settings, name);
            return -1;
        }
        *eq = 0;
        const char *key = settings, *val = eq + 1;
        double v = 0;
        int rc = 0;
        if (!strcmp(name, "elastic") && !strcmp(key, "sigma")) {
            rc = parse_number(name, key, val, 0, 1e4, &c->elastic_sigma, err, errlen);
        } else if (!strcmp(name, "elastic") && !strcmp(key, "grid")) {
            rc = parse_number(name, key, val, 2, MAX_GRID, &v, err, errlen);
            if (!rc && v != floor(v)) {
                snprintf(err, errlen, "--augment elastic: grid must be a whole number of points, got '%s'", val);
                rc = -1;
            }
            c->elastic_grid = (int)v;
        } else if (!strcmp(name, "elastic") && !strcmp(key, "interp")) {
            if (!strcmp(val, "cubic"))
                c->interp = UNET_INTERP_CUBIC;
            else if (!strcmp(val, "linear"))
                c->interp = UNET_INTERP_LINEAR;
            else {
                snprintf(err, errlen, "--augment elastic: interp must be cubic or linear, got '%s'", val);
                rc = -1;
            }
        } else if (!strcmp(name, "rotate") && !strcmp(key, "deg")) {
            rc = parse_number(name, key, val, 0, 180, &c->rotate_degrees, err, errlen);
        } else if (!strcmp(name, "scale") && !strcmp(key, "range")) {
            rc = parse_number(name, key, val, 0, 0.9, &c->scale_range, err, errlen);
        } else if (!strcmp(name, "gamma") && !strcmp(key, "range")) {
            rc = parse_number(name, key, val, 0, 10, &c->gamma_range, err, errlen);
        } else if (!strcmp(name, "brightness") && !strcmp(key, "range")) {
            rc = parse_number(name, key, val, 0, 1e6, &c->brightness_range, err, errlen);
        } else if (!strcmp(name, "contrast") && !strcmp(key, "range")) {
            rc = parse_number(name, key, val, 0, 1, &c->contrast_range, err, errlen);
        } else if (!strcmp(name, "noise") && !strcmp(key, "std")) {
            rc = parse_number(name, key, val, 0, 1e6, &c->noise_std, err, errlen);
        } else {
            const char *known = !strcmp(name, "elastic")  ? "sigma, grid, interp"
                                : !strcmp(name, "rotate") ? "deg"
                                : !strcmp(name, "noise")  ? "std"
                                : !strcmp(name, "flip")   ? NULL
                                : !strcmp(name, "rot90")  ? NULL
                                                          : "range";
            if (known)
                snprintf(err, errlen, "--augment %s: unknown setting '%s' (it takes %s)", name, key, known);
            else
                snprintf(err, errlen, "--augment %s takes no settings, got '%s'", name, key);
            rc = -1;
        }
        if (rc) return -1;
        settings = next;
    }
    return 0;
}

int unet_augment_parse(const char *text, unet_augment_cfg *cfg, char *err, size_t errlen) {
    defaults(cfg);
    if (!text || !*text || !strcmp(text, "none")) return 0;
    char *copy = strdup(text);
    if (!copy) {
        snprintf(err, errlen, "--augment: out of memory");
        return -1;
    }
    int rc = 0;
    for (char *item = copy; item && !rc;) {
        char *comma = strchr(item, ',');
        if (comma) *comma++ = 0;
        if (!*item || !strcmp(item, "none")) {
            snprintf(err, errlen, "--augment '%s': %s", text,
                     *item ? "none stands alone" : "an empty item: write names separated by single commas");
            rc = -1;
        } else {
            rc = parse_item(item, cfg, err, errlen);
        }
        item = comma;
    }
    free(copy);
    return rc;
}

int unet_augment_active(const unet_augment_cfg *c) {
    return c->elastic || c->flip || c->rot90 || c->rotate || c->scale || c->gamma || c->brightness || c->contrast ||
           c->noise;
}

int unet_augment_context(const unet_augment_cfg *c, int tile) {
    double reach = 0;
    /* the B-spline through Gaussian grid values hardly leaves their range: 5 sigma covers nearly every draw */
    if (c->elastic) reach += 5.0 * c->elastic_sigma;
    if (c->rotate || c->scale) {
        double smin = c->scale ? 1.0 - c->scale_range : 1.0, angle = c->rotate ? c->rotate_degrees * M_PI / 180 : 0;
        double corner = (tile - 1) / 2.0 * sqrt(2.0);
        reach += corner * (2.0 * sin(angle / 2) / smin + fabs(1.0 / smin - 1.0));
    }
    return reach > 0 ? (int)ceil(reach) + 2 : 0; /* + 2: the cubic taps beyond the position */
}

void unet_augment_describe(const unet_augment_cfg *c, char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
#define ADD(...) n += (size_t)snprintf(buf + n, n < len ? len - n : 0, __VA_ARGS__)
    if (c->elastic)
        ADD("%selastic(sigma %g px, %dx%d grid, %s)", n ? ", " : "", c->elastic_sigma, c->elastic_grid, c->elastic_grid,
            c->interp == UNET_INTERP_CUBIC ? "cubic" : "linear");
    if (c->flip) ADD("%sflip", n ? ", " : "");
    if (c->rot90) ADD("%srot90", n ? ", " : "");
    if (c->rotate) ADD("%srotate(+-%g deg)", n ? ", " : "", c->rotate_degrees);
    if (c->scale) ADD("%sscale(1+-%g)", n ? ", " : "", c->scale_range);
    if (c->gamma) ADD("%sgamma(%g)", n ? ", " : "", c->gamma_range);
    if (c->brightness) ADD("%sbrightness(+-%g)", n ? ", " : "", c->brightness_range);
    if (c->contrast) ADD("%scontrast(1+-%g)", n ? ", " : "", c->contrast_range);
    if (c->noise) ADD("%snoise(std <= %g)", n ? ", " : "", c->noise_std);
    if (!n) ADD("none");
#undef ADD
}

/* ---- the warp ---------------------------------------------------------------- */

/* Every tile pixel: the per-pixel arithmetic is src/common/warp_math.h,
 * shared with the CUDA twin. */
static void warp_pixels(const unet_warp_map *m) {
    for (int y = 0; y < m->tile; y++)
        for (int x = 0; x < m->tile; x++) unet_warp_pixel(m, y, x);
}

/* The B-spline coefficients of a float image, src -> dst (h, w >= 2): rows one
 * at a time in double, then columns as whole-row vector operations so that
 * memory is walked in order. */
static void spline_image(const float *src, float *dst, int h, int w, double *line) {
    const double zw = pow(UNET_SPLINE_POLE, w - 1);
    for (int y = 0; y < h; y++) unet_spline_row(src + (size_t)y * w, dst + (size_t)y * w, w, line, 1, zw);
    unet_spline_columns(dst, h, w, 0, w, line, pow(UNET_SPLINE_POLE, h - 1));
}

int unet_augment_warp(const unet_warp *w, const unet_augment_args *a, char *err, size_t errlen) {
    const int T = a->tile, ctx = a->context, S = T + 2 * ctx, C = a->channels, g = w->grid;
    const int elastic = w->dy && w->dx;
    if (elastic && (g < 2 || g > MAX_GRID)) {
        snprintf(err, errlen, "augmentation: an elastic grid of %d points per side; it takes 2 to %d", g, MAX_GRID);
        return -1;
    }
    unet_warp_map m = {.tile = T,
                       .context = ctx,
                       .channels = C,
                       .flip_x = w->flip_x,
                       .rot90 = w->rot90 & 3,
                       .src = a->src_raw,
                       .src_label = a->src_label,
                       .src_weight = a->src_weight,
                       .raw = a->raw,
                       .label = a->label,
                       .weight = a->weight};
    if (!elastic && w->angle == 0 && w->scale == 1) {
        m.mode = UNET_WARP_COPY;
        warp_pixels(&m);
        return 0;
    }

    const size_t splane = (size_t)S * S;
    const int cubic = w->interp == UNET_INTERP_CUBIC;
    float *coef = cubic ? malloc(splane * C * sizeof *coef) : NULL;
    double *line = malloc((size_t)S * sizeof *line);
    double *W = elastic ? malloc((size_t)T * g * sizeof *W) : NULL;
    double *Ry = elastic ? malloc((size_t)T * g * sizeof *Ry) : NULL,
           *Rx = elastic ? malloc((size_t)T * g * sizeof *Rx) : NULL;
    if ((cubic && !coef) || !line || (elastic && (!W || !Ry || !Rx))) {
        free(coef), free(line), free(W), free(Ry), free(Rx);
        snprintf(err, errlen, "augmentation: out of memory for a %d x %d window", S, S);
        return -1;
    }
    if (cubic)
        for (int c = 0; c < C; c++) spline_image(a->src_raw + c * splane, coef + c * splane, S, S, line);
    if (elastic) {
        /* coefficients of the displacement grids, then each row u's grid row combined once: Ry[u*g + j] */
        double cy[MAX_GRID * MAX_GRID], cx[MAX_GRID * MAX_GRID];
        const double zg = pow(UNET_SPLINE_POLE, g - 1);
        memcpy(cy, w->dy, (size_t)g * g * sizeof(double));
        memcpy(cx, w->dx, (size_t)g * g * sizeof(double));
        unet_warp_grid_coefficients(cy, g, zg);
        unet_warp_grid_coefficients(cx, g, zg);
        for (int t = 0; t < T; t++) unet_warp_weights_at(t, T, g, W + (size_t)t * g);
        for (int u = 0; u < T; u++)
            unet_warp_field_row(W + (size_t)u * g, cy, cx, g, Ry + (size_t)u * g, Rx + (size_t)u * g);
        m.grid = g, m.W = W, m.Ry = Ry, m.Rx = Rx;
    }
    m.mode = cubic ? UNET_WARP_CUBIC : UNET_WARP_LINEAR;
    m.ca = cos(w->angle) / w->scale, m.sa = sin(w->angle) / w->scale;
    if (cubic) m.src = coef;
    warp_pixels(&m);
    free(coef), free(line), free(W), free(Ry), free(Rx);
    return 0;
}

/* ---- the hook -------------------------------------------------------------------- */

static void intensity(const unet_augment_cfg *c, uint64_t key, float *raw, size_t n) {
    if (c->gamma) {
        float lo = raw[0], hi = raw[0];
        for (size_t i = 1; i < n; i++) lo = raw[i] < lo ? raw[i] : lo, hi = raw[i] > hi ? raw[i] : hi;
        float gamma = (float)exp((2 * uniform(key, DRAW_GAMMA) - 1) * log1p(c->gamma_range));
        if (hi > lo)
            for (size_t i = 0; i < n; i++) raw[i] = lo + (hi - lo) * powf((raw[i] - lo) / (hi - lo), gamma);
    }
    if (c->brightness) {
        float b = (float)((2 * uniform(key, DRAW_BRIGHTNESS) - 1) * c->brightness_range);
        for (size_t i = 0; i < n; i++) raw[i] += b;
    }
    if (c->contrast) {
        double mean = 0;
        for (size_t i = 0; i < n; i++) mean += raw[i];
        mean /= (double)n;
        float f = (float)(1 + (2 * uniform(key, DRAW_CONTRAST) - 1) * c->contrast_range), m = (float)mean;
        for (size_t i = 0; i < n; i++) raw[i] = m + (raw[i] - m) * f;
    }
    if (c->noise) {
        double sd = uniform(key, DRAW_NOISE_STD) * c->noise_std;
        for (size_t i = 0; i < n; i++) raw[i] += (float)(sd * gaussian(key, DRAW_NOISE, i));
    }
}

void unet_augment_draw(const unet_augment_cfg *c, uint64_t key, unet_warp *w, double *grid_values) {
    const int g = c->elastic_grid;
    *w = (unet_warp){.grid = g, .scale = 1, .interp = c->interp};
    if (c->flip) w->flip_x = uniform(key, DRAW_FLIP) < 0.5;
    if (c->rot90) w->rot90 = (int)(uniform(key, DRAW_ROT90) * 4);
    if (c->rotate) w->angle = (2 * uniform(key, DRAW_ANGLE) - 1) * c->rotate_degrees * M_PI / 180;
    if (c->scale) w->scale = 1 + (2 * uniform(key, DRAW_SCALE) - 1) * c->scale_range;
    if (c->elastic && c->elastic_sigma > 0) {
        double *dy = grid_values, *dx = grid_values + g * g;
        for (int i = 0; i < g * g; i++) {
            dy[i] = c->elastic_sigma * gaussian(key, DRAW_GRID, (uint64_t)i);
            dx[i] = c->elastic_sigma * gaussian(key, DRAW_GRID, (uint64_t)(g * g + i));
        }
        w->dy = dy, w->dx = dx;
    }
}

/* A record: the warp without its pointers, then the 2 g^2 grid values. */
typedef struct {
    unet_warp warp;
    int elastic;
} record_head;
#define RECORD_HEAD ((sizeof(record_head) + 7) / 8 * 8)

size_t unet_augment_record_bytes(const unet_augment_cfg *c) {
    return RECORD_HEAD + (size_t)2 * c->elastic_grid * c->elastic_grid * sizeof(double);
}

int unet_augment_record(void *ctx, uint64_t key, void *record, char *err, size_t errlen) {
    (void)err, (void)errlen;
    record_head *h = record;
    unet_augment_draw(ctx, key, &h->warp, (double *)((char *)record + RECORD_HEAD));
    h->elastic = h->warp.dy != NULL;
    h->warp.dy = h->warp.dx = NULL; /* the record moves: the consumer points them again */
    return 0;
}

void unet_augment_record_warp(const void *record, unet_warp *w) {
    const record_head *h = record;
    const double *values = (const double *)((const char *)record + RECORD_HEAD);
    *w = h->warp;
    if (h->elastic) w->dy = values, w->dx = values + w->grid * w->grid;
}

int unet_augment_has_intensity(const unet_augment_cfg *c) {
    return c->gamma || c->brightness || c->contrast || c->noise;
}

int unet_augment_apply(void *ctx, const unet_augment_args *a, char *err, size_t errlen) {
    const unet_augment_cfg *c = ctx;
    double grid_values[2 * MAX_GRID * MAX_GRID];
    unet_warp w;
    unet_augment_draw(c, a->key, &w, grid_values);
    if (unet_augment_warp(&w, a, err, errlen)) return -1;
    if (unet_augment_has_intensity(c)) intensity(c, a->key, a->raw, (size_t)a->channels * a->tile * a->tile);
    return 0;
}
