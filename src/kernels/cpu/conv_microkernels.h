/* The convolution micro-kernels, written once and compiled once per
 * instruction set: conv_gemm.c defines VEC, VL, the V* operations, the tile
 * sizes MR, NR, DMR, DNR and ISA_NAME, then includes this file inside that
 * instruction set's target region. Deliberately no include guard.
 *
 * Register budget: gemm_tile keeps MR x NR/VL accumulators, one row of B and
 * one broadcast of A live; dot_tile keeps DMR x DNR accumulators, DMR rows of
 * A and one row of B. The sizes in conv_gemm.c fill the register file
 * without spilling. */

/* C[MR][nv * VL] = (load_c ? C : 0) + sum_k A[0..MR)[k] (outer) B_k[0..nv * VL),
 * where A[i][k] = a[i * a_row + k * a_col] (row- or column-major, read in
 * place) and B_k = b + b_offset[k] (rows of B read in place: shifted image
 * rows, or a packed panel); C rows ldc apart. nv <= NR / VL vectors of
 * columns, a constant wherever this is inlined, so that the loops over them
 * unroll into registers. */
static inline __attribute__((always_inline)) void ISA_NAME(gemm_block)(int nv, int kc, const float *a, size_t a_row,
                                                                       size_t a_col, const float *b,
                                                                       const long *b_offset, float *restrict c,
                                                                       size_t ldc, int load_c) {
    VEC acc[MR][NR / VL];
    const float *ar[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        ar[i] = a + i * a_row;
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) acc[i][j] = load_c ? VLOAD(c + i * ldc + j * VL) : VZERO();
    }
    size_t ka = 0;
    for (int k = 0; k < kc; k++, ka += a_col) {
        const float *bk = b + b_offset[k];
        VEC bv[NR / VL];
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) bv[j] = VLOAD(bk + j * VL);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            VEC av = VSET1(ar[i][ka]);
#pragma GCC unroll 8
            for (int j = 0; j < nv; j++) acc[i][j] = VFMA(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < nv; j++) VSTORE(c + i * ldc + j * VL, acc[i][j]);
}

/* The full MR x NR tile. */
static void ISA_NAME(gemm_tile)(int kc, const float *a, size_t a_row, size_t a_col, const float *b,
                                const long *b_offset, float *restrict c, size_t ldc, int load_c) {
    ISA_NAME(gemm_block)(NR / VL, kc, a, a_row, a_col, b, b_offset, c, ldc, load_c);
}

/* A narrower tile, nv < NR / VL vectors: the ragged last panel of a product,
 * computed without the columns it does not have. */
static void ISA_NAME(gemm_tile_narrow)(int nv, int kc, const float *a, size_t a_row, size_t a_col, const float *b,
                                       const long *b_offset, float *restrict c, size_t ldc, int load_c) {
    enum { NV = NR / VL };
    switch (nv) {
    case 1:
        ISA_NAME(gemm_block)(1, kc, a, a_row, a_col, b, b_offset, c, ldc, load_c);
        break;
    case 2:
        ISA_NAME(gemm_block)(NV > 2 ? 2 : NV, kc, a, a_row, a_col, b, b_offset, c, ldc, load_c);
        break;
    default:
        ISA_NAME(gemm_block)(NV > 3 ? 3 : NV, kc, a, a_row, a_col, b, b_offset, c, ldc, load_c);
        break;
    }
}

/* C[i][j] += sum_{p < k} a[i][p] * b[j][p], i < DMR, j < DNR: lanes of
 * partial sums, the < VL leftover products as a masked step (or, without
 * masked loads, added in order after the reduction), each lane set reduced in
 * a fixed order. */
static void ISA_NAME(dot_tile)(long k, const float *const *a, const float *const *b, float *c, size_t ldc) {
    VEC acc[DMR][DNR];
    const float *ar[DMR], *br[DNR];
#pragma GCC unroll 8
    for (int i = 0; i < DMR; i++) {
        ar[i] = a[i];
#pragma GCC unroll 8
        for (int j = 0; j < DNR; j++) acc[i][j] = VZERO();
    }
#pragma GCC unroll 8
    for (int j = 0; j < DNR; j++) br[j] = b[j];
    long kv = k - k % VL;
    for (long p = 0; p < kv; p += VL) {
        VEC av[DMR];
#pragma GCC unroll 8
        for (int i = 0; i < DMR; i++) av[i] = VLOAD(ar[i] + p);
#pragma GCC unroll 8
        for (int j = 0; j < DNR; j++) {
            VEC bv = VLOAD(br[j] + p);
#pragma GCC unroll 8
            for (int i = 0; i < DMR; i++) acc[i][j] = VFMA(av[i], bv, acc[i][j]);
        }
    }
#ifdef VLOAD_PARTIAL
    /* the last < VL products as one more step, lanes past k loaded as zero */
    if (kv < k) {
        int rest = (int)(k - kv);
        VEC av[DMR];
#pragma GCC unroll 8
        for (int i = 0; i < DMR; i++) av[i] = VLOAD_PARTIAL(ar[i] + kv, rest);
#pragma GCC unroll 8
        for (int j = 0; j < DNR; j++) {
            VEC bv = VLOAD_PARTIAL(br[j] + kv, rest);
#pragma GCC unroll 8
            for (int i = 0; i < DMR; i++) acc[i][j] = VFMA(av[i], bv, acc[i][j]);
        }
    }
    float sums[DMR][DNR];
#if defined(VSUM4) && DMR == 4 && DNR == 6
    /* four lane sets per shuffle tree: columns 0..3 of each row, then
     * columns 4..5 of two rows */
#pragma GCC unroll 4
    for (int i = 0; i < DMR; i++) VSUM4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], &sums[i][0]);
#pragma GCC unroll 2
    for (int i = 0; i < DMR; i += 2) {
        float t[4];
        VSUM4(acc[i][4], acc[i][5], acc[i + 1][4], acc[i + 1][5], t);
        sums[i][4] = t[0];
        sums[i][5] = t[1];
        sums[i + 1][4] = t[2];
        sums[i + 1][5] = t[3];
    }
#else
#pragma GCC unroll 8
    for (int i = 0; i < DMR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < DNR; j++) sums[i][j] = VSUM(acc[i][j]);
#endif
#pragma GCC unroll 8
    for (int i = 0; i < DMR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < DNR; j++) c[(size_t)i * ldc + j] += sums[i][j];
#else
    /* no masked loads: the last < VL products added in order after the reduction */
    for (int i = 0; i < DMR; i++)
        for (int j = 0; j < DNR; j++) {
            float s = VSUM(acc[i][j]);
            for (long p = kv; p < k; p++) s += ar[i][p] * br[j][p];
            c[(size_t)i * ldc + j] += s;
        }
#endif
}
