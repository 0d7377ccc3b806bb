"""CPU batch norm, training, eval and frozen, with and without the fused
ReLU (and ReLU6), forward, backward and the running-statistics update
(momentum, the unbiased variance), against PyTorch's F.batch_norm in float64
on random shapes (odd sizes, batch 1..3, non-square, several channels,
activations with a non-zero mean), through tests/tools/unet_optest.c.

Tolerance: norm-wise relative error 1e-5 (unet_testlib.rel_err). Sums run
in double; the remaining error comes from the float32 mean and inverse
standard deviation saved for the backward (as PyTorch saves them), about
|mean| / std * 6e-8 relative, so the inputs keep |mean| / std <= ~5. At least
9 values per channel: with fewer the training-mode input gradient is almost
zero by construction (with 2 values it is exactly zero but for eps), and a
relative error of it measures nothing."""
import numpy as np
import pytest

from op_references import bn_case, bn_reference
from unet_testlib import assert_close, rng, run_op

TOL = 1e-5


def case(g):
    n, c = int(g.integers(1, 4)), int(g.integers(1, 7))
    h, w = int(g.integers(3, 14)), int(g.integers(3, 14))
    return bn_case(g, (n, c, h, w))


def assert_bn(r, ref, rm, rv, updates, what):
    """out, din, dgamma and dbeta against bn_reference's; the running statistics updated as it updated them, or
    (eval mode, frozen) left as they were, bit for bit."""
    y_ref, dx_ref, dg_ref, db_ref, rm_ref, rv_ref = ref
    assert_close(r["out"], y_ref, TOL, what + " out")
    assert_close(r["din"][0], dx_ref, TOL, what + " din")
    assert_close(r["dparam"][0], dg_ref, TOL, what + " dgamma")
    assert_close(r["dparam"][1], db_ref, TOL, what + " dbeta")
    if updates:
        assert_close(r["state"][0], rm_ref, TOL, what + " running mean")
        assert_close(r["state"][1], rv_ref, TOL, what + " running var")
    else:
        assert np.array_equal(r["state"][0], rm) and np.array_equal(r["state"][1], rv), \
            what + ": the running statistics changed"


@pytest.mark.parametrize("training", [1, 0])
@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_batchnorm(training, relu, seed):
    g = rng(1000 + 10 * seed + 2 * training + relu)
    x, gamma, beta, rm, rv, dout = case(g)
    momentum, eps = [(0.1, 1e-5), (0.3, 1e-3), (0.1, 1e-5)][seed]
    ref = bn_reference(x, gamma, beta, rm, rv, dout, training, relu, momentum, eps)
    y_ref, dx_ref, dg_ref, db_ref, rm_ref, rv_ref = ref
    attrs = {"relu": relu, "momentum": momentum, "eps": eps}
    what = f"batchnorm training={training} relu={relu} {x.shape}"
    r = run_op("batchnorm", [x], x.shape, attrs, params=[gamma, beta], states=[rm, rv], dout=dout,
               backward=True, training=training)
    assert_bn(r, ref, rm, rv, training, what)
    init = g.standard_normal(x.shape).astype(np.float32)
    r = run_op("batchnorm", [x], x.shape, attrs, params=[gamma, beta], states=[rm, rv], dout=dout,
               backward=True, training=training, din_init=[init])
    assert_close(r["din"][0], init + dx_ref, TOL, what + " din accumulated")
    assert_close(r["dparam"][0], dg_ref, TOL, what + " dgamma (never accumulated)")


@pytest.mark.parametrize("act", ["relu6", "none"])
@pytest.mark.parametrize("seed", range(2))
def test_batchnorm_frozen(act, seed):
    """frozen (--freeze-encoder-bn) in a training step: normalised by the running statistics, which stay
    as they were, gamma and beta trained: F.batch_norm in eval mode, as a BatchNorm2d in eval() inside
    a model in train(). With ReLU6, the outputs span both of its bounds."""
    g = rng(1200 + 2 * seed + (act == "relu6"))
    x, gamma, beta, rm, rv, dout = case(g)
    if act == "relu6":
        gamma, beta = gamma * np.float32(4), beta + np.float32(3)
    ref = bn_reference(x, gamma, beta, rm, rv, dout, False, act, 0.1, 1e-5)
    r = run_op("batchnorm", [x], x.shape, {"frozen": 1, "act": act}, params=[gamma, beta], states=[rm, rv],
               dout=dout, backward=True, training=1)
    assert_bn(r, ref, rm, rv, False, f"batchnorm frozen act={act} {x.shape}")


@pytest.mark.parametrize("training", [1, 0])
def test_batchnorm_relu6(training):
    g = rng(1300 + training)
    x, gamma, beta, rm, rv, dout = case(g)
    gamma, beta = gamma * np.float32(4), beta + np.float32(3)
    ref = bn_reference(x, gamma, beta, rm, rv, dout, training, "relu6", 0.1, 1e-5)
    assert np.any(ref[0] == 6) and np.any(ref[0] == 0), "the case reaches both bounds of ReLU6"
    r = run_op("batchnorm", [x], x.shape, {"act": "relu6"}, params=[gamma, beta], states=[rm, rv], dout=dout,
               backward=True, training=training)
    assert_bn(r, ref, rm, rv, training, f"batchnorm relu6 training={training} {x.shape}")


def test_deterministic_across_thread_counts(monkeypatch):
    g = rng(1100)
    x, gamma, beta, rm, rv, dout = case(g)
    x = np.concatenate([x] * 3, axis=1)  # more channels than threads
    c = x.shape[1]
    gamma, beta, rm, rv = (np.tile(v, 3) for v in (gamma, beta, rm, rv))
    dout = np.concatenate([dout] * 3, axis=1)
    runs = []
    for threads in ("1", "3", "3"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        runs.append(run_op("batchnorm", [x], x.shape, {"relu": 1}, params=[gamma, beta], states=[rm, rv],
                           dout=dout, backward=True))
    assert c > 3
    for r in runs[1:]:
        for key in ("out", "din", "dparam", "state"):
            a, b = runs[0][key], r[key]
            a, b = (a, b) if key == "out" else (np.concatenate([v.ravel() for v in a]),
                                                np.concatenate([v.ravel() for v in b]))
            assert a.tobytes() == b.tobytes(), f"batchnorm {key} differs between runs"
