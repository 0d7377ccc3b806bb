"""Shared helpers for the Python tests: where the build is, running the op
driver (tests/tools/unet_optest.c) on numpy arrays, and comparing against
float64 PyTorch references."""
import os
import subprocess
import tempfile

import numpy as np

BUILD = os.environ.get("UNET_BUILD", os.path.join(os.path.dirname(__file__), "..", "build"))
SOURCE = os.environ.get("UNET_SOURCE", os.path.join(os.path.dirname(__file__), ".."))
UNET = os.path.join(BUILD, "unet")
OPTEST = os.path.join(BUILD, "unet_optest")


def run_op(op, inputs, out_shape, attrs=None, params=(), states=(), dout=None, backward=False,
           backend="cpu", din_init=None, training=1, seed=0, node_index=0):
    """Runs one op of a backend. inputs: numpy arrays (float32 or int32, 4-D);
    params, states: 1-D or N-D float arrays. Returns a dict with out, din
    (list, None where not computed), dparam (list), state (list), and the
    driver's stderr."""
    attrs = dict(attrs or {})
    with tempfile.TemporaryDirectory() as d:
        cmd = [OPTEST, "--backend", backend, "--op", op, "--dir", d, "--training", str(training),
               "--seed", str(seed), "--node-index", str(node_index),
               "--out", ",".join(str(int(x)) for x in out_shape)]
        for i, x in enumerate(inputs):
            x = np.ascontiguousarray(x)
            suffix = ":i32" if x.dtype == np.int32 else ""
            if x.dtype not in (np.float32, np.int32):
                raise TypeError("inputs must be float32 or int32")
            x.tofile(os.path.join(d, f"in{i}.bin"))
            cmd += ["--in", ",".join(str(s) for s in x.shape) + suffix]
        for j, p in enumerate(params):
            np.ascontiguousarray(p, dtype=np.float32).tofile(os.path.join(d, f"param{j}.bin"))
        for j, s in enumerate(states):
            np.ascontiguousarray(s, dtype=np.float32).tofile(os.path.join(d, f"state{j}.bin"))
        for k, v in attrs.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        if backward:
            cmd.append("--backward")
            if dout is not None:
                np.ascontiguousarray(dout, dtype=np.float32).tofile(os.path.join(d, "dout.bin"))
            if din_init is not None:
                cmd.append("--accumulate")
                for i, x in enumerate(din_init):
                    if x is not None:
                        np.ascontiguousarray(x, dtype=np.float32).tofile(os.path.join(d, f"din{i}.init.bin"))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")

        def load(name, shape):
            path = os.path.join(d, name)
            if not os.path.exists(path):
                return None
            return np.fromfile(path, dtype=np.float32).reshape(shape)

        res = {"out": load("out.bin", tuple(out_shape)), "stderr": r.stderr}
        res["din"] = [load(f"din{i}.bin", x.shape) for i, x in enumerate(inputs)]
        res["dparam"] = [load(f"dparam{j}.bin", np.shape(p)) for j, p in enumerate(params)]
        res["state"] = [load(f"state{j}.out.bin", np.shape(s)) for j, s in enumerate(states)]
        return res


def rel_err(a, ref):
    """||a - ref|| / ||ref||, with NaN anywhere in a counted as a failure."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf")
    denom = np.linalg.norm(ref.ravel())
    num = np.linalg.norm((a - ref).ravel())
    return num / denom if denom > 0 else num


def assert_close(a, ref, tol=1e-5, what=""):
    assert a is not None, f"{what}: not written"
    assert np.shape(a) == np.shape(ref), f"{what}: shape {np.shape(a)} != {np.shape(ref)}"
    e = rel_err(a, ref)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:g}"


def rng(seed):
    return np.random.default_rng(seed)


# Variables a launcher (Slurm, mpirun, torchrun) or a debug session sets:
# without them, a test's unet is one process, configured by its flags alone.
LAUNCH_VARS = ("SLURM_", "OMPI_", "PMIX_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "UNET_RENDEZVOUS",
               "UNET_CUDA_SYNC")


def single_process_env(**extra):
    """This environment without LAUNCH_VARS, plus extra (values as strings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_safetensors(path):
    """A safetensors file as ({name: (header entry, raw bytes)}, metadata)."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {k: (t, data[t["data_offsets"][0]:t["data_offsets"][1]]) for k, t in header.items()
               if k != "__metadata__"}
    return tensors, header.get("__metadata__", {})


def safetensors_f32(path):
    """The F32 tensors of a safetensors file as ({name: float32 array}, metadata)."""
    tensors, meta = read_safetensors(path)
    return {k: np.frombuffer(raw, np.float32).reshape(t["shape"]) for k, (t, raw) in tensors.items()
            if t["dtype"] == "F32"}, meta


def write_discs(path, rng, n, side, discs, radius, margin, weight=False):
    """An HDF5 training file of n side x side uint8 images of bright discs
    (label 1) on a noisy background: `discs` per image, radii uniform in
    `radius`, centres at least `margin` from the border; with weight, a
    random per-pixel weight map too. Draws from rng in that order."""
    import h5py

    yy, xx = np.mgrid[0:side, 0:side]
    label = np.zeros((n, side, side), np.uint8)
    for i in range(n):
        for _ in range(discs):
            cy, cx, r = rng.uniform(margin, side - margin), rng.uniform(margin, side - margin), rng.uniform(*radius)
            label[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    raw = np.clip(label * 120 + rng.normal(60, 25, label.shape), 0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = raw, label
        if weight:
            f["weight"] = rng.uniform(0.5, 2.0, label.shape).astype(np.float32)
    return path


def write_ellipses(path, n, size, seed, weight_seed):
    """An HDF5 file of n size x size images of datasets/make_ellipses.py
    (raw and label, drawn from seed) with a random per-pixel weight in
    [0.5, 1.5) drawn from weight_seed."""
    import sys

    import h5py

    sys.path.insert(0, os.path.join(SOURCE, "datasets"))
    import make_ellipses

    raw, label, _ = make_ellipses.make(n, size, seed=seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=raw)
        f.create_dataset("label", data=label)
        f.create_dataset("weight", data=np.random.default_rng(weight_seed).random(label.shape, np.float32) + 0.5)
    return path


def cuda_emulated():
    """The build under test runs --device cuda on the CPU emulation of CUDA
    (tests/emu, -DUNET_CUDA_EMU=ON), whose ctest entries set UNET_CUDA_EMULATED=1."""
    return os.environ.get("UNET_CUDA_EMULATED", "0") not in ("", "0")


def gpu_listed():
    """An NVIDIA GPU is listed by nvidia-smi, or the build emulates one
    (UNET_FORCE_GPU_TESTS=1 says yes regardless: a machine whose nvidia-smi
    is elsewhere)."""
    if cuda_emulated() or os.environ.get("UNET_FORCE_GPU_TESTS", "0") not in ("", "0"):
        return True
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def cuda_built():
    """This build has the CUDA backend: its CMake cache says UNET_CUDA=ON (as
    scripts/setup.sh reads it). A missing cache is an error, not a skip: BUILD
    is then not a build at all. An emulated build (tests/emu) has it too."""
    if cuda_emulated():
        return True
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        return any(line.strip() == "UNET_CUDA:BOOL=ON" for line in f)


def requires_gpu(what):
    """A pytestmark that skips a GPU test file, saying what it would have run:
    where no NVIDIA GPU is listed, or where the build has no CUDA backend."""
    import pytest
    if not gpu_listed():
        return pytest.mark.skipif(True, reason=f"no NVIDIA GPU here (nvidia-smi -L lists none): {what}")
    return pytest.mark.skipif(not cuda_built(),
                              reason=f"this build has no CUDA backend (configure with -DUNET_CUDA=ON): {what}")
