/* What the core knows about each op, one row per op (op_table.c): the rest of
 * the core asks the row instead of switching on the op, so that a new op is
 * one row here and its kernels in each backend's op table. Core-internal. */
#ifndef UNET_OP_TABLE_H
#define UNET_OP_TABLE_H

#include <stddef.h>

#include "unet/graph.h"

/* Whether a backward reads a forward tensor. UNSET (zero, what a row that
 * leaves the field out gets) is refused: a backward that reads a tensor the
 * planner believed unread would see memory already reused for something else. */
typedef enum {
    UNET_READS_UNSET,
    UNET_READS_NEVER,
    UNET_READS_ALWAYS,
    UNET_READS_IF_ACT, /* only when the node fuses an activation (it masks by the output) */
} unet_reads;

typedef struct {
    const char *name; /* the op's name on command lines and in messages */
    /* A root of the backward: a scalar output, run only when training, and
     * no gradient for its inputs after the first (labels, weights). */
    int is_loss;
    unet_reads reads_inputs, reads_output; /* what its backward reads of the forward's tensors */
    /* The output shape from the input shapes; *out arrives holding in[0]'s.
     * 0, or -1 with a message naming the node. */
    int (*infer)(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                 size_t errlen);
    /* Forward FLOPs, multiply-adds counted as 2. NULL: none worth counting. */
    double (*flops)(const unet_node *n, const unet_shape *in, unet_shape out);
} unet_op_row;

/* The row of op. A missing or incomplete row is a programming error, which
 * the table test (tests/cpu/test_ops_table.py) reports first: here it aborts,
 * naming the op and what the row lacks. */
const unet_op_row *unet_op_row_of(unet_op op);

#endif
