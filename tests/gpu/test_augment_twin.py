"""The augmentation warp on the GPU (src/kernels/cuda/augment.cu) against its
CPU twin (unet_augment_warp, src/host/data/augment.c), through
tests/tools/unet_augtest.c batch: the same source windows, the same draws
(unet_augment_draw with the same keys, as the loader's hook makes them), a
batch warped on the GPU at once and sample by sample on the CPU.

What must hold: raw within 1e-5 relative, labels and weights exactly equal
(nearest-pixel samples), and every output element written (the tool fills
the device outputs with NaN and INT32_MIN before the warp). Both twins run
the arithmetic of src/common/warp_math.h and augment.cu is compiled
without FMA contraction, so the same bits are expected: each case prints
how many raw values differ at all, for the record.

The cases mix, within one batch, samples that are plain copies (flips and
quarter turns), cubic and bilinear ones, elastic grids of different sizes,
rotations and scalings, several channels, odd and even tiles, and a window
without context, so that deformed positions leave it and are mirrored back.

Skips where no GPU is listed by nvidia-smi (UNET_FORCE_GPU_TESTS=1 runs it
anyway), and where the build has no CUDA backend. UNET_CUDA_SYNC=1 is set
so that a fault inside a kernel is reported at the kernel."""
import os
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from unet_testlib import BUILD, requires_gpu, write_ellipses

AUGTEST = os.path.join(BUILD, "unet_augtest")
DATATEST = os.path.join(BUILD, "unet_datatest")

pytestmark = requires_gpu("the GPU augmentation warp runs on a GPU machine")


def run(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       env=dict(os.environ, UNET_CUDA_SYNC=os.environ.get("UNET_CUDA_SYNC", "1")))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def context_of(spec, tile):
    return max(int(run(AUGTEST, "parse", "--spec", s, "--tile", tile).split("context ")[1].split()[0])
               for s in spec.split(";"))


def sources(d, rng, batch, c, s):
    """Smooth raw (what an image looks like to the spline), blob labels with
    values 3..9 (so an unwritten INT32_MIN or a 0 shows), a weight that
    differs from pixel to pixel (so a wrong source pixel shows)."""
    raw = np.stack([ndimage.gaussian_filter(rng.standard_normal((c, s, s)), (0, 1.5, 1.5)) * 3
                    for _ in range(batch)]).astype(np.float32)
    label = np.stack([(ndimage.label(ndimage.gaussian_filter(rng.random((s, s)), 2) > 0.5)[0] % 7 + 3)
                      for _ in range(batch)]).astype(np.int32)
    weight = rng.uniform(0.5, 4.0, (batch, s, s)).astype(np.float32)
    raw.tofile(d / "src_raw.bin")
    label.tofile(d / "src_label.bin")
    weight.tofile(d / "src_weight.bin")
    return label


def warp(d, device, spec, key, batch, tile, context, c, repeat=1):
    out = run(AUGTEST, "batch", "--device", device, "--spec", spec, "--key", key, "--batch", batch, "--tile", tile,
              "--context", context, "--channels", c, "--dir", d, "--repeat", repeat)
    raw = np.fromfile(d / "raw.bin", np.float32).reshape(batch, c, tile, tile)
    label = np.fromfile(d / "label.bin", np.int32).reshape(batch, tile, tile)
    weight = np.fromfile(d / "weight.bin", np.float32).reshape(batch, tile, tile)
    return raw, label, weight, float(out.split("ms ")[1])


CASES = [
    # spec (';' separates the specs of successive samples), batch, tile, context (None: what the specs want), channels
    ("paper", 3, 64, None, 1),
    ("paper;flip,rot90;elastic:sigma=8:grid=5:interp=linear,rotate:deg=30,scale:range=0.2;rotate,scale", 5, 57,
     None, 3),
    ("elastic:sigma=30,flip;elastic:sigma=30:interp=linear,rot90", 4, 40, 0, 2),
    ("elastic:grid=6,rotate:deg=90;elastic:grid=2", 3, 7, 2, 2),
    ("paper", 2, 572, None, 1),
]


@pytest.mark.parametrize("spec,batch,tile,context,c", CASES)
def test_gpu_warp_matches_cpu(tmp_path, spec, batch, tile, context, c):
    rng = np.random.default_rng(batch * 1000 + tile)
    ctx = context_of(spec, tile) if context is None else context
    s = tile + 2 * ctx
    src_label = sources(tmp_path, rng, batch, c, s)
    key = int(rng.integers(0, 2**40))
    cpu = warp(tmp_path, "cpu", spec, key, batch, tile, ctx, c)
    gpu = warp(tmp_path, "cuda", spec, key, batch, tile, ctx, c)
    what = f"{spec!r} batch {batch} tile {tile} context {ctx} channels {c}"
    assert np.all(np.isfinite(gpu[0])), f"{what}: raw has NaN (unwritten) or Inf"
    assert np.all(np.isfinite(gpu[2])), f"{what}: weight has NaN (unwritten) or Inf"
    assert set(np.unique(gpu[1])) <= set(np.unique(src_label)), f"{what}: labels not from the source (unwritten?)"
    diff = np.abs(gpu[0].astype(np.float64) - cpu[0])
    worst = np.max(diff / np.maximum(np.abs(cpu[0]), 1.0))
    print(f"{what}: raw max relative difference {worst:.3g}, {np.count_nonzero(diff)} of {diff.size} values differ; "
          f"cpu {cpu[3]:.2f} ms, gpu {gpu[3]:.2f} ms (with the upload)")
    assert worst <= 1e-5, f"{what}: raw differs from the CPU twin by {worst:.3g} (relative)"
    for n in range(batch):
        bad = np.count_nonzero(gpu[1][n] != cpu[1][n])
        assert bad == 0, f"{what}: sample {n}: {bad} labels differ from the CPU twin"
        assert np.array_equal(gpu[2][n], cpu[2][n]), f"{what}: sample {n}: weights differ from the CPU twin"


def test_gpu_warp_is_a_pure_function_of_its_inputs(tmp_path):
    """The same bits from one call and from the third of three calls through
    one warper (its buffers reused, the outputs poisoned again before each):
    no races, nothing carried over from an earlier batch."""
    rng = np.random.default_rng(7)
    spec, tile, c = "paper;rotate:deg=45", 33, 2
    ctx = context_of(spec, tile)
    sources(tmp_path, rng, 4, c, tile + 2 * ctx)
    once = warp(tmp_path, "cuda", spec, 11, 4, tile, ctx, c)
    thrice = warp(tmp_path, "cuda", spec, 11, 4, tile, ctx, c, repeat=3)
    for x, y in zip(once[:3], thrice[:3]):
        assert x.tobytes() == y.tobytes()


def test_loader_deferred_to_the_gpu(tmp_path):
    """The loader handing its source windows and draws to the GPU warp
    (unet_datatest --defer cuda: reads and draws on the loader's threads, the
    batch warped on the device) gives the batches of the CPU hook."""
    path = write_ellipses(tmp_path / "d.h5", 4, 90, seed=3, weight_seed=1)
    base = ["--data", path, "--batches", "--batch", 3, "--tile", 64, "--margin", 8, "--seed", 4, "--augment",
            "paper,rotate,scale", "--count", 3, "--step", 2, "--workers", 2]
    outputs = []
    for extra in ([], ["--defer", "cuda"]):
        d = tmp_path / ("gpu" if extra else "cpu")
        d.mkdir()
        run(DATATEST, *base, "--dir", d, *extra)
        outputs.append(d)
    for step in (2, 3, 4):
        cpu_raw, gpu_raw = (np.fromfile(d / f"raw.{step}.bin", np.float32) for d in outputs)
        assert np.all(np.isfinite(gpu_raw))
        worst = np.max(np.abs(gpu_raw.astype(np.float64) - cpu_raw) / np.maximum(np.abs(cpu_raw), 1.0))
        assert worst <= 1e-5, f"step {step}: raw differs from the CPU loader by {worst:.3g} (relative)"
        for name in ("label", "weight"):
            a, b = ((d / f"{name}.{step}.bin").read_bytes() for d in outputs)
            assert a == b, f"step {step}: {name} differs from the CPU loader"
