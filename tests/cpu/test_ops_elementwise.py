"""CPU relu (and relu6), dropout, maxpool2, maxpool and upsample2 (bilinear
and nearest), forward and backward, against PyTorch in float64 on random
shapes (odd sizes, batch 1..3, non-square), through tests/tools/unet_optest.c
(the production op table).

Tolerance: norm-wise relative error 1e-5 (unet_testlib.rel_err). These ops
do one or a few float32 operations per element, so their error is a few
float32 roundings (~1e-7); 1e-5 leaves margin and still catches any wrong
element. Dropout is also checked bit for bit against a numpy re-implementation
of the mask (include/unet/rng.h), since its arithmetic is a single multiply."""
import numpy as np
import pytest
import torch.nn.functional as F

from op_references import t64
from unet_testlib import assert_close, rng, run_op

TOL = 1e-5


def random_shape(g, even=False, min_hw=1):
    n, c = int(g.integers(1, 4)), int(g.integers(1, 6))
    h, w = int(g.integers(min_hw, 14)), int(g.integers(min_hw, 14))
    if even:
        h, w = 2 * ((h + 1) // 2), 2 * ((w + 1) // 2)
    return n, c, h, w


def reference(fn, x, dout):
    X = t64(x, True)
    y = fn(X)
    y.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy()


def check_op(op, fn, x, out_shape, g, attrs=None, **kw):
    """Forward, backward (overwrite) and backward --accumulate against fn in float64."""
    dout = g.standard_normal(out_shape).astype(np.float32)
    y_ref, dx_ref = reference(fn, x, dout)
    r = run_op(op, [x], out_shape, attrs, dout=dout, backward=True, **kw)
    assert_close(r["out"], y_ref, TOL, f"{op} out {x.shape}")
    assert_close(r["din"][0], dx_ref, TOL, f"{op} din {x.shape}")
    init = g.standard_normal(x.shape).astype(np.float32)
    r = run_op(op, [x], out_shape, attrs, dout=dout, backward=True, din_init=[init], **kw)
    assert_close(r["din"][0], init + dx_ref, TOL, f"{op} din accumulated {x.shape}")


@pytest.mark.parametrize("seed", range(4))
def test_relu(seed):
    g = rng(100 + seed)
    shape = random_shape(g)
    x = g.standard_normal(shape).astype(np.float32)
    check_op("relu", F.relu, x, shape, g)


def relu6_input(g, shape):
    """Values over [-3, 9], a few exactly 0 and 6: ReLU6 passes no gradient at either bound (PyTorch's
    hardtanh_backward), which the mask by the output must reproduce."""
    x = (3 + 4 * g.standard_normal(shape)).astype(np.float32)
    flat = x.reshape(-1)
    flat[g.choice(flat.size, size=min(flat.size, 6), replace=False)] = g.choice([0.0, 6.0], size=min(flat.size, 6))
    return x


@pytest.mark.parametrize("seed", range(3))
def test_relu6(seed):
    g = rng(150 + seed)
    shape = random_shape(g, min_hw=2)
    check_op("relu", F.relu6, relu6_input(g, shape), shape, g, attrs={"act": "relu6"})


@pytest.mark.parametrize("seed", range(4))
def test_maxpool2(seed):
    g = rng(200 + seed)
    n, c, h, w = random_shape(g, even=True, min_hw=2)
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    check_op("maxpool2", lambda X: F.max_pool2d(X, 2), x, (n, c, h // 2, w // 2), g)


MAXPOOL_GEOMETRIES = [(3, 2, 1), (3, 2, 0), (3, 1, 1), (2, 2, 1), (2, 1, 0), (5, 3, 2), (1, 2, 0)]


@pytest.mark.parametrize("k,stride,pad", MAXPOOL_GEOMETRIES)
@pytest.mark.parametrize("seed", range(2))
def test_maxpool(k, stride, pad, seed):
    """k x k windows at a stride, -inf padding, odd and even sizes; seed 1 draws small integers, so
    that windows tie and the gradient must go to PyTorch's first maximum in row-major order; every
    value negative, so that padding taken for 0 would show."""
    g = rng(250 + 10 * seed + MAXPOOL_GEOMETRIES.index((k, stride, pad)))
    n, c, h, w = random_shape(g, min_hw=k)
    if seed == 1:
        x = -g.integers(1, 4, (n, c, h, w)).astype(np.float32)
    else:
        x = -np.abs(g.standard_normal((n, c, h, w))).astype(np.float32)
    out = (n, c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    check_op("maxpool", lambda X: F.max_pool2d(X, k, stride, pad), x, out, g,
             attrs={"k": k, "stride": stride, "pad": pad})


def test_maxpool_nan_wins():
    """A NaN is a window's maximum, as in PyTorch (and the gradient goes to it)."""
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 1, 1] = 3.0
    x[0, 0, 2, 2] = np.nan  # after the 3 in window (1, 1), the one window both share
    dout = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    r = run_op("maxpool", [x], (1, 1, 3, 3), {"k": 3, "stride": 2, "pad": 1}, dout=dout, backward=True)
    X = t64(x, True)
    y = F.max_pool2d(X, 3, 2, 1)
    y.backward(t64(dout))
    assert np.array_equal(r["out"], y.detach().numpy(), equal_nan=True)
    assert np.array_equal(r["din"][0], X.grad.numpy())
    assert np.isnan(r["out"][0, 0, 1, 1]) and r["din"][0][0, 0, 2, 2] == 5 and r["din"][0][0, 0, 1, 1] == 1 + 2 + 4


@pytest.mark.parametrize("seed", range(5))
def test_upsample2(seed):
    g = rng(300 + seed)
    shape = random_shape(g)
    if seed == 0:
        shape = (2, 3, 1, 5)  # a single row: both vertical taps clamp to it
    n, c, h, w = shape
    x = g.standard_normal(shape).astype(np.float32)
    fn = lambda X: F.interpolate(X, scale_factor=2, mode="bilinear", align_corners=False)
    check_op("upsample2", fn, x, (n, c, 2 * h, 2 * w), g)


@pytest.mark.parametrize("seed", range(3))
def test_upsample2_nearest(seed):
    g = rng(350 + seed)
    shape = random_shape(g)
    n, c, h, w = shape
    x = g.standard_normal(shape).astype(np.float32)
    check_op("upsample2", lambda X: F.interpolate(X, scale_factor=2, mode="nearest"), x, (n, c, 2 * h, 2 * w), g,
             attrs={"upsample": "nearest"})


# ---- dropout: the mask re-implemented from include/unet/rng.h in numpy uint64 ----

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(z):
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rng_key(seed, a, b):
    return mix64(mix64(mix64(np.uint64(seed)) ^ np.uint64(a)) ^ np.uint64(b))


def uniform(key, count):
    bits = mix64(np.uint64(key) ^ mix64(np.arange(count, dtype=np.uint64))) >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(1.0 / 16777216.0)


def dropout_keep(seed, node_index, p, shape):
    u = uniform(rng_key(seed, node_index, 0), int(np.prod(shape)))
    return (u >= np.float32(p)).reshape(shape)


def test_mix64_known_value():
    # splitmix64's published first output for state 0 (its increment is added first)
    assert int(mix64(np.uint64(0))) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("seed,p", [(1, 0.5), (2, 0.1), (3, 0.3), (4, 0.9)])
def test_dropout_training(seed, p):
    g = rng(400 + seed)
    shape = random_shape(g, min_hw=3)
    x = g.standard_normal(shape).astype(np.float32)
    step_seed, node_index = int(g.integers(0, 2**63)), int(g.integers(0, 50))
    keep = dropout_keep(step_seed, node_index, p, shape)
    scale = np.float32(1) / (np.float32(1) - np.float32(p))
    kw = dict(attrs={"p": p}, seed=step_seed, node_index=node_index)
    fn = lambda X: X * t64(keep) / (1 - np.float64(np.float32(p)))
    check_op("dropout", fn, x, shape, g, **kw)
    r = run_op("dropout", [x], shape, dout=x, backward=True, **kw)
    expected = np.where(keep, x * scale, np.float32(0))
    assert np.array_equal(r["out"], expected), "dropout forward differs from the numpy mask bit for bit"
    assert np.array_equal(r["din"][0], expected), "dropout backward differs from the numpy mask bit for bit"
    # the mask is a fair coin at rate p, and another step or another node draws another one
    big = (2, 3, 16, 16)
    ones = np.ones(big, np.float32)
    kept = run_op("dropout", [ones], big, {"p": p}, seed=step_seed, node_index=node_index)["out"] != 0
    assert np.array_equal(kept, dropout_keep(step_seed, node_index, p, big))
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / kept.size)
    for s, k in ((step_seed + 1, node_index), (step_seed, node_index + 1)):
        other = run_op("dropout", [ones], big, {"p": p}, seed=s, node_index=k)["out"] != 0
        assert not np.array_equal(other, kept), "the mask ignores the step seed or the node index"


@pytest.mark.parametrize("seed", range(2))
def test_dropout_eval_is_identity(seed):
    g = rng(500 + seed)
    shape = random_shape(g)
    x = g.standard_normal(shape).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    r = run_op("dropout", [x], shape, {"p": 0.5}, dout=dout, backward=True, training=0, seed=7)
    assert np.array_equal(r["out"], x)
    assert np.array_equal(r["din"][0], dout)
    init = g.standard_normal(shape).astype(np.float32)
    r = run_op("dropout", [x], shape, {"p": 0.5}, dout=dout, backward=True, training=0, din_init=[init])
    assert np.array_equal(r["din"][0], init + dout)


def test_deterministic_across_thread_counts(monkeypatch):
    """The same inputs give the same bits, whatever the number of threads."""
    g = rng(600)
    n, c, h, w = 2, 5, 18, 26
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    cases = [("relu", (n, c, h, w), {}), ("relu", (n, c, h, w), {"act": "relu6"}),
             ("maxpool2", (n, c, h // 2, w // 2), {}),
             ("maxpool", (n, c, h // 2, w // 2), {"k": 3, "stride": 2, "pad": 1}),
             ("upsample2", (n, c, 2 * h, 2 * w), {}), ("dropout", (n, c, h, w), {"p": 0.4}),
             ("upsample2", (n, c, 2 * h, 2 * w), {"upsample": "nearest"})]
    for op, out_shape, attrs in cases:
        dout = g.standard_normal(out_shape).astype(np.float32)
        runs = []
        for threads in ("1", "3", "3"):
            monkeypatch.setenv("OMP_NUM_THREADS", threads)
            runs.append(run_op(op, [x], out_shape, attrs, dout=dout, backward=True, seed=11))
        for r in runs[1:]:
            assert r["out"].tobytes() == runs[0]["out"].tobytes(), f"{op} forward differs between runs"
            assert r["din"][0].tobytes() == runs[0]["din"][0].tobytes(), f"{op} backward differs between runs"
