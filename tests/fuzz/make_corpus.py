"""Writes the seed corpora of the fuzz targets, tests/fuzz/corpus/<target>/:
small valid files (a few KB each) made by real writers, from which the
fuzzer mutates its way into the readers' error paths.

    .venv/bin/python tests/fuzz/make_corpus.py [BUILD]    (BUILD: build/, for unet_cfgtest)

checkpoint, safetensors: unet's own checkpoint writer (through unet_cfgtest,
the test driver over the library) for the model fuzz_checkpoint loads
(--filters 2,4 --norm batch), with SGD, Adam and no optimizer state; and the
safetensors package's writer for every dtype, scalars and empty tensors.
config_json: the configurations unet writes (unet_config_to_json), in full
and the model alone; config_json.dict: the option keys, for -dict.
h5dataset: h5py, the layouts the loader takes (N,H,W), (N,C,H,W), (H,W),
uint8, uint16, float32, chunked and gzip, weight and instances; in HDF5's
newer format, whose metadata carry checksums (libver="latest"): a mutation
of the metadata is then a clean refusal, and the fuzzer works on what the
reader checks itself. Mutating h5py's default format reaches libhdf5
1.10.8's own parsing bugs, a segfault among them (tests/fuzz/README.md),
which would make a bounded CI run fail at random.
png, tiff: PIL, gray 8 and 16 bit, RGB(A), palette, 1 bit; libtiff's
compressions; and by hand the TIFF layouts PIL does not write (tiles,
separate planes, several strips).

The corpora are committed: rerun this only to change them."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
MODEL = ["--filters", "2,4", "--norm", "batch"]  # the model fuzz_checkpoint.c builds


def out(target, name):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def checkpoints(cfgtest):
    with tempfile.TemporaryDirectory() as tmp:
        for name, how, flags in [("sgd", "ckpt-save", []), ("adam", "ckpt-save", ["--optimizer", "adam"]),
                                 ("weights", "ckpt-save-weights", ["--model", "unetpp", "--deep-supervision"])]:
            path = out("checkpoint", name + ".safetensors")
            subprocess.run([cfgtest, how, tmp, path] + MODEL + flags + ["--steps", "7"], check=True)
            shutil.copy(path, out("safetensors", "unet-" + name + ".safetensors"))
    # weights as PyTorch writes them: no unet metadata, so the model comes from the flags
    save_file({"x0_0.conv1.weight": np.ones((2, 1, 3, 3), np.float16)}, out("checkpoint", "torch.safetensors"),
              metadata={"format": "pt"})


def safetensors_files():
    rng = np.random.default_rng(0)
    dtypes = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_,
              np.uint16, np.uint32, np.uint64]
    save_file({f"t{i}": (rng.random((2, 3)) * 100).astype(t) for i, t in enumerate(dtypes)},
              out("safetensors", "dtypes.safetensors"), metadata={"format": "pt", "note": "every dtype"})
    save_file({"scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32),
               "deep": np.ones((1, 1, 1, 1, 1, 1, 1, 2), np.int64)}, out("safetensors", "shapes.safetensors"))
    save_file({}, out("safetensors", "none.safetensors"), metadata={"only": "metadata"})


def configs(cfgtest):
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate([[], MODEL + ["--optimizer", "adam", "--schedule", "cosine", "--augment", "paper"],
                                   ["--model", "unetpp", "--deep-supervision", "--padding", "same", "--classes", "1",
                                    "--upsample", "bilinear", "--fusion", "add", "--dropout", "0.5", "--depth", "2"]]):
            full = subprocess.run([cfgtest, "roundtrip", "train"] + flags, check=True, capture_output=True,
                                  text=True).stdout.strip()
            with open(out("config_json", f"full{i}.json"), "w") as f:
                f.write(full + "\n")
        path = os.path.join(tmp, "c.safetensors")
        subprocess.run([cfgtest, "ckpt-save", tmp, path] + MODEL, check=True)
        meta = json.loads(subprocess.run([cfgtest, "ckpt-meta", path], check=True, capture_output=True,
                                         text=True).stdout)
        with open(out("config_json", "checkpoint.json"), "w") as f:
            f.write(meta["config"] + "\n")
    # the option keys and JSON's own tokens, for libFuzzer's -dict
    keys = sorted(json.loads(full))
    with open(os.path.join(HERE, "config_json.dict"), "w") as f:
        f.write("# the keys of unet_config_to_json and JSON tokens (tests/fuzz/make_corpus.py writes this)\n")
        for k in keys:
            f.write(f'"\\"{k}\\""\n')
        for tok in ["{", "}", "[", "]", ":", ",", "true", "false", "null", "1e308", "-0", "2147483648",
                    "18446744073709551616", "\\u0000"]:
            f.write('"' + tok.replace("\\", "\\\\").replace('"', '\\"') + '"\n')


def h5_file(name):
    return h5py.File(out("h5dataset", name), "w", libver="latest")


def h5_files():
    rng = np.random.default_rng(1)
    lab = (rng.random((2, 8, 8)) > 0.5).astype(np.uint8)
    with h5_file("u8.h5") as f:
        f["raw"] = rng.integers(0, 256, (2, 8, 8)).astype(np.uint8)
        f["label"] = lab
    with h5_file("f32_channels_weight.h5") as f:
        f["raw"] = rng.random((1, 2, 6, 7)).astype(np.float32)
        f["label"] = lab[:1, :6, :7].astype(np.int32)
        f["weight"] = rng.random((1, 6, 7)).astype(np.float32)
    with h5_file("u16_single.h5") as f:
        f["raw"] = rng.integers(0, 65536, (8, 5)).astype(np.uint16)
        f["label"] = lab[0, :, :5]
    with h5_file("gzip_instances.h5") as f:
        f.create_dataset("raw", data=rng.integers(0, 256, (3, 8, 8)).astype(np.uint8), chunks=(1, 8, 8),
                         compression="gzip", shuffle=True)
        f.create_dataset("label", data=np.concatenate([lab, lab[:1]]), chunks=(1, 8, 8), compression="gzip")
        f.create_dataset("instances", data=rng.integers(0, 5, (3, 8, 8)).astype(np.int32), chunks=(1, 4, 4))
    with h5_file("groups.h5") as f:
        f["volumes/raw"] = rng.integers(0, 256, (1, 4, 4)).astype(np.uint8)
        f["raw"] = rng.integers(0, 256, (1, 4, 4)).astype(np.uint8)
        f["label"] = np.zeros((1, 4, 4), np.uint8)


def png_files():
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (8, 8)).astype(np.uint8), "L").save(out("png", "gray8.png"))
    Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16), "I;16").save(out("png", "gray16.png"))
    Image.fromarray(rng.integers(0, 256, (6, 7, 3)).astype(np.uint8), "RGB").save(out("png", "rgb.png"))
    Image.fromarray(rng.integers(0, 256, (6, 7, 4)).astype(np.uint8), "RGBA").save(out("png", "rgba.png"))
    Image.fromarray(rng.integers(0, 256, (5, 4, 2)).astype(np.uint8), "LA").save(out("png", "gray_alpha.png"))
    Image.fromarray(rng.integers(0, 4, (8, 8)).astype(np.uint8), "L").convert("P").save(out("png", "palette.png"))
    Image.fromarray(rng.random((8, 9)) > 0.5).save(out("png", "bits1.png"))


def tiff_by_hand(path, h, w, spp, bps, tile=None, planar_separate=False, rows_per_strip=None):
    """An uncompressed little-endian TIFF in the layouts PIL does not write: tiles, separate planes, strips."""
    rng = np.random.default_rng(h * w + spp)
    dt = np.uint8 if bps == 8 else np.uint16
    img = rng.integers(0, 1 << bps, (h, w, spp)).astype(dt)
    blocks = []
    if tile:
        th, tw = tile
        for s in range(spp if planar_separate else 1):
            for y0 in range(0, h, th):
                for x0 in range(0, w, tw):
                    t = np.zeros((th, tw, 1 if planar_separate else spp), dt)
                    part = img[y0:y0 + th, x0:x0 + tw, s:s + 1] if planar_separate else img[y0:y0 + th, x0:x0 + tw]
                    t[:part.shape[0], :part.shape[1]] = part
                    blocks.append(t.tobytes())
    else:
        rps = rows_per_strip or h
        for s in range(spp if planar_separate else 1):
            for y0 in range(0, h, rps):
                part = img[y0:y0 + rps, :, s:s + 1] if planar_separate else img[y0:y0 + rps]
                blocks.append(np.ascontiguousarray(part).tobytes())
    data = b"".join(blocks)
    offsets, at = [], 8
    for b in blocks:
        offsets.append(at)
        at += len(b)
    extra = bytearray()  # arrays that do not fit in an IFD entry's 4 bytes, after the IFD
    tags = [(256, 3, [w]), (257, 3, [h]), (258, 3, [bps] * spp), (259, 3, [1]),
            (262, 3, [2 if spp >= 3 else 1]), (277, 3, [spp]), (284, 3, [2 if planar_separate else 1])]
    if spp == 4:
        tags.append((338, 3, [2]))  # ExtraSamples: unassociated alpha
    if tile:
        tags += [(322, 3, [tile[1]]), (323, 3, [tile[0]]), (324, 4, offsets), (325, 4, [len(b) for b in blocks])]
    else:
        tags += [(273, 4, offsets), (278, 3, [rows_per_strip or h]), (279, 4, [len(b) for b in blocks])]
    tags.sort()
    ifd_at = 8 + len(data)
    ifd_at += ifd_at % 2
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    entries = b""
    for tag, typ, vals in tags:
        packed = b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in vals)
        if len(packed) <= 4:
            entries += struct.pack("<HHI", tag, typ, len(vals)) + packed.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, typ, len(vals), extra_at + len(extra))
            extra += packed + (b"\0" if len(packed) % 2 else b"")
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", ifd_at) + data + b"\0" * (ifd_at - 8 - len(data)))
        f.write(struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0) + bytes(extra))


def tiff_files():
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    Image.fromarray(gray, "L").save(out("tiff", "gray8.tif"))
    Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16), "I;16").save(out("tiff", "gray16.tif"))
    Image.fromarray(rng.integers(0, 256, (6, 7, 3)).astype(np.uint8), "RGB").save(out("tiff", "rgb.tif"))
    for comp in ["tiff_lzw", "tiff_adobe_deflate", "packbits"]:
        Image.fromarray(gray, "L").save(out("tiff", f"gray8_{comp}.tif"), compression=comp)
    tiff_by_hand(out("tiff", "tiled_rgba.tif"), 20, 18, 4, 8, tile=(16, 16))
    tiff_by_hand(out("tiff", "tiled_separate16.tif"), 17, 16, 2, 16, tile=(16, 16), planar_separate=True)
    tiff_by_hand(out("tiff", "strips_separate.tif"), 9, 6, 3, 8, planar_separate=True, rows_per_strip=4)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "build")
    cfgtest = os.path.join(build, "unet_cfgtest")
    shutil.rmtree(CORPUS, ignore_errors=True)
    checkpoints(cfgtest)
    safetensors_files()
    configs(cfgtest)
    h5_files()
    png_files()
    tiff_files()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        sizes = [os.path.getsize(os.path.join(CORPUS, target, n)) for n in files]
        print(f"{target}: {len(files)} seeds, {min(sizes)} to {max(sizes)} bytes")


if __name__ == "__main__":
    main()
