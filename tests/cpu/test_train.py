"""The unet command end to end on the CPU: training learns, the same seed gives
the same bits, a resumed run continues exactly, predict/eval agree, and every
kind of bad input is one line on stderr with exit code 2 and nothing
half-written left behind."""
import json
import os
import subprocess

import h5py
import numpy as np
import pytest

from unet_testlib import BUILD, SOURCE

UNET = os.path.join(BUILD, "unet")
SMALL = ["--filters", "4,8,16", "--tile", "60", "--batch", "2", "--log-every", "1", "--threads", "1"]


def run(*args, check=True):
    r = subprocess.run([UNET, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def user_error(r, *words):
    """Exit code 2, one line on stderr, naming what is wrong."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for name, seed, n in (("train.h5", 1, 4), ("val.h5", 2, 1)):
        subprocess.run(["/usr/bin/python3", os.path.join(SOURCE, "datasets", "make_ellipses.py"), "--n", str(n),
                        "--size", "96", "--seed", str(seed), "-o", str(d / name)], check=True, capture_output=True)
    return d


def tensors(path):
    """A safetensors file's F32 tensors (name -> bytes) and metadata."""
    b = open(path, "rb").read()
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8:8 + n])
    body = b[8 + n:]
    meta = header.pop("__metadata__", {})
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}, meta


def test_training_learns_and_validates(data, tmp_path):
    log = tmp_path / "m.jsonl"
    run("train", "--data", data / "train.h5", "--val", data / "val.h5", *SMALL, "--steps", 40, "--optimizer",
        "adam", "--lr", "3e-3", "--val-every", 20, "--log", log, "--save", tmp_path / "c.safetensors")
    recs = [json.loads(line) for line in open(log)]
    losses = [r["loss"] for r in recs if "loss" in r]
    vals = [r for r in recs if "val_iou" in r]
    assert len(losses) == 40 and len(vals) == 2
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert 0 < vals[-1]["val_iou"] <= 1
    # eval of the saved checkpoint reproduces the last validation
    r = run("eval", "--checkpoint", tmp_path / "c.safetensors", "--data", data / "val.h5", "--json", "--threads", 1)
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert abs(ev["iou"] - vals[-1]["val_iou"]) < 1e-6
    # predict writes probabilities that sum to one and labels that are their argmax
    out = tmp_path / "p.h5"
    run("predict", "--checkpoint", tmp_path / "c.safetensors", "--input", data / "val.h5", "-o", out)
    with h5py.File(out, "r") as f, h5py.File(data / "val.h5", "r") as g:
        prob, pred = f["prob"][()], f["pred"][()]
        assert prob.shape == (1, 2) + g["raw"].shape[1:]
    assert np.allclose(prob.sum(1), 1, atol=1e-5)
    assert np.array_equal(pred, prob.argmax(1))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_same_bits_and_exact_resume(data, tmp_path, optimizer):
    args = ["train", "--data", data / "train.h5", *SMALL, "--optimizer", optimizer, "--lr", "0.01",
            "--dropout", "0.2", "--norm", "batch", "--augment", "paper", "--schedule", "poly", "--warmup", 1]
    run(*args, "--steps", 6, "--save", tmp_path / "a.safetensors")
    run(*args, "--steps", 6, "--save", tmp_path / "b.safetensors")
    # the schedule's horizon is --steps, so the interrupted run is asked for 6
    # steps too and stopped after 2 by a signal-free stand-in: --stop-after
    run(*args, "--steps", 6, "--stop-after", 2, "--save", tmp_path / "part.safetensors")
    run(*args, "--steps", 6, "--resume", tmp_path / "part.safetensors", "--save", tmp_path / "r.safetensors")
    a, meta = tensors(tmp_path / "a.safetensors")
    b, _ = tensors(tmp_path / "b.safetensors")
    r, rmeta = tensors(tmp_path / "r.safetensors")
    assert a == b, "the same seed must give the same bits"
    assert any(k.startswith("optimizer.") for k in a)
    assert a == r, [k for k in a if a[k] != r.get(k)]
    assert meta["unet.step"] == rmeta["unet.step"] == "6"


def test_bad_inputs_are_one_line_and_exit_2(data, tmp_path):
    base = ["train", *SMALL, "--steps", 1]
    user_error(run(*base, "--data", tmp_path / "missing.h5", check=False), "missing.h5")
    user_error(run("train", "--data", data / "train.h5", "--lr0", "1", check=False), "--lr0", "--lr")
    user_error(run(*base[:-2], "--steps", "ten", "--data", data / "train.h5", check=False), "--steps")
    # a tile a valid-padding network cannot take names the nearest valid sizes
    line = user_error(run("train", "--data", data / "train.h5", "--filters", "4,8,16", "--tile", 61, "--steps", 1,
                          check=False), "61")
    assert "nearest valid" in line
    # labels outside [0, classes): the common 0/255 mask
    bad = tmp_path / "bad255.h5"
    with h5py.File(data / "train.h5", "r") as f, h5py.File(bad, "w") as g:
        g["raw"] = f["raw"][()]
        g["label"] = (f["label"][()] * 255).astype(np.uint8)
    user_error(run(*base, "--data", bad, check=False), "255")
    # NaN in raw
    nan = tmp_path / "nan.h5"
    with h5py.File(data / "train.h5", "r") as f, h5py.File(nan, "w") as g:
        raw = f["raw"][()].astype(np.float32)
        raw[0, 3, 3] = np.nan
        g["raw"] = raw
        g["label"] = f["label"][()]
    user_error(run(*base, "--data", nan, check=False), "NaN")
    # a dataset without label, mismatched shapes
    nolabel = tmp_path / "nolabel.h5"
    with h5py.File(nolabel, "w") as g:
        g["raw"] = np.zeros((2, 64, 64), np.uint8)
    user_error(run(*base, "--data", nolabel, check=False), "label")
    shapes = tmp_path / "shapes.h5"
    with h5py.File(shapes, "w") as g:
        g["raw"] = np.zeros((2, 64, 64), np.uint8)
        g["label"] = np.zeros((2, 64, 60), np.uint8)
    user_error(run(*base, "--data", shapes, check=False), "label")
    # a checkpoint that does not match the model: names the tensor and both shapes
    ck = tmp_path / "c.safetensors"
    run(*base, "--data", data / "train.h5", "--save", ck)
    line = user_error(run("train", "--data", data / "train.h5", "--filters", "4,8,32", "--tile", 60, "--steps", 1,
                          "--init", ck, check=False), "x")
    assert "16" in line and "32" in line
    # predict of a missing input leaves no output behind
    out = tmp_path / "never.h5"
    user_error(run("predict", "--checkpoint", ck, "--input", tmp_path / "nope.h5", "--output", out, check=False))
    assert not out.exists() and not list(tmp_path.glob("never.h5*"))


def test_diverging_run_stops_with_advice(data, tmp_path):
    r = run("train", "--data", data / "train.h5", *SMALL, "--steps", 30, "--optimizer", "sgd", "--lr", "1e30",
            check=False)
    assert r.returncode == 1, r.stderr
    assert "diverged" in r.stderr and "--lr" in r.stderr


def test_interrupted_run_saves_and_resumes(data, tmp_path):
    """SIGTERM mid-run writes the checkpoint; resuming finishes with the bits of an unbroken run."""
    import signal
    import time
    ck = tmp_path / "ck.safetensors"
    args = [UNET, "train", "--data", str(data / "train.h5"), *SMALL[:-4], "--threads", "1", "--log-every", "1",
            "--steps", "100000", "--save", str(ck), "--log", str(tmp_path / "m.jsonl")]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        time.sleep(0.1)
        if os.path.exists(tmp_path / "m.jsonl") and os.path.getsize(tmp_path / "m.jsonl") > 0:
            break
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "--resume" in err
    _, meta = tensors(ck)
    assert int(meta["unet.step"]) >= 1


def test_data_split_takes_the_share_as_val(data, tmp_path):
    import shutil
    src = tmp_path / "d.h5"
    shutil.copy(data / "train.h5", src)
    run("data", "split", src, "--val", "0.25", "--seed", 3)
    with h5py.File(tmp_path / "d-train.h5", "r") as a, h5py.File(tmp_path / "d-val.h5", "r") as b:
        assert a["raw"].shape[0] == 3 and b["raw"].shape[0] == 1
    user_error(run("data", "split", src, "--val", "half", check=False), "--val", "half")
