/* Augmentation (include/unet/augment.h): the --augment text, the random draws
 * of one sample, and the warp that samples a tile from its source window.
 *
 * Cubic sampling is a B-spline through the samples, as scipy.ndimage and the
 * elasticdeform package do it: the window is prefiltered once (Unser's
 * recursive filter, mirror boundary as scipy's spline_filter1d), and each
 * output pixel is 4 x 4 taps of the coefficients. The same interpolation
 * turns the coarse displacement grid into a per-pixel field. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/augment.h"
#include "unet/rng.h"

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
#define MAX_GRID 64

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
            if (!strcmp(val, "cubic")) c->interp = UNET_INTERP_CUBIC;
            else if (!strcmp(val, "linear")) c->interp = UNET_INTERP_LINEAR;
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
            const char *known = !strcmp(name, "elastic")      ? "sigma, grid, interp"
                                : !strcmp(name, "rotate")     ? "deg"
                                : !strcmp(name, "noise")      ? "std"
                                : !strcmp(name, "flip")       ? NULL
                                : !strcmp(name, "rot90")      ? NULL
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
        ADD("%selastic(sigma %g px, %dx%d grid, %s)", n ? ", " : "", c->elastic_sigma, c->elastic_grid,
            c->elastic_grid, c->interp == UNET_INTERP_CUBIC ? "cubic" : "linear");
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

/* ---- cubic B-splines ------------------------------------------------------ */

static const double POLE = -0.267949192431122706; /* sqrt(3) - 2 */

/* Index i folded into [0, n) by mirroring without repeating the edge (period 2n - 2). */
static inline int fold(int i, int n) {
    if (n == 1) return 0;
    int period = 2 * n - 2;
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

/* A position mirrored into [0, n - 1], as scipy's mirror mode does. */
static inline double mirror_position(double c, int n) {
    if (c >= 0 && c <= n - 1) return c;
    if (n == 1) return 0;
    double period = 2.0 * n - 2;
    c = fmod(c, period);
    if (c < 0) c += period;
    return c <= n - 1 ? c : period - c;
}

/* Cubic B-spline coefficients of a line in place, mirror boundary
 * (scipy.ndimage.spline_filter1d(order=3, mode='mirror')). n >= 2. */
static void spline_line(double *c, int n, int stride) {
#define C(i) c[(size_t)(i) * stride]
    const double z = POLE;
    for (int i = 0; i < n; i++) C(i) *= 6.0; /* (1 - z)(1 - 1/z) */
    double zn1 = pow(z, n - 1), zi = z, c0 = C(0) + zn1 * C(n - 1);
    for (int i = 1; i < n - 1; i++) {
        c0 += zi * (C(i) + zn1 * C(n - 1 - i));
        zi *= z;
        if (fabs(zi) < 1e-17 && fabs(zn1) < 1e-30) break; /* the rest adds below double precision */
    }
    C(0) = c0 / (1 - zn1 * zn1);
    for (int i = 1; i < n; i++) C(i) += z * C(i - 1);
    C(n - 1) = (z * C(n - 2) + C(n - 1)) * z / (z * z - 1);
    for (int i = n - 2; i >= 0; i--) C(i) = z * (C(i + 1) - C(i));
#undef C
}

/* The same over a float image: rows one at a time in double, columns as
 * whole-row vector operations so memory is walked in order. */
static void spline_image(float *img, int h, int w, double *line) {
    for (int y = 0; y < h; y++) {
        float *r = img + (size_t)y * w;
        for (int x = 0; x < w; x++) line[x] = r[x];
        spline_line(line, w, 1);
        for (int x = 0; x < w; x++) r[x] = (float)line[x];
    }
    const double z = POLE, zn1 = pow(z, h - 1);
#define ROW(y) (img + (size_t)(y) * w)
    for (int x = 0; x < w; x++) line[x] = 6.0 * ROW(0)[x] + zn1 * 6.0 * ROW(h - 1)[x];
    double zi = z;
    for (int y = 1; y < h - 1; y++) {
        const float *a = ROW(y), *b = ROW(h - 1 - y);
        for (int x = 0; x < w; x++) line[x] += zi * 6.0 * (a[x] + zn1 * b[x]);
        zi *= z;
        if (fabs(zi) < 1e-12 && fabs(zn1) < 1e-30) break; /* below float precision */
    }
    for (int x = 0; x < w; x++) ROW(0)[x] = (float)(line[x] / (1 - zn1 * zn1));
    for (int y = 1; y < h; y++) {
        float *r = ROW(y);
        const float *p = ROW(y - 1);
        for (int x = 0; x < w; x++) r[x] = (float)(6.0 * r[x] + z * p[x]);
    }
    {
        float *r = ROW(h - 1);
        const float *p = ROW(h - 2);
        for (int x = 0; x < w; x++) r[x] = (float)((z * p[x] + r[x]) * z / (z * z - 1));
    }
    for (int y = h - 2; y >= 0; y--) {
        float *r = ROW(y);
        const float *nx = ROW(y + 1);
        for (int x = 0; x < w; x++) r[x] = (float)(z * (nx[x] - r[x]));
    }
#undef ROW
}

/* Taps of a position already inside [0, n - 1]: first index and weights. */
static inline int cubic_taps(double c, double *wt) {
    double f = floor(c), t = c - f, u = 1.0 - t;
    wt[0] = u * u * u / 6.0;
    wt[1] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0;
    wt[2] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0;
    wt[3] = t * t * t / 6.0;
    return (int)f - 1;
}

/* Per-position weights over the g grid points of one axis of a T-pixel tile
 * (the 4 taps folded onto the grid): W[t * g + i]. */
static void grid_weights(int tile, int g, double *W) {
    memset(W, 0, (size_t)tile * g * sizeof *W);
    for (int t = 0; t < tile; t++) {
        double cp = tile > 1 ? (double)(g - 1) * t / (tile - 1) : 0, wt[4];
        int s = cubic_taps(cp, wt);
        for (int k = 0; k < 4; k++) W[(size_t)t * g + fold(s + k, g)] += wt[k];
    }
}

/* ---- the warp ---------------------------------------------------------------- */

/* The dihedral element: tile pixel (y, x) -> (u, v). */
static inline void dihedral(int y, int x, int T, int flip_x, int rot90, int *u, int *v) {
    int a = y, b = flip_x ? T - 1 - x : x;
    for (int k = 0; k < rot90; k++) {
        int t = a;
        a = b, b = T - 1 - t;
    }
    *u = a, *v = b;
}

static int copy_dihedral(const unet_warp *w, const unet_augment_args *a) {
    const int T = a->tile, S = T + 2 * a->context, ctx = a->context;
    const size_t plane = (size_t)T * T, splane = (size_t)S * S;
    for (int y = 0; y < T; y++)
        for (int x = 0; x < T; x++) {
            int u, v;
            dihedral(y, x, T, w->flip_x, w->rot90 & 3, &u, &v);
            size_t s = (size_t)(u + ctx) * S + v + ctx, d = (size_t)y * T + x;
            for (int c = 0; c < a->channels; c++) a->raw[c * plane + d] = a->src_raw[c * splane + s];
            a->label[d] = a->src_label[s];
            a->weight[d] = a->src_weight[s];
        }
    return 0;
}

int unet_augment_warp(const unet_warp *w, const unet_augment_args *a, char *err, size_t errlen) {
    const int T = a->tile, ctx = a->context, S = T + 2 * ctx, C = a->channels, g = w->grid;
    const int elastic = w->dy && w->dx;
    if (elastic && (g < 2 || g > MAX_GRID)) {
        snprintf(err, errlen, "augmentation: an elastic grid of %d points per side; it takes 2 to %d", g, MAX_GRID);
        return -1;
    }
    if (!elastic && w->angle == 0 && w->scale == 1) return copy_dihedral(w, a);

    const size_t plane = (size_t)T * T, splane = (size_t)S * S;
    const int cubic = w->interp == UNET_INTERP_CUBIC;
    float *coef = cubic ? malloc(splane * C * sizeof *coef) : NULL;
    double *line = malloc((size_t)S * sizeof *line);
    double *W = elastic ? malloc((size_t)T * g * sizeof *W) : NULL;
    double *Ry = elastic ? malloc((size_t)T * g * sizeof *Ry) : NULL, *Rx = elastic ? malloc((size_t)T * g * sizeof *Rx) : NULL;
    if ((cubic && !coef) || !line || (elastic && (!W || !Ry || !Rx))) {
        free(coef), free(line), free(W), free(Ry), free(Rx);
        snprintf(err, errlen, "augmentation: out of memory for a %d x %d window", S, S);
        return -1;
    }
    if (cubic) {
        memcpy(coef, a->src_raw, splane * C * sizeof *coef);
        for (int c = 0; c < C; c++) spline_image(coef + c * splane, S, S, line);
    }
    const float *src = cubic ? coef : a->src_raw;
    if (elastic) {
        /* coefficients of the displacement grids, then each row u's grid row combined once: Ry[u*g + j] */
        double cy[MAX_GRID * MAX_GRID], cx[MAX_GRID * MAX_GRID];
        memcpy(cy, w->dy, (size_t)g * g * sizeof(double));
        memcpy(cx, w->dx, (size_t)g * g * sizeof(double));
        for (int i = 0; i < g; i++) spline_line(cy + i * g, g, 1), spline_line(cx + i * g, g, 1);
        for (int j = 0; j < g; j++) spline_line(cy + j, g, g), spline_line(cx + j, g, g);
        grid_weights(T, g, W);
        for (int u = 0; u < T; u++)
            for (int j = 0; j < g; j++) {
                double sy = 0, sx = 0;
                for (int i = 0; i < g; i++) sy += W[(size_t)u * g + i] * cy[i * g + j], sx += W[(size_t)u * g + i] * cx[i * g + j];
                Ry[(size_t)u * g + j] = sy, Rx[(size_t)u * g + j] = sx;
            }
    }
    const double centre = (T - 1) / 2.0, ca = cos(w->angle) / w->scale, sa = sin(w->angle) / w->scale;
    for (int y = 0; y < T; y++)
        for (int x = 0; x < T; x++) {
            int u, v;
            dihedral(y, x, T, w->flip_x, w->rot90 & 3, &u, &v);
            double p = u - centre, q = v - centre;
            double sy = ctx + centre + ca * p - sa * q, sx = ctx + centre + sa * p + ca * q;
            if (elastic)
                for (int j = 0; j < g; j++) {
                    double wv = W[(size_t)v * g + j];
                    sy += wv * Ry[(size_t)u * g + j], sx += wv * Rx[(size_t)u * g + j];
                }
            sy = mirror_position(sy, S), sx = mirror_position(sx, S);
            size_t d = (size_t)y * T + x;
            /* labels and weights: the nearest pixel (scipy order 0 rounds halves up) */
            size_t near = (size_t)fold((int)floor(sy + 0.5), S) * S + fold((int)floor(sx + 0.5), S);
            a->label[d] = a->src_label[near];
            a->weight[d] = a->src_weight[near];
            if (cubic) {
                double wy[4], wx[4];
                int y0 = cubic_taps(sy, wy), x0 = cubic_taps(sx, wx);
                size_t rows[4];
                int cols[4];
                for (int k = 0; k < 4; k++) rows[k] = (size_t)fold(y0 + k, S) * S, cols[k] = fold(x0 + k, S);
                for (int c = 0; c < C; c++) {
                    const float *s = src + c * splane;
                    double acc = 0;
                    for (int i = 0; i < 4; i++) {
                        const float *r = s + rows[i];
                        acc += wy[i] * (wx[0] * r[cols[0]] + wx[1] * r[cols[1]] + wx[2] * r[cols[2]] + wx[3] * r[cols[3]]);
                    }
                    a->raw[c * plane + d] = (float)acc;
                }
            } else {
                double fy = floor(sy), fx = floor(sx), ty = sy - fy, tx = sx - fx;
                size_t r0 = (size_t)fold((int)fy, S) * S, r1 = (size_t)fold((int)fy + 1, S) * S;
                int c0 = fold((int)fx, S), c1 = fold((int)fx + 1, S);
                for (int c = 0; c < C; c++) {
                    const float *s = src + c * splane;
                    a->raw[c * plane + d] = (float)((1 - ty) * ((1 - tx) * s[r0 + c0] + tx * s[r0 + c1]) +
                                                    ty * ((1 - tx) * s[r1 + c0] + tx * s[r1 + c1]));
                }
            }
        }
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

int unet_augment_apply(void *ctx, const unet_augment_args *a, char *err, size_t errlen) {
    const unet_augment_cfg *c = ctx;
    const uint64_t key = a->key;
    const int g = c->elastic_grid;
    double dy[MAX_GRID * MAX_GRID], dx[MAX_GRID * MAX_GRID];
    unet_warp w = {.grid = g, .scale = 1, .interp = c->interp};
    if (c->flip) w.flip_x = uniform(key, DRAW_FLIP) < 0.5;
    if (c->rot90) w.rot90 = (int)(uniform(key, DRAW_ROT90) * 4);
    if (c->rotate) w.angle = (2 * uniform(key, DRAW_ANGLE) - 1) * c->rotate_degrees * M_PI / 180;
    if (c->scale) w.scale = 1 + (2 * uniform(key, DRAW_SCALE) - 1) * c->scale_range;
    if (c->elastic && c->elastic_sigma > 0) {
        for (int i = 0; i < g * g; i++) {
            dy[i] = c->elastic_sigma * gaussian(key, DRAW_GRID, (uint64_t)i);
            dx[i] = c->elastic_sigma * gaussian(key, DRAW_GRID, (uint64_t)(g * g + i));
        }
        w.dy = dy, w.dx = dx;
    }
    if (unet_augment_warp(&w, a, err, errlen)) return -1;
    if (c->gamma || c->brightness || c->contrast || c->noise)
        intensity(c, key, a->raw, (size_t)a->channels * a->tile * a->tile);
    return 0;
}
