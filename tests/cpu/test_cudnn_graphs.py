"""Without a GPU: cuDNN accepts every operation graph the CUDA convolution
ops build (descriptors, attribute types and counts, shapes), through
tests/tools/unet_cudnn_graphcheck.c. Skips when this build has no CUDA."""
import os
import subprocess

import pytest

from unet_testlib import BUILD

GRAPHCHECK = os.path.join(BUILD, "unet_cudnn_graphcheck")


def test_cudnn_accepts_every_graph():
    if not os.path.exists(GRAPHCHECK):
        pytest.fail(f"{GRAPHCHECK} is missing: build the unet_cudnn_graphcheck target")
    r = subprocess.run([GRAPHCHECK], capture_output=True, text=True, timeout=300)
    if r.returncode == 77:
        pytest.skip("this build has no CUDA backend (configure with -DUNET_CUDA=ON)")
    lines = r.stdout.splitlines()
    refused = [line for line in lines if not line.startswith("accepted")]
    assert lines and r.returncode == 0 and not refused, "\n".join(refused) + r.stderr
