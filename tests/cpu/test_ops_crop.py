"""CPU crop_concat and crop_add (skip fusion; and crop_add of equal shapes with
a fused activation, the encoders' residual sum), forward and backward, against
PyTorch in float64: 2..5 inputs of different sizes, each centre-cropped to
input 0's H,W at offset ((H_i - H) // 2, (W_i - W) // 2), odd differences
included, batch 1..3, several channels. Through tests/tools/unet_optest.c.

Tolerance: norm-wise relative error 1e-5 (unet_testlib.rel_err); concat is a
copy (exact), add rounds once per input, far below 1e-5. The backward must
write zeros outside each crop window (outputs start as NaN) and, with
--accumulate, leave the initial gradient there."""
import numpy as np
import pytest
import torch

from op_references import activation, centre_crop, t64
from unet_testlib import assert_close, rng, run_op

TOL = 1e-5


def random_inputs(g, n_in, same_c):
    n, h, w = int(g.integers(1, 4)), int(g.integers(1, 12)), int(g.integers(1, 12))
    c0 = int(g.integers(1, 5))
    xs = []
    for i in range(n_in):
        # input 0 sets the size; the others are larger by 0..7 (odd differences included)
        dh, dw = (0, 0) if i == 0 else (int(g.integers(0, 8)), int(g.integers(0, 8)))
        c = c0 if same_c else int(g.integers(1, 5))
        xs.append(g.standard_normal((n, c, h + dh, w + dw)).astype(np.float32))
    return xs


def fuse(op, Xs, act="none"):
    h, w = Xs[0].shape[2], Xs[0].shape[3]
    parts = [centre_crop(X, h, w) for X in Xs]
    if op == "crop_concat":
        return torch.cat(parts, 1)
    return activation(sum(parts[1:], parts[0]), act)


def check(op, xs, g, act="none"):
    Xs = [t64(x, True) for x in xs]
    y = fuse(op, Xs, act)
    dout = g.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(t64(dout))
    shapes = [x.shape for x in xs]
    attrs = {"act": act} if op == "crop_add" else {}
    r = run_op(op, xs, y.shape, attrs, dout=dout, backward=True)
    assert_close(r["out"], y.detach().numpy(), TOL, f"{op} act={act} out {shapes}")
    for i, X in enumerate(Xs):
        assert_close(r["din"][i], X.grad.numpy(), TOL, f"{op} act={act} din{i} {shapes}")
    inits = [g.standard_normal(x.shape).astype(np.float32) for x in xs]
    r = run_op(op, xs, y.shape, attrs, dout=dout, backward=True, din_init=inits)
    for i, X in enumerate(Xs):
        assert_close(r["din"][i], inits[i] + X.grad.numpy(), TOL, f"{op} din{i} accumulated {shapes}")


@pytest.mark.parametrize("n_in", [2, 3, 4, 5])
def test_crop_concat(n_in):
    g = rng(700 + n_in)
    for _ in range(2):
        check("crop_concat", random_inputs(g, n_in, same_c=False), g)


@pytest.mark.parametrize("n_in", [2, 3, 5])
def test_crop_add(n_in):
    g = rng(800 + n_in)
    for _ in range(2):
        check("crop_add", random_inputs(g, n_in, same_c=True), g)


@pytest.mark.parametrize("act", ["relu", "relu6", "none"])
@pytest.mark.parametrize("seed", range(2))
def test_residual_add(act, seed):
    """crop_add of equal shapes is a residual sum (ResNet's, followed by ReLU; MobileNetV2's inverted
    residual, by nothing); ReLU6 on values over its two bounds."""
    g = rng(850 + 2 * seed + ["relu", "relu6", "none"].index(act))
    n, c, h, w = int(g.integers(1, 4)), int(g.integers(1, 9)), int(g.integers(1, 15)), int(g.integers(1, 15))
    xs = [(3 * g.standard_normal((n, c, h, w)) + (2 if act == "relu6" else 0)).astype(np.float32) for _ in range(2)]
    check("crop_add", xs, g, act)


def test_crop_offsets_odd_difference():
    """A 1-wide difference crops nothing from the top/left ((s - t) // 2 = 0):
    a one-hot input shows exactly which element lands at (0, 0)."""
    x0 = np.zeros((1, 1, 2, 2), np.float32)
    x1 = np.arange(1 * 1 * 5 * 6, dtype=np.float32).reshape(1, 1, 5, 6)  # offsets (1, 2)
    r = run_op("crop_concat", [x0, x1], (1, 2, 2, 2))
    assert np.array_equal(r["out"][0, 1], x1[0, 0, 1:3, 2:4])
    x1 = np.arange(1 * 1 * 3 * 3, dtype=np.float32).reshape(1, 1, 3, 3)  # offsets (0, 0)
    r = run_op("crop_add", [x0, x1], (1, 1, 2, 2))
    assert np.array_equal(r["out"][0, 0], x1[0, 0, 0:2, 0:2])


def test_deterministic_across_thread_counts(monkeypatch):
    g = rng(900)
    for op, same_c in (("crop_concat", False), ("crop_add", True)):
        xs = random_inputs(g, 4, same_c)
        out_shape = tuple(fuse(op, [t64(x) for x in xs]).shape)
        dout = g.standard_normal(out_shape).astype(np.float32)
        runs = []
        for threads in ("1", "3", "3"):
            monkeypatch.setenv("OMP_NUM_THREADS", threads)
            runs.append(run_op(op, xs, out_shape, dout=dout, backward=True))
        for r in runs[1:]:
            assert r["out"].tobytes() == runs[0]["out"].tobytes(), f"{op} forward differs between runs"
            for i in range(len(xs)):
                assert r["din"][i].tobytes() == runs[0]["din"][i].tobytes(), f"{op} din{i} differs between runs"
