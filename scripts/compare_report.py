#!/usr/bin/python3
"""The report of a `unet compare` run, written from what the run left in DIR:
report.json (every number, written by unet compare) and the runs' logs
(DIR/runs/*.jsonl):

    DIR/report.md     the settings, one table of every model's costs and
                      validation metrics, one of every pruning depth of the
                      deep-supervised models, and one per class (3 classes
                      or more), with the plots below
    DIR/val_iou.png   validation IoU over training steps, one line per model
                      (mean over seeds, the band between the lowest and highest seed)
    DIR/pruning.png   validation IoU against inference time per tile: every
                      model, and every pruning depth L1..L4 of the
                      deep-supervised ones (a hollow marker: the network as
                      trained, every head computed)

`unet compare` runs this once its runs are done; run it by hand to rewrite
the report (from a report.json of an older unet too: a metric it lacks is
shown as a dash):

    /usr/bin/python3 scripts/compare_report.py DIR

The plots need matplotlib (Debian: python3-matplotlib); without it the
report is written without them."""
import json
import os
import struct
import sys

BENCH_STEPS_BEFORE_RECORDED = 10  # reports that do not say how many steps `unet bench` timed timed 10


# ---- plots -------------------------------------------------------------------

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


def plot_curves(plt, report, out_dir):
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
    save_figure(fig, os.path.join(out_dir, "val_iou.png"))
    plt.close(fig)


def plot_pruning(plt, report, out_dir):
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
    save_figure(fig, os.path.join(out_dir, "pruning.png"))
    plt.close(fig)


def save_figure(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def draw_plots(report, out_dir):
    """True when the plots were drawn; without matplotlib the report goes without them."""
    try:
        import matplotlib
    except ImportError:
        print(f"plots: {sys.executable} has no matplotlib (Debian: python3-matplotlib); the report has no pictures")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot_curves(plt, report, out_dir)
    plot_pruning(plt, report, out_dir)
    return True


# ---- report.md ---------------------------------------------------------------

def as_float32(x):
    """The value a float option held in the run (the JSON has its shortest text)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def mean_sd(r):
    """Mean ± sample standard deviation over the seeds (the mean alone for one seed); a dash when absent."""
    if r is None:
        return "–"
    if len(r["runs"]) > 1:
        return "%.4f ± %.4f" % (r["mean"], r["sd"])
    return "%.4f" % r["mean"]


def metrics(o):
    """IoU, Dice, pixel error and Rand error of a model or a pruning depth, as table cells."""
    return [mean_sd(o.get(k)) for k in ("val_iou", "val_dice", "val_pixel_error", "val_rand_error")]


def filters_text(filters):
    return ",".join(str(f) for f in filters)


def widths_text(m):
    """A model's widths: the plain grid's filters, or its backbone and decoder channels."""
    if m.get("encoder", "plain") != "plain":
        return "%s, decoder %s" % (m["encoder"], filters_text(m["decoder_channels"]))
    return filters_text(m["filters"])


def encoders_text(report):
    """The models on a backbone: their parameter counts, which no plain width matches."""
    rows = [m for m in report["models"] if m.get("encoder", "plain") != "plain"]
    if not rows:
        return ""
    text = ("Models on a backbone (smp's Unet and UnetPlusPlus decoders on torchvision's network, %s padding, "
            "batch norm): their parameter counts are the backbone's and the decoder's, no matched width; " %
            rows[0]["padding"])
    text += "; ".join("%s %d parameters (%.2fM), %.2fM of them in the encoder and %.2fM in the decoder and head" % (
        m["label"], m["params"], m["params"] / 1e6, m["encoder_params"] / 1e6,
        (m["params"] - m["encoder_params"]) / 1e6) for m in rows)
    return text + ".\n\n"


def settings_text(report):
    s = report["settings"]
    c = s["config"]
    classes, seeds = c["classes"], c["seeds"]
    return ("Every model trained under the same settings: data `%s`, validation `%s`, %d steps, batch %d, tile %d, "
            "%s padding, %d class%s (%s loss), %s lr %g (%s schedule), augmentation `%s`, seeds %d..%d "
            "(%d run%s per model)%s.\n\n"
            % (c["data"], c["val"] or "held-out share of the training data", c["steps"], c["batch"], c["tile"],
               c["padding"], classes, "" if classes == 1 else "es", c["loss"], c["optimizer"], as_float32(c["lr"]),
               c["schedule"], c["augment"], c["seed"], c["seed"] + seeds - 1, seeds, "" if seeds == 1 else "s",
               ", deep supervision for every model but U-Net" if c["deep_supervision"] else "")
            + "Device: %s (%s). Date: %s. Wall time %.0f s.\n\n" % (s["device"], s["machine"], s["date"], s["wall_s"]))


def match_text(report):
    """The wide U-Net's match: whose parameter count it comes closest to."""
    match = report.get("match")
    text = ""
    for m in report["models"]:
        if not match or m["name"] != "wide_unet":
            continue
        target = match["target_params"]
        if "reference" in match:
            ref = "%s with filters %s" % (match["reference"], filters_text(match["filters"]))
        else:
            ref = "the count asked for"
        text += ("wide U-Net: the U-Net whose parameter count comes closest to %s: filters %s, %d against %d "
                 "parameters (%+.2f%%).\n\n"
                 % (ref, filters_text(m["filters"]), m["params"], target,
                    100.0 * (float(m["params"]) - float(target)) / float(target)))
    return text


def models_table(report):
    text = ("| Model | Filters (encoder) | Params | GFLOPs / image | Train images/s | Train activations (MiB) | "
            "Inference ms / tile | Val IoU | Val Dice | Val pixel error | Val Rand error |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for m in report["models"]:
        text += "| %s%s | %s | %.2fM | %.3f | %.2f | %.1f | %.2f | %s | %s | %s | %s |\n" % (
            m["label"], " (DS)" if m["deep_supervision"] else "", widths_text(m), m["params"] / 1e6,
            m["flops_per_image"] / 1e9, m["train_images_per_s"], m["train_activation_bytes"] / 1048576.0,
            m["inference_ms_per_tile"], *metrics(m))
    return text


def pruning_table(report):
    if not any(m["pruning"] for m in report["models"]):
        return ""
    tile = report["settings"]["config"]["tile"]
    text = ("\nPruned at inference (`unet predict --mode fast --depth d`): the network cut to the nodes with i + j <= d "
            "and head d alone, evaluated on the whole validation images; times per tile of %d x %d; speed-up against "
            "the full network as trained (every head computed, as `--mode deepest` and `--mode accurate` run it).\n\n"
            % (tile, tile))
    text += ("| Model | Depth | Params | GFLOPs / image | Inference ms / tile | Speed-up | Val IoU | Val Dice | "
             "Val pixel error | Val Rand error |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for m in report["models"]:
        for p in m["pruning"]:
            text += "| %s | L%d | %.3fM | %.3f | %.2f | %.2fx | %s | %s | %s | %s |\n" % (
                m["label"], p["depth"], p["params"] / 1e6, p["flops_per_image"] / 1e9, p["inference_ms_per_tile"],
                p["speedup"], *metrics(p))
    return text


def class_table(report):
    classes = report["settings"]["config"]["classes"]
    if classes < 3:
        return ""
    text = ("\nPer class: IoU and Dice of each foreground class; the Val IoU and Val Dice above are their means over "
            "classes 1..%d.\n\n| Model | Class | Val IoU | Val Dice |\n|---|---:|---:|---:|\n" % (classes - 1))
    for m in report["models"]:
        rows = [(m["label"] + (" (DS)" if m["deep_supervision"] else ""), m)]
        rows += [("%s L%d" % (m["label"], p["depth"]), p) for p in m["pruning"]]
        for name, o in rows:
            for c in range(1, classes):
                text += "| %s | %d | %s | %s |\n" % (name, c, mean_sd(o.get("val_iou_class%d" % c)),
                                                   mean_sd(o.get("val_dice_class%d" % c)))
    return text


def notes_text(report):
    s = report["settings"]
    return ("\nIoU and Dice: foreground (class 1, or the mean over classes 1..K-1), over whole validation images "
            "(overlap-tile prediction), after the last step; pixel error over every pixel; Rand error: the ISBI 2012 "
            "foreground-restricted V_rand, 1 - its mean over images; mean ± sample standard deviation over the seeds. "
            "Train images/s and inference times: `unet bench` code path on random data, the fastest of %d timed steps "
            "after %d warm-up. Train activations: the planned memory arena of a training step at batch %d. Per-run "
            "logs: `runs/*.jsonl`; every number above is in `report.json`.\n"
            % (s.get("bench_steps", BENCH_STEPS_BEFORE_RECORDED), s["config"]["bench_warmup"], s["config"]["batch"]))


def markdown(report, have_plots):
    text = "# U-Net family compared (`unet compare`)\n\n"
    text += settings_text(report) + match_text(report) + encoders_text(report) + models_table(report)
    text += pruning_table(report)
    text += class_table(report) + notes_text(report)
    if have_plots:
        text += "\n![validation IoU over steps](val_iou.png)\n\n![IoU against inference time](pruning.png)\n"
    return text


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: compare_report.py DIR  (a directory written by unet compare)")
    out_dir = sys.argv[1]
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    have_plots = draw_plots(report, out_dir)
    write_atomically(os.path.join(out_dir, "report.md"), markdown(report, have_plots))
    print("wrote %s/report.md%s" % (out_dir, ", val_iou.png and pruning.png" if have_plots else ""))


if __name__ == "__main__":
    main()
