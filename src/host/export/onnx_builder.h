/* An ONNX model under construction, in the message types protoc-c generates
 * from the ONNX schema (onnx.proto of Debian's libonnx-dev, compiled at build
 * time), serialised by libprotobuf-c. Knows ONNX's messages, nothing of
 * U-Nets: the exporter (onnx.c) says what to put in.
 *
 * Every string and message lives in the builder until it is freed. A failed
 * allocation turns every later call into a no-op and is reported once, by
 * onnx_builder_write, so that the code filling a model need not check each
 * call. Library-internal. */
#ifndef UNET_ONNX_BUILDER_H
#define UNET_ONNX_BUILDER_H

#include <stddef.h>
#include <stdint.h>

typedef struct onnx_builder onnx_builder;
typedef struct Onnx__NodeProto onnx_node;

/* A model of ONNX IR version 8 importing the default operator set `opset`. */
onnx_builder *onnx_builder_new(int opset);
void onnx_builder_free(onnx_builder *b);

/* A string owned by the builder, formatted as printf does. */
const char *onnx_str(onnx_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a node (the graph's nodes in order: ONNX wants them topologically
 * sorted, as the engine's graph is). An empty input name is an omitted
 * optional input. NULL only after a failed allocation. */
onnx_node *onnx_add_node(onnx_builder *b, const char *op_type, const char *name, int n_in, const char *const *in,
                         const char *out);
void onnx_attr_int(onnx_builder *b, onnx_node *n, const char *name, int64_t v);
void onnx_attr_ints(onnx_builder *b, onnx_node *n, const char *name, int count, const int64_t *v);
void onnx_attr_float(onnx_builder *b, onnx_node *n, const char *name, float v);
void onnx_attr_string(onnx_builder *b, onnx_node *n, const char *name, const char *v);

/* Initializers. float32: the data is referenced, not copied (it must outlive
 * the write), little-endian as ONNX's raw_data is. int64 and float32 lists
 * given inline are copied. */
void onnx_add_f32(onnx_builder *b, const char *name, int ndim, const int64_t *dims, const float *data);
void onnx_add_f32_list(onnx_builder *b, const char *name, int count, const float *v);
void onnx_add_i64_list(onnx_builder *b, const char *name, int count, const int64_t *v);

/* A graph input or output of float32: dims[i] > 0 is a fixed size, else
 * dim_param[i] names a size set at run time. */
void onnx_add_io(onnx_builder *b, int output, const char *name, int ndim, const int64_t *dims,
                 const char *const *dim_param);

void onnx_add_meta(onnx_builder *b, const char *key, const char *value);
void onnx_set_doc(onnx_builder *b, const char *graph_name, const char *doc);

/* Serialises the model into path atomically. 0, or -1 with one line in err
 * (out of memory while building it, or the file cannot be written). */
int onnx_builder_write(onnx_builder *b, const char *path, char *err, size_t errlen);

#endif
