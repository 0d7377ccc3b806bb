/* The matrix products behind the CPU convolutions (conv.c), on this CPU's
 * widest vector unit, with no BLAS and no allocation.
 *
 * Two products cover every convolution pass:
 *
 * - conv_gemm_run: C (M x N) = A (M x K) . B (K x N), where A is a weight
 *   matrix read in place (row- or column-major) and row r of B is a "shifted
 *   view" of a source, read in place too: row r = (ch, t) is
 *   src + ch * src_stride + tap_offset[t], N consecutive floats. A 3x3
 *   convolution of a (padded) image of width w is then one product with
 *   tap_offset[dy*3+dx] = dy*w + dx: its output comes out "wide" (w columns a
 *   row, the last two garbage), and an epilogue compacts it, adding bias and
 *   ReLU on the way while the block is in cache.
 * - conv_dot_run: C (M x N) += A . B^T where rows of A and of B are
 *   contiguous runs of floats (B rows again shifted views): the weight
 *   gradient, a sum over pixels, without transposing anything.
 *
 * Both are run by every thread of an OpenMP parallel region (tid of nthreads)
 * and split the output between threads (conv_gemm_run its columns, or its
 * rows where A is the larger operand), never a sum: every output element is
 * summed by one thread in one fixed order, so the bits do not depend on the
 * thread count or on timing. No barrier inside: the caller places them.
 *
 * The vector kernels exist for AVX-512, AVX2+FMA, SSE2 and plain C; the best
 * the CPU supports is used, or the one UNET_CONV_ISA (avx512, avx2, sse2,
 * scalar) names, to test or compare the others. */
#ifndef UNET_CPU_CONV_GEMM_H
#define UNET_CPU_CONV_GEMM_H

#include <stddef.h>

#define CONV_MAX_TAPS 9

/* B rows, and the dot product's B rows, are given by an offset table: row r
 * is src + row_offset[r]. For rows r = (ch, t) = (r / taps, r % taps), the
 * shifted views of a convolution, row_offset[r] = ch * stride + tap_offset[t]:
 * conv_row_offsets fills rows [r0, r1) of such a table. */
void conv_row_offsets(long *table, long r0, long r1, size_t stride, int taps, const long *tap_offset);

typedef struct {
    int m, n, k;
    /* A[i][k] = a[i * a_row + k * a_col]: a row-major or column-major matrix,
     * read in place */
    const float *a;
    size_t a_row, a_col;
    const float *src; /* B row r: src + row_offset[r], n consecutive floats */
    const long *row_offset;
    /* Where C goes: c (row i at c + i * ldc), added to what is there when
     * accumulate; or c == NULL: per-thread scratch, which the epilogue must
     * consume. */
    float *c;
    size_t ldc;
    int accumulate;
    /* Called by each thread for each finished block of its rows [i0, i1)
     * and columns [q0, q0 + nq), at cblock (row i at cblock + i * ldc,
     * column q0 first); NULL: none. */
    void (*epilogue)(const void *ctx, float *cblock, size_t ldc, int i0, int i1, long q0, int nq);
    const void *ctx;
} conv_gemm_job;

typedef struct {
    int m, n;
    long k;
    const float *a; /* row i: a + i * a_stride */
    size_t a_stride;
    const float *b; /* row j: b + row_offset[j] */
    const long *row_offset;
    float *c; /* C[i][j] at c[i * ldc + j], added to */
    size_t ldc;
} conv_dot_job;

/* Floats of scratch one thread needs for a product with m rows, with or
 * without the C scratch (job.c == NULL). */
size_t conv_gemm_thread_floats(int m, int with_c_scratch);
void conv_gemm_run(const conv_gemm_job *job, float *thread_scratch, int tid, int nthreads);

void conv_dot_run(const conv_dot_job *job, int tid, int nthreads);

/* Threads a convolution runs with, and the number the workspace is sized for
 * (never fewer): the first can change at run time, the second cannot. */
int conv_threads(void);
int conv_thread_slots(void);

/* Name of the vector kernels in use ("avx512", ...), for benchmarks. */
const char *conv_isa_name(void);

#endif
