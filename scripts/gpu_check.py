#!/usr/bin/env python3
"""The measuring half of scripts/gpu_check.sh: that script runs the steps
(each under its own timeout) and calls these subcommands for what is easier
in Python than in bash. None of them imports torch except `machine`, so a
broken PyTorch costs one row, not the check.

    gpu_check.py digest ROOT                 sha256 of the sources a bundle was built from
    gpu_check.py nvidia-libdirs              PyTorch's CUDA libraries (site-packages/nvidia/*/lib), ':'-joined
    gpu_check.py machine --work W            the machine: GPU, driver, libraries and their versions
    gpu_check.py watch-libs --out F -- CMD   runs CMD; writes the shared libraries it had mapped
    gpu_check.py smoke --work W --precision P --device D    one convolution, forward and backward, against its CPU twin
    gpu_check.py train --work W --name N --unet U -- FLAGS  a training run: time to first step, images/s
    gpu_check.py variants --set S --work W --unet U   unet bench variants (layouts, 1x1 paths) on the benchmark's models
    gpu_check.py ncu-summary --work W --name N FILE   per-kernel time and DRAM throughput from ncu's CSV
    gpu_check.py junit OUT IN...             merges pytest's junit files into one
    gpu_check.py counts FILE                 one junit file's counts in a line
    gpu_check.py ratios FILE                 the PyTorch comparison's ratios in a line
    gpu_check.py assemble --work W --out O   figures.json from the steps' records

Every figure written carries `measured_on`: a GPU's name only when the run
was on a GPU (--mode gpu); a dry run's say CPU or emulated, never a GPU."""
import argparse
import glob
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time

# what a dry run's figures are, in words that cannot be read as a GPU's
DRY_LABELS = {"cpu": "CPU (dry run, CPU twins): not a GPU figure",
              "emulated": "CUDA emulated on the CPU (dry run): not a GPU figure"}


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


# ---- digest --------------------------------------------------------------------

# what a carried build and the tests it runs come from (not tests/cpu, which the GPU machine does not run)
DIGEST_PATHS = ("CMakeLists.txt", "src", "include", "tests/*.py", "tests/CMakeLists.txt", "tests/gpu", "tests/tools",
                "tests/emu", "bench")
DIGEST_EXT = (".c", ".h", ".cu", ".cuh", ".cc", ".py", ".txt", ".cmake")


def digest(root):
    """sha256 over the paths and contents of the sources that decide what a
    build does and what its GPU tests assert: the same on the machine that
    made a bundle and on the one that runs it, unless a file changed between."""
    paths = set()
    for pattern in DIGEST_PATHS:
        for top in glob.glob(os.path.join(root, pattern)):
            if os.path.isfile(top):
                paths.add(os.path.relpath(top, root))
            for dirpath, dirnames, files in os.walk(top):
                dirnames[:] = [x for x in dirnames if x != "__pycache__"]
                paths |= {os.path.relpath(os.path.join(dirpath, f), root) for f in files if f.endswith(DIGEST_EXT)}
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(os.path.join(root, p), "rb") as f:
            h.update(p.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


# ---- libraries -------------------------------------------------------------------

def nvidia_libdirs():
    """The lib folders of the nvidia-* wheels beside this Python's PyTorch
    (nvidia/cu13/lib: the CUDA runtime and cuBLAS; nvidia/cudnn/lib, nvidia/nccl/lib),
    found without importing torch."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    return sorted(d for r in roots for d in glob.glob(os.path.join(r, "*", "lib")) if glob.glob(d + "/lib*.so*"))


def mapped_libs(pid):
    """The shared objects mapped into a process now."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {line.split()[-1] for line in f if ".so" in line.split()[-1]}
    except OSError:
        return set()


# name in the report, soname, and how to ask the library its version through ctypes
LIB_PROBES = [
    ("CUDA runtime", "libcudart.so.13", "cudaRuntimeGetVersion"),
    ("cuDNN", "libcudnn.so.9", "cudnnGetVersion"),
    ("cuBLAS", "libcublas.so.13", "cublasGetProperty"),
    ("cuBLASLt", "libcublasLt.so.13", "cublasLtGetVersion"),
    ("NCCL", "libnccl.so.2", "ncclGetVersion"),
]


def probe_lib(soname, how):
    """(version string, path it loaded from) or (None, why)."""
    import ctypes
    try:
        lib = ctypes.CDLL(soname)
    except OSError as e:
        return None, str(e)
    v = ctypes.c_int(0)
    if how == "cudnnGetVersion":
        lib.cudnnGetVersion.restype = ctypes.c_size_t
        n = lib.cudnnGetVersion()
        ver = f"{n // 10000}.{n % 10000 // 100}.{n % 100}"
    elif how == "cublasLtGetVersion":
        lib.cublasLtGetVersion.restype = ctypes.c_size_t
        n = lib.cublasLtGetVersion()
        ver = f"{n // 10000}.{n % 10000 // 100}.{n % 100}"
    elif how == "cublasGetProperty":  # MAJOR_VERSION 0, MINOR 1, PATCH 2
        parts = []
        for prop in range(3):
            lib.cublasGetProperty(prop, ctypes.byref(v))
            parts.append(str(v.value))
        ver = ".".join(parts)
    else:  # cudaRuntimeGetVersion, ncclGetVersion: an int through a pointer
        if getattr(lib, how)(ctypes.byref(v)) != 0:
            return None, f"{how} failed"
        n = v.value
        ver = f"{n // 1000}.{n % 1000 // 10}" if how.startswith("cuda") else f"{n // 10000}.{n % 10000 // 100}.{n % 100}"
    path = next((p for p in mapped_libs(os.getpid()) if os.path.basename(p).startswith(soname.split(".so")[0] + ".so")),
                soname)
    return ver, path


def smi(query):
    """One nvidia-smi answer as a line, or None (bench/common.py asks it)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    from common import nvidia_smi
    v = nvidia_smi(query)
    return ", ".join(v) if v else None


def machine(a):
    """The machine report (printed, for machine.txt) and fig-machine.json."""
    fig = {"mode": a.mode}
    out = []
    gpu = smi("name,driver_version,compute_cap,memory.total")
    fig["nvidia_smi"] = gpu or "none (nvidia-smi is absent or lists no GPU)"
    out.append(f"nvidia-smi: {fig['nvidia_smi']}  [name, driver, compute capability, memory MiB]")
    if gpu:  # asked apart: a field this driver does not know fails the whole query
        clocks = smi("clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu,utilization.gpu")
        fig["clocks"] = clocks or "not read"
        out.append(f"nvidia-smi: {fig['clocks']}  [SM clock, max SM clock, memory clock MHz, power limit W, "
                   "temperature C, utilisation %]")
    libs = {}
    if a.mode == "emulated":
        out.append("libraries: the build emulates CUDA, cuDNN, cuBLAS and NCCL on the CPU (tests/emu): none loaded")
    else:
        for name, soname, how in LIB_PROBES:
            ver, where = probe_lib(soname, how)
            libs[name] = {"version": ver, "path": where}
            out.append(f"{name:13s} {ver or 'NOT LOADED'}  {where}")
        import ctypes
        try:
            v = ctypes.c_int(0)
            ctypes.CDLL("libcudart.so.13").cudaDriverGetVersion(ctypes.byref(v))
            drv = f"{v.value // 1000}.{v.value % 1000 // 10}" if v.value else None
            libs["CUDA driver API"] = {"version": drv, "path": "libcuda.so.1"}
            out.append(f"{'CUDA driver':13s} {drv or 'none (no driver)'} (the newest CUDA runtime it takes)")
        except (OSError, AttributeError):
            pass
    fig["libraries"] = libs
    built = read_json(os.path.join(a.carried, "bundle.json"), {}) if a.carried else {}
    if built:
        fig["bundle"] = built
        out.append(f"bundle: built {built.get('date')} from {built.get('commit')} (sources {built.get('digest')}), "
                   f"CUDA {built.get('cuda')}, cuDNN headers {built.get('cudnn_headers')}, arch {built.get('arch')}")
    try:
        import torch
        t = {"version": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "cuda_available": torch.cuda.is_available()}
        if t["cuda_available"]:
            p = torch.cuda.get_device_properties(0)
            t.update(device=p.name, sm=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                     memory_gib=round(p.total_memory / 2**30, 1), l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
        fig["torch"] = t
        out.append("PyTorch: " + ", ".join(f"{k} {v}" for k, v in t.items()))
    except Exception as e:  # noqa: BLE001 (whatever PyTorch raises is the report)
        fig["torch"] = f"not importable: {type(e).__name__}: {e}"
        out.append(f"PyTorch: {fig['torch']}")
    write_json(os.path.join(a.work, "fig-machine.json"), fig)
    print("\n".join(out))
    return 0


def watch_libs(a):
    """Runs the command, reading its /proc/PID/maps every 20 ms: cuDNN loads
    its engine libraries only when a plan is built, so ldd alone cannot say
    which ones a run used."""
    p = subprocess.Popen(a.command)
    seen = set()
    while p.poll() is None:
        seen |= mapped_libs(p.pid)
        time.sleep(0.02)
    libs = sorted(seen)
    with open(a.out, "w") as f:
        f.write("".join(x + "\n" for x in libs))
    print(f"watch-libs: {len(libs)} shared libraries mapped by {os.path.basename(a.command[0])} (exit {p.returncode})")
    return p.returncode


# ---- smoke ----------------------------------------------------------------------

TOLERANCE = {"fp32": 1e-5, "tf32": 2e-3, "bf16": 2e-2}  # as tests/gpu/test_conv_twins.py and test_bf16_twins.py


def smoke(a):
    """One 3x3 convolution with bias, forward and backward, on the device
    against the CPU twin (unet_optest through unet_testlib.run_op). No fused
    ReLU: in tf32 an output near 0 can land on the other side of it and flip
    its gradient, which is a right answer the twins' tolerance would not take."""
    import numpy as np
    from unet_testlib import rel_err, run_op
    g = np.random.default_rng(a.seed)
    n, c, h, w, o = 2, 16, 34, 30, 32
    x = g.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (g.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = g.standard_normal(o).astype(np.float32)
    dout = g.standard_normal((n, o, h, w)).astype(np.float32)
    attrs = {"k": 3, "pad": 1, "relu": 0, "out_c": o}
    args = dict(params=[wt, b], dout=dout, backward=True)
    t0 = time.monotonic()
    ref = run_op("conv", [x], (n, o, h, w), attrs, backend="cpu", **args)
    try:
        got = run_op("conv", [x], (n, o, h, w), dict(attrs, precision=a.precision) if a.device == "cuda" else attrs,
                     backend=a.device, **args)
    except RuntimeError as e:  # run_op's message: the command, " failed (status): ", the driver's stderr
        cmd, _, why = str(e).partition(" failed ")
        status, _, text = why.partition(": ")
        lines = text.strip().splitlines() or [""]
        print(f"smoke {a.precision} on {a.device}: FAILED {status}: {lines[-1]}")  # the error: stderr's last line
        print(f"  command: {cmd}\n  stderr:\n" + "\n".join("    " + x for x in lines))
        return 1
    sys.stderr.write(got.get("stderr", ""))  # the cuDNN log of the device run
    errs = {"out": rel_err(got["out"], ref["out"]), "din": rel_err(got["din"][0], ref["din"][0]),
            "dweight": rel_err(got["dparam"][0], ref["dparam"][0]), "dbias": rel_err(got["dparam"][1], ref["dparam"][1])}
    tol = TOLERANCE[a.precision]
    ok = all(e <= tol for e in errs.values())
    fig = {"precision": a.precision, "device": a.device, "tolerance": tol, "rel_err": errs, "ok": ok,
           "seconds": round(time.monotonic() - t0, 2), "shape": [n, c, h, w, o]}
    write_json(os.path.join(a.work, f"fig-smoke-{a.precision}.json"), fig)
    print(f"smoke {a.precision} on {a.device}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) +
          f" (tolerance {tol:g}): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


# ---- train ----------------------------------------------------------------------

def train(a):
    """A training run with a log line every step: the time from the start of
    the process to its first step's line (start-up: CUDA, cuDNN plans, the
    first batch), and the median images/s of the steps after the first
    --settle ones."""
    log = os.path.join(a.work, f"train-{a.name}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    cmd = [a.unet, "train", *a.flags, "--log", log, "--log-every", "1"]
    t0 = time.monotonic()
    first = None
    with open(os.path.join(a.work, f"train-{a.name}.out"), "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        # stderr drained by a thread: the cuDNN log can exceed a pipe's buffer
        import threading
        err = []
        th = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
        th.start()
        while p.poll() is None:
            if first is None and os.path.exists(log) and os.path.getsize(log) > 0:
                first = time.monotonic() - t0
            time.sleep(0.01)
        th.join(timeout=5)
    total = time.monotonic() - t0
    lines = [json.loads(x) for x in open(log)] if os.path.exists(log) else []
    steps = [x for x in lines if "images_per_s" in x]
    with open(os.path.join(a.work, f"train-{a.name}.out")) as f:
        stdout = f.read()
    sys.stderr.write("".join(err))
    settled = [x["images_per_s"] for x in steps[a.settle:]] or [x["images_per_s"] for x in steps]
    fig = {"name": a.name, "command": " ".join(["unet", "train", *a.flags]), "exit": p.returncode,
           "seconds": round(total, 2), "steps": len(steps), "images_per_s_of_steps": [a.settle + 1, len(steps)],
           "time_to_first_step_s": round(first, 3) if first is not None and steps else None,
           "images_per_s": round(statistics.median(settled), 2) if settled else None,
           "loss_first": steps[0]["loss"] if steps else None, "loss_last": steps[-1]["loss"] if steps else None,
           "cuda_graph": next((x for x in stdout.splitlines() if x.startswith("cuda graph")), ""),
           "device": next((x for x in stdout.splitlines() if x.startswith("device:")), ""),
           **cudnn_log_counts(err)}
    if p.returncode:
        fig["error"] = next((x.strip() for x in reversed(err) if x.strip()), f"exit {p.returncode}")
    write_json(os.path.join(a.work, f"fig-train-{a.name}.json"), fig)
    if p.returncode:
        print(f"train {a.name}: FAILED (exit {p.returncode}): {fig['error']}")
        return 1
    graph = "graph" if "captured" in fig["cuda_graph"] else "eager"
    nondet = ", NONDETERMINISTIC" if re.search(r"nondeterministic|not deterministic", fig["device"]) else ""
    print(f"train {a.name}: 1st step {fig['time_to_first_step_s']} s, {fig['images_per_s']} img/s, {graph}{nondet}, "
          + cudnn_words(fig))
    return 0


def no_engine(line):
    return "-> no engine" in line or "unfused" in line


def cudnn_log_counts(lines):
    """What UNET_CUDNN_LOG=1 said (src/kernels/cuda/cudnn_graph.c, conv.cu):
    one 'unet cudnn: PROBLEM -> engine N [notes] (rules ...)' line per plan,
    or '-> no engine' / 'unsupported' when the op took its unfused path, with
    the milliseconds the plan took to build in newer builds; the cuDNN
    loaded; and per 1x1 shape whether cuBLASLt or cuDNN runs it."""
    plans = [x for x in lines if x.startswith("unet cudnn:") and " -> " in x]
    ms = [float(m.group(1) or m.group(2)) for m in (re.search(r"built in ([0-9.]+) ms|; ([0-9.]+) ms;", x) for x in plans)
          if m]
    fused = [x for x in plans if " + bias" in x.split(" -> ")[0]]  # the conv + bias (+ ReLU) graphs
    engines = [x.split(" -> ", 1)[1] for x in plans if not no_engine(x)]
    loaded = next((m.group(0) for m in (re.search(r"cuDNN \S+ loaded \(built against [^)]*\)", x) for x in lines) if m),
                  None)
    conv1x1 = [x for x in lines if x.startswith("unet conv1x1:")]
    return {"cudnn_loaded": loaded, "cudnn_plans": len(plans), "cudnn_fallbacks": sum(no_engine(x) for x in plans),
            "cudnn_fused": len(fused), "cudnn_fused_without_engine": sum(no_engine(x) for x in fused),
            "cudnn_tensor_core": sum("tensor-core" in x.split("]")[0] for x in engines),
            "cudnn_rules_bent": sum("(rules bent" in x for x in plans),
            "cudnn_nondeterministic": sum("no deterministic cuDNN engine" in x for x in lines),
            "cudnn_plan_ms": round(sum(ms), 1), "cudnn_plan_ms_max": max(ms, default=0.0),
            "conv1x1_cublaslt": sum(": cuBLASLt (" in x for x in conv1x1),
            "conv1x1_cudnn": sum(": cuDNN (" in x for x in conv1x1)}


def cudnn_words(c):
    """The counts of cudnn_log_counts in a few words."""
    w = (f"cuDNN: {c['cudnn_plans']} plans ({c['cudnn_tensor_core']} tensor-core), {c['cudnn_fallbacks']} without an "
         f"engine; fused graphs with an engine {c['cudnn_fused'] - c['cudnn_fused_without_engine']} of "
         f"{c['cudnn_fused']}")
    if c["cudnn_rules_bent"]:
        w += f"; rules bent for {c['cudnn_rules_bent']}"
    if c["cudnn_plan_ms"]:
        w += f"; plans built in {c['cudnn_plan_ms'] / 1e3:.1f} s (longest {c['cudnn_plan_ms_max']:.0f} ms)"
    if c["conv1x1_cublaslt"] or c["conv1x1_cudnn"]:
        w += f"; 1x1 by cuBLASLt {c['conv1x1_cublaslt']}, by cuDNN {c['conv1x1_cudnn']}"
    return w


# ---- variants -----------------------------------------------------------------

# (set, label, environment, unet bench flags): on which models, see variants()
VARIANT_SETS = {
    # whether NHWC, the tensor cores' layout, should become --layout auto's choice for fp32 and tf32
    "layout": [(f"{p} {lay}", {}, ["--precision", p, "--layout", lay]) for p in ("tf32", "fp32") for lay in ("nchw", "nhwc")],
    # whether cuBLASLt earns its place for the 1x1 convolutions (the heads), against cuDNN and the measured choice
    "conv1x1": [(f"{p} {path}", {"UNET_CONV1X1": path} if path != "measured" else {}, ["--precision", p])
                for p in ("tf32", "bf16") for path in ("measured", "cudnn", "cublaslt")],
}


def bench_once(a, m, env, flags, seconds):
    """One `unet bench --json` of model m: its JSON, or {"error": why}; its
    stderr (the cuDNN log) goes on to ours under a heading."""
    cmd = [a.unet, "bench", "--json", "--device", "cuda", *flags, *m.flags(), "--tile", str(m.tile), "--batch",
           str(a.batch), "--steps", str(a.steps), "--bench-warmup", str(a.warmup), "--optimizer", "adam", "--lr", "1e-4"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, seconds), env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {seconds:.0f} s"}
    sys.stderr.write(f"\n## {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(cmd)}\n{r.stderr}")
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {k: out[k] for k in ("ms_median", "images_per_s", "tflops", "cuda_graph")}


def variants(a):
    """`unet bench` of each variant of a set on the benchmark's models
    (bench/train_step_gpu.py's, tiny ones in a dry run: --dry), one process
    each, each its share of --seconds; a line per set with the medians."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    from train_step_gpu import models
    ms = [m for m in models(a.dry) if not a.models or m.key in a.models.split(",")]
    runs = [(m, v) for m in ms for v in VARIANT_SETS[a.set]]
    end = time.monotonic() + a.seconds
    rows = []
    for i, (m, (label, env, flags)) in enumerate(runs):
        row = {"model": m.key, "variant": label, "batch": a.batch,
               **bench_once(a, m, env, flags, (end - time.monotonic()) / (len(runs) - i))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(os.path.join(a.work, f"fig-{a.set}.json"), {"set": a.set, "rows": rows})
    def said(r, by):
        """A variant's median, with its speed-up over the first variant of its precision (the label's first word)."""
        if "ms_median" not in r:
            return f"{r['variant']} {r['error']}"
        base = next(x for x in by if x["variant"].split()[0] == r["variant"].split()[0])
        ratio = f" (x{base['ms_median'] / r['ms_median']:.2f})" if base is not r and "ms_median" in base else ""
        return f"{r['variant']} {r['ms_median']:.2f} ms{ratio}"
    parts = []
    for m in ms:
        by = [r for r in rows if r["model"] == m.key]
        parts.append(f"{m.key} " + ", ".join(said(r, by) for r in by))
    print(f"{a.set}: batch {a.batch}, ms/step (xN: speed-up over its precision's first): " + "; ".join(parts))
    return 1 if any("error" in r for r in rows) else 0


# ---- ncu --------------------------------------------------------------------------

def our_kernels():
    """The names of the __global__ functions of src/kernels/cuda: ours, as
    against cuDNN's and cuBLAS's."""
    names = set()
    for path in glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "kernels", "cuda",
                                       "*.cu*")):
        with open(path) as f:
            names |= set(re.findall(r"__global__[^(;{]*?\b(\w+)\s*\(", f.read()))
    return names


def ncu_summary(a):
    """ncu --csv's per-kernel rows (one per metric) summed per kernel name:
    the share of the step's kernel time that is ours and cuDNN's, and the
    DRAM throughput (% of peak) of each of ours, the slowest first."""
    import csv
    kernels = {}
    with open(a.file, newline="") as f:
        lines = [x for x in f if x.startswith('"')]  # ncu's own notes are not CSV
    for r in csv.DictReader(lines):
        name = r.get("Kernel Name", "?").split("(")[0].split("<")[0].split()[-1]  # "void f<T>(args)" -> f
        k = kernels.setdefault(name, {"n": 0, "ns": 0.0, "dram": []})
        value = float(r.get("Metric Value", "0").replace(",", "") or 0)
        if r.get("Metric Name") == "gpu__time_duration.sum":
            k["n"] += 1
            k["ns"] += value * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6}.get(r.get("Metric Unit"), 1)
        elif r.get("Metric Name", "").startswith("dram__throughput"):
            k["dram"].append(value)
    total = sum(k["ns"] for k in kernels.values()) or 1.0
    mine = our_kernels()
    ours = {n: k for n, k in kernels.items() if n in mine}
    rows = [{"kernel": n, "launches": k["n"], "ms": round(k["ns"] / 1e6, 3), "share": round(k["ns"] / total, 4),
             "dram_pct": round(statistics.mean(k["dram"]), 1) if k["dram"] else None, "ours": n in ours}
            for n, k in sorted(kernels.items(), key=lambda kv: -kv[1]["ns"])]
    write_json(os.path.join(a.work, f"fig-profile-{a.name}.json"), {"kernels": rows, "kernel_ms": round(total / 1e6, 3)})
    share = sum(k["ns"] for k in ours.values()) / total
    top = [f"{r['kernel']} {100 * r['share']:.1f}% at {r['dram_pct']}% DRAM" for r in rows if r["ours"]][:6]
    print(f"profile {a.name}: {len(kernels)} kernels, {total / 1e6:.1f} ms; ours {100 * share:.1f}% of kernel time, "
          f"libraries' {100 * (1 - share):.1f}%; " + "; ".join(top))
    return 0 if kernels else 1


# ---- junit ----------------------------------------------------------------------

def junit(a):
    """One <testsuites> of every file's suites: pytest runs one file per
    timeout, and one file comes back."""
    import xml.etree.ElementTree as ET
    root = ET.Element("testsuites")
    for path in a.inputs:
        try:
            tree = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"junit: {path}: {e}")
            continue
        root.extend(tree.findall("testsuite") if tree.tag == "testsuites" else [tree])
    tmp = a.out + ".tmp"
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, a.out)
    return 0


def counts(a):
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(a.file).getroot()
    except (OSError, ET.ParseError) as e:
        print(f"{os.path.basename(a.file)}: no junit ({e.__class__.__name__})")
        return 0
    suites = root.findall("testsuite") if root.tag == "testsuites" else [root]
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    name = os.path.basename(a.file)[len("junit-"):-len(".xml")]
    print(f"{name}: {passed} passed" + "".join(f", {n[k]} {k}" for k in ("failures", "errors", "skipped") if n[k]))
    return 0


# ---- the PyTorch comparison -------------------------------------------------------

def ratios(a):
    """Per model: the engine's best images/s against PyTorch's eager bf16 and
    torch.compile at the same batch, and its share of the peak rate."""
    rep = read_json(a.file)
    if not rep:
        print("no report from bench/train_step_gpu.py")
        return 0
    rows = [r for r in rep.get("rows", []) if r.get("status") == "ok" and r.get("mode") == "train"]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        eng = [r for r in rows if r["model"] == model and r["side"] == "engine"]
        tor = {r["variant"]: r for r in rows if r["model"] == model and r["side"] == "torch"}
        if not eng:
            continue
        best = max(eng, key=lambda r: r["images_per_s"])
        part = f"{model} b{best['batch']}: engine {best['variant']} {best['images_per_s']:.1f} img/s"
        part += f" ({100 * best.get('peak_share', 0):.1f}% of peak)"
        for v in ("bf16", "compile", "fp32"):
            if v in tor:
                part += f", x{best['images_per_s'] / tor[v]['images_per_s']:.2f} torch {v}"
        out.append(part)
    skipped = sum(r.get("status") == "skipped" for r in rep.get("rows", []))
    dev = (rep.get("device") or {}).get("name", "?")
    tag = "" if (rep.get("device") or {}).get("kind") == "cuda" else " (CPU smoke run: not GPU figures)"
    print(f"{dev}{tag}: " + ("; ".join(out) or "no engine row") + (f"; {skipped} rows not run (budget)" if skipped else ""))
    return 0


# ---- assemble -------------------------------------------------------------------

def measured_on(mode, fig_machine):
    if mode in DRY_LABELS:
        return DRY_LABELS[mode]
    smi_line = (fig_machine or {}).get("nvidia_smi") or ""
    if not smi_line or smi_line.startswith("none"):
        return "no GPU listed by nvidia-smi: not a GPU figure"
    return "GPU: " + smi_line.split(",")[0]


def torch_summary(path):
    """The PyTorch comparison's rows, without the per-repeat detail."""
    rep = read_json(path)
    if not rep:
        return None
    keep = ("model", "side", "variant", "batch_label", "status", "note", "ms_median", "images_per_s", "tflops",
            "peak_share", "mem_mib")
    return {"device": rep.get("device"), "settings": rep.get("settings"), "partial": rep.get("partial"),
            "rows": [{k: r.get(k) for k in keep if k in r} for r in rep.get("rows", [])], "ratios": rep.get("ratios")}


def assemble(a):
    """figures.json: every step's status and every figure, each labelled with
    what it was measured on. Rewritten after every step, so a run cut short
    still leaves what it measured."""
    steps = []
    if os.path.exists(os.path.join(a.work, "steps.tsv")):
        for line in open(os.path.join(a.work, "steps.tsv")):
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5:
                steps.append(dict(zip(("step", "result", "seconds", "timeout_s", "detail"), parts)))
    figs = {}
    for path in sorted(glob.glob(os.path.join(a.work, "fig-*.json"))):
        key = os.path.basename(path)[4:-5]
        figs[key] = read_json(path)
    on = measured_on(a.mode, figs.get("machine"))
    for v in figs.values():
        if isinstance(v, dict):
            v["measured_on"] = on
    out = {"measured_on": on, "mode": a.mode, "dry_run": a.mode in DRY_LABELS,
           "started": a.started, "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps,
           "figures": figs}
    tsum = torch_summary(a.torch_json) if a.torch_json else None
    if tsum:
        tsum["measured_on"] = on
        out["torch_compare"] = tsum
    write_json(os.path.join(a.out, "figures.json"), out)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="sub", required=True)
    p = sub.add_parser("digest")
    p.add_argument("root")
    sub.add_parser("nvidia-libdirs")
    p = sub.add_parser("machine")
    p.add_argument("--work", required=True)
    p.add_argument("--mode", default="gpu", choices=("gpu", "cpu", "emulated"))
    p.add_argument("--carried", default="")
    p = sub.add_parser("watch-libs")
    p.add_argument("--out", required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("smoke")
    p.add_argument("--work", required=True)
    p.add_argument("--precision", default="fp32", choices=sorted(TOLERANCE))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("train")
    p.add_argument("--work", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--unet", required=True)
    p.add_argument("--settle", type=int, default=10, help="steps left out of the images/s median")
    p.add_argument("flags", nargs=argparse.REMAINDER)
    p = sub.add_parser("variants")
    p.add_argument("--set", required=True, choices=sorted(VARIANT_SETS))
    p.add_argument("--models", default="", help="keys of bench/train_step_gpu.py's models (default: all three)")
    p.add_argument("--work", required=True)
    p.add_argument("--unet", required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--dry", action="store_true", help="the tiny models, for a dry run on the emulation")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p = sub.add_parser("ncu-summary")
    p.add_argument("--work", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("file")
    p = sub.add_parser("junit")
    p.add_argument("out")
    p.add_argument("inputs", nargs="*")
    p = sub.add_parser("counts")
    p.add_argument("file")
    p = sub.add_parser("ratios")
    p.add_argument("file")
    p = sub.add_parser("assemble")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu", choices=("gpu", "cpu", "emulated"))
    p.add_argument("--started", default="")
    p.add_argument("--torch-json", default="")
    a = ap.parse_args()
    for name in ("command", "flags"):
        if isinstance(getattr(a, name, None), list) and getattr(a, name) and getattr(a, name)[0] == "--":
            setattr(a, name, getattr(a, name)[1:])
    if a.sub == "digest":
        print(digest(a.root))
        return 0
    if a.sub == "nvidia-libdirs":
        print(":".join(nvidia_libdirs()))
        return 0
    return {"machine": machine, "watch-libs": watch_libs, "smoke": smoke, "train": train, "junit": junit,
            "counts": counts, "ratios": ratios, "assemble": assemble, "variants": variants,
            "ncu-summary": ncu_summary}[a.sub](a)


if __name__ == "__main__":
    sys.exit(main())
