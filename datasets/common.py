"""What the dataset scripts share: separating touching cells, and writing the
HDF5 layout unet reads (raw, label, instances; gzip + shuffle, one chunk per
image, written to a temporary file and renamed so no half-written file is
left behind)."""
import os

import h5py
import numpy as np


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
