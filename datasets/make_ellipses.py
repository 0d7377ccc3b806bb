#!/usr/bin/env python3
"""Synthetic touching cells for tests and smoke runs: random ellipses packed
so that many touch, each with its own instance id.

Where two cells touch, the one-pixel line between them is background, as in
the U-Net paper's masks (and ISBI 2012's membranes): that line is what the
paper's border weight map makes the network learn. So `label` is
`instances > 0`, and no two instances share an edge.

Writes an HDF5 file (gzip + shuffle, one chunk per image):
    raw        (N, H, W) uint8    cells brighter than background, with texture and noise
    label      (N, H, W) uint8    {0, 1}
    instances  (N, H, W) int32    0 background, 1..K cells of each image

    python3 datasets/make_ellipses.py --n 16 --size 256 --seed 0 -o data/ellipses.h5
"""
import argparse

import numpy as np

from common import separate_touching, write_h5


def draw_instances(rng, size, mean_radius):
    """Paints ellipses one after another into the background left by the
    earlier ones, skipping any that would lose more than a quarter of itself,
    then parts touching cells by a background line."""
    inst = np.zeros((size, size), np.int32)
    count = max(1, int(2.0 * size * size / (np.pi * mean_radius ** 2)))
    yy, xx = np.mgrid[0:size, 0:size]
    k = 0
    for _ in range(count):
        a = mean_radius * rng.uniform(0.6, 1.4)
        b = a * rng.uniform(0.5, 1.0)
        cy, cx = rng.uniform(0, size, 2)
        t = rng.uniform(0, np.pi)
        r = int(np.ceil(a)) + 1
        y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        free = inside & (inst[y0:y1, x0:x1] == 0)
        if free.sum() < 12 or free.sum() < 0.75 * inside.sum():
            continue
        k += 1
        inst[y0:y1, x0:x1][free] = k
    inst = separate_touching(inst)
    # Ids 1..K in order, without cells the border lines removed entirely.
    ids = np.unique(inst)
    ids = ids[ids > 0]
    remap = np.zeros(k + 1, np.int32)
    remap[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return remap[inst]


def box_blur(img, passes=2):
    """3x3 mean, edges replicated: softens the cell edges like a microscope's blur."""
    for _ in range(passes):
        p = np.pad(img, 1, mode="edge")
        img = sum(p[dy:dy + img.shape[0], dx:dx + img.shape[1]] for dy in range(3) for dx in range(3)) / 9.0
    return img


def render(rng, inst):
    cells = inst > 0
    brightness = rng.uniform(0.55, 0.9, inst.max() + 1)
    brightness[0] = 0.2
    img = brightness[inst]
    img = img + 0.08 * box_blur(rng.standard_normal(inst.shape), passes=3) * cells
    img = box_blur(img, passes=1)
    img = img + rng.normal(0.0, 0.06, inst.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def make(n, size, seed, mean_radius=None):
    rng = np.random.default_rng(seed)
    mean_radius = mean_radius or max(4.0, size / 16)
    inst = np.stack([draw_instances(rng, size, mean_radius) for _ in range(n)])
    raw = np.stack([render(rng, i) for i in inst])
    return raw, (inst > 0).astype(np.uint8), inst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="number of images")
    ap.add_argument("--size", type=int, default=256, help="image height and width")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--radius", type=float, default=None, help="mean cell radius (default size / 16)")
    ap.add_argument("-o", "--output", default="data/ellipses.h5")
    args = ap.parse_args()
    if args.n < 1 or args.size < 8:
        ap.error("need --n >= 1 and --size >= 8")
    raw, label, inst = make(args.n, args.size, args.seed, args.radius)
    write_h5(args.output, {"raw": raw, "label": label, "instances": inst})
    print(f"{args.output}: {args.n} images {args.size}x{args.size}, "
          f"{int(sum(i.max() for i in inst))} cells, {label.mean():.2f} foreground")


if __name__ == "__main__":
    main()
