/* ONNX export of a compiled inference graph: the engine's graph, node by
 * node through a per-op emitter table (onnx.c), then the probabilities of
 * the heads as predict takes them. Library-internal; `unet export`
 * (src/host/train/export.c) decides what goes in. */
#ifndef UNET_EXPORT_ONNX_H
#define UNET_EXPORT_ONNX_H

#include <stddef.h>

#include "unet/model.h"
#include "unet/plan.h"

typedef struct {
    const char *key, *value;
} unet_onnx_meta;

typedef struct {
    const unet_graph *graph;     /* built without losses */
    const unet_plan *plan;       /* compiled at the export tile: the shape of every value */
    const float *params, *state; /* host blocks in the graph's layout */
    /* The graph outputs whose probabilities make the output `prob`: one, or
     * several whose mean it is (the heads, each centre-cropped to the
     * smallest). Only the nodes these outputs need are written. */
    int n_heads;
    int heads[UNET_MAX_LEVELS];       /* graph output indices */
    int head_column[UNET_MAX_LEVELS]; /* their grid columns j: outputs logits_head<j> */
    int dynamic_hw;                   /* height and width named (H, W) instead of the tile's */
    int opset;
    const char *graph_name, *doc;
    const unet_onnx_meta *meta;
    int n_meta;
} unet_onnx_export;

/* Writes the model to path atomically: input `image` (N, C, H, W), outputs
 * `prob` (N, K, h, w) (sigmoid for one class, softmax over K >= 2, the mean
 * over the heads) and `logits_head<j>` for each head. 0, or -1 with one line. */
int unet_onnx_write(const char *path, const unet_onnx_export *x, char *err, size_t errlen);

/* How an op reaches an ONNX model: "nodes", "identity" (an op that does
 * nothing in inference) or "training only"; NULL when its row in the
 * emitter table is missing (the table test lists this for every op). */
const char *unet_onnx_op_emission(unet_op op);

#endif
