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
    """(steps, IoUs) of the validations in one run's log. A run continued from a checkpoint appends to its log
    from the checkpoint's step: a step validated twice counts once, as the continued run saw it."""
    by_step = {}
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if "val_iou" in o:
                by_step[o["step"]] = o["val_iou"]
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


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


def spread(values, signed=False):
    """Mean ± sample standard deviation (min..max) over the seeds; the value alone for one seed, a dash for none."""
    form = "%+.4f" if signed else "%.4f"
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return form % mean
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return (form + " ± %.4f (" + form + ".." + form + ")") % (mean, sd, min(values), max(values))


def mean_sd(r):
    """A metric of report.json over the seeds, as spread() writes it; a dash when absent."""
    if r is None:
        return "–"
    return spread(r["runs"])


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
    done = ""
    if s.get("runs_done", s.get("runs_total")) != s.get("runs_total"):
        done = ("**Partial report: %d of %d runs done** (the comparison is still running, or was interrupted: the "
                "same command continues it).\n\n" % (s["runs_done"], s["runs_total"]))
    return done + ("Every model trained under the same settings: data `%s`, validation `%s`, %d steps, batch %d, tile %d, "
            "%s padding, %d class%s (%s loss), %s lr %g (%s schedule), augmentation `%s`, seeds %d..%d "
            "(%d run%s per model)%s.\n\n"
            % (c["data"], c["val"] or "held-out share of the training data", c["steps"], c["batch"], c["tile"],
               c["padding"], classes, "" if classes == 1 else "es", c["loss"], c["optimizer"], as_float32(c["lr"]),
               c["schedule"], c["augment"], c["seed"], c["seed"] + seeds - 1, seeds, "" if seeds == 1 else "s",
               ", deep supervision for every model but U-Net" if c["deep_supervision"] else "")
            + "Device: %s (%s). Date: %s. Wall time %.0f s%s.\n\n"
            % (s["device"], s["machine"], s["date"], s["wall_s"],
               " (this invocation; the runs' own: %.0f s%s)" % (s["runs_wall_s"], continued_text(s))
               if "runs_wall_s" in s else ""))


def continued_text(settings):
    """The runs continued after an interruption: their time before it is not in the runs' own."""
    n = settings.get("runs_continued", 0)
    return "" if not n else ", %d of them continued from a checkpoint after an interruption, the time before it not " \
                            "counted" % n


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


METRICS = (("val_iou", "IoU"), ("val_dice", "Dice"), ("val_pixel_error", "pixel error"),
           ("val_rand_error", "Rand error"))
PAIRS = (("unetpp", "unet"), ("unetpp", "wide_unet"), ("wide_unet", "unet"))


def paired(a, b, key):
    """a's value minus b's, seed by seed (the seeds both have run); none when a report.json of an older unet
    lacks the metric."""
    if key not in a or key not in b:
        return []
    n = min(len(a[key]["runs"]), len(b[key]["runs"]))
    return [x - y for x, y in zip(a[key]["runs"][:n], b[key]["runs"][:n])]


def paired_table(report):
    models = {m["name"]: m for m in report["models"]}
    pairs = [(a, b) for a, b in PAIRS if a in models and b in models and paired(models[a], models[b], "val_iou")]
    if not pairs:
        return ""
    text = ("\nPaired by seed (a seed gives both models the same initialisation seed, data order and augmentation): "
            "the first model's value minus the second's, mean ± sample standard deviation (min..max) over the seeds; "
            "for IoU and Dice higher is better, for the errors lower.\n\n| Difference | Seeds | %s |\n|---|---:|%s\n"
            % (" | ".join(name for _, name in METRICS), "---:|" * len(METRICS)))
    for a, b in pairs:
        ma, mb = models[a], models[b]
        diffs = [paired(ma, mb, key) for key, _ in METRICS]
        text += "| %s − %s | %d | %s |\n" % (ma["label"], mb["label"], len(diffs[0]),
                                             " | ".join(spread(d, signed=True) for d in diffs))
    return text + ordering_text(models)


def difference_text(d):
    """'+0.0123 IoU (sd 0.0040, ahead in 3 of 3 seeds)', with a note when the mean is within two standard errors."""
    mean = sum(d) / len(d)
    if len(d) == 1:
        return "%+.4f IoU (one seed: no spread to judge it by)" % mean
    sd = (sum((v - mean) ** 2 for v in d) / (len(d) - 1)) ** 0.5
    clear = abs(mean) > 2 * sd / len(d) ** 0.5
    return "%+.4f IoU (sd %.4f, ahead in %d of %d seeds%s)" % (
        mean, sd, sum(v > 0 for v in d), len(d), "" if clear else ", within the seeds' spread")


def ordering_text(models):
    """One sentence: does the papers' ordering on IoU (UNet++ > wide U-Net > U-Net) hold here, and by how much."""
    if not all(k in models for k in ("unetpp", "wide_unet", "unet")):
        return ""
    pp, wide, unet = models["unetpp"], models["wide_unet"], models["unet"]
    d1, d2 = paired(pp, wide, "val_iou"), paired(wide, unet, "val_iou")
    if not d1 or not d2:
        return ""
    holds = sum(d1) > 0 and sum(d2) > 0
    order = sorted((("UNet++", pp), ("wide U-Net", wide), ("U-Net", unet)),
                   key=lambda x: -sum(x[1]["val_iou"]["runs"]) / len(x[1]["val_iou"]["runs"]))
    first, second = difference_text(d1), difference_text(d2)
    note = (" (Within the seeds' spread: the mean difference is less than two standard errors.)"
            if "within the seeds' spread" in first + second else "")
    return ("\n**The papers' ordering (UNet++ > wide U-Net > U-Net on IoU) %s here**: UNet++ − wide U-Net %s; "
            "wide U-Net − U-Net %s. Mean IoU, highest first: %s.%s\n"
            % ("holds" if holds else "does not hold", first, second,
               ", ".join("%s %.4f" % (name, sum(m["val_iou"]["runs"]) / len(m["val_iou"]["runs"]))
                         for name, m in order), note))


def flatness_text(report, out_dir):
    """How far from flat the validation curves still were: the IoU gained over the last quarter of the steps."""
    lines = []
    for m in report["models"]:
        gains = []
        for log in m["logs"]:
            path = os.path.join(out_dir, log)
            if not os.path.exists(path):
                continue
            steps, ious = validation_curve(path)
            if len(steps) < 2:
                continue
            cut = steps[-1] - (steps[-1] - steps[0]) / 4.0
            before = [i for s, i in zip(steps, ious) if s <= cut]
            if before:
                gains.append(ious[-1] - before[-1])
        if gains:
            lines.append("%s %s" % (m["label"], spread(gains, signed=True)))
    if not lines:
        return ""
    return ("\nHow far from flat: the validation IoU of the last step minus that of the last validation before the "
            "last quarter of the steps, over the seeds: %s.\n" % "; ".join(lines))


def auto_depth_text(report, tolerance=0.01):
    """The depth `unet prune --auto --tolerance T` would choose for each seed's run, from the pruning table's IoUs."""
    text = ""
    for m in report["models"]:
        if not m["pruning"]:
            continue
        per_seed = []
        for seed in range(len(m["pruning"][0]["val_iou"]["runs"])):
            ious = [p["val_iou"]["runs"][seed] for p in m["pruning"]]
            per_seed.append(next(p["depth"] for p, v in zip(m["pruning"], ious) if v >= max(ious) - tolerance))
        if per_seed:
            text += "%s: %s. " % (m["label"], ", ".join("L%d" % d for d in per_seed))
    if not text:
        return ""
    return ("\nThe depth `unet prune --auto --tolerance %g` chooses (the shallowest within %g IoU of the best head), "
            "seed by seed: %s\n" % (tolerance, tolerance, text.strip()))


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
            "foreground-restricted V_rand, 1 - its mean over images; mean ± sample standard deviation (min..max) over the seeds. "
            "Train images/s and inference times: `unet bench` code path on random data, the fastest of %d timed steps "
            "after %d warm-up. Train activations: the planned memory arena of a training step at batch %d. Per-run "
            "logs: `runs/*.jsonl`; every number above is in `report.json`.\n"
            % (s.get("bench_steps", BENCH_STEPS_BEFORE_RECORDED), s["config"]["bench_warmup"], s["config"]["batch"]))


def markdown(report, have_plots, out_dir):
    text = "# U-Net family compared (`unet compare`)\n\n"
    text += settings_text(report) + match_text(report) + encoders_text(report) + models_table(report)
    text += paired_table(report)
    text += flatness_text(report, out_dir) + pruning_table(report) + auto_depth_text(report)
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
    write_atomically(os.path.join(out_dir, "report.md"), markdown(report, have_plots, out_dir))
    print("wrote %s/report.md%s" % (out_dir, ", val_iou.png and pruning.png" if have_plots else ""))


if __name__ == "__main__":
    main()
