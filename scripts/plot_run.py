#!/usr/bin/env python3
"""Pictures of a run: the training curve from a JSONL log, and the prediction
over the image beside the ground truth.

  scripts/plot_run.py --log runs/demo/metrics.jsonl --out runs/demo
  scripts/plot_run.py --pred runs/demo/pred.h5 --data data/nuclei_val.h5 --out runs/demo

Writes curve.png and/or prediction.png into --out."""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curve(log_path, out_dir):
    steps, loss, vsteps, viou, vdice = [], [], [], [], []
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                steps.append(rec["step"])
                loss.append(rec["loss"])
            if "val_iou" in rec:
                vsteps.append(rec["step"])
                viou.append(rec["val_iou"])
                vdice.append(rec["val_dice"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if vsteps:
        ax2 = ax.twinx()
        ax2.plot(vsteps, viou, "o-", color="tab:green", label="validation IoU")
        ax2.plot(vsteps, vdice, "s--", color="tab:olive", label="validation Dice")
        ax2.set_ylabel("validation")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(log_path))) or "training")
    fig.tight_layout()
    path = os.path.join(out_dir, "curve.png")
    fig.savefig(path, dpi=120)
    return path


def plot_prediction(pred_path, data_path, out_dir, index=0):
    import h5py

    with h5py.File(pred_path, "r") as p, h5py.File(data_path, "r") as d:
        pred = p["pred"][index]
        prob = p["prob"][index]
        raw = d["raw"][index] if d["raw"].ndim >= 3 else d["raw"][()]
        label = d["label"][index] if "label" in d else None
    if raw.ndim == 3:
        raw = raw[0]
    raw = raw.astype(np.float64)
    raw = (raw - raw.min()) / max(raw.max() - raw.min(), 1e-12)
    fg = prob[1] if prob.shape[0] > 1 else prob[0]
    n = 3 if label is not None else 2
    h, w = raw.shape
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5 * h / w + 0.6))
    axes[0].imshow(raw, cmap="gray")
    axes[0].contour(pred > 0, levels=[0.5], colors="yellow", linewidths=0.7)
    axes[0].set_title("image, predicted boundary")
    axes[1].imshow(fg, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("foreground probability")
    if label is not None:
        err = np.zeros(label.shape + (3,))
        err[(pred > 0) & (label > 0)] = (1, 1, 1)
        err[(pred > 0) & (label == 0)] = (1, 0.2, 0.2)
        err[(pred == 0) & (label > 0)] = (0.2, 0.5, 1)
        axes[2].imshow(err)
        inter = np.logical_and(pred > 0, label > 0).sum()
        union = np.logical_or(pred > 0, label > 0).sum()
        axes[2].set_title(f"IoU {inter / max(union, 1):.3f} (red: false fg, blue: missed)")
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    path = os.path.join(out_dir, "prediction.png")
    fig.savefig(path, dpi=110)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", help="JSONL metrics written by unet train --log")
    ap.add_argument("--pred", help="HDF5 written by unet predict")
    ap.add_argument("--data", help="the HDF5 dataset that was predicted (raw, label)")
    ap.add_argument("--index", type=int, default=0, help="which image of the file")
    ap.add_argument("--out", required=True, help="folder for the PNG files")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if not a.log and not a.pred:
        ap.error("give --log, --pred (with --data), or both")
    if a.log:
        print("wrote", plot_curve(a.log, a.out))
    if a.pred:
        if not a.data:
            ap.error("--pred needs --data")
        print("wrote", plot_prediction(a.pred, a.data, a.out, a.index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
