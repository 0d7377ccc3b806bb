"""What the benchmarks share: the machine and GPU they ran on (nvidia-smi,
/proc/cpuinfo, git), reading the engine's answers (its first line, a failure
told apart as out of memory or not available), the --budget clock, options
meant for another benchmark, the engine's median and p90, and the frame of
a GPU benchmark's report (bench/*_gpu.py: the engine probe, the device, where
the report goes, writing and finishing it).

The benchmarks time the networks of tests/reference_model.py and write the
tests' synthetic data (tests/unet_testlib.py): importing this puts tests/ on
the path."""
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

OOM_RE = re.compile(r"out of (\w+ )?memory|ALLOC_FAILED|cudaErrorMemoryAllocation|OutOfMemory", re.I)
UNAVAILABLE_RE = re.compile(r"not implemented|not built in|built without|needs the CUDA backend|"
                            r"needs a GPU of compute capability", re.I)


def nvidia_smi(query, gpu=0):
    """One nvidia-smi --query-gpu answer as a list of strings, or None."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", str(gpu)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode or not r.stdout.strip():
        return None
    return [x.strip() for x in r.stdout.strip().splitlines()[0].split(",")]


def used_mib(gpu=0):
    v = nvidia_smi("memory.used", gpu)
    try:
        return float(v[0]) if v else None
    except ValueError:
        return None


class MemoryPoller:
    """The most GPU memory in use (MiB, nvidia-smi -lms) while it runs, minus
    what was in use when it started: what the work in between added."""

    def __init__(self, gpu, enabled=True):
        self.gpu, self.peak, self.base, self.proc = gpu, None, None, None
        self.enabled = enabled and shutil.which("nvidia-smi") is not None

    def __enter__(self):
        if not self.enabled:
            return self
        self.base = used_mib(self.gpu)
        if self.base is None:
            return self
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", str(self.gpu), "-lms", "50"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                v = float(line.strip())
            except ValueError:
                continue
            self.peak = v if self.peak is None else max(self.peak, v)

    def __exit__(self, *exc):
        if self.proc:
            v = used_mib(self.gpu)  # one more sample, in case the run was shorter than the polling period
            if v is not None:
                self.peak = v if self.peak is None else max(self.peak, v)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.thread.join(timeout=5)
        return False

    def rise_mib(self):
        if self.base is None or self.peak is None:
            return None
        return max(0.0, self.peak - self.base)


def gpu_info(gpu=0):
    v = nvidia_smi("name,driver_version,memory.total", gpu)
    if not v or len(v) < 3:
        return None
    return {"name": v[0], "driver": v[1], "memory_total_mib": float(v[2]) if v[2].replace(".", "").isdigit() else v[2]}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine():
    """The host, its CPU model, cores and architecture."""
    return {"host": socket.gethostname(), "cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine()}


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "unknown"


def git_describe():
    try:
        h = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return h + ("+dirty" if dirty else "") if h else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def first_line(text):
    lines = [x.strip() for x in (text or "").strip().splitlines() if x.strip()]
    msg = lines[-1] if lines else ""
    return msg[len("unet: "):] if msg.startswith("unet: ") else msg


def classify_failure(msg):
    if OOM_RE.search(msg):
        return "oom"
    if UNAVAILABLE_RE.search(msg):
        return "not available"
    return "error"


def engine_cuda_probe(unet, gpu):
    """None when the engine can run on cuda:gpu, else its reason in words."""
    if not os.access(unet, os.X_OK):
        return f"{unet} is not there or not executable (build first)"
    cmd = [unet, "bench", "--json", "--device", f"cuda:{gpu}", "--precision", "fp32", "--base", "8", "--levels",
           "3", "--padding", "same", "--tile", "64", "--steps", "1", "--bench-warmup", "0"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "unet bench on cuda did not answer in 300 s"
    return None if r.returncode == 0 else first_line(r.stderr) or f"exit {r.returncode}"


class Budget:
    """--budget S: work is started only while it can end within S seconds of the start."""

    def __init__(self, seconds):
        self.seconds, self.t0 = seconds, time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.t0

    def left(self):
        return float("inf") if not self.seconds else self.seconds - self.elapsed()

    def refuse(self, estimate_s=0.0):
        """A reason not to start work of about estimate_s seconds, or None."""
        left = self.left()
        if left <= 0:
            return f"not run: --budget {self.seconds:.0f} s spent"
        if estimate_s > left:
            return f"not run: about {estimate_s:.0f} s estimated, {left:.0f} s of --budget left"
        return None


def split_known(ap, argv, name):
    """parse_known_args, with a note for what belongs to another benchmark."""
    args, rest = ap.parse_known_args(argv)
    if rest:
        print(f"{name}: ignoring options meant for another benchmark: {' '.join(rest)}", flush=True)
    return args


def q_median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def q_p90(xs):
    """The engine's definition (src/host/train/bench.c): the sorted value at floor(0.9 (n - 1))."""
    s = sorted(xs)
    return s[int(0.9 * (len(s) - 1))]


# ---- the report of a GPU benchmark (bench/*_gpu.py) ---------------------------

def engine_ready(name, unet, gpu, index):
    """Whether the engine can run the benchmark. On the GPU (cuda:index) a
    probe run must pass, else it says in one line that there is no GPU and
    that nothing is written (the benchmark then exits 0); on the CPU (the
    smoke run) unet must be there, else the benchmark exits with the reason."""
    if not gpu:
        if not os.access(unet, os.X_OK):
            sys.exit(f"{name}: {unet} is not there or not executable (build first)")
        return True
    why = engine_cuda_probe(unet, index)
    if why:
        print(f"{name}: no GPU for the engine here ({why}): nothing measured, no results written")
    return not why


def device_entry(gpu, index, quick, unlisted_name=None):
    """The report's device and the slug of its file names: cuda:index as
    nvidia-smi names it (where it does not, unlisted_name(), else "cuda:N"),
    or the CPU of a smoke run."""
    if not gpu:
        return dict(kind="cpu", name=f"CPU smoke run on {cpu_name()} ({os.cpu_count()} cores)"), "cpu-smoke"
    g = gpu_info(index) or {}
    name = g.get("name") or (unlisted_name() if unlisted_name else f"cuda:{index}")
    device = dict(kind="cuda", index=index, name=name, driver=g.get("driver"),
                  memory_total_mib=g.get("memory_total_mib"))
    return device, slug(name) + ("-quick" if quick else "")


def command_line(script, argv):
    """How the benchmark was started, for its report."""
    return " ".join([os.path.relpath(sys.argv[0]) if sys.argv[0] else script, *argv])


def report_base(out, smoke, stem):
    """Where the report goes, without .json and .md: in --out, else in
    bench/results; a smoke run's only with --out (None: not written)."""
    out_dir = out if out else (None if smoke else os.path.join(HERE, "results"))
    return os.path.join(out_dir, stem) if out_dir else None


def write_report(base, report, markdown):
    """The report as base.json and markdown(report) as base.md; nothing without a base."""
    if not base:
        return
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))


def finish_report(report, write, markdown, base, elapsed_s):
    """Stamps the end, writes the report a last time (write()) and prints its tables."""
    report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    report["elapsed_s"] = round(elapsed_s, 1)
    write()
    print()
    print(markdown(report))
    if base:
        print(f"wrote {base}.md and {base}.json")
