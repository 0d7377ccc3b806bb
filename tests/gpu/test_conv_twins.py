"""The CUDA conv, conv_t2 and bias ops (cuDNN graph API + src/kernels/cuda/conv.cu),
forward and backward, against PyTorch in float64 and against their CPU twins,
on random shapes (odd sizes, batch > 1), through tests/tools/unet_optest.c;
and the encoders' convolutions (strided, 7x7, depthwise, bias-free, ReLU6).

Tolerances are norm-wise relative errors (unet_testlib.rel_err):
  fp32 1e-5: pure float math (no TF32, FFT or Winograd engines); the largest
       sums here (weight gradients) have a few thousand terms, whose float
       rounding is ~1e-6 norm-wise, so 1e-5 holds with margin and a looser
       engine slipping through the filter would show.
  tf32 2e-3: TF32 keeps 10 mantissa bits (unit roundoff 4.9e-4) on the
       products; norm-wise that lands near 5e-4..1e-3 on random data.
Every output starts as NaN (unet_optest poisons it), so an unwritten element
fails. UNET_CUDNN_LOG=1 is set so that a failing unet_optest run shows, in the
error, the cuDNN engine chosen (or the fallback taken) for each plan.

Each case runs in both layouts of fp32/tf32 activations (--layout nchw and
nhwc) with the same tolerances: in NHWC cuDNN is shown channels-last tensors
padded to 4 channels and a (K4, R, S, C4) copy of the weights, which changes
which engines run and their summation order, not the accuracy asked of them."""
import os

import numpy as np
import pytest
import torch.nn.functional as F

from op_references import activation, t64
from unet_testlib import assert_close, cuda_emulated, rng, run_op, requires_gpu

FP32_TOL = 1e-5
TF32_TOL = 2e-3
LAYOUTS = ["nchw", "nhwc"]


pytestmark = requires_gpu("the CUDA conv twins run on a GPU machine")


@pytest.fixture(scope="module", autouse=True)
def cudnn_log():
    os.environ.setdefault("UNET_CUDNN_LOG", "1")


def conv_case(g, k, pad, relu, n=None):
    n = n or int(g.integers(1, 4))
    c, o = int(g.integers(1, 8)), int(g.integers(1, 10))
    h, w = int(g.integers(k + 2, 18)), int(g.integers(k + 2, 18))
    ho, wo = h - k + 1 + 2 * pad, w - k + 1 + 2 * pad
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (g.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    dout = g.standard_normal((n, o, ho, wo)).astype(np.float32)
    return x, wt, b, dout, (n, o, ho, wo)


def conv_reference(x, wt, b, dout, pad, relu):
    X, W, B = t64(x, True), t64(wt, True), t64(b, True)
    y = F.conv2d(X, W, B, padding=pad)
    if relu:
        y = F.relu(y)
    y.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy(), W.grad.numpy(), B.grad.numpy()


def device_attrs(attrs, backend, precision, layout):
    """attrs with the CUDA backend's precision and layout, where given."""
    if precision:
        attrs["precision"] = precision
    if layout and backend == "cuda":
        attrs["layout"] = layout
    return attrs


def run_conv(x, wt, b, dout, out_shape, k, pad, relu, backend="cuda", din_init=None, precision=None, layout=None):
    attrs = device_attrs({"k": k, "pad": pad, "relu": relu, "out_c": out_shape[1]}, backend, precision, layout)
    return run_op("conv", [x], out_shape, attrs, params=[wt, b], dout=dout, backward=True, backend=backend,
                  din_init=din_init)


def check_conv(r, ref, tol, what, din_init=None):
    y, dx, dw, db = ref
    assert_close(r["out"], y, tol, f"{what} out")
    assert_close(r["din"][0], dx if din_init is None else dx + din_init, tol, f"{what} din")
    assert_close(r["dparam"][0], dw, tol, f"{what} dweight")
    assert_close(r["dparam"][1], db, tol, f"{what} dbias")


CONV_CONFIGS = [  # (k, pad, relu, batch): valid and same 3x3, 1x1 heads, with and without the fused ReLU
    (3, 1, 1, None), (3, 0, 0, None), (1, 0, 1, None), (3, 1, 0, 3), (3, 0, 1, 2)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", range(len(CONV_CONFIGS)))
def test_conv_matches_torch(case, layout):
    k, pad, relu, n = CONV_CONFIGS[case]
    g = rng(100 + case)
    x, wt, b, dout, oshape = conv_case(g, k, pad, relu, n)
    r = run_conv(x, wt, b, dout, oshape, k, pad, relu, layout=layout)
    check_conv(r, conv_reference(x, wt, b, dout, pad, relu), FP32_TOL, f"conv k{k} pad{pad} relu{relu} {x.shape}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_matches_cpu_twin(layout):
    for case, (k, pad, relu, n) in enumerate(CONV_CONFIGS[:3]):
        g = rng(200 + case)
        x, wt, b, dout, oshape = conv_case(g, k, pad, relu, n)
        cpu = run_conv(x, wt, b, dout, oshape, k, pad, relu, backend="cpu")
        ref = (cpu["out"], cpu["din"][0], cpu["dparam"][0], cpu["dparam"][1])
        check_conv(run_conv(x, wt, b, dout, oshape, k, pad, relu, layout=layout), ref, FP32_TOL,
                   f"conv vs CPU twin k{k} pad{pad} relu{relu} {x.shape}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_accumulates_into_din(layout):
    g = rng(300)
    x, wt, b, dout, oshape = conv_case(g, 3, 1, 1, 2)
    din_init = g.standard_normal(x.shape).astype(np.float32)
    r = run_conv(x, wt, b, dout, oshape, 3, 1, 1, din_init=[din_init], layout=layout)
    check_conv(r, conv_reference(x, wt, b, dout, 1, 1), FP32_TOL, "conv accumulate", din_init)


def test_conv_checks_its_weights_against_the_alignment_its_plans_declare():
    """Parameters start on 64-byte boundaries (graph.c), so the plans declare
    weights and biases 16-byte aligned, as tensor-core engines want; the
    backend checks every pointer against what its plan declared, before
    cuDNN sees it. A weight 64 bytes into its block is fine, 4 bytes is not."""
    g = rng(350)
    x, wt, b, dout, oshape = conv_case(g, 3, 1, 1, 2)
    attrs = {"k": 3, "pad": 1, "relu": 1, "out_c": oshape[1]}
    ok = run_op("conv", [x], oshape, dict(attrs, param_offset=16), params=[wt, b], backend="cuda", training=0)
    assert_close(ok["out"], conv_reference(x, wt, b, dout, 1, 1)[0], FP32_TOL, "conv, weights 64 bytes in")
    with pytest.raises(RuntimeError) as e:
        run_op("conv", [x], oshape, dict(attrs, param_offset=1), params=[wt, b], backend="cuda", training=0)
    assert "tensor at" in str(e.value) and "is not 16-byte aligned as the plan assumes" in str(e.value), str(e.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_is_deterministic(layout):
    g = rng(400)
    x, wt, b, dout, oshape = conv_case(g, 3, 0, 1, 3)
    r1 = run_conv(x, wt, b, dout, oshape, 3, 0, 1, layout=layout)
    r2 = run_conv(x, wt, b, dout, oshape, 3, 0, 1, layout=layout)
    for name, a1, a2 in [("out", r1["out"], r2["out"]), ("din", r1["din"][0], r2["din"][0]),
                         ("dweight", r1["dparam"][0], r2["dparam"][0]), ("dbias", r1["dparam"][1], r2["dparam"][1])]:
        assert np.array_equal(a1.view(np.uint32), a2.view(np.uint32)), f"conv {name} differs between two runs"


def conv_t2_case(g, n=None):
    n = n or int(g.integers(1, 4))
    c, o = int(g.integers(1, 9)), int(g.integers(1, 8))
    h, w = int(g.integers(2, 12)), int(g.integers(2, 12))
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (g.standard_normal((c, o, 2, 2)) / np.sqrt(c)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    dout = g.standard_normal((n, o, 2 * h, 2 * w)).astype(np.float32)
    return x, wt, b, dout, (n, o, 2 * h, 2 * w)


def conv_t2_reference(x, wt, b, dout):
    X, W, B = t64(x, True), t64(wt, True), t64(b, True)
    y = F.conv_transpose2d(X, W, B, stride=2)
    y.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy(), W.grad.numpy(), B.grad.numpy()


def run_conv_t2(x, wt, b, dout, out_shape, backend="cuda", din_init=None, precision=None, layout=None):
    attrs = device_attrs({"out_c": out_shape[1]}, backend, precision, layout)
    return run_op("conv_t2", [x], out_shape, attrs, params=[wt, b], dout=dout, backward=True, backend=backend,
                  din_init=din_init)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", [500, 501])
def test_conv_t2_matches_torch(seed, layout):
    g = rng(seed)
    x, wt, b, dout, oshape = conv_t2_case(g, 2 if seed == 500 else None)
    r = run_conv_t2(x, wt, b, dout, oshape, layout=layout)
    check_conv(r, conv_t2_reference(x, wt, b, dout), FP32_TOL, f"conv_t2 {x.shape}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_t2_accumulates_and_matches_cpu_twin(layout):
    g = rng(600)
    x, wt, b, dout, oshape = conv_t2_case(g, 3)
    din_init = g.standard_normal(x.shape).astype(np.float32)
    r = run_conv_t2(x, wt, b, dout, oshape, din_init=[din_init], layout=layout)
    check_conv(r, conv_t2_reference(x, wt, b, dout), FP32_TOL, "conv_t2 accumulate", din_init)
    cpu = run_conv_t2(x, wt, b, dout, oshape, backend="cpu", din_init=[din_init])
    for name, got, want in [("out", r["out"], cpu["out"]), ("din", r["din"][0], cpu["din"][0]),
                            ("dweight", r["dparam"][0], cpu["dparam"][0]), ("dbias", r["dparam"][1], cpu["dparam"][1])]:
        assert_close(got, want, FP32_TOL, f"conv_t2 vs CPU twin {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unfused_paths(monkeypatch, layout):
    """UNET_CUDNN_NOFUSE=1: conv alone + the bias/ReLU kernel, and accumulation
    through workspace scratch, as on a GPU where no engine runs the fused or
    beta = 1 graphs."""
    monkeypatch.setenv("UNET_CUDNN_NOFUSE", "1")
    g = rng(700)
    x, wt, b, dout, oshape = conv_case(g, 3, 1, 1, 2)
    din_init = g.standard_normal(x.shape).astype(np.float32)
    r = run_conv(x, wt, b, dout, oshape, 3, 1, 1, din_init=[din_init], layout=layout)
    check_conv(r, conv_reference(x, wt, b, dout, 1, 1), FP32_TOL, "unfused conv", din_init)
    x, wt, b, dout, oshape = conv_t2_case(g, 2)
    din_init = g.standard_normal(x.shape).astype(np.float32)
    r = run_conv_t2(x, wt, b, dout, oshape, din_init=[din_init], layout=layout)
    check_conv(r, conv_t2_reference(x, wt, b, dout), FP32_TOL, "unfused conv_t2", din_init)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tf32_within_its_tolerance(layout):
    g = rng(800)
    x, wt, b, dout, oshape = conv_case(g, 3, 1, 1, 2)
    r = run_conv(x, wt, b, dout, oshape, 3, 1, 1, precision="tf32", layout=layout)
    check_conv(r, conv_reference(x, wt, b, dout, 1, 1), TF32_TOL, "conv tf32")
    x, wt, b, dout, oshape = conv_t2_case(g, 2)
    r = run_conv_t2(x, wt, b, dout, oshape, precision="tf32", layout=layout)
    check_conv(r, conv_t2_reference(x, wt, b, dout), TF32_TOL, "conv_t2 tf32")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_bias_matches_torch(accumulate, layout):
    g = rng(900 + accumulate)
    n, c, h, w = 3, int(g.integers(1, 9)), int(g.integers(3, 15)), int(g.integers(3, 15))
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    b = g.standard_normal(c).astype(np.float32)
    dout = g.standard_normal(x.shape).astype(np.float32)
    din_init = g.standard_normal(x.shape).astype(np.float32) if accumulate else None
    r = run_op("bias", [x], x.shape, {"layout": layout}, params=[b], dout=dout, backward=True, backend="cuda",
               din_init=[din_init] if accumulate else None)
    X, B = t64(x, True), t64(b, True)
    y = X + B.view(1, -1, 1, 1)
    y.backward(t64(dout))
    assert_close(r["out"], y.detach().numpy(), FP32_TOL, "bias out")
    dx = X.grad.numpy() + (din_init if accumulate else 0)
    assert_close(r["din"][0], dx, FP32_TOL, "bias din")
    assert_close(r["dparam"][0], B.grad.numpy(), FP32_TOL, "bias dbias")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bias_gradient_over_channel_vectors(layout):
    """The bias gradient's per-channel sums over many channels and pixels: in
    NHWC 38 vectors of 4 channels (two chunks of 32) over three slices of
    pixels (src/kernels/cuda/nhwc.cuh)."""
    g = rng(950)
    x = g.standard_normal((2, 150, 30, 41)).astype(np.float32)
    b = g.standard_normal(150).astype(np.float32)
    dout = g.standard_normal(x.shape).astype(np.float32)
    r = run_op("bias", [x], x.shape, {"layout": layout}, params=[b], dout=dout, backward=True, backend="cuda")
    X, B = t64(x, True), t64(b, True)
    y = X + B.view(1, -1, 1, 1)
    y.backward(t64(dout))
    assert_close(r["out"], y.detach().numpy(), FP32_TOL, "bias out")
    assert_close(r["din"][0], X.grad.numpy(), FP32_TOL, "bias din")
    assert_close(r["dparam"][0], B.grad.numpy(), FP32_TOL, "bias dbias")


def test_bias_gradient_over_more_channels_than_a_grid_dimension_holds():
    """The per-channel gradient sums launch a block per channel on grid.y,
    which holds 65535 at most: past that, each block takes several channels
    (conv.cu, channel_grid). 65540 channels of 2 values each (cheap, even
    emulated), against the CPU twin: a channel left out reads as NaN."""
    g = rng(950)
    shape = (2, 65540, 1, 1)
    x = g.standard_normal(shape).astype(np.float32)
    b = g.standard_normal(shape[1]).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    r = run_op("bias", [x], shape, params=[b], dout=dout, backward=True, backend="cuda")
    cpu = run_op("bias", [x], shape, params=[b], dout=dout, backward=True, backend="cpu")
    assert_close(r["dparam"][0], cpu["dparam"][0], FP32_TOL, "bias dbias over 65540 channels")
    assert_close(r["out"], cpu["out"], FP32_TOL, "bias out over 65540 channels")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", ["cublaslt", "cudnn"])
@pytest.mark.parametrize("precision,relu", [("fp32", 0), ("fp32", 1), ("tf32", 1)])
def test_1x1_conv_by_either_path_matches_torch_and_the_cpu_twin(monkeypatch, path, precision, relu, layout):
    """A 1x1 convolution's forward runs as a cuBLASLt matmul with the bias
    (and ReLU) in its epilogue, or through cuDNN, whichever ran its shape
    faster when the plans were built (src/kernels/cuda/gemm.h); the choice
    is forced here (UNET_CONV1X1), and the log must say it was taken."""
    monkeypatch.setenv("UNET_CONV1X1", path)
    tol = FP32_TOL if precision == "fp32" else TF32_TOL
    g = rng(960 + relu)
    x, wt, b, dout, oshape = conv_case(g, 1, 0, relu, 3)
    r = run_conv(x, wt, b, dout, oshape, 1, 0, relu, precision=precision, layout=layout)
    check_conv(r, conv_reference(x, wt, b, dout, 0, relu), tol, f"1x1 conv by {path} {precision} relu{relu}")
    cpu = run_conv(x, wt, b, dout, oshape, 1, 0, relu, backend="cpu")
    assert_close(r["out"], cpu["out"], tol, f"1x1 conv by {path} vs the CPU twin")
    said = "cuBLASLt (UNET_CONV1X1" if path == "cublaslt" else "cuDNN (UNET_CONV1X1"
    assert said in r["stderr"], r["stderr"]


def test_1x1_conv_falls_back_to_cudnn_when_cublaslt_offers_nothing(monkeypatch):
    if not cuda_emulated():
        pytest.skip("a cuBLASLt without an algorithm is played by the CPU emulation")
    monkeypatch.setenv("UNET_CONV1X1", "cublaslt")
    monkeypatch.setenv("UNET_CUDA_EMU_CUBLASLT_ALGOS", "0")
    g = rng(970)
    x, wt, b, dout, oshape = conv_case(g, 1, 0, 1, 2)
    r = run_conv(x, wt, b, dout, oshape, 1, 0, 1)
    check_conv(r, conv_reference(x, wt, b, dout, 0, 1), FP32_TOL, "1x1 conv without a matmul")
    assert "no algorithm" in r["stderr"] and "cuDNN runs it" in r["stderr"], r["stderr"]


def test_1x1_conv_by_cublaslt_is_deterministic(monkeypatch):
    """cuBLASLt's matmul gives the same bits on every run of one algorithm on
    one GPU (no atomics in its reductions): two runs of the same problem."""
    monkeypatch.setenv("UNET_CONV1X1", "cublaslt")
    g = rng(980)
    x, wt, b, dout, oshape = conv_case(g, 1, 0, 1, 3)
    r1, r2 = (run_conv(x, wt, b, dout, oshape, 1, 0, 1) for _ in range(2))
    assert np.array_equal(r1["out"].view(np.uint32), r2["out"].view(np.uint32)), "1x1 conv by cuBLASLt differs"


# ---- the encoders' convolutions: (k, stride, pad, depthwise, act, bias) ----

ENCODER_CONVS = [
    (7, 2, 3, False, "relu", False),   # ResNet's stem (its batch norm omitted)
    (3, 2, 1, False, "none", False),   # ResNet's stride-2 3x3
    (1, 2, 0, False, "none", False),   # ResNet's downsample
    (3, 1, 1, True, "relu6", False),   # MobileNetV2's depthwise 3x3
    (3, 2, 1, True, "none", False),    # ... at stride 2
    (3, 1, 1, False, "relu6", True),   # a fused bias + ReLU6 graph (tf32, bf16), the bias kernel's ReLU6 (fp32)
    (3, 2, 1, True, "relu", True),     # depthwise with a bias
    (5, 3, 2, False, "relu6", False),  # another window
]


def encoder_case(g, k, stride, pad, depthwise, act, bias):
    n, c = int(g.integers(1, 4)), int(g.integers(2, 12))
    o = c if depthwise else int(g.integers(1, 10))
    h, w = int(g.integers(k, 20)), int(g.integers(k, 20))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cg = 1 if depthwise else c
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (g.standard_normal((o, cg, k, k)) * (4 if act == "relu6" else 1) / np.sqrt(cg * k * k)).astype(np.float32)
    b = (g.standard_normal(o) + (3 if act == "relu6" else 0)).astype(np.float32) if bias else None
    dout = g.standard_normal((n, o, ho, wo)).astype(np.float32)
    attrs = {"k": k, "stride": stride, "pad": pad, "groups": c if depthwise else 1, "act": act, "out_c": o}
    return x, wt, b, dout, (n, o, ho, wo), attrs


def encoder_reference(x, wt, b, dout, attrs, out=None):
    """Forward and backward in float64; with out (the op's own output), the backward masked where the op's
    activation masks it: under TF32 a pre-activation within rounding of a bound may fall on the other side."""
    X, W = t64(x, True), t64(wt, True)
    B = t64(b, True) if b is not None else None
    z = F.conv2d(X, W, B, stride=attrs["stride"], padding=attrs["pad"], groups=attrs["groups"])
    y = activation(z, attrs["act"])
    if out is None or attrs["act"] == "none":
        y.backward(t64(dout))
    else:
        passes = (out > 0) & ((out < 6) if attrs["act"] == "relu6" else True)
        z.backward(t64(dout) * t64(passes))
    return y.detach().numpy(), X.grad.numpy(), W.grad.numpy(), None if B is None else B.grad.numpy()


def run_encoder(x, wt, b, dout, out_shape, attrs, backend="cuda", din_init=None, precision=None, layout=None):
    attrs = device_attrs(dict(attrs), backend, precision, layout)
    return run_op("conv", [x], out_shape, attrs, params=[wt] if b is None else [wt, b], dout=dout, backward=True,
                  backend=backend, din_init=din_init)


def check_encoder(r, ref, tol, what, din_init=None):
    y, dx, dw, db = ref
    assert_close(r["out"], y, tol, f"{what} out")
    assert_close(r["din"][0], dx if din_init is None else dx + din_init, tol, f"{what} din")
    assert_close(r["dparam"][0], dw, tol, f"{what} dweight")
    if db is not None:
        assert_close(r["dparam"][1], db, tol, f"{what} dbias")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", range(len(ENCODER_CONVS)))
def test_encoder_conv_matches_torch_and_cpu_twin(case, layout):
    g = rng(1000 + case)
    x, wt, b, dout, oshape, attrs = encoder_case(g, *ENCODER_CONVS[case])
    what = f"conv {attrs} {x.shape}"
    ref = encoder_reference(x, wt, b, dout, attrs)
    check_encoder(run_encoder(x, wt, b, dout, oshape, attrs, layout=layout), ref, FP32_TOL, what)
    cpu = run_encoder(x, wt, b, dout, oshape, attrs, backend="cpu")
    twin = (cpu["out"], cpu["din"][0], cpu["dparam"][0], cpu["dparam"][1] if b is not None else None)
    check_encoder(run_encoder(x, wt, b, dout, oshape, attrs, layout=layout), twin, FP32_TOL, what + " vs CPU twin")
    din_init = g.standard_normal(x.shape).astype(np.float32)
    check_encoder(run_encoder(x, wt, b, dout, oshape, attrs, din_init=[din_init], layout=layout), ref, FP32_TOL,
                  what + " accumulated", din_init)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [0, 3, 5])
def test_encoder_conv_unfused_and_tf32(case, layout, monkeypatch):
    g = rng(1100 + case)
    x, wt, b, dout, oshape, attrs = encoder_case(g, *ENCODER_CONVS[case])
    r = run_encoder(x, wt, b, dout, oshape, attrs, precision="tf32", layout=layout)
    check_encoder(r, encoder_reference(x, wt, b, dout, attrs, r["out"]), TF32_TOL, f"conv tf32 {attrs}")
    monkeypatch.setenv("UNET_CUDNN_NOFUSE", "1")
    din_init = g.standard_normal(x.shape).astype(np.float32)
    r = run_encoder(x, wt, b, dout, oshape, attrs, din_init=[din_init], precision="tf32", layout=layout)
    check_encoder(r, encoder_reference(x, wt, b, dout, attrs, r["out"]), TF32_TOL, f"conv tf32 unfused {attrs}",
                  din_init)
