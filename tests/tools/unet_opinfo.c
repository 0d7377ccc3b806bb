/* The core's op table as the table test (tests/cpu/test_ops_table.py) walks it.
 *
 *   unet_opinfo [--backend cpu|cuda]
 *       one line per unet_op, in enum order: its index and name, whether its
 *       row is complete, and whether the backend has its forward and backward
 *   unet_opinfo --op conv --in 2,3,4,6 [--in 2,1,4,6:i32] [--param 2,3,3,3 --param 2] [--state 3]
 *               [--k 3 --stride 1 --pad 1 --groups 1 --act relu --out-c 2 --p 0.5 ...: unet_optest's
 *               node attributes] [--backend cpu|cuda]
 *       a graph of that one node (float inputs take a gradient, :i32 ones are
 *       labels), compiled for training with its memory planned and nothing
 *       allocated, as a model's graph is: the output shape the op's shape rule
 *       infers, the FLOPs the plan counts, its steps and which forward tensors
 *       the backward declares it reads.
 *   unet_opinfo --op ... --onnx DIR [--opset 17]
 *       the same one-node graph compiled for inference on the CPU with the
 *       float32 inputs DIR/in<i>.bin, parameters DIR/param<j>.bin and batch
 *       norm statistics DIR/state<j>.bin: its forward into DIR/out.bin, and
 *       the graph exported as unet export writes a model into DIR/op.onnx
 *       (input0 named image, the others input<i>; the output logits_head0).
 *       Every op's emitter is held against the engine this way.
 *
 * Bad arguments: a line on stderr and exit code 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/export/onnx.h"
#include "unet/plan.h"

#define TOOL_NAME "unet_opinfo"
#include "tool_common.h"

static const unet_backend *backend_named(const char *name) {
    if (!strcmp(name, "cpu")) return unet_cpu_backend();
    char err[512];
    const unet_backend *b = unet_cuda_backend(0, "fp32", NULL, 1, err, sizeof err);
    if (!b) die(err, NULL);
    return b;
}

static void list_table(const unet_backend *b) {
    for (int i = 0; i < UNET_OP_COUNT; i++) {
        const unet_op_impl *impl = b->ops[i];
        char why[256] = "ok";
        unet_op_check((unet_op)i, why, sizeof why);
        const char *onnx = unet_onnx_op_emission((unet_op)i);
        printf("%d\t%s\tforward=%d\tbackward=%d\tcheck=%s\tonnx=%s\n", i, unet_op_name((unet_op)i),
               impl && impl->forward, impl && impl->backward, why, onnx ? onnx : "missing");
    }
}

/* "2,3,4,6" (an input may end in ":i32") into dims; returns how many. */
static int parse_dims(const char *s, int *dims, int max) {
    for (int n = 0;; s++) {
        char *end;
        long d = strtol(s, &end, 10);
        if (end == s || d < 1 || n == max) die("dimensions are up to 4 positive integers separated by commas", s);
        dims[n++] = (int)d;
        s = end;
        if (*s != ',') {
            if (*s && strcmp(s, ":i32")) die("dimensions end in :i32 or nothing", s);
            return n;
        }
    }
}

/* --onnx: the one-node graph's inference forward on the CPU and its export. */
static void forward_and_export(const unet_graph *g, const unet_shape *in_shape, int n_in, const char *dir, int opset) {
    const unet_backend *b = unet_cpu_backend();
    char err[1024], name[UNET_NAME_LEN + 8];
    unet_param_blocks pb;
    if (unet_param_blocks_alloc(&pb, b, g, 0, err, sizeof err)) die(err, NULL);
    float *params = calloc(pb.n_trainable + 1, sizeof(float)), *state = calloc(pb.n_state + 1, sizeof(float));
    if (!params || !state) die("out of memory", NULL);
    const unet_param *ps = unet_graph_params(g);
    for (int j = 0; j < unet_graph_num_params(g); j++) {
        snprintf(name, sizeof name, "%s.bin", ps[j].name);
        float *data = read_exact(dir, name, ps[j].count * 4);
        memcpy((ps[j].kind == UNET_PARAM_TRAINABLE ? params : state) + ps[j].offset, data, ps[j].count * 4);
        free(data);
    }
    b->upload_f32(b, pb.params, params, pb.n_trainable);
    if (pb.n_state) b->upload_f32(b, pb.state, state, pb.n_state);
    unet_plan_cfg cfg = {.batch = in_shape[0].n,
                         .height = in_shape[0].h,
                         .width = in_shape[0].w,
                         .training = 0,
                         .input_shapes = in_shape};
    unet_plan *p = unet_plan_compile(g, &pb, cfg, err, sizeof err);
    if (!p) die(err, NULL);
    for (int i = 0; i < n_in; i++) {
        snprintf(name, sizeof name, "in%d.bin", i);
        float *x = read_exact(dir, name, unet_shape_count(in_shape[i]) * 4);
        unet_plan_set_input(p, i, x);
        free(x);
    }
    unet_plan_forward(p);
    unet_shape out = unet_plan_output_shape(p, 0);
    float *y = malloc(unet_shape_count(out) * sizeof(float));
    if (!y) die("out of memory", NULL);
    unet_plan_read_output(p, 0, y);
    write_file(dir, "out.bin", y, unet_shape_count(out) * sizeof(float));
    unet_onnx_export x = {.graph = g,
                          .plan = p,
                          .params = params,
                          .state = state,
                          .n_heads = 1,
                          .heads = {0},
                          .head_column = {0},
                          .opset = opset,
                          .graph_name = "op",
                          .doc = "one op of unet_opinfo"};
    char path[TOOL_PATH_MAX];
    tool_path(path, dir, "op.onnx");
    if (unet_onnx_write(path, &x, err, sizeof err)) die(err, NULL);
    free(y);
    unet_plan_free(p);
    unet_param_blocks_free(&pb);
    free(params);
    free(state);
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *op_name = NULL, *onnx_dir = NULL;
    int opset = 17;
    const char *in_arg[UNET_MAX_IN], *param_arg[UNET_MAX_PARAM], *state_arg[2];
    int n_in = 0, n_param = 0, n_state = 0;
    unet_node node = unet_node_make(UNET_OP_CONV, "opinfo");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("missing value for", a);
        i++;
        if (!strcmp(a, "--backend"))
            backend_name = v;
        else if (!strcmp(a, "--op"))
            op_name = v;
        else if (!strcmp(a, "--in") && n_in < UNET_MAX_IN)
            in_arg[n_in++] = v;
        else if (!strcmp(a, "--param") && n_param < UNET_MAX_PARAM)
            param_arg[n_param++] = v;
        else if (!strcmp(a, "--state") && n_state < 2)
            state_arg[n_state++] = v;
        else if (node_attr(&node, a, v))
            continue;
        else if (!strcmp(a, "--onnx"))
            onnx_dir = v;
        else if (!strcmp(a, "--opset"))
            opset = atoi(v);
        else
            die("unknown option, or one given too often", a);
    }
    const unet_backend *b = backend_named(backend_name);
    if (!op_name) {
        list_table(b);
        return 0;
    }
    if (n_in == 0) die("--op needs at least one --in", NULL);
    int op = 0;
    while (op < UNET_OP_COUNT && strcmp(unet_op_name((unet_op)op), op_name)) op++;
    if (op == UNET_OP_COUNT) die("unknown op", op_name);
    node.op = (unet_op)op;

    unet_graph *g = unet_graph_new();
    unet_shape in_shape[UNET_MAX_IN];
    char name[32];
    for (int i = 0; i < n_in; i++) {
        int d[4];
        if (parse_dims(in_arg[i], d, 4) != 4) die("an input is N,C,H,W[:i32]", in_arg[i]);
        in_shape[i] = (unet_shape){d[0], d[1], d[2], d[3]};
        int label = strstr(in_arg[i], ":i32") != NULL;
        snprintf(name, sizeof name, "in%d", i);
        node.in[i] = unet_graph_input(g, name, label ? UNET_INPUT_LABEL : UNET_INPUT_IMAGE, d[1], !label);
    }
    node.n_in = n_in;
    for (int j = 0; j < n_param + n_state; j++) {
        int d[4], state = j >= n_param;
        int ndim = parse_dims(state ? state_arg[j - n_param] : param_arg[j], d, 4);
        snprintf(name, sizeof name, "%s%d", state ? "state" : "param", state ? j - n_param : j);
        int id = unet_graph_param(g, name, state ? UNET_PARAM_STATE : UNET_PARAM_TRAINABLE, ndim, d, UNET_INIT_ZERO, 0);
        if (state)
            node.state[j - n_param] = id;
        else
            node.param[j] = id;
    }
    unet_graph_mark_output(g, unet_graph_add(g, &node));
    if (onnx_dir) {
        forward_and_export(g, in_shape, n_in, onnx_dir, opset);
        unet_graph_free(g);
        return 0;
    }

    unet_param_blocks pb = {.backend = b};
    unet_plan_cfg cfg = {.batch = in_shape[0].n,
                         .height = in_shape[0].h,
                         .width = in_shape[0].w,
                         .training = 1,
                         .input_shapes = in_shape,
                         .plan_only = 1};
    char err[512];
    unet_plan *p = unet_plan_compile(g, &pb, cfg, err, sizeof err);
    if (!p) die(err, NULL);
    unet_shape out = unet_plan_output_shape(p, 0);
    unet_plan_stats st = unet_plan_get_stats(p);
    printf("out=%d,%d,%d,%d\tflops=%.17g\tsteps=%d\treads_inputs=%d\treads_output=%d\n", out.n, out.c, out.h, out.w,
           st.forward_flops, st.n_steps, unet_backward_reads_inputs(&node), unet_backward_reads_output(&node));
    unet_plan_free(p);
    unet_graph_free(g);
    return 0;
}
