"""Every op of the CPU op table has a forward and a backward: each op named
in include/unet/graph.h's unet_op enum is run through unet_optest with
--backward on a tiny valid case, which fails with "has no forward/backward"
when the table lacks one. The op list comes from the header, so a new op
without a case here fails this test instead of slipping by."""
import os
import re

import numpy as np
import pytest

from unet_testlib import SOURCE, run_op


def ops_in_header():
    with open(os.path.join(SOURCE, "include", "unet", "graph.h")) as f:
        text = f.read()
    body = re.search(r"typedef enum \{(.*?)\} unet_op;", text, re.S).group(1)
    return [m.lower() for m in re.findall(r"^\s*UNET_OP_(\w+)\s*[,=]", body, re.M) if m != "COUNT"]


F = np.float32
x = np.linspace(-1, 1, 2 * 3 * 4 * 6, dtype=F).reshape(2, 3, 4, 6)
label = (np.arange(2 * 4 * 6).reshape(2, 1, 4, 6) % 2).astype(np.int32)
# op -> (inputs, out shape, attrs, params, states)
CASES = {
    "conv": ([x], (2, 2, 4, 6), {"k": 3, "pad": 1, "out_c": 2}, [np.ones((2, 3, 3, 3), F), np.zeros(2, F)], []),
    "conv_t2": ([x], (2, 2, 8, 12), {"out_c": 2}, [np.ones((3, 2, 2, 2), F), np.zeros(2, F)], []),
    "bias": ([x], x.shape, {}, [np.ones(3, F)], []),
    "relu": ([x], x.shape, {}, [], []),
    "maxpool2": ([x], (2, 3, 2, 3), {}, [], []),
    "crop_concat": ([x, x], (2, 6, 4, 6), {}, [], []),
    "crop_add": ([x, x], x.shape, {}, [], []),
    "upsample2": ([x], (2, 3, 8, 12), {}, [], []),
    "batchnorm": ([x], x.shape, {}, [np.ones(3, F), np.zeros(3, F)], [np.zeros(3, F), np.ones(3, F)]),
    "dropout": ([x], x.shape, {"p": 0.5}, [], []),
    "softmax_ce": ([x, label], (1, 1, 1, 1), {}, [], []),
    "bce_dice": ([x[:, :1], label], (1, 1, 1, 1), {}, [], []),
}


def test_every_op_has_a_case():
    missing = [op for op in ops_in_header() if op not in CASES]
    assert not missing, f"ops without a case in {__file__}: {missing}"


@pytest.mark.parametrize("op", ops_in_header())
def test_op_has_forward_and_backward(op):
    inputs, out_shape, attrs, params, states = CASES[op]
    dout = np.ones(out_shape, F)
    r = run_op(op, inputs, out_shape, attrs, params=params, states=states, dout=dout, backward=True)
    assert np.all(np.isfinite(r["out"])), f"{op}: forward left elements unwritten"
    assert r["din"][0] is not None and np.all(np.isfinite(r["din"][0])), f"{op}: backward left din0 unwritten"
