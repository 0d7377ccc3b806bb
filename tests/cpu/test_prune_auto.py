"""unet prune --auto: every head of a deep-supervised checkpoint scored on validation images, the shallowest within
--tolerance of the best head written. The heads' scores are set by hand: a head whose 1x1 convolution has zero
weights and a bias of +10 predicts foreground everywhere (IoU = the foreground share of the labels, 0.5 here), one
with -10 predicts none (IoU 0)."""
import json
import os
import subprocess

import h5py
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from test_unetpp import UNET, ok

FOREGROUND, BACKGROUND = 10.0, -10.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A UNet++ with four levels (heads 1..3) trained for one step, and validation images half foreground."""
    d = str(tmp_path_factory.mktemp("prune_auto"))
    rng = np.random.default_rng(7)
    data = os.path.join(d, "d.h5")
    label = np.zeros((2, 32, 48), np.uint8)
    label[:, :, :24] = 1
    with h5py.File(data, "w") as f:
        f["raw"], f["label"] = rng.random((2, 32, 48)).astype(np.float32), label
    ckpt = os.path.join(d, "full.safetensors")
    ok(UNET, "train", "--data", data, "--model", "unetpp", "--filters", "2,4,8,16", "--padding", "same", "--classes",
       1, "--deep-supervision", "--tile", 32, "--batch", 1, "--steps", 1, "--save", ckpt, "--device", "cpu")
    return d, data, ckpt


def with_heads(d, ckpt, biases):
    """The checkpoint with head j (1..3) predicting a constant: biases[j - 1] as its logit everywhere."""
    with safe_open(ckpt, "numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for j, b in enumerate(biases, 1):
        tensors["head%d.weight" % j] = np.zeros_like(tensors["head%d.weight" % j])
        tensors["head%d.bias" % j] = np.full_like(tensors["head%d.bias" % j], b)
    path = os.path.join(d, "heads_%s.safetensors" % "_".join("fg" if b > 0 else "bg" for b in biases))
    save_file(tensors, path, metadata=meta)
    return path


def saved_depth(path):
    with safe_open(path, "numpy") as f:
        cfg = json.loads(f.metadata()["unet.config"])
    return cfg["depth"], cfg["deep_supervision"]


@pytest.mark.parametrize("heads,tolerance,expected", [
    ((BACKGROUND, FOREGROUND, FOREGROUND), 0.01, 2),  # heads 2 and 3 tie for the best: the shallower
    ((BACKGROUND, FOREGROUND, FOREGROUND), 0.6, 1),   # head 1 gives up 0.5 of IoU, within 0.6
    ((BACKGROUND, BACKGROUND, FOREGROUND), 0.0, 3),   # the deepest alone is the best
    ((FOREGROUND, BACKGROUND, FOREGROUND), 0.0, 1),   # the shallowest is as good as the deepest
    ((BACKGROUND, FOREGROUND, BACKGROUND), 0.49, 2),  # the best head need not be the deepest
])
def test_auto_picks_the_shallowest_depth_within_tolerance(trained, heads, tolerance, expected):
    d, data, ckpt = trained
    src = with_heads(d, ckpt, heads)
    out = os.path.join(d, "pruned_%d.safetensors" % expected)
    text = ok(UNET, "prune", "--checkpoint", src, "--auto", "--val", data, "--tolerance", tolerance, "--output", out)
    assert saved_depth(out) == (expected, False)
    rows = [line.split() for line in text.splitlines() if line.startswith("L")]
    assert [r[0] for r in rows] == ["L1", "L2", "L3"]
    ious = [float(r[4]) for r in rows]
    assert ious == [pytest.approx(0.5 if h > 0 else 0.0, abs=1e-4) for h in heads]
    params = [int(r[1]) for r in rows]
    assert params[0] < params[1] < params[2] and all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert "chose depth %d:" % expected in text and "wrote %s" % out in text
    assert not [f for f in os.listdir(d) if ".tmp" in f]
    # the file written is what prune --depth writes
    again = os.path.join(d, "by_depth.safetensors")
    ok(UNET, "prune", "--checkpoint", src, "--depth", expected, "--output", again)
    with safe_open(out, "numpy") as a, safe_open(again, "numpy") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert np.array_equal(a.get_tensor(k), b.get_tensor(k)), k


def refused(*args):
    r = subprocess.run([UNET, "prune", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (r.returncode, r.stderr)
    return r.stderr


def test_auto_refuses_bad_input(trained):
    d, data, ckpt = trained
    out = os.path.join(d, "x.safetensors")
    assert "add --val V.h5" in refused("--checkpoint", ckpt, "--auto", "--output", out)
    for t in ("1.5", "-0.1"):
        assert "tolerance" in refused("--checkpoint", ckpt, "--auto", "--val", data, "--tolerance", t, "--output", out)
    missing = os.path.join(d, "no_such.h5")
    assert "no_such.h5" in refused("--checkpoint", ckpt, "--auto", "--val", missing, "--output", out)
    assert "not both" in refused("--checkpoint", ckpt, "--auto", "--depth", 2, "--val", data, "--output", out)
    assert "for --auto" in refused("--checkpoint", ckpt, "--depth", 2, "--val", data, "--output", out)
    pruned = os.path.join(d, "l2.safetensors")
    ok(UNET, "prune", "--checkpoint", ckpt, "--depth", 2, "--output", pruned)
    assert "pruned already" in refused("--checkpoint", pruned, "--auto", "--val", data, "--output", out)
    unet = os.path.join(d, "unet.safetensors")
    ok(UNET, "train", "--data", data, "--model", "unet", "--filters", "2,4,8", "--padding", "same", "--classes", 1,
       "--tile", 32, "--batch", 1, "--steps", 1, "--save", unet, "--device", "cpu")
    assert "deep-supervised" in refused("--checkpoint", unet, "--auto", "--val", data, "--output", out)
    assert not os.path.exists(out)
