#!/usr/bin/env python3
"""Where CPU inference time goes, layer by layer: every convolution of U-Net 32..512 (same padding; or other
--filters) at one tile size, the engine's production kernel (tests/tools/unet_convbench, forward only) beside ONNX
Runtime running that one layer as a Conv (+ Relu) or ConvTranspose model, both on one thread, each timed by the
process CPU time of a run (what other load on the machine disturbs least), the best of --reps. The engine runs twice:
as it chooses (Winograd's F(2x2, 3x3) for the 3x3 layers where it is faster, src/kernels/cpu/conv_winograd.c) and
with the direct product only (UNET_CONV_WINOGRAD=0), so the table shows what each gives.

    bench/inference_layers_cpu.py [--build build] [--tile 256] [--batch 1] [--filters 32,64,128,256,512]
                                  [--reps 3] [--out bench/results]

Writes bench/results/inference_layers_cpu-<date>[-b<batch>][-f<first filter>].md and .json. bench/inference_cpu.py
times whole networks."""
import argparse
import datetime
import json
import os
import subprocess
import time

import numpy as np

from common import HERE, git_describe, machine

def layers(tile, filters):
    """(op, in channels, size, out channels, k): a U-Net's convolutions, the encoder and decoder of each level,
    the transposed convolution into it, and the head."""
    out = []
    for i, f in enumerate(filters):
        s = tile >> i
        out += [("conv", 1 if i == 0 else filters[i - 1], s, f, 3), ("conv", f, s, f, 3)]
        if i < len(filters) - 1:
            out += [("conv", 2 * f, s, f, 3), ("conv_t2", filters[i + 1], s // 2, f, 2)]
    return out + [("conv", filters[0], tile, 1, 1)]


def engine_ms(args, op, c, s, o, k, winograd="auto"):
    """The engine's forward; winograd "0": the direct product only."""
    cmd = [os.path.join(args.build, "unet_convbench"), "--op", op, "--in", f"{args.batch},{c},{s},{s}",
           "--out-c", str(o), "--din", "0", "--reps", str(args.reps)]
    if op == "conv":
        cmd += ["--k", str(k), "--pad", str(k // 2), "--relu", str(int(k == 3))]
    env = dict(os.environ, OMP_NUM_THREADS="1", UNET_CONV_WINOGRAD=winograd)
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stdout)["fwd_cpu_ms_min"]


def ort_ms(args, op, c, s, o, k):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "conv":
        w, so = rng.normal(0, 0.1, (o, c, k, k)), s
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y0" if k == 3 else "y"], kernel_shape=[k, k],
                                  pads=[k // 2] * 4)]
        nodes += [helper.make_node("Relu", ["y0"], ["y"])] if k == 3 else []
    else:
        w, so = rng.normal(0, 0.1, (c, o, 2, 2)), 2 * s
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    n = args.batch
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, s, s])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, o, so, so])],
                              [numpy_helper.from_array(w.astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(o, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.random((n, c, s, s)).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(args.reps):
        t0 = time.process_time()
        session.run(None, {"x": x})
        times.append((time.process_time() - t0) * 1e3)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.environ.get("UNET_BUILD", os.path.join(HERE, "..", "build")))
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--filters", default="32,64,128,256,512")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    import onnxruntime as ort

    date = datetime.date.today().isoformat()
    filters = [int(f) for f in args.filters.split(",")]
    net = f"U-Net {filters[0]}..{filters[-1]}"
    rows = []
    for op, c, s, o, k in layers(args.tile, filters):
        e, d = engine_ms(args, op, c, s, o, k), engine_ms(args, op, c, s, o, k, winograd="0")
        r = ort_ms(args, op, c, s, o, k)
        rows.append(dict(op=op, c=c, size=s, o=o, k=k, engine_cpu_ms=e, direct_cpu_ms=d, ort_cpu_ms=r, ratio=r / e,
                         load=round(os.getloadavg()[0], 2)))
        print(f"{op} {c}->{o} at {s}x{s}: engine {e:.2f} ms (direct {d:.2f}), ONNX Runtime {r:.2f} ms, "
              f"ratio {r / e:.2f}", flush=True)
    te, td, to = (sum(r[key] for r in rows) for key in ("engine_cpu_ms", "direct_cpu_ms", "ort_cpu_ms"))
    report = dict(date=date, machine=machine(), git=git_describe(), onnxruntime=ort.__version__, tile=args.tile,
                  batch=args.batch, filters=filters, rows=rows, engine_total_ms=te, direct_total_ms=td,
                  ort_total_ms=to)
    lines = [f"# {net}'s convolutions on one thread: the engine and ONNX Runtime ({date})", "",
             f"Machine: {report['machine']['cpu']} ({report['machine']['cores']} cores); tile {args.tile}, batch "
             f"{args.batch}, same padding; onnxruntime {report['onnxruntime']}; engine {report['git']}. Process CPU "
             f"time of one forward, best of {args.reps}. Engine: as it chooses; direct: the direct product only "
             "(UNET_CONV_WINOGRAD=0); ratio ONNX Runtime / engine (> 1: the engine is faster).", "",
             "| layer | size | engine CPU ms | direct CPU ms | direct / engine | ONNX Runtime CPU ms | ratio | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['op']} {r['c']}->{r['o']}" + (f" {r['k']}x{r['k']}" if r["op"] == "conv" else "")
        lines.append(f"| {name} | {r['size']}x{r['size']} | {r['engine_cpu_ms']:.2f} | {r['direct_cpu_ms']:.2f} | "
                     f"{r['direct_cpu_ms'] / r['engine_cpu_ms']:.2f} | {r['ort_cpu_ms']:.2f} | {r['ratio']:.2f} | "
                     f"{r['load']:.1f} |")
    lines.append(f"| all | | {te:.1f} | {td:.1f} | {td / te:.2f} | {to:.1f} | {to / te:.2f} | |")
    os.makedirs(args.out, exist_ok=True)
    suffix = (f"-b{args.batch}" if args.batch != 1 else "") + (f"-f{filters[0]}" if filters[0] != 32 else "")
    base = os.path.join(args.out, f"inference_layers_cpu-{date}{suffix}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    main()
