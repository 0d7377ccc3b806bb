/* An ONNX model built from protoc-c's message types and serialised by
 * libprotobuf-c (onnx_builder.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "host/export/onnx_builder.h"
#include "onnx/onnx.pb-c.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ONNX raw_data is little-endian; initializers are written as they are in memory"
#endif

#ifndef UNET_VERSION
#define UNET_VERSION "unknown"
#endif

/* The IR version of the schema this build compiles (Debian 12's libonnx-dev
 * 1.12): its operator sets go up to 17. */
#define IR_VERSION 8

/* A growable array of pointers: the repeated fields of a message. */
typedef struct {
    void **items;
    size_t n, cap;
} ptr_list;

struct onnx_builder {
    int oom;        /* an allocation failed: every later call does nothing */
    ptr_list owned; /* every block the builder allocated, freed together */
    ptr_list nodes, initializers, inputs, outputs, meta;
    Onnx__ModelProto model;
    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
};

static int push(onnx_builder *b, ptr_list *l, void *p) {
    if (b->oom || !p) return b->oom = 1, -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        void **items = realloc(l->items, cap * sizeof *items);
        if (!items) return b->oom = 1, -1;
        l->items = items, l->cap = cap;
    }
    l->items[l->n++] = p;
    return 0;
}

/* Zeroed memory owned by the builder; NULL once an allocation has failed. */
static void *own(onnx_builder *b, size_t bytes) {
    if (b->oom) return NULL;
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p || push(b, &b->owned, p)) {
        free(p);
        b->oom = 1;
        return NULL;
    }
    return p;
}

static void *own_copy(onnx_builder *b, const void *src, size_t bytes) {
    void *p = own(b, bytes);
    if (p && bytes) memcpy(p, src, bytes); /* a scalar's dims are NULL, which memcpy may not take */
    return p;
}

const char *onnx_str(onnx_builder *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = len >= 0 ? own(b, (size_t)len + 1) : NULL;
    if (!s) return "";
    va_start(ap, fmt);
    vsnprintf(s, (size_t)len + 1, fmt, ap);
    va_end(ap);
    return s;
}

static char *dup_str(onnx_builder *b, const char *s) { return (char *)onnx_str(b, "%s", s); }

onnx_builder *onnx_builder_new(int opset) {
    onnx_builder *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->model = (Onnx__ModelProto)ONNX__MODEL_PROTO__INIT;
    b->graph = (Onnx__GraphProto)ONNX__GRAPH_PROTO__INIT;
    b->opset = (Onnx__OperatorSetIdProto)ONNX__OPERATOR_SET_ID_PROTO__INIT;
    b->opset.domain = "";
    b->opset.has_version = 1;
    b->opset.version = opset;
    b->opsets[0] = &b->opset;
    b->model.has_ir_version = 1;
    b->model.ir_version = IR_VERSION;
    b->model.n_opset_import = 1;
    b->model.opset_import = b->opsets;
    b->model.producer_name = "unet";
    b->model.producer_version = UNET_VERSION;
    b->model.graph = &b->graph;
    return b;
}

void onnx_builder_free(onnx_builder *b) {
    if (!b) return;
    for (size_t i = 0; i < b->owned.n; i++) free(b->owned.items[i]);
    ptr_list *lists[] = {&b->owned, &b->nodes, &b->initializers, &b->inputs, &b->outputs, &b->meta};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(lists[i]->items);
    free(b);
}

onnx_node *onnx_add_node(onnx_builder *b, const char *op_type, const char *name, int n_in, const char *const *in,
                         const char *out) {
    Onnx__NodeProto *n = own(b, sizeof *n);
    char **ins = own(b, (size_t)n_in * sizeof *ins), **outs = own(b, sizeof *outs);
    if (!n || !ins || !outs) return NULL;
    *n = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
    for (int i = 0; i < n_in; i++) ins[i] = dup_str(b, in[i]);
    outs[0] = dup_str(b, out);
    n->n_input = (size_t)n_in, n->input = ins;
    n->n_output = 1, n->output = outs;
    n->op_type = dup_str(b, op_type);
    n->name = dup_str(b, name);
    return push(b, &b->nodes, n) ? NULL : n;
}

/* A new attribute of node n (NULL after a failed allocation, or when n is). */
static Onnx__AttributeProto *attr(onnx_builder *b, onnx_node *n, const char *name,
                                  Onnx__AttributeProto__AttributeType type) {
    if (!n || b->oom) return NULL;
    Onnx__AttributeProto *a = own(b, sizeof *a);
    Onnx__AttributeProto **list = own(b, (n->n_attribute + 1) * sizeof *list);
    if (!a || !list) return NULL;
    *a = (Onnx__AttributeProto)ONNX__ATTRIBUTE_PROTO__INIT;
    a->name = dup_str(b, name);
    a->has_type = 1;
    a->type = type;
    /* the old list stays owned by the builder until it is freed: a few pointers per attribute */
    if (n->n_attribute) memcpy(list, n->attribute, n->n_attribute * sizeof *list);
    list[n->n_attribute++] = a;
    n->attribute = list;
    return a;
}

void onnx_attr_int(onnx_builder *b, onnx_node *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) a->has_i = 1, a->i = v;
}

void onnx_attr_ints(onnx_builder *b, onnx_node *n, const char *name, int count, const int64_t *v) {
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *copy = a ? own_copy(b, v, (size_t)count * sizeof *v) : NULL;
    if (copy) a->n_ints = (size_t)count, a->ints = copy;
}

void onnx_attr_float(onnx_builder *b, onnx_node *n, const char *name, float v) {
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (a) a->has_f = 1, a->f = v;
}

void onnx_attr_string(onnx_builder *b, onnx_node *n, const char *name, const char *v) {
    Onnx__AttributeProto *a = attr(b, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    char *s = a ? dup_str(b, v) : NULL;
    if (s) a->has_s = 1, a->s = (ProtobufCBinaryData){strlen(s), (uint8_t *)s};
}

static Onnx__TensorProto *tensor(onnx_builder *b, const char *name, int ndim, const int64_t *dims, int32_t type) {
    Onnx__TensorProto *t = own(b, sizeof *t);
    int64_t *d = own_copy(b, dims, (size_t)ndim * sizeof *dims);
    if (!t || !d) return NULL;
    *t = (Onnx__TensorProto)ONNX__TENSOR_PROTO__INIT;
    t->name = dup_str(b, name);
    t->n_dims = (size_t)ndim, t->dims = d;
    t->has_data_type = 1, t->data_type = type;
    return push(b, &b->initializers, t) ? NULL : t;
}

static void raw_data(Onnx__TensorProto *t, const void *data, size_t bytes) {
    if (!t) return;
    t->has_raw_data = 1;
    t->raw_data = (ProtobufCBinaryData){bytes, (uint8_t *)data};
}

void onnx_add_f32(onnx_builder *b, const char *name, int ndim, const int64_t *dims, const float *data) {
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)dims[i];
    raw_data(tensor(b, name, ndim, dims, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT), data, count * sizeof(float));
}

void onnx_add_f32_list(onnx_builder *b, const char *name, int count, const float *v) {
    int64_t dims[1] = {count};
    float *copy = own_copy(b, v, (size_t)count * sizeof *v);
    if (copy) onnx_add_f32(b, name, 1, dims, copy);
}

void onnx_add_i64_list(onnx_builder *b, const char *name, int count, const int64_t *v) {
    int64_t dims[1] = {count};
    int64_t *copy = own_copy(b, v, (size_t)count * sizeof *v);
    if (copy) raw_data(tensor(b, name, 1, dims, ONNX__TENSOR_PROTO__DATA_TYPE__INT64), copy, (size_t)count * 8);
}

void onnx_add_io(onnx_builder *b, int output, const char *name, int ndim, const int64_t *dims,
                 const char *const *dim_param) {
    Onnx__ValueInfoProto *v = own(b, sizeof *v);
    Onnx__TypeProto *type = own(b, sizeof *type);
    Onnx__TypeProto__Tensor *tt = own(b, sizeof *tt);
    Onnx__TensorShapeProto *shape = own(b, sizeof *shape);
    Onnx__TensorShapeProto__Dimension *dim = own(b, (size_t)ndim * sizeof *dim);
    Onnx__TensorShapeProto__Dimension **dimp = own(b, (size_t)ndim * sizeof *dimp);
    if (!v || !type || !tt || !shape || !dim || !dimp) return;
    for (int i = 0; i < ndim; i++) {
        dim[i] = (Onnx__TensorShapeProto__Dimension)ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
        if (dims[i] > 0) {
            dim[i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dim[i].dim_value = dims[i];
        } else {
            dim[i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dim[i].dim_param = dup_str(b, dim_param[i]);
        }
        dimp[i] = &dim[i];
    }
    *shape = (Onnx__TensorShapeProto)ONNX__TENSOR_SHAPE_PROTO__INIT;
    shape->n_dim = (size_t)ndim, shape->dim = dimp;
    *tt = (Onnx__TypeProto__Tensor)ONNX__TYPE_PROTO__TENSOR__INIT;
    tt->has_elem_type = 1, tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = shape;
    *type = (Onnx__TypeProto)ONNX__TYPE_PROTO__INIT;
    type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    type->tensor_type = tt;
    *v = (Onnx__ValueInfoProto)ONNX__VALUE_INFO_PROTO__INIT;
    v->name = dup_str(b, name);
    v->type = type;
    push(b, output ? &b->outputs : &b->inputs, v);
}

void onnx_add_meta(onnx_builder *b, const char *key, const char *value) {
    Onnx__StringStringEntryProto *e = own(b, sizeof *e);
    if (!e) return;
    *e = (Onnx__StringStringEntryProto)ONNX__STRING_STRING_ENTRY_PROTO__INIT;
    e->key = dup_str(b, key);
    e->value = dup_str(b, value);
    push(b, &b->meta, e);
}

void onnx_set_doc(onnx_builder *b, const char *graph_name, const char *doc) {
    b->graph.name = dup_str(b, graph_name);
    b->model.doc_string = dup_str(b, doc);
}

typedef struct {
    uint8_t *bytes;
    size_t len;
} packed;

static int write_packed(FILE *f, void *ctx) {
    const packed *p = ctx;
    return fwrite(p->bytes, 1, p->len, f) == p->len ? 0 : -1;
}

int onnx_builder_write(onnx_builder *b, const char *path, char *err, size_t errlen) {
    Onnx__GraphProto *g = &b->graph;
    g->n_node = b->nodes.n, g->node = (Onnx__NodeProto **)b->nodes.items;
    g->n_initializer = b->initializers.n, g->initializer = (Onnx__TensorProto **)b->initializers.items;
    g->n_input = b->inputs.n, g->input = (Onnx__ValueInfoProto **)b->inputs.items;
    g->n_output = b->outputs.n, g->output = (Onnx__ValueInfoProto **)b->outputs.items;
    b->model.n_metadata_props = b->meta.n;
    b->model.metadata_props = (Onnx__StringStringEntryProto **)b->meta.items;
    if (b->oom) {
        unet_errorf(err, errlen, "out of host memory building the ONNX model for %s", path);
        return -1;
    }
    packed p = {NULL, onnx__model_proto__get_packed_size(&b->model)};
    if (p.len > INT32_MAX) {
        unet_errorf(err, errlen, "the ONNX model for %s would take %.2f GiB, over protobuf's 2 GiB limit", path,
                    p.len / 1073741824.0);
        return -1;
    }
    if (!(p.bytes = unet_alloc(p.len, 1, "the serialised ONNX model", err, errlen))) return -1;
    onnx__model_proto__pack(&b->model, p.bytes);
    int rc = unet_write_atomic(path, write_packed, &p, err, errlen);
    free(p.bytes);
    return rc;
}
