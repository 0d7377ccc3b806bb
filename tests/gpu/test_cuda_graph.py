"""The training step as one CUDA graph (src/host/train/step.c): after 3 eager
steps the whole step (forward, losses, backward, optimizer update) is
captured once and replayed, its per-step values (inputs, dropout seed,
learning rate, Adam's bias corrections) read from device memory. A replayed
step must give the same bits as the eager step: every run here trains the
same model with --cuda-graph off and auto and compares the checkpoints
(parameters and optimizer state) and the logged losses bit for bit, and
checks from the run's own line that the graph was captured.

The models make every per-step value matter: dropout (a new mask each step),
a warm-up and a cosine schedule (a new learning rate each step), Adam and
AdamW (new bias corrections each step), SGD's first step (eager) and its
later ones (replayed), batch norm, deep supervision, validation between
replays, and a weight map. A value frozen into the graph at capture would
make the replayed steps differ.

Skips where no GPU is listed by nvidia-smi and where the build has no CUDA
backend."""
import json
import os
import subprocess

import numpy as np
import pytest

from unet_testlib import BUILD, cuda_emulated, read_safetensors, requires_gpu, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")
STEPS = 9  # 3 eager, the capture at step 4, replays up to 9

pytestmark = requires_gpu("the CUDA graph tests run on a GPU machine")

def env(**extra):
    return single_process_env(**extra)


def read_st(path):
    """A checkpoint's tensors (name -> raw bytes): parameters, running statistics and optimizer state."""
    return {k: raw for k, (_, raw) in read_safetensors(path)[0].items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    rng = np.random.default_rng(5)
    for name, n in (("train.h5", 6), ("val.h5", 2)):
        write_discs(d / name, rng, n, 96, 8, (4, 12), 8, weight=True)
    return d


MODELS = {
    # the paper's U-Net shape, small: valid padding, CE with the weight map, SGD with momentum, dropout
    "unet_sgd": ["--model", "unet", "--filters", "8,16,32", "--padding", "valid", "--tile", "60", "--classes", "2",
                 "--dropout", "0.3", "--optimizer", "sgd", "--lr", "0.02", "--momentum", "0.9", "--warmup", "2",
                 "--schedule", "cosine"],
    # UNet++ with deep supervision, BCE + Dice on every head, batch norm, dropout, Adam
    "unetpp_adam": ["--model", "unetpp", "--filters", "8,16,32,64", "--padding", "same", "--tile", "64",
                    "--classes", "1", "--deep-supervision", "--norm", "batch", "--dropout", "0.3",
                    "--optimizer", "adam", "--lr", "3e-3", "--schedule", "poly"],
    # the same with AdamW's decoupled decay and bilinear upsampling
    "unetpp_adamw": ["--model", "unetpp", "--filters", "8,16,32", "--padding", "same", "--tile", "64",
                     "--classes", "1", "--deep-supervision", "--dropout", "0.2", "--upsample", "bilinear",
                     "--optimizer", "adamw", "--weight-decay", "0.05", "--lr", "3e-3", "--warmup", "3"],
}


def train(data, out, model, graph, *extra, environ=None):
    out.mkdir(parents=True, exist_ok=True)
    args = [UNET, "train", "--data", str(data / "train.h5"), "--val", str(data / "val.h5"), *MODELS[model],
            "--batch", "2", "--steps", str(STEPS), "--val-every", "4", "--log-every", "1", "--device", "cuda",
            "--precision", "fp32", "--cuda-graph", graph, "--seed", "3", "--save", str(out / "c.safetensors"),
            "--log", str(out / "m.jsonl"), *extra]
    r = subprocess.run(args, capture_output=True, text=True, env=environ or env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(x) for x in open(out / "m.jsonl")]
    return r, read_st(out / "c.safetensors"), lines


def without_timing(lines):
    return [{k: v for k, v in x.items() if k != "images_per_s"} for x in lines]


def assert_same_run(eager, graphed, what):
    (_, a, la), (_, b, lb) = eager, graphed
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"{what}: replayed steps differ from eager ones in {differ[:8]}"
    assert without_timing(la) == without_timing(lb), f"{what}: the logged losses or validations differ"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_replayed_steps_give_the_eager_bits(data, tmp_path, model):
    eager = train(data, tmp_path / "off", model, "off")
    graphed = train(data, tmp_path / "auto", model, "auto")
    assert "cuda graph" not in eager[0].stdout, eager[0].stdout
    assert "cuda graph: step 4 captured after 3 eager steps" in graphed[0].stdout, graphed[0].stdout + \
        graphed[0].stderr
    assert_same_run(eager, graphed, model)
    losses = [x["loss"] for x in graphed[2] if "loss" in x]
    assert len(losses) == STEPS and all(np.isfinite(losses))


def test_sparse_logging_reads_the_replayed_loss_when_logged(data, tmp_path):
    """A replayed step is read back only when it is logged: the logged losses
    are those of a run that logs every step."""
    every = train(data, tmp_path / "every", "unetpp_adam", "auto")
    sparse = train(data, tmp_path / "sparse", "unetpp_adam", "auto", "--log-every", "4")
    assert every[1] == sparse[1]
    by_step = {x["step"]: x for x in without_timing(every[2]) if "loss" in x}
    for x in without_timing(sparse[2]):
        if "loss" in x:
            assert x == by_step[x["step"]]
    assert [x["step"] for x in sparse[2] if "loss" in x] == [4, 8, STEPS]


@pytest.mark.skipif(not cuda_emulated(), reason="UNET_CUDA_EMU_DEFER is the CPU emulation's")
def test_the_host_running_ahead_never_rewrites_an_upload_still_to_be_read(data, tmp_path):
    """The host writes step k+1's inputs and values while the device runs
    step k, into page-locked buffers that asynchronous copies read later
    (src/kernels/cuda/staging.h). Under UNET_CUDA_EMU_DEFER=1 the emulated
    device runs nothing until the host waits, the way a GPU far behind the
    host would: a buffer rewritten before its copy ran would feed a step the
    wrong batch, seed or learning rate, and the run would not give the bits
    of one whose device keeps up. Logged and validated once, at the end, so
    that the replayed steps run ahead unread (an eager step is read back)."""
    sparse = ["--log-every", str(STEPS), "--val-every", str(STEPS)]
    keeping_up = train(data, tmp_path / "now", "unet_sgd", "auto", *sparse)
    behind = train(data, tmp_path / "deferred", "unet_sgd", "auto", *sparse, environ=env(UNET_CUDA_EMU_DEFER="1"))
    assert_same_run(keeping_up, behind, "a device behind the host")


def test_a_step_that_cannot_be_captured_runs_eagerly(data, tmp_path):
    """UNET_CUDA_SYNC=1 waits after every kernel, which a graph cannot: the
    run says so once and trains exactly as without a graph."""
    eager = train(data, tmp_path / "off", "unet_sgd", "off")
    synced = train(data, tmp_path / "sync", "unet_sgd", "auto", environ=env(UNET_CUDA_SYNC="1"))
    notes = [x for x in synced[0].stdout.splitlines() if x.startswith("cuda graph")]
    assert len(notes) == 1 and "failed" in notes[0] and "UNET_CUDA_SYNC" in notes[0], synced[0].stdout
    assert_same_run(eager, synced, "eager fallback")


def device_line(stdout):
    """The run's "device: ..." line: the rest of stdout names paths, and pytest's tmp_path is named after the
    test ("test_fast_nondeterministic_tra0"), so only this line says what the run is."""
    return next(line for line in stdout.splitlines() if line.startswith("device: "))


def test_fast_nondeterministic_trains_and_says_so(data, tmp_path):
    """--fast-nondeterministic lets cuDNN pick engines with atomics: the run
    says so on its device line, captures as usual and trains to finite losses
    close to the deterministic run's (not the same bits: that is the point)."""
    det = train(data, tmp_path / "det", "unet_sgd", "auto")
    fast = train(data, tmp_path / "fast", "unet_sgd", "auto", "--fast-nondeterministic")
    assert "nondeterministic engines allowed" in device_line(fast[0].stdout)
    assert "nondeterministic" not in device_line(det[0].stdout)
    assert "cuda graph: step 4 captured" in fast[0].stdout, fast[0].stdout + fast[0].stderr
    a, b = ([x["loss"] for x in r[2] if "loss" in x] for r in (det, fast))
    assert len(b) == STEPS and all(np.isfinite(b))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-5), (a, b)


def test_nhwc_layout_trains_as_nchw_and_replays_its_bits(data, tmp_path):
    """--layout nhwc (fp32 activations channels last, padded to 4 channels):
    its replayed steps give its eager bits, its device line says so, and it
    trains as the NCHW run does, to the sums' rounding (cuDNN and the
    reductions add in other orders); bf16 is NHWC only, and --layout nchw with
    it is refused in one line."""
    nchw = train(data, tmp_path / "nchw", "unet_sgd", "off")
    eager = train(data, tmp_path / "off", "unet_sgd", "off", "--layout", "nhwc")
    graphed = train(data, tmp_path / "auto", "unet_sgd", "auto", "--layout", "nhwc")
    assert "nhwc" in eager[0].stdout.split("device:")[-1].splitlines()[0], eager[0].stdout
    assert "cuda graph: step 4 captured" in graphed[0].stdout, graphed[0].stdout + graphed[0].stderr
    assert_same_run(eager, graphed, "nhwc")
    a, b = ([x["loss"] for x in r[2] if "loss" in x] for r in (nchw, eager))
    assert len(b) == STEPS and np.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    r = subprocess.run([UNET, "train", "--data", str(data / "train.h5"), *MODELS["unet_sgd"], "--steps", "1",
                        "--device", "cuda", "--precision", "bf16", "--layout", "nchw"],
                       capture_output=True, text=True, env=env(), timeout=600)
    # the CPU emulation of CUDA announces itself on stderr; a GPU does not
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("unet CUDA emulator:")]
    assert r.returncode == 2 and len(lines) == 1 and "--layout nchw" in lines[0], (r.returncode, r.stderr)


def test_bench_times_the_graph(data):
    """unet bench replays the graph and says so; its losses are the eager
    ones (a warm-up of 4 covers the capture, so both runs take 10 steps)."""
    out = {}
    for graph in ("auto", "off"):
        r = subprocess.run([UNET, "bench", *MODELS["unetpp_adam"], "--batch", "2", "--steps", "6", "--bench-warmup",
                            "4", "--device", "cuda", "--precision", "fp32", "--cuda-graph", graph, "--json"],
                           capture_output=True, text=True, env=env(), timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        out[graph] = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["auto"]["cuda_graph"] is True and out["auto"]["cuda_graph_note"] == ""
    assert out["off"]["cuda_graph"] is False
    assert out["auto"]["first_loss"] == out["off"]["first_loss"]
    assert out["auto"]["last_loss"] == out["off"]["last_loss"]
    print("\nms per step, eager", out["off"]["ms_median"], "graph", out["auto"]["ms_median"])
