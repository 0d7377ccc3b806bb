/* Times the CPU backend's conv / conv_t2 ops, forward and backward, called
 * exactly as a compiled plan calls them (the production op table), on random
 * data. bench/conv_cpu.py runs it side by side with PyTorch.
 *
 *   unet_convbench --op conv|conv_t2 --in N,C,H,W --out-c O [--k 3 --stride 1 --pad 0 --groups 1
 *                  --act relu (or --relu 1) ...: unet_optest's node attributes] [--din 0|1] [--reps 5]
 *
 * Prints one JSON line: the best and median forward and backward times in
 * milliseconds, wall clock and process CPU time (on a machine shared with
 * other load, CPU time of a single-threaded run is the steadier measure), the
 * vector kernels used and the thread count. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/conv_gemm.h"
#include "unet/backend.h"

#define TOOL_NAME "unet_convbench"
#include "tool_common.h"

static float *random_floats(size_t n, unsigned *state, float scale) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) die("out of memory", NULL);
    for (size_t i = 0; i < n; i++) {
        *state = *state * 1664525u + 1013904223u;
        p[i] = scale * ((float)(*state >> 8) / (float)(1u << 24) - 0.5f);
    }
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *op_name = "conv";
    unet_shape in = {0, 0, 0, 0};
    int reps = 5, want_din = 1;
    unet_node node = unet_node_make(UNET_OP_CONV, "bench");
    node.k = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--op"))
            op_name = v;
        else if (!strcmp(a, "--in"))
            in = parse_shape(v, NULL);
        else if (node_attr(&node, a, v))
            continue;
        else if (!strcmp(a, "--din"))
            want_din = atoi(v);
        else if (!strcmp(a, "--reps"))
            reps = atoi(v);
        else
            die("unknown option", a);
    }
    if (in.n <= 0 || node.out_c <= 0 || reps <= 0) die("need --in N,C,H,W and --out-c O (and --reps > 0)", NULL);
    unet_shape out;
    size_t wcount;
    if (!strcmp(op_name, "conv")) {
        node.op = UNET_OP_CONV;
        out = (unet_shape){in.n, node.out_c, (in.h + 2 * node.pad - node.k) / node.stride + 1,
                           (in.w + 2 * node.pad - node.k) / node.stride + 1};
        if (node.groups != 1 && (node.groups != in.c || node.out_c != in.c)) die("--groups is 1 or C = O", NULL);
        wcount = (size_t)node.out_c * (in.c / node.groups) * node.k * node.k;
    } else if (!strcmp(op_name, "conv_t2")) {
        node.op = UNET_OP_CONV_T2;
        out = (unet_shape){in.n, node.out_c, 2 * in.h, 2 * in.w};
        wcount = (size_t)in.c * node.out_c * 4;
    } else {
        die("--op is conv or conv_t2", op_name);
    }
    node.n_in = 1;
    const unet_backend *b = unet_cpu_backend();
    const unet_op_impl *impl = b->ops[node.op];
    unsigned seed = 12345;
    unet_op_args a;
    memset(&a, 0, sizeof a);
    a.node = &node;
    a.backend = b;
    a.training = 1;
    a.n_in = 1;
    a.in_shape[0] = in;
    a.out_shape = out;
    a.in[0] = random_floats(unet_shape_count(in), &seed, 2.0f);
    a.param[0] = random_floats(wcount, &seed, 0.1f);
    a.param[1] = random_floats((size_t)node.out_c, &seed, 0.1f);
    a.dparam[0] = random_floats(wcount, &seed, 1.0f);
    a.dparam[1] = random_floats((size_t)node.out_c, &seed, 1.0f);
    a.out = random_floats(unet_shape_count(out), &seed, 1.0f);
    float *dout = random_floats(unet_shape_count(out), &seed, 1.0f);
    float *dout_copy = random_floats(unet_shape_count(out), &seed, 1.0f);
    if (want_din) a.din[0] = random_floats(unet_shape_count(in), &seed, 1.0f);
    size_t ws = impl->workspace_bytes ? impl->workspace_bytes(&a) : 0;
    a.workspace = aligned_alloc(64, (ws + 63) / 64 * 64 + 64);
    if (!a.workspace) die("out of memory for the workspace", NULL);

    /* [clock][pass][rep]: clock 0 wall, 1 CPU; pass 0 forward, 1 backward */
    double *t[2][2];
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < 2; p++) t[c][p] = calloc((size_t)reps, sizeof(double));
    const clockid_t clocks[2] = {CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID};
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        double s0[2], s1[2], s2[2], s3[2];
        for (int c = 0; c < 2; c++) s0[c] = clock_ms(clocks[c]);
        impl->forward(&a);
        for (int c = 0; c < 2; c++) s1[c] = clock_ms(clocks[c]);
        /* backward may clobber dout: give it a fresh copy, outside the timing */
        memcpy(dout_copy, dout, unet_shape_count(out) * sizeof(float));
        a.dout = dout_copy;
        for (int c = 0; c < 2; c++) s2[c] = clock_ms(clocks[c]);
        impl->backward(&a);
        for (int c = 0; c < 2; c++) s3[c] = clock_ms(clocks[c]);
        if (r >= 0)
            for (int c = 0; c < 2; c++) {
                t[c][0][r] = s1[c] - s0[c];
                t[c][1][r] = s3[c] - s2[c];
            }
    }
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < 2; p++) qsort(t[c][p], (size_t)reps, sizeof(double), cmp_double);
    printf("{\"op\": \"%s\", \"isa\": \"%s\", \"threads\": %d, \"workspace_mb\": %.1f", op_name, conv_isa_name(),
           conv_threads(), ws / 1048576.0);
    const char *clock_name[2] = {"", "cpu_"}, *pass_name[2] = {"fwd", "bwd"};
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < 2; p++)
            printf(", \"%s_%sms_min\": %.3f, \"%s_%sms_median\": %.3f", pass_name[p], clock_name[c], t[c][p][0],
                   pass_name[p], clock_name[c], t[c][p][reps / 2]);
    printf("}\n");
    return 0;
}
