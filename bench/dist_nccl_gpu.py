#!/usr/bin/python3
"""NCCL with one rank on one GPU (issue 6): the same training as without a
communicator, and what the gradient allreduce costs per step.

`unet train` (the production loop: loader, forward, loss, backward, gradient
buckets, Adam) trains the U-Net of the UNet++ paper (filters 32..512, same
padding, one class, BCE + Dice) at 512x512, batch 1 and 8, on random data
(an HDF5 file written to a temporary folder), three ways, taking turns in
--repeats rounds so that drift hits them alike:

    none          --dist none                     no communicator
    nccl          --dist nccl --bucket-mb 25      the default: buckets overlap the backward
    nccl-1bucket  --dist nccl --bucket-mb 65536   one bucket after the backward: the whole allreduce exposed

Each run logs every step (--log-every 1, which synchronises the device every
step in all three alike); the first --warmup steps are dropped, the step time
is batch / images_per_s of the others. Reported: ms/step (median over the
rounds of each run's median step, and the p90 likewise), its difference to
`none` (the allreduce's cost per step as the training loop sees it), the
engine's comm_wait_s per step, the gradient bytes (4 x parameters, `unet info`)
and whether the losses of every step equal those without a communicator.

comm_wait_s is the time the host waits in the communicator after the
backward was enqueued; on the GPU that wait (cudaEventSynchronize on the
event after the last bucket) also covers the backward kernels still queued
ahead of the allreduce, so it is an upper bound of the exposed allreduce,
not its cost: the difference of the step times is the number to read.

    bench/dist_nccl_gpu.py --build DIR [--batches 1,8] [--warmup 20] [--steps 100] [--repeats 3]
        [--precision tf32] [--gpu 0] [--budget 480] [--out bench/results] [--quick] [--device cpu]

Writes bench/results/dist_nccl_gpu-<date>-<gpu>.md and .json and prints the
table. Without a GPU it says so in one line and exits 0. --device cpu --quick
is a smoke run of this script on the CPU on a tiny U-Net, where the MPI face
with one rank (a singleton MPI process) stands in for NCCL, which needs the
CUDA backend; written only to an --out given explicitly. Options meant for
another bench/*_gpu.py are ignored with a note."""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from common import (HERE, Budget, MemoryPoller, classify_failure, command_line, device_entry, engine_ready,
                    finish_report, first_line, git_describe, q_median, q_p90, report_base, split_known, write_report)

LAUNCH_VARS = ("SLURM_", "OMPI_", "PMIX_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "UNET_RENDEZVOUS")
ONE_BUCKET_MB = 65536


def model(quick):
    if quick:
        return dict(desc="U-Net 4..32, same, 1 class BCE+Dice, 32x32 (quick)", filters=[4, 8, 16, 32], tile=32)
    return dict(desc="U-Net 32..512 (UNet++ paper), same, 1 class BCE+Dice, 512x512", filters=[32, 64, 128, 256, 512],
                tile=512)


def model_flags(m):
    return ["--model", "unet", "--filters", ",".join(map(str, m["filters"])), "--padding", "same", "--classes", "1"]


def make_data(path, n, size):
    import h5py
    import numpy as np
    rng = np.random.default_rng(0)
    label = (rng.random((n, size, size)) < 0.3).astype(np.uint8)
    raw = np.clip(label * 100 + rng.normal(80, 30, label.shape), 0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = raw, label


def configs(gpu, graph_flag, graph_mode):
    """graph_flag: this unet has --cuda-graph. A step with a communicator runs
    eagerly, so all three run with --cuda-graph off (the communicator is then
    the only difference), and the default training (a CUDA graph per step,
    no communicator) comes last for reference."""
    face = "nccl" if gpu else "mpi"
    extra = ["--cuda-graph", graph_mode] if graph_flag else []
    out = [dict(name="none", dist="none", bucket_mb=None, extra=extra),
           dict(name=face, dist=face, bucket_mb=25, extra=extra),
           dict(name=f"{face}-1bucket", dist=face, bucket_mb=ONE_BUCKET_MB, extra=extra)]
    if graph_flag and gpu and graph_mode == "off":
        out.append(dict(name="none-graph", dist="none", bucket_mb=None, extra=["--cuda-graph", "auto"],
                        note="reference: the default training, a CUDA graph per step; Δ is the graph's, not an "
                             "allreduce's"))
    return out


def has_flag(unet, flag):
    r = subprocess.run([unet, "train", "--help"], capture_output=True, text=True)
    return flag in r.stdout + r.stderr


def train_once(a, unet, data, tmp, m, batch, cfg, tag):
    log = os.path.join(tmp, f"{tag}.jsonl")
    cmd = [unet, "train", "--data", data, *model_flags(m), "--tile", str(m["tile"]), "--batch", str(batch),
           "--steps", str(a.warmup + a.steps), "--optimizer", "adam", "--lr", "1e-4", "--log-every", "1",
           "--val-every", "0", "--log", log, "--dist", cfg["dist"]]
    if cfg["bucket_mb"]:
        cmd += ["--bucket-mb", str(cfg["bucket_mb"])]
    cmd += cfg["extra"]
    if a.device == "cuda":
        cmd += ["--device", f"cuda:{a.gpu}", "--precision", a.precision, "--workers", "2"]
    else:
        cmd += ["--device", "cpu", "--threads", str(a.threads), "--workers", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
    with MemoryPoller(a.gpu, enabled=a.device == "cuda") as mem:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        return None, first_line(r.stderr) or f"exit {r.returncode}"
    lines = [json.loads(x) for x in open(log) if x.strip()]
    lines = [x for x in lines if "images_per_s" in x]
    timed = lines[a.warmup:]
    if not timed:
        return None, f"no step logged after {a.warmup} warm-up steps"
    step_ms = [batch / x["images_per_s"] * 1e3 for x in timed]
    waits = [x["comm_wait_s"] * 1e3 for x in timed if "comm_wait_s" in x]
    face_line = next((x.strip() for x in r.stdout.splitlines() if x.startswith("rank 0 of")), None)
    return dict(ms_median=q_median(step_ms), ms_p90=q_p90(step_ms), comm_wait_ms=q_median(waits) if waits else None,
                losses=[x["loss"] for x in lines], face=face_line, mem_rise_mib=mem.rise_mib(),
                command=" ".join(cmd[1:])), None


def loss_diff(a, b):
    if not a or not b or len(a) != len(b):
        return None
    return max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))


def markdown(rep):
    dev, s = rep["device"], rep["settings"]
    L = []
    if rep["smoke"] and dev["kind"] == "cuda":
        L.append(f"# dist_nccl_gpu.py --quick run ({rep['date']}, {dev['name']}): tiny shapes, not the benchmark\n")
    elif rep["smoke"]:
        L.append(f"# dist_nccl_gpu.py smoke run ({rep['date']}, {dev['name']}): NOT a GPU measurement\n")
        L.append("Tiny shapes, a handful of steps, to exercise the script"
                 + ("; on the CPU the MPI face with one rank stands in for NCCL (which needs the CUDA backend)"
                    if dev["kind"] == "cpu" else "") + ". No figure here says anything about NCCL on a GPU.\n")
    else:
        L.append(f"# NCCL with one rank on one GPU ({rep['date']}, {dev['name']})\n")
    L.append(f"- Device: {dev['name']}" + (f", driver {dev['driver']}" if dev.get("driver") else "") +
             f"; engine {rep['engine_git']}; precision {s['precision']}; --cuda-graph of the compared runs: "
             f"{s.get('cuda_graph')}.")
    L.append(f"- Command: `{rep['command']}`")
    L.append(f"- Model: {rep['model']['desc']}; {rep['model']['params']:,} parameters, gradients "
             f"{rep['model']['grad_bytes'] / 1e6:.1f} MB (fp32) per step.")
    L.append(f"- `unet train`, Adam, --log-every 1; {s['warmup']} warm-up steps dropped, {s['steps']} timed, "
             f"{s['repeats']} interleaved rounds; ms/step = median over the rounds of each run's median step "
             f"(p90 likewise); `spread` the lowest and highest run median.")
    L.append("- `Δ vs none`: the step time's difference to the run without a communicator: what the allreduce costs "
             "the loop per step (with one bucket, the whole allreduce after the backward).")
    L.append("- `comm wait`: the engine's comm_wait_s, the host's wait in the communicator after enqueuing the "
             "backward; on the GPU it includes the backward kernels still queued, so it bounds the exposed "
             "allreduce from above and is not its cost.")
    L.append("- `same losses`: every step's loss equals the run without a communicator (largest relative "
             "difference in brackets).")
    if rep.get("partial"):
        L.append(f"- **Partial**: {rep['partial']}")
    L.append("\n| batch | communicator | bucket MiB | ms/step | p90 | spread | Δ vs none ms | Δ % | comm wait ms "
             "| same losses | note |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rep["rows"]:
        bucket = "–" if not r["bucket_mb"] else ("one bucket" if r["bucket_mb"] == ONE_BUCKET_MB else r["bucket_mb"])
        if r["status"] != "ok":
            L.append(f"| {r['batch']} | {r['config']} | {bucket} | {r['status']} | | | | | | | "
                     f"{r['note'].replace('|', '/')} |")
            continue
        d = r.get("delta_ms")
        same = r.get("same_losses")
        same_s = "–" if same is None else (("yes" if same else "**no**") +
                                           f" ({r['max_loss_rel_diff']:.1e})")
        L.append(f"| {r['batch']} | {r['config']} | {bucket} | {r['ms_median']:.3f} | {r['ms_p90']:.3f} | "
                 f"{r['ms_repeat_range'][0]:.3f}–{r['ms_repeat_range'][1]:.3f} | "
                 f"{'–' if d is None else format(d, '+.3f')} | "
                 f"{'–' if d is None else format(100 * d / r['none_ms'], '+.2f')} | "
                 f"{'–' if r.get('comm_wait_ms') is None else format(r['comm_wait_ms'], '.3f')} | {same_s} | "
                 f"{r['note']} |")
    L.append("\nProduced by `bench/dist_nccl_gpu.py`; every number above is in the .json beside this file.")
    return "\n".join(L) + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"), help="the build directory with unet")
    ap.add_argument("--batches", default=None, help="default 1,8 (--quick: 1,2)")
    ap.add_argument("--warmup", type=int, default=None, help="logged steps dropped (default 20; --quick: 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 100; --quick: 4)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3; --quick: 2)")
    ap.add_argument("--precision", default="tf32", choices=("fp32", "tf32"))
    ap.add_argument("--cuda-graph", default="off", choices=("off", "auto"),
                    help="for the three compared runs, where unet has --cuda-graph (default off: a step with a "
                         "communicator runs eagerly, so the runs differ in the communicator only)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds (0: no limit)")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads in the CPU smoke run")
    ap.add_argument("--out", default=None, help="results folder (default bench/results; smoke runs: only if given)")
    a = split_known(ap, argv, "dist_nccl_gpu")
    q = a.quick
    if a.device == "cpu" and not q:
        ap.error("--device cpu is the smoke run: give --quick too")
    a.warmup = a.warmup if a.warmup is not None else (2 if q else 20)
    a.steps = a.steps if a.steps is not None else (4 if q else 100)
    a.repeats = a.repeats if a.repeats is not None else (2 if q else 3)
    a.batch_list = []
    for b in (a.batches or ("1,2" if q else "1,8")).split(","):
        b = b.strip()
        if b.isdigit() and int(b) > 0:
            a.batch_list.append(int(b))
        elif b == "max":
            print("dist_nccl_gpu: --batches: 'max' is train_step_gpu's; ignored here", flush=True)
        else:
            ap.error(f"--batches: '{b}' is not a positive number")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    unet = os.path.join(a.build, "unet")
    gpu = a.device == "cuda"
    if not engine_ready("dist_nccl_gpu", unet, gpu, a.gpu):
        return 0
    m = model(a.quick)
    r = subprocess.run([unet, "info", "--json", *model_flags(m), "--tile", str(m["tile"])], capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"dist_nccl_gpu: unet info failed: {first_line(r.stderr)}")
    info = json.loads(r.stdout)
    m.update(params=info["params"], grad_bytes=4 * info["params"])

    date = datetime.date.today().isoformat()
    device, dslug = device_entry(gpu, a.gpu, a.quick)
    rep = dict(benchmark="dist_nccl_gpu", date=date, started=datetime.datetime.now().isoformat(timespec="seconds"),
               smoke=a.quick, device=device, host=platform.node(), engine_git=git_describe(),
               engine_build=os.path.abspath(a.build),
               command=command_line("dist_nccl_gpu.py", argv),
               settings=dict(batches=a.batch_list, warmup=a.warmup, steps=a.steps, repeats=a.repeats,
                             precision=a.precision if gpu else "fp32 (cpu)", budget_s=a.budget,
                             threads=None if gpu else a.threads),
               model=m, rows=[], partial="in progress")
    base = report_base(a.out, a.quick, f"dist_nccl_gpu-{date}-{dslug}")

    def write():
        write_report(base, rep, markdown)

    kind = ("QUICK RUN, not the benchmark; " if gpu else "SMOKE RUN, no GPU figure; ") if a.quick else ""
    print(f"dist_nccl_gpu: {device['name']}; " + kind +
          f"results: {base + '.{md,json}' if base else 'not written (no --out)'}", flush=True)
    budget = Budget(a.budget)
    graph_flag = has_flag(unet, "--cuda-graph")
    rep["settings"]["cuda_graph"] = a.cuda_graph if graph_flag else "not in this unet"
    cfgs = configs(gpu, graph_flag, a.cuda_graph)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.h5")
        make_data(data, max(8, 2 * max(a.batch_list)), m["tile"])
        for batch in a.batch_list:
            runs = {c["name"]: [] for c in cfgs}
            failed = {}
            est = None
            for rnd in range(a.repeats):
                for c in cfgs:
                    if c["name"] in failed:
                        continue
                    why = budget.refuse(est or 0.0)
                    if why:
                        failed[c["name"]] = ("skipped", why)
                        continue
                    t0 = budget.elapsed()
                    out, err = train_once(a, unet, data, tmp, m, batch, c, f"b{batch}_{c['name']}_{rnd}")
                    est = budget.elapsed() - t0
                    if out is None:
                        failed[c["name"]] = (classify_failure(err), err)
                        continue
                    runs[c["name"]].append(out)
                    print(f"  batch {batch} {c['name']:13s} round {rnd + 1}: {out['ms_median']:.3f} ms/step"
                          + (f", comm wait {out['comm_wait_ms']:.3f} ms" if out["comm_wait_ms"] is not None else ""),
                          flush=True)
            none = runs["none"]
            none_ms = statistics.median(x["ms_median"] for x in none) if none else None
            for c in cfgs:
                row = dict(batch=batch, config=c["name"], dist=c["dist"], bucket_mb=c["bucket_mb"], status="ok",
                           note=c.get("note", ""), flags=" ".join(c["extra"]), grad_bytes=m["grad_bytes"])
                rs = runs[c["name"]]
                if c["name"] in failed and len(rs) < a.repeats:
                    st, why = failed[c["name"]]
                    if not rs:
                        rep["rows"].append(dict(row, status=st, note=why))
                        continue
                    row["note"] = (row["note"] + "; " if row["note"] else "") + \
                        f"{len(rs)} of {a.repeats} rounds ({st}: {why})"
                row["runs"] = rs
                row["ms_median"] = statistics.median(x["ms_median"] for x in rs)
                row["ms_p90"] = statistics.median(x["ms_p90"] for x in rs)
                row["ms_repeat_range"] = [min(x["ms_median"] for x in rs), max(x["ms_median"] for x in rs)]
                waits = [x["comm_wait_ms"] for x in rs if x["comm_wait_ms"] is not None]
                row["comm_wait_ms"] = statistics.median(waits) if waits else None
                row["face"] = rs[0]["face"]
                rises = [x["mem_rise_mib"] for x in rs if x.get("mem_rise_mib") is not None]
                row["mem_mib"] = max(rises) if rises else None
                if none_ms is not None:
                    row["none_ms"] = none_ms
                    if c["name"] != "none":
                        row["delta_ms"] = row["ms_median"] - none_ms
                        diffs = [loss_diff(x["losses"], none[0]["losses"]) for x in rs]
                        if all(d is not None for d in diffs):
                            row["max_loss_rel_diff"] = max(diffs)
                            row["same_losses"] = max(diffs) <= 1e-6
                rep["rows"].append(row)
            write()
    skipped = sum(r["status"] == "skipped" for r in rep["rows"])
    rep["partial"] = f"{skipped} rows not run within --budget {a.budget:.0f} s" if skipped else ""
    finish_report(rep, write, markdown, base, budget.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
