#!/usr/bin/python3
"""A training step on the GPU, the engine beside PyTorch on the same GPU in one
run (issue 5's protocol).

Models: the U-Net of the UNet++ paper (filters 32..512, same padding, one
class, BCE + Dice) at 512x512; the original U-Net (64..1024, valid padding,
two classes, cross-entropy) at 572x572; UNet++ (32..512, same padding, one
class, BCE + Dice, deep supervision) at 512x512. Batch 1, 8 and the largest
that fits. Adam (lr 1e-4) on both sides, random data of the same shapes.

The engine's side is `unet bench --device cuda --precision P --json`, one
process per repeat: fp32, tf32 and bf16 (sm_80 and newer; a refusal, on an
older GPU, is recorded as the row's message). PyTorch's side is the same network
(tests/reference_model.py) in four variants: eager fp32 (TF32 off), eager
tf32 (PyTorch's default for convolutions), eager channels_last + bf16
autocast + fused Adam, and torch.compile(mode="max-autotune") on top of the
bf16 one; cudnn.benchmark on in all of them.

Protocol: --warmup (50) untimed steps, then --steps (200) timed ones, in
--repeats (3) repeats. PyTorch's steps are timed with CUDA events, one per
step. The engine times each step inside the process with the host clock and
a device synchronisation around the step, and reports per run only its
median and p90 step (not the single steps). A row gives, over the repeats,
the median of the per-repeat medians and the median of the per-repeat p90s
(and the spread of the medians). images/s = batch / median step;
TFLOP/s = images/s x 3 x forward FLOPs per image (`unet info --json`); the
share is of --peak-tflops (790, the bf16 matrix rate measured on these GPUs).

Largest batch: doubling from the largest fixed batch that ran, then
bisection between the last batch that fitted and the first that did not,
bounded by --max-batch (engine: a run that fails for memory; PyTorch: two
steps without torch.cuda.OutOfMemoryError; torch.compile runs at the bf16
variant's largest batch). Peak memory: the rise of the GPU's used memory
(nvidia-smi, polled) over the run; the engine's includes its CUDA context, so
PyTorch's is its rise plus the size of its own CUDA context, measured once at
the start (without nvidia-smi: the engine's planned bytes and PyTorch's
max_memory_reserved).

    bench/train_step_gpu.py --build DIR [--models unet32,unet-paper,unetpp] [--batches 1,8,max]
        [--warmup 50] [--steps 200] [--repeats 3] [--max-batch 256] [--budget 480] [--skip-torch]
        [--skip-compile] [--gpu 0] [--out bench/results] [--quick] [--short] [--device cpu]

The whole protocol (some 80 rows of 3 x 250 steps, the searches, a max-autotune
compilation per shape) takes hours: --budget S (default 480, 0: none) starts
a row only while its estimate ends within S seconds (a row without an
estimate may run past it) and marks the others as not run; for all of it:
bench/train_step_gpu.py --build build --budget 0. Results are rewritten
after every row, so a run cut short keeps what it measured.
--short is the protocol cut to what scripts/gpu_check.sh has left at its end:
the three models at batch 8, 10 + 30 steps, one repeat, no inference rows,
the engine's fp32, tf32 and bf16 against PyTorch's eager fp32, eager bf16 and
torch.compile in its default mode (no max-autotune); the report says it is
below the protocol.

Writes bench/results/train_step_gpu-<date>-<gpu>.md and .json and prints the
tables. Without a GPU it says so in one line and exits 0. --device cpu --quick
runs the whole pipeline on the CPU on tiny shapes (a smoke run of this script,
no GPU figure), written only to an --out given explicitly. Options meant for
another bench/*_gpu.py are ignored with a note."""
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from common import (ROOT, Budget, MemoryPoller, classify_failure, command_line, device_entry, engine_ready,
                    finish_report, first_line, git_describe, q_median, q_p90, report_base, split_known, used_mib,
                    write_report)

PROTOCOL_MIN = dict(warmup=50, steps=200, repeats=3)


# ---- the models -------------------------------------------------------------

class Model:
    def __init__(self, key, desc, kind, filters, padding, classes, tile, ds=False):
        self.key, self.desc, self.kind, self.filters = key, desc, kind, list(filters)
        self.padding, self.classes, self.tile, self.ds = padding, classes, tile, ds
        self.loss = "ce" if classes > 1 else "bce_dice"

    def flags(self):
        f = ["--model", self.kind, "--filters", ",".join(map(str, self.filters)), "--padding", self.padding,
             "--classes", str(self.classes)]
        return f + (["--deep-supervision"] if self.ds else [])

    def as_dict(self):
        return dict(key=self.key, desc=self.desc, model=self.kind, filters=self.filters, padding=self.padding,
                    classes=self.classes, loss=self.loss, deep_supervision=self.ds, tile=self.tile)


def models(quick):
    if not quick:
        return [Model("unet32", "U-Net 32..512 (UNet++ paper), same, 1 class BCE+Dice, 512x512", "unet",
                      [32, 64, 128, 256, 512], "same", 1, 512),
                Model("unet-paper", "U-Net (paper) 64..1024, valid, 2 classes CE, 572x572", "unet",
                      [64, 128, 256, 512, 1024], "valid", 2, 572),
                Model("unetpp", "UNet++ 32..512, same, 1 class BCE+Dice, deep supervision, 512x512", "unetpp",
                      [32, 64, 128, 256, 512], "same", 1, 512, ds=True)]
    # the same three networks, tiny: filters 4..32, tiles 32 (same) and 92 (valid, the smallest for 4 levels)
    f = [4, 8, 16, 32]
    return [Model("unet32", "U-Net 4..32, same, 1 class BCE+Dice, 32x32 (quick)", "unet", f, "same", 1, 32),
            Model("unet-paper", "U-Net 4..32, valid, 2 classes CE, 92x92 (quick)", "unet", f, "valid", 2, 92),
            Model("unetpp", "UNet++ 4..32, same, 1 class BCE+Dice, deep supervision, 32x32 (quick)", "unetpp", f,
                  "same", 1, 32, ds=True)]


# ---- largest batch -----------------------------------------------------------

def largest_batch(fits, limit, start=1):
    """The largest batch b <= limit with fits(b): doubling from start (which
    is tried first), then bisection between the last batch that fitted and
    the first that did not. Returns (batch or 0 when even start does not fit,
    whether the limit stopped the search, the batches tried in order)."""
    tried = []

    def ok(b):
        tried.append(b)
        return fits(b)

    start = max(1, min(start, limit))
    if not ok(start):
        if start == 1:
            return 0, False, tried
        lo, hi = 0, start
    else:
        lo, hi = start, None
        while hi is None:
            if lo >= limit:
                return lo, True, tried
            b = min(2 * lo, limit)
            if ok(b):
                lo = b
            else:
                hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, False, tried


# ---- the engine's side -------------------------------------------------------

class Ctx:
    """What every measurement needs: where, how long, how often."""

    def __init__(self, args):
        self.args = args
        self.unet = os.path.join(args.build, "unet")
        self.gpu = args.device == "cuda"
        self.engine_device = f"cuda:{args.gpu}" if self.gpu else "cpu"
        self.budget = Budget(args.budget)
        self.torch = None
        self.torch_ctx_mib = None
        self.flops = {}
        self.params = {}
        self.est = {}  # (side, variant, model, mode) -> (batch, ms per step) measured, to estimate larger batches

    def estimate_s(self, key, batch, repeats, warmup, steps, overhead_s):
        known = self.est.get(key)
        if not known:
            return 0.0
        b0, ms0 = known
        per_step = ms0 * max(1.0, batch / b0) / 1e3
        return repeats * ((warmup + steps) * per_step + overhead_s)


def engine_info(ctx, m):
    cmd = [ctx.unet, "info", "--json", *m.flags(), "--tile", str(m.tile)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"train_step_gpu: {' '.join(cmd)} failed: {first_line(r.stderr)}")
    return json.loads(r.stdout)


def engine_cmd(ctx, m, batch, precision, warmup, steps, inference):
    cmd = [ctx.unet, "bench", "--json", "--device", ctx.engine_device, *m.flags(), "--tile", str(m.tile),
           "--batch", str(batch), "--steps", str(steps), "--bench-warmup", str(warmup), "--optimizer", "adam",
           "--lr", "1e-4", *ctx.args.engine_args.split()]
    if ctx.gpu:
        cmd += ["--precision", precision]
    else:
        cmd += ["--threads", str(ctx.args.threads)]
    if inference:
        # the whole network: every head of a deep-supervised one (what predict --mode accurate runs)
        cmd += ["--mode", "accurate" if m.ds else "fast"]
    return cmd


def engine_once(ctx, m, batch, precision, warmup, steps, inference):
    """One `unet bench` process: (result dict or None, failure message)."""
    cmd = engine_cmd(ctx, m, batch, precision, warmup, steps, inference)
    with MemoryPoller(ctx.args.gpu, enabled=ctx.gpu) as mem:
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return None, first_line(r.stderr) or f"exit {r.returncode}"
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, f"no JSON from {' '.join(cmd)}: {r.stdout[-200:]!r}"
    out["mem_rise_mib"] = mem.rise_mib()
    out["command"] = " ".join(cmd[1:])
    return out, None


def engine_predicted_largest(ctx, m, precision):
    """What `unet info` predicts from its planned memory and the device's free
    memory (engines that have it; None otherwise), beside the measured one."""
    cmd = [ctx.unet, "info", "--json", *m.flags(), "--tile", str(m.tile), "--optimizer", "adam", "--device",
           ctx.engine_device] + (["--precision", precision] if ctx.gpu else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(r.stdout).get("largest_batch") if r.returncode == 0 else None
    except ValueError:
        return None


def engine_fits(ctx, m, precision):
    notes = []

    def fits(b):
        out, err = engine_once(ctx, m, b, precision, 1, 2, False)
        if out is not None:
            return True
        if classify_failure(err) != "oom":
            notes.append(f"batch {b}: {err}")
        return False
    return fits, notes


def engine_row(ctx, m, batch, label, precision, inference):
    a = ctx.args
    row = dict(model=m.key, side="engine", variant=precision, mode="inference" if inference else "train",
               batch=batch, batch_label=label, status="ok", note="")
    key = ("engine", precision, m.key, row["mode"])
    why = ctx.budget.refuse(ctx.estimate_s(key, batch, a.repeats, a.warmup, a.steps, 3.0))
    if why:
        return dict(row, status="skipped", note=why)
    reps = []
    for _ in range(a.repeats):
        out, err = engine_once(ctx, m, batch, precision, a.warmup, a.steps, inference)
        if out is None:
            return dict(row, status=classify_failure(err), note=err, repeats=reps)
        reps.append(out)
    row["repeats"] = reps
    if "cuda_graph" in reps[0]:  # engines that capture the step say whether the timed steps were graph replays
        row["cuda_graph"] = reps[0]["cuda_graph"]
        row["note"] = "CUDA graph replays" if reps[0]["cuda_graph"] else \
            "eager" + (f" ({reps[0].get('cuda_graph_note')})" if reps[0].get("cuda_graph_note") else "")
    row["ms_median"] = statistics.median(r["ms_median"] for r in reps)
    row["ms_p90"] = statistics.median(r["ms_p90"] for r in reps)
    row["ms_repeat_range"] = [min(r["ms_median"] for r in reps), max(r["ms_median"] for r in reps)]
    rises = [r["mem_rise_mib"] for r in reps if r.get("mem_rise_mib") is not None]
    planned = reps[0]["activation_bytes"] + reps[0]["workspace_bytes"] + reps[0]["param_bytes"]
    row["mem_planned_mib"] = planned / 2**20
    if rises:
        row["mem_mib"], row["mem_source"] = max(rises), "nvidia-smi rise (includes its CUDA context)"
    else:
        row["mem_mib"], row["mem_source"] = planned / 2**20, "planned (arena + workspace + parameters)"
    ctx.est[key] = (batch, row["ms_median"])
    return row


# ---- PyTorch's side ----------------------------------------------------------

TORCH_VARIANTS = ("fp32", "tf32", "bf16", "compile")


def torch_setup(ctx):
    """Imports torch for PyTorch's side: (module or None, reason when None)."""
    try:
        import torch
    except ImportError as e:
        return None, f"PyTorch is not installed beside this Python ({e})"
    if ctx.gpu and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} here has no CUDA"
    return torch, None


def torch_device(ctx):
    return ctx.torch.device(f"cuda:{ctx.args.gpu}" if ctx.gpu else "cpu")


def torch_context_mib(ctx):
    """What PyTorch's CUDA context and libraries take on the GPU (nvidia-smi),
    so that its peak compares with the engine's whole-process rise."""
    torch = ctx.torch
    before = used_mib(ctx.args.gpu)
    dev = torch_device(ctx)
    x = torch.randn(1, 4, 32, 32, device=dev, requires_grad=True)
    torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, device=dev)).sum().backward()
    (torch.randn(64, 64, device=dev) @ torch.randn(64, 64, device=dev)).sum().item()
    torch.cuda.synchronize(dev)
    del x
    torch.cuda.empty_cache()
    after = used_mib(ctx.args.gpu)
    return None if before is None or after is None else max(0.0, after - before)


def torch_flags(ctx, variant):
    torch = ctx.torch
    torch.backends.cudnn.benchmark = True
    tf32 = variant != "fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


class TorchRun:
    """One network, optimizer and batch of random data in one PyTorch variant."""

    def __init__(self, ctx, m, variant, batch, inference):
        from reference_model import GridNet, total_loss
        torch = ctx.torch
        self.torch, self.ctx, self.variant, self.inference = torch, ctx, variant, inference
        dev = torch_device(ctx)
        self.dev = dev
        torch_flags(ctx, variant)
        fast = variant in ("bf16", "compile")
        net = GridNet(model=m.kind, filters=m.filters, padding=m.padding, classes=m.classes,
                      deep_supervision=m.ds).to(dev)
        fmt = torch.channels_last if fast else torch.contiguous_format
        net = net.to(memory_format=fmt)
        self.net = net.eval() if inference else net.train()
        self.x = torch.rand(batch, 1, m.tile, m.tile, device=dev).contiguous(memory_format=fmt)
        k = max(m.classes, 2)
        self.label = torch.randint(0, k, (batch, 1, m.tile, m.tile), dtype=torch.int32, device=dev)
        self.notes = []
        amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=fast)

        def forward(x):
            with torch.autocast(**amp):
                return net(x)

        def fwd_loss(x, label):
            outs = [o.float() for o in forward(x)]
            return total_loss(outs, label, None, m.loss)[0]

        fn = forward if inference else fwd_loss
        if variant == "compile":
            if not hasattr(torch, "compile"):
                raise RuntimeError(f"torch.compile is not in PyTorch {torch.__version__}")
            # one compilation per row: without a reset, the same function compiled for a 9th network or
            # shape passes dynamo's cache_size_limit (8) and would run eagerly, silently
            torch._dynamo.reset()
            if ctx.gpu and not (ctx.args.quick or ctx.args.short):
                fn = torch.compile(fn, mode="max-autotune")
            elif ctx.gpu:  # a quick or short run: minutes of autotuning per shape are not what it is for
                fn = torch.compile(fn)
                self.notes.append(f"--{'quick' if ctx.args.quick else 'short'}: torch.compile default mode")
            else:  # the smoke run: the plumbing, not Inductor's code generation on 2 cores
                fn = torch.compile(fn, backend="eager")
                self.notes.append("CPU smoke: torch.compile(backend='eager')")
        self.fn = fn
        if not inference:
            fused = fast and dev.type == "cuda"
            if fast and not fused:
                self.notes.append("fused Adam is CUDA-only: foreach Adam")
            self.opt = torch.optim.Adam(net.parameters(), lr=1e-4, **({"fused": True} if fused else {}))

    def step(self):
        if self.inference:
            with self.torch.inference_mode():
                self.fn(self.x)
            return
        self.opt.zero_grad(set_to_none=True)
        loss = self.fn(self.x, self.label)
        loss.backward()
        self.opt.step()

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def time_steps(self, warmup, steps):
        """Milliseconds of each of `steps` steps after `warmup` untimed ones:
        CUDA events between consecutive steps on the GPU, the host clock on the CPU."""
        torch = self.torch
        for _ in range(warmup):
            self.step()
        self.sync()
        if self.dev.type == "cuda":
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            ev[0].record()
            for i in range(steps):
                self.step()
                ev[i + 1].record()
            torch.cuda.synchronize(self.dev)
            return [ev[i].elapsed_time(ev[i + 1]) for i in range(steps)]
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def torch_release(ctx):
    gc.collect()
    if ctx.gpu:
        ctx.torch.cuda.empty_cache()


def is_torch_oom(ctx, e):
    oom = getattr(ctx.torch.cuda, "OutOfMemoryError", ())
    return (oom and isinstance(e, oom)) or "out of memory" in str(e).lower()


def torch_fits(ctx, m, variant):
    notes = []

    def fits(b):
        run, failure = None, None
        try:
            run = TorchRun(ctx, m, variant, b, False)
            for _ in range(2):
                run.step()
            run.sync()
        except Exception as e:  # noqa: BLE001 (an OOM, or a failure to report)
            failure = "oom" if is_torch_oom(ctx, e) else f"batch {b}: {type(e).__name__}: {str(e)[:300]}"
        del run
        torch_release(ctx)  # outside the except block: the traceback no longer holds the tensors
        if failure and failure != "oom":
            notes.append(failure)
        return failure is None
    return fits, notes


def torch_row(ctx, m, batch, label, variant, inference):
    a = ctx.args
    torch = ctx.torch
    row = dict(model=m.key, side="torch", variant=variant, mode="inference" if inference else "train",
               batch=batch, batch_label=label, status="ok", note="")
    key = ("torch", variant, m.key, row["mode"])
    # max-autotune compiles for minutes, the default mode for about one
    min_s = (60.0 if a.quick or a.short else 300.0) if variant == "compile" and ctx.gpu and a.budget else 0.0
    why = ctx.budget.refuse(max(min_s, ctx.estimate_s(key, batch, a.repeats, a.warmup, a.steps, 0.5)))
    if why:
        return dict(row, status="skipped", note=why)
    torch_release(ctx)
    if ctx.gpu:
        torch.cuda.reset_peak_memory_stats(torch_device(ctx))
    run, failure, reps = None, None, []
    with MemoryPoller(a.gpu, enabled=ctx.gpu) as mem:
        try:
            run = TorchRun(ctx, m, variant, batch, inference)
            for _ in range(a.repeats):
                t = run.time_steps(a.warmup, a.steps)
                reps.append(dict(ms_median=q_median(t), ms_p90=q_p90(t), ms_min=min(t)))
            row["note"] = "; ".join(run.notes)
        except Exception as e:  # noqa: BLE001 (compile errors, OOM: the row says which)
            text = str(e).strip().splitlines()
            failure = ("oom" if is_torch_oom(ctx, e) else "error",
                       f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__)
    del run
    if failure:
        torch_release(ctx)
        return dict(row, status=failure[0], note=failure[1], repeats=reps)
    row["repeats"] = reps
    row["ms_median"] = statistics.median(r["ms_median"] for r in reps)
    row["ms_p90"] = statistics.median(r["ms_p90"] for r in reps)
    row["ms_repeat_range"] = [min(r["ms_median"] for r in reps), max(r["ms_median"] for r in reps)]
    if ctx.gpu:
        dev = torch_device(ctx)
        row["mem_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["mem_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
        rise = mem.rise_mib()
        if rise is not None and ctx.torch_ctx_mib is not None:
            row["mem_mib"] = rise + ctx.torch_ctx_mib
            row["mem_source"] = "nvidia-smi rise + PyTorch's CUDA context"
        else:
            row["mem_mib"], row["mem_source"] = row["mem_reserved_mib"], "max_memory_reserved"
    torch_release(ctx)
    ctx.est[key] = (batch, row["ms_median"])
    return row


# ---- the run -----------------------------------------------------------------

def finish_row(ctx, m, row):
    flops = ctx.flops[m.key]
    row["flops_per_image"] = flops
    if row.get("ms_median"):
        ips = row["batch"] / (row["ms_median"] / 1e3)
        row["images_per_s"] = ips
        row["tflops"] = ips * (1 if row["mode"] == "inference" else 3) * flops / 1e12
        row["peak_share"] = row["tflops"] / ctx.args.peak_tflops
    return row


def describe(row):
    if row["status"] != "ok":
        return f"{row['status']}: {row['note']}"
    return (f"{row['ms_median']:.3f} ms/step (p90 {row['ms_p90']:.3f}), {row['images_per_s']:.1f} images/s, "
            f"{row['tflops']:.2f} TFLOP/s" + (f", {row['mem_mib'] / 1024:.2f} GiB" if row.get("mem_mib") else ""))


def plan(ctx, ms):
    """The measurements in the order they run: the fixed batches and batch-1
    inference first, then the largest batches, then torch.compile (minutes
    of autotuning per shape) — so a --budget cuts the least needed last."""
    a = ctx.args
    fixed = [b for b in a.batch_list if b != "max"]
    engine_prec = a.precision_list if ctx.gpu else ["fp32"]
    tv = [v for v in a.torch_variant_list if ctx.gpu or v != "tf32"]  # tf32 is a GPU mode
    eager = [v for v in tv if v != "compile"]
    jobs = []
    for m in ms:
        for b in fixed:
            jobs += [("engine", m, b, p, False) for p in engine_prec]
            jobs += [("torch", m, b, v, False) for v in eager]
        if a.inference:
            jobs += [("engine", m, 1, p, True) for p in engine_prec]
            jobs += [("torch", m, 1, v, True) for v in eager]
    if "max" in a.batch_list:
        for m in ms:
            jobs += [("engine", m, "max", p, False) for p in engine_prec]
            jobs += [("torch", m, "max", v, False) for v in eager]
            if "compile" in tv:
                jobs.append(("torch", m, "max", "compile", False))
    if "compile" in tv:
        for m in ms:
            jobs += [("torch", m, b, "compile", False) for b in fixed]
            if a.inference:
                jobs.append(("torch", m, 1, "compile", True))
    # the max-batch rows of compile after its fixed rows
    return [j for j in jobs if not (j[3] == "compile" and j[2] == "max")] + \
        [j for j in jobs if j[3] == "compile" and j[2] == "max"]


def resolve_max(ctx, side, m, variant, maxes, rows):
    """The largest batch for (side, variant): searched once, shared where the
    memory is the same (tf32 with fp32 on PyTorch's side; compile uses bf16's)."""
    a = ctx.args
    key = (side, m.key, {"tf32": "fp32", "compile": "bf16"}.get(variant, variant) if side == "torch" else variant)
    if key in maxes:
        return maxes[key]
    why = ctx.budget.refuse()
    if why:
        return None, why
    ok_fixed = [r["batch"] for r in rows if r["model"] == m.key and r["side"] == side and r["variant"] == key[2]
                and r["mode"] == "train" and r["status"] == "ok" and r["batch_label"] != "max"]
    start = max(ok_fixed) if ok_fixed else 1
    if side == "engine":
        fits, notes = engine_fits(ctx, m, variant)
    else:
        fits, notes = torch_fits(ctx, m, key[2])
    t0 = time.monotonic()
    best, bounded, tried = largest_batch(fits, a.max_batch, start)
    info = dict(model=m.key, side=side, variant=key[2], largest_batch=best, bounded_by_max_batch=bounded,
                tried=tried, notes=notes, search_s=round(time.monotonic() - t0, 1))
    if side == "engine":
        info["predicted_by_unet_info"] = engine_predicted_largest(ctx, m, variant)
    maxes[key] = (best, info)
    return maxes[key]


def run_all(ctx, ms, report, write):
    rows, maxes = report["rows"], {}
    jobs = plan(ctx, ms)
    for side, m, b, variant, inference in jobs:
        label = str(b)
        if side == "torch" and ctx.torch is None:
            continue
        if b == "max":
            fixed = [r for r in rows if r["model"] == m.key and r["side"] == side and r["variant"] == variant
                     and r["mode"] == "train" and r["batch_label"] != "max" and r["status"] != "skipped"]
            if fixed and all(r["status"] in ("not available", "error") for r in fixed):
                # what failed at every fixed batch (bf16 refused, compile broken) fails here too: no search
                row = dict(model=m.key, side=side, variant=variant, mode="train", batch=0, batch_label="max",
                           status=fixed[0]["status"], note="as at the fixed batches: " + fixed[0]["note"])
                rows.append(finish_row(ctx, m, row))
                write()
                continue
            best, info = resolve_max(ctx, side, m, variant, maxes, rows)
            if best is None or isinstance(info, str):
                row = dict(model=m.key, side=side, variant=variant, mode="train", batch=0, batch_label="max",
                           status="skipped", note=info if isinstance(info, str) else "")
                rows.append(finish_row(ctx, m, row))
                write()
                continue
            if info not in report["largest_batch"]:
                report["largest_batch"].append(info)
            if best == 0:
                row = dict(model=m.key, side=side, variant=variant, mode="train", batch=0, batch_label="max",
                           status="oom" if not info["notes"] else
                           "not available" if all(classify_failure(n) == "not available" for n in info["notes"])
                           else "error",
                           note="; ".join(info["notes"]) or f"batch {info['tried'][0]} does not fit")
                rows.append(finish_row(ctx, m, row))
                write()
                continue
            b = best
            label = f"max={best}" + ("+" if info["bounded_by_max_batch"] else "")
        if side == "engine":
            row = engine_row(ctx, m, b, label, variant, inference)
        else:
            row = torch_row(ctx, m, b, label, variant, inference)
        rows.append(finish_row(ctx, m, row))
        print(f"  {m.key:10s} {side:6s} {variant:8s} {'infer' if inference else 'train'} batch {label:>8s}: "
              f"{describe(row)}", flush=True)
        write()


# ---- the report --------------------------------------------------------------

def fmt(x, spec, none="–"):
    return none if x is None else format(x, spec)


def ratio_rows(report):
    """engine images/s / PyTorch images/s (> 1: the engine is faster), matched
    precision, and best against best."""
    out = []
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    keys = []
    for r in ok:
        k = (r["model"], r["mode"], r["batch_label"].split("=")[0])
        if k not in keys:
            keys.append(k)
    for model, mode, blabel in keys:
        sel = [r for r in ok if r["model"] == model and r["mode"] == mode and r["batch_label"].split("=")[0] == blabel]
        eng = {r["variant"]: r for r in sel if r["side"] == "engine"}
        tor = {r["variant"]: r for r in sel if r["side"] == "torch"}
        if not eng or not tor:
            continue
        row = dict(model=model, mode=mode, batch=blabel)
        for p in ("fp32", "tf32"):
            if p in eng and p in tor:
                row[p] = eng[p]["images_per_s"] / tor[p]["images_per_s"]
        be = max(eng.values(), key=lambda r: r["images_per_s"])
        bt = max(tor.values(), key=lambda r: r["images_per_s"])
        row["best"] = be["images_per_s"] / bt["images_per_s"]
        row["best_pair"] = f"{be['variant']} / {bt['variant']}"
        out.append(row)
    return out


def markdown(report):
    a = report["settings"]
    smoke = report["smoke"]
    dev = report["device"]
    L = []
    if smoke and dev["kind"] == "cpu":
        L.append(f"# train_step_gpu.py smoke run ({report['date']}, {dev['name']}): NOT a GPU measurement\n")
        L.append("Tiny shapes and a handful of steps, to exercise the script; no figure here says anything about a "
                 "GPU.\n")
    elif smoke:
        L.append(f"# train_step_gpu.py --quick run ({report['date']}, {dev['name']}): not the protocol\n")
        L.append("Tiny shapes and a handful of steps, to exercise the script on the GPU; not figures of the "
                 "models or the protocol.\n")
    elif a.get("short"):
        L.append(f"# Training step on the GPU, engine vs PyTorch: SHORT protocol ({report['date']}, {dev['name']})\n")
        L.append("scripts/gpu_check.sh's cut of the protocol (batch 8, few steps, one repeat, torch.compile in its "
                 "default mode): ratios to read, not the benchmark's figures.\n")
    else:
        L.append(f"# Training step on the GPU, engine vs PyTorch ({report['date']}, {dev['name']})\n")
    L.append(f"- Device: {dev['name']}" + (f", driver {dev['driver']}" if dev.get("driver") else "") +
             (f", {dev['memory_total_mib']} MiB" if dev.get("memory_total_mib") else "") + "; PyTorch " +
             str(report["torch"]) + (f" (CUDA {report.get('torch_cuda')}, cuDNN {report.get('cudnn')})"
                                     if report.get("torch_cuda") else "") + f"; engine {report['engine_git']}.")
    L.append(f"- Command: `{report['command']}`")
    L.append(f"- Protocol: {a['warmup']} warm-up + {a['steps']} timed steps, {a['repeats']} repeats"
             + ("" if report["meets_protocol_minimum"] else " (**below the protocol's 50 + 200 steps x 3 repeats**)")
             + f"; Adam lr 1e-4; largest batch searched up to {a['max_batch']}.")
    L.append(("- Timing: PyTorch, CUDA events around every step; " if dev["kind"] == "cuda" else
              f"- Timing ({report['settings'].get('threads')} CPU thread(s) a side): PyTorch, the host clock around "
              "every step; ") +
             "the engine (`unet bench`), the host clock around "
             "every step with a device synchronisation, and only its median and p90 step per run come out. "
             "ms/step is the median over the repeats of each repeat's median step, p90 likewise of the "
             "repeats' p90s; `spread` is the lowest and highest repeat median.")
    L.append(f"- TFLOP/s = images/s x 3 x forward FLOPs per image (`unet info`; inference: x 1); share of "
             f"{a['peak_tflops']:.0f} TFLOP/s (the bf16 matrix rate measured on these GPUs).")
    L.append("- Peak memory: the engine, the rise of the GPU's used memory (nvidia-smi) over its process, CUDA "
             "context included; PyTorch, the rise over the row plus its own CUDA context measured once"
             + (f" ({report['torch_context_mib']:.0f} MiB)" if report.get("torch_context_mib") else "") +
             "; `planned`/`reserved` marks the fallback without nvidia-smi.")
    L.append("- PyTorch variants: `fp32` eager, TF32 off; `tf32` eager, TF32 on (PyTorch's default for "
             "convolutions); `bf16` eager, channels_last + bf16 autocast + fused Adam; `compile` the bf16 variant "
             "under torch.compile(mode=\"max-autotune\"). cudnn.benchmark on in all. The engine: `fp32`, `tf32`, "
             "`bf16` (NHWC bfloat16 activations, float32 master weights; sm_80 and newer).")
    if report["partial"]:
        L.append(f"- **Partial**: {report['partial']}")
    L.append("")
    for mkey, md in report["models"].items():
        L.append(f"- `{mkey}`: {md['desc']}; {md['params']:,} parameters, {md['flops_per_image']:.4g} forward "
                 f"FLOPs per image")
    L.append("\n## Training step\n")
    L.append("| model | batch | side | variant | ms/step | p90 | spread | images/s | TFLOP/s | share | peak mem GiB "
             "| note |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def mem(r):
        if r.get("mem_mib") is None:
            return "–"
        tag = "" if "nvidia-smi" in r.get("mem_source", "") else (" planned" if r["side"] == "engine" else
                                                                   " reserved")
        return f"{r['mem_mib'] / 1024:.2f}{tag}"

    for r in report["rows"]:
        if r["mode"] != "train":
            continue
        side = "engine" if r["side"] == "engine" else "PyTorch"
        if r["status"] == "ok":
            sp = r["ms_repeat_range"]
            L.append(f"| {r['model']} | {r['batch_label']} | {side} | {r['variant']} | {r['ms_median']:.3f} | "
                     f"{r['ms_p90']:.3f} | {sp[0]:.3f}–{sp[1]:.3f} | {r['images_per_s']:.1f} | {r['tflops']:.2f} | "
                     f"{100 * r['peak_share']:.1f} % | {mem(r)} | {r['note']} |")
        else:
            L.append(f"| {r['model']} | {r['batch_label']} | {side} | {r['variant']} | {r['status']} | | | | | | | "
                     f"{r['note'].replace('|', '/')} |")
    inf = [r for r in report["rows"] if r["mode"] == "inference"]
    if inf:
        L.append("\n## Inference latency, batch 1 (every head of a deep-supervised network)\n")
        L.append("| model | side | variant | ms | p90 | spread | note |\n|---|---|---|---|---|---|---|")
        for r in inf:
            side = "engine" if r["side"] == "engine" else "PyTorch"
            if r["status"] == "ok":
                sp = r["ms_repeat_range"]
                L.append(f"| {r['model']} | {side} | {r['variant']} | {r['ms_median']:.3f} | {r['ms_p90']:.3f} | "
                         f"{sp[0]:.3f}–{sp[1]:.3f} | {r['note']} |")
            else:
                L.append(f"| {r['model']} | {side} | {r['variant']} | {r['status']} | | | "
                         f"{r['note'].replace('|', '/')} |")
    if report["largest_batch"]:
        L.append("\n## Largest batch that fits (training)\n")
        L.append("| model | side | variant | largest batch | `unet info` predicts | batches tried | search s | note |")
        L.append("|---|---|---|---|---|---|---|---|")
        for x in report["largest_batch"]:
            side = "engine" if x["side"] == "engine" else "PyTorch"
            lb = f"{x['largest_batch']}" + (" (the --max-batch bound)" if x["bounded_by_max_batch"] else "")
            L.append(f"| {x['model']} | {side} | {x['variant']} | {lb} | {fmt(x.get('predicted_by_unet_info'), '')} | "
                     f"{', '.join(map(str, x['tried']))} | "
                     f"{x['search_s']} | {'; '.join(x['notes']).replace('|', '/')} |")
    if report["ratios"]:
        L.append("\n## Engine / PyTorch (images/s ratio; > 1: the engine is faster)\n")
        L.append("| model | mode | batch | fp32 / fp32 | tf32 / tf32 | best / best "
                 "| best variants (engine / PyTorch) |")
        L.append("|---|---|---|---|---|---|---|")
        for r in report["ratios"]:
            L.append(f"| {r['model']} | {r['mode']} | {r['batch']} | {fmt(r.get('fp32'), '.2f')} | "
                     f"{fmt(r.get('tf32'), '.2f')} | {r['best']:.2f} | {r['best_pair']} |")
    L.append("\nProduced by `bench/train_step_gpu.py`; every number above is in the .json beside this file.")
    return "\n".join(L) + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="the build directory with unet")
    ap.add_argument("--models", default="unet32,unet-paper,unetpp")
    ap.add_argument("--batches", default=None, help="default 1,8,max (--quick: 1,2,max)")
    ap.add_argument("--warmup", type=int, default=None, help="default 50 (--quick: 1)")
    ap.add_argument("--steps", type=int, default=None, help="default 200 (--quick: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 2)")
    ap.add_argument("--max-batch", type=int, default=None, help="bound of the largest-batch search (default 256; "
                    "--quick: 4)")
    ap.add_argument("--precisions", default="fp32,tf32,bf16", help="the engine's")
    ap.add_argument("--torch-variants", default=None, help=f"default {','.join(TORCH_VARIANTS)} "
                    "(--short: fp32,bf16,compile)")
    ap.add_argument("--no-inference", dest="inference", action="store_false", help="no batch-1 inference rows")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--engine-args", default="", help="extra flags for every `unet bench`, e.g. \"--cuda-graph off\"")
    ap.add_argument("--peak-tflops", type=float, default=790.0)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds (0: no limit)")
    ap.add_argument("--gpu", type=int, default=0, help="which GPU (cuda:N)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: with --quick, a smoke run of the script on the CPU")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few steps: a smoke run")
    ap.add_argument("--short", action="store_true", help="the protocol cut to a few minutes (scripts/gpu_check.sh): "
                    "batch 8, 10 + 30 steps, 1 repeat, no inference, compile in its default mode")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of both sides in the CPU smoke run (default 1: "
                    "a busy machine's other work then costs each side alike)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results; smoke runs: only if given)")
    a = split_known(ap, argv, "train_step_gpu")
    q, short = a.quick, a.short
    if q and short:
        ap.error("--quick (tiny shapes) and --short (the models, few steps) are two different cuts: give one")
    a.batches = a.batches or ("1,2,max" if q else "8" if short else "1,8,max")
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 10 if short else 50)
    a.steps = a.steps if a.steps is not None else (2 if q else 30 if short else 200)
    a.repeats = a.repeats if a.repeats is not None else (2 if q else 1 if short else 3)
    a.torch_variants = a.torch_variants or ("fp32,bf16,compile" if short else ",".join(TORCH_VARIANTS))
    if short:
        a.inference = False
    a.max_batch = a.max_batch if a.max_batch is not None else (4 if q else 256)
    if a.device == "cpu" and not q:
        ap.error("--device cpu is the smoke run: give --quick too (the protocol is a GPU measurement)")
    a.batch_list = []
    for b in a.batches.split(","):
        b = b.strip()
        if b == "max" or (b.isdigit() and int(b) > 0):
            a.batch_list.append(b if b == "max" else int(b))
        else:
            ap.error(f"--batches: '{b}' is neither a positive number nor 'max'")
    a.precision_list = [p for p in a.precisions.split(",") if p]
    a.torch_variant_list = [v for v in a.torch_variants.split(",") if v and not (a.skip_compile and v == "compile")]
    bad = [v for v in a.torch_variant_list if v not in TORCH_VARIANTS]
    if bad:
        ap.error(f"--torch-variants: unknown {bad}; known: {', '.join(TORCH_VARIANTS)}")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = Ctx(a)
    all_models = {m.key: m for m in models(a.quick)}
    unknown = [k for k in a.models.split(",") if k not in all_models]
    if unknown:
        sys.exit(f"train_step_gpu: --models: unknown {unknown}; known: {', '.join(all_models)}")
    ms = [all_models[k] for k in a.models.split(",")]
    smoke = a.quick

    if not engine_ready("train_step_gpu", ctx.unet, ctx.gpu, a.gpu):
        return 0

    torch_why = None
    if not a.skip_torch:
        ctx.torch, torch_why = torch_setup(ctx)
        if ctx.torch is not None:
            ctx.torch.manual_seed(0)
            if not ctx.gpu:
                ctx.torch.set_num_threads(a.threads)
    else:
        torch_why = "--skip-torch"

    date = datetime.date.today().isoformat()
    device, dslug = device_entry(ctx.gpu, a.gpu, smoke,
                                 (lambda: ctx.torch.cuda.get_device_name(a.gpu)) if ctx.torch else None)
    report = dict(benchmark="train_step_gpu", date=date, started=datetime.datetime.now().isoformat(timespec="seconds"),
                  smoke=smoke, device=device, host=platform.node(),
                  torch=ctx.torch.__version__ if ctx.torch else f"not used ({torch_why})",
                  engine_git=git_describe(), engine_build=os.path.abspath(a.build),
                  command=command_line("train_step_gpu.py", sys.argv[1:] if argv is None else argv),
                  settings=dict(warmup=a.warmup, steps=a.steps, repeats=a.repeats, max_batch=a.max_batch,
                                batches=a.batches, budget_s=a.budget, peak_tflops=a.peak_tflops,
                                threads=None if ctx.gpu else a.threads, engine_args=a.engine_args,
                                precisions=a.precision_list, torch_variants=a.torch_variant_list, short=a.short),
                  meets_protocol_minimum=(a.warmup >= 50 and a.steps >= 200 and a.repeats >= 3),
                  models={}, rows=[], largest_batch=[], ratios=[], partial="in progress")
    if ctx.torch is not None and ctx.gpu:
        report["torch_cuda"] = ctx.torch.version.cuda
        report["cudnn"] = ctx.torch.backends.cudnn.version()
    for m in ms:
        info = engine_info(ctx, m)
        ctx.flops[m.key] = float(info["flops"])
        report["models"][m.key] = dict(m.as_dict(), params=info["params"], flops_per_image=float(info["flops"]),
                                       output_size=info["output_size"])

    base = report_base(a.out, smoke, f"train_step_gpu-{date}-{dslug}" + ("-short" if a.short else ""))

    def write():
        report["ratios"] = ratio_rows(report)
        write_report(base, report, markdown)

    kind = ("QUICK RUN, not the protocol; " if ctx.gpu else "SMOKE RUN, no GPU figure; ") if smoke else ""
    print(f"train_step_gpu: {device['name']}; " + kind +
          f"PyTorch: {report['torch']}; results: {base + '.{md,json}' if base else 'not written (no --out)'}",
          flush=True)
    if ctx.torch is not None and ctx.gpu:
        ctx.torch_ctx_mib = torch_context_mib(ctx)
        report["torch_context_mib"] = ctx.torch_ctx_mib
    write()
    run_all(ctx, ms, report, write)
    skipped = sum(r["status"] == "skipped" for r in report["rows"])
    report["partial"] = (f"{skipped} rows not run within --budget {a.budget:.0f} s (0: no limit)" if skipped else "")
    finish_report(report, write, markdown, base, ctx.budget.elapsed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
