"""The NCCL face of data-parallel training on one GPU.

NCCL refuses two ranks on one GPU, so the multi-rank path is exercised by the
same code the MPI tests cover (tests/cpu/test_dist.py: bucketing, the
backward hook, reductions, rank-0 writes); here: NCCL with one rank trains
exactly like no communicator, a dead peer (played by the CPU emulation's
NCCL) ends the rank with a message, at once when NCCL reports it and after
--dist-timeout when it hangs, and the cost of the gradient allreduce per
step is measured and printed (run with -s to see it):

    UNET_BUILD=build python3 -m pytest -s tests/gpu/test_dist_nccl.py
"""
import json
import os
import subprocess
import time

import numpy as np
import pytest

from unet_testlib import BUILD, cuda_emulated, requires_gpu, safetensors_f32, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")
# The measured model: under the CPU emulation of CUDA (tests/emu) a small U-Net, whose naive convolutions take
# seconds where the 64..1024 one would take hours, and whose times are no GPU's anyway.
COST_CASE = (dict(filters="8,16,32,64", tile="124", steps="8") if cuda_emulated()
             else dict(filters="64,128,256,512,1024", tile="188", steps="30"))


pytestmark = requires_gpu("the NCCL test runs on a GPU machine")

def env():
    return single_process_env()


def read_st(path):
    return safetensors_f32(path)[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("nccl")
    return write_discs(d / "train.h5", np.random.default_rng(9), 8, 128, 10, (5, 14), 10)


def train(data, out, *extra, filters="16,32,64,128", tile="124", steps="6"):
    args = [UNET, "train", "--data", str(data), "--filters", filters, "--tile", tile, "--batch", "4",
            "--steps", steps, "--device", "cuda", "--precision", "fp32", "--optimizer", "adam", "--lr", "1e-3",
            "--log-every", "1", "--val-every", "0", "--save", str(out / "c.safetensors"), "--log",
            str(out / "m.jsonl"), *extra]
    r = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, [json.loads(x) for x in open(out / "m.jsonl")]


def test_nccl_with_one_rank_trains_like_no_communicator(data, tmp_path):
    plain, nccl = tmp_path / "plain", tmp_path / "nccl"
    plain.mkdir(), nccl.mkdir()
    _, l1 = train(data, plain, "--dist", "none")
    r, l2 = train(data, nccl, "--dist", "nccl", "--bucket-mb", "0.25")  # several buckets, overlapped
    assert "rank 0 of 1 (local rank 0)" in r.stdout and "nccl" in r.stdout, r.stdout
    a, b = read_st(plain / "c.safetensors"), read_st(nccl / "c.safetensors")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6 * max(1.0, float(np.abs(a[k]).max())), err_msg=k)
    assert [x["loss"] for x in l2] == pytest.approx([x["loss"] for x in l1], rel=1e-6)


def test_allreduce_cost_per_step(data, tmp_path):
    """Exposed allreduce time per step: with many buckets overlapping the
    backward, and with one bucket after it (the whole allreduce exposed)."""
    report = {}
    for name, bucket in (("overlapped_25MiB", "25"), ("overlapped_1MiB", "1"), ("one_bucket", "65536")):
        out = tmp_path / name
        out.mkdir()
        _, lines = train(data, out, "--dist", "nccl", "--bucket-mb", bucket, **COST_CASE)
        steady = lines[5:]
        step_s = np.median([4 / x["images_per_s"] for x in steady])
        wait_s = np.median([x["comm_wait_s"] for x in steady])
        report[name] = {"step_ms": round(step_s * 1e3, 3), "allreduce_wait_ms": round(wait_s * 1e3, 3),
                        "share": round(wait_s / step_s, 4)}
    print(f"\nNCCL, 1 rank, U-Net {COST_CASE['filters']}, batch 4, tile {COST_CASE['tile']}"
          f"{' (emulated: not a GPU time)' if cuda_emulated() else ''}:", json.dumps(report, indent=1))
    for r in report.values():
        assert 0 <= r["share"] < 1


def failing_run(data, out, fault, *extra):
    """A --dist nccl run whose emulated NCCL plays a dead peer (tests/emu: UNET_CUDA_EMU_NCCL_FAULT)."""
    args = [UNET, "train", "--data", str(data), "--filters", "4,8", "--tile", "44", "--batch", "2", "--steps", "50",
            "--device", "cuda", "--precision", "fp32", "--val-every", "0", "--dist", "nccl",
            "--save", str(out / "c.safetensors"), *extra]
    t = time.time()
    r = subprocess.run(args, capture_output=True, text=True, env=single_process_env(UNET_CUDA_EMU_NCCL_FAULT=fault),
                       timeout=300)
    return r, time.time() - t


emulated_only = pytest.mark.skipif(not cuda_emulated(), reason="a dead peer is played by the CPU emulation's NCCL")


@emulated_only
def test_a_peer_reported_dead_ends_the_rank_at_once_with_a_message(data, tmp_path):
    """NCCL reports a peer's failure as the communicator's asynchronous error
    while the collective waits for it: the rank's wait sees it, aborts the
    communicator (which ends the peers' waits too) and ends the run, long
    before --dist-timeout."""
    r, took = failing_run(data, tmp_path, "error:3", "--dist-timeout", "600")
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "rank 0 of 1" in line and "in the gradient allreduce" in line, r.stderr
    assert "NCCL reports \"remote process exited or there was a network error\"" in line, line
    assert "the NCCL communicator is aborted" in line and took < 300


@emulated_only
def test_a_hung_collective_ends_the_rank_after_dist_timeout(data, tmp_path):
    """A peer that hangs reports nothing: the wait gives up after
    --dist-timeout, aborts the communicator and says so, where a blocking
    wait would wait for ever (the watchdog runs only with several ranks)."""
    r, _ = failing_run(data, tmp_path, "hang:3", "--dist-timeout", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "in the gradient allreduce: waited 2 s for the other ranks: one of them died or hangs" in line, r.stderr
    assert "the NCCL communicator is aborted" in line
