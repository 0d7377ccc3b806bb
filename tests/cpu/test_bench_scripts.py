"""The GPU benchmarks (bench/*_gpu.py, run by scripts/gpu_check.sh) on a
machine without a GPU, so that they do not rot until one is at hand: each
runs its whole pipeline in the --device cpu --quick smoke mode and writes the
JSON and Markdown it would write on a GPU; without --device cpu each says in
one line that there is no GPU and exits 0 without writing; the parts whose
GPU branch cannot run here (the largest-batch search, reading an engine
failure) are checked on their own."""
import json
import os
import subprocess
import sys

import pytest

from unet_testlib import BUILD, SOURCE, gpu_listed

BENCH = os.path.join(SOURCE, "bench")
sys.path.insert(0, BENCH)
import train_step_gpu  # noqa: E402 (after the path)


def run(script, *args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(BENCH, script), "--build", BUILD, *args],
                          capture_output=True, text=True, timeout=timeout)


def only(path, pattern):
    files = [f for f in os.listdir(path) if f.endswith(pattern)]
    assert len(files) == 1, files
    return os.path.join(path, files[0])


def test_train_step_smoke_run(tmp_path):
    r = run("train_step_gpu.py", "--device", "cpu", "--quick", "--batches", "1,max", "--max-batch", "2",
            "--out", str(tmp_path), "--not-mine", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ignoring options meant for another benchmark: --not-mine 1" in r.stdout
    rep = json.load(open(only(tmp_path, "-cpu-smoke.json")))
    md = open(only(tmp_path, "-cpu-smoke.md")).read()
    assert "NOT a GPU measurement" in md and "| model | batch | side | variant |" in md
    assert rep["benchmark"] == "train_step_gpu" and rep["smoke"] and rep["device"]["kind"] == "cpu"
    assert not rep["meets_protocol_minimum"] and rep["partial"] == ""
    for k in ("date", "torch", "command", "engine_git", "settings", "models", "rows", "largest_batch", "ratios"):
        assert k in rep, k
    assert set(rep["models"]) == {"unet32", "unet-paper", "unetpp"}
    for m in rep["models"].values():
        assert m["flops_per_image"] > 0 and m["params"] > 0
    rows = rep["rows"]
    for key in rep["models"]:
        for side, variant in (("engine", "fp32"), ("torch", "fp32"), ("torch", "bf16")):
            got = {(r["mode"], r["batch_label"]): r for r in rows
                   if r["model"] == key and r["side"] == side and r["variant"] == variant}
            assert set(got) == {("train", "1"), ("train", "max=2+"), ("inference", "1")}, (key, side, variant, got)
            for r in got.values():
                assert r["status"] == "ok", r
                assert len(r["repeats"]) == 2
                assert r["ms_median"] > 0 and r["ms_p90"] > 0 and r["images_per_s"] > 0
                assert r["tflops"] == pytest.approx(r["images_per_s"] * (1 if r["mode"] == "inference" else 3)
                                                    * rep["models"][key]["flops_per_image"] / 1e12)
                assert r["peak_share"] == pytest.approx(r["tflops"] / 790.0)
        # torch.compile: measured where this PyTorch has it, else the error is in the row
        comp = [r for r in rows if r["model"] == key and r["variant"] == "compile"]
        assert comp and all(r["status"] in ("ok", "error") for r in comp)
        assert all(r["note"] for r in comp if r["status"] == "error")
    lb = {(x["model"], x["side"], x["variant"]): x for x in rep["largest_batch"]}
    assert lb[("unetpp", "engine", "fp32")]["largest_batch"] == 2
    assert lb[("unetpp", "engine", "fp32")]["bounded_by_max_batch"]
    ratios = [x for x in rep["ratios"] if x["model"] == "unet32" and x["mode"] == "train" and x["batch"] == "1"]
    assert ratios and ratios[0]["fp32"] > 0 and ratios[0]["best"] > 0


def test_dist_smoke_run(tmp_path):
    r = run("dist_nccl_gpu.py", "--device", "cpu", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.load(open(only(tmp_path, "-cpu-smoke.json")))
    assert "NOT a GPU measurement" in open(only(tmp_path, "-cpu-smoke.md")).read()
    assert rep["benchmark"] == "dist_nccl_gpu" and rep["smoke"] and rep["partial"] == ""
    assert rep["model"]["grad_bytes"] == 4 * rep["model"]["params"] > 0
    rows = {(x["batch"], x["config"]): x for x in rep["rows"]}
    assert set(rows) == {(b, c) for b in (1, 2) for c in ("none", "mpi", "mpi-1bucket")}
    for (b, c), x in rows.items():
        if c == "none":
            assert x["status"] == "ok" and x["ms_median"] > 0
        elif x["status"] == "not available":  # a build without MPI says so in the row
            assert "MPI" in x["note"] or "mpi" in x["note"]
        else:
            assert x["status"] == "ok", x
            assert x["same_losses"] and x["comm_wait_ms"] is not None
            assert x["delta_ms"] == pytest.approx(x["ms_median"] - rows[(b, "none")]["ms_median"])
            assert "mpi" in x["face"]


@pytest.mark.skipif(gpu_listed(), reason="a GPU is here: without --device cpu the benchmarks would measure it")
@pytest.mark.parametrize("script", ["train_step_gpu.py", "dist_nccl_gpu.py"])
def test_without_a_gpu_one_line_and_exit_0(script, tmp_path):
    r = run(script, "--out", str(tmp_path), "--quick", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == 1 and "no GPU" in lines[0] and "no results written" in lines[0], r.stdout
    assert os.listdir(tmp_path) == []


def test_largest_batch_search():
    def search(limit, start, fit_upto):
        return train_step_gpu.largest_batch(lambda b: b <= fit_upto, limit, start)

    assert search(256, 8, 37) == (37, False, [8, 16, 32, 64, 48, 40, 36, 38, 37])
    assert search(256, 1, 1) == (1, False, [1, 2])
    assert search(256, 8, 5) == (5, False, [8, 4, 6, 5])  # the start itself does not fit: bisection below it
    assert search(256, 1, 0) == (0, False, [1])
    assert search(20, 8, 1000) == (20, True, [8, 16, 20])
    assert search(16, 32, 1000) == (16, True, [16])


def test_engine_rows_from_its_answers(tmp_path):
    """bf16, refused by the CUDA backend on a GPU before sm_80, is a 'not
    available' row with the engine's words; out of memory is told apart (the largest-batch search
    stops on it); neither stops the benchmark; an engine that times CUDA
    graph replays says so in the row."""
    refusal = ("unet: --device cuda: precision bf16 needs a GPU of compute capability 8.0 or newer (bf16 tensor "
               "cores); CUDA device 0 (Tesla T4) is sm_75: use --precision tf32 or fp32 (use --device cpu)")
    answer = {"device": "cuda:0 (tf32)", "ms_median": 10.0, "ms_p90": 12.0, "images_per_s": 100.0,
              "activation_bytes": 2**30, "workspace_bytes": 0, "param_bytes": 2**20, "cuda_graph": True,
              "cuda_graph_note": ""}
    fake = tmp_path / "unet"
    fake.write_text("#!/bin/sh\ncase \"$*\" in\n  *'--precision bf16'*) echo '" + refusal + "' >&2; exit 2 ;;\n"
                    "esac\necho '" + json.dumps(answer) + "'\n")
    fake.chmod(0o755)
    a = train_step_gpu.parse_args(["--build", str(tmp_path), "--device", "cpu", "--quick"])
    ctx = train_step_gpu.Ctx(a)
    ctx.gpu, ctx.engine_device = True, "cuda:0"
    m = train_step_gpu.models(True)[0]
    row = train_step_gpu.engine_row(ctx, m, 1, "1", "bf16", False)
    assert row["status"] == "not available" and row["note"].startswith("--device cuda: precision bf16 needs")
    row = train_step_gpu.engine_row(ctx, m, 1, "1", "tf32", False)
    assert row["status"] == "ok" and row["ms_median"] == 10.0 and row["ms_p90"] == 12.0
    assert row["cuda_graph"] and row["note"] == "CUDA graph replays"
    assert row["mem_mib"] == 1025.0 and "planned" in row["mem_source"]  # no nvidia-smi here
    assert train_step_gpu.classify_failure("out of cuda memory: the plan needs 81234.0 MiB of activations") == "oom"
    assert train_step_gpu.classify_failure("out of cuda memory for 9041700 parameters and their optimizer") == "oom"
    assert train_step_gpu.classify_failure("cudnn: CUDNN_STATUS_EXECUTION_FAILED in conv") == "error"


def test_dist_compares_runs_that_differ_in_the_communicator_only():
    import dist_nccl_gpu
    cfgs = dist_nccl_gpu.configs(True, True, "off")
    assert [c["name"] for c in cfgs] == ["none", "nccl", "nccl-1bucket", "none-graph"]
    assert all(c["extra"] == ["--cuda-graph", "off"] for c in cfgs[:3]) and cfgs[3]["extra"][-1] == "auto"
    assert [c["name"] for c in dist_nccl_gpu.configs(True, False, "off")] == ["none", "nccl", "nccl-1bucket"]
    assert all(c["extra"] == [] for c in dist_nccl_gpu.configs(False, False, "off"))
