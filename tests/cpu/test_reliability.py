"""Runs that survive (issue 12): outputs checked before any work, periodic and
best checkpoints, --resume from a folder or a prefix, a run killed with
SIGKILL at named moments (mid-write among them) and at random ones resuming
to the bits of an unbroken run, a full disk, NaN in a batch (stop and skip),
stdout that a job's log follows line by line, unet --version, and the small
things a new user trips on (info's tile, prune's model flags, --depth's
help).

The crash points are the engine's own test hooks (src/host/train/test_hooks.h):
UNET_TEST_KILL=POINT:N makes the process SIGKILL itself the N-th time it
reaches POINT, so that no kill races a timer on a loaded machine."""
import json
import os
import random
import re
import signal
import struct
import subprocess
import time

import h5py
import numpy as np
import pytest

from test_train import SMALL, UNET, data, tensors  # noqa: F401 (data is a fixture)
from unet_testlib import cuda_built, read_safetensors


def run(*args, check=True, env=None):
    r = subprocess.run([UNET, *map(str, args)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    if check:
        assert r.returncode == 0, r.stderr
    return r


def one_line(r, code, *words):
    """Exit code `code`, one line on stderr, naming what is wrong."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def progress_meta(meta):
    """The metadata a resumed run must reproduce (the configuration names the --resume it was given)."""
    return {k: v for k, v in meta.items() if k != "unet.config"}


def checkpoints(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".safetensors"))


def partials(d):
    return sorted(p.name for p in d.iterdir() if ".tmp." in p.name)


# ---- fail fast on outputs -------------------------------------------------------------------------------------

def test_outputs_are_checked_before_any_work(data, tmp_path):
    """A path the run would write that cannot be written is one line and exit 2 before the first step: a folder
    that is not there, a file where a folder should be, a folder where the file should be."""
    train = ["train", "--data", data / "train.h5", *SMALL, "--steps", 50]
    afile = tmp_path / "afile"
    afile.write_text("x")
    for flag, path, words in [("--save", tmp_path / "nodir" / "c.safetensors", ["--save", "does not exist"]),
                              ("--save", afile / "c.safetensors", ["--save", "not a folder"]),
                              ("--save", tmp_path, ["--save", "folder"]),
                              ("--log", tmp_path / "nodir" / "m.jsonl", ["--log", "does not exist"])]:
        r = run(*train, flag, path, check=False)
        one_line(r, 2, *words)
        assert "step 1/" not in r.stdout and "device:" not in r.stdout
    ck = tmp_path / "c.safetensors"
    run(*train[:-2], "--steps", 1, "--save", ck)
    for cmd in (["predict", "--checkpoint", ck, "--input", data / "val.h5", "--output", tmp_path / "nodir" / "p.h5"],
                ["eval", "--checkpoint", ck, "--data", data / "val.h5", "--log", tmp_path / "nodir" / "m.jsonl"],
                ["prune", "--checkpoint", ck, "--depth", 1, "--output", tmp_path / "nodir" / "p.safetensors"],
                ["data", "import", "--images", tmp_path, "--masks", tmp_path, "--output", tmp_path / "nodir" / "d.h5"]):
        r = run(*cmd, check=False)
        one_line(r, 2, "nodir", "does not exist")
        assert "device:" not in r.stdout
    # compare makes --out (documented), and says so when it cannot
    r = run("compare", "--data", data / "train.h5", "--val", data / "val.h5", "--out", afile / "report", check=False)
    one_line(r, 2, "--out", "cannot create")


# ---- periodic and best checkpoints, --resume ------------------------------------------------------------------

def whole_image_loss(prob, label, weight, classes):
    """The training loss of one whole image from the probabilities predict writes, in float64: the mean of the
    weighted cross-entropy, or the weighted BCE's mean plus 1 - the soft Dice (smoothed by 1, as training's)."""
    prob, label, weight = (np.asarray(x, np.float64) for x in (prob, label, weight))
    eps = 1e-12
    if classes > 1:
        picked = np.take_along_axis(prob, label.astype(np.int64)[None], axis=0)[0]
        return float(np.mean(weight * -np.log(np.maximum(picked, eps))))
    p = prob[0]
    bce = -(label * np.log(np.maximum(p, eps)) + (1 - label) * np.log(np.maximum(1 - p, eps)))
    return float(np.mean(weight * bce) + 1 - (2 * np.sum(p * label) + 1) / (np.sum(p) + np.sum(label) + 1))


@pytest.mark.parametrize("classes", [2, 1])
def test_validation_loss_is_the_training_loss_of_whole_images(data, tmp_path, classes):
    """--save-best val_loss: the validation's loss is the loss the model trains on (weighted by the weight map),
    of each whole validation image, averaged over images: held against the probabilities predict writes."""
    ck, log = tmp_path / "c.safetensors", tmp_path / "m.jsonl"
    r = run("train", "--data", data / "train.h5", "--val", data / "val.h5", *SMALL, "--classes", classes,
            "--steps", 2, "--val-every", 1, "--save-best", "val_loss", "--save", ck, "--log", log)
    vals = [json.loads(x) for x in open(log) if "val_loss" in x]
    assert [v["step"] for v in vals] == [1, 2] and "loss" in r.stdout.split("validation at step 2:")[1].split("\n")[0]
    best = min(vals, key=lambda v: v["val_loss"])
    _, meta = tensors(tmp_path / "c.best.safetensors")
    assert meta["unet.best_metric"] == "val_loss" and int(meta["unet.best_step"]) == best["step"]
    run("predict", "--checkpoint", ck, "--input", data / "val.h5", "--output", tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5") as p, h5py.File(data / "val.h5") as v:
        weight = v["weight"][:] if "weight" in v else np.ones(v["label"].shape, np.float32)
        losses = [whole_image_loss(p["prob"][k], v["label"][k], weight[k], classes) for k in range(len(p["prob"]))]
    assert vals[-1]["val_loss"] == pytest.approx(np.mean(losses), rel=1e-4)


def test_periodic_and_best_checkpoints_beside_save(data, tmp_path):
    """--save-every N keeps the last --keep periodic checkpoints beside --save, --save-best the best validation
    (its value and step recorded), --save-every-min writes by time; a finished run removes the periodic ones."""
    d = tmp_path / "run"
    d.mkdir()
    args = ["train", "--data", data / "train.h5", "--val", data / "val.h5", *SMALL, "--steps", 8, "--val-every", 2,
            "--save-every", 1, "--keep", 2, "--save-best", "val_dice", "--save", d / "c.safetensors",
            "--log", d / "m.jsonl"]
    r = run(*args, "--stop-after", 5)
    assert checkpoints(d) == ["c.best.safetensors", "c.safetensors", "c.step3.safetensors", "c.step4.safetensors"]
    vals = [json.loads(x) for x in open(d / "m.jsonl") if "val_dice" in x]
    best = max(vals, key=lambda v: v["val_dice"])
    _, meta = tensors(d / "c.best.safetensors")
    assert meta["unet.best_metric"] == "val_dice" and int(meta["unet.best_step"]) == best["step"]
    assert float(meta["unet.best_value"]) == pytest.approx(best["val_dice"], abs=1e-6)
    assert meta["unet.step"] == str(best["step"]) and f"best val_dice {best['val_dice']:.4f}" in r.stdout
    _, meta = tensors(d / "c.step4.safetensors")
    assert meta["unet.step"] == "4" and meta["unet.best_metric"] == "val_dice"
    # the folder is enough to go on; the finished run leaves the final and the best checkpoint
    r = run(*args, "--resume", d)
    assert f"resuming {d / 'c.safetensors'} at step 5" in r.stdout
    assert checkpoints(d) == ["c.best.safetensors", "c.safetensors"]
    # by time: every step here, with a tiny --save-every-min
    t = tmp_path / "time"
    t.mkdir()
    run("train", "--data", data / "train.h5", *SMALL, "--steps", 6, "--stop-after", 4, "--save-every-min", "1e-6",
        "--save", t / "c.safetensors")
    assert checkpoints(t) == ["c.safetensors", "c.step2.safetensors", "c.step3.safetensors"]
    # the flags that write beside --save need it; --save-best needs validation images
    for extra, words in [(["--save-every", 2], ["--save-every", "--save"]),
                         (["--save-best", "val_iou", "--save", t / "x.safetensors"], ["--save-best", "--val"])]:
        one_line(run("train", "--data", data / "train.h5", *SMALL, "--steps", 2, *extra, check=False), 2, *words)


def test_resume_takes_the_newest_complete_checkpoint(data, tmp_path):
    """--resume takes a folder, a prefix or the --save path (gone or older than the periodic checkpoints beside
    it); a file cut short is passed over with a note; a fresh run under the name of an unfinished one is refused."""
    d = tmp_path / "run"
    d.mkdir()
    args = ["train", "--data", data / "train.h5", *SMALL, "--steps", 8, "--save-every", 2, "--keep", 3,
            "--save", d / "c.safetensors"]
    r = run(*args, env={"UNET_TEST_KILL": "step:7"}, check=False)
    assert r.returncode == -signal.SIGKILL
    assert checkpoints(d) == ["c.step2.safetensors", "c.step4.safetensors", "c.step6.safetensors"]
    # a newer file cut short, as a crash of a copy would leave it: passed over
    whole = (d / "c.step6.safetensors").read_bytes()
    (d / "c.step9.safetensors").write_bytes(whole[: len(whole) // 2])
    for spec in (d, d / "c", d / "c.safetensors"):
        r = run(*args, "--stop-after", 7, "--resume", spec)
        assert f"resuming {d / 'c.step6.safetensors'} at step 6" in r.stdout
        assert "passes over" in r.stderr and "c.step9.safetensors" in r.stderr
        (d / "c.safetensors").unlink()
    # an older checkpoint named on its own is taken as it is
    os.unlink(d / "c.step9.safetensors")
    r = run(*args, "--stop-after", 7, "--resume", d / "c.step2.safetensors")
    assert f"resuming {d / 'c.step2.safetensors'} at step 2" in r.stdout
    (d / "c.safetensors").unlink()
    # a fresh run under the same name would mix two runs' files: refused, naming the way on
    one_line(run(*args, check=False), 2, "c.step", "--resume")
    # nothing to resume: one line
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(run(*args, "--resume", empty, check=False), 2, "no checkpoint")
    one_line(run(*args, "--resume", tmp_path / "none" / "c.safetensors", check=False), 2, "no such checkpoint")


# ---- crash consistency ----------------------------------------------------------------------------------------

def crash_args(data, d):
    return ["train", "--data", data / "train.h5", "--val", data / "val.h5", *SMALL, "--steps", 10,
            "--optimizer", "adam", "--lr", "3e-3", "--dropout", "0.2", "--augment", "paper", "--norm", "batch",
            "--val-every", 3, "--save-best", "val_iou", "--save-every", 2, "--keep", 2,
            "--save", d / "c.safetensors", "--log", d / "m.jsonl"]


def resume_until_done(args, d, env=None):
    """Runs (and resumes) until the run finishes, as a requeued job would: --resume when a checkpoint is there."""
    for _ in range(5):
        usable = [n for n in checkpoints(d) if ".best." not in n]
        r = run(*args, *(["--resume", d] if usable else []), check=False, env=env)
        if r.returncode == 0:
            return r
        assert r.returncode == -signal.SIGKILL, r.stderr
    raise AssertionError("the run did not finish")


@pytest.fixture(scope="module")
def unbroken(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("unbroken")
    run(*crash_args(data, d))
    return tensors(d / "c.safetensors"), tensors(d / "c.best.safetensors")


@pytest.mark.parametrize("kill", ["step:1", "step:5", "checkpoint-write:1", "checkpoint-write:3",
                                  "checkpoint-rename:2", "checkpoint-saved:2", "step:9"])
def test_sigkill_and_resume_give_the_bits_of_an_unbroken_run(data, tmp_path, unbroken, kill):
    """SIGKILL at a named moment, mid-write among them, then resume: the run ends with exactly the final and the
    best checkpoint of a run never killed, and no partial file is ever taken for a checkpoint."""
    d = tmp_path / "run"
    d.mkdir()
    args = crash_args(data, d)
    r = run(*args, env={"UNET_TEST_KILL": kill}, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = partials(d)
    if kill.startswith(("checkpoint-write", "checkpoint-rename")):
        assert len(left) == 1, os.listdir(d)
    for name in checkpoints(d):
        tensors(d / name)  # every file named as a checkpoint is whole
    r = resume_until_done(args, d)
    for name in left:
        assert f"removed {d / name}" in r.stdout
    assert partials(d) == [] and checkpoints(d) == ["c.best.safetensors", "c.safetensors"]
    (final, final_meta), (best, best_meta) = unbroken
    got, got_meta = tensors(d / "c.safetensors")
    assert got == final, [k for k in final if final[k] != got.get(k)]
    assert progress_meta(got_meta) == progress_meta(final_meta)
    got, got_meta = tensors(d / "c.best.safetensors")
    assert got == best and progress_meta(got_meta) == progress_meta(best_meta)


def test_sigkill_at_random_moments(data, tmp_path, unbroken):
    """Killed from outside at random moments, twice in one run, then resumed: still the unbroken run's bits."""
    d = tmp_path / "run"
    d.mkdir()
    args = crash_args(data, d)
    rng = random.Random(os.environ.get("UNET_TEST_SEED", "12"))
    log = d / "m.jsonl"
    for _ in range(2):
        usable = [n for n in checkpoints(d) if ".best." not in n]
        p = subprocess.Popen([UNET, *map(str, args), *(["--resume", str(d)] if usable else [])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at, lines0 = rng.randint(1, 4), sum(1 for _ in open(log)) if log.exists() else 0
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline:
            if log.exists() and sum(1 for _ in open(log)) - lines0 >= at:
                time.sleep(rng.random() * 0.05)
                break
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
    resume_until_done(args, d)
    (final, final_meta), (best, _) = unbroken
    got, got_meta = tensors(d / "c.safetensors")
    assert got == final and progress_meta(got_meta) == progress_meta(final_meta)
    assert tensors(d / "c.best.safetensors")[0] == best


# ---- a full disk ----------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 100 KiB (CI runs as root); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_fails_cleanly_and_keeps_the_last_checkpoint(data, tmp_path, small_disk):
    """The second periodic checkpoint does not fit: one line naming the file and the free space, exit 1, the
    first checkpoint intact (the bits of a run stopped there), no temporary file left."""
    args = ["train", "--data", data / "train.h5", *SMALL, "--steps", 6]
    ref = tmp_path / "ref.safetensors"
    run(*args, "--stop-after", 2, "--save", ref)
    size = os.path.getsize(ref)
    assert 52 << 10 < size < 96 << 10, size  # one fits in 100 KiB, two do not
    r = run(*args, "--save-every", 2, "--save", small_disk / "c.safetensors", check=False)
    line = one_line(r, 1, str(small_disk / "c.step4.safetensors"), "No space left on device", "MiB free")
    assert "step 4/6" in r.stdout and "step 5/6" not in r.stdout, line
    assert os.listdir(small_disk) == ["c.step2.safetensors"]
    assert tensors(small_disk / "c.step2.safetensors")[0] == tensors(ref)[0]


# ---- NaN and infinity ----------------------------------------------------------------------------------------

def test_nan_in_a_batch_stops_at_that_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    args = ["train", "--data", data / "train.h5", *SMALL, "--steps", 8, "--norm", "batch", "--save-every", 2,
            "--save", d / "c.safetensors"]
    r = run(*args, env={"UNET_TEST_NAN_STEP": "5"}, check=False)
    one_line(r, 1, "step 5 is not finite", "the loss is nan", f"last good checkpoint is {d / 'c.step4.safetensors'}",
             "--on-nonfinite skip")
    assert checkpoints(d) == ["c.step2.safetensors", "c.step4.safetensors"]
    ref = tmp_path / "ref.safetensors"
    run(*args[:-2], "--save", ref, "--stop-after", 4)
    assert tensors(d / "c.step4.safetensors")[0] == tensors(ref)[0]
    # a NaN that a ReLU hides from the loss still reaches the gradients (same padding: the corner's convolution
    # outputs are NaN, and ReLU makes them 0)
    ds = ["train", "--data", data / "train.h5", *SMALL, "--model", "unetpp", "--padding", "same", "--tile", 64,
          "--deep-supervision", "--steps", 4]
    r = run(*ds, env={"UNET_TEST_NAN_STEP": "2"}, check=False)
    one_line(r, 1, "step 2 is not finite", "the gradient of x0_0.conv1.weight", "no checkpoint was written")
    # deep supervision: the head whose loss is not finite is named
    one_line(run(*ds, "--lr", "1e30", check=False), 1, "is not finite: the loss of head 1")


def without_step_counters(t):
    return {k: v for k, v in t.items() if not k.endswith("num_batches_tracked")}


def all_finite(path):
    entries, _ = read_safetensors(path)
    return all(np.all(np.isfinite(np.frombuffer(raw, np.float32))) for e, raw in entries.values() if e["dtype"] == "F32")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_skip_drops_the_step_and_goes_on(data, tmp_path, optimizer):
    """--on-nonfinite skip: the NaN step changes nothing (weights, optimizer state, batch norm statistics are
    those of the step before), is said and counted in the log and the checkpoint; more than --max-skips stops."""
    args = ["train", "--data", data / "train.h5", *SMALL, "--steps", 8, "--norm", "batch", "--optimizer", optimizer,
            "--on-nonfinite", "skip"]
    nan = {"UNET_TEST_NAN_STEP": "4"}
    run(*args, "--stop-after", 3, "--save", tmp_path / "three.safetensors")
    r = run(*args, "--stop-after", 4, "--save", tmp_path / "four.safetensors", env=nan)
    assert "step 4: the loss is nan: its update was dropped (1 step dropped so far" in r.stdout
    three, _ = tensors(tmp_path / "three.safetensors")
    four, meta = tensors(tmp_path / "four.safetensors")
    assert without_step_counters(three) == without_step_counters(four)
    assert meta["unet.skipped_steps"] == "1" and meta["unet.step"] == "4"
    # the whole run, and the same killed after step 6 and resumed: the count goes on with it
    d = tmp_path / "run"
    d.mkdir()
    full = [*args, "--save", d / "c.safetensors", "--log", d / "m.jsonl", "--save-every", 2]
    run(*full, env=nan)
    logged = [json.loads(x) for x in open(d / "m.jsonl")]
    assert [x["skipped_steps"] for x in logged] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert logged[3]["loss"] is None  # JSON has no NaN
    final, meta = tensors(d / "c.safetensors")
    assert meta["unet.skipped_steps"] == "1" and all_finite(d / "c.safetensors")
    os.unlink(d / "c.safetensors")
    r = run(*full, env={**nan, "UNET_TEST_KILL": "step:6"}, check=False)
    assert r.returncode == -signal.SIGKILL
    run(*full, "--resume", d, env=nan)
    again, again_meta = tensors(d / "c.safetensors")
    assert again == final and progress_meta(again_meta) == progress_meta(meta)
    one_line(run(*args, "--max-skips", 0, env=nan, check=False), 1, "more than --max-skips 0", "step 4")


def test_a_diverging_run_never_writes_a_nonfinite_checkpoint(data, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    r = run("train", "--data", data / "train.h5", *SMALL, "--steps", 20, "--lr", "1e30", "--save-every", 1,
            "--save", d / "c.safetensors", check=False)
    one_line(r, 1, "diverged", "--lr")
    assert all(all_finite(d / name) for name in checkpoints(d))


# ---- logs, --version -------------------------------------------------------------------------------------------

def test_stdout_lines_are_written_as_they_come_when_it_is_a_file(data, tmp_path):
    """Under Slurm stdout is a file: each step line is there when the next step's log line is (the JSONL log is
    written first), not in a burst minutes later."""
    out, log = tmp_path / "out.txt", tmp_path / "m.jsonl"
    with open(out, "w") as f:
        p = subprocess.Popen([UNET, "train", "--data", str(data / "train.h5"), *SMALL, "--steps", "100000",
                              "--log", str(log)], stdout=f, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and sum(1 for _ in open(log)) >= 4):
            time.sleep(0.01)
        text = out.read_text()
    finally:
        p.kill()
        p.wait()
    assert "step 3/100000" in text, text[-500:]


def test_version_says_what_was_built():
    r = run("--version")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("unet ") and r.stderr == ""
    assert re.fullmatch(r"unet \d+\.\d+\.\d+( \(git [\w.-]+\))?", lines[0]), lines[0]
    text = r.stdout
    assert "HDF5 " in text and "json-c" in text and "build " in text
    if cuda_built():
        assert "cuDNN" in text and "NCCL" in text
    else:
        assert "cuda      not built" in text
    assert run("version").stdout == r.stdout
    assert "--version" in run("--help").stdout


# ---- small things a new user trips on ----------------------------------------------------------------------------

def info(*args):
    r = run("info", "--device", "cpu", "--json", *args)
    return json.loads(r.stdout)


def test_info_answers_for_a_tile_the_network_does_not_take():
    """unet info --model unetpp --padding same: the default tile 572 does not fit; the sizes are for the nearest
    valid tile, said so, and the parameters are what they are at any tile."""
    r = run("info", "--model", "unetpp", "--padding", "same", "--device", "cpu")
    assert "tile 572 does not fit this network: the sizes are for 576" in r.stdout
    d = info("--model", "unetpp", "--padding", "same")
    assert d["tile"] == 576 and d["tile_asked"] == 572
    assert d["params"] == info("--model", "unetpp", "--padding", "same", "--tile", 96)["params"]
    assert "tile_asked" not in info("--model", "unetpp", "--padding", "same", "--tile", 96)
    assert info("--filters", "4,8,16", "--tile", 61)["tile"] == 60


def test_depth_with_deep_supervision_keeps_heads_1_to_d_and_says_so():
    """The paper's pruned UNet++ L2 (filters 32..512, one class) has 511,105 parameters: --depth 2 alone; with
    --deep-supervision head 1 stays too (33 more), as the help says."""
    paper = ["--model", "unetpp", "--filters", "32,64,128,256,512", "--padding", "same", "--tile", 96, "--classes", 1]
    assert info(*paper, "--depth", 2)["params"] == 511105
    assert info(*paper, "--depth", 2, "--deep-supervision")["params"] == 511138
    text = run("info", "--help").stdout
    assert "heads 1..D" in " ".join(text.split())


def test_prune_takes_model_flags_for_weights_without_metadata(data, tmp_path):
    """prune, like predict, takes the model flags for a checkpoint without the engine's metadata (weights
    written by PyTorch): the same pruned tensors as from the engine's own checkpoint."""
    model = ["--model", "unetpp", "--filters", "4,8,16", "--padding", "same", "--deep-supervision", "--classes", 1]
    ck = tmp_path / "c.safetensors"
    run("train", "--data", data / "train.h5", *model, "--tile", 64, "--batch", 2, "--threads", 1, "--steps", 2,
        "--save", ck)
    # the same tensors with no metadata, as safetensors' torch writer leaves them
    entries, _ = read_safetensors(ck)
    header, blob, at = {}, b"", 0
    for name, (entry, raw) in entries.items():
        if name.startswith("optimizer.") or name.endswith("num_batches_tracked"):
            continue
        header[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [at, at + len(raw)]}
        blob += raw
        at += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    run("prune", "--checkpoint", ck, "--depth", 1, "--output", tmp_path / "a.safetensors")
    r = run("prune", "--checkpoint", bare, "--depth", 1, "--output", tmp_path / "b.safetensors", *model)
    assert "pruned to depth 1" in r.stdout
    a, _ = tensors(tmp_path / "a.safetensors")
    b, meta = tensors(tmp_path / "b.safetensors")
    assert a == b
    cfg = json.loads(meta["unet.config"])
    assert cfg["model"] == "unetpp" and cfg["depth"] == 1 and cfg["deep_supervision"] is False
    # predict takes the pruned file as any checkpoint
    run("predict", "--checkpoint", tmp_path / "b.safetensors", "--input", data / "val.h5", "--output",
        tmp_path / "p.h5", "--threads", 1, "--tile", 64)
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["prob"].shape[1] == 1
    # without the flags the default model does not match the file: one line naming a tensor
    one_line(run("prune", "--checkpoint", bare, "--depth", 1, "--output", tmp_path / "c.safetensors", check=False),
             2, "--model")
