#!/usr/bin/python3
"""Plots of a `unet compare` report, drawn from DIR/report.json and the runs'
logs (DIR/runs/*.jsonl):

    DIR/val_iou.png   validation IoU over training steps, one line per model
                      (mean over seeds, the band between the lowest and highest seed)
    DIR/pruning.png   validation IoU against inference time per tile: every
                      model, and every pruning depth L1..L4 of the
                      deep-supervised ones (a hollow marker: the network as
                      trained, every head computed)

`unet compare` runs this when it is present; run it by hand to redraw:

    /usr/bin/python3 scripts/plot_compare.py DIR

Needs matplotlib (Debian: python3-matplotlib)."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def validation_curve(path):
    """(steps, IoUs) of the validations in one run's log."""
    steps, ious = [], []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if "val_iou" in o:
                steps.append(o["step"])
                ious.append(o["val_iou"])
    return steps, ious


def plot_curves(report, out_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in report["models"]:
        curves = [validation_curve(os.path.join(out_dir, log)) for log in m["logs"]
                  if os.path.exists(os.path.join(out_dir, log))]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = curves[0][0][:n]
        per_step = list(zip(*[c[1][:n] for c in curves]))
        mean = [sum(v) / len(v) for v in per_step]
        line, = ax.plot(steps, mean, marker="o", markersize=3, label=m["label"])
        if len(curves) > 1:
            ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], color=line.get_color(),
                            alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation IoU")
    ax.set_title("Validation IoU over training (mean over seeds; band: min..max)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "val_iou.png"), dpi=110)
    plt.close(fig)


def plot_pruning(report, out_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in report["models"]:
        if m["pruning"]:
            xs = [p["inference_ms_per_tile"] for p in m["pruning"]]
            ys = [p["val_iou"]["mean"] for p in m["pruning"]]
            line, = ax.plot(xs, ys, marker="o", label=f'{m["label"]} L1..L{len(xs)}')
            for p, x, y in zip(m["pruning"], xs, ys):
                ax.annotate(f'L{p["depth"]}', (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                            color=line.get_color())
            # the network as trained computes every head: same IoU as its deepest, more time
            ax.plot([m["inference_ms_per_tile"]], [m["val_iou"]["mean"]], marker="o", markerfacecolor="none",
                    linestyle="", color=line.get_color())
        else:
            ax.plot([m["inference_ms_per_tile"]], [m["val_iou"]["mean"]], marker="s", linestyle="", label=m["label"])
    ax.set_xscale("log")
    ax.set_xlabel("inference time per tile (ms, log scale)")
    ax.set_ylabel("validation IoU (mean over seeds)")
    ax.set_title("IoU against inference time across pruning depths")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "pruning.png"), dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot_compare.py DIR  (a directory written by unet compare)")
    out_dir = sys.argv[1]
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    plot_curves(report, out_dir)
    plot_pruning(report, out_dir)


if __name__ == "__main__":
    main()
