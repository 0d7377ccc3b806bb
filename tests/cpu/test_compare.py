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

    # a third run keeps everything and trains nothing
    third = ok(*compare_args(train, val, broken))
    assert third.count("finished earlier, kept") == 4 and numbers(broken) == numbers(whole)


def test_compare_refuses_results_of_another_budget(tmp_path):
    d = str(tmp_path)
    train, val = datasets(d)
    out = os.path.join(d, "cmp")
    ok(*compare_args(train, val, out, "--models", "unet", "--seeds", "1"))
    args = compare_args(train, val, out, "--models", "unet", "--seeds", "1")
    args[args.index("--steps") + 1] = "8"
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "not the result of a 8-step run" in r.stderr and len(r.stderr.splitlines()) == 1
