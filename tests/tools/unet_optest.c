/* Runs one op of one backend's table on tensors read from files, so that the
 * tests can hold it against PyTorch (tests/cpu/test_ops_*.py) and a CUDA op
 * against its CPU twin (tests/gpu/). The op functions are the production ones,
 * called exactly as a compiled plan calls them.
 *
 *   unet_optest --backend cpu|cuda --op conv --dir D --in 2,3,10,12 [--in 2,1,8,8:i32]
 *               --out 2,4,8,10 [--k 3 --stride 1 --pad 0 --groups 1 --act none|relu|relu6
 *               (--relu 1: --act relu) --out-c 4 --upsample bilinear|nearest --frozen 0 --p 0.5
 *               --eps 1e-5 --momentum 0.1 --scale 1 --training 1 --seed 7 --node-index 0]
 *               [--backward] [--accumulate] [--precision fp32|tf32|bf16 (cuda)] [--layout nchw|nhwc (cuda)]
 *               [--param-offset F]
 *
 * Reads D/in<i>.bin, D/param<j>.bin, D/state<j>.bin, D/dout.bin (backward,
 * non-loss ops), D/din<i>.init.bin (--accumulate); writes D/out.bin,
 * D/din<i>.bin, D/dparam<j>.bin, D/state<j>.out.bin. Raw little-endian
 * float32 (int32 for inputs marked :i32). Outputs are poisoned with NaN first,
 * so an element an op fails to write shows up in the comparison.
 * --param-offset F places each parameter F floats into its allocation, off
 * the alignment a plan's parameter blocks give (the ops' checks must see it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/backend.h"

#define TOOL_NAME "unet_optest"
#include "tool_common.h"

static unet_op parse_op(const char *s) {
    for (int i = 0; i < UNET_OP_COUNT; i++)
        if (strcmp(unet_op_name((unet_op)i), s) == 0) return (unet_op)i;
    die("unknown op", s);
}

/* A device buffer holding a host array's contents (count floats or ints). */
static void *to_device(const unet_backend *b, const void *host, unet_shape s, unet_dtype t) {
    void *d = b->alloc(b, b->tensor_bytes(b, s, t));
    if (!d) die("device allocation failed", NULL);
    b->upload(b, d, host, s, t);
    return d;
}

static float *nan_array(size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    return h;
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *dir = NULL, *op_name = NULL, *precision = "fp32", *layout = NULL;
    unet_shape in_shape[UNET_MAX_IN], out_shape = {0, 0, 0, 0};
    unet_dtype in_type[UNET_MAX_IN];
    int n_in = 0, backward = 0, accumulate = 0, training = 1, node_index = 0, param_offset = 0;
    unsigned long long seed = 0;
    unet_node node = unet_node_make(UNET_OP_CONV, "optest");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--backward")) {
            backward = 1;
            continue;
        }
        if (!strcmp(a, "--accumulate")) {
            accumulate = 1;
            continue;
        }
        if (!v) die("missing value for", a);
        i++;
        if (!strcmp(a, "--backend"))
            backend_name = v;
        else if (!strcmp(a, "--dir"))
            dir = v;
        else if (!strcmp(a, "--op"))
            op_name = v;
        else if (!strcmp(a, "--precision"))
            precision = v;
        else if (!strcmp(a, "--layout"))
            layout = v;
        else if (!strcmp(a, "--in")) {
            if (n_in == UNET_MAX_IN) die("too many inputs", NULL);
            in_shape[n_in] = parse_shape(v, &in_type[n_in]);
            n_in++;
        } else if (!strcmp(a, "--out"))
            out_shape = parse_shape(v, NULL);
        else if (node_attr(&node, a, v))
            continue;
        else if (!strcmp(a, "--training"))
            training = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--node-index"))
            node_index = atoi(v);
        else if (!strcmp(a, "--param-offset"))
            param_offset = atoi(v);
        else
            die("unknown option", a);
    }
    if (!dir || !op_name || n_in == 0 || out_shape.n == 0) die("need --dir, --op, --in and --out", NULL);
    node.op = parse_op(op_name);
    node.n_in = n_in;

    const unet_backend *b = unet_cpu_backend();
    if (strcmp(backend_name, "cpu") != 0) {
        char err[512];
        b = unet_cuda_backend(0, precision, layout, 1, err, sizeof err);
        if (!b) die(err, NULL);
    }
    const unet_op_impl *impl = b->ops[node.op];
    if (!impl || !impl->forward) die("op has no forward in this backend", op_name);
    if (backward && !impl->backward) die("op has no backward in this backend", op_name);
    int is_loss = unet_op_is_loss(node.op);
    /* a loss's weight map and value are float32 in every precision, as a plan holds them */
    for (int i = 1; i < n_in; i++)
        if (is_loss && in_type[i] == UNET_F32) in_type[i] = UNET_F32_EXACT;
    unet_dtype out_type = is_loss ? UNET_F32_EXACT : UNET_F32;

    unet_op_args a;
    memset(&a, 0, sizeof a);
    a.node = &node;
    a.node_index = node_index;
    a.backend = b;
    a.training = training;
    a.n_in = n_in;
    a.out_shape = out_shape;
    /* the seed lives in backend memory, where a plan keeps it */
    uint64_t seed64 = seed, *seed_dev = b->alloc(b, sizeof seed64);
    if (!seed_dev) die("allocation failed", "seed");
    b->upload_bytes(b, seed_dev, &seed64, sizeof seed64);
    a.seed = seed_dev;
    char name[64];
    size_t bytes;
    for (int i = 0; i < n_in; i++) {
        a.in_shape[i] = in_shape[i];
        snprintf(name, sizeof name, "in%d.bin", i);
        void *h = read_exact(dir, name, unet_shape_count(in_shape[i]) * 4);
        a.in[i] = to_device(b, h, in_shape[i], in_type[i]);
        free(h);
    }
    size_t param_n[UNET_MAX_PARAM] = {0}, state_n[2] = {0};
    for (int j = 0; j < UNET_MAX_PARAM; j++) {
        snprintf(name, sizeof name, "param%d.bin", j);
        float *h = read_file(dir, name, &bytes);
        if (!h) continue;
        param_n[j] = bytes / 4;
        node.param[j] = j; /* present, as a plan's node names its parameters (a backend may ask the node) */
        float *d = (float *)b->alloc(b, bytes + (size_t)param_offset * 4 + 4) + param_offset;
        b->upload_f32(b, d, h, param_n[j]);
        a.param[j] = d;
        float *nan = nan_array(param_n[j]);
        a.dparam[j] = b->alloc(b, bytes ? bytes : 4);
        b->upload_f32(b, a.dparam[j], nan, param_n[j]);
        free(nan);
        free(h);
    }
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "state%d.bin", j);
        float *h = read_file(dir, name, &bytes);
        if (!h) continue;
        state_n[j] = bytes / 4;
        a.state[j] = b->alloc(b, bytes ? bytes : 4);
        b->upload_f32(b, a.state[j], h, state_n[j]);
        free(h);
    }
    size_t out_n = unet_shape_count(out_shape);
    float *poison = nan_array(out_n);
    a.out = to_device(b, poison, out_shape, out_type);
    free(poison);

    size_t ws = impl->workspace_bytes ? impl->workspace_bytes(&a) : 0;
    size_t aux = impl->aux_bytes ? impl->aux_bytes(&a) : 0;
    a.workspace = b->alloc(b, ws ? ws : 64);
    a.aux = b->alloc(b, aux ? aux : 64);

    impl->forward(&a);
    b->sync(b);
    float *host_out = malloc(out_n * sizeof(float));
    b->download(b, host_out, a.out, out_shape, out_type);
    write_file(dir, "out.bin", host_out, out_n * sizeof(float));

    if (backward) {
        if (!is_loss) {
            float *h = read_exact(dir, "dout.bin", out_n * 4);
            a.dout = to_device(b, h, out_shape, UNET_F32);
            free(h);
        }
        for (int i = 0; i < n_in; i++) {
            if (in_type[i] != UNET_F32 || (is_loss && i > 0)) continue;
            size_t n = unet_shape_count(in_shape[i]);
            float *init = nan_array(n);
            if (accumulate) {
                snprintf(name, sizeof name, "din%d.init.bin", i);
                free(init);
                init = read_exact(dir, name, n * 4);
                a.din_accumulate[i] = 1;
            }
            a.din[i] = to_device(b, init, in_shape[i], UNET_F32);
            free(init);
        }
        /* exactly what a compiled plan hands a backward: NULL for the forward
         * tensors it does not declare it reads (their memory is reused) */
        unet_op_args ba = a;
        if (!unet_backward_reads_inputs(&node))
            for (int i = 0; i < n_in; i++) ba.in[i] = NULL;
        if (!unet_backward_reads_output(&node)) ba.out = NULL;
        impl->backward(&ba);
        b->sync(b);
        for (int i = 0; i < n_in; i++) {
            if (!a.din[i]) continue;
            size_t n = unet_shape_count(in_shape[i]);
            float *h = malloc(n * sizeof(float));
            b->download(b, h, a.din[i], in_shape[i], UNET_F32);
            snprintf(name, sizeof name, "din%d.bin", i);
            write_file(dir, name, h, n * sizeof(float));
            free(h);
        }
        for (int j = 0; j < UNET_MAX_PARAM; j++) {
            if (!a.param[j]) continue;
            float *h = malloc((param_n[j] ? param_n[j] : 1) * sizeof(float));
            b->download_f32(b, h, a.dparam[j], param_n[j]);
            snprintf(name, sizeof name, "dparam%d.bin", j);
            write_file(dir, name, h, param_n[j] * sizeof(float));
            free(h);
        }
    }
    for (int j = 0; j < 2; j++) {
        if (!a.state[j]) continue;
        float *h = malloc((state_n[j] ? state_n[j] : 1) * sizeof(float));
        b->download_f32(b, h, a.state[j], state_n[j]);
        snprintf(name, sizeof name, "state%d.out.bin", j);
        write_file(dir, name, h, state_n[j] * sizeof(float));
        free(h);
    }
    /* everything back, so a sanitizer's leak check speaks only of the op */
    for (int i = 0; i < n_in; i++) {
        b->free(b, (void *)a.in[i]);
        if (a.din[i]) b->free(b, a.din[i]);
    }
    for (int j = 0; j < UNET_MAX_PARAM; j++)
        if (a.param[j]) {
            b->free(b, (void *)(a.param[j] - param_offset));
            b->free(b, a.dparam[j]);
        }
    for (int j = 0; j < 2; j++)
        if (a.state[j]) b->free(b, a.state[j]);
    if (a.dout) b->free(b, a.dout);
    b->free(b, a.out);
    b->free(b, a.workspace);
    b->free(b, a.aux);
    b->free(b, seed_dev);
    free(host_out);
    return 0;
}
