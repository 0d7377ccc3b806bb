"""How the CUDA backend meets the cuDNN it finds (src/kernels/cuda/cudnn_graph.c):
the runtime's version, checked when the backend starts, and the rules an
engine must pass, bent step by step for a convolution that must run:

  as asked           fp32: no tensor cores (TF32), no FFT or Winograd; no
                     nondeterministic engine unless --fast-nondeterministic;
  FFT/Winograd       fp32 also takes FFT and Winograd (float32 arithmetic,
                     deterministic);
  nondeterministic   also engines whose sums change order between runs: said
                     on stderr, and the run's device line says it is not
                     deterministic;
  nothing left       one failure naming the rules and each refusal.

On a GPU the cuDNN found decides which branch a convolution takes; under the
CPU emulation (tests/emu) UNET_CUDA_EMU_CUDNN_ENGINES chooses the engines the
heuristics offer and UNET_CUDA_EMU_CUDNN_VERSION the version cudnnGetVersion
answers, so that every branch is taken here: those cases run under the
emulation only. UNET_CUDNN_LOG=1 shows, per graph, the engines offered, the
one taken with its notes and rules, and the plan's build time."""
import os
import re
import subprocess

import numpy as np
import pytest

from unet_testlib import (BUILD, assert_close, cuda_emulated, requires_gpu, rng, run_op, single_process_env,
                          write_discs)

UNET = os.path.join(BUILD, "unet")
FP32_TOL = 1e-5

pytestmark = requires_gpu("the cuDNN engine and version checks run on a GPU machine")
emulated_only = pytest.mark.skipif(not cuda_emulated(), reason="plays other cuDNNs through the CPU emulation's "
                                   "UNET_CUDA_EMU_CUDNN_* variables")


@pytest.fixture
def cudnn(monkeypatch):
    """Sets the emulated cuDNN's engines (and version) for the ops run in a test, with the log on."""
    monkeypatch.setenv("UNET_CUDNN_LOG", "1")

    def play(engines="", version=""):
        monkeypatch.setenv("UNET_CUDA_EMU_CUDNN_ENGINES", engines)
        monkeypatch.setenv("UNET_CUDA_EMU_CUDNN_VERSION", version)
    play()
    return play


def conv_case(seed):
    g = rng(seed)
    n, c, o, h, w = 2, 3, 5, 9, 8
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (g.standard_normal((o, c, 3, 3)) / np.sqrt(c * 9)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    dout = g.standard_normal((n, o, h, w)).astype(np.float32)
    return x, wt, b, dout, (n, o, h, w)


def conv(backend, x, wt, b, dout, out_shape, backward=True):
    return run_op("conv", [x], out_shape, {"k": 3, "pad": 1, "relu": 1, "out_c": out_shape[1]}, params=[wt, b],
                  dout=dout, backward=backward, backend=backend, training=1 if backward else 0)


def assert_matches_cpu(r, cpu, backward=True):
    assert_close(r["out"], cpu["out"], FP32_TOL, "out")
    if backward:
        assert_close(r["din"][0], cpu["din"][0], FP32_TOL, "din")
        assert_close(r["dparam"][0], cpu["dparam"][0], FP32_TOL, "dweight")
        assert_close(r["dparam"][1], cpu["dparam"][1], FP32_TOL, "dbias")


def chosen(stderr):
    """(direction, engine, rules) of every plan built, from the UNET_CUDNN_LOG lines."""
    return re.findall(r"unet cudnn: convolution ([a-z-]+)[^>]*-> engine (\d+) \[[^]]*\] \(rules ([^)]*)\)", stderr)


NONDETERMINISTIC_LINE = "no deterministic cuDNN engine runs"


def test_every_plan_found_as_asked_says_so(cudnn):
    x, wt, b, dout, shape = conv_case(1)
    r = conv("cuda", x, wt, b, dout, shape)
    assert_matches_cpu(r, conv("cpu", x, wt, b, dout, shape))
    plans = chosen(r["stderr"])
    assert {d for d, _, _ in plans} >= {"forward", "backward-data", "backward-filter"}, r["stderr"]
    assert all(rules == "as asked" for _, _, rules in plans), r["stderr"]
    assert "plan built in" in r["stderr"] and "offered A:" in r["stderr"]
    assert NONDETERMINISTIC_LINE not in r["stderr"]


@emulated_only
def test_fp32_takes_a_deterministic_fft_engine_when_nothing_passes_as_asked(cudnn):
    # offered: FFT (forward only) and the nondeterministic engine; fp32 rejects FFT as asked
    cudnn(engines="3,1")
    x, wt, b, dout, shape = conv_case(2)
    r = conv("cuda", x, wt, b, dout, shape, backward=False)
    assert_matches_cpu(r, conv("cpu", x, wt, b, dout, shape, backward=False), backward=False)
    assert chosen(r["stderr"]) == [("forward", "3", "bent to allow FFT/Winograd under fp32")], r["stderr"]
    assert NONDETERMINISTIC_LINE not in r["stderr"]


@emulated_only
def test_a_nondeterministic_engine_runs_what_no_deterministic_one_does_and_says_so(cudnn):
    cudnn(engines="1")
    x, wt, b, dout, shape = conv_case(3)
    r = conv("cuda", x, wt, b, dout, shape)
    assert_matches_cpu(r, conv("cpu", x, wt, b, dout, shape))
    plans = chosen(r["stderr"])
    assert plans and all((e, rules) == ("1", "bent to allow nondeterministic engines") for _, e, rules in plans)
    # one line per such convolution, whether or not the log is on
    said = [line for line in r["stderr"].splitlines() if NONDETERMINISTIC_LINE in line]
    assert len(said) == len(plans), r["stderr"]


@emulated_only
def test_nothing_left_fails_naming_each_refusal(cudnn):
    cudnn(engines="0")  # tensor cores only: TF32, which fp32 never takes
    x, wt, b, dout, shape = conv_case(4)
    with pytest.raises(RuntimeError) as e:
        conv("cuda", x, wt, b, dout, shape)
    msg = str(e.value)
    assert "no cuDNN engine runs convolution forward" in msg, msg
    assert "under the rules bent to allow nondeterministic engines" in msg and "tensor cores (TF32) under fp32" in msg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_discs(tmp_path_factory.mktemp("engines") / "train.h5", rng(7), 3, 64, 5, (3, 8), 6)


def train(data, tmp_path, *extra, **environ):
    args = [UNET, "train", "--data", str(data), "--filters", "4,8", "--tile", "44", "--batch", "1", "--steps", "2",
            "--device", "cuda", "--precision", "fp32", "--val-every", "0", "--save", str(tmp_path / "c.safetensors"),
            *extra]
    return subprocess.run(args, capture_output=True, text=True, env=single_process_env(**environ), timeout=600)


def device_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("device: "))


@emulated_only
def test_a_run_with_a_nondeterministic_engine_says_so_on_its_device_line(data, tmp_path):
    r = train(data, tmp_path, UNET_CUDA_EMU_CUDNN_ENGINES="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not deterministic: " in device_line(r.stdout), r.stdout
    assert NONDETERMINISTIC_LINE in r.stderr
    # asked for: nothing to say
    r = train(data, tmp_path, "--fast-nondeterministic", UNET_CUDA_EMU_CUDNN_ENGINES="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not deterministic" not in device_line(r.stdout) and NONDETERMINISTIC_LINE not in r.stderr


def test_a_deterministic_run_says_nothing_of_nondeterminism(data, tmp_path):
    r = train(data, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not deterministic" not in device_line(r.stdout) and NONDETERMINISTIC_LINE not in r.stderr


@emulated_only
@pytest.mark.parametrize("version,accepted", [(90000, True), (91000, True), (8907, False), (100000, False)])
def test_the_cudnn_runtime_version_is_checked_at_start(data, tmp_path, version, accepted):
    r = train(data, tmp_path, UNET_CUDA_EMU_CUDNN_VERSION=str(version))
    if accepted:
        assert r.returncode == 0, r.stdout + r.stderr
        return
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    found = f"{version // 1000}.{version // 100 % 10}.{version % 100}" if version < 10000 else \
        f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    assert f"cuDNN {found} is loaded, but this unet needs cuDNN 9.x from 9.0.0 on" in lines[-1], r.stderr
    assert "no cuDNN engine" not in r.stderr
