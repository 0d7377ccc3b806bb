#!/usr/bin/python3
"""A training step on the CPU, the engine beside PyTorch on the same machine
(issue 2's benchmark): the original U-Net (filters 64..1024, valid padding,
572x572, batch 1) and UNet++ (filters 32..512, same padding, one class,
256x256, batch 4). One step = forward, loss, backward, SGD update.

The engine's side is `unet bench` (the production plan, timed inside the
process after warm-up); PyTorch's is the same network (tests/reference_model.py,
float32, the same threads, oneDNN convolutions) timed the same way. The two
take turns in --rounds rounds so background load hits them alike; a row
reports each side's fastest round (its median step), and the ratio
PyTorch / engine (> 1: the engine is faster).

    bench/train_step_cpu.py [--build build] [--threads 2] [--steps 5] [--warmup 2] [--rounds 3] [--out bench/results]

Writes bench/results/train_step_cpu-<date>.md and .json."""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import time

import torch

from common import HERE, machine
from reference_model import GridNet, total_loss  # tests/, on the path through common

MODELS = [
    dict(name="U-Net (paper), 572x572, batch 1", model="unet", filters=[64, 128, 256, 512, 1024], padding="valid",
         classes=2, tile=572, batch=1),
    dict(name="UNet++ 32..512, 256x256, batch 4", model="unetpp", filters=[32, 64, 128, 256, 512], padding="same",
         classes=1, tile=256, batch=4),
]


def engine_ms(args, m):
    cmd = [os.path.join(args.build, "unet"), "bench", "--json", "--device", "cpu", "--model", m["model"],
           "--filters", ",".join(map(str, m["filters"])), "--padding", m["padding"], "--classes", str(m["classes"]),
           "--tile", str(m["tile"]), "--batch", str(m["batch"]), "--steps", str(args.steps),
           "--bench-warmup", str(args.warmup), "--threads", str(args.threads), "--optimizer", "sgd",
           "--momentum", "0.99", "--lr", "1e-4"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["ms_median"]


def torch_ms(args, m):
    torch.set_num_threads(args.threads)
    net = GridNet(model=m["model"], filters=m["filters"], padding=m["padding"], classes=m["classes"])
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
    x = torch.rand(m["batch"], 1, m["tile"], m["tile"])
    k = max(m["classes"], 2)
    label = torch.randint(0, k, (m["batch"], 1, m["tile"], m["tile"]), dtype=torch.int32)
    loss_kind = "ce" if m["classes"] > 1 else "bce_dice"
    times = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = total_loss(net(x), label, None, loss_kind)
        loss.backward()
        opt.step()
        if s >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    rows = []
    for m in MODELS:
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(engine_ms(args, m))
            theirs.append(torch_ms(args, m))
            print(f"{m['name']}: round {r + 1}: engine {ours[-1]:.0f} ms, PyTorch {theirs[-1]:.0f} ms", flush=True)
        rows.append(dict(m, engine_ms=min(ours), torch_ms=min(theirs), ratio=min(theirs) / min(ours),
                         engine_rounds=ours, torch_rounds=theirs))
    date = datetime.date.today().isoformat()
    info = dict(date=date, machine=machine(), torch=torch.__version__, threads=args.threads, steps=args.steps,
                warmup=args.warmup, rounds=args.rounds, rows=rows)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"train_step_cpu-{date}")
    with open(base + ".json", "w") as f:
        json.dump(info, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# Training step on the CPU, engine vs PyTorch ({date})\n\n")
        f.write(f"Machine: {info['machine']['cpu']}, {args.threads} threads; PyTorch {torch.__version__}. "
                f"Median of {args.steps} steps after {args.warmup} warm-up, best of {args.rounds} interleaved "
                f"rounds. Produced by `bench/train_step_cpu.py`.\n\n")
        f.write("| model | engine ms/step | PyTorch ms/step | PyTorch / engine |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['name']} | {r['engine_ms']:.0f} | {r['torch_ms']:.0f} | {r['ratio']:.2f} |\n")
    print(open(base + ".md").read())


if __name__ == "__main__":
    main()
