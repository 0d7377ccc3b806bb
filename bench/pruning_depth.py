#!/usr/bin/python3
"""Inference time of UNet++ pruned to each depth (the UNet++ paper, TMI 2019,
Fig. 8: pruning at inference trades a little IoU for large speed-ups), as
ratios to the full network.

The full network is the deep-supervised model as trained, every head
computed (what `unet predict --mode deepest|accurate` runs); depth d is the
graph cut to the nodes with i + j <= d and head d alone (what
`unet predict --mode fast --depth d` and `unet prune` run). Times come from
`unet bench --mode ...` (the production plan, timed inside the process after
warm-up, backend synchronised around each step); side by side, the same
networks in PyTorch (tests/reference_model.py, float32, no_grad, same
threads), so the ratios can be held against another implementation's.

    bench/pruning_depth.py [--build build] [--device cpu|cuda] [--model unetpp] [--filters 32,64,128,256,512]
                           [--padding same] [--classes 1] [--tile 96] [--batch 1] [--steps 20] [--warmup 5]
                           [--threads N] [--rounds 3] [--no-torch] [--out bench/results]

Every network is timed in --rounds rounds, the depths taking turns within
a round so that background load hits them alike; a row reports the fastest
round's median (on a shared machine the least disturbed one).

Writes bench/results/pruning_depth-<date>-<device>.md and .json (machine,
date, settings, every timing). The GPU code path is the same: --device cuda
(PyTorch's side then runs on the GPU too when torch has CUDA, else it is left out)."""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import torch

from common import HERE, machine
from reference_model import GridNet  # tests/, on the path through common


def unet_bench(args, depth):
    """ms per batch of the engine: depth 0 is the full deep-supervised network."""
    cmd = [os.path.join(args.build, "unet"), "bench", "--json", "--device", args.device, "--model", args.model,
           "--filters", args.filters, "--padding", args.padding, "--classes", str(args.classes),
           "--tile", str(args.tile), "--batch", str(args.batch), "--steps", str(args.steps),
           "--bench-warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--deep-supervision", "--mode", "accurate"] if depth == 0 else ["--depth", str(depth), "--mode", "fast"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pruning_depth.py: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def torch_ms(args, depth, device):
    """Median ms per batch of the same network in PyTorch."""
    net = GridNet(model=args.model, filters=[int(f) for f in args.filters.split(",")], padding=args.padding,
                  classes=args.classes, deep_supervision=depth == 0, depth=depth).float().eval().to(device)
    x = torch.rand(args.batch, 1, args.tile, args.tile, device=device)
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            net(x)
            if device != "cpu":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.environ.get("UNET_BUILD", "build"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="unetpp", choices=["unet_e", "unet_plus", "unetpp"])
    p.add_argument("--filters", default="32,64,128,256,512")
    p.add_argument("--padding", default="same", choices=["valid", "same"])
    p.add_argument("--classes", type=int, default=1)
    p.add_argument("--tile", type=int, default=96)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both (0: all cores)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_device = None
    if not args.no_torch:
        torch_device = "cpu" if args.device == "cpu" else ("cuda" if torch.cuda.is_available() else None)
    L = len(args.filters.split(",")) - 1
    depths = [0] + list(range(1, L + 1))
    rows = [None] * len(depths)
    for rnd in range(args.rounds):
        for k, depth in enumerate(depths):
            r = unet_bench(args, depth)
            t = torch_ms(args, depth, torch_device) if torch_device else None
            row = rows[k] or {"depth": depth or "full", "ms": float("inf"), "flops_per_image": r["flops_per_image"],
                              "device": r["device"], "rounds_ms": [], "torch_rounds_ms": []}
            row["rounds_ms"].append(r["ms_median"])
            row["ms"] = min(row["rounds_ms"])
            if t is not None:
                row["torch_rounds_ms"].append(t)
                row["torch_ms"] = min(row["torch_rounds_ms"])
            rows[k] = row
            print(f"round {rnd + 1}, depth {row['depth']}: {r['ms_median']:.2f} ms" +
                  (f" (torch {t:.2f} ms)" if t is not None else ""), flush=True)
    full = rows[0]
    for row in rows:
        row["speedup"] = full["ms"] / row["ms"]
        row["flops_ratio"] = full["flops_per_image"] / row["flops_per_image"]
        if torch_device:
            row["torch_speedup"] = full["torch_ms"] / row["torch_ms"]
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "device": full["device"],
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "build")}, "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    tag = "cpu" if args.device == "cpu" else "gpu"
    base = os.path.join(args.out, f"pruning_depth-{now.strftime('%Y-%m-%d')}-{tag}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    m = report["machine"]
    with open(base + ".md", "w") as f:
        f.write(f"# Inference time per pruning depth ({args.model}, filters {args.filters}, {args.padding} padding, "
                f"tile {args.tile}, batch {args.batch})\n\n")
        f.write(f"{report['date']}; {full['device']}; {m['cpu']}, {m['cores']} cores ({m['host']}). "
                f"Fastest of {args.rounds} rounds of the median of {args.steps} timed forward passes after "
                f"{args.warmup} warm-up; `unet bench`, "
                f"and the same networks in PyTorch {torch.__version__} (tests/reference_model.py, float32, "
                f"no_grad) on the same threads.\n\n")
        head = "| Network | GFLOPs / image | FLOPs ratio | ms / batch | Speed-up |"
        sep = "|---|---:|---:|---:|---:|"
        if torch_device:
            head += " PyTorch ms | PyTorch speed-up |"
            sep += "---:|---:|"
        f.write(head + "\n" + sep + "\n")
        for row in rows:
            name = "full (every head)" if row["depth"] == "full" else f"L{row['depth']} (--mode fast --depth {row['depth']})"
            line = (f"| {name} | {row['flops_per_image'] / 1e9:.3f} | {row['flops_ratio']:.2f}x | {row['ms']:.2f} | "
                    f"{row['speedup']:.2f}x |")
            if torch_device:
                line += f" {row['torch_ms']:.2f} | {row['torch_speedup']:.2f}x |"
            f.write(line + "\n")
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
