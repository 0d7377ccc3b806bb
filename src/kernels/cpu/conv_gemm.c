/* The convolution products (conv_gemm.h): micro-kernels per instruction
 * set, their dispatch, and the blocked drivers that call them.
 *
 * Blocking: each thread takes a contiguous range of columns; for each
 * NC-column block and KC-deep slice of it, it sweeps MR-row panels of A and,
 * for each, every NR-column panel of B. Neither operand is packed: A is a
 * weight matrix whose KC x MR slice stays in L1 while the B panels stream
 * from L2, and B rows are rows of the image (shifted), which the kernel reads
 * where they lie, through a table of row offsets; only the ragged last panel
 * of each is copied, zero-padded. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/conv_gemm.h"

typedef struct {
    const char *name;
    int vl;       /* floats per vector */
    int mr, nr;   /* gemm_tile: MR x NR outputs */
    int kc, nc;   /* gemm blocks: KC deep, NC columns (a multiple of NR) */
    int dmr, dnr; /* dot_tile: DMR x DNR outputs */
    int dot_k;    /* dot: floats of each row summed per pass (a multiple of the vector length) */
    int dot_mb;   /* dot: rows of A swept per B tile, so that they stay in L2 */
    void (*gemm_tile)(int kc, const float *a, size_t a_row, size_t a_col, const float *b, const long *b_offset,
                      float *c, size_t ldc, int load_c);
    /* the same, nv < NR / VL vectors of columns wide */
    void (*gemm_tile_narrow)(int nv, int kc, const float *a, size_t a_row, size_t a_col, const float *b,
                             const long *b_offset, float *c, size_t ldc, int load_c);
    void (*dot_tile)(long k, const float *const *a, const float *const *b, float *c, size_t ldc);
    int (*supported)(void);
} conv_isa;

#define MAX_MR  8
#define MAX_NR  48
#define MAX_DMR 4
#define MAX_DNR 6

#define ISA_CAT2(a, b) a##_##b
#define ISA_CAT(a, b)  ISA_CAT2(a, b)
#define ISA_NAME(x)    ISA_CAT(x, ISA_SUFFIX)

/* ---- plain C: any CPU ---- */
#define ISA_SUFFIX    scalar
#define VEC           float
#define VL            1
#define VZERO()       0.0f
#define VLOAD(p)      (*(p))
#define VSTORE(p, v)  (*(p) = (v))
#define VSET1(x)      (x)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VSUM(v)       (v)
#define MR            4
#define NR            4
#define DMR           2
#define DNR           2
#include "kernels/cpu/conv_microkernels.h"
#undef ISA_SUFFIX
#undef VEC
#undef VL
#undef VZERO
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VSUM
#undef VLOAD_PARTIAL
#undef VSUM4
#undef MR
#undef NR
#undef DMR
#undef DNR

static int supported_always(void) { return 1; }

#if defined(__x86_64__)
#include <immintrin.h>

/* ---- SSE2: every x86-64 ---- */
static inline float hsum_sse2(__m128 v) {
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#define ISA_SUFFIX    sse2
#define VEC           __m128
#define VL            4
#define VZERO()       _mm_setzero_ps()
#define VLOAD(p)      _mm_loadu_ps(p)
#define VSTORE(p, v)  _mm_storeu_ps(p, v)
#define VSET1(x)      _mm_set1_ps(x)
#define VFMA(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
#define VSUM(v)       hsum_sse2(v)
#define MR            4
#define NR            8
#define DMR           2
#define DNR           4
#include "kernels/cpu/conv_microkernels.h"
#undef ISA_SUFFIX
#undef VEC
#undef VL
#undef VZERO
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VSUM
#undef VLOAD_PARTIAL
#undef VSUM4
#undef MR
#undef NR
#undef DMR
#undef DNR

/* ---- AVX2 + FMA ---- */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
/* 8 all-ones then 8 zeros: a window at 8 - n masks the first n lanes */
static const int avx2_lane_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#define ISA_SUFFIX          avx2
#define VEC                 __m256
#define VL                  8
#define VZERO()             _mm256_setzero_ps()
#define VLOAD(p)            _mm256_loadu_ps(p)
#define VSTORE(p, v)        _mm256_storeu_ps(p, v)
#define VSET1(x)            _mm256_set1_ps(x)
#define VFMA(a, b, c)       _mm256_fmadd_ps(a, b, c)
#define VSUM(v)             hsum_avx2(v)
#define VLOAD_PARTIAL(p, n) _mm256_maskload_ps(p, _mm256_loadu_si256((const __m256i *)(avx2_lane_mask + 8 - (n))))
#define MR                  4
#define NR                  24
#define DMR                 3
#define DNR                 4
#include "kernels/cpu/conv_microkernels.h"
#undef ISA_SUFFIX
#undef VEC
#undef VL
#undef VZERO
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VSUM
#undef VLOAD_PARTIAL
#undef VSUM4
#undef MR
#undef NR
#undef DMR
#undef DNR
#pragma GCC pop_options

/* ---- AVX-512 ---- */
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
/* out[i] = sum of the lanes of the i-th vector, for four at once: pairs
 * interleaved and added within 128-bit lanes until each 128-bit lane holds
 * one partial sum of each vector, then the four 128-bit lanes added. */
static inline void hsum4_avx512(__m512 a, __m512 b, __m512 c, __m512 d, float *out) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    /* each 128-bit lane held (a, b, c, d) partial sums; quarter adds the four lanes */
    _mm_storeu_ps(out, quarter);
}
#define ISA_SUFFIX             avx512
#define VEC                    __m512
#define VL                     16
#define VZERO()                _mm512_setzero_ps()
#define VLOAD(p)               _mm512_loadu_ps(p)
#define VSTORE(p, v)           _mm512_storeu_ps(p, v)
#define VSET1(x)               _mm512_set1_ps(x)
#define VFMA(a, b, c)          _mm512_fmadd_ps(a, b, c)
#define VSUM(v)                _mm512_reduce_add_ps(v)
#define VLOAD_PARTIAL(p, n)    _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)
#define VSUM4(a, b, c, d, out) hsum4_avx512(a, b, c, d, out)
#define MR                     8
#define NR                     48
#define DMR                    4
#define DNR                    6
#include "kernels/cpu/conv_microkernels.h"
#undef ISA_SUFFIX
#undef VEC
#undef VL
#undef VZERO
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VFMA
#undef VSUM
#undef VLOAD_PARTIAL
#undef VSUM4
#undef MR
#undef NR
#undef DMR
#undef DNR
#pragma GCC pop_options

static int supported_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int supported_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

#define ISA_ENTRY(suffix, vl_, mr_, nr_, nc_, dmr_, dnr_, supported_)                                                  \
    {                                                                                                                  \
        .name = #suffix, .vl = vl_, .mr = mr_, .nr = nr_, .kc = 256, .nc = nc_, .dmr = dmr_, .dnr = dnr_,              \
        .dot_k = 2048, .dot_mb = 64, .gemm_tile = gemm_tile_##suffix, .gemm_tile_narrow = gemm_tile_narrow_##suffix,   \
        .dot_tile = dot_tile_##suffix, .supported = supported_,                                                        \
    }

/* Best first. */
static const conv_isa isas[] = {
#if defined(__x86_64__)
    ISA_ENTRY(avx512, 16, 8, 48, 480, 4, 6, supported_avx512),
    ISA_ENTRY(avx2, 8, 4, 24, 480, 3, 4, supported_avx2),
    ISA_ENTRY(sse2, 4, 4, 8, 480, 2, 4, supported_always),
#endif
    ISA_ENTRY(scalar, 1, 4, 4, 480, 2, 2, supported_always),
};
#define N_ISAS ((int)(sizeof isas / sizeof isas[0]))

static const conv_isa *chosen_isa;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void choose_isa(void) {
    const conv_isa *best = NULL;
    for (int i = 0; i < N_ISAS && !best; i++)
        if (isas[i].supported()) best = &isas[i];
    chosen_isa = best;
    const char *want = getenv("UNET_CONV_ISA");
    if (!want || !*want) return;
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(isas[i].name, want) && isas[i].supported()) {
            chosen_isa = &isas[i];
            return;
        }
    fprintf(stderr,
            "unet: UNET_CONV_ISA=%s is not one this CPU runs (avx512, avx2, sse2, scalar, where supported); "
            "using %s\n",
            want, best->name);
}

static const conv_isa *isa(void) {
    pthread_once(&isa_once, choose_isa);
    return chosen_isa;
}

const char *conv_isa_name(void) { return isa()->name; }

int conv_thread_slots(void) {
    int p = omp_get_num_procs();
    return p < 1 ? 1 : p > 64 ? 64 : p;
}

int conv_threads(void) {
    int t = omp_get_max_threads(), s = conv_thread_slots();
    return t < s ? t : s;
}

static long ceil_div(long a, long b) { return (a + b - 1) / b; }
static long min_l(long a, long b) { return a < b ? a : b; }

void conv_row_offsets(long *table, long r0, long r1, size_t stride, int taps, const long *tap_offset) {
    for (long r = r0; r < r1; r++) table[r] = (long)(r / taps) * (long)stride + tap_offset[r % taps];
}

/* Per-thread scratch: the last, partial column panel of B packed [KC][NR]
 * with its row table; the last, partial row panel of A copied [MR][KC]; C. */
typedef struct {
    float *panel, *a_rows, *c;
    long *panel_rows;
} gemm_scratch;

static gemm_scratch scratch_parts(const conv_isa *I, float *base) {
    gemm_scratch s;
    s.panel = base;
    s.panel_rows = (long *)(base + (size_t)I->kc * I->nr);
    s.a_rows = base + (size_t)I->kc * I->nr + 2 * (size_t)I->kc;
    s.c = s.a_rows + (size_t)I->mr * I->kc;
    return s;
}

size_t conv_gemm_thread_floats(int m, int with_c_scratch) {
    const conv_isa *I = isa();
    return (size_t)I->kc * (I->nr + 2 + I->mr) + (with_c_scratch ? (size_t)m * I->nc : 0);
}

/* A tile at the bottom or right edge, `cols` <= NR columns: computed whole
 * vectors wide in a local tile, only its valid part read from and written
 * to C. */
static void edge_tile(const conv_isa *I, int kc, const float *a, size_t a_row, size_t a_col, const float *b,
                      const long *b_offset, float *c, size_t ldc, int rows, int cols, int load_c) {
    float tile[MAX_MR * MAX_NR] = {0};
    int nv = (cols + I->vl - 1) / I->vl;
    if (load_c)
        for (int i = 0; i < rows; i++) memcpy(tile + i * I->nr, c + i * ldc, (size_t)cols * sizeof(float));
    if (nv * I->vl == I->nr)
        I->gemm_tile(kc, a, a_row, a_col, b, b_offset, tile, (size_t)I->nr, load_c);
    else
        I->gemm_tile_narrow(nv, kc, a, a_row, a_col, b, b_offset, tile, (size_t)I->nr, load_c);
    for (int i = 0; i < rows; i++) memcpy(c + i * ldc, tile + i * I->nr, (size_t)cols * sizeof(float));
}

void conv_gemm_run(const conv_gemm_job *job, float *thread_scratch, int tid, int nthreads) {
    const conv_isa *I = isa();
    int mr = I->mr, nr = I->nr, m0 = 0, m1 = job->m;
    long k = job->k, n = job->n, lo = 0, hi = n;
    /* Each thread takes a range of columns, and reads all of A; or, where A
     * is the larger operand (deep layers of few pixels: a 512 x 4608 weight
     * against 286 columns), a range of rows in whole panels, and reads only
     * its part of A. */
    if (job->m > n) {
        long per = ceil_div(ceil_div(job->m, nthreads), mr) * mr;
        m0 = (int)min_l(job->m, tid * per);
        m1 = (int)min_l(job->m, m0 + per);
    } else {
        long chunk = ceil_div(ceil_div(n, nthreads), nr) * nr;
        lo = min_l(n, tid * chunk);
        hi = min_l(n, lo + chunk);
    }
    if (lo >= hi || m0 >= m1) return;
    /* equal slices rather than KC and a remainder: no short last pass */
    int kc = (int)ceil_div(k, ceil_div(k, I->kc));
    gemm_scratch s = scratch_parts(I, thread_scratch);
    for (int kk = 0; kk < kc; kk++) s.panel_rows[kk] = (long)kk * nr;
    for (long q0 = lo; q0 < hi; q0 += I->nc) {
        int nc = (int)min_l(I->nc, hi - q0), full = nc / nr * nr, rest = nc - full;
        float *cb = job->c ? job->c + q0 : s.c;
        size_t ldc = job->c ? job->ldc : (size_t)I->nc;
        for (long pc = 0; pc < k; pc += kc) {
            int kcur = (int)min_l(kc, k - pc);
            int load_c = pc > 0 || (job->c && job->accumulate);
            const long *rows_pc = job->row_offset + pc;
            /* the last columns, fewer than NR, as a zero-padded panel: reading
             * them in place would run past the valid columns */
            if (rest)
                for (int kk = 0; kk < kcur; kk++) {
                    const float *src = job->src + rows_pc[kk] + q0 + full;
                    float *d = s.panel + (size_t)kk * nr;
                    memcpy(d, src, (size_t)rest * sizeof(float));
                    memset(d + rest, 0, (size_t)(nr - rest) * sizeof(float));
                }
            for (int ir = m0; ir < m1; ir += mr) {
                int rows = m1 - ir < mr ? m1 - ir : mr;
                const float *a = job->a + (size_t)ir * job->a_row + (size_t)pc * job->a_col;
                size_t a_row = job->a_row, a_col = job->a_col;
                if (rows < mr || a_col != 1) {
                    /* copied k-major ([KC][MR], zero-padded past the last row): the
                     * last rows, fewer than MR, because the kernel reads MR rows; a
                     * column-major A (a 1x1 weight read transposed, in its backward)
                     * because its columns lie a_col floats apart, often a power of
                     * two, and would all fall in the same few sets of L1 */
                    for (int kk = 0; kk < kcur; kk++)
                        for (int i = 0; i < mr; i++)
                            s.a_rows[(size_t)kk * mr + i] = i < rows ? a[(size_t)i * a_row + (size_t)kk * a_col] : 0.0f;
                    a = s.a_rows;
                    a_row = 1;
                    a_col = (size_t)mr;
                }
                float *crow = cb + (size_t)ir * ldc;
                for (int jr = 0; jr < nc; jr += nr) {
                    int cols = nc - jr < nr ? nc - jr : nr;
                    const float *b = cols == nr ? job->src + q0 + jr : s.panel;
                    const long *b_rows = cols == nr ? rows_pc : s.panel_rows;
                    if (rows == mr && cols == nr)
                        I->gemm_tile(kcur, a, a_row, a_col, b, b_rows, crow + jr, ldc, load_c);
                    else
                        edge_tile(I, kcur, a, a_row, a_col, b, b_rows, crow + jr, ldc, rows, cols, load_c);
                }
            }
        }
        if (job->epilogue) job->epilogue(job->ctx, cb, ldc, m0, m1, q0, nc);
    }
}

void conv_dot_run(const conv_dot_job *job, int tid, int nthreads) {
    const conv_isa *I = isa();
    int dmr = I->dmr, dnr = I->dnr;
    long tiles_i = ceil_div(job->m, dmr), tiles_j = ceil_div(job->n, dnr);
    long ilo = 0, ihi = tiles_i, jlo = 0, jhi = tiles_j;
    /* split the columns (so that each thread reads only its part of B), or
     * the rows when there are too few columns to go round */
    if (tiles_j >= nthreads) {
        long per = ceil_div(tiles_j, nthreads);
        jlo = tid * per;
        jhi = min_l(tiles_j, jlo + per);
    } else {
        long per = ceil_div(tiles_i, nthreads);
        ilo = tid * per;
        ihi = min_l(tiles_i, ilo + per);
    }
    if (ilo >= ihi || jlo >= jhi) return;
    long block_tiles = I->dot_mb / dmr;
    const float *arow[MAX_DMR], *brow[MAX_DNR];
    for (long k0 = 0; k0 < job->k; k0 += I->dot_k) {
        long kk = min_l(I->dot_k, job->k - k0);
        for (long ib = ilo; ib < ihi; ib += block_tiles) {
            long iend = min_l(ihi, ib + block_tiles);
            for (long jt = jlo; jt < jhi; jt++) {
                int cols = (int)min_l(dnr, job->n - jt * dnr);
                for (int j = 0; j < dnr; j++) {
                    /* rows past the edge repeat the last one; their sums are dropped */
                    long r = jt * dnr + (j < cols ? j : cols - 1);
                    brow[j] = job->b + job->row_offset[r] + k0;
                }
                for (long it = ib; it < iend; it++) {
                    int rows = (int)min_l(dmr, job->m - it * dmr);
                    for (int i = 0; i < dmr; i++)
                        arow[i] = job->a + (size_t)(it * dmr + (i < rows ? i : rows - 1)) * job->a_stride + k0;
                    float *c = job->c + (size_t)(it * dmr) * job->ldc + jt * dnr;
                    if (rows == dmr && cols == dnr) {
                        I->dot_tile(kk, arow, brow, c, job->ldc);
                    } else {
                        float tile[MAX_DMR * MAX_DNR] = {0};
                        I->dot_tile(kk, arow, brow, tile, (size_t)dnr);
                        for (int i = 0; i < rows; i++)
                            for (int j = 0; j < cols; j++) c[(size_t)i * job->ldc + j] += tile[i * dnr + j];
                    }
                }
            }
        }
    }
}
