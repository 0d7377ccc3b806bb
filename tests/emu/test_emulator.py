"""The CUDA emulator itself (tests/emu/README.md), through its self-test
(tests/emu/selftest.cu, built as unet_emu_selftest in a -DUNET_CUDA_EMU=ON
build): shuffles and barriers give a block's sum, a captured graph replays
its kernel on what device memory holds then, bf16 rounds ties to even, and
what a GPU would punish (a barrier or a shuffle some threads skip, a write
past a block, a host pointer where a device one is due, an allocation while
capturing) is reported, never run through silently."""
import os
import subprocess

import pytest

from unet_testlib import BUILD

SELFTEST = os.path.join(BUILD, "unet_emu_selftest")

pytestmark = pytest.mark.skipif(not os.path.exists(SELFTEST), reason="not a -DUNET_CUDA_EMU=ON build")


def run(mode):
    return subprocess.run([SELFTEST, mode], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", ["reduce", "replay", "bf16"])
def test_runs_as_cuda_does(mode):
    r = run(mode)
    assert r.returncode == 0, r.stdout + r.stderr


def test_capture_replays_device_values():
    assert "after capture 0" in run("replay").stdout and "after two replays 6" in run("replay").stdout


@pytest.mark.parametrize("mode,says", [
    ("divergent", "a thread exited while other threads of its block wait at __syncthreads"),
    ("shuffle-exit", "a thread exited while other lanes of its warp wait in a shuffle"),
])
def test_divergence_stops_the_run(mode, says):
    r = run(mode)
    assert r.returncode != 0 and "the kernel ran to its end" not in r.stdout
    assert says in r.stderr and "kernel" in r.stderr, r.stderr


def test_overrun_is_a_device_fault():
    r = run("overrun")
    assert "after the kernel: an illegal memory access was encountered" in r.stdout, r.stdout + r.stderr
    assert "overrun_kernel" in r.stderr and "wrote outside the device block of 40 bytes" in r.stderr, r.stderr


def test_copies_are_checked():
    r = run("host-pointer")
    assert "host to 'device' invalid argument" in r.stdout and "past the end invalid argument" in r.stdout, r.stdout
    assert "is not device memory" in r.stderr and "past the end of the block" in r.stderr, r.stderr


def test_allocating_while_capturing_voids_the_capture():
    r = run("capture")
    assert "cudaMalloc while capturing: operation not permitted when stream is capturing" in r.stdout, r.stdout
    assert "end of the capture: operation failed due to a previous error during capture" in r.stdout, r.stdout
