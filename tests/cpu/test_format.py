"""One .clang-format for the C and CUDA sources (DESIGN.md): every file stays formatted by it, so that a change
shows what it changes and not whitespace (scripts/format.sh rewrites them)."""
import os
import shutil
import subprocess

import pytest

from unet_testlib import SOURCE


@pytest.mark.skipif(not shutil.which("clang-format") or not os.path.isdir(os.path.join(SOURCE, ".git")),
                    reason="needs clang-format (scripts/setup.sh installs it) and a git checkout")
def test_sources_are_formatted():
    r = subprocess.run(["bash", os.path.join(SOURCE, "scripts", "format.sh"), "--check"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, "not formatted (run scripts/format.sh):\n" + r.stderr[-3000:]
