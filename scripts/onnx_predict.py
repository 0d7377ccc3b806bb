#!/usr/bin/env python3
"""Overlap-tile prediction of whole images with a model written by `unet export`, through ONNX Runtime: the
same mirroring, tile grid and stitching as `unet predict`, so the same probabilities. A deployer's reference:
everything it needs is in the model's metadata (unet.tile, unet.stride, unet.margin, unet.input_scale, ...).

    scripts/onnx_predict.py --model M.onnx --input D.h5 --output P.h5 [--raw-key raw] [--batch 4] [--threads 2]

writes prob (N, K, H, W) float32 and pred (N, H, W) uint8, as unet predict does. Needs numpy, h5py, onnxruntime.
"""
import argparse
import json

import numpy as np


def reflect(i, n):
    """Mirror indices without repeating the edge pixel (numpy's 'reflect'), repeated for any distance."""
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * (n - 1))
    return np.where(i < n, i, 2 * (n - 1) - i)


def probabilities(logits):
    """Sigmoid for one class, softmax over the classes (axis 0 of a (K, H, W) map)."""
    if logits.shape[0] == 1:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def predict(session, image, batch=4):
    """prob (K, H, W) of one image (C, H, W) float32, scaled as unet reads it."""
    meta = session.get_modelmeta().custom_metadata_map
    T, O, margin, stride = (int(meta[k]) for k in ("unet.tile", "unet.out", "unet.margin", "unet.stride"))
    same = meta["unet.padding"] == "same"
    C, H, W = image.shape
    along = lambda n: 1 if n <= O else (n - O + stride - 1) // stride + 1  # noqa: E731
    grid = [(ty * stride, tx * stride) for ty in range(along(H)) for tx in range(along(W))]
    # same padding blends every head's logits with a Gaussian window (sigma T/8, at least 1e-3), then takes
    # probabilities and averages the heads; valid padding copies prob, whose tiles abut exactly
    names = [o.name for o in session.get_outputs() if o.name.startswith("logits_head")] if same else ["prob"]
    win = np.maximum(np.exp(-(np.arange(O) - (O - 1) / 2) ** 2 / (2 * (O / 8) ** 2)), 1e-3).astype(np.float32)
    w2 = np.outer(win, win)
    acc, wsum = None, np.zeros((H, W), np.float32)
    for first in range(0, len(grid), batch):
        starts = grid[first:first + batch]
        tiles = np.stack([image[:, reflect(np.arange(y - margin, y - margin + T), H)][
            :, :, reflect(np.arange(x - margin, x - margin + T), W)] for y, x in starts])
        outs = session.run(names, {"image": tiles})
        if acc is None:
            acc = [np.zeros((o.shape[1], H, W), np.float32) for o in outs]
        for b, (y, x) in enumerate(starts):
            h, w = min(O, H - y), min(O, W - x)
            for a, o in zip(acc, outs):
                if same:
                    a[:, y:y + h, x:x + w] += w2[:h, :w] * o[b, :, :h, :w]
                else:
                    a[:, y:y + h, x:x + w] = o[b, :, :h, :w]
            wsum[y:y + h, x:x + w] += w2[:h, :w]
    if not same:
        return acc[0]
    return np.mean([probabilities(a / wsum) for a in acc], axis=0)


def main():
    import h5py
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="HDF5 file with raw (N, H, W) or (N, C, H, W)")
    p.add_argument("--output", required=True)
    p.add_argument("--raw-key", default="raw")
    p.add_argument("--batch", type=int, default=4, help="tiles per run")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    scale = json.loads(session.get_modelmeta().custom_metadata_map["unet.input_scale"])
    with h5py.File(args.input, "r") as f:
        raw = f[args.raw_key][:]
    if raw.ndim == 3:
        raw = raw[:, None]
    images = raw.astype(np.float32) / np.float32(scale[raw.dtype.name])
    prob = np.stack([predict(session, im, args.batch) for im in images])
    pred = (prob[:, 0] > 0.5) if prob.shape[1] == 1 else prob.argmax(axis=1)
    with h5py.File(args.output, "w") as f:
        f["prob"], f["pred"] = prob, pred.astype(np.uint8)
    print(f"wrote {args.output}: prob {prob.shape}, pred {pred.shape}")


if __name__ == "__main__":
    main()
