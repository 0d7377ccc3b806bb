/* Whole-model driver for the tests: builds a family member, runs a training
 * (or evaluation) forward and backward through a compiled plan, and writes
 * the losses, head outputs and the gradient block, so that
 * tests/cpu/test_model.py can hold them against an independent PyTorch model.
 *
 *   unet_modeltest --model unetpp --filters 4,8,16 --padding same --classes 2 [--norm batch]
 *       [--upsample bilinear] [--fusion add] [--deep-supervision] [--dropout P] [--depth d]
 *       [--in-channels C] [--loss ce|bce_dice] [--weight-map] --tile S --batch B --dir D
 *       [--encoder resnet18|resnet34|resnet50|mobilenet_v2 [--decoder-channels D1,..,D5] [--freeze-encoder-bn]]
 *       [--features: the encoder's features X^{i,0}, i >= 1, as outputs after the heads']
 *       [--init-encoder W.safetensors: torchvision's weights over the backbone, as unet train loads them]
 *       [--list] [--eval] [--backend cpu|cuda] [--precision fp32|tf32|bf16 (cuda)]
 *       [--layout nchw|nhwc (cuda)] [--seed S]
 *       [--steps K --lr X --optimizer sgd|adam --adam-eps E]
 *
 * --list prints "name kind offset count dims..." per parameter and the plan's
 * statistics, then exits. Otherwise reads D/params.bin (trainable block in
 * graph order; if absent, He init from --seed), D/state.bin, D/image.bin,
 * D/label.bin, D/weight.bin; writes D/loss.txt, D/out<h>.bin, D/grads.bin,
 * D/state.out.bin, D/params.out.bin (after --steps optimizer steps, if any). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/checkpoint.h"
#include "unet/model.h"
#include "unet/optim.h"
#include "unet/plan.h"

#define TOOL_NAME "unet_modeltest"
#include "tool_common.h"

int main(int argc, char **argv) {
    unet_model_cfg m = {.kind = UNET_MODEL_UNET,
                        .levels = 3,
                        .filters = {4, 8, 16},
                        .in_channels = 1,
                        .classes = 2,
                        .decoder_levels = 5,
                        .decoder_channels = {256, 128, 64, 32, 16}};
    int tile = 0, batch = 1, list = 0, eval = 0, weight_map = 0, steps = 0, adam = 0, loss_set = 0, features = 0;
    float adam_eps = 1e-8f;
    unsigned long long seed = 1;
    float lr = 0.01f;
    const char *dir = ".", *backend_name = "cpu", *precision = "fp32", *layout = NULL, *init_encoder = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--list")) {
            list = 1;
            continue;
        }
        if (!strcmp(a, "--eval")) {
            eval = 1;
            continue;
        }
        if (!strcmp(a, "--deep-supervision")) {
            m.deep_supervision = 1;
            continue;
        }
        if (!strcmp(a, "--freeze-encoder-bn")) {
            m.freeze_encoder_bn = 1;
            continue;
        }
        if (!strcmp(a, "--features")) {
            features = 1;
            continue;
        }
        if (!strcmp(a, "--weight-map")) {
            weight_map = 1;
            continue;
        }
        if (i + 1 >= argc) die("missing value", NULL);
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) {
            if (unet_model_kind_parse(v, &m.kind)) die("bad --model", NULL);
        } else if (!strcmp(a, "--filters")) {
            m.levels = 0;
            for (char *s = (char *)v; *s && m.levels < UNET_MAX_LEVELS;) {
                m.filters[m.levels++] = (int)strtol(s, &s, 10);
                if (*s == ',') s++;
            }
        } else if (!strcmp(a, "--padding"))
            m.same_padding = !strcmp(v, "same");
        else if (!strcmp(a, "--norm"))
            m.batch_norm = !strcmp(v, "batch");
        else if (!strcmp(a, "--upsample"))
            m.upsample = !strcmp(v, "bilinear")  ? UNET_UP_BILINEAR
                         : !strcmp(v, "nearest") ? UNET_UP_NEAREST
                                                 : UNET_UP_TRANSPOSED;
        else if (!strcmp(a, "--fusion"))
            m.fusion_add = !strcmp(v, "add");
        else if (!strcmp(a, "--dropout"))
            m.dropout = strtof(v, NULL);
        else if (!strcmp(a, "--depth"))
            m.prune_depth = atoi(v);
        else if (!strcmp(a, "--in-channels"))
            m.in_channels = atoi(v);
        else if (!strcmp(a, "--encoder")) {
            /* as unet's --encoder: smp's decoder, same padding, batch norm (--norm none after it turns it off) */
            if (unet_encoder_parse(v, &m.encoder)) die("bad --encoder", v);
            m.same_padding = 1, m.batch_norm = 1, m.upsample = UNET_UP_NEAREST;
        } else if (!strcmp(a, "--decoder-channels")) {
            m.decoder_levels = 0;
            for (char *s = (char *)v; *s && m.decoder_levels < UNET_MAX_LEVELS;) {
                m.decoder_channels[m.decoder_levels++] = (int)strtol(s, &s, 10);
                if (*s == ',') s++;
            }
        } else if (!strcmp(a, "--classes"))
            m.classes = atoi(v);
        else if (!strcmp(a, "--loss")) {
            m.loss = !strcmp(v, "bce_dice") ? UNET_LOSS_BCE_DICE : UNET_LOSS_CE;
            loss_set = 1;
        } else if (!strcmp(a, "--tile"))
            tile = atoi(v);
        else if (!strcmp(a, "--batch"))
            batch = atoi(v);
        else if (!strcmp(a, "--dir"))
            dir = v;
        else if (!strcmp(a, "--init-encoder"))
            init_encoder = v;
        else if (!strcmp(a, "--backend"))
            backend_name = v;
        else if (!strcmp(a, "--precision"))
            precision = v;
        else if (!strcmp(a, "--layout"))
            layout = v;
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--steps"))
            steps = atoi(v);
        else if (!strcmp(a, "--lr"))
            lr = strtof(v, NULL);
        else if (!strcmp(a, "--optimizer"))
            adam = !strcmp(v, "adam");
        else if (!strcmp(a, "--adam-eps"))
            adam_eps = strtof(v, NULL);
        else
            die("unknown option", a);
    }
    if (!loss_set) m.loss = m.classes == 1 ? UNET_LOSS_BCE_DICE : UNET_LOSS_CE;
    char err[1024];
    unet_model model;
    if (unet_model_build(&m, !eval, weight_map, &model, err, sizeof err)) die(err, NULL);
    for (int i = 1; features && i < UNET_MAX_LEVELS; i++)
        if (model.feature[i] >= 0) unet_graph_mark_output(model.graph, model.feature[i]);
    const unet_graph *g = model.graph;
    const unet_backend *b = unet_cpu_backend();
    if (strcmp(backend_name, "cpu")) {
        b = unet_cuda_backend(0, precision, layout, 1, err, sizeof err);
        if (!b) die(err, NULL);
    }
    unet_param_blocks pb;
    if (unet_param_blocks_alloc(&pb, b, g, adam, err, sizeof err)) die(err, NULL);
    /* the training run's updates: SGD momentum 0.9, Adam's defaults, no decay, a constant rate */
    unet_optim_cfg optim = {.kind = adam ? UNET_OPT_ADAM : UNET_OPT_SGD,
                            .lr = lr,
                            .momentum = 0.9f,
                            .beta1 = 0.9f,
                            .beta2 = 0.999f,
                            .eps = adam_eps,
                            .schedule = UNET_SCHED_CONSTANT,
                            .total_steps = steps};
    size_t nt = pb.n_trainable, ns = pb.n_state;
    if (list) {
        const unet_param *p = unet_graph_params(g);
        for (int k = 0; k < unet_graph_num_params(g); k++) {
            printf("%s %s %zu %zu", p[k].name, p[k].kind == UNET_PARAM_TRAINABLE ? "param" : "state", p[k].offset,
                   p[k].count);
            for (int d = 0; d < p[k].ndim; d++) printf(" %d", p[k].dims[d]);
            printf("\n");
        }
        printf("# trainable %zu state %zu heads %d params %zu\n", nt, ns, model.n_heads,
               unet_graph_trainable_params(g));
        if (tile) {
            unet_plan_cfg cfg = {.batch = batch, .height = tile, .width = tile, .training = !eval};
            unet_plan *plan = unet_plan_compile(g, &pb, cfg, err, sizeof err);
            if (!plan) die(err, NULL);
            unet_plan_stats st = unet_plan_get_stats(plan);
            printf("# arena %zu unplanned %zu peak %zu workspace %zu flops %.0f", st.arena_bytes, st.unplanned_bytes,
                   st.peak_live_bytes, st.workspace_bytes, st.forward_flops);
            for (int o = 0; o < unet_plan_num_outputs(plan); o++) {
                unet_shape s = unet_plan_output_shape(plan, o);
                printf(" out%d %dx%dx%dx%d", o, s.n, s.c, s.h, s.w);
            }
            printf("\n");
            unet_plan_free(plan);
        }
        unet_param_blocks_free(&pb);
        unet_model_free(&model);
        return 0;
    }
    float *params = read_exact_if_present(dir, "params.bin", nt * 4);
    float *state = read_exact_if_present(dir, "state.bin", ns * 4);
    if (!params || !state) {
        float *tp = calloc(nt + 1, 4), *ts = calloc(ns + 1, 4);
        unet_param_init_host(g, seed, tp, ts);
        if (!params)
            params = tp;
        else
            free(tp);
        if (!state)
            state = ts;
        else
            free(ts);
    }
    if (init_encoder &&
        unet_checkpoint_load_encoder(init_encoder, unet_encoder_name(m.encoder), g, params, state, err, sizeof err))
        die(err, NULL);
    b->upload_f32(b, pb.params, params, nt);
    if (ns) b->upload_f32(b, pb.state, state, ns);

    unet_plan_cfg cfg = {.batch = batch, .height = tile, .width = tile, .training = !eval};
    unet_plan *plan = unet_plan_compile(g, &pb, cfg, err, sizeof err);
    if (!plan) die(err, NULL);
    size_t npix = (size_t)batch * tile * tile;
    float *image = read_exact(dir, "image.bin", npix * m.in_channels * 4);
    int32_t *label = read_exact_if_present(dir, "label.bin", npix * 4);
    float *weight = weight_map ? read_exact_if_present(dir, "weight.bin", npix * 4) : NULL;
    if (!eval && !label) die("missing label.bin", NULL);
    unet_plan_set_inputs(plan, image, label, weight);
    unet_plan_set_seed(plan, seed);
    FILE *lf;
    char path[1100];
    snprintf(path, sizeof path, "%s/loss.txt", dir);
    lf = fopen(path, "w");
    for (int s = 0; s <= steps; s++) {
        unet_plan_forward(plan);
        if (!eval) {
            double per_head[UNET_MAX_LEVELS];
            double total = unet_plan_loss(plan, per_head);
            fprintf(lf, "%.10g", total);
            for (int h = 0; h < model.n_heads; h++) fprintf(lf, " %.10g", per_head[h]);
            fprintf(lf, "\n");
            unet_plan_backward(plan);
        }
        if (s == 0) {
            for (int o = 0; o < unet_plan_num_outputs(plan); o++) {
                unet_shape sh = unet_plan_output_shape(plan, o);
                float *out = malloc(unet_shape_count(sh) * 4);
                unet_plan_read_output(plan, o, out);
                char name[32];
                snprintf(name, sizeof name, "out%d.bin", o);
                write_file(dir, name, out, unet_shape_count(sh) * 4);
                free(out);
            }
            if (!eval) {
                float *gr = malloc((nt + 1) * 4);
                b->download_f32(b, gr, pb.grads, nt);
                write_file(dir, "grads.bin", gr, nt * 4);
                free(gr);
            }
        }
        if (s < steps) unet_optim_step(&optim, &pb, s);
    }
    fclose(lf);
    b->download_f32(b, params, pb.params, nt);
    write_file(dir, "params.out.bin", params, nt * 4);
    if (ns) {
        b->download_f32(b, state, pb.state, ns);
        write_file(dir, "state.out.bin", state, ns * 4);
    }
    unet_plan_free(plan);
    unet_param_blocks_free(&pb);
    unet_model_free(&model);
    free(params);
    free(state);
    free(image);
    free(label);
    free(weight);
    return 0;
}
