"""Data-parallel training on the CPU (MPI), the launch variables and the
rendezvous.

The contract: `mpirun -np W unet train --batch B` trains exactly like one
process with --batch W*B (same samples, the mean of the ranks' gradients is
the gradient of the global batch), to float tolerance; rank 0 alone writes;
--resume continues every rank; a stop signal seen by one rank stops all at
the same step; a rank that hangs makes the others give up with a message."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from unet_testlib import BUILD, free_port, safetensors_f32, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")
DISTTEST = os.path.join(BUILD, "unet_disttest")
MPIRUN = shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (apt-get install openmpi-bin libopenmpi-dev)")

def clean_env(**extra):
    """No launcher's variables, one thread per rank (2 cores)."""
    return single_process_env(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, **extra)


def mpirun(n, *args, env=None, timeout=120, **kw):
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(n),
           "-x", "OMP_NUM_THREADS=1", "-x", "OPENBLAS_NUM_THREADS=1", UNET, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or clean_env(), timeout=timeout, **kw)


def single(*args, env=None, timeout=120):
    return subprocess.run([UNET, *args], capture_output=True, text=True, env=env or clean_env(), timeout=timeout)


def read_st(path):
    """The F32 tensors of a checkpoint by name, and its metadata."""
    return safetensors_f32(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight 48x48 images of blobs and a validation file of three."""
    d = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(5)
    for name, n in (("train.h5", 8), ("val.h5", 3)):
        write_discs(d / name, rng, n, 48, 4, (4, 9), 8)
    return d


def train_args(data, out, *extra):
    return ["train", "--data", str(data / "train.h5"), "--val", str(data / "val.h5"), "--tile", "32",
            "--padding", "same", "--filters", "4,8,16", "--device", "cpu", "--threads", "1", "--log-every", "1",
            "--val-every", "3", "--save", str(out / "c.safetensors"), "--log", str(out / "m.jsonl"), *extra]


def max_rel_diff(a, b):
    """Largest difference relative to each tensor's size; tensors that stay
    near zero (the bias before a batch norm, whose gradient is zero up to
    rounding) are measured against 1e-3."""
    worst = 0.0
    for k in a:
        scale = max(np.abs(a[k]).max(), 1e-3)
        worst = max(worst, float(np.abs(a[k] - b[k]).max() / scale))
    return worst


def log_lines(path):
    return [json.loads(line) for line in open(path)]


CASES = {
    # U-Net, SGD with momentum, shuffled, small buckets (many allreduces overlapping the backward)
    "unet": ["--model", "unet", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--bucket-mb", "0.005"],
    # dropout: the ranks draw the slices of the single-process batch's masks
    "unet_dropout": ["--model", "unet", "--dropout", "0.5", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"],
    # UNet++ with deep supervision, one sigmoid class (BCE + Dice: the Dice is a mean over samples), Adam, in order
    "unetpp_ds": ["--model", "unetpp", "--deep-supervision", "--classes", "1", "--optimizer", "adam", "--lr", "3e-3",
                  "--no-shuffle"],
    # batch norm statistics over the global batch (SGD: the bias before a batch norm has a zero gradient up to
    # rounding, which Adam would blow up to full-size steps of noise)
    "unet_sync_bn": ["--model", "unet", "--norm", "batch", "--sync-bn", "--optimizer", "sgd", "--lr", "0.05",
                     "--momentum", "0.9", "--bucket-mb", "0.01"],
}


@needs_mpi
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_train_like_one_process_of_twice_the_batch(data, tmp_path, case):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    steps = ["--steps", "5"]
    r1 = single(*train_args(data, one, "--batch", "4", *steps, *CASES[case]))
    assert r1.returncode == 0, r1.stderr
    r2 = mpirun(2, *train_args(data, two, "--batch", "2", *steps, *CASES[case]))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    w1, _ = read_st(one / "c.safetensors")
    w2, meta = read_st(two / "c.safetensors")
    assert sorted(w1) == sorted(w2)
    diff = max_rel_diff(w1, w2)
    assert diff < 2e-5, f"{case}: weights of 2 ranks x batch 2 differ from 1 x batch 4 by {diff:.2e}"
    # the logged loss is the global batch's, and the validation is the whole set's
    l1, l2 = log_lines(one / "m.jsonl"), log_lines(two / "m.jsonl")
    assert [x["step"] for x in l1] == [x["step"] for x in l2]
    for a, b in zip(l1, l2):
        for k in ("loss", "val_iou", "val_dice", "val_pixel_accuracy"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a, b)
    assert all(x.get("world") == 2 for x in l2 if "loss" in x)
    # every rank says where it is, once
    for rank in (0, 1):
        assert r2.stdout.count(f"rank {rank} of 2 (local rank {rank})") == 1, r2.stdout


@needs_mpi
def test_rank_zero_alone_writes_and_talks(data, tmp_path):
    r = mpirun(2, *train_args(data, tmp_path, "--batch", "2", "--steps", "3"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("saved ") == 1 and r.stdout.count("unet train") == 1, r.stdout
    assert r.stdout.count("validation at step 3") == 1
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "m.jsonl"]  # no temporary files left behind
    lines = log_lines(tmp_path / "m.jsonl")
    assert [x["step"] for x in lines] == [1, 2, 3, 3]  # one writer: no line twice


@needs_mpi
def test_resume_continues_every_rank(data, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    opts = ["--batch", "2", "--optimizer", "adam", "--lr", "3e-3", "--norm", "batch"]
    assert mpirun(2, *train_args(data, whole, "--steps", "6", *opts)).returncode == 0
    r = mpirun(2, *train_args(data, part, "--steps", "3", *opts))
    assert r.returncode == 0, r.stderr
    r = mpirun(2, *train_args(data, part, "--steps", "6", "--resume", str(part / "c.safetensors"), *opts))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    a, _ = read_st(whole / "c.safetensors")
    b, meta = read_st(part / "c.safetensors")
    assert meta["unet.step"] == "6"
    # same ranks, same reductions: the same bits as the unbroken run
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def rank_pids(launcher_pid):
    """The unet processes below a launcher (mpirun -> unet), by walking /proc."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    found, todo = [], [launcher_pid]
    while todo:
        for c in children.get(todo.pop(), []):
            try:
                if open(f"/proc/{c}/comm").read().strip() == "unet":
                    found.append(c)
            except OSError:
                pass
            todo.append(c)
    return sorted(found)


def wait_for_log(path, steps, proc, limit=60):
    t = time.time()
    while time.time() - t < limit:
        if proc.poll() is not None:
            return False
        if os.path.exists(path) and sum(1 for line in open(path) if '"loss"' in line) >= steps:
            return True
        time.sleep(0.05)
    return False


@needs_mpi
def test_a_signal_to_one_rank_stops_all_at_the_same_step_and_resume_finishes(data, tmp_path):
    log = tmp_path / "m.jsonl"
    args = train_args(data, tmp_path, "--batch", "2", "--steps", "100000", "--val-every", "0")
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2", UNET, *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert wait_for_log(log, 3, p), "the run did not start"
        pids = rank_pids(p.pid)
        assert len(pids) == 2, pids
        os.kill(pids[-1], signal.SIGUSR1)  # one rank only, as a scheduler's signal may arrive unevenly
        out, errs = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, errs
    assert "stopped by signal" in errs and errs.count("checkpoint") == 1, errs
    _, meta = read_st(tmp_path / "c.safetensors")
    stopped = int(meta["unet.step"])
    assert 3 <= stopped < 100000
    r = mpirun(2, *train_args(data, tmp_path, "--batch", "2", "--steps", str(stopped + 2), "--val-every", "0",
                              "--resume", str(tmp_path / "c.safetensors")))
    assert r.returncode == 0, r.stderr
    _, meta = read_st(tmp_path / "c.safetensors")
    assert meta["unet.step"] == str(stopped + 2)


@needs_mpi
def test_a_hung_rank_makes_the_others_give_up_with_a_message(data, tmp_path):
    log = tmp_path / "m.jsonl"
    args = train_args(data, tmp_path, "--batch", "2", "--steps", "100000", "--val-every", "0", "--dist-timeout", "2")
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2", UNET, *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert wait_for_log(log, 2, p), "the run did not start"
        pids = rank_pids(p.pid)
        os.kill(pids[-1], signal.SIGSTOP)  # hangs without dying
        t = time.time()
        out, errs = p.communicate(timeout=60)
        waited = time.time() - t
    finally:
        if p.poll() is None:
            p.kill()
        for pid in rank_pids(p.pid):
            os.kill(pid, signal.SIGKILL)
    assert p.returncode != 0
    assert "waited 2 s for the other ranks" in errs and "died or hangs" in errs, errs
    assert waited < 30


@needs_mpi
def test_dist_none_with_a_world_is_refused(data, tmp_path):
    r = single(*train_args(data, tmp_path, "--steps", "1", "--dist", "none"),
               env=clean_env(RANK=0, WORLD_SIZE=2, LOCAL_RANK=0))
    assert r.returncode == 2
    assert "every rank would train alone" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_nccl_on_the_cpu_is_refused_with_one_line(data, tmp_path):
    r = single(*train_args(data, tmp_path, "--steps", "1", "--dist", "nccl"))
    assert r.returncode == 2
    assert "--dist nccl needs the CUDA backend" in r.stderr


# ---- launch variables -------------------------------------------------------------------

def place(*flags, **env):
    r = subprocess.run([DISTTEST, "place", *map(str, flags)], capture_output=True, text=True, env=clean_env(**env))
    return r.stdout.strip() if r.returncode == 0 else "error: " + r.stderr.strip()


def test_place_from_the_launchers_variables_in_order():
    assert place() == "rank 0 world 1 local 0 source single"
    slurm = dict(SLURM_PROCID=3, SLURM_NTASKS=8, SLURM_LOCALID=1, SLURM_STEP_ID=0)
    torchrun = dict(RANK=5, WORLD_SIZE=6, LOCAL_RANK=2)
    ompi = dict(OMPI_COMM_WORLD_RANK=1, OMPI_COMM_WORLD_SIZE=4, OMPI_COMM_WORLD_LOCAL_RANK=1)
    assert place(**slurm, **torchrun) == "rank 3 world 8 local 1 source slurm"
    assert place(**torchrun, **ompi) == "rank 5 world 6 local 2 source env"
    assert place(**ompi) == "rank 1 world 4 local 1 source openmpi"
    # a batch script (no job step) is one process, whatever the allocation's task count
    assert place(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_LOCALID=0) == "rank 0 world 1 local 0 source single"
    # mpirun inside an allocation: its ranks inherit the allocation's SLURM_PROCID; Open MPI's numbers hold
    assert place(**slurm, **ompi) == "rank 1 world 4 local 1 source openmpi"
    # flags override
    assert place(2, -1, -1, **torchrun) == "rank 2 world 6 local 2 source flags"
    assert place(1, 2, -1) == "rank 1 world 2 local 1 source flags"
    assert place(0, 2, 7) == "rank 0 world 2 local 7 source flags"
    assert place(4, 2, -1).startswith("error: rank 4 of a world of 2")
    assert place(RANK="x", WORLD_SIZE=2).startswith("error: RANK is 'x'")


def test_master_address_and_port_from_slurm():
    def master(**env):
        return subprocess.run([DISTTEST, "master"], capture_output=True, text=True,
                              env=clean_env(**env)).stdout.split()
    assert master() == ["127.0.0.1", "29500", ".unet-rendezvous-port29500"]
    assert master(MASTER_ADDR="n1", MASTER_PORT=1234)[:2] == ["n1", "1234"]
    got = master(SLURM_JOB_NODELIST="gpu[007-009,012],cpu3", SLURM_JOB_ID=123456, SLURM_RESTART_COUNT=2)
    assert got == ["gpu007", str(15000 + 123456 % 20000), ".unet-rendezvous-123456-2"]
    assert master(SLURM_NODELIST="solo", SLURM_JOB_ID=7)[0] == "solo"
    assert master(UNET_RENDEZVOUS_FILE="/shared/x")[2] == "/shared/x"


# ---- rendezvous --------------------------------------------------------------------------

def rendezvous(mode, world, path, seed, rank0_delay=0.3, timeout=20):
    port = free_port()
    procs = []
    # the others first: rank 0 starting last is the usual race
    for rank in list(range(1, world)) + [0]:
        if rank == 0:
            time.sleep(rank0_delay)
        procs.append(subprocess.Popen([DISTTEST, "rendezvous", mode, str(rank), str(world), str(port), str(path),
                                       str(timeout), str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=clean_env()))
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    return results


@pytest.mark.parametrize("mode", ["tcp", "file", "both"])
def test_rendezvous_brings_rank_zeros_bytes_to_every_rank(tmp_path, mode):
    path = tmp_path / "rdv"
    results = rendezvous(mode, 4, path, seed=11)
    assert all(rc == 0 for _, _, rc in results), results
    blobs = {out.split()[-1] for out, _, _ in results}
    assert len(blobs) == 1 and len(blobs.pop()) == 256, results
    # rank 0 cleans up the shared file and the acknowledgements once everybody has them
    assert os.listdir(tmp_path) == []


def test_rendezvous_without_rank_zero_times_out_with_a_message(tmp_path):
    r = subprocess.run([DISTTEST, "rendezvous", "both", "1", "2", str(free_port()), str(tmp_path / "rdv"), "1", "1"],
                       capture_output=True, text=True, env=clean_env(), timeout=30)
    assert r.returncode == 1
    assert "heard nothing from rank 0" in r.stderr and "within 1 s" in r.stderr, r.stderr


def test_rendezvous_refuses_a_different_world_size(tmp_path):
    port = free_port()
    p0 = subprocess.Popen([DISTTEST, "rendezvous", "tcp", "0", "3", str(port), "-", "5", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    r = subprocess.run([DISTTEST, "rendezvous", "tcp", "1", "2", str(port), "-", "5", "1"], capture_output=True,
                       text=True, env=clean_env(), timeout=30)
    p0.kill()
    p0.communicate()
    assert r.returncode == 1
    assert "world of 2, rank 0 with 3" in r.stderr, r.stderr


def test_rendezvous_file_of_another_world_is_refused(tmp_path):
    path = tmp_path / "rdv"
    port = free_port()
    p0 = subprocess.Popen([DISTTEST, "rendezvous", "file", "0", "3", str(port), str(path), "5", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    time.sleep(0.3)
    r = subprocess.run([DISTTEST, "rendezvous", "file", "1", "2", str(port), str(path), "5", "1"],
                       capture_output=True, text=True, env=clean_env(), timeout=30)
    p0.kill()
    p0.communicate()
    assert r.returncode == 1 and "is for a world of 3" in r.stderr, r.stderr
