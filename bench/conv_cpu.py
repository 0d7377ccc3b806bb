#!/usr/bin/python3
"""CPU convolution speed: the production conv / conv_t2 ops (through
tests/tools/unet_convbench.c, which calls the CPU op table as a compiled plan
does) side by side with PyTorch's CPU conv (oneDNN) in float32, on the layer
shapes of the original U-Net (572x572 tile, batch 1, filters 64..1024, valid
padding), on the same machine with the same thread count.

    bench/conv_cpu.py [--build build] [--threads 2] [--reps 5] [--quick] [--json out.jsonl]

Each row: forward, backward and total milliseconds for both, and
torch_total / unet_total (> 1: ours is faster). Times are the fastest of
--reps runs (default; --stat median for the median): on a shared machine the
fastest run is the one least disturbed by other load. The two run alternately
in --rounds rounds, shape by shape, so that background load hits both alike."""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# (name, op, N, C, H, W, O, k, pad, relu, needs din)
UNET_LAYERS = [
    ("enc0.conv1", "conv", 1, 1, 572, 572, 64, 3, 0, 1, 0),
    ("enc0.conv2", "conv", 1, 64, 570, 570, 64, 3, 0, 1, 1),
    ("enc1.conv1", "conv", 1, 64, 284, 284, 128, 3, 0, 1, 1),
    ("enc1.conv2", "conv", 1, 128, 282, 282, 128, 3, 0, 1, 1),
    ("enc2.conv1", "conv", 1, 128, 140, 140, 256, 3, 0, 1, 1),
    ("enc2.conv2", "conv", 1, 256, 138, 138, 256, 3, 0, 1, 1),
    ("enc3.conv1", "conv", 1, 256, 68, 68, 512, 3, 0, 1, 1),
    ("enc3.conv2", "conv", 1, 512, 66, 66, 512, 3, 0, 1, 1),
    ("enc4.conv1", "conv", 1, 512, 32, 32, 1024, 3, 0, 1, 1),
    ("enc4.conv2", "conv", 1, 1024, 30, 30, 1024, 3, 0, 1, 1),
    ("up3", "conv_t2", 1, 1024, 28, 28, 512, 2, 0, 0, 1),
    ("dec3.conv1", "conv", 1, 1024, 56, 56, 512, 3, 0, 1, 1),
    ("dec3.conv2", "conv", 1, 512, 54, 54, 512, 3, 0, 1, 1),
    ("up2", "conv_t2", 1, 512, 52, 52, 256, 2, 0, 0, 1),
    ("dec2.conv1", "conv", 1, 512, 104, 104, 256, 3, 0, 1, 1),
    ("dec2.conv2", "conv", 1, 256, 102, 102, 256, 3, 0, 1, 1),
    ("up1", "conv_t2", 1, 256, 100, 100, 128, 2, 0, 0, 1),
    ("dec1.conv1", "conv", 1, 256, 200, 200, 128, 3, 0, 1, 1),
    ("dec1.conv2", "conv", 1, 128, 198, 198, 128, 3, 0, 1, 1),
    ("up0", "conv_t2", 1, 128, 196, 196, 64, 2, 0, 0, 1),
    ("dec0.conv1", "conv", 1, 128, 392, 392, 64, 3, 0, 1, 1),
    ("dec0.conv2", "conv", 1, 64, 390, 390, 64, 3, 0, 1, 1),
    ("head", "conv", 1, 64, 388, 388, 2, 1, 0, 0, 1),
]
QUICK = ["enc0.conv1", "enc0.conv2", "enc1.conv2", "enc4.conv2", "up0", "dec0.conv1", "head"]


def unet_times(build, layer, reps):
    name, op, n, c, h, w, o, k, pad, relu, din = layer
    cmd = [os.path.join(build, "unet_convbench"), "--op", op, "--in", f"{n},{c},{h},{w}", "--out-c", str(o),
           "--reps", str(reps), "--din", str(din)]
    if op == "conv":
        cmd += ["--k", str(k), "--pad", str(pad), "--relu", str(relu)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def torch_times(layer, reps):
    name, op, n, c, h, w, o, k, pad, relu, din = layer
    x = torch.randn(n, c, h, w, requires_grad=bool(din))
    if op == "conv":
        wt = torch.randn(o, c, k, k) * (2.0 / (c * k * k)) ** 0.5
        fn = lambda x, wt, b: (F.relu if relu else (lambda t: t))(F.conv2d(x, wt, b, padding=pad))
    else:
        wt = torch.randn(c, o, 2, 2) * (1.0 / c) ** 0.5
        fn = lambda x, wt, b: F.conv_transpose2d(x, wt, b, stride=2)
    wt.requires_grad_(True)
    b = torch.zeros(o, requires_grad=True)
    times = {}
    for r in range(reps + 1):
        x.grad = wt.grad = b.grad = None
        s0 = (time.perf_counter(), time.process_time())
        y = fn(x, wt, b)
        s1 = (time.perf_counter(), time.process_time())
        g = torch.randn_like(y)
        s2 = (time.perf_counter(), time.process_time())
        y.backward(g)
        s3 = (time.perf_counter(), time.process_time())
        if r > 0:
            for c, clock in enumerate(("", "cpu_")):
                times.setdefault(f"fwd_{clock}ms", []).append((s1[c] - s0[c]) * 1e3)
                times.setdefault(f"bwd_{clock}ms", []).append((s3[c] - s2[c]) * 1e3)
    out = {}
    for key, v in times.items():
        v.sort()
        out[key + "_min"] = v[0]
        out[key + "_median"] = v[reps // 2]
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(here, "..", "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of unet and torch per layer")
    ap.add_argument("--stat", choices=["min", "median"], default="min")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, steadier than wall time on a busy machine (with --threads 1)")
    ap.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    ap.add_argument("--only", help="comma-separated layer names")
    ap.add_argument("--json", help="also append one JSON object per layer to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    layers = UNET_LAYERS
    if args.quick:
        layers = [l for l in layers if l[0] in QUICK]
    if args.only:
        layers = [l for l in layers if l[0] in args.only.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.stat} of {args.rounds}x{args.reps} "
          f"({args.clock} clock); times in ms")
    print(f"{'layer':<12} {'shape':<28} {'unet fwd':>9} {'bwd':>8} {'total':>8}   {'torch fwd':>9} {'bwd':>8} "
          f"{'total':>8}   {'torch/unet':>10}")
    sums = [0.0, 0.0]
    for layer in layers:
        us, ts = [], []
        for _ in range(args.rounds):
            us.append(unet_times(args.build, layer, args.reps))
            ts.append(torch_times(layer, args.reps))
        pick = min if args.stat == "min" else (lambda v: sorted(v)[len(v) // 2])
        clock = "cpu_" if args.clock == "cpu" else ""
        u = dict(us[0], **{f"{p}_ms": pick([r[f"{p}_{clock}ms_{args.stat}"] for r in us]) for p in ("fwd", "bwd")})
        t = {f"{p}_ms": pick([r[f"{p}_{clock}ms_{args.stat}"] for r in ts]) for p in ("fwd", "bwd")}
        ut = u["fwd_ms"] + u["bwd_ms"]
        tt = t["fwd_ms"] + t["bwd_ms"]
        sums[0] += ut
        sums[1] += tt
        name, op, n, c, h, w, o = layer[:7]
        shape = f"{op} {c}->{o} {h}x{w}"
        print(f"{name:<12} {shape:<28} {u['fwd_ms']:9.1f} {u['bwd_ms']:8.1f} {ut:8.1f}   "
              f"{t['fwd_ms']:9.1f} {t['bwd_ms']:8.1f} {tt:8.1f}   {tt / ut:10.2f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"layer": name, "stat": args.stat, "unet": u, "torch": t, "ratio": tt / ut}) + "\n")
    print(f"{'all':<12} {'':<28} {'':>9} {'':>8} {sums[0]:8.1f}   {'':>9} {'':>8} {sums[1]:8.1f}   "
          f"{sums[1] / sums[0]:10.2f}")
    print(f"unet kernels: {u['isa']}, {u['threads']} threads")


if __name__ == "__main__":
    sys.exit(main())
