"""--precision bf16 in the CUDA backend: every op, forward and backward,
against its CPU twin, and whole training steps of small models against the
CPU backend (through tests/tools/unet_optest.c and unet_modeltest.c).

bf16 stores activations and their gradients as bfloat16 (NHWC, channels
padded to 8: src/kernels/cuda/layout.h) with float32 master weights and
float32 reductions. The CPU twin is fed the same values rounded to bf16 (an
upload rounds them), so what remains is the bf16 rounding of the outputs and
intermediates: each result must be within TOL of the CPU's, relative to the
largest magnitude of the CPU's result (a per-element relative error would
fail on values near zero that are sums of larger terms), and never NaN.

Skips where no GPU is listed, where the build has no CUDA backend, and where
the backend refuses bf16 (not implemented yet, or a GPU before sm_80): the
test then says so rather than passing."""
import os

import numpy as np
import pytest
import torch

from unet_testlib import rng, run_op, requires_gpu

TOL = 1e-2        # ops: a few bf16 roundings (2^-9 each) of float32-accumulated results
MODEL_TOL = 5e-2  # whole steps, losses, parameters and running statistics: the roundings compound
# Whole steps, gradients: these small batch-normed models at initialisation are ill-conditioned
# (on the CPU alone, perturbing the input image by 0.1% moves the U-Net's gradients by 5% in norm,
# 0.4% by 23%), so bf16's roundings move them by ~10% (measured in a CPU emulation of the
# backend: 12% and 3% of the largest gradient for the two cases). This bound still catches a
# wrong layout, mask or sign, which move them by their own size.
MODEL_GRAD_TOL = 0.3

pytestmark = requires_gpu("the bf16 twins run on a GPU machine")


@pytest.fixture(scope="module", autouse=True)
def bf16_available():
    os.environ.setdefault("UNET_CUDA_SYNC", "1")
    x = np.ones((1, 1, 2, 2), np.float32)
    try:
        run_op("relu", [x], x.shape, {"precision": "bf16"}, backend="cuda")
    except RuntimeError as e:
        # the backend's refusals (backend.cu, parse_precision and the device check) begin so; any
        # other failure of this tiny op is a bug and fails the module
        if "unet_optest: precision bf16 " in str(e):
            pytest.skip("the CUDA backend refuses bf16 here: " + str(e).split("unet_optest: ", 1)[1])
        raise


def bf16(x):
    """x rounded to bfloat16 (nearest even), as float32."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def assert_bf16_close(got, ref, what, tol=TOL):
    assert got is not None, f"{what}: not written"
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert not np.any(np.isnan(got)), f"{what}: NaN in the bf16 result"
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    err = np.max(np.abs(got - ref)) / scale if scale > 0 else np.max(np.abs(got))
    assert err <= tol, f"{what}: max |bf16 - CPU| / max |CPU| = {err:.3g} > {tol:g}"


def below_six(out):
    """Where a float32 ReLU6 output lies in [5.97, 6): bf16 stores it as 6.0 (its spacing there is 1/32),
    and the backward, masking by the stored output, gives it no gradient while the float32 CPU twin
    does. A bound of bf16 itself, not an error: the cases give dout 0 there."""
    return (out >= 5.96875) & (out < 6)


def check(op, inputs, out_shape, attrs=None, params=(), states=(), accumulate=False, seed=0, **kw):
    """The op under bf16 and its CPU twin on bf16-rounded float inputs,
    forward and backward; the gradients overwritten, or added into a
    (bf16-rounded) initial gradient. A ReLU6 (attrs act) gets dout 0 where
    below_six says the two must differ."""
    g = rng(seed)
    inputs = [bf16(x) if x.dtype == np.float32 else x for x in inputs]
    is_loss = op in ("softmax_ce", "bce_dice")
    dout = None if is_loss else bf16(g.standard_normal(out_shape).astype(np.float32))
    if (attrs or {}).get("act") == "relu6":
        cpu_out = run_op(op, inputs, out_shape, attrs, params=params, states=states, backend="cpu", **kw)["out"]
        dout[below_six(cpu_out)] = 0
    din_init = None
    if accumulate:  # a loss has a gradient for its logits only
        din_init = [bf16(g.standard_normal(x.shape).astype(np.float32))
                    if x.dtype == np.float32 and (i == 0 or not is_loss) else None for i, x in enumerate(inputs)]
    bf_attrs = dict(attrs or {}, precision="bf16")
    cu = run_op(op, inputs, out_shape, bf_attrs, params=params, states=states, dout=dout, backward=True,
                backend="cuda", din_init=din_init, **kw)
    cpu = run_op(op, inputs, out_shape, attrs, params=params, states=states, dout=dout, backward=True,
                 backend="cpu", din_init=din_init, **kw)
    what = f"{op} {[x.shape for x in inputs]} bf16" + (" accumulated" if accumulate else "")
    assert_bf16_close(cu["out"], cpu["out"], what + " out")
    for i, d in enumerate(cpu["din"]):
        if d is not None:
            assert_bf16_close(cu["din"][i], d, f"{what} din{i}")
    for j, d in enumerate(cpu["dparam"]):
        if d is not None:
            assert_bf16_close(cu["dparam"][j], d, f"{what} dparam{j}")
    for j, s in enumerate(cpu.get("state") or []):
        if s is not None:
            assert_bf16_close(cu["state"][j], s, f"{what} state{j}")


# Channel counts below, at and above a multiple of 8 (the padding), odd sizes.
SHAPES = [(2, 3, 5, 7), (1, 8, 4, 6), (2, 13, 6, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_relu_dropout_bias(shape, accumulate):
    g = rng(10 + shape[1])
    x = g.standard_normal(shape).astype(np.float32)
    check("relu", [x], shape, accumulate=accumulate)
    check("dropout", [x], shape, {"p": 0.3}, accumulate=accumulate, seed=3)
    check("bias", [x], shape, params=[g.standard_normal(shape[1]).astype(np.float32)], accumulate=accumulate)


@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (1, 9, 4, 4)])
def test_maxpool2_upsample2(shape):
    g = rng(20 + shape[1])
    x = g.standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    check("maxpool2", [x], (n, c, h // 2, w // 2))
    check("upsample2", [x], (n, c, 2 * h, 2 * w), accumulate=True)


@pytest.mark.parametrize("op", ["crop_concat", "crop_add"])
def test_crop(op):
    g = rng(30)
    cs = [3, 5, 8] if op == "crop_concat" else [6, 6, 6]
    xs = [g.standard_normal((2, c, 5 + 2 * i, 7 + 3 * i)).astype(np.float32) for i, c in enumerate(cs)]
    out_c = sum(cs) if op == "crop_concat" else cs[0]
    check(op, xs, (2, out_c, 5, 7), accumulate=True)


# Channel vectors of 8 bf16 (src/kernels/cuda/nhwc.cuh): 3 a pixel (the sums' row tree over 85 rows, not a power
# of two) over three slices of pixels, and 38 (two chunks of 32 vectors).
@pytest.mark.parametrize("shape", [(2, 20, 24, 48), (1, 300, 4, 6)])
def test_channel_vectors(shape):
    g = rng(60 + shape[1])
    n, c, h, w = shape
    x = g.standard_normal(shape).astype(np.float32)
    check("bias", [x], shape, params=[g.standard_normal(c).astype(np.float32)], accumulate=True)
    check("maxpool2", [x], (n, c, h // 2, w // 2), accumulate=True)
    check("upsample2", [x], (n, c, 2 * h, 2 * w))
    gamma, beta = g.uniform(0.5, 1.5, c).astype(np.float32), g.standard_normal(c).astype(np.float32)
    rm, rv = g.standard_normal(c).astype(np.float32), g.uniform(0.5, 2.0, c).astype(np.float32)
    check("batchnorm", [x], shape, {"relu": 1, "momentum": 0.1, "eps": 1e-5}, params=[gamma, beta],
          states=[rm, rv], training=1)


@pytest.mark.parametrize("training,relu", [(1, 0), (1, 1), (0, 1)])
def test_batchnorm(training, relu):
    g = rng(40 + 2 * training + relu)
    shape = (3, 11, 6, 5)
    x = (g.uniform(-3, 3, size=(1, 11, 1, 1)) + g.standard_normal(shape)).astype(np.float32)
    gamma = g.uniform(0.5, 1.5, 11).astype(np.float32)
    beta = g.standard_normal(11).astype(np.float32)
    rm, rv = g.standard_normal(11).astype(np.float32), g.uniform(0.5, 2.0, 11).astype(np.float32)
    check("batchnorm", [x], shape, {"relu": relu, "momentum": 0.1, "eps": 1e-5}, params=[gamma, beta],
          states=[rm, rv], training=training)


# The convolutions convolve with bf16 copies of the float32 weights and bias (conv.cu), so the twins get them
# rounded to bf16, which makes the backend's cast exact: with the float32 ones, a pre-activation of the (3, 1, 1)
# case is +0.0021 on the CPU and -0.0008 on the backend, the fused ReLU's mask differs there, and din0 by 5% of
# its largest value.
@pytest.mark.parametrize("k,pad,relu", [(3, 1, 1), (3, 0, 0), (1, 0, 0)])
def test_conv(k, pad, relu):
    g = rng(50 + k + pad)
    n, c, h, w, o = 2, 5, 9, 11, 12
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = bf16(g.standard_normal((o, c, k, k)) / np.sqrt(c * k * k))
    b = bf16(g.standard_normal(o))
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    check("conv", [x], (n, o, oh, ow), {"k": k, "pad": pad, "relu": relu}, params=[wt, b], accumulate=True)


@pytest.mark.parametrize("path", ["cublaslt", "cudnn"])
def test_conv_1x1_by_either_path(monkeypatch, path):
    """A 1x1 convolution as a cuBLASLt matmul over NHWC bf16 (the bias and
    ReLU in its epilogue) or through cuDNN (src/kernels/cuda/gemm.h)."""
    monkeypatch.setenv("UNET_CONV1X1", path)
    monkeypatch.setenv("UNET_CUDNN_LOG", "1")
    g = rng(55)
    n, c, h, w, o = 2, 11, 6, 7, 13
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = bf16(g.standard_normal((o, c, 1, 1)) / np.sqrt(c))
    b = bf16(g.standard_normal(o))
    check("conv", [x], (n, o, h, w), {"k": 1, "pad": 0, "relu": 1}, params=[wt, b], accumulate=True)


def test_conv_t2():
    g = rng(60)
    n, c, h, w, o = 2, 9, 5, 7, 4
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = bf16(g.standard_normal((c, o, 2, 2)) / np.sqrt(c))
    b = bf16(g.standard_normal(o))
    check("conv_t2", [x], (n, o, 2 * h, 2 * w), params=[wt, b], accumulate=True)


# ---- the encoders' ops ----

@pytest.mark.parametrize("shape", [(2, 3, 9, 12), (1, 13, 6, 5)])
def test_relu6_maxpool_nearest(shape):
    g = rng(80 + shape[1])
    x = g.standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    check("relu", [(3 + 4 * x).astype(np.float32)], shape, {"act": "relu6"}, accumulate=True)
    check("maxpool", [x], (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1), {"k": 3, "stride": 2, "pad": 1},
          accumulate=True)
    check("upsample2", [x], (n, c, 2 * h, 2 * w), {"upsample": "nearest"}, accumulate=True)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_residual_add(act):
    g = rng(90)
    xs = [(3 * g.standard_normal((2, 11, 6, 7)) + 2).astype(np.float32) for _ in range(2)]
    check("crop_add", xs, (2, 11, 6, 7), {"act": act}, accumulate=True)


@pytest.mark.parametrize("training,frozen", [(1, 0), (1, 1)])
def test_batchnorm_relu6_frozen(training, frozen):
    g = rng(100 + frozen)
    shape = (3, 11, 6, 5)
    x = (g.uniform(-3, 3, size=(1, 11, 1, 1)) + g.standard_normal(shape)).astype(np.float32)
    gamma = 4 * g.uniform(0.5, 1.5, 11).astype(np.float32)
    beta = (3 + g.standard_normal(11)).astype(np.float32)
    rm, rv = g.standard_normal(11).astype(np.float32), g.uniform(0.5, 2.0, 11).astype(np.float32)
    check("batchnorm", [x], shape, {"act": "relu6", "frozen": frozen, "momentum": 0.1, "eps": 1e-5},
          params=[gamma, beta], states=[rm, rv], training=training)


# (k, stride, pad, depthwise, act, bias): weights and bias rounded to bf16 first, so that the twin convolves
# with the values the backend's bf16 copies hold (see MASK_FLIP)
@pytest.mark.parametrize("k,stride,pad,depthwise,act,bias", [
    (7, 2, 3, False, "none", False), (1, 2, 0, False, "none", False), (3, 2, 1, False, "relu", True),
    (3, 1, 1, True, "relu6", False), (3, 2, 1, True, "none", False), (3, 1, 1, False, "relu6", True)])
def test_encoder_conv(k, stride, pad, depthwise, act, bias):
    g = rng(110 + k + stride + 2 * depthwise)
    n, c, h, w = 2, 13, 11, 10
    o = c if depthwise else 12
    cg = 1 if depthwise else c
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = bf16((g.standard_normal((o, cg, k, k)) * (4 if act == "relu6" else 1) / np.sqrt(cg * k * k))
              .astype(np.float32))
    params = [wt] + ([bf16((g.standard_normal(o) + 2).astype(np.float32))] if bias else [])
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    check("conv", [x], (n, o, oh, ow), {"k": k, "stride": stride, "pad": pad, "groups": c if depthwise else 1,
                                        "act": act, "out_c": o}, params=params, accumulate=True)


@pytest.mark.parametrize("op,k", [("softmax_ce", 3), ("softmax_ce", 10), ("bce_dice", 1)])
@pytest.mark.parametrize("weighted", [False, True])
def test_losses(op, k, weighted):
    g = rng(70 + k + weighted)
    n, h, w = 2, 9, 13
    inputs = [(2 * g.standard_normal((n, k, h, w))).astype(np.float32),
              g.integers(0, max(k, 2), size=(n, 1, h + 4, w + 2)).astype(np.int32)]
    if weighted:
        inputs.append(g.uniform(0.1, 3.0, size=(n, 1, h + 2, w)).astype(np.float32))
    check(op, inputs, (1, 1, 1, 1), {"scale": 0.7})


@pytest.mark.parametrize("case", ["unetpp", "unet_valid"])
def test_model_steps_match_cpu(case):
    """Two optimizer steps of a small model: losses, parameters and running
    statistics within MODEL_TOL of the CPU backend's, gradients within
    MODEL_GRAD_TOL."""
    from test_twins import MODEL_CASES, run_model  # the fp32 model cases and driver

    args = MODEL_CASES[case]
    cu = run_model("cuda", [*args, "--precision", "bf16"], 7)
    cpu = run_model("cpu", args, 7)
    for key in ("loss", "grads", "params", "state"):
        tol = MODEL_GRAD_TOL if key == "grads" else MODEL_TOL
        assert_bf16_close(cu[key], cpu[key], f"{case} {key} bf16 vs CPU", tol)
