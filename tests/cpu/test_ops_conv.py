"""CPU conv (3x3 valid and same, 1x1, fused ReLU; and the encoders': strided,
7x7 and other windows, bias-free, depthwise, ReLU6), conv_t2 and bias,
forward and backward (din, dweight, dbias), against PyTorch in float64 on
random shapes (odd and non-square sizes, C = 1, batch 1..3), through
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
from unet_testlib import assert_close, rel_err, rng, run_op

TOL = 1e-5


ACTS = {0: None, 1: "relu", "relu": "relu", "relu6": "relu6", "none": None}


def act_mask(act, out):
    """Where the activation passes the gradient, by the output (ReLU: > 0; ReLU6: 0 < y < 6)."""
    out = np.asarray(out)
    return out > 0 if act == "relu" else (out > 0) & (out < 6)


def conv_reference(x, w, b, pad, relu, dout, out=None, stride=1, groups=1):
    """Forward, and backward through the activation (relu: 0/1 or "relu", "relu6") with the mask of
    `out` (the op's own float32 output, whose mask can differ from float64's for outputs within
    rounding of a bound: on a few million outputs some are) or of the float64 output when None. b None:
    no bias (the bias gradient comes back None)."""
    act = ACTS[relu]
    X, Wt = t64(x, True), t64(w, True)
    B = t64(b, True) if b is not None else None
    z = F.conv2d(X, Wt, B, stride=stride, padding=pad, groups=groups)
    y = {None: z, "relu": F.relu(z), "relu6": F.relu6(z)}[act]
    if act:
        mask = act_mask(act, y.detach().numpy() if out is None else out)
        z.backward(t64(dout) * torch.from_numpy(mask))
    else:
        z.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy(), Wt.grad.numpy(), None if B is None else B.grad.numpy()


def conv_out_shape(x_shape, o, k, pad, stride=1):
    n, c, h, w = x_shape
    return (n, o, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)


def conv_case(x_shape, o, k, pad, relu, g, accumulate=False, stride=1, groups=1, bias=True):
    c = x_shape[1]
    x = g.standard_normal(x_shape).astype(np.float32)
    wt = (g.standard_normal((o, c // groups, k, k)) / np.sqrt(c // groups * k * k)).astype(np.float32)
    if ACTS[relu] == "relu6":  # outputs over [-6, 12]: both bounds of ReLU6 in play
        wt *= np.float32(4)
    b = g.standard_normal(o).astype(np.float32) + (np.float32(3) if ACTS[relu] == "relu6" else 0) if bias else None
    out_shape = conv_out_shape(x_shape, o, k, pad, stride)
    dout = g.standard_normal(out_shape).astype(np.float32)
    return x, wt, b, out_shape, dout


def check_conv(x_shape, o, k, pad, relu, g, accumulate=False, stride=1, groups=1, bias=True):
    x, wt, b, out_shape, dout = conv_case(x_shape, o, k, pad, relu, g, stride=stride, groups=groups, bias=bias)
    act = ACTS[relu]
    attrs = {"k": k, "pad": pad, "act": act or "none", "out_c": o, "stride": stride, "groups": groups}
    init = g.standard_normal(x.shape).astype(np.float32) if accumulate else None
    params = [wt, b] if bias else [wt]
    r = run_op("conv", [x], out_shape, attrs, params=params, dout=dout, backward=True,
               din_init=None if init is None else [init])
    what = f"conv k={k} stride={stride} pad={pad} groups={groups} act={act} bias={bias} x={x_shape} o={o}"
    y_ref, dx_ref, dw_ref, db_ref = conv_reference(x, wt, b, pad, relu, dout, out=r["out"], stride=stride,
                                                   groups=groups)
    assert_close(r["out"], y_ref, TOL, what + " out")
    if act:  # the op's mask is the float64 one but for outputs within rounding of a bound
        differ = act_mask(act, r["out"]) != act_mask(act, y_ref)
        assert np.all(np.minimum(np.abs(y_ref[differ]), np.abs(y_ref[differ] - 6)) < 1e-5), what + " mask"
    assert_close(r["din"][0], dx_ref if init is None else init + dx_ref, TOL, what + " din")
    assert_close(r["dparam"][0], dw_ref, TOL, what + " dweight")
    if bias:
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
@pytest.mark.parametrize("winograd", ["0", "1"])
def test_conv3x3_blocked(pad, seed, winograd, monkeypatch):
    """Big enough for several column blocks per thread, two K slices (9*C > 256), partial
    tiles in every dimension (O, C not multiples of the tile sizes); the forward both direct and
    by Winograd's transform (which the default picks for some of these shapes)."""
    monkeypatch.setenv("UNET_CONV_WINOGRAD", winograd)
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


# ---- the encoders' convolutions (ResNet, MobileNetV2): strided, 7x7, odd padding, bias-free, depthwise ----

@pytest.mark.parametrize("k,pad", [(3, 1), (3, 0), (1, 0)])
@pytest.mark.parametrize("act", ["relu6", "none"])
def test_conv_direct_bias_free(k, pad, act):
    """The 3x3 / 1x1 stride-1 kernels without a bias (a batch norm follows: ResNet's blocks, smp's decoder)
    and with ReLU6 (MobileNetV2's expansion 1x1)."""
    g = rng(1950 + 2 * k + pad + (act == "relu6"))
    check_conv(random_x_shape(g), int(g.integers(1, 10)), k, pad, act, g, bias=False, accumulate=act == "none")

IM2COL_GEOMETRIES = [(7, 2, 3), (3, 2, 1), (1, 2, 0), (3, 2, 0), (5, 1, 2), (3, 1, 2), (2, 2, 0), (3, 3, 1)]


@pytest.mark.parametrize("k,stride,pad", IM2COL_GEOMETRIES)
@pytest.mark.parametrize("seed", range(2))
def test_conv_strided_and_odd(k, stride, pad, seed):
    """groups 1 outside the 3x3 / 1x1 stride-1 kernels: ResNet's stem (7, 2, 3), its 3x3 and 1x1
    stride-2 convolutions, and other windows, with and without bias, every activation."""
    g = rng(2000 + 10 * IM2COL_GEOMETRIES.index((k, stride, pad)) + seed)
    shape = random_x_shape(g, min_hw=max(k - 2 * pad, 1), max_hw=24)
    act = ["none", "relu", "relu6"][(seed + k) % 3]
    check_conv(shape, int(g.integers(1, 12)), k, pad, act, g, stride=stride, bias=seed == 0, accumulate=seed == 1)


def test_conv_strided_blocked_and_bands():
    """Several K slices (C k k > 256), partial tiles, and (second case) more than one band of output rows."""
    g = rng(2100)
    check_conv((2, 37, 29, 33), 45, 3, 1, "relu", g, stride=2, bias=False)
    check_conv((1, 16, 80, 400), 9, 7, 3, "none", g, stride=2, accumulate=True)


DEPTHWISE_GEOMETRIES = [(3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 2, 2), (3, 3, 1), (1, 1, 0)]


@pytest.mark.parametrize("k,stride,pad", DEPTHWISE_GEOMETRIES)
@pytest.mark.parametrize("seed", range(2))
def test_conv_depthwise(k, stride, pad, seed):
    """groups = channels: MobileNetV2's 3x3 at stride 1 and 2 (bias-free, ReLU6), and other windows."""
    g = rng(2200 + 10 * DEPTHWISE_GEOMETRIES.index((k, stride, pad)) + seed)
    shape = random_x_shape(g, min_hw=max(k - 2 * pad, 1), max_hw=24, max_c=12)
    act = ["relu6", "none", "relu"][(seed + k) % 3]
    check_conv(shape, shape[1], k, pad, act, g, stride=stride, groups=shape[1], bias=seed == 1,
               accumulate=seed == 0)


def run_bits(op_args, env):
    """Every output of one op forward + backward (run_op's arguments), as raw bytes, under extra environment."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = run_op(*op_args[0], **op_args[1])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [r["out"].tobytes()] + [v.tobytes() for v in r["din"] + r["dparam"]]


@pytest.mark.parametrize("groups", ["1", "depthwise"])
def test_conv_strided_deterministic(groups):
    """Same bits run to run, and for one thread as for two and three."""
    g = rng(2300)
    c = 24
    grp = 1 if groups == "1" else c
    x, wt, b, out_shape, dout = conv_case((2, c, 37, 45), c, 3, 1, "relu6", g, stride=2, groups=grp)
    args = (("conv", [x], out_shape, {"k": 3, "stride": 2, "pad": 1, "groups": grp, "act": "relu6", "out_c": c}),
            dict(params=[wt, b], dout=dout, backward=True))
    first = run_bits(args, {})
    assert run_bits(args, {}) == first
    assert run_bits(args, {"OMP_NUM_THREADS": "1"}) == first
    assert run_bits(args, {"OMP_NUM_THREADS": "3"}) == first


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


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="FTZ and DAZ are set on x86-64")
def test_subnormals_flushed():
    """The CPU backend flushes subnormal floats (FTZ and DAZ, src/kernels/cpu/backend.c), which
    would otherwise cost a microcode assist each: a subnormal input reads as zero, and a product
    below the normal range comes out zero."""
    x = np.full((1, 2, 3, 3), 1e-40, np.float32)
    x[0, 1] = 1.0
    r = run_op("bias", [x], x.shape, params=[np.zeros(2, np.float32)])
    assert np.all(r["out"][0, 0] == 0) and np.all(r["out"][0, 1] == 1)
    x = np.full((1, 1, 2, 2), 1e-20, np.float32)
    attrs = {"k": 1, "pad": 0, "act": "none", "out_c": 1, "stride": 1, "groups": 1}
    r = run_op("conv", [x], (1, 1, 2, 2), attrs,
               params=[np.full((1, 1, 1, 1), 1e-20, np.float32), np.zeros(1, np.float32)])
    assert np.all(r["out"] == 0)


def run_conv_bits(x, wt, b, out_shape, dout, pad, env):
    """Every output of one conv forward + backward, as raw bytes, under extra environment."""
    return run_bits((("conv", [x], out_shape, {"k": 3, "pad": pad, "relu": 1, "out_c": wt.shape[0]}),
                     dict(params=[wt, b], dout=dout, backward=True)), env)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_deterministic(pad):
    """Same bits run to run, and for one thread as for two."""
    g = rng(1800 + pad)
    x, wt, b, out_shape, dout = conv_case((2, 21, 37, 45), 19, 3, pad, 1, g)
    first = run_conv_bits(x, wt, b, out_shape, dout, pad, {})
    assert run_conv_bits(x, wt, b, out_shape, dout, pad, {}) == first
    assert run_conv_bits(x, wt, b, out_shape, dout, pad, {"OMP_NUM_THREADS": "1"}) == first


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_split_by_rows(pad):
    """Few pixels, many channels (M > N, deep layers): the threads split the output channels (whole
    panels, a ragged last one) instead of the pixels. Values against PyTorch, and the same bits for
    1, 2 and 3 threads."""
    g = rng(1850 + pad)
    check_conv((2, 40, 5, 6), 70, 3, pad, 1, g)
    check_conv((1, 30, 4, 3), 45, 1, 0, 1, g)
    check_conv_t2((1, 12, 3, 5), 20, g)
    check_conv_t2((2, 40, 4, 4), 33, g)
    x, wt, b, out_shape, dout = conv_case((2, 37, 6, 7), 53, 3, pad, 1, g)
    bits = [run_conv_bits(x, wt, b, out_shape, dout, pad, {"OMP_NUM_THREADS": t}) for t in ("1", "2", "3")]
    assert bits[0] == bits[1] == bits[2]


# ---- the 3x3 forward by Winograd's F(2x2, 3x3) (conv_winograd.c) ----

@pytest.mark.parametrize("pad", [0, 1])
@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_conv3x3_winograd(pad, relu, seed, monkeypatch):
    """Forced wherever the shape allows (C >= 8): random shapes, odd and even output sizes (a last
    tile of one row or column), outputs down to 1x1, batch 1..3; the backward stays direct."""
    monkeypatch.setenv("UNET_CONV_WINOGRAD", "1")
    g = rng(2000 + 10 * seed + 2 * pad + relu)
    shape = (int(g.integers(1, 4)), int(g.integers(8, 41)), int(g.integers(3, 30)), int(g.integers(3, 30)))
    check_conv(shape, int(g.integers(1, 80)), 3, pad, relu, g, accumulate=seed == 2)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv3x3_winograd_bands(pad, monkeypatch):
    """Several bands of tile rows (2 MB of transformed input and output each), which the threads
    take whole, and bands that hold several small images (a deep layer's planes); the same bits
    for 1, 2 and 3 threads (whole bands each, or one band shared)."""
    monkeypatch.setenv("UNET_CONV_WINOGRAD", "1")
    g = rng(2100 + pad)
    check_conv((1, 8, 151, 130), 70, 3, pad, 1, g)
    check_conv((9, 16, 9, 7), 20, 3, pad, 0, g)
    x, wt, b, out_shape, dout = conv_case((2, 12, 75, 61), 40, 3, pad, 1, g)
    bits = [run_conv_bits(x, wt, b, out_shape, dout, pad, {"OMP_NUM_THREADS": t}) for t in ("1", "2", "3")]
    assert bits[0] == bits[1] == bits[2]


def test_conv3x3_winograd_by_default():
    """Where it runs unasked (C >= 16, O >= 32, 256 tiles or more: a 32x32 plane), against PyTorch,
    near the direct product, and the same bits for 1, 2 and 3 threads."""
    g = rng(2150)
    x, wt, b, out_shape, dout = conv_case((1, 32, 33, 31), 64, 3, 1, 1, g)
    check_conv((1, 32, 33, 31), 64, 3, 1, 1, rng(2150))
    bits = [run_conv_bits(x, wt, b, out_shape, dout, 1, {"OMP_NUM_THREADS": t}) for t in ("1", "2", "3")]
    assert bits[0] == bits[1] == bits[2]
    direct = run_conv_bits(x, wt, b, out_shape, dout, 1, {"UNET_CONV_WINOGRAD": "0"})
    assert direct[0] != bits[0][0], "the default ran the direct product, not Winograd's"
    assert direct[1:] == bits[0][1:], "the backward is the direct one either way"
    assert rel_err(np.frombuffer(bits[0][0], np.float32), np.frombuffer(direct[0], np.float32)) < 1e-6


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
    check_conv((2, 9, 15, 13), 11, 7, 3, "relu", g, stride=2, bias=False, accumulate=True)
    monkeypatch.setenv("UNET_CONV_WINOGRAD", "1")
    check_conv((2, 10, 13, 16), 66, 3, 1, 1, g)
    check_conv((1, 12, 11, 9), 9, 3, 0, 0, g)
