"""CPU conv (3x3 valid and same, 1x1, fused ReLU), conv_t2 and bias, forward
and backward (din, dweight, dbias), against PyTorch in float64 on random
shapes (odd and non-square sizes, C = 1, batch 1..3), through
tests/tools/unet_optest.c (the production op table).

Tolerance: norm-wise relative error 1e-5 (unet_testlib.rel_err). The
references take the same float32 inputs in float64. Our sums are float32
with blocked orders: a forward or input-gradient element sums 9*C (or C, 4*O)
products, a weight-gradient element sums over all N*H*W pixels, in vector
lanes and 1024-pixel chunks; on random data their rounding error is ~1e-7
norm-wise, so 1e-5 holds with wide margin.

Also checked: the --accumulate path (din = din_init + grad), that two runs
give the same bits and that one thread and two give the same bits, the
multi-band paths (shapes large enough for several 8 MB bands), and the
narrower vector kernels (UNET_CONV_ISA) the dispatcher would pick on other
CPUs."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_references import t64
from unet_testlib import assert_close, rng, run_op

TOL = 1e-5


def conv_reference(x, w, b, pad, relu, dout, out=None):
    """Forward, and backward through ReLU with the mask of `out` (the op's own float32
    output, whose sign can differ from float64's for outputs within rounding of zero:
    on a few million outputs some are) or of the float64 output when None."""
    X, Wt, B = t64(x, True), t64(w, True), t64(b, True)
    z = F.conv2d(X, Wt, B, padding=pad)
    y = F.relu(z) if relu else z
    if relu:
        mask = (y > 0) if out is None else torch.from_numpy(np.asarray(out) > 0)
        z.backward(t64(dout) * mask)
    else:
        z.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()


def conv_case(x_shape, o, k, pad, relu, g, accumulate=False):
    n, c, h, w = x_shape
    x = g.standard_normal(x_shape).astype(np.float32)
    wt = (g.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    out_shape = (n, o, h - k + 1 + 2 * pad, w - k + 1 + 2 * pad)
    dout = g.standard_normal(out_shape).astype(np.float32)
    return x, wt, b, out_shape, dout


def check_conv(x_shape, o, k, pad, relu, g, accumulate=False):
    x, wt, b, out_shape, dout = conv_case(x_shape, o, k, pad, relu, g)
    attrs = {"k": k, "pad": pad, "relu": int(relu), "out_c": o}
    init = g.standard_normal(x.shape).astype(np.float32) if accumulate else None
    r = run_op("conv", [x], out_shape, attrs, params=[wt, b], dout=dout, backward=True,
               din_init=None if init is None else [init])
    what = f"conv k={k} pad={pad} relu={relu} x={x_shape} o={o}"
    y_ref, dx_ref, dw_ref, db_ref = conv_reference(x, wt, b, pad, relu, dout, out=r["out"])
    assert_close(r["out"], y_ref, TOL, what + " out")
    if relu:  # the op's mask is the float64 one but for outputs within rounding of zero
        differ = (r["out"] > 0) != (y_ref > 0)
        assert np.all(np.abs(y_ref[differ]) < 1e-5), what + " ReLU mask"
    assert_close(r["din"][0], dx_ref if init is None else init + dx_ref, TOL, what + " din")
    assert_close(r["dparam"][0], dw_ref, TOL, what + " dweight")
    assert_close(r["dparam"][1], db_ref, TOL, what + " dbias")


def random_x_shape(g, min_hw=3, max_hw=20, max_c=7):
    return (int(g.integers(1, 4)), int(g.integers(1, max_c + 1)),
            int(g.integers(min_hw, max_hw)), int(g.integers(min_hw, max_hw)))


@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_conv3x3_small(pad, relu, seed):
    g = rng(1000 + 10 * seed + 2 * pad + relu)
    check_conv(random_x_shape(g), int(g.integers(1, 10)), 3, pad, relu, g)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv3x3_first_layer(pad):
    """C = 1 (one input channel), as the first layer, and its odd 9-wide weight gradient."""
    g = rng(1100 + pad)
    check_conv((2, 1, 41, 37), 16, 3, pad, 1, g)


@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("seed", range(2))
def test_conv3x3_blocked(pad, seed):
    """Big enough for several column blocks per thread, two K slices (9*C > 256), partial
    tiles in every dimension (O, C not multiples of the tile sizes)."""
    g = rng(1200 + 2 * seed + pad)
    shape = (int(g.integers(1, 3)), int(g.integers(30, 45)), int(g.integers(30, 50)), int(g.integers(40, 70)))
    check_conv(shape, int(g.integers(17, 40)), 3, pad, 1, g)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv3x3_several_bands(pad):
    """Rows long enough (O*W, (O+C)*(W+2) floats) that backward runs in three bands; and, same
    padding, (C*(W+2)) that forward does too."""
    g = rng(1300 + pad)
    if pad == 0:
        check_conv((1, 2, 300, 2000), 8, 3, 0, 1, g)
    else:
        check_conv((1, 4, 1100, 1000), 3, 3, 1, 1, g)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv3x3_accumulate(pad):
    g = rng(1400 + pad)
    check_conv(random_x_shape(g), int(g.integers(1, 10)), 3, pad, 1, g, accumulate=True)
    check_conv((2, 20, 23, 31), 13, 3, pad, 0, g, accumulate=True)


@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_conv1x1(relu, seed):
    g = rng(1500 + 2 * seed + relu)
    check_conv(random_x_shape(g, min_hw=1), int(g.integers(1, 10)), 1, 0, relu, g, accumulate=seed == 2)


def test_conv1x1_blocked():
    g = rng(1550)
    check_conv((2, 300, 25, 29), 19, 1, 0, 0, g)


def check_conv_t2(x_shape, o, g, accumulate=False):
    n, c, h, w = x_shape
    x = g.standard_normal(x_shape).astype(np.float32)
    wt = (g.standard_normal((c, o, 2, 2)) / np.sqrt(c)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    out_shape = (n, o, 2 * h, 2 * w)
    dout = g.standard_normal(out_shape).astype(np.float32)
    X, Wt, B = t64(x, True), t64(wt, True), t64(b, True)
    y = F.conv_transpose2d(X, Wt, B, stride=2)
    y.backward(t64(dout))
    init = g.standard_normal(x.shape).astype(np.float32) if accumulate else None
    r = run_op("conv_t2", [x], out_shape, {"out_c": o}, params=[wt, b], dout=dout, backward=True,
               din_init=None if init is None else [init])
    what = f"conv_t2 x={x_shape} o={o}"
    assert_close(r["out"], y.detach().numpy(), TOL, what + " out")
    dx_ref = X.grad.numpy()
    assert_close(r["din"][0], dx_ref if init is None else init + dx_ref, TOL, what + " din")
    assert_close(r["dparam"][0], Wt.grad.numpy(), TOL, what + " dweight")
    assert_close(r["dparam"][1], B.grad.numpy(), TOL, what + " dbias")


@pytest.mark.parametrize("seed", range(4))
def test_conv_t2(seed):
    g = rng(1600 + seed)
    check_conv_t2(random_x_shape(g, min_hw=1, max_hw=15), int(g.integers(1, 10)), g, accumulate=seed == 3)


def test_conv_t2_blocked_and_bands():
    g = rng(1650)
    check_conv_t2((2, 70, 21, 33), 37, g)
    check_conv_t2((1, 2, 150, 1000), 8, g)  # 4*O*W floats a row: three backward bands


@pytest.mark.parametrize("seed", range(3))
def test_bias(seed):
    g = rng(1700 + seed)
    shape = random_x_shape(g, min_hw=1)
    x = g.standard_normal(shape).astype(np.float32)
    b = g.standard_normal(shape[1]).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    X, B = t64(x, True), t64(b, True)
    y = X + B.view(1, -1, 1, 1)
    y.backward(t64(dout))
    init = g.standard_normal(shape).astype(np.float32) if seed == 2 else None
    r = run_op("bias", [x], shape, params=[b], dout=dout, backward=True, din_init=None if init is None else [init])
    assert_close(r["out"], y.detach().numpy(), TOL, "bias out")
    assert_close(r["din"][0], dout if init is None else init + dout, TOL, "bias din")
    assert_close(r["dparam"][0], B.grad.numpy(), TOL, "bias dparam")


def run_conv_bits(x, wt, b, out_shape, dout, pad, env):
    """Every output of one conv forward + backward, as raw bytes, under extra environment."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = run_op("conv", [x], out_shape, {"k": 3, "pad": pad, "relu": 1, "out_c": wt.shape[0]},
                   params=[wt, b], dout=dout, backward=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [r["out"].tobytes(), r["din"][0].tobytes(), r["dparam"][0].tobytes(), r["dparam"][1].tobytes()]


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_deterministic(pad):
    """Same bits run to run, and for one thread as for two."""
    g = rng(1800 + pad)
    x, wt, b, out_shape, dout = conv_case((2, 21, 37, 45), 19, 3, pad, 1, g)
    first = run_conv_bits(x, wt, b, out_shape, dout, pad, {})
    assert run_conv_bits(x, wt, b, out_shape, dout, pad, {}) == first
    assert run_conv_bits(x, wt, b, out_shape, dout, pad, {"OMP_NUM_THREADS": "1"}) == first


def supported_isas():
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    isas = ["scalar"]
    if os.uname().machine == "x86_64":
        isas.append("sse2")
        if " avx2" in flags and " fma" in flags:
            isas.append("avx2")
    return isas


@pytest.mark.parametrize("isa", supported_isas())
def test_narrower_kernels(isa, monkeypatch):
    """The vector kernels of other CPUs, forced on this one: conv both paddings, 1x1, conv_t2."""
    monkeypatch.setenv("UNET_CONV_ISA", isa)
    g = rng(1900)
    check_conv((2, 11, 19, 23), 13, 3, 0, 1, g, accumulate=True)
    check_conv((1, 9, 17, 14), 7, 3, 1, 1, g)
    check_conv((2, 13, 9, 11), 5, 1, 0, 0, g)
    check_conv_t2((2, 7, 9, 6), 5, g)
