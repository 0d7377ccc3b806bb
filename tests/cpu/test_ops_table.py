"""Every op named in include/unet/graph.h's unet_op enum, walked through
every table that has to know it:

- the core's op table (src/host/core/op_table.c): a complete row (a name, the
  enum's own in lower case, a shape rule, what its backward reads), listed by
  tests/tools/unet_opinfo;
- its shape rule and FLOPs: a one-node graph of each case below, compiled
  for training as a model is, must infer the case's output shape, count the
  case's FLOPs and plan a forward and a backward step;
- the CPU backend's op table: each case runs through unet_optest with
  --backward, which fails with "has no forward/backward" when the table lacks
  one, and hands the backward NULL for every forward tensor the op table says
  it does not read (so a row that under-declares them crashes here);
- the ONNX exporter's emitter table (src/host/export/onnx.c): a row for every
  op, saying how it is written (tests/cpu/test_export_onnx.py runs each one
  through ONNX Runtime);
- the CUDA backend's: its table names every op (src/kernels/cuda/backend.cu;
  the backend cannot be created without a GPU) and, where a GPU is listed,
  each case runs there too.

The op list comes from the header, so a new op without a row, kernels or a
case here fails this test instead of slipping by."""
import os
import re
import subprocess

import numpy as np
import pytest

from unet_testlib import BUILD, SOURCE, gpu_listed, run_op

OPINFO = os.path.join(BUILD, "unet_opinfo")


def ops_in_header():
    with open(os.path.join(SOURCE, "include", "unet", "graph.h")) as f:
        text = f.read()
    body = re.search(r"typedef enum \{(.*?)\} unet_op;", text, re.S).group(1)
    return [m.lower() for m in re.findall(r"^\s*UNET_OP_(\w+)\s*[,=]", body, re.M) if m != "COUNT"]


F = np.float32
x = np.linspace(-1, 1, 2 * 3 * 4 * 6, dtype=F).reshape(2, 3, 4, 6)
label = (np.arange(2 * 4 * 6).reshape(2, 1, 4, 6) % 2).astype(np.int32)
# op -> (inputs, out shape, attrs, params, states, forward FLOPs with multiply-adds as 2)
CASES = {
    "conv": ([x], (2, 2, 4, 6), {"k": 3, "pad": 1, "out_c": 2}, [np.ones((2, 3, 3, 3), F), np.zeros(2, F)], [],
             2 * (2 * 2 * 4 * 6) * 3 * 3 * 3),
    "conv_t2": ([x], (2, 2, 8, 12), {"out_c": 2}, [np.ones((3, 2, 2, 2), F), np.zeros(2, F)], [],
                2 * (2 * 2 * 8 * 12) * 3),
    "bias": ([x], x.shape, {}, [np.ones(3, F)], [], 0),
    "relu": ([x], x.shape, {}, [], [], 0),
    "maxpool2": ([x], (2, 3, 2, 3), {}, [], [], 0),
    "maxpool": ([x], (2, 3, 2, 3), {"k": 3, "stride": 2, "pad": 1}, [], [], 0),
    "crop_concat": ([x, x], (2, 6, 4, 6), {}, [], [], 0),
    "crop_add": ([x, x], x.shape, {}, [], [], 0),
    "upsample2": ([x], (2, 3, 8, 12), {}, [], [], 0),
    "batchnorm": ([x], x.shape, {}, [np.ones(3, F), np.zeros(3, F)], [np.zeros(3, F), np.ones(3, F)], 0),
    "dropout": ([x], x.shape, {"p": 0.5}, [], [], 0),
    "softmax_ce": ([x, label], (1, 1, 1, 1), {}, [], [], 0),
    "bce_dice": ([x[:, :1], label], (1, 1, 1, 1), {}, [], [], 0),
}


def opinfo(*args):
    r = subprocess.run([OPINFO, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"unet_opinfo {' '.join(map(str, args))}: {r.stderr.strip()}"
    return r.stdout


def dims(a):
    return ",".join(str(d) for d in np.shape(a))


def test_every_op_has_a_case():
    missing = [op for op in ops_in_header() if op not in CASES]
    assert not missing, f"ops without a case in {__file__}: {missing}"


def test_op_table_has_a_complete_row_for_every_op():
    rows = [line.split("\t") for line in opinfo().splitlines()]
    assert [r[1] for r in rows] == ops_in_header(), "op table names, in enum order, differ from the unet_op enum"
    for index, name, forward, backward, check, onnx in rows:
        assert check == "check=ok", f"{name}: {check}"
        assert forward == "forward=1" and backward == "backward=1", f"cpu backend's {name}: {forward} {backward}"
        assert onnx in ("onnx=nodes", "onnx=identity", "onnx=training only"), (
            f"{name}: no row in the ONNX emitter table (src/host/export/onnx.c): {onnx}")


@pytest.mark.parametrize("op", ops_in_header())
def test_op_shape_rule_and_flops(op):
    inputs, out_shape, attrs, params, states, flops = CASES[op]
    args = ["--op", op]
    for a in inputs:
        args += ["--in", dims(a) + (":i32" if a.dtype == np.int32 else "")]
    for p in params:
        args += ["--param", dims(p)]
    for s in states:
        args += ["--state", dims(s)]
    for k, v in attrs.items():
        args += ["--" + k.replace("_", "-"), v]
    got = dict(field.split("=") for field in opinfo(*args).split())
    assert tuple(int(d) for d in got["out"].split(",")) == tuple(out_shape), f"{op}: inferred output shape"
    assert float(got["flops"]) == flops, f"{op}: forward FLOPs"
    assert got["steps"] == "2", f"{op}: a training plan of one node runs its forward and its backward"


# conv's and maxpool's attributes: (op, input, params, attrs, out shape, FLOPs)
ATTRIBUTE_CASES = [
    ("conv", (2, 3, 224, 224), [(64, 3, 7, 7)], {"k": 7, "stride": 2, "pad": 3, "out_c": 64},
     (2, 64, 112, 112), 2 * (2 * 64 * 112 * 112) * 3 * 49),  # ResNet's stem, bias-free
    ("conv", (1, 64, 15, 15), [(128, 64, 1, 1)], {"k": 1, "stride": 2, "out_c": 128}, (1, 128, 8, 8),
     2 * (128 * 8 * 8) * 64),  # a downsample: an odd size rounds up
    ("conv", (1, 32, 16, 17), [(32, 1, 3, 3)], {"k": 3, "stride": 2, "pad": 1, "groups": 32, "out_c": 32},
     (1, 32, 8, 9), 2 * (32 * 8 * 9) * 9),  # depthwise: 9 taps of one channel per output
    ("conv", (1, 4, 6, 6), [(5, 4, 3, 3), (5,)], {"k": 3, "pad": 2, "out_c": 5, "act": "relu6"}, (1, 5, 8, 8),
     2 * (5 * 8 * 8) * 36),
    ("maxpool", (2, 64, 112, 112), [], {"k": 3, "stride": 2, "pad": 1}, (2, 64, 56, 56), 0),
    ("maxpool", (1, 2, 7, 5), [], {"k": 2, "stride": 1}, (1, 2, 6, 4), 0),
]


@pytest.mark.parametrize("case", range(len(ATTRIBUTE_CASES)))
def test_attributes_shape_rule_and_flops(case):
    op, shape, params, attrs, out_shape, flops = ATTRIBUTE_CASES[case]
    args = ["--op", op, "--in", ",".join(map(str, shape))]
    for p in params:
        args += ["--param", ",".join(map(str, p))]
    for k, v in attrs.items():
        args += ["--" + k.replace("_", "-"), v]
    got = dict(field.split("=") for field in opinfo(*args).split())
    assert tuple(int(d) for d in got["out"].split(",")) == out_shape
    assert float(got["flops"]) == flops
    assert got["reads_output"] == ("1" if attrs.get("act", "none") != "none" else "0")


# attributes a shape rule refuses, and the words its message must have
BAD_ATTRIBUTES = [
    ("conv", (1, 8, 9, 9), [(8, 2, 3, 3)], {"k": 3, "pad": 1, "groups": 4, "out_c": 8}, "depthwise"),
    ("conv", (1, 8, 9, 9), [(4, 1, 3, 3)], {"k": 3, "pad": 1, "groups": 8, "out_c": 4}, "depthwise"),
    ("conv", (1, 8, 9, 9), [(4, 8, 3, 3)], {"k": 3, "stride": 0, "out_c": 4}, "stride >= 1"),
    ("conv", (1, 8, 9, 9), [(4, 8, 1, 1)], {"k": 3, "out_c": 4}, "weight is 4x8x1x1"),
    ("conv", (1, 8, 9, 9), [(4, 8, 3, 3), (5,)], {"k": 3, "out_c": 4}, "bias has 5 values"),
    ("conv", (1, 8, 5, 5), [(4, 8, 7, 7)], {"k": 7, "stride": 2, "pad": 0, "out_c": 4}, "too small"),
    ("maxpool", (1, 8, 9, 9), [], {"k": 3, "stride": 2, "pad": 2}, "pad <= k / 2"),
]


@pytest.mark.parametrize("case", range(len(BAD_ATTRIBUTES)))
def test_bad_attributes_refused(case):
    op, shape, params, attrs, words = BAD_ATTRIBUTES[case]
    args = ["--op", op, "--in", ",".join(map(str, shape))]
    for p in params:
        args += ["--param", ",".join(map(str, p))]
    for k, v in attrs.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    r = subprocess.run([OPINFO, *args], capture_output=True, text=True)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_cuda_op_table_names_every_op():
    with open(os.path.join(SOURCE, "src", "kernels", "cuda", "backend.cu")) as f:
        named = {m.lower() for m in re.findall(r"\[UNET_OP_(\w+)\]", f.read())}
    missing = [op for op in ops_in_header() if op not in named]
    assert not missing, f"ops missing from the CUDA backend's op table (src/kernels/cuda/backend.cu): {missing}"


def cuda_built():
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        return "UNET_CUDA:BOOL=ON" in f.read()


BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (gpu_listed() and cuda_built()), reason="no CUDA backend to run here (no GPU listed, or built without)"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ops_in_header())
def test_op_has_forward_and_backward(op, backend):
    inputs, out_shape, attrs, params, states, _ = CASES[op]
    dout = np.ones(out_shape, F)
    r = run_op(op, inputs, out_shape, attrs, params=params, states=states, dout=dout, backward=True, backend=backend)
    assert np.all(np.isfinite(r["out"])), f"{backend} {op}: forward left elements unwritten"
    assert r["din"][0] is not None and np.all(np.isfinite(r["din"][0])), f"{backend} {op}: backward left din0 unwritten"
