/* The graph's storage, shared by the core's files (graph, shape inference,
 * compiler). Not part of the public interface. */
#ifndef UNET_GRAPH_INTERNAL_H
#define UNET_GRAPH_INTERNAL_H

#include <stdio.h>

#include "unet/graph.h"

typedef struct {
    int producer;    /* node index, or -1 for a graph input */
    int input_index; /* graph input index, or -1 */
} unet_value;

typedef struct {
    char name[UNET_NAME_LEN];
    unet_input_kind kind;
    int channels;
    int requires_grad;
    int value;
} unet_graph_input_desc;

struct unet_graph {
    unet_node *nodes;
    int n_nodes, cap_nodes;
    unet_param *params;
    int n_params, cap_params;
    unet_value *values;
    int n_values, cap_values;
    unet_graph_input_desc *inputs;
    int n_inputs, cap_inputs;
    int *outputs;
    int n_outputs, cap_outputs;
    size_t trainable_count, state_count; /* block sizes in floats, with alignment gaps */
    size_t trainable_params;             /* exact count of trainable values */
};

#endif
