#!/usr/bin/env python3
"""CPU inference, the engine beside ONNX Runtime on the same exported model (issue 15): U-Net 32..512 and UNet++
32..512 at its full depth (L4, every head: `--mode accurate`) and pruned to depth 2 (L2: `--mode fast --depth 2`),
same padding, one class, at batch 1 and 8, with the same threads on both sides.

The model is one checkpoint per network (`unet train --steps 0 --seed S`: the initial weights), exported by
`unet export` in the mode timed. The engine's side is `unet bench --mode ...` with the same seed, hence the same
weights (the production inference plan, timed inside the process after warm-up); ONNX Runtime's is that export,
run by an InferenceSession with intra_op_num_threads = --threads and inter_op_num_threads = 1 (all graph
optimisations on, as a deployer gets them), timed the same way. The two take turns in --rounds rounds so that
background load hits them alike; a row reports each side's fastest round (its median), images per second and the
ratio engine / ONNX Runtime (> 1: the engine is faster). The load average is recorded with every measurement: on a
shared machine only rows measured under low load mean much.

Waiting threads: by default both sides spin a while at each synchronisation (OpenMP's default; ONNX Runtime's
allow_spinning), which on a machine whose cores other processes want too costs a spinning side dearly. --wait both
(the default) measures each row twice: as the defaults have it (spin), and with waiting threads asleep (passive:
OMP_WAIT_POLICY=passive for the engine, session.intra_op.allow_spinning=0 for ONNX Runtime).

A second table holds the figure other load disturbs least: one thread on each side, batch 1, the process CPU time
of one inference (the median; ONNX Runtime: time.process_time() around a run; the engine: unet bench's
cpu_ms_median, the same clock around each step).

    bench/inference_cpu.py [--build build] [--threads 2] [--tile 256] [--batches 1,8] [--steps 5] [--warmup 2]
                           [--rounds 3] [--models unet,unetpp_l4,unetpp_l2] [--wait both|spin|passive]
                           [--no-cpu-time] [--out bench/results]

Writes bench/results/inference_cpu-<date>.md and .json (machine, date, settings, every timing)."""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import HERE, git_describe, machine

FILTERS = "32,64,128,256,512"
MODELS = {
    "unet": dict(name="U-Net 32..512", flags=["--model", "unet"], mode=["--mode", "accurate"]),
    "unetpp_l4": dict(name="UNet++ 32..512, L4 (every head)", flags=["--model", "unetpp", "--deep-supervision"],
                      mode=["--mode", "accurate"]),
    "unetpp_l2": dict(name="UNet++ 32..512, pruned to L2", flags=["--model", "unetpp", "--deep-supervision"],
                      mode=["--mode", "fast", "--depth", "2"]),
}


def model_flags(m):
    return m["flags"] + ["--filters", FILTERS, "--padding", "same", "--classes", "1"]


def load():
    return round(os.getloadavg()[0], 2)


def run(cmd, env=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"inference_cpu.py: {' '.join(map(str, cmd))} failed: {r.stderr.strip()}")
    return r.stdout


def exported(args, key, d):
    """The checkpoint of the network's initial weights (seed 1), exported in the mode timed."""
    m = MODELS[key]
    data = os.path.join(d, "data.h5")
    if not os.path.exists(data):
        import h5py

        raw = np.random.default_rng(0).random((1, args.tile, args.tile)).astype(np.float32)
        with h5py.File(data, "w") as f:
            f["raw"], f["label"] = raw, (raw > 0.5).astype(np.uint8)
    unet = os.path.join(args.build, "unet")
    ckpt, model = os.path.join(d, key + ".safetensors"), os.path.join(d, key + ".onnx")
    run([unet, "train", "--data", data, *model_flags(m), "--tile", args.tile, "--steps", 0, "--seed", 1,
         "--save", ckpt, "--device", "cpu"])
    run([unet, "export", "--checkpoint", ckpt, "--output", model, *m["mode"]])
    return model


def engine_bench(args, key, batch, threads, steps, wait="spin"):
    m = MODELS[key]
    cmd = [os.path.join(args.build, "unet"), "bench", "--json", "--device", "cpu", *model_flags(m), *m["mode"],
           "--tile", args.tile, "--batch", batch, "--steps", steps, "--bench-warmup", args.warmup,
           "--threads", threads, "--seed", 1]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = str(threads)
    if wait == "passive":
        env["OMP_WAIT_POLICY"] = "passive"
    return json.loads(run(cmd, env).strip().splitlines()[-1])


def engine_ms(args, key, batch, wait):
    return engine_bench(args, key, batch, args.threads, args.steps, wait)["ms_median"]


def engine_cpu_ms(args, key):
    """Process CPU time of one inference at batch 1 on one thread (unet bench's cpu_ms_median)."""
    return engine_bench(args, key, 1, 1, args.steps)["cpu_ms_median"]


def ort_ms(args, session, batch, clock=time.perf_counter):
    x = np.random.default_rng(batch).random((batch, 1, args.tile, args.tile)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    times = []
    for i in range(args.warmup + args.steps):
        t0 = clock()
        session.run(names, {"image": x})
        if i >= args.warmup:
            times.append((clock() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def ort_session(path, threads, wait="spin"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if wait == "passive" else "1")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def markdown(report):
    lines = [f"# CPU inference: the engine and ONNX Runtime on the same exported model ({report['date']})", "",
             f"Machine: {report['machine']['cpu']} ({report['machine']['cores']} cores), {report['threads']} "
             f"threads on both sides; tile {report['tile']}x{report['tile']}, same padding, one class; onnxruntime "
             f"{report['onnxruntime']}; engine {report['git']}. Each side's fastest of {report['rounds']} rounds "
             f"(median of {report['steps']} runs after {report['warmup']} warm-up); load: the 1-minute load "
             "average around the measurements (2 cores: above ~2.5 the figures are disturbed). Waiting threads: spin is "
             "both sides' default (OpenMP's, ONNX Runtime's allow_spinning); passive puts them to sleep "
             "(OMP_WAIT_POLICY=passive; allow_spinning=0).", "",
             "| model | batch | waiting threads | engine images/s | ONNX Runtime images/s | engine / ORT | load |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['batch']} | {r['wait']} | {r['engine_ips']:.3f} | {r['ort_ips']:.3f} | "
                     f"{r['ratio']:.2f} | {min(r['loads']):.1f} to {max(r['loads']):.1f} |")
    if report["cpu_rows"]:
        lines += ["", "One thread each, batch 1: process CPU time of one inference (what other load on the machine "
                  "disturbs least).", "",
                  "| model | engine CPU ms | ONNX Runtime CPU ms | engine / ORT | load |", "|---|---|---|---|---|"]
        for r in report["cpu_rows"]:
            lines.append(f"| {r['name']} | {r['engine_cpu_ms']:.1f} | {r['ort_cpu_ms']:.1f} | {r['ratio']:.2f} | "
                         f"{min(r['loads']):.1f} to {max(r['loads']):.1f} |")
    return "\n".join(lines) + "\n"


def cpu_time_row(args, key, path):
    """The single-thread CPU-time comparison of one model, rounds taking turns as above."""
    session = ort_session(path, 1)
    eng, onx, loads = [], [], [load()]
    for _ in range(args.rounds):
        eng.append(engine_cpu_ms(args, key))
        loads.append(load())
        onx.append(ort_ms(args, session, 1, time.process_time))
        loads.append(load())
    e, o = min(eng), min(onx)
    return dict(model=key, name=MODELS[key]["name"], engine_cpu_ms=e, ort_cpu_ms=o, engine_rounds_ms=eng,
                ort_rounds_ms=onx, ratio=o / e, loads=loads)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.environ.get("UNET_BUILD", os.path.join(HERE, "..", "build")))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--wait", default="both", choices=["both", "spin", "passive"],
                   help="waiting threads: spin (both sides' defaults), passive (asleep), or both, row by row")
    p.add_argument("--no-cpu-time", action="store_true", help="leave out the single-thread CPU-time table")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    import onnxruntime as ort

    date = datetime.date.today().isoformat()
    report = dict(date=date, machine=machine(), git=git_describe(), onnxruntime=ort.__version__,
                  threads=args.threads, tile=args.tile, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                  rows=[], cpu_rows=[])
    with tempfile.TemporaryDirectory() as d:
        for key in args.models.split(","):
            path = exported(args, key, d)
            waits = ["spin", "passive"] if args.wait == "both" else [args.wait]
            sessions = {w: ort_session(path, args.threads, w) for w in waits}
            for batch in map(int, args.batches.split(",")):
                for wait in waits:
                    eng, onx, loads = [], [], [load()]
                    for _ in range(args.rounds):
                        eng.append(engine_ms(args, key, batch, wait))
                        loads.append(load())
                        onx.append(ort_ms(args, sessions[wait], batch))
                        loads.append(load())
                    e, o = min(eng), min(onx)
                    row = dict(model=key, name=MODELS[key]["name"], batch=batch, wait=wait, engine_ms=e, ort_ms=o,
                               engine_rounds_ms=eng, ort_rounds_ms=onx, engine_ips=batch / e * 1e3,
                               ort_ips=batch / o * 1e3, ratio=o / e, loads=loads)
                    report["rows"].append(row)
                    print(f"{row['name']}, batch {batch}, {wait}: engine {row['engine_ips']:.3f} images/s, ONNX "
                          f"Runtime {row['ort_ips']:.3f}, ratio {row['ratio']:.2f} (load {min(loads)}..{max(loads)})",
                          flush=True)
            if not args.no_cpu_time:
                row = cpu_time_row(args, key, path)
                report["cpu_rows"].append(row)
                print(f"{row['name']}, one thread, batch 1: engine {row['engine_cpu_ms']:.1f} CPU ms, ONNX Runtime "
                      f"{row['ort_cpu_ms']:.1f}, ratio {row['ratio']:.2f} (load {min(row['loads'])}.."
                      f"{max(row['loads'])})", flush=True)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"inference_cpu-{date}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
