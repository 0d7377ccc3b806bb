"""The non-finite guard of the CUDA backend's update pass (cuda_guard in
src/kernels/cuda/backend.cu, the twin of the CPU's cpu_guard): one reduction
over the gradients and the batch norm statistics before the update, its
verdict in device memory, so that a replayed CUDA graph drops a NaN step with
no host check. A NaN is put into the batch of a replayed step
(UNET_TEST_NAN_STEP, src/host/train/test_hooks.h):

- skip: the step changes nothing (weights, optimizer state and batch norm
  statistics are those of the step before), replayed and eager alike, bit
  for bit, and the count is in the log;
- stop: the host learns of it when it next reads the device (a logged step,
  or before a checkpoint), names the step the device recorded, and writes
  nothing after it.

Skips where no GPU is listed by nvidia-smi and where the build has no CUDA
backend."""
import json
import os
import struct
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from unet_testlib import BUILD, read_safetensors, requires_gpu, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")
OPTIMTEST = os.path.join(BUILD, "unet_optimtest")

pytestmark = requires_gpu("the CUDA update pass's non-finite guard runs on a GPU machine")

# 3 eager steps, the capture at step 4, replays after: the NaN of step 6 is in a replayed step
ARGS = ["--model", "unetpp", "--filters", "8,16,32", "--padding", "same", "--tile", "64", "--classes", "1",
        "--deep-supervision", "--norm", "batch", "--optimizer", "adam", "--lr", "3e-3", "--batch", "2",
        "--device", "cuda", "--precision", "fp32", "--seed", "3", "--steps", "10"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("guard")
    write_discs(d / "train.h5", np.random.default_rng(5), 6, 96, 8, (4, 12), 8)
    return d


def train(data, out, *extra, nan_step=None, check=True):
    out.mkdir(parents=True, exist_ok=True)
    env = single_process_env(**({"UNET_TEST_NAN_STEP": nan_step} if nan_step else {}))
    r = subprocess.run([UNET, "train", "--data", str(data / "train.h5"), *ARGS, "--save", str(out / "c.safetensors"),
                        "--log", str(out / "m.jsonl"), *map(str, extra)], capture_output=True, text=True, env=env,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def weights(path):
    """Parameters, statistics and optimizer state, without the step counters batch norm keeps."""
    return {k: raw for k, (_, raw) in read_safetensors(path)[0].items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("graph", ["auto", "off"])
def test_skip_drops_a_replayed_step_on_the_device(data, tmp_path, graph):
    before = tmp_path / "before"
    train(data, before, "--stop-after", 5, "--cuda-graph", graph, "--log-every", 1)
    dropped = tmp_path / "dropped"
    r = train(data, dropped, "--stop-after", 6, "--cuda-graph", graph, "--log-every", 1, "--on-nonfinite", "skip",
              nan_step=6)
    if graph == "auto":
        assert "captured" in r.stdout
    assert "step 6:" in r.stdout and "its update was dropped" in r.stdout
    assert weights(dropped / "c.safetensors") == weights(before / "c.safetensors")
    assert read_safetensors(dropped / "c.safetensors")[1]["unet.skipped_steps"] == "1"
    logged = [json.loads(x) for x in open(dropped / "m.jsonl")]
    assert [x["skipped_steps"] for x in logged] == [0, 0, 0, 0, 0, 1]


def test_skip_gives_the_same_bits_replayed_and_eager_when_logged_sparsely(data, tmp_path):
    """Logged every 4 steps, the replayed run learns of the NaN step later than the eager one, and trains the
    same bits: the device dropped the step on its own."""
    runs = {}
    for graph in ("auto", "off"):
        out = tmp_path / graph
        train(data, out, "--cuda-graph", graph, "--log-every", 4, "--on-nonfinite", "skip", nan_step=6)
        runs[graph] = weights(out / "c.safetensors")
        assert [json.loads(x)["skipped_steps"] for x in open(out / "m.jsonl")] == [0, 1, 1]
    assert runs["auto"] == runs["off"]


def test_stop_is_found_before_the_next_checkpoint_and_writes_nothing_after(data, tmp_path):
    out = tmp_path / "run"
    r = train(data, out, "--log-every", 7, "--save-every", 2, nan_step=5, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "captured" in r.stdout
    line = r.stderr.strip().splitlines()[-1]
    assert "step 5 is not finite" in line and "found before writing" in line
    assert f"the last good checkpoint is {out / 'c.step4.safetensors'}" in line
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == \
        ["c.step2.safetensors", "c.step4.safetensors"]


# ---- the guard pass against its CPU twin --------------------------------------------------------------------------

def run_guarded(backend, optimizer, policy, p0, grads, states, offset=0, **hp):
    with tempfile.TemporaryDirectory() as d:
        p0.astype(np.float32).tofile(os.path.join(d, "param.bin"))
        grads.astype(np.float32).tofile(os.path.join(d, "grads.bin"))
        states.astype(np.float32).tofile(os.path.join(d, "states.bin"))
        cmd = [OPTIMTEST, "--backend", backend, "--optimizer", optimizer, "--dir", d, "--n", str(p0.size),
               "--steps", str(grads.shape[0]), "--offset", str(offset), "--guard", policy,
               "--state", str(states.shape[1])]
        for k, v in hp.items():
            cmd += ["--" + k, repr(float(v))]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        out = {name: np.fromfile(os.path.join(d, f"{name}.bin"), np.float32)
               for name in ("param.out", "state_a", "state.out")}
        raw = open(os.path.join(d, "guard.bin"), "rb").read()
        # unet_update_guard: skip_policy, found, latched, unused (int32); bad_steps, first_bad, last_bad (int64)
        out["guard"] = struct.unpack("<iiiiqqq", raw)
        return out


@pytest.mark.parametrize("policy", ["skip", "stop"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("offset", [0, 1])
def test_guard_pass_twins(policy, optimizer, offset):
    """A NaN gradient at step 2 and an infinite statistic at step 4 of 7: the CUDA pass and the CPU pass give the
    same bits (parameters, optimizer state, statistics, the guard's record); skip drops those two steps alone
    (SGD: torch.optim over the other five), stop every step from step 2 on."""
    g = np.random.default_rng(41 + offset)
    n, m, steps = 4099, 37, 7
    p0 = g.standard_normal(n).astype(np.float32)
    grads = g.standard_normal((steps, n)).astype(np.float32)
    states = g.standard_normal((steps, m)).astype(np.float32)
    grads[1, 123] = np.nan
    states[3, 5] = np.inf
    hp = dict(lr=0.05, momentum=0.9) if optimizer == "sgd" else dict(lr=1e-2)
    cu = run_guarded("cuda", optimizer, policy, p0, grads, states, offset, **hp)
    cpu = run_guarded("cpu", optimizer, policy, p0, grads, states, offset, **hp)
    for key in ("param.out", "state_a", "state.out"):
        assert cu[key].tobytes() == cpu[key].tobytes(), f"{optimizer} {policy} {key}"
    assert cu["guard"] == cpu["guard"]
    skip = policy == "skip"
    assert cu["guard"] == (int(skip), 0, int(not skip), 0, 2, 2, 4)
    kept = [0, 2, 4, 5, 6] if skip else [0]
    assert cu["state.out"].tobytes() == states[kept[-1]].tobytes()
    if optimizer == "sgd":
        p = torch.tensor(p0, requires_grad=True)
        opt = torch.optim.SGD([p], lr=hp["lr"], momentum=hp["momentum"])
        for s in kept:
            p.grad = torch.tensor(grads[s])
            opt.step()
        np.testing.assert_allclose(cu["param.out"], p.detach().numpy(), rtol=1e-5, atol=1e-6)
