"""Augmentation (src/host/data/augment.c, through tests/tools/unet_augtest.c):
the elastic deformation against the elasticdeform package from PyPI with the
same displacement grid (installed into the build folder when PyPI can be
reached, else skipped) and against an independent scipy reference that always
runs; its identities (zero sigma is the identity, labels keep their values,
raw and label move together); and the loader with augmentation: the same
batches for any number of workers."""
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from unet_testlib import BUILD, write_ellipses

AUGTEST = os.path.join(BUILD, "unet_augtest")
DATATEST = os.path.join(BUILD, "unet_datatest")


def run(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def write_source(d, raw, label, weight):
    np.ascontiguousarray(raw, np.float32).tofile(d / "src_raw.bin")
    np.ascontiguousarray(label, np.int32).tofile(d / "src_label.bin")
    np.ascontiguousarray(weight, np.float32).tofile(d / "src_weight.bin")


def read_tile(d, c, t):
    raw = np.fromfile(d / "raw.bin", np.float32).reshape(c, t, t)
    label = np.fromfile(d / "label.bin", np.int32).reshape(t, t)
    weight = np.fromfile(d / "weight.bin", np.float32).reshape(t, t)
    return raw, label, weight


def warp(d, raw, label, weight, tile, context, dy=None, dx=None, angle=0.0, scale=1.0, flip_x=0, rot90=0,
         linear=False):
    write_source(d, raw, label, weight)
    args = [AUGTEST, "warp", "--tile", tile, "--context", context, "--channels", raw.shape[0], "--dir", d,
            "--angle", repr(angle), "--scale", repr(scale), "--flip-x", flip_x, "--rot90", rot90]
    if dy is not None:
        np.ascontiguousarray(dy, np.float64).tofile(d / "dy.bin")
        np.ascontiguousarray(dx, np.float64).tofile(d / "dx.bin")
        args += ["--grid", dy.shape[0]]
    if linear:
        args.append("--linear")
    run(*args)
    return read_tile(d, raw.shape[0], tile)


def reference(raw, label, weight, tile, context, dy, dx, angle=0.0, scale=1.0, flip_x=0, rot90=0, order=3):
    """The same map written with scipy: the field by map_coordinates (order 3,
    mirror) on the grid, the image by map_coordinates (order 3 or 1, mirror)."""
    y, x = np.mgrid[0:tile, 0:tile].astype(np.float64)
    u, v = y, (tile - 1 - x if flip_x else x)
    for _ in range(rot90):
        u, v = v, tile - 1 - u
    g = dy.shape[0]
    cu, cv = (g - 1) * u / (tile - 1), (g - 1) * v / (tile - 1)
    fy = ndimage.map_coordinates(dy, [cu, cv], order=3, mode="mirror")
    fx = ndimage.map_coordinates(dx, [cu, cv], order=3, mode="mirror")
    c = (tile - 1) / 2
    ca, sa = np.cos(angle) / scale, np.sin(angle) / scale
    sy = context + c + ca * (u - c) - sa * (v - c) + fy
    sx = context + c + sa * (u - c) + ca * (v - c) + fx
    out = np.stack([ndimage.map_coordinates(r.astype(np.float64), [sy, sx], order=order, mode="mirror") for r in raw])
    lab = ndimage.map_coordinates(label, [sy, sx], order=0, mode="mirror")
    wt = ndimage.map_coordinates(weight, [sy, sx], order=0, mode="mirror")
    return out, lab, wt


def smooth_image(rng, c, s):
    return np.stack([ndimage.gaussian_filter(rng.random((s, s)), 2.0) for _ in range(c)]).astype(np.float32)


def blobs(rng, s, k=6):
    return ndimage.label(ndimage.gaussian_filter(rng.random((s, s)), 3) > 0.5)[0].astype(np.int32) % k


@pytest.mark.parametrize("case", range(4))
def test_against_scipy_reference(tmp_path, case):
    rng = np.random.default_rng(100 + case)
    tile = int(rng.integers(20, 70))
    context = int(rng.integers(0, 25))
    grid = int(rng.integers(2, 6))
    c = 1 + case % 2
    s = tile + 2 * context
    raw, label = smooth_image(rng, c, s), blobs(rng, s)
    weight = rng.uniform(0.5, 3, (s, s)).astype(np.float32)
    dy, dx = rng.normal(0, 4, (2, grid, grid))
    kw = dict(angle=float(rng.uniform(-0.3, 0.3)), scale=float(rng.uniform(0.9, 1.1)), flip_x=case % 2, rot90=case)
    for linear in (False, True):
        got = warp(tmp_path, raw, label, weight, tile, context, dy, dx, linear=linear, **kw)
        ref = reference(raw, label, weight, tile, context, dy, dx, order=1 if linear else 3, **kw)
        np.testing.assert_allclose(got[0], ref[0], atol=2e-5, err_msg=f"raw, linear={linear}")
        # nearest sampling: a position within float rounding of a half pixel may round either way
        assert np.mean(got[1] != ref[1]) < 1e-3 and np.mean(got[2] != ref[2]) < 1e-3


def elasticdeform_module(tmp_root):
    try:
        import elasticdeform  # noqa: F401

        return sys.modules["elasticdeform"]
    except ImportError:
        pass
    target = os.path.join(BUILD, "pydeps")
    if not os.path.isdir(os.path.join(target, "elasticdeform")):
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--target", target, "elasticdeform==0.5.1"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            pytest.skip("elasticdeform could not be installed from PyPI here (the scipy reference test still runs)")
    sys.path.insert(0, target)
    try:
        import elasticdeform
    except ImportError as e:
        pytest.skip(f"elasticdeform does not import: {e}")
    return elasticdeform


@pytest.mark.parametrize("grid,tile", [(3, 64), (3, 101), (5, 48)])
def test_against_elasticdeform(tmp_path, grid, tile):
    """elasticdeform.deform_grid on the tile with mirror borders; the engine
    gets the tile mirrored by the context, as the loader hands it over."""
    ed = elasticdeform_module(tmp_path)
    rng = np.random.default_rng(grid * 1000 + tile)
    context = 48
    img = smooth_image(rng, 1, tile)[0]
    lab = blobs(rng, tile)
    displacement = rng.normal(0, 10, (2, grid, grid))  # the paper: sigma 10 px on a coarse grid
    ref_raw = ed.deform_grid(img.astype(np.float64), displacement, order=3, mode="mirror")
    ref_lab = ed.deform_grid(lab, displacement, order=0, mode="mirror")
    src_raw = np.pad(img, context, mode="reflect")[None]
    src_lab = np.pad(lab, context, mode="reflect")
    got_raw, got_lab, _ = warp(tmp_path, src_raw, src_lab, np.ones_like(src_lab, np.float32), tile, context,
                               displacement[0], displacement[1])
    np.testing.assert_allclose(got_raw[0], ref_raw, atol=5e-5)
    assert np.mean(got_lab != ref_lab) < 1e-3


def apply(d, spec, key, raw, label, weight, tile, context="auto"):
    write_source(d, raw, label, weight)
    out = run(AUGTEST, "apply", "--spec", spec, "--key", key, "--tile", tile, "--context", context, "--channels",
              raw.shape[0], "--dir", d)
    return read_tile(d, raw.shape[0], tile), out


def context_of(spec, tile):
    return int(run(AUGTEST, "parse", "--spec", spec, "--tile", tile).split("context ")[1].split()[0])


def test_zero_sigma_is_the_identity(tmp_path):
    rng = np.random.default_rng(1)
    tile = 45
    ctx = context_of("elastic:sigma=0", tile)
    s = tile + 2 * ctx
    raw, label = smooth_image(rng, 2, s), blobs(rng, s)
    weight = rng.random((s, s)).astype(np.float32)
    (r, l, w), _ = apply(tmp_path, "elastic:sigma=0", 5, raw, label, weight, tile)
    crop = (slice(ctx, ctx + tile),) * 2
    assert np.array_equal(r, raw[(slice(None),) + crop]) and np.array_equal(l, label[crop])
    assert np.array_equal(w, weight[crop])
    # an explicit all-zero grid goes through the B-spline: the identity to float precision
    ctx = 12
    s = tile + 2 * ctx
    raw, label = smooth_image(rng, 1, s), blobs(rng, s)
    z = np.zeros((3, 3))
    r, l, _ = warp(tmp_path, raw, label, np.ones((s, s), np.float32), tile, ctx, z, z)
    crop = (slice(ctx, ctx + tile),) * 2
    np.testing.assert_allclose(r[0], raw[0][crop], atol=1e-5)
    assert np.array_equal(l, label[crop])


def test_flips_and_quarter_turns_are_exact(tmp_path):
    rng = np.random.default_rng(2)
    tile = 31
    raw, label = smooth_image(rng, 1, tile), blobs(rng, tile)
    weight = rng.random((tile, tile)).astype(np.float32)
    for flip in (0, 1):
        for k in range(4):
            r, l, w = warp(tmp_path, raw, label, weight, tile, 0, flip_x=flip, rot90=k)
            expect = raw[0][:, ::-1] if flip else raw[0]
            # (u, v) = rot^k(y, x'): tile pixel (y, x) shows source pixel rot^k of it
            yy, xx = np.mgrid[0:tile, 0:tile]
            u, v = yy, (tile - 1 - xx if flip else xx)
            for _ in range(k):
                u, v = v, tile - 1 - u
            assert np.array_equal(r[0], raw[0][u, v]) and np.array_equal(l, label[u, v])
            assert np.array_equal(w, weight[u, v])
            assert expect.shape == r[0].shape


@pytest.mark.parametrize("spec", ["paper", "elastic:sigma=8:grid=4,rotate:deg=30,scale:range=0.2,flip,rot90",
                                  "paper,gamma,brightness,contrast,noise"])
def test_labels_keep_their_values_and_move_with_raw(tmp_path, spec):
    rng = np.random.default_rng(3)
    tile = 128
    ctx = context_of(spec, tile)
    s = tile + 2 * ctx
    label = (blobs(rng, s, k=4) * 3 + 2).astype(np.int32)  # values {2, 5, 8, 11}
    raw = (label / 11.0).astype(np.float32)[None]  # raw is the label, scaled
    weight = (label * 0.5).astype(np.float32)
    for key in range(5):
        (r, l, w), _ = apply(tmp_path, spec, key, raw, label, weight, tile)
        assert set(np.unique(l)) <= {2, 5, 8, 11}
        assert np.array_equal(w, l * 0.5)  # weight moves exactly with the label
        if "noise" in spec:
            continue
        # raw sampled by the interpolating spline from the same positions: a few pixels
        # away from label edges (its ringing decays by 0.27 a pixel) it is the label
        inner = ndimage.minimum_filter(l, 11) == ndimage.maximum_filter(l, 11)
        inner[:6], inner[-6:], inner[:, :6], inner[:, -6:] = False, False, False, False  # unseen beyond the tile
        assert inner.mean() > 0.03
        # (not everywhere: nearest sampling may step over a one-pixel speck that the spline still sees)
        err = np.abs(r[0][inner] - l[inner] / 11.0)
        assert np.mean(err < 2e-3) > 0.98 and np.mean(err < 0.05) > 0.995


def test_draws_depend_on_the_key_only(tmp_path):
    rng = np.random.default_rng(4)
    tile = 40
    ctx = context_of("paper,noise", tile)
    s = tile + 2 * ctx
    raw, label = smooth_image(rng, 1, s), blobs(rng, s)
    weight = np.ones((s, s), np.float32)
    a, _ = apply(tmp_path, "paper,noise", 11, raw, label, weight, tile)
    b, _ = apply(tmp_path, "paper,noise", 11, raw, label, weight, tile)
    c, _ = apply(tmp_path, "paper,noise", 12, raw, label, weight, tile)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_batch_draws_are_the_hooks(tmp_path):
    """The batch mode of the driver (unet_augment_draw, then unet_augment_warp:
    the host half of the GPU warp, tests/gpu/test_augment_twin.py) makes the
    hook's tiles: sample n of a batch is unet_augment_apply with key K + n."""
    rng = np.random.default_rng(6)
    specs, tile, c, batch, key = ["paper", "elastic:grid=4:interp=linear,rotate,scale,flip", "flip,rot90"], 37, 2, 4, 90
    ctx = max(context_of(sp, tile) for sp in specs)
    s = tile + 2 * ctx
    raw = np.stack([smooth_image(rng, c, s) for _ in range(batch)])
    label = np.stack([blobs(rng, s) for _ in range(batch)])
    weight = rng.random((batch, s, s)).astype(np.float32)
    write_source(tmp_path, raw, label, weight)
    run(AUGTEST, "batch", "--device", "cpu", "--spec", ";".join(specs), "--key", key, "--batch", batch, "--tile", tile,
        "--context", ctx, "--channels", c, "--dir", tmp_path)
    got = (np.fromfile(tmp_path / "raw.bin", np.float32).reshape(batch, c, tile, tile),
           np.fromfile(tmp_path / "label.bin", np.int32).reshape(batch, tile, tile),
           np.fromfile(tmp_path / "weight.bin", np.float32).reshape(batch, tile, tile))
    for n in range(batch):
        d = tmp_path / f"sample{n}"
        d.mkdir()
        want, _ = apply(d, specs[n % len(specs)], key + n, raw[n], label[n], weight[n], tile, context=ctx)
        for g, w in zip(got, want):
            assert g[n].tobytes() == w.tobytes()


@pytest.mark.parametrize("spec,message", [
    ("elastc", "unknown augmentation 'elastc'"),
    ("elastic:sigma=-1", "sigma must be a number in"),
    ("elastic:grid=1", "grid must be a number in [2, 64]"),
    ("elastic:interp=nearest", "interp must be cubic or linear"),
    ("flip:x=1", "flip takes no settings"),
    ("paper,,flip", "an empty item"),
    ("none,flip", "none stands alone"),
    ("rotate:angle=3", "unknown setting 'angle' (it takes deg)"),
])
def test_bad_specs(spec, message):
    r = subprocess.run([AUGTEST, "parse", "--spec", spec, "--tile", "64"], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_paper_means_elastic_flip_rot90():
    out = run(AUGTEST, "parse", "--spec", "paper", "--tile", "572")
    assert out.splitlines()[0] == "elastic(sigma 10 px, 3x3 grid, cubic), flip, rot90"
    assert run(AUGTEST, "parse", "--spec", "none", "--tile", "572").splitlines()[2] == "active 0"


def ellipses_file(tmp_path):
    return write_ellipses(tmp_path / "d.h5", 5, 80, seed=1, weight_seed=0)


def test_loader_same_batches_for_any_worker_count(tmp_path):
    path = ellipses_file(tmp_path)
    base = ["--data", path, "--batches", "--batch", 3, "--tile", 60, "--margin", 10, "--seed", 9,
            "--augment", "paper,noise", "--count", 4]
    outputs = []
    for workers, extra in [(0, ["--no-prefetch"]), (1, []), (3, []), (8, [])]:
        d = tmp_path / f"w{workers}"
        d.mkdir()
        run(DATATEST, *base, "--workers", workers, "--dir", d, "--step", 2, *extra)
        outputs.append({n: (d / n).read_bytes() for n in sorted(os.listdir(d))})
    for o in outputs[1:]:
        assert o == outputs[0]
    # a jump back (a resume) gives the same batch as in order
    d = tmp_path / "jump"
    d.mkdir()
    run(DATATEST, *base[:-2], "--count", 1, "--workers", 3, "--dir", d, "--step", 4)
    assert (d / "raw.4.bin").read_bytes() == outputs[0]["raw.4.bin"]
    assert (d / "label.4.bin").read_bytes() == outputs[0]["label.4.bin"]
    lab = np.frombuffer(outputs[0]["label.3.bin"], np.int32)
    assert set(np.unique(lab)) <= {0, 1}


def test_loader_deferred_warp_gives_the_same_batches(tmp_path):
    """A deferred augmentation (the loader reads the source windows and
    records the draws, the warp runs after it: the path of the GPU warp)
    warped on the CPU gives the hook's batches bit for bit, for any number of
    workers."""
    path = ellipses_file(tmp_path)
    spec = "elastic:grid=4,flip,rot90,rotate,scale:range=0.2"
    base = ["--data", path, "--batches", "--batch", 3, "--tile", 60, "--margin", 10, "--seed", 5, "--augment", spec,
            "--count", 3, "--step", 7]
    outputs = []
    for workers, extra in [(2, []), (0, ["--defer", "cpu", "--no-prefetch"]), (3, ["--defer", "cpu"])]:
        d = tmp_path / f"w{workers}{len(extra)}"
        d.mkdir()
        run(DATATEST, *base, "--workers", workers, "--dir", d, *extra)
        outputs.append({n: (d / n).read_bytes() for n in sorted(os.listdir(d))})
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    r = subprocess.run([DATATEST, *map(str, base), "--augment", "paper,noise", "--defer", "cpu", "--dir", tmp_path],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no intensity changes" in r.stderr


def test_augmentation_speed_572(tmp_path):
    """The paper's augmentation of one 572 x 572 tile (printed; the bound is loose for CI)."""
    rng = np.random.default_rng(5)
    tile = 572
    ctx = context_of("paper", tile)
    s = tile + 2 * ctx
    raw = rng.random((1, s, s), np.float32)
    label = (rng.random((s, s)) > 0.5).astype(np.int32)
    write_source(tmp_path, raw, label, np.ones((s, s), np.float32))
    out = run(AUGTEST, "apply", "--spec", "paper", "--key", 3, "--tile", tile, "--context", "auto", "--channels", 1,
              "--dir", tmp_path, "--repeat", 3)
    ms = float(out.split("ms ")[1])
    print(f"paper augmentation of a 572 tile (context {ctx}): {ms:.1f} ms")
    assert ms < 2000
