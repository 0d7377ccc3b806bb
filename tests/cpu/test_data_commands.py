"""unet data import (TIFF and PNG, 8 and 16 bit, through libtiff and libpng),
unet data split and unet data info, held against what PIL and h5py read;
and the ISBI 2012 Rand score (unet_vrand) against a numpy reference of the
challenge's foreground-restricted definition."""
import json
import os
import subprocess

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from unet_testlib import BUILD, UNET

AUGTEST = os.path.join(BUILD, "unet_augtest")
FOUR = ndimage.generate_binary_structure(2, 1)


def unet(*args):
    return subprocess.run([UNET] + [str(a) for a in args], capture_output=True, text=True)


def save(path, array):
    mode = {np.dtype(np.uint8): "L", np.dtype(np.uint16): "I;16"}[array.dtype]
    Image.fromarray(array, mode=mode).save(path)


@pytest.mark.parametrize("fmt,dtype", [("png", np.uint8), ("png", np.uint16), ("tif", np.uint8), ("tif", np.uint16)])
def test_import_gray(tmp_path, fmt, dtype):
    rng = np.random.default_rng(hash((fmt, np.dtype(dtype).name)) % 1000)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    n, h, w = 3, 29, 37
    raws, insts = [], []
    for i in range(n):
        raw = rng.integers(0, np.iinfo(dtype).max + 1, (h, w)).astype(dtype)
        inst = ndimage.label(ndimage.gaussian_filter(rng.random((h, w)), 2) > 0.5, structure=FOUR)[0]
        inst = inst.astype(np.uint16)
        save(tmp_path / "img" / f"s{i:02d}.{fmt}", raw)
        save(tmp_path / "msk" / f"s{i:02d}.{fmt}", inst)
        raws.append(raw), insts.append(inst)
    out = tmp_path / "d.h5"
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert f["raw"].dtype == dtype and f["raw"].shape == (n, h, w)
        np.testing.assert_array_equal(f["raw"][()], np.stack(raws))
        np.testing.assert_array_equal(f["instances"][()], np.stack(insts).astype(np.int32))
        np.testing.assert_array_equal(f["label"][()], (np.stack(insts) > 0).astype(np.uint8))
        assert f["raw"].chunks == (1, h, w) and f["raw"].compression == "gzip"


def test_import_rgb_and_binary_masks(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rgbs, masks = [], []
    for i in range(2):
        rgb = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)
        mask = np.where(rng.random((16, 20)) > 0.6, 255, 0).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(tmp_path / "img" / f"a{i}.png")
        Image.fromarray(mask, "L").save(tmp_path / "msk" / f"a{i}.tif")  # formats may differ per side
        rgbs.append(rgb), masks.append(mask)
    out = tmp_path / "d.h5"
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["raw"][()], np.stack(rgbs).transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(f["label"][()], (np.stack(masks) > 0).astype(np.uint8))
        assert "instances" not in f


def test_import_errors(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    save(tmp_path / "img" / "a.png", np.zeros((8, 8), np.uint8))
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", tmp_path / "d.h5")
    assert r.returncode == 2 and "has no .tif, .tiff or .png files" in r.stderr
    save(tmp_path / "msk" / "b.png", np.zeros((8, 8), np.uint8))
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", tmp_path / "d.h5")
    assert r.returncode == 2 and "a.png has no mask" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    save(tmp_path / "msk" / "a.png", np.zeros((9, 8), np.uint8))
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", tmp_path / "d.h5")
    assert r.returncode == 2 and "size of the images" in r.stderr
    save(tmp_path / "msk" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "img" / "c.tif").write_bytes(b"not a tiff")
    save(tmp_path / "msk" / "c.png", np.zeros((8, 8), np.uint8))
    r = unet("data", "import", "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--output", tmp_path / "d.h5")
    assert r.returncode != 0 and "c.tif" in r.stderr
    assert not (tmp_path / "d.h5").exists()
    r = unet("data", "import", "--images", tmp_path / "img")
    assert r.returncode == 2 and "--masks" in r.stderr
    r = unet("data")
    assert r.returncode == 2 and "unet data weights|import|split|info" in r.stderr
    r = unet("data", "wieghts", "x.h5")
    assert r.returncode == 2 and "did you mean data weights" in r.stderr


def make_file(path, n=10):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=rng.integers(0, 255, (n, 12, 14)).astype(np.uint8), chunks=(1, 12, 14),
                         compression="gzip", shuffle=True)
        f.create_dataset("label", data=(rng.random((n, 12, 14)) > 0.5).astype(np.uint8))
        f.create_dataset("instances", data=rng.integers(0, 4, (n, 12, 14)).astype(np.int32))
        f.create_dataset("meta/scale", data=np.array([0.5, 0.5]))
        f.attrs["origin"] = "test"


def test_split(tmp_path):
    path = tmp_path / "d.h5"
    make_file(path)
    r = unet("data", "split", path, "--val-fraction", "0.3", "--seed", "4")
    assert r.returncode == 0, r.stderr
    with h5py.File(path) as f, h5py.File(tmp_path / "d-train.h5") as t, h5py.File(tmp_path / "d-val.h5") as v:
        assert v["raw"].shape[0] == 3 and t["raw"].shape[0] == 7
        picked = [int(x) for x in r.stdout.split("(")[1].split(" of")[0].split()]
        rest = [i for i in range(10) if i not in picked]
        for k in ("raw", "label", "instances"):
            np.testing.assert_array_equal(v[k][()], f[k][()][picked])
            np.testing.assert_array_equal(t[k][()], f[k][()][rest])
            assert t[k].dtype == f[k].dtype
        np.testing.assert_array_equal(t["meta/scale"][()], [0.5, 0.5])
        assert v.attrs["origin"] == "test"
    # the seed decides the pick, and only the seed
    r2 = unet("data", "split", path, "--val-fraction", "0.3", "--seed", "4")
    r3 = unet("data", "split", path, "--val-fraction", "0.3", "--seed", "5")
    assert r2.stdout == r.stdout and r3.stdout != r.stdout
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((8, 8), np.uint8))
        f.create_dataset("label", data=np.zeros((8, 8), np.uint8))
    r = unet("data", "split", tmp_path / "one.h5", "--val-fraction", "0.3")
    assert r.returncode == 2 and "single image" in r.stderr


def test_info(tmp_path):
    path = tmp_path / "d.h5"
    make_file(path)
    r = unet("data", "info", path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    with h5py.File(path) as f:
        lab = f["label"][()]
        inst = f["instances"][()]
    assert info["images"] == 10 and info["height"] == 12 and info["width"] == 14 and info["raw_type"] == "uint8"
    assert info["label"]["histogram"] == {"0": int((lab == 0).sum()), "1": int((lab == 1).sum())}
    assert info["instances"]["cells"] == sum(len(np.unique(i[i > 0])) for i in inst)
    assert info["weight"] is None
    assert info["datasets"]["raw"] == {"shape": [10, 12, 14], "dtype": "uint8", "chunks": [1, 12, 14],
                                       "filters": ["shuffle", "gzip:4"]}
    assert info["datasets"]["meta/scale"]["chunks"] is None
    r = unet("data", "info", path)
    assert r.returncode == 0 and "label: values 0..1" in r.stdout and "weight: none" in r.stdout


# ---- the Rand score -------------------------------------------------------------------


def vrand_reference(pred, label, cls):
    """Arganda-Carreras et al. 2015: V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2) over the pixels of the
    true foreground (label == cls); segments are 4-connected components; predicted pixels of another class are
    singletons."""
    fg = label == cls
    if not fg.any():
        return 1.0
    t = ndimage.label(fg, structure=FOUR)[0][fg]
    p = ndimage.label(pred == cls, structure=FOUR)[0][fg].astype(np.int64)
    lone = p == 0
    p[lone] = p.max() + 1 + np.arange(lone.sum())
    _, joint = np.unique(np.stack([p, t]), axis=1, return_counts=True)
    _, s = np.unique(p, return_counts=True)
    _, tt = np.unique(t, return_counts=True)
    n = fg.sum()
    pij, si, tj = joint / n, s / n, tt / n
    return (pij ** 2).sum() / (0.5 * (si ** 2).sum() + 0.5 * (tj ** 2).sum())


def vrand(tmp_path, pred, label, cls):
    h, w = label.shape
    np.ascontiguousarray(pred, np.uint8).tofile(tmp_path / "pred.bin")
    np.ascontiguousarray(label, np.int32).tofile(tmp_path / "label.bin")
    out = subprocess.run([AUGTEST, "vrand", "--h", str(h), "--w", str(w), "--class", str(cls), "--dir", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.parametrize("seed", range(4))
def test_vrand_against_numpy(tmp_path, seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 70, 2)
    k = 2 + seed % 3
    label = (ndimage.gaussian_filter(rng.random((h, w)), 2) * k * 1.6).astype(np.int32) % k
    # a prediction that splits, merges and misses: the truth with noise and thin cuts
    pred = label.copy()
    pred[rng.random((h, w)) < 0.05] = rng.integers(0, k)
    pred[:, w // 2] = 0
    for c in range(1, k):
        got, ref = vrand(tmp_path, pred, label, c), vrand_reference(pred, label, c)
        assert abs(got - ref) < 1e-12, (c, got, ref)
    assert vrand(tmp_path, label, label, 1) == 1.0


def test_rand_on_isbi_like_membranes(tmp_path):
    """Cells parted by one-pixel membranes (label 1 = cell, as in datasets/isbi2012.py): a perfect prediction
    scores 1, a merged pair scores below, a split cell scores below, missing membranes score lowest."""
    label = np.ones((40, 40), np.int32)
    label[20, :] = 0
    label[:, 20] = 0
    assert vrand(tmp_path, label, label, 1) == 1.0
    merged = label.copy()
    merged[20, 5:15] = 1
    split = label.copy()
    split[5:15, 10] = 0
    split[10, 0:20] = 0
    none = np.ones_like(label)
    scores = [vrand(tmp_path, p, label, 1) for p in (merged, split, none)]
    for p, s in zip((merged, split, none), scores):
        assert abs(s - vrand_reference(p, label, 1)) < 1e-12
    assert all(s < 1 for s in scores) and scores[2] < scores[0]
