"""The U-Net paper's border weight map (src/host/data/weightmap.c) against an
independent reference: one full scipy.ndimage.distance_transform_edt per cell,
d1 and d2 the two smallest, on images of touching cells; and `unet data
weights`, which writes the map into the file."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import ndimage

from unet_testlib import BUILD, SOURCE, UNET

AUGTEST = os.path.join(BUILD, "unet_augtest")
sys.path.insert(0, os.path.join(SOURCE, "datasets"))
FOUR = ndimage.generate_binary_structure(2, 1)


def reference(label, cells, w0=10.0, sigma=5.0, balance=True):
    fg = label > 0
    n, nfg = label.size, int(fg.sum())
    nbg = n - nfg
    if balance and nfg and nbg:
        w = np.where(fg, n / (2.0 * nfg), n / (2.0 * nbg))
    else:
        w = np.ones(label.shape)
    if cells is None:
        cells = ndimage.label(fg, structure=FOUR)[0]
    ids = np.unique(cells[cells != 0])
    if len(ids) >= 2:
        d = np.sort(np.stack([ndimage.distance_transform_edt(cells != k) for k in ids]), axis=0)
        w = w + np.where(fg, 0.0, w0 * np.exp(-(d[0] + d[1]) ** 2 / (2 * sigma ** 2)))
    return w.astype(np.float32)


def weight_map(tmp_path, label, cells=None, *extra, repeat=1):
    h, w = label.shape
    np.ascontiguousarray(label, np.int32).tofile(tmp_path / "label.bin")
    args = [AUGTEST, "weightmap", "--h", h, "--w", w, "--dir", tmp_path, "--repeat", repeat]
    if cells is not None:
        np.ascontiguousarray(cells, np.int32).tofile(tmp_path / "cells.bin")
        args.append("--cells")
    r = subprocess.run([str(a) for a in args + list(extra)], capture_output=True, text=True, check=True)
    words = r.stdout.split()
    out = np.fromfile(tmp_path / "weight.bin", np.float32).reshape(h, w)
    return out, int(words[1]), float(words[3])


def touching_cells(rng, h, w, n_seeds):
    """Voronoi cells of random seeds, cut to discs: many cells share an edge
    with no background between them, others are parted by a gap."""
    ys, xs = rng.uniform(0, h, n_seeds), rng.uniform(0, w, n_seeds)
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (yy[None] - ys[:, None, None]) ** 2 + (xx[None] - xs[:, None, None]) ** 2
    owner = d2.argmin(0)
    radius = rng.uniform(3, 9, n_seeds)
    inside = np.sqrt(d2.min(0)) < radius[owner]
    return np.where(inside, owner + 1, 0).astype(np.int32)


def assert_matches(got, ref, what):
    # float32 of the same double formula; exp differs by an ulp at most between libms
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=0, err_msg=what)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_touching_instances(tmp_path, seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(37, 90, 2)
    cells = touching_cells(rng, h, w, int(rng.integers(8, 30)))
    # ids need not be 1..K: scatter them
    cells = np.where(cells > 0, cells * 7 + 1000, 0).astype(np.int32)
    label = (cells > 0).astype(np.int32)
    got, k, _ = weight_map(tmp_path, label, cells)
    assert k == len(np.unique(cells[cells > 0]))
    assert_matches(got, reference(label, cells), "touching instances")


def test_components_of_ellipses(tmp_path):
    import make_ellipses

    _, label, inst = make_ellipses.make(2, 96, seed=3)
    for i in range(2):
        got, k, _ = weight_map(tmp_path, label[i].astype(np.int32), None)
        ref = reference(label[i], None)
        assert k == ndimage.label(label[i] > 0, structure=FOUR)[1]
        assert_matches(got, ref, f"ellipses image {i}")
        got2, _, _ = weight_map(tmp_path, label[i].astype(np.int32), inst[i])
        assert_matches(got2, reference(label[i], inst[i]), f"ellipses image {i} from instances")


@pytest.mark.parametrize("w0,sigma,balance", [(10, 5, False), (3.5, 2.0, True), (25, 12, True)])
def test_parameters(tmp_path, w0, sigma, balance):
    rng = np.random.default_rng(int(w0 * 10))
    cells = touching_cells(rng, 61, 53, 14)
    label = (cells > 0).astype(np.int32)
    extra = ["--w0", w0, "--sigma", sigma] + ([] if balance else ["--no-balance"])
    got, _, _ = weight_map(tmp_path, label, cells, *extra)
    assert_matches(got, reference(label, cells, w0, sigma, balance), f"w0 {w0} sigma {sigma} balance {balance}")


def test_degenerate_images(tmp_path):
    h, w = 19, 23
    empty = np.zeros((h, w), np.int32)
    got, k, _ = weight_map(tmp_path, empty)
    assert k == 0 and np.all(got == 1)  # one class absent: w_c = 1, no cells: no border term
    one = empty.copy()
    one[5:9, 4:12] = 1
    got, k, _ = weight_map(tmp_path, one)
    assert k == 1
    assert_matches(got, reference(one, None), "a single cell: class balance only")
    full = np.ones((h, w), np.int32)
    got, _, _ = weight_map(tmp_path, full)
    assert np.all(got == 1)


def test_speed_100_cells_512(tmp_path):
    """~100 cells on 512x512: the per-cell transforms run over each cell's
    neighbourhood only; still exact against the full reference."""
    rng = np.random.default_rng(7)
    cells = touching_cells(rng, 512, 512, 140)
    label = (cells > 0).astype(np.int32)
    ids = ndimage.label(label > 0, structure=FOUR)[1]
    got, k, ms = weight_map(tmp_path, label, None, repeat=3)
    print(f"weight map 512x512, {k} cells: {ms:.1f} ms")
    assert k == ids and k >= 80
    assert_matches(got, reference(label, None), "512x512")
    assert ms < 1000


def test_data_weights_command(tmp_path):
    import make_ellipses

    raw, label, inst = make_ellipses.make(3, 64, seed=5)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=raw, chunks=(1, 64, 64), compression="gzip", shuffle=True)
        f.create_dataset("label", data=label)
        f.create_dataset("instances", data=inst)
        f.create_dataset("extra/notes", data=np.arange(5))
        f.attrs["source"] = "make_ellipses"
    r = subprocess.run([UNET, "data", "weights", str(path), "--w0", "8", "--sigma", "4"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    with h5py.File(path, "r") as f:
        wt = f["weight"][()]
        assert wt.dtype == np.float32 and wt.shape == (3, 64, 64)
        assert f["weight"].compression == "gzip"
        np.testing.assert_array_equal(f["raw"][()], raw)
        np.testing.assert_array_equal(f["extra/notes"][()], np.arange(5))
        assert f.attrs["source"] == "make_ellipses"
        assert f["weight"].attrs["w0"] == 8 and f["weight"].attrs["sigma"] == 4
    for i in range(3):
        assert_matches(wt[i], reference(label[i], inst[i], 8, 4), f"image {i} from the file")
    # again over the existing map, and nothing left beside the file
    r = subprocess.run([UNET, "data", "weights", str(path), "--no-balance"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with h5py.File(path, "r") as f:
        assert_matches(f["weight"][0], reference(label[0], inst[0], balance=False), "rewritten")
    assert sorted(os.listdir(tmp_path)) == ["d.h5"]


def test_data_weights_errors(tmp_path):
    r = subprocess.run([UNET, "data", "weights", str(tmp_path / "missing.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and "missing.h5" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([UNET, "data", "weights"], capture_output=True, text=True)
    assert r.returncode == 2 and "D.h5" in r.stderr
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=np.zeros((1, 8, 8), np.uint8))
        f.create_dataset("label", data=np.zeros((1, 8, 8), np.uint8))
    r = subprocess.run([UNET, "data", "weights", str(path), "--sigma", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--sigma" in r.stderr
