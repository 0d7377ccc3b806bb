#!/usr/bin/python3
"""Encoder models on the CPU, the engine beside PyTorch + segmentation_models_pytorch (smp) on the same machine
(issue 13): smp's Unet on ResNet-18/34/50 and MobileNetV2 and its UnetPlusPlus on ResNet-34 and MobileNetV2 (3
input channels, 1 class, the default decoder channels), a training step (forward, BCE + Dice, backward, SGD
update) and inference (a forward in eval mode), the same threads on both sides.

The engine's side is `unet bench` (the production plan, timed inside the process after warm-up; `--mode accurate`
for inference); PyTorch's is smp's model (float32, oneDNN convolutions) timed the same way. The two take turns
in --rounds rounds so that background load hits them alike; a row reports each side's fastest round (its median
step), images per second and the ratio engine / PyTorch in images per second (> 1: the engine is faster). The
machine's load average is recorded beside each round: on a shared machine it says how much to trust a row.

    bench/encoders_cpu.py [--build build] [--threads 2] [--tile 256] [--batch 2] [--steps 3] [--warmup 1]
                          [--rounds 2] [--models unet:resnet34,...] [--out bench/results] [--quick]

Run from the repository's .venv (it needs segmentation-models-pytorch). Writes
bench/results/encoders_cpu-<date>.md and .json (--quick: a smoke run at tile 64 of one model, written only with
--out)."""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import time

import torch

from common import HERE, git_describe, machine

try:
    import segmentation_models_pytorch as smp
except ImportError:
    raise SystemExit("encoders_cpu: needs segmentation-models-pytorch: run it with .venv/bin/python "
                     "(scripts/setup.sh makes .venv)")
from reference_model import total_loss  # tests/, on the path through common

MODELS = ["unet:resnet18", "unet:resnet34", "unet:resnet50", "unet:mobilenet_v2", "unetpp:resnet34",
          "unetpp:mobilenet_v2"]


def engine_row(args, kind, encoder, inference):
    cmd = [os.path.join(args.build, "unet"), "bench", "--json", "--device", "cpu", "--model", kind, "--encoder",
           encoder, "--in-channels", "3", "--classes", "1", "--tile", str(args.tile), "--batch", str(args.batch),
           "--steps", str(args.steps), "--bench-warmup", str(args.warmup), "--threads", str(args.threads),
           "--optimizer", "sgd", "--momentum", "0.9", "--lr", "1e-4"]
    if inference:
        cmd += ["--mode", "accurate"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"encoders_cpu: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])["ms_median"]


def torch_ms(args, kind, encoder, inference):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cls = smp.Unet if kind == "unet" else smp.UnetPlusPlus
    net = cls(encoder, encoder_weights=None, in_channels=3, classes=1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand(args.batch, 3, args.tile, args.tile)
    label = torch.randint(0, 2, (args.batch, 1, args.tile, args.tile), dtype=torch.int32)
    net.train(not inference)
    times = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        if inference:
            with torch.no_grad():
                net(x)
        else:
            opt.zero_grad(set_to_none=True)
            loss, _ = total_loss([net(x)], label, None, "bce_dice")
            loss.backward()
            opt.step()
        if s >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(args, name, inference):
    kind, encoder = name.split(":")
    ours, theirs, load = [], [], []
    what = "inference" if inference else "training step"
    for r in range(args.rounds):
        load.append(os.getloadavg()[0])
        ours.append(engine_row(args, kind, encoder, inference))
        theirs.append(torch_ms(args, kind, encoder, inference))
        print(f"{name} {what}: round {r + 1}: engine {ours[-1]:.0f} ms, PyTorch + smp {theirs[-1]:.0f} ms "
              f"(load average {load[-1]:.2f})", flush=True)
    ips = lambda ms: args.batch / (ms / 1e3)  # noqa: E731
    return dict(model=name, mode="inference" if inference else "train", engine_ms=min(ours), torch_ms=min(theirs),
                engine_images_per_s=ips(min(ours)), torch_images_per_s=ips(min(theirs)),
                ratio=min(theirs) / min(ours), engine_rounds=ours, torch_rounds=theirs, load_average=load)


def markdown(info):
    a = info["settings"]
    text = (f"# Encoder models on the CPU, engine vs PyTorch + smp ({info['date']})\n\n"
            f"Machine: {info['machine']['cpu']} ({info['machine']['cores']} cores), {a['threads']} threads on both "
            f"sides; PyTorch {info['torch']}, segmentation-models-pytorch {info['smp']}; engine {info['engine_git']}. "
            f"3 input channels, 1 class (BCE + Dice), tile {a['tile']}, batch {a['batch']}, SGD. Median of "
            f"{a['steps']} steps after {a['warmup']} warm-up, best of {a['rounds']} interleaved rounds; the load "
            f"average (1 min) before each round beside it. Produced by `bench/encoders_cpu.py`.\n\n"
            "| model | mode | engine images/s | PyTorch + smp images/s | engine / PyTorch | load average |\n"
            "|---|---|---:|---:|---:|---|\n")
    for r in info["rows"]:
        text += (f"| {r['model']} | {r['mode']} | {r['engine_images_per_s']:.2f} | {r['torch_images_per_s']:.2f} | "
                 f"{r['ratio']:.2f} | {', '.join(f'{x:.1f}' for x in r['load_average'])} |\n")
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=None, help="directory of the report (default: bench/results)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tile 64, one step, the first model")
    args = ap.parse_args()
    models = args.models.split(",")
    if args.quick:
        args.tile, args.batch, args.steps, args.warmup, args.rounds, models = 64, 1, 1, 0, 1, models[:1]
    rows = [measure(args, name, inference) for name in models for inference in (False, True)]
    date = datetime.date.today().isoformat()
    info = dict(date=date, machine=machine(), torch=torch.__version__, smp=smp.__version__, engine_git=git_describe(),
                quick=args.quick, settings={k: getattr(args, k) for k in ("threads", "tile", "batch", "steps", "warmup",
                                                                           "rounds")}, rows=rows)
    out = args.out or (None if args.quick else os.path.join(HERE, "results"))
    print(markdown(info))
    if out:
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, f"encoders_cpu-{date}{'-quick' if args.quick else ''}")
        with open(base + ".json", "w") as f:
            json.dump(info, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(markdown(info))
        print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
