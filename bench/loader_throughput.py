#!/usr/bin/python3
"""Loader throughput against the training step: images per second the
production loader delivers with the paper's augmentation (elastic + flips +
rot90, 572 x 572 tiles, the U-Net's 92-pixel margin) per worker count,
side by side with the CPU training-step rate of the paper's U-Net
(`unet bench --tile 572 --batch 1 --steps 3 --json`) on the same machine. The
loader should be at least 3x the step rate so it is never the bottleneck.

    bench/loader_throughput.py [--build build] [--workers 0,1,2,4] [--steps 20] [--no-train] [--out bench/results]

Writes bench/results/loader_throughput-<date>.json (machine, date, rows)."""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "datasets"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--workers", default="0,1,2,4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--augment", default="paper")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    import make_ellipses
    from common import write_h5

    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "e.h5")
        raw, label, inst = make_ellipses.make(8, 512, seed=0)
        write_h5(data, {"raw": raw, "label": label, "instances": inst})
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            out = subprocess.run([os.path.join(args.build, "unet_loaderbench"), "--data", data, "--tile", "572",
                                  "--batch", "1", "--margin", "92", "--steps", str(args.steps), "--workers", str(w),
                                  "--augment", args.augment], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out))
            print(f"loader, {w} worker(s): {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    step = None
    if not args.no_train:
        out = subprocess.run([os.path.join(args.build, "unet"), "bench", "--tile", "572", "--batch", "1", "--steps",
                              "3", "--bench-warmup", "1", "--device", "cpu", "--json"], capture_output=True, text=True,
                             check=True).stdout
        step = json.loads(out.strip().splitlines()[-1])
        print(f"training step (CPU, paper U-Net, 572 tile): {json.dumps(step)}")
    result = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
              "processor": platform.processor() or platform.machine(), "loader": rows, "train_step": step}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"loader_throughput-{result['date']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
