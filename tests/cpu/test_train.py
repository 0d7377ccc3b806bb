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

from test_data_commands import vrand_reference
from unet_testlib import BUILD, SOURCE, read_safetensors

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
    """A safetensors file's tensors (name -> bytes) and metadata."""
    entries, meta = read_safetensors(path)
    return {k: raw for k, (_, raw) in entries.items()}, meta


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
    # two classes: the per-class members are class 1's, the headline; the text has no per-class lines
    for k in ("iou", "dice", "rand_error"):
        assert ev[k + "_class1"] == ev[k] and vals[-1]["val_" + k + "_class1"] == vals[-1]["val_" + k]
    assert "class 1" not in run("eval", "--checkpoint", tmp_path / "c.safetensors", "--data", data / "val.h5",
                                "--threads", 1).stdout
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


def test_cuda_flags_are_accepted_and_ignored_on_the_cpu(data, tmp_path):
    """--cuda-graph, --fast-nondeterministic and --layout are the CUDA
    backend's: on the CPU every value trains the same bits and nothing speaks
    of graphs
    (tests/gpu/test_cuda_graph.py holds the GPU's replays against its eager
    steps)."""
    args = ["train", "--data", data / "train.h5", *SMALL, "--dropout", "0.2", "--optimizer", "adam", "--steps", 5,
            "--device", "cpu"]
    runs = {}
    for mode in ("auto", "off"):
        r = run(*args, "--cuda-graph", mode, "--save", tmp_path / f"{mode}.safetensors")
        assert "cuda graph" not in r.stdout + r.stderr
        runs[mode] = tensors(tmp_path / f"{mode}.safetensors")[0]
    assert runs["auto"] == runs["off"]
    user_error(run(*args, "--cuda-graph", "on", check=False), "--cuda-graph")
    # cuDNN's engine choice is the CUDA backend's too: the CPU trains the same bits
    r = run(*args, "--fast-nondeterministic", "--save", tmp_path / "fast.safetensors")
    assert "nondeterministic" not in r.stdout.split("device:")[-1].splitlines()[0]
    assert tensors(tmp_path / "fast.safetensors")[0] == runs["off"]
    # so is the activation layout: the CPU's is NCHW whatever --layout says
    run(*args, "--layout", "nhwc", "--save", tmp_path / "nhwc.safetensors")
    assert tensors(tmp_path / "nhwc.safetensors")[0] == runs["off"]
    user_error(run(*args, "--layout", "nwhc", check=False), "--layout")
    bench = run("bench", "--device", "cpu", "--filters", "4,8,16", "--tile", 60, "--steps", 2, "--bench-warmup", 1,
                "--threads", 1, "--json")
    b = json.loads(bench.stdout.strip().splitlines()[-1])
    assert b["cuda_graph"] is False and b["cuda_graph_note"] == ""


def test_augment_device_cuda_is_refused_on_the_cpu(data, tmp_path):
    """--augment-device cuda warps on the GPU, into the step's inputs
    (tests/gpu/test_augment_device.py trains with it against the CPU warp): a
    run on the CPU, or in a build without CUDA, refuses it in one line, exit 2,
    saying how to go on; so does an intensity augmentation, which the GPU warp
    does not do. --augment-device cpu is the default: the same bits, saved in
    the checkpoint's configuration."""
    args = ["train", "--data", data / "train.h5", *SMALL, "--steps", 2, "--device", "cpu"]
    line = user_error(run(*args, "--augment", "paper", "--augment-device", "cuda", check=False), "--augment-device cpu")
    assert "--device cuda" in line or "built without CUDA" in line, line
    for spec, named in [("paper,noise", "noise"), ("elastic,gamma,contrast", "gamma, contrast")]:
        user_error(run(*args, "--augment", spec, "--augment-device", "cuda", check=False), named,
                   "--augment-device cpu")
    user_error(run(*args, "--augment-device", "gpu", check=False), "--augment-device", "cpu, cuda")
    runs = {}
    for name, extra in (("default", []), ("cpu", ["--augment-device", "cpu"])):
        r = run(*args, "--augment", "paper", "--workers", 2, *extra, "--save", tmp_path / f"{name}.safetensors")
        assert "augment-device=cpu" in r.stdout
        runs[name] = tensors(tmp_path / f"{name}.safetensors")
    assert runs["default"][0] == runs["cpu"][0]
    assert json.loads(runs["cpu"][1]["unet.config"])["augment_device"] == "cpu"


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


def blobs(path, n, h, w, k, seed):
    """Discs of classes 1..k-1 on background 0, each class at its own brightness, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros((n, h, w), np.int32)
    for i in range(n):
        for _ in range(9):
            c, (cy, cx), r = rng.integers(1, k), rng.uniform(6, [h - 6, w - 6]), rng.uniform(4, 11)
            label[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
    raw = (label / (k - 1) + rng.normal(0, 0.1, label.shape)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = raw, label


def metrics_reference(pred, label, k):
    """IoU, Dice and Rand error of every foreground class, their means, and the pixel error, from hard labels."""
    out = {"pixel_error": float(np.mean(pred != label))}
    for c in range(1, k):
        tp = np.sum((pred == c) & (label == c))
        fp, fn = np.sum((pred == c) & (label != c)), np.sum((pred != c) & (label == c))
        out[f"iou_class{c}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        out[f"dice_class{c}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        out[f"rand_error_class{c}"] = 1 - np.mean([vrand_reference(p, t, c) for p, t in zip(pred, label)])
    for m in ("iou", "dice", "rand_error"):
        out[m] = np.mean([out[f"{m}_class{c}"] for c in range(1, k)])
    return out


def test_metrics_per_class_against_numpy(tmp_path):
    """Four classes: unet eval --json, its text, and the validation line of unet train --val give IoU, Dice and
    Rand error of classes 1..3 and their means, and the pixel error, as numpy computes them from the labels that
    unet predict writes."""
    k = 4
    blobs(tmp_path / "train.h5", 4, 96, 96, k, 1)
    blobs(tmp_path / "val.h5", 2, 72, 88, k, 2)
    log, ck = tmp_path / "m.jsonl", tmp_path / "c.safetensors"
    r = run("train", "--data", tmp_path / "train.h5", "--val", tmp_path / "val.h5", "--classes", k, "--filters",
            "8,16,32", "--padding", "same", "--tile", 48, "--batch", 4, "--threads", 1, "--steps", 40, "--optimizer",
            "adam", "--lr", "1e-2", "--val-every", 0, "--log", log, "--save", ck)
    val = [json.loads(line) for line in open(log) if "val_iou" in line][-1]
    ev = json.loads(run("eval", "--checkpoint", ck, "--data", tmp_path / "val.h5", "--json").stdout.splitlines()[-1])
    run("predict", "--checkpoint", ck, "--input", tmp_path / "val.h5", "-o", tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5", "r") as f, h5py.File(tmp_path / "val.h5", "r") as g:
        pred, label = f["pred"][()].astype(np.int32), g["label"][()]
    ref = metrics_reference(pred, label, k)
    # a trained model, not a degenerate one: every class found in part
    assert all(0.2 < ref[f"iou_class{c}"] < 1 for c in range(1, k)), ref
    assert ev["images"] == 2 and not any(key.endswith("class4") or key.endswith("class0") for key in ev)
    for key, want in ref.items():
        assert abs(ev[key] - want) < 1e-6, (key, ev[key], want)
        assert abs(val["val_" + key] - want) < 1e-6, (key, val["val_" + key], want)
    assert abs(ev["pixel_accuracy"] - (1 - ref["pixel_error"])) < 1e-6
    # text: the headline says what it means, then one line per class; training prints the same lines
    text = run("eval", "--checkpoint", ck, "--data", tmp_path / "val.h5").stdout.splitlines()
    head = [ln for ln in text if ln.startswith("IoU")]
    assert len(head) == 1 and "means over classes 1..3" in head[0] and f"IoU {ref['iou']:.4f}" in head[0]
    rows = [ln.strip() for ln in text if ln.strip().startswith("class ")]
    want = [f"class {c}: IoU {ref[f'iou_class{c}']:.4f}  Dice {ref[f'dice_class{c}']:.4f}  "
            f"Rand error {ref[f'rand_error_class{c}']:.4f}" for c in range(1, k)]
    assert rows == want
    assert [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("class ")] == want
    # eval --log appends the --json line
    run("eval", "--checkpoint", ck, "--data", tmp_path / "val.h5", "--log", tmp_path / "e.jsonl")
    assert json.loads(open(tmp_path / "e.jsonl").read()) == ev
