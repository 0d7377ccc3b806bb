"""unet compare left alone: a comparison killed mid-way and run again keeps its finished runs, continues the
unfinished one from its checkpoint and reports the same numbers as one never interrupted (CPU runs are
deterministic); progress lines say how many runs are done and how long the rest should take."""
import json
import os
import subprocess

import numpy as np

from test_unetpp import UNET, ok, write_dataset

METRICS = ("val_iou", "val_dice", "val_pixel_error", "val_rand_error")


def compare_args(train, val, out, *extra):
    return [UNET, "compare", "--models", "unet,unetpp", "--data", train, "--val", val, "--filters", "2,4,8",
            "--padding", "same", "--classes", "1", "--deep-supervision", "--tile", "32", "--batch", "2",
            "--steps", "6", "--val-every", "2", "--save-every", "2", "--seeds", "2", "--optimizer", "adam",
            "--lr", "0.01", "--bench-warmup", "1", "--out", out, "--device", "cpu", *extra]


def numbers(out):
    """Every metric of report.json, per model and pruning depth: what must not depend on an interruption."""
    rep = json.load(open(os.path.join(out, "report.json")))
    got = {}
    for m in rep["models"]:
        for k in METRICS:
            got[(m["name"], k)] = m[k]["runs"]
        for p in m["pruning"]:
            for k in METRICS:
                got[(m["name"], p["depth"], k)] = p[k]["runs"]
    return got


def datasets(d):
    rng = np.random.default_rng(5)
    train, val = os.path.join(d, "train.h5"), os.path.join(d, "val.h5")
    write_dataset(train, 2, 40, 40, rng)
    write_dataset(val, 1, 36, 44, rng)
    return train, val


def test_compare_killed_and_rerun_reports_as_an_uninterrupted_one(tmp_path):
    d = str(tmp_path)
    train, val = datasets(d)
    whole, broken = os.path.join(d, "whole"), os.path.join(d, "broken")
    first = ok(*compare_args(train, val, whole))
    assert "progress: 0 of 4 runs done\n" in first and "progress: 4 of 4 runs done" in first
    assert "progress: 1 of 4 runs done, about " in first and " left" in first

    # periodic checkpoints at steps 2 and 4 of each run: the 4th is run 2's at step 4 (run 1 finished)
    env = dict(os.environ, UNET_TEST_KILL="checkpoint-saved:4")
    r = subprocess.run(compare_args(train, val, broken), capture_output=True, text=True, env=env)
    assert r.returncode == -9, r.stderr
    runs = os.path.join(broken, "runs")
    assert os.path.exists(os.path.join(runs, "unet_seed1.result.json"))
    assert [f for f in os.listdir(runs) if f.startswith("unetpp_seed1") and "step4" in f], os.listdir(runs)
    # the report of the finished run is there already
    partial = json.load(open(os.path.join(broken, "report.json")))
    assert partial["settings"]["runs_done"] == 1 and partial["settings"]["runs_total"] == 4
    assert len(partial["models"][0]["val_iou"]["runs"]) == 1 and partial["models"][1]["val_iou"]["runs"] == []

    again = ok(*compare_args(train, val, broken))
    assert "== unet, seed 1 (run 1 of 4): finished earlier, kept" in again
    assert "continuing from" in again and "(step 4 of 6)" in again
    assert "progress: 1 of 4 runs done, about " in again
    assert numbers(broken) == numbers(whole)
    # the continued run's log: every step once, as in the uninterrupted run
    steps = [json.loads(x)["step"] for x in open(os.path.join(runs, "unetpp_seed1.jsonl")) if "val_iou" in x]
    assert steps == [2, 4, 6]
    assert not [f for f in os.listdir(runs) if f.endswith(".safetensors")]
    # a run's result holds its log's last validation, the loss included
    for name in ("unet_seed1", "unetpp_seed2"):
        last = [json.loads(x) for x in open(os.path.join(runs, name + ".jsonl")) if "val_iou" in x][-1]
        result = json.load(open(os.path.join(runs, name + ".result.json")))
        assert {k: result[k] for k in METRICS + ("val_loss",)} == {k: last[k] for k in METRICS + ("val_loss",)}

    # the continued run says so, and the report that its time before the kill is not counted
    assert json.load(open(os.path.join(runs, "unetpp_seed1.result.json")))["continued_from_step"] == 4
    assert "continued_from_step" not in json.load(open(os.path.join(runs, "unetpp_seed2.result.json")))
    assert json.load(open(os.path.join(broken, "report.json")))["settings"]["runs_continued"] == 1
    assert "1 of them continued from a checkpoint" in open(os.path.join(broken, "report.md")).read()

    # a third run keeps everything and trains nothing
    third = ok(*compare_args(train, val, broken))
    assert third.count("finished earlier, kept") == 4 and numbers(broken) == numbers(whole)


def test_compare_refuses_results_of_another_comparison(tmp_path):
    d = str(tmp_path)
    train, val = datasets(d)
    out = os.path.join(d, "cmp")
    ok(*compare_args(train, val, out, "--models", "unet", "--seeds", "1"))

    def rerun(option, value, *extra):
        args = compare_args(train, val, out, "--models", "unet", "--seeds", "1", *extra)
        args[args.index(option) + 1] = value
        return subprocess.run(args, capture_output=True, text=True)

    r = rerun("--steps", "8")
    assert r.returncode == 2 and "not the result of a 8-step run" in r.stderr and len(r.stderr.splitlines()) == 1
    # the same budget, other settings: refused by report.json's, before any work, naming the option
    for option, value, said in (("--lr", "0.02", "--lr 0.01 against 0.02"), ("--filters", "2,4,16", "--filters"),
                                ("--data", val, "--data")):
        r = rerun(option, value)
        assert r.returncode == 2 and "report.json is from another comparison" in r.stderr, r.stderr
        assert said in r.stderr and len(r.stderr.splitlines()) == 1 and r.stdout == ""
    # how and where the runs compute may change: the run is kept
    assert "finished earlier, kept" in ok(*compare_args(train, val, out, "--models", "unet", "--seeds", "1",
                                                        "--threads", "1", "--save-every", "3"))

    # killed in its first run (no report yet): the unfinished run's checkpoint is not continued otherwise
    out2 = os.path.join(d, "cmp2")
    env = dict(os.environ, UNET_TEST_KILL="checkpoint-saved:1")
    args = compare_args(train, val, out2, "--models", "unet", "--seeds", "1")
    assert subprocess.run(args, capture_output=True, text=True, env=env).returncode == -9
    args[args.index("--lr") + 1] = "0.02"
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "step2.safetensors is from another comparison" in r.stderr, r.stderr
    assert "--lr 0.01 against 0.02" in r.stderr and len(r.stderr.splitlines()) == 1 and r.stdout == ""


# ---- the report: spreads, paired differences, the papers' ordering ------------

def synthetic_report(d, iou, runs_done=9):
    """report.json of three models and three seeds with these IoUs per model (other metrics derived from them)."""
    def metric(values):
        mean = sum(values) / len(values)
        return {"mean": mean, "sd": 0.0, "runs": values}

    def model(name, label, values, pruning=()):
        m = {"name": name, "label": label, "model": name, "filters": [2, 4], "deep_supervision": bool(pruning),
             "params": 1000, "flops_per_image": 1e6, "train_images_per_s": 10.0, "train_activation_bytes": 1 << 20,
             "inference_ms_per_tile": 1.0, "logs": [], "pruning": list(pruning)}
        for key, f in (("val_iou", lambda v: v), ("val_dice", lambda v: 2 * v / (1 + v)),
                       ("val_pixel_error", lambda v: 1 - v), ("val_rand_error", lambda v: (1 - v) / 2)):
            m[key] = metric([f(v) for v in values])
        return m

    depth = lambda d, values: {"depth": d, "params": 100 * d, "flops_per_image": 1e5 * d,  # noqa: E731
                               "inference_ms_per_tile": 0.2 * d, "speedup": 5.0 / d, "val_iou": metric(values)}
    config = {"data": "d.h5", "val": "v.h5", "steps": 10, "batch": 2, "tile": 32, "padding": "same", "classes": 1,
              "loss": "bce_dice", "optimizer": "adam", "lr": 0.001, "schedule": "constant", "augment": "paper",
              "seed": 1, "seeds": 3, "deep_supervision": True, "bench_warmup": 1}
    rep = {"settings": {"config": config, "seeds": 3, "device": "cpu", "machine": "test", "date": "today",
                        "wall_s": 1.0, "runs_done": runs_done, "runs_total": 9, "runs_wall_s": 3.0},
           "models": [model("unet", "U-Net", iou["unet"]),
                      model("unetpp", "UNet++", iou["unetpp"],
                            [depth(1, [0.70, 0.80, 0.79]), depth(2, [0.795, 0.70, 0.80])]),
                      model("wide_unet", "wide U-Net", iou["wide_unet"])]}
    os.makedirs(d, exist_ok=True)
    json.dump(rep, open(os.path.join(d, "report.json"), "w"))
    r = subprocess.run(["/usr/bin/python3", os.path.join(os.environ.get("UNET_SOURCE", "."), "scripts",
                                                          "compare_report.py"), d], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return open(os.path.join(d, "report.md")).read()


def test_report_gives_spreads_paired_differences_and_the_ordering(tmp_path):
    md = synthetic_report(str(tmp_path / "a"), {"unet": [0.70, 0.72, 0.74], "wide_unet": [0.71, 0.74, 0.75],
                                                "unetpp": [0.75, 0.75, 0.78]})
    assert "| U-Net | 2,4 |" in md and "0.7200 ± 0.0200 (0.7000..0.7400)" in md
    # UNet++ − U-Net: 0.05, 0.03, 0.04; UNet++ − wide U-Net: 0.04, 0.01, 0.03; wide U-Net − U-Net: 0.01, 0.02, 0.01
    assert "| UNet++ − U-Net | 3 | +0.0400 ± 0.0100 (+0.0300..+0.0500) |" in md
    assert "| UNet++ − wide U-Net | 3 | +0.0267 ± 0.0153 (+0.0100..+0.0400) |" in md
    assert "| wide U-Net − U-Net | 3 | +0.0133 ± 0.0058 (+0.0100..+0.0200) |" in md
    assert "ordering (UNet++ > wide U-Net > U-Net on IoU) holds here**" in md
    assert "UNet++ − wide U-Net +0.0267 IoU (sd 0.0153, ahead in 3 of 3 seeds)" in md
    assert "wide U-Net − U-Net +0.0133 IoU (sd 0.0058, ahead in 3 of 3 seeds)" in md
    assert "UNet++ 0.7600, wide U-Net 0.7333, U-Net 0.7200" in md
    # pixel and Rand errors paired too (1 - IoU and its half here)
    assert "| UNet++ − U-Net | 3 | +0.0400 ± 0.0100 (+0.0300..+0.0500) | " in md and "-0.0400 ± 0.0100" in md
    # seed 1: L2 is best (0.795), L1 0.70; seed 2: L1 0.80 best; seed 3: L1 0.79 within 0.01 of L2's 0.80
    assert "UNet++: L2, L1, L1." in md and "| UNet++ | L1 |" in md and "Partial report" not in md


def test_report_says_when_the_ordering_fails_and_when_it_is_partial(tmp_path):
    md = synthetic_report(str(tmp_path / "b"), {"unet": [0.72, 0.72], "wide_unet": [0.75, 0.76],
                                                "unetpp": [0.74, 0.73]}, runs_done=7)
    assert "**Partial report: 7 of 9 runs done**" in md
    assert "does not hold here**" in md and "| UNet++ − U-Net | 2 |" in md
    assert "wide U-Net 0.7550, UNet++ 0.7350, U-Net 0.7200" in md
