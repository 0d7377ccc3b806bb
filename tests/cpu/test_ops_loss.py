"""CPU softmax_ce and bce_dice, forward (the unscaled loss) and backward
(node scale times the gradient of the logits), against PyTorch in float64:
K = 2..5 classes, labels and weight maps larger than the logits (centre
crop, odd differences), with and without a weight map, scale != 1, batch
1..3, non-square odd sizes. Through tests/tools/unet_optest.c.

Tolerance: norm-wise relative error 1e-5 (unet_testlib.rel_err). Both
losses are summed in double and rounded to float32 once (~6e-8); gradients
are per-pixel double expressions rounded to float32."""
import numpy as np
import pytest

from op_references import LOSS_REFS, softmax_ce_ref, t64
from unet_testlib import assert_close, rng, run_op

TOL = 1e-5


def case(g, k, weighted):
    n, h, w = int(g.integers(1, 4)), int(g.integers(1, 12)), int(g.integers(1, 12))
    big_h, big_w = h + int(g.integers(0, 8)), w + int(g.integers(0, 8))
    z = (2 * g.standard_normal((n, k, h, w))).astype(np.float32)
    label = g.integers(0, 2 if k == 1 else k, size=(n, 1, big_h, big_w)).astype(np.int32)
    inputs = [z, label]
    if weighted:
        # the weight map may have its own (larger) size: it is cropped on its own
        wh, ww = (big_h, big_w) if g.integers(0, 2) else (h + int(g.integers(0, 5)), w + int(g.integers(0, 5)))
        inputs.append(g.uniform(0.1, 3.0, size=(n, 1, wh, ww)).astype(np.float32))
    return inputs





def check(op, inputs, scale, g):
    Z = t64(inputs[0], True)
    loss = LOSS_REFS[op](Z, inputs[1], inputs[2] if len(inputs) > 2 else None)
    (scale * loss).backward()
    what = f"{op} {[x.shape for x in inputs]} scale={scale}"
    r = run_op(op, inputs, (1, 1, 1, 1), {"scale": scale}, backward=True)
    assert_close(r["out"].reshape(()), loss.item(), TOL, what + " loss")
    assert_close(r["din"][0], Z.grad.numpy(), TOL, what + " dlogits")
    assert all(d is None for d in r["din"][1:]), what + ": a gradient for the label or weight was written"
    init = g.standard_normal(inputs[0].shape).astype(np.float32)
    r = run_op(op, inputs, (1, 1, 1, 1), {"scale": scale}, backward=True, din_init=[init, None, None])
    assert_close(r["din"][0], init + Z.grad.numpy(), TOL, what + " dlogits accumulated")


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_ce(k, weighted):
    g = rng(1200 + 10 * k + weighted)
    for scale in (1.0, 0.25):
        check("softmax_ce", case(g, k, weighted), scale, g)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_bce_dice(weighted, seed):
    g = rng(1300 + 10 * seed + weighted)
    for scale in (1.0, 1.0 / 3):
        check("bce_dice", case(g, 1, weighted), scale, g)


def test_softmax_ce_extreme_logits():
    """Logits of +-80 overflow a naive exp in float32; the max shift keeps them finite."""
    g = rng(1400)
    z, label = case(g, 3, False)
    z = (z * 40).astype(np.float32)
    check("softmax_ce", [z, label], 0.5, g)


def test_bce_dice_extreme_logits():
    g = rng(1401)
    z, label, weight = case(g, 1, True)
    z = (z * 40).astype(np.float32)
    check("bce_dice", [z, label, weight], 1.0, g)


def test_softmax_ce_label_out_of_range_adds_nothing():
    """A label outside 0..K-1 (not in the spec) must not read out of bounds:
    it counts as a pixel of weight 0 (still in the N*h*w of the mean)."""
    g = rng(1500)
    z, label = case(g, 3, False)
    label = label.copy()
    label.ravel()[:: 3] = -1
    label.ravel()[1:: 7] = 3
    good = ((label >= 0) & (label < 3)).astype(np.float32)
    Z = t64(z, True)
    loss = softmax_ce_ref(Z, np.clip(label, 0, 2), good)
    loss.backward()
    r = run_op("softmax_ce", [z, label], (1, 1, 1, 1), backward=True)
    assert_close(r["out"].reshape(()), loss.item(), TOL, "loss with bad labels")
    assert_close(r["din"][0], Z.grad.numpy(), TOL, "dlogits with bad labels")


def test_deterministic_across_thread_counts(monkeypatch):
    g = rng(1600)
    for op, k in (("softmax_ce", 4), ("bce_dice", 1)):
        inputs = case(g, k, True)
        runs = []
        for threads in ("1", "3", "3"):
            monkeypatch.setenv("OMP_NUM_THREADS", threads)
            runs.append(run_op(op, inputs, (1, 1, 1, 1), {"scale": 0.5}, backward=True))
        for r in runs[1:]:
            assert r["out"].tobytes() == runs[0]["out"].tobytes(), f"{op} loss differs between runs"
            assert r["din"][0].tobytes() == runs[0]["din"][0].tobytes(), f"{op} backward differs between runs"
