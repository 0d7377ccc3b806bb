"""Training with the augmentation warp on the GPU (--augment-device cuda,
src/host/train/augment_device.c): the loader reads the source windows and records the
draws (unet_loader_sources), and the CUDA backend's warp_batch writes the tiles
straight into the training step's inputs on the backend's stream, before
the step and outside its CUDA graph capture. The same seed must train what
--augment-device cpu trains (the loader's threads warping with the same
arithmetic, src/common/warp_math.h): every logged loss within 1e-5 and
the checkpoint's tensors within 1e-4 relative. Both warps are expected to
give the same bits (tests/gpu/test_augment_twin.py): each case prints
whether they did, for the record.

The cases: the paper's U-Net shape with a weight map (the weight input
warped), cubic raw, SGD with dropout; UNet++ without a weight map (the warp's
weights go to a scratch plane), bilinear raw with rotation and scaling,
Adam; each with --cuda-graph auto (the warp feeds the replays, whose inputs
have fixed addresses) and off, and with several loader workers; four input
channels. A resumed GPU-warp run continues like an unbroken one. Under
--precision bf16 the warp is refused at any channel count: the backend keeps
images NHWC bf16, not the NCHW float32 the warp writes (at 4 channels both
take the same bytes, so only the layout tells).

Skips where no GPU is listed by nvidia-smi and where the build has no CUDA
backend."""
import json
import os
import subprocess

import numpy as np
import pytest

from unet_testlib import BUILD, read_safetensors, requires_gpu, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")
STEPS = 8  # with --cuda-graph auto: 3 eager steps, the capture at step 4, replays after it

pytestmark = requires_gpu("training with the GPU augmentation warp runs on a GPU machine")

def env():
    return single_process_env()


def read_st(path):
    """A checkpoint's tensors (name -> float32 array, or raw bytes for other types)."""
    return {k: np.frombuffer(raw, np.float32) if t["dtype"] == "F32" else raw
            for k, (t, raw) in read_safetensors(path)[0].items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("augdev")
    rng = np.random.default_rng(11)
    for name, with_weight in (("weighted.h5", True), ("plain.h5", False)):
        write_discs(d / name, rng, 5, 110, 9, (4, 13), 8, weight=with_weight)
    # four channels: the plain discs and three transforms of them
    import h5py
    with h5py.File(d / "plain.h5") as f:
        raw, label = f["raw"][...], f["label"][...]
    with h5py.File(d / "four.h5", "w") as f:
        f["raw"] = np.stack([raw, 255 - raw, raw // 2, np.flip(raw, 2)], axis=1)
        f["label"] = label
    return d


CASES = {
    "unet_weighted": ("weighted.h5",
                      ["--model", "unet", "--filters", "8,16,32", "--padding", "valid", "--tile", "60",
                       "--classes", "2", "--dropout", "0.2", "--optimizer", "sgd", "--lr", "0.02",
                       "--momentum", "0.9", "--augment", "paper"]),
    "unetpp_plain": ("plain.h5",
                     ["--model", "unetpp", "--filters", "8,16,32", "--padding", "same", "--tile", "64",
                      "--classes", "1", "--deep-supervision", "--optimizer", "adam", "--lr", "3e-3",
                      "--augment", "elastic:sigma=8:interp=linear,flip,rot90,rotate:deg=30,scale:range=0.2"]),
    # four input channels, each warped alike: under fp32 the NCHW float32 tiles the warp writes
    "unet_four": ("four.h5",
                  ["--model", "unet", "--in-channels", "4", "--filters", "8,16", "--padding", "same", "--tile", "48",
                   "--classes", "2", "--optimizer", "adam", "--lr", "3e-3", "--augment", "paper"]),
}


def train(data, out, case, augment_device, *extra):
    out.mkdir(parents=True, exist_ok=True)
    dataset, model = CASES[case]
    args = [UNET, "train", "--data", str(data / dataset), *model, "--batch", "3", "--steps", str(STEPS),
            "--log-every", "1", "--device", "cuda", "--precision", "fp32", "--seed", "9",
            "--augment-device", augment_device, "--save", str(out / "c.safetensors"), "--log", str(out / "m.jsonl"),
            *extra]
    r = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"augment-device={augment_device}" in r.stdout, r.stdout
    losses = [json.loads(x)["loss"] for x in open(out / "m.jsonl") if '"loss"' in x]
    return r, losses, read_st(out / "c.safetensors")


def assert_same_training(a, b, what):
    """a, b: (losses, tensors) of two runs."""
    (la, ta), (lb, tb) = a, b
    assert len(la) == len(lb) and la and np.all(np.isfinite(la)), (la, lb)
    worst = max(abs(x - y) / max(abs(y), 1.0) for x, y in zip(la, lb))
    assert worst <= 1e-5, f"{what}: losses differ by {worst:.3g}: {la} against {lb}"
    assert ta.keys() == tb.keys()
    for k in ta:
        if isinstance(ta[k], bytes):
            assert ta[k] == tb[k], f"{what}: {k} differs"
            continue
        x, y = ta[k].astype(np.float64), tb[k].astype(np.float64)
        rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)
        assert rel <= 1e-4, f"{what}: {k} differs by {rel:.3g} (relative)"
    same = la == lb and all((ta[k] == tb[k]) if isinstance(ta[k], bytes) else np.array_equal(ta[k], tb[k])
                            for k in ta)
    print(f"{what}: {'the same bits' if same else 'within tolerance, not the same bits'}")


@pytest.mark.parametrize("channels", [1, 4])
def test_channels_last_images_are_refused(data, tmp_path, channels):
    """The warp writes NCHW float32: a run holding its images NHWC
    (--layout nhwc) is refused in one line, exit 2, also at 4 channels,
    where the padded NHWC tensor takes the bytes of the NCHW one."""
    path = data / ("four.h5" if channels == 4 else "plain.h5")
    _, model = CASES["unetpp_plain"]
    r = subprocess.run([UNET, "train", "--data", str(path), *model, "--in-channels", str(channels), "--batch", "2",
                        "--steps", "1", "--device", "cuda", "--precision", "fp32", "--layout", "nhwc",
                        "--augment-device", "cuda"], capture_output=True, text=True, env=env(), timeout=600)
    # the CPU emulation of CUDA announces itself on stderr; a GPU does not
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("unet CUDA emulator:")]
    assert r.returncode == 2 and len(lines) == 1 and "--augment-device" in lines[0] and "--layout nhwc" in lines[0], \
        (r.returncode, r.stderr)


@pytest.mark.parametrize("graph", ["auto", "off"])
@pytest.mark.parametrize("case", ["unet_weighted", "unetpp_plain"])
def test_gpu_warp_trains_like_the_cpu_warp(data, tmp_path, case, graph):
    cpu = train(data, tmp_path / "cpu", case, "cpu", "--cuda-graph", graph)
    gpu = train(data, tmp_path / "cuda", case, "cuda", "--cuda-graph", graph, "--workers", "3")
    if graph == "auto":
        assert "cuda graph: step 4 captured" in gpu[0].stdout, gpu[0].stdout + gpu[0].stderr
    assert len(cpu[1]) == STEPS
    assert_same_training(gpu[1:], cpu[1:], f"{case}, --cuda-graph {graph}")


def test_gpu_warp_of_four_channels_trains_like_the_cpu_warp(data, tmp_path):
    cpu = train(data, tmp_path / "cpu", "unet_four", "cpu")
    gpu = train(data, tmp_path / "cuda", "unet_four", "cuda", "--workers", "2")
    assert_same_training(gpu[1:], cpu[1:], "four channels")


def test_resumed_gpu_warp_run_continues_exactly(data, tmp_path):
    whole = train(data, tmp_path / "whole", "unet_weighted", "cuda")
    train(data, tmp_path / "part", "unet_weighted", "cuda", "--stop-after", "3")
    resumed = train(data, tmp_path / "resumed", "unet_weighted", "cuda", "--resume",
                    str(tmp_path / "part" / "c.safetensors"))
    # the resumed run logs steps 4..8 only
    assert_same_training((resumed[1], resumed[2]), (whole[1][3:], whole[2]), "resumed")


@pytest.mark.parametrize("channels", [1, 4])
def test_the_warp_refuses_the_bf16_layout_whatever_the_channels(data, tmp_path, channels):
    """Under --precision bf16 the backend keeps images NHWC bfloat16 with the
    channels padded to 8, which the warp's NCHW float32 tiles are not; at 4
    channels both take the same bytes, so only the layout can tell (the
    backend's layout slot): one line and exit code 2, before any step."""
    import h5py

    rng = np.random.default_rng(12)
    path = tmp_path / f"c{channels}.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = rng.integers(0, 255, (3, channels, 72, 72)).astype(np.uint8)
        f["label"] = rng.integers(0, 2, (3, 72, 72)).astype(np.uint8)
    args = [UNET, "train", "--data", str(path), "--in-channels", str(channels), "--filters", "4,8", "--tile", "44",
            "--classes", "2", "--batch", "1", "--steps", "1", "--device", "cuda", "--precision", "bf16",
            "--augment", "flip,rot90", "--augment-device", "cuda", "--save", str(tmp_path / "c.safetensors")]
    r = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600)
    if "precision bf16 needs a GPU" in r.stderr:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "--augment-device cuda writes its tiles as NCHW float32, but --precision bf16 keeps the images NHWC " \
           "bfloat16" in line and "use --augment-device cpu" in line, r.stderr
