"""How the CUDA backend meets the cuDNN it finds (src/kernels/cuda/cudnn_graph.c):
the runtime's version, checked when the backend starts (the headers' major
version, at least UNET_CUDNN_MIN_VERSION), so that an old cuDNN is one line
naming the versions found and needed instead of a later "no engine".

Under the CPU emulation (tests/emu) UNET_CUDA_EMU_CUDNN_VERSION sets the
version cudnnGetVersion answers: those cases run under the emulation only."""
import os
import subprocess

import pytest

from unet_testlib import BUILD, cuda_emulated, requires_gpu, rng, single_process_env, write_discs

UNET = os.path.join(BUILD, "unet")

pytestmark = requires_gpu("the cuDNN engine and version checks run on a GPU machine")
emulated_only = pytest.mark.skipif(not cuda_emulated(), reason="plays other cuDNNs through the CPU emulation's "
                                   "UNET_CUDA_EMU_CUDNN_* variables")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_discs(tmp_path_factory.mktemp("engines") / "train.h5", rng(7), 3, 64, 5, (3, 8), 6)


def train(data, tmp_path, *extra, **environ):
    args = [UNET, "train", "--data", str(data), "--filters", "4,8", "--tile", "44", "--batch", "1", "--steps", "2",
            "--device", "cuda", "--precision", "fp32", "--val-every", "0", "--save", str(tmp_path / "c.safetensors"),
            *extra]
    return subprocess.run(args, capture_output=True, text=True, env=single_process_env(**environ), timeout=600)


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
