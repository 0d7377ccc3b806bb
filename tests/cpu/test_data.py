"""Datasets and the batch loader (include/unet/data.h) through the driver
tests/tools/unet_datatest.c, held against numpy: reading every dtype and
rank, scaling, each bad file's one-line error, mirror padding equal to
numpy.pad(mode='reflect'), the loader's determinism, and the scripts in
datasets/."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import ndimage

from unet_testlib import BUILD, SOURCE

DATATEST = os.path.join(BUILD, "unet_datatest")
sys.path.insert(0, os.path.join(SOURCE, "datasets"))
ISBI = os.path.normpath(os.path.join(SOURCE, "..", "shared", "data", "isbi2012"))


def datatest(*args, check=True):
    r = subprocess.run([DATATEST] + [str(a) for a in args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"unet_datatest {' '.join(map(str, args))}: {r.stderr.strip()}")
    return r


def write(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return str(path)


def load(d, name, dtype, shape):
    return np.fromfile(os.path.join(d, name), dtype=dtype).reshape(shape)


def scaled(raw):
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255)
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / np.float32(65535)
    return raw


def random_raw(rng, dtype, shape):
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)


def reflect_window(img, y0, x0, size):
    """img (..., H, W): the size x size window at (y0, x0) of img mirrored by numpy."""
    h, w = img.shape[-2:]
    pad = max(-y0, -x0, y0 + size - h, x0 + size - w, 0)
    widths = [(0, 0)] * (img.ndim - 2) + [(pad, pad), (pad, pad)]
    p = np.pad(img, widths, mode="reflect")
    return p[..., y0 + pad:y0 + pad + size, x0 + pad:x0 + pad + size]


# ---- reading ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_read_dtype_and_rank(tmp_path, dtype, rank):
    rng = np.random.default_rng(rank * 10 + np.dtype(dtype).itemsize)
    n, c, h, w = (1 if rank == 2 else 3), (2 if rank == 4 else 1), 13, 17
    shape = {2: (h, w), 3: (n, h, w), 4: (n, c, h, w)}[rank]
    raw = random_raw(rng, dtype, shape)
    label_dtype = [np.int8, np.uint16, np.int64][rank - 2]
    label = rng.integers(0, 3, (h, w) if rank == 2 else (n, h, w)).astype(label_dtype)
    weight = rng.uniform(0.5, 2, label.shape).astype(np.float32)
    inst = rng.integers(0, 9, label.shape).astype(np.int32)
    path = write(tmp_path / "d.h5", raw=raw, label=label, weight=weight, instances=inst)
    info = datatest("--data", path, "--info", "--classes", 3).stdout.split()
    assert info[1:16:2] == [str(n), str(c), str(h), str(w), "1", "1", "1", "1"]
    assert info[17] == np.dtype(dtype).name
    raw4 = raw.reshape(n, c, h, w)
    lab3, w3, i3 = label.reshape(n, h, w), weight.reshape(n, h, w), inst.reshape(n, h, w)
    for k in range(n):
        datatest("--data", path, "--read", k, "--dir", tmp_path)
        np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (c, h, w)), scaled(raw4[k]))
        np.testing.assert_array_equal(load(tmp_path, "label.bin", np.int32, (h, w)), lab3[k])
        np.testing.assert_array_equal(load(tmp_path, "weight.bin", np.float32, (h, w)), w3[k])
        np.testing.assert_array_equal(load(tmp_path, "instances.bin", np.int32, (h, w)), i3[k])


def test_scaling_extremes_and_default_weight(tmp_path):
    raw = np.array([[[0, 1, 254, 255]]], np.uint8)
    path = write(tmp_path / "d.h5", raw=raw, label=np.zeros((1, 1, 4), np.uint8))
    datatest("--data", path, "--read", 0, "--dir", tmp_path)
    np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (4,)),
                                  np.float32([0, 1, 254, 255]) / np.float32(255))
    np.testing.assert_array_equal(load(tmp_path, "weight.bin", np.float32, (4,)), np.ones(4))
    raw16 = np.array([[[0, 65535]]], np.uint16)
    path = write(tmp_path / "e.h5", raw=raw16, label=np.zeros((1, 1, 2), np.uint8))
    datatest("--data", path, "--read", 0, "--dir", tmp_path)
    np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (2,)), [0, 1])


def test_keys_compressed_and_uncached_files(tmp_path):
    rng = np.random.default_rng(1)
    raw = random_raw(rng, np.uint16, (3, 2, 40, 33))
    label = rng.integers(0, 2, (3, 40, 33)).astype(np.uint8)
    path = str(tmp_path / "k.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=raw, chunks=(1, 2, 40, 33), compression="gzip", shuffle=True)
        f.create_dataset("volumes/labels/neuron_ids", data=label, chunks=(1, 40, 33), compression="gzip")
    keys = ["--raw-key", "volumes/raw", "--label-key", "volumes/labels/neuron_ids"]
    for cache in ([], ["--cache-bytes", 1]):
        info = datatest("--data", path, *keys, *cache, "--info").stdout.split()
        assert info[15] == ("0" if cache else "1")
        datatest("--data", path, *keys, *cache, "--read", 2, "--dir", tmp_path)
        np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (2, 40, 33)), scaled(raw[2]))
        np.testing.assert_array_equal(load(tmp_path, "label.bin", np.int32, (40, 33)), label[2])
        for y0, x0, size in [(-7, 5, 20), (30, -30, 50), (3, 4, 9), (-100, 70, 130)]:
            datatest("--data", path, *keys, *cache, "--window", f"1,{y0},{x0},{size}", "--dir", tmp_path)
            np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (2, size, size)),
                                          reflect_window(scaled(raw[1]), y0, x0, size))
            np.testing.assert_array_equal(load(tmp_path, "label.bin", np.int32, (size, size)),
                                          reflect_window(label[1], y0, x0, size))


# ---- bad inputs: one line naming the file, the dataset and the fix -------------------------


def bad_cases(tmp_path):
    rng = np.random.default_rng(2)
    ok_raw = rng.integers(0, 255, (2, 8, 10)).astype(np.uint8)
    ok_label = rng.integers(0, 2, (2, 8, 10)).astype(np.uint8)
    nan_raw = rng.standard_normal((2, 8, 10)).astype(np.float32)
    nan_raw[1, 3, 4] = np.nan
    inf_raw = nan_raw.copy()
    inf_raw[1, 3, 4] = np.inf
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("not hdf5\n")
    lzf = str(tmp_path / "lzf.h5")
    with h5py.File(lzf, "w") as f:
        f.create_dataset("raw", data=ok_raw, chunks=(1, 8, 10), compression="lzf")
        f.create_dataset("label", data=ok_label)
    neg_weight = np.ones((2, 8, 10), np.float32)
    neg_weight[0, 1, 2] = -1
    mask255 = ok_label * 255

    def f(name, **arrays):
        return write(tmp_path / f"{name}.h5", **arrays)

    return [
        # (path, extra args, words the message must hold)
        (str(tmp_path / "missing.h5"), [], ["missing.h5", "No such file"]),
        (str(not_h5), [], ["text.h5", "not an HDF5 file"]),
        (f("noraw", image=ok_raw, label=ok_label), [], ['"raw"', "image", "--raw-key"]),
        (f("nolabel", raw=ok_raw), [], ['"label"', "--label-key"]),
        (f("rank5", raw=ok_raw.reshape(1, 2, 1, 8, 10), label=ok_label), [], ['"raw"', "5 dimensions"]),
        (f("rank1", raw=ok_raw.ravel(), label=ok_label), [], ['"raw"', "(N,H,W)"]),
        (f("width", raw=ok_raw, label=ok_label[:, :, :9]), [], ['"label"', "(2,8,9)", "(2,8,10)", "W 9 vs 10"]),
        (f("count", raw=ok_raw, label=ok_label[:1]), [], ['"label"', "N 1 vs 2"]),
        (f("axes", raw=ok_raw, label=ok_label.transpose(1, 2, 0)), [], ['"label"', "axis order"]),
        (f("int16", raw=ok_raw.astype(np.int16), label=ok_label), [], ['"raw"', "signed 16-bit", "uint8, uint16"]),
        (f("f64", raw=ok_raw.astype(np.float64), label=ok_label), [], ['"raw"', "64-bit float", "float32"]),
        (f("flabel", raw=ok_raw, label=ok_label.astype(np.float32)), [], ['"label"', "integer"]),
        (f("fweight", raw=ok_raw, label=ok_label, weight=neg_weight.astype(np.float64)), [], ['"weight"', "float32"]),
        (f("mask255", raw=ok_raw, label=mask255), ["--classes", 2], ['"label"', "labels are {0,255}",
                                                                     "--classes 2", "{0,1}"]),
        (f("three", raw=ok_raw, label=ok_label * 3), ["--classes", 2], ['"label"', "up to 3", "--classes 4"]),
        (f("negative", raw=ok_raw, label=ok_label.astype(np.int8) - 1), ["--classes", 2], ['"label"', "-1"]),
        (f("nan", raw=nan_raw, label=ok_label), [], ['"raw"', "NaN", "image 1", "row 3", "column 4"]),
        (f("inf", raw=inf_raw, label=ok_label), [], ['"raw"', "Inf"]),
        (f("negweight", raw=ok_raw, label=ok_label, weight=neg_weight), [], ['"weight"', "-1", ">= 0"]),
        (lzf, [], ['"raw"', "filter 32000", "gzip"]),
        (f("split", raw=ok_raw, label=ok_label), ["--val-fraction", 1.5], ["--val-fraction", "(0, 1)"]),
    ]


def test_bad_inputs_one_line_each(tmp_path):
    for path, extra, words in bad_cases(tmp_path):
        for cache in ([], ["--cache-bytes", 1]):
            r = datatest("--data", path, "--info", *extra, *cache, check=False)
            msg = r.stderr.strip()
            what = f"{os.path.basename(path)} {extra} {cache}: {msg!r}"
            assert r.returncode == 2, what
            assert "\n" not in msg and msg, what
            if "--val-fraction" not in extra:
                assert os.path.basename(path) in msg, what
            for word in words:
                assert word in msg, f"{what} lacks {word!r}"


def test_labels_are_checked_only_against_classes(tmp_path):
    label = np.array([[[0, 1, 2, 3]]], np.uint8)
    path = write(tmp_path / "d.h5", raw=np.zeros((1, 1, 4), np.uint8), label=label)
    assert datatest("--data", path, "--info", "--classes", 4, check=False).returncode == 0
    assert datatest("--data", path, "--info", "--classes", 3, check=False).returncode == 2
    ones = write(tmp_path / "e.h5", raw=np.zeros((1, 1, 4), np.uint8), label=np.array([[[0, 1, 1, 0]]], np.uint8))
    assert datatest("--data", ones, "--info", "--classes", 1, check=False).returncode == 0  # sigmoid head: {0,1}


# ---- held-out split ----------------------------------------------------------------------


def test_validation_split(tmp_path):
    rng = np.random.default_rng(3)
    raw = random_raw(rng, np.uint8, (10, 12, 9))
    label = rng.integers(0, 2, (10, 12, 9)).astype(np.uint8)
    path = write(tmp_path / "d.h5", raw=raw, label=label)
    lines = datatest("--data", path, "--info", "--val-fraction", 0.25).stdout.splitlines()
    assert lines[1:] == ["train 0 7 0 12", "val 7 3 0 12"]  # last ceil(0.25 * 10) images
    datatest("--data", path, "--val-fraction", 0.25, "--use-val", "--read", 0, "--dir", tmp_path)
    np.testing.assert_array_equal(load(tmp_path, "label.bin", np.int32, (12, 9)), label[7])
    one = write(tmp_path / "one.h5", raw=raw[0], label=label[0])
    lines = datatest("--data", one, "--info", "--val-fraction", 0.25).stdout.splitlines()
    assert lines[1:] == ["train 0 1 0 9", "val 0 1 9 3"]  # bottom ceil(0.25 * 12) rows
    datatest("--data", one, "--val-fraction", 0.25, "--use-val", "--read", 0, "--dir", tmp_path)
    np.testing.assert_array_equal(load(tmp_path, "raw.bin", np.float32, (3, 9)), scaled(raw[0, 9:]))
    # Mirroring stays inside a view: the training rows never show validation rows.
    datatest("--data", one, "--val-fraction", 0.25, "--window", "0,-4,-3,20", "--dir", tmp_path)
    np.testing.assert_array_equal(load(tmp_path, "label.bin", np.int32, (20, 20)),
                                  reflect_window(label[0, :9], -4, -3, 20))
    val = write(tmp_path / "v.h5", raw=raw[:2], label=label[:2])
    lines = datatest("--data", path, "--val", val, "--info").stdout.splitlines()
    assert lines[1:] == ["train 0 10 0 12", "val 0 2 0 12"]


# ---- loader -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Images smaller than the tiles below, so windows need repeated reflection."""
    d = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(4)
    raw = random_raw(rng, np.uint16, (5, 2, 23, 19))
    label = rng.integers(0, 3, (5, 23, 19)).astype(np.uint8)
    weight = rng.uniform(0.1, 3, (5, 23, 19)).astype(np.float32)
    return write(d / "small.h5", raw=raw, label=label, weight=weight), raw, label, weight


def batches(tmp_path, path, sub, *args):
    out = tmp_path / sub
    out.mkdir()
    datatest("--data", path, "--batches", "--dir", out, *args)
    samples = np.loadtxt(out / "samples.txt", dtype=np.int64, ndmin=2)
    return out, samples


def read_batch(out, step, b, c, t):
    return (load(out, f"raw.{step}.bin", np.float32, (b, c, t, t)),
            load(out, f"label.{step}.bin", np.int32, (b, 1, t, t)),
            load(out, f"weight.{step}.bin", np.float32, (b, 1, t, t)))


def test_batches_are_mirrored_windows(tmp_path, small_set):
    path, raw, label, weight = small_set
    B, T, M = 3, 32, 6
    out, samples = batches(tmp_path, path, "a", "--step", 0, "--count", 4, "--batch", B, "--tile", T,
                           "--margin", M, "--seed", 7)
    for step, slot, k, y0, x0 in samples:
        r, lab, w = (a[slot] for a in read_batch(out, step, B, 2, T))
        np.testing.assert_array_equal(r, reflect_window(scaled(raw[k]), y0, x0, T))
        np.testing.assert_array_equal(lab[0], reflect_window(label[k], y0, x0, T))
        np.testing.assert_array_equal(w[0], reflect_window(weight[k], y0, x0, T))


def test_loader_is_a_pure_function_of_seed_and_step(tmp_path, small_set):
    path = small_set[0]
    args = ["--batch", 2, "--tile", 16, "--margin", 3, "--seed", 11]
    a, sa = batches(tmp_path, path, "a", "--step", 0, "--count", 6, *args)
    b, sb = batches(tmp_path, path, "b", "--step", 0, "--count", 6, *args, "--no-prefetch")
    c, sc = batches(tmp_path, path, "c", "--step", 3, "--count", 3, *args)  # a resumed run
    d, sd = batches(tmp_path, path, "d", "--step", 0, "--count", 2, *args, "--cache-bytes", 1)
    e, se = batches(tmp_path, path, "e", "--step", 0, "--count", 2, *args, "--augment-test", 5)
    f, sf = batches(tmp_path, path, "f", "--step", 0, "--count", 1, *args[:-1], 12)
    for name in ("raw", "label", "weight"):
        for s in range(6):
            ref = (a / f"{name}.{s}.bin").read_bytes()
            assert (b / f"{name}.{s}.bin").read_bytes() == ref, f"prefetch changed {name} of step {s}"
            if s >= 3:
                assert (c / f"{name}.{s}.bin").read_bytes() == ref, f"resume changed {name} of step {s}"
            if s < 2:
                assert (d / f"{name}.{s}.bin").read_bytes() == ref, f"reading per tile changed {name} of step {s}"
                assert (e / f"{name}.{s}.bin").read_bytes() == ref, f"the augmentation seam moved {name}"
    np.testing.assert_array_equal(sc, sa[6:])
    assert (a / "raw.0.bin").read_bytes() != (a / "raw.1.bin").read_bytes()
    assert (f / "raw.0.bin").read_bytes() != (a / "raw.0.bin").read_bytes()


def test_sample_order_and_tile_positions(tmp_path):
    rng = np.random.default_rng(5)
    n, h, w, T, M = 7, 40, 30, 16, 4
    path = write(tmp_path / "d.h5", raw=random_raw(rng, np.uint8, (n, h, w)),
                 label=np.zeros((n, h, w), np.uint8))
    _, s = batches(tmp_path, path, "a", "--step", 0, "--count", 70, "--batch", 3, "--tile", T, "--margin", M,
                   "--seed", 1)
    images = s[:, 2]
    epochs = [images[i * n:(i + 1) * n] for i in range(len(images) // n)]
    for e in epochs:
        assert sorted(e) == list(range(n)), "an epoch must visit every image once"
    assert len({tuple(e) for e in epochs}) > 1, "each epoch must have its own order"
    out = T - 2 * M  # the output window ranges over the image: tile starts from -M to H - T + M
    y0, x0 = s[:, 3], s[:, 4]
    assert y0.min() == -M and y0.max() == h - out - M
    assert x0.min() == -M and x0.max() == w - out - M
    _, s = batches(tmp_path, path, "b", "--step", 0, "--count", 5, "--batch", 3, "--tile", T, "--no-shuffle")
    np.testing.assert_array_equal(s[:, 2], np.arange(15) % n)
    # An image smaller than the output window lies inside it.
    small = write(tmp_path / "s.h5", raw=np.zeros((1, 5, 6), np.uint8), label=np.zeros((1, 5, 6), np.uint8))
    _, s = batches(tmp_path, small, "c", "--step", 0, "--count", 60, "--batch", 1, "--tile", 20, "--margin", 2)
    assert s[:, 3].min() == 5 - 16 - 2 and s[:, 3].max() == -2
    assert s[:, 4].min() == 6 - 16 - 2 and s[:, 4].max() == -2


def test_eval_tiles(tmp_path, small_set):
    path, raw, label, _ = small_set
    T, M = 12, 2
    r = datatest("--data", path, "--eval-tiles", "--tile", T, "--margin", M, "--batch", 4, "--dir", tmp_path)
    out = T - 2 * M
    ys = [0, 8, 23 - out]  # the last window moved back to end at the edge
    xs = [0, 8, 19 - out]
    total = 5 * len(ys) * len(xs)
    assert r.stdout.split() == ["tiles", str(total), "of", str(total)]
    got = load(tmp_path, "raw.bin", np.float32, (total, 2, T, T))
    lab = load(tmp_path, "label.bin", np.int32, (total, T, T))
    i = 0
    for k in range(5):
        for y in ys:
            for x in xs:
                np.testing.assert_array_equal(got[i], reflect_window(scaled(raw[k]), y - M, x - M, T))
                np.testing.assert_array_equal(lab[i], reflect_window(label[k], y - M, x - M, T))
                i += 1


# ---- dataset scripts ------------------------------------------------------------------------


def test_ellipses(tmp_path):
    import make_ellipses
    raw, label, inst = make_ellipses.make(3, 64, seed=5)
    raw2, _, inst2 = make_ellipses.make(3, 64, seed=5)
    np.testing.assert_array_equal(raw, raw2)
    np.testing.assert_array_equal(inst, inst2)
    assert raw.dtype == np.uint8 and label.dtype == np.uint8 and inst.dtype == np.int32
    assert raw.shape == label.shape == inst.shape == (3, 64, 64)
    np.testing.assert_array_equal(label, inst > 0)
    assert 0.25 < label.mean() < 0.75
    assert raw[label == 1].mean() > raw[label == 0].mean() + 60
    near = 0
    for im in inst:
        ids = np.unique(im)[1:]
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        for a, b in ((im[1:], im[:-1]), (im[:, 1:], im[:, :-1])):
            assert not ((a != b) & (a > 0) & (b > 0)).any(), "instances must not share an edge"
        for a, b in ((im[2:], im[:-2]), (im[:, 2:], im[:, :-2])):
            near += ((a != b) & (a > 0) & (b > 0)).sum()
    assert near > 20, "cells should touch (parted by a one-pixel line)"
    out = tmp_path / "e.h5"
    subprocess.run([sys.executable, os.path.join(SOURCE, "datasets", "make_ellipses.py"), "--n", "2", "--size", "48",
                    "--seed", "1", "-o", str(out)], check=True, capture_output=True)
    with h5py.File(out) as f:
        assert f["raw"].chunks == (1, 48, 48) and f["raw"].compression == "gzip" and f["raw"].shuffle
        assert f["instances"].dtype == np.int32
    datatest("--data", out, "--info", "--classes", 2)


def test_nuclei_conversion(tmp_path):
    import nuclei
    rng = np.random.default_rng(6)
    image = rng.integers(0, 236, (64, 40)).astype(np.uint16)
    mask = np.zeros((64, 40), np.uint16)
    mask[10:20, 5:15], mask[10:20, 15:25], mask[50:60, 5:15] = 1, 2, 3  # 1 and 2 touch
    train, val = nuclei.convert(image, mask, str(tmp_path), val_rows=16)
    with h5py.File(train) as f, h5py.File(val) as g:
        assert f["raw"].dtype == np.uint8 and f["raw"].shape == (1, 48, 40) and g["raw"].shape == (1, 16, 40)
        np.testing.assert_array_equal(np.concatenate([f["raw"][0], g["raw"][0]]), image)
        inst = np.concatenate([f["instances"][0], g["instances"][0]])
        np.testing.assert_array_equal(np.concatenate([f["label"][0], g["label"][0]]), inst > 0)
        assert (inst[10:20, 14] == 1).all() and (inst[10:20, 15] == 0).all(), "touching nuclei are parted"
        assert f["raw"].compression == "gzip" and f["raw"].chunks == (1, 48, 40)
    wide = nuclei.convert(image * 300, mask, str(tmp_path / "wide"), val_rows=16)[0]
    with h5py.File(wide) as f:
        assert f["raw"].dtype == np.uint16
    for p in (train, val):
        datatest("--data", p, "--info", "--classes", 2)


def test_nuclei_checksums(tmp_path):
    import zipfile
    import nuclei
    wheel = tmp_path / "stardist-0.9.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for member, _ in nuclei.MEMBERS.values():
            z.writestr(member, b"not the image")
    with pytest.raises(SystemExit, match="sha256"):
        nuclei.extract(str(wheel))


def mnfinder_wheel(path, members):
    """A zip laid out as the mnfinder wheel: {name under mnfinder/: array}, .tif and .png through PIL."""
    import io
    import zipfile
    from PIL import Image
    with zipfile.ZipFile(path, "w") as z:
        for name, a in members.items():
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="TIFF" if name.endswith(".tif") else "PNG")
            z.writestr("mnfinder/" + name, buf.getvalue())
    return str(path)


def test_mnfinder_conversion(tmp_path):
    import mnfinder
    from common import separate_touching
    rng = np.random.default_rng(7)
    image = rng.integers(600, 9000, (40, 52)).astype(np.uint16)  # a grid of 16-px tiles: rows 4..35, cols 2..49
    ids = np.zeros((40, 52), np.int32)  # blue = id + 1, 0 = no nucleus
    ids[6:14, 4:12], ids[6:14, 12:20] = 6, 7      # nuclei 5 and 6 touch
    ids[26:32, 30:36] = 6                         # a second piece of nucleus 5
    ids[20:26, 40:46] = 1                         # a nucleus of id 0
    nuclei = np.zeros((40, 52, 4), np.uint8)
    nuclei[ids > 0] = 255
    nuclei[..., 2] = np.maximum(ids - 1, 0)
    dots = np.zeros((40, 52, 4), np.uint8)
    dots[16:18, 8:10] = dots[30:32, 20:22] = (255, 188, 5, 255)  # two micronuclei of nucleus 5
    other = rng.integers(0, 200, (32, 32)).astype(np.uint8)
    empty = np.zeros((32, 32, 4), np.uint8)
    wheel = mnfinder_wheel(tmp_path / "mnfinder-1.2.3-py3-none-any.whl", {
        "training-data/a/images/1.tif": image, "training-data/a/nucleus_masks/1.png": nuclei,
        "training-data/a/mn_masks/1.png": dots,
        "validation-data/b/images/2.tif": other, "validation-data/b/nucleus_masks/2.png": empty,
        "validation-data/b/mn_masks/2.png": empty,
        "test-data/c/images/3.tif": image, "test-data/c/nucleus_masks/3.png": nuclei,  # a training image again
        "test-data/c/mn_masks/3.png": dots})
    parts = mnfinder.convert(mnfinder.read_images(wheel), str(tmp_path), tile=16)
    assert parts["train"][1:] == (1, 6) and parts["val"][1:] == (1, 4), "the repeated training image is dropped"
    with h5py.File(parts["train"][0]) as f:
        origins = f.attrs["tile_origin"]
        assert [tuple(o) for o in origins] == [(0, y, x) for y in (4, 20) for x in (2, 18, 34)]
        raw, inst, mn = (np.zeros((40, 52), f[k].dtype) for k in ("raw", "instances", "micronuclei"))
        for k, (_, y, x) in enumerate(origins):
            for whole, part in ((raw, "raw"), (inst, "instances"), (mn, "micronuclei")):
                whole[y:y + 16, x:x + 16] = f[part][k]
        np.testing.assert_array_equal(f["label"][:], f["instances"][:] > 0)
        assert f["raw"].dtype == np.float32 and f["raw"].compression == "gzip" and f["raw"].chunks == (1, 16, 16)
    lo, hi = np.percentile(image, (1, 99.8))
    np.testing.assert_allclose(raw[4:36, 2:50], ((image - lo) / (hi - lo))[4:36, 2:50], rtol=1e-6)
    assert len(np.unique(inst)) == 5, "four nuclei: two pieces of one id, one of id 0, and its neighbour"
    assert inst[10, 8] != inst[28, 33] and inst[22, 42] > 0
    np.testing.assert_array_equal(inst > 0, separate_touching(ids) > 0)
    assert inst[10, 11] > 0 and inst[10, 12] == 0, "touching nuclei are parted"
    assert len(np.unique(mn)) == 3 and (mn[16:18, 8:10] > 0).all()
    for part in ("train", "val"):
        datatest("--data", parts[part][0], "--info", "--classes", 2)


def test_mnfinder_checksum(tmp_path):
    import mnfinder
    wheel = tmp_path / "mnfinder-1.2.3-py3-none-any.whl"
    wheel.write_bytes(b"not the wheel")
    with pytest.raises(SystemExit, match="sha256"):
        mnfinder.check_wheel(str(wheel))


@pytest.mark.skipif(not os.path.isdir(ISBI), reason="no ../shared/data/isbi2012")
def test_isbi2012_converter(tmp_path):
    import isbi2012
    paths = isbi2012.convert(ISBI, str(tmp_path), val_first=24)
    with h5py.File(paths["train"]) as f, h5py.File(paths["val"]) as g, h5py.File(paths["test"]) as t:
        assert f["raw"].shape == (24, 512, 512) and g["raw"].shape == (6, 512, 512) and t["raw"].shape == (30, 512, 512)
        assert set(np.unique(f["label"][:])) == {0, 1}
        from PIL import Image
        gt = np.array(Image.open(os.path.join(ISBI, "train", "label", "25.png")))
        np.testing.assert_array_equal(g["label"][1], gt == 255)
        ref, count = ndimage.label(gt == 255)  # SciPy's default structure is 4-connected
        np.testing.assert_array_equal(g["instances"][1], ref)
        assert count > 50
        assert "label" not in t
    datatest("--data", paths["train"], "--info", "--classes", 2)
    r = datatest("--data", paths["test"], "--info", "--label-optional")
    assert r.stdout.split()[1] == "30"
