#!/usr/bin/env python3
"""The U-Net paper's EM data, the ISBI 2012 training set (30 slices of
512x512, labels 255 = cell, 0 = membrane), into HDF5 for unet.

Adjacent slices are neighbours in the volume, so training and validation are
blocks of slices, not a random pick:

    <out>/isbi2012_train.h5   slices 0 .. val_first-1     (default 0..23)
    <out>/isbi2012_val.h5     slices val_first .. 29      (default 24..29)
    <out>/isbi2012_test.h5    the 30 unlabelled test slices, raw only (for unet predict)

raw (N,512,512) uint8; label uint8 {0,1}, 1 = cell; instances int32, the
4-connected components of the cell label of each slice (membranes part the
cells already). gzip + shuffle, one chunk per slice. The data is read where
it lies and never copied into the repository (its terms: ../shared/data/isbi2012/README.md).
Needs PIL (Debian: python3-pil) and SciPy (python3-scipy).

    python3 datasets/isbi2012.py [--src ../shared/data/isbi2012] [--out data] [--val-first 24]
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

from common import write_h5

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SRC = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "isbi2012"))
SLICES = 30
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def read_stack(folder):
    images = []
    for i in range(SLICES):
        path = os.path.join(folder, f"{i}.png")
        if not os.path.exists(path):
            sys.exit(f"isbi2012.py: {path} is missing: --src must be the isbi2012 folder with train/image, "
                     f"train/label and test, slices 0..{SLICES - 1}.png")
        images.append(np.array(Image.open(path)))
    stack = np.stack(images)
    if stack.dtype != np.uint8 or stack.ndim != 3:
        sys.exit(f"isbi2012.py: {folder} holds {stack.dtype} images of shape {stack.shape[1:]}, expected 8-bit gray")
    return stack


def instances_of(label):
    inst = np.zeros(label.shape, np.int32)
    for i, cells in enumerate(label):
        inst[i] = ndimage.label(cells, structure=FOUR_CONNECTED)[0]
    return inst


def convert(src, out, val_first=24):
    if not 0 < val_first < SLICES:
        sys.exit(f"isbi2012.py: --val-first {val_first} must leave slices for both parts: 1..{SLICES - 1}")
    raw = read_stack(os.path.join(src, "train", "image"))
    gt = read_stack(os.path.join(src, "train", "label"))
    values = np.unique(gt)
    if not set(values.tolist()) <= {0, 255}:
        sys.exit(f"isbi2012.py: labels in {src}/train/label hold {values[:8].tolist()}, expected 0 (membrane) "
                 f"and 255 (cell)")
    label = (gt == 255).astype(np.uint8)
    inst = instances_of(label)
    test = read_stack(os.path.join(src, "test"))
    terms = "ISBI 2012 EM segmentation challenge training data; cite Cardona et al. 2010, Arganda-Carreras et al. 2015"
    parts = {"train": slice(0, val_first), "val": slice(val_first, SLICES)}
    paths = {}
    for name, s in parts.items():
        paths[name] = os.path.join(out, f"isbi2012_{name}.h5")
        write_h5(paths[name], {"raw": raw[s], "label": label[s], "instances": inst[s]},
                 {"source": terms, "slices": f"{s.start}..{s.stop - 1}"})
    paths["test"] = os.path.join(out, "isbi2012_test.h5")
    write_h5(paths["test"], {"raw": test}, {"source": terms, "slices": "test 0..29"})
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=DEFAULT_SRC, help="the isbi2012 folder (default ../shared/data/isbi2012)")
    ap.add_argument("--out", default="data", help="folder for the .h5 files")
    ap.add_argument("--val-first", type=int, default=24, help="first slice of the validation block")
    args = ap.parse_args()
    if not os.path.isdir(args.src):
        sys.exit(f"isbi2012.py: {args.src} is not a folder: give the ISBI 2012 data with --src")
    paths = convert(args.src, args.out, args.val_first)
    print(", ".join(paths.values()) + f": slices 0..{args.val_first - 1} train, {args.val_first}..29 val")


if __name__ == "__main__":
    main()
