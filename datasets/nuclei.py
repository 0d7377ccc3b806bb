#!/usr/bin/env python3
"""The README's default real dataset: one fluorescence image of cell nuclei
from the Data Science Bowl 2018 with its hand-made instance mask (125 nuclei,
512x512), as shipped inside the `stardist` wheel on PyPI (BSD-3-Clause).

Fetches the wheel without its dependencies (pip download, pinned version),
takes stardist/data/images/img2d.tif and mask2d.tif out of it, checks their
sha256, and writes two HDF5 files whose regions do not overlap:

    <out>/nuclei_train.h5   rows 0..383 of the image
    <out>/nuclei_val.h5     rows 384..511

each with raw (1,H,W), label (1,H,W) uint8 {0,1} (= instances > 0) and
instances (1,H,W) int32, gzip + shuffle, one chunk per image. The mask has
21 pairs of touching nuclei; they are parted by a one-pixel background line
(common.separate_touching), as the U-Net paper's border weight map needs. The image is
uint16 in the TIFF but holds only 0..235, so raw is stored as uint8, which
is lossless and makes the loader's scaling by the type's maximum give [0, 0.92]
instead of [0, 0.004]. (A TIFF with values above 255 stays uint16.)

Reads the TIFFs with PIL (Debian: python3-pil); the wheel comes through
`python3 -m pip` (Debian: python3-pip).

    python3 datasets/nuclei.py [--out data] [--cache data/cache]
"""
import hashlib
import io
import os
import sys
import zipfile

import numpy as np

from common import fetch_wheel, separate_touching, wheel_script_args, write_h5

STARDIST = "stardist==0.9.1"
MEMBERS = {
    "img2d": ("stardist/data/images/img2d.tif", "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750"),
    "mask2d": ("stardist/data/images/mask2d.tif", "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),
}
VAL_ROWS = 128  # bottom quarter of the 512 rows


def extract(wheel):
    """{name: TIFF bytes}, each checked against its pinned sha256."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for key, (member, sha) in MEMBERS.items():
            try:
                data = z.read(member)
            except KeyError:
                sys.exit(f"nuclei.py: {wheel} has no {member}: delete it and run again to fetch {STARDIST}")
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                sys.exit(f"nuclei.py: {member} in {wheel} has sha256 {got}, expected {sha}: "
                         f"delete the wheel and run again")
            out[key] = data
    return out


def read_tiff(data):
    from PIL import Image
    return np.array(Image.open(io.BytesIO(data)))


def write_part(path, raw, inst):
    write_h5(path, {"raw": raw[None], "label": (inst > 0).astype(np.uint8)[None], "instances": inst[None]},
             {"source": f"{STARDIST} wheel: {MEMBERS['img2d'][0]}, {MEMBERS['mask2d'][0]} (BSD-3-Clause)"})


def convert(image, mask, out_dir, val_rows=VAL_ROWS):
    """Writes nuclei_train.h5 (top rows) and nuclei_val.h5 (bottom val_rows); returns their paths."""
    if image.shape != mask.shape or image.ndim != 2:
        sys.exit(f"nuclei.py: image {image.shape} and mask {mask.shape} must be two images of the same size")
    if not 0 < val_rows < image.shape[0]:
        sys.exit(f"nuclei.py: val_rows {val_rows} must leave rows for both parts of {image.shape[0]}")
    raw = image.astype(np.uint8) if image.max() <= 255 else image.astype(np.uint16)
    inst = separate_touching(mask.astype(np.int32))
    split = image.shape[0] - val_rows
    paths = os.path.join(out_dir, "nuclei_train.h5"), os.path.join(out_dir, "nuclei_val.h5")
    write_part(paths[0], raw[:split], inst[:split])
    write_part(paths[1], raw[split:], inst[split:])
    return paths


def main():
    args = wheel_script_args(__doc__, "nuclei_train.h5 and nuclei_val.h5")
    tiffs = extract(fetch_wheel(STARDIST, args.cache, "nuclei.py"))
    image, mask = read_tiff(tiffs["img2d"]), read_tiff(tiffs["mask2d"])
    train, val = convert(image, mask, args.out)
    print(f"{train}, {val}: {image.shape[0] - VAL_ROWS} + {VAL_ROWS} rows of {image.shape[1]}, "
          f"{len(np.unique(mask)) - 1} nuclei")


if __name__ == "__main__":
    main()
