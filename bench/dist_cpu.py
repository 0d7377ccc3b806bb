#!/usr/bin/env python3
"""Communication share of a training step on the CPU: 1 and 2 MPI ranks
(mpirun, one thread each), the production `unet train` with --dist mpi, and
the time each rank waited for the gradient allreduce after its backward
(comm_wait_s in the metrics log: what the bucket overlap did not hide).

    python3 bench/dist_cpu.py [--build build] [--steps 12] [--out bench/results/dist_cpu-DATE.json]

Prints one line per configuration and writes the numbers as JSON."""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from common import HERE
from unet_testlib import write_discs  # tests/, on the path through common


def run(unet, ranks, data, out, steps, model, bucket_mb):
    log = os.path.join(out, f"m{ranks}_{bucket_mb}.jsonl")
    args = [unet, "train", "--data", data, *model, "--batch", "1", "--steps", str(steps), "--device", "cpu",
            "--threads", "1", "--dist", "mpi", "--log-every", "1", "--val-every", "0", "--log", log,
            "--bucket-mb", str(bucket_mb)]
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), "-x", "OMP_NUM_THREADS=1",
           "-x", "OPENBLAS_NUM_THREADS=1", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMIX_"))}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    lines = [json.loads(x) for x in open(log)][2:]  # the first steps warm up
    step_s = statistics.median(ranks / x["images_per_s"] for x in lines)  # batch 1 per rank
    wait_s = statistics.median(x["comm_wait_s"] for x in lines)
    return {"ranks": ranks, "bucket_mb": bucket_mb, "step_ms": round(step_s * 1e3, 2),
            "allreduce_wait_ms": round(wait_s * 1e3, 3), "comm_share": round(wait_s / step_s, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(HERE, "results", f"dist_cpu-{datetime.date.today()}.json"))
    a = ap.parse_args()
    if not shutil.which("mpirun"):
        sys.exit("mpirun not found: apt-get install openmpi-bin libopenmpi-dev (scripts/setup.sh does)")
    unet = os.path.join(a.build, "unet")
    # U-Net with 16..256 filters (1.9M parameters, 7.8 MB of gradients), valid padding, tile 188
    model = ["--filters", "16,32,64,128,256", "--tile", "188"]
    results = []
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "train.h5")
        # 8 images of 256 x 256, 20 discs each of radius 6..20, at least 10 pixels from the border
        write_discs(data, np.random.default_rng(0), 8, 256, 20, (6, 20), 10)
        for ranks in (1, 2):
            for bucket in (25, 1):
                r = run(unet, ranks, data, d, a.steps, model, bucket)
                results.append(r)
                print(f"{ranks} rank(s), buckets {bucket:>2} MiB: step {r['step_ms']:8.1f} ms, allreduce wait "
                      f"{r['allreduce_wait_ms']:7.3f} ms ({100 * r['comm_share']:.2f} % of the step)")
    report = {"what": "CPU data parallel, mpirun -np N, 1 thread per rank, batch 1 per rank",
              "model": " ".join(model), "machine_cores": os.cpu_count(), "results": results}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
