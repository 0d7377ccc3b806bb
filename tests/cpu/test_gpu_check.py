"""The prepared GPU check, proven on the CPU before any GPU time is spent
(docs/gpu.md): scripts/gpu_bundle.sh carries this build (--from-build: no
compile here) with its libraries and a small data set, and
scripts/gpu_check.sh --dry-run runs every step from that carried tree with
short limits. Under the cpu label the build is the plain one and the steps
run their CPU twins; under the emu label (build-emu, UNET_CUDA_EMULATED=1)
the same commands run with --device cuda on the CUDA emulation. Either way
the output folder must hold the 8 result files and nothing else, every step
must have its row, and no figure may claim a GPU."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import h5py
import pytest

from unet_testlib import BUILD, SOURCE, cuda_built, cuda_emulated, gpu_listed

BUNDLE = os.path.join(SOURCE, "scripts", "gpu_bundle.sh")
CHECK = os.path.join(SOURCE, "scripts", "gpu_check.sh")
STEPS = ["machine", "smoke", "graphs", "memcheck", "twins", "graph", "train", "variants", "nccl", "torch", "profile"]
FILES = ["cudnn.log", "figures.json", "log.txt", "machine.txt", "pytest.xml", "sanitizer.txt", "summary.txt",
         "torch_compare.json"]
TRAIN_ROWS = {"train:fp32", "train:tf32", "train:bf16", "train:bf16-eager", "train:bf16-nondet", "train:tf32-augdev"}
CUDA_LIBS = ("libcudart", "libcublas", "libcudnn", "libnccl", "libcuda.")
# Under the emulation a test runs the real CUDA code on the CPU, seconds a case: a few cases of each file prove
# the plumbing (the emu label runs them all anyway).
PYTEST_K = "test_relu and not dropout or dropout_eval_is_identity" if cuda_emulated() else ""


def check(*args, timeout=240):
    return subprocess.run(["bash", CHECK, *args, "--python", sys.executable], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    out = tmp_path_factory.mktemp("carried") / "tree"
    r = subprocess.run(["bash", BUNDLE, "--from-build", BUILD, "--out", str(out), "--data", "ellipses"],
                       capture_output=True, text=True, timeout=300, cwd=SOURCE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MiB" in r.stdout and "the working tree that travels with it" in r.stdout, r.stdout
    return out


@pytest.fixture(scope="module")
def dry_run(carried, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    r = check("--carried", str(carried), "--out", str(out), "--dry-run", "--deadline", "200", "--pytest-k", PYTEST_K)
    return r, out


def test_the_bundle_carries_the_executables_libraries_and_data_but_no_cuda_library(carried):
    meta = json.load(open(carried / "bundle.json"))
    assert {"unet", "unet_optest", "unet_modeltest", "unet_cudnn_graphcheck"} <= set(meta["tools"])
    for tool in meta["tools"]:
        assert os.access(carried / "build" / tool, os.X_OK), tool
    libs = os.listdir(carried / "build" / "lib")
    assert sorted(x["name"] for x in meta["libraries"]) == sorted(libs)
    assert not [x for x in libs if x.startswith(CUDA_LIBS)], "the CUDA libraries come from the GPU machine's PyTorch"
    if not meta["emulated"]:
        assert any(x.startswith("libhdf5") for x in libs) and "libjson-c.so.5" in libs, libs
    assert meta["digest"] and meta["carried_kib"] > 0 and meta["working_tree_kib"] > 0
    assert meta["carried_kib"] + meta["working_tree_kib"] < 64 * 1024
    with h5py.File(carried / "data" / "train.h5") as f:
        assert {"raw", "label", "weight"} <= set(f)
    assert "UNET_CUDA" in open(carried / "build" / "CMakeCache.txt").read()


def test_the_dry_run_leaves_the_eight_files_and_a_row_per_step(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(os.listdir(out)) == FILES
    assert all(os.path.isfile(out / f) for f in FILES)
    summary = open(out / "summary.txt").read()
    assert "DRY RUN" in summary and "no figure below is a GPU's" in summary
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines()[2:-1]}
    assert list(dict.fromkeys(x.split(":")[0] for x in rows)) == STEPS, summary  # train:NAME, variants:SET
    assert TRAIN_ROWS <= set(rows), summary
    assert all(v in ("ok", "n/a") for v in rows.values()), summary
    assert summary in r.stdout  # printed last, where the device tool's output tail holds it


def test_the_dry_run_claims_no_gpu_figure(dry_run):
    _, out = dry_run
    fig = json.load(open(out / "figures.json"))
    assert fig["dry_run"] and "not a GPU figure" in fig["measured_on"]
    assert {s["step"].split(":")[0] for s in fig["steps"]} == set(STEPS) and TRAIN_ROWS <= {s["step"] for s in
                                                                                      fig["steps"]}
    for name, f in fig["figures"].items():
        assert f["measured_on"] == fig["measured_on"], name
    trains = {k: v for k, v in fig["figures"].items() if k.startswith("train-")}
    assert {"train-fp32", "train-tf32", "train-bf16", "train-bf16-eager"} <= set(trains)
    for name, t in trains.items():
        assert t["exit"] == 0 and t["images_per_s"] > 0 and t["time_to_first_step_s"] > 0, (name, t)
    assert {"smoke-fp32", "smoke-tf32", "machine"} <= set(fig["figures"])
    assert fig["torch_compare"]["measured_on"] == fig["measured_on"]
    assert json.load(open(out / "torch_compare.json"))["device"]["kind"] == "cpu"
    assert "GPU:" not in open(out / "figures.json").read()


def test_the_dry_run_records_the_tests_and_the_machine(dry_run):
    _, out = dry_run
    root = ET.parse(out / "pytest.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == len([f for f in os.listdir(os.path.join(SOURCE, "tests", "gpu")) if f.startswith("test_")])
    assert sum(int(s.get("tests")) for s in suites) > 0
    if cuda_emulated():  # the selected cases ran on the emulation, and passed
        assert sum(int(s.get("tests")) - int(s.get("skipped")) for s in suites) > 0
    machine = open(out / "machine.txt").read()
    assert "sources: sources as bundled" in machine and "shared libraries mapped by that unet bench run" in machine
    assert open(out / "sanitizer.txt").read().count("\n## ") >= 4  # a heading per tiny run of each op family
    assert "unet bench" in open(out / "cudnn.log").read()


def test_a_spent_deadline_leaves_rows_not_run(carried, tmp_path):
    r = check("--carried", str(carried), "--out", str(tmp_path), "--dry-run", "--deadline", "0", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = open(tmp_path / "summary.txt").read()
    rows = [line.split(None, 2)[:2] for line in summary.splitlines()[2:-1]]
    assert rows == [[step, "not"] for step in STEPS] and summary.count("not run") == len(STEPS), summary


@pytest.mark.skipif(cuda_emulated() or gpu_listed() or not cuda_built(),
                    reason="needs a build with the real CUDA backend on a machine without a GPU")
def test_without_a_gpu_the_real_run_fails_each_step_with_its_reason(carried, tmp_path):
    """The failure plumbing: a run that is not dry finds no device, and every
    step that needs one fails on its own row, saying why, and the next runs."""
    r = check("--carried", str(carried), "--out", str(tmp_path), "--skip", "twins,graph,nccl", timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = open(tmp_path / "summary.txt").read()
    rows = {line.split()[0]: line for line in summary.splitlines()[2:-1]}
    assert "NO GPU (nvidia-smi lists none): nothing below is a GPU figure" in summary.splitlines()[0]
    for step in ("machine", "smoke", "memcheck", "train:fp32", "train:bf16", "torch"):
        assert rows[step].split()[1] == "FAIL" and "no CUDA device" in rows[step], rows[step]
    assert rows["graphs"].split()[1] == "ok"  # cuDNN's graph checks need no device
    fig = json.load(open(tmp_path / "figures.json"))
    assert fig["figures"]["train-fp32"]["exit"] == 2 and "not a GPU figure" in fig["measured_on"]


@pytest.mark.parametrize("args,message", [
    ([], "--out DIR is required"),
    (["--out", "o"], "give --carried DIR"),
    (["--out", "o", "--build", "nowhere"], "not a build"),
    (["--out", "o", "--only", "everything", "--build", BUILD], "unknown step 'everything'"),
])
def test_usage_errors_say_what_is_wrong(args, message, tmp_path):
    r = subprocess.run(["bash", CHECK, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.skipif(not cuda_emulated(), reason="an emulated build (tests/emu) is refused without --dry-run")
def test_an_emulated_build_measures_nothing_without_dry_run(carried, tmp_path):
    r = check("--carried", str(carried), "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "use --dry-run" in r.stderr, r.stderr


def test_the_short_protocol_of_the_pytorch_comparison():
    sys.path.insert(0, os.path.join(SOURCE, "bench"))
    import train_step_gpu
    a = train_step_gpu.parse_args(["--short"])
    assert (a.batch_list, a.warmup, a.steps, a.repeats, a.inference) == ([8], 10, 30, 1, False)
    assert a.torch_variant_list == ["fp32", "bf16", "compile"] and a.precision_list == ["fp32", "tf32", "bf16"]
    assert train_step_gpu.parse_args(["--short", "--steps", "50"]).steps == 50
