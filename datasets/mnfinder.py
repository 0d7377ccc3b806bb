#!/usr/bin/env python3
"""A second, larger nuclei set: the 49 annotated fluorescence images that ship
inside the `mnfinder` wheel on PyPI (MIT, Copyright 2023 Lucian DiPeso; the
training data of that micronucleus segmenter). DNA-stained nuclei (DAPI or
H2B) of RPE-1, U2OS, HeLa, HFF and MCC13 cells, 512x512, 768x869 and
1024x1024, 8- and 16-bit, each with a hand-made instance mask of its nuclei
and one of its micronuclei (RGBA PNGs: red 255 where annotated, blue the
nucleus id; in a micronucleus mask blue is the id of its nucleus).

Fetches the wheel without its dependencies (pip download, pinned version),
checks its sha256, and keeps the package's own split:

    <out>/mnfinder_train.h5   its training-data: 30 images, 304 tiles
    <out>/mnfinder_val.h5     its validation-data and test-data, less any image
                              whose pixels equal a training image's (in 1.2.3
                              test-data/2023-05-31_misc/1.tif is
                              training-data/2022-05-26_RPE1/1.tif): 18 images,
                              99 tiles

An HDF5 file holds images of one size, so every image is cut into 256x256
tiles on a grid centred in it; what does not fill a whole tile is left out
(50 and 51 columns of the 768x869 images, nothing of the others), and no two
tiles overlap, so validation counts each pixel once. Per tile:

    raw          float32, the image divided by its own 1st..99.8th percentile
                 range (the images are 8- and 16-bit with ranges from
                 0..150 to 0..16712; one scale for all tiles of an image;
                 not clipped)
    label        uint8 {0,1}: nuclei (= instances > 0); micronuclei are
                 background here
    instances    int32: every 4-connected piece of every annotated nucleus
                 (a few ids cover two pieces, and some nucleus pixels carry
                 id 0), touching nuclei parted by a one-pixel background
                 line (common.separate_touching), as nuclei.py does
    micronuclei  int32: the 4-connected components of the micronucleus
                 mask, for a three-class label if one is wanted

gzip + shuffle, one chunk per tile; the attributes name the source and give
each tile's image (an index into `images`) and top-left corner (tile_origin).
Reads the TIFFs and PNGs with PIL (Debian: python3-pil), labels with SciPy
(python3-scipy); the wheel (68 MB) comes through `python3 -m pip`.

    python3 datasets/mnfinder.py [--out data] [--cache data/cache]
"""
import hashlib
import io
import os
import re
import sys
import zipfile

import numpy as np
from scipy import ndimage

from common import fetch_wheel, separate_touching, wheel_script_args, write_h5

MNFINDER = "mnfinder==1.2.3"
WHEEL_SHA256 = "11b1f6aea9f40b4dd3cf6c3de30ef8d517a4833907b88b86ce2b7ab1f9dbce4a"
TRAIN, HELD_OUT = ("training",), ("validation", "test")
IMAGE = re.compile(r"^mnfinder/(training|validation|test)-data/([^/]+)/images/([^/]+)\.tif$")
TILE = 256
PERCENTILES = (1, 99.8)


def check_wheel(wheel):
    digest = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != WHEEL_SHA256:
        sys.exit(f"mnfinder.py: {wheel} has sha256 {digest.hexdigest()}, expected {WHEEL_SHA256} ({MNFINDER}): "
                 f"delete it and run again")


def read_images(wheel):
    """{split: [(name, image, nucleus RGBA, micronucleus RGBA)]}, split being
    training, validation or test, in the wheel's order of names."""
    from PIL import Image

    def png(z, name):
        try:
            return np.array(Image.open(io.BytesIO(z.read(name))))
        except KeyError:
            sys.exit(f"mnfinder.py: {wheel} has no {name}: delete it and run again to fetch {MNFINDER}")

    out = {split: [] for split in TRAIN + HELD_OUT}
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            m = IMAGE.match(name)
            if not m:
                continue
            split, group, stem = m.groups()
            masks = f"mnfinder/{split}-data/{group}/%s/{stem}.png"
            image = np.array(Image.open(io.BytesIO(z.read(name))))
            out[split].append((name[len("mnfinder/"):], image, png(z, masks % "nucleus_masks"),
                               png(z, masks % "mn_masks")))
    if not all(out.values()):
        sys.exit(f"mnfinder.py: {wheel} lacks images in {[s for s, v in out.items() if not v]}-data: "
                 f"delete it and run again to fetch {MNFINDER}")
    return out


def nucleus_instances(rgba):
    """Every 4-connected piece of every annotated id, numbered 1..n."""
    key = np.where(rgba[..., 0] > 0, rgba[..., 2].astype(np.int32) + 1, 0)  # id 0 on a nucleus is an id too
    inst = np.zeros(key.shape, np.int32)
    n = 0
    for value, box in enumerate(ndimage.find_objects(key), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(key[box] == value)
        inst[box][pieces > 0] = pieces[pieces > 0] + n
        n += count
    return inst


def micronucleus_instances(rgba):
    return ndimage.label(rgba[..., 0] > 0)[0].astype(np.int32)


def normalized(image, name):
    lo, hi = np.percentile(image, PERCENTILES)
    if hi <= lo:
        sys.exit(f"mnfinder.py: {name} is flat ({lo} .. {hi}), expected a fluorescence image")
    return ((image.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def tile_origins(shape, tile):
    """Top-left corners of the whole tiles of a grid centred in shape."""
    starts = [(n % tile) // 2 + np.arange(n // tile) * tile for n in shape]
    return [(int(y), int(x)) for y in starts[0] for x in starts[1]]


def unique_held_out(train, held):
    """held less the images whose pixels equal a training image's."""
    seen = {hashlib.sha256(image.tobytes()).hexdigest() for _, image, _, _ in train}
    return [s for s in held if hashlib.sha256(s[1].tobytes()).hexdigest() not in seen]


def write_part(path, samples, tile):
    arrays = {"raw": [], "label": [], "instances": [], "micronuclei": []}
    origins = []
    for index, (name, image, nuclei, micronuclei) in enumerate(samples):
        if image.ndim != 2 or nuclei.shape[:2] != image.shape or micronuclei.shape[:2] != image.shape:
            sys.exit(f"mnfinder.py: {name} is {image.shape} with masks {nuclei.shape}, {micronuclei.shape}: "
                     f"expected one grey image and two RGBA masks of its size")
        if min(image.shape) < tile:
            sys.exit(f"mnfinder.py: {name} is {image.shape}, smaller than a {tile}x{tile} tile")
        raw, inst = normalized(image, name), separate_touching(nucleus_instances(nuclei))
        mn = micronucleus_instances(micronuclei)
        for y, x in tile_origins(image.shape, tile):
            window = np.s_[y:y + tile, x:x + tile]
            arrays["raw"].append(raw[window])
            arrays["instances"].append(inst[window])
            arrays["label"].append((inst[window] > 0).astype(np.uint8))
            arrays["micronuclei"].append(mn[window])
            origins.append((index, y, x))
    write_h5(path, {k: np.stack(v) for k, v in arrays.items()},
             {"source": f"{MNFINDER} wheel (MIT), images/*.tif, nucleus_masks/*.png, mn_masks/*.png",
              "images": [name for name, _, _, _ in samples], "tile_origin": np.array(origins, np.int32)})
    return len(origins)


def convert(samples, out_dir, tile=TILE):
    """Writes mnfinder_train.h5 and mnfinder_val.h5; returns {name: (path, images, tiles)}."""
    train = [s for split in TRAIN for s in samples[split]]
    val = unique_held_out(train, [s for split in HELD_OUT for s in samples[split]])
    parts = {}
    for part, chosen in (("train", train), ("val", val)):
        path = os.path.join(out_dir, f"mnfinder_{part}.h5")
        parts[part] = (path, len(chosen), write_part(path, chosen, tile))
    return parts


def main():
    args = wheel_script_args(__doc__, "mnfinder_train.h5 and mnfinder_val.h5")
    wheel = fetch_wheel(MNFINDER, args.cache, "mnfinder.py")
    check_wheel(wheel)
    for part, (path, images, tiles) in convert(read_images(wheel), args.out).items():
        print(f"{path}: {tiles} tiles of {TILE}x{TILE} from {images} images")


if __name__ == "__main__":
    main()
