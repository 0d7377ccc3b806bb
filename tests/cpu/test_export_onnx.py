"""unet export (issue 15): a checkpoint's inference network as an ONNX model, held against the engine.

- Every op: a one-node graph through unet_opinfo --onnx, its ONNX Runtime output against the engine's inference
  forward of the same graph (crops of odd and even margins included).
- Every family member in both paddings, transposed and bilinear upsampling, concat and add fusion, batch norm,
  dropout, several classes and channels, deep supervision in all three modes, pruned depths 1..L: the model passes
  onnx.checker (full_check), holds exactly the tensors of the network the mode runs, and on random tiles its prob
  equals unet predict's within 1e-5; scripts/onnx_predict.py over whole images of odd sizes equals unet predict
  (for each model's first mode, its mode of several heads and depth 1).
- Bad input: one line, exit code 2.

Needs onnx and onnxruntime (tests/requirements.txt, in the .venv scripts/setup.sh makes)."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from test_model import flags_of, list_params, valid_tile
from test_ops_table import CASES as OP_CASES
from test_ops_table import ops_in_header
from unet_testlib import BUILD, SOURCE, read_safetensors, single_process_env

onnx = pytest.importorskip("onnx", reason="onnx is not installed (scripts/setup.sh puts it in .venv)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (scripts/setup.sh puts it in .venv)")
sys.path.insert(0, os.path.join(SOURCE, "scripts"))
import onnx_predict  # noqa: E402

UNET = os.path.join(BUILD, "unet")
OPINFO = os.path.join(BUILD, "unet_opinfo")
TOL = 1e-5


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=single_process_env())


def ok(*args):
    r = run(*args)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def checked(path):
    """The model, after onnx's checker with full shape inference."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- every op, one node at a time ----------------------------------------------------------------------------

def op_cases():
    """test_ops_table's case of every op ONNX receives, plus crops whose margins are odd and even."""
    cases = [(op, OP_CASES[op]) for op in ops_in_header()]
    x = np.zeros((2, 3, 9, 10), np.float32)
    small = np.zeros((2, 2, 4, 6), np.float32)
    for op in ("crop_concat", "crop_add"):
        big = x if op == "crop_concat" else x[:, :2]
        out_c = 5 if op == "crop_concat" else 2
        cases.append((op, ([small, big], (2, out_c, 4, 6), {}, [], [], 0)))
    cases.append(("conv", ([x], (2, 4, 7, 8), {"k": 3, "pad": 0, "out_c": 4, "relu": 1},
                           [np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)], [], 0)))
    cases.append(("batchnorm", ([x], x.shape, {"relu": 1}, [np.zeros(3, np.float32)] * 2,
                                [np.zeros(3, np.float32), np.ones(3, np.float32)], 0)))
    # the encoders' variants: strided, bias-free, depthwise, ReLU6, a residual sum with its ReLU, nearest x2
    w = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    cases.append(("conv", ([x], (2, 4, 5, 5), {"k": 7, "stride": 2, "pad": 3, "out_c": 4}, [w(4, 3, 7, 7)], [], 0)))
    cases.append(("conv", ([x], (2, 3, 5, 5), {"k": 3, "stride": 2, "pad": 1, "groups": 3, "out_c": 3, "act": "relu6"},
                           [w(3, 1, 3, 3)], [], 0)))
    cases.append(("conv", ([x], (2, 4, 9, 10), {"k": 1, "pad": 0, "out_c": 4, "act": "relu6"}, [w(4, 3, 1, 1), w(4)],
                           [], 0)))
    cases.append(("relu", ([x], x.shape, {"act": "relu6"}, [], [], 0)))
    cases.append(("batchnorm", ([x], x.shape, {"act": "relu6"}, [w(3)] * 2, [w(3), np.ones(3, np.float32)], 0)))
    cases.append(("crop_add", ([x, x], x.shape, {"act": "relu"}, [], [], 0)))
    cases.append(("upsample2", ([x], (2, 3, 18, 20), {"upsample": "nearest"}, [], [], 0)))
    return [(op, c) for op, c in cases if op not in ("softmax_ce", "bce_dice")]


def test_emitter_table_leaves_out_only_the_losses():
    rows = dict(line.split("\t")[1::4] for line in ok(OPINFO).splitlines())
    training_only = sorted(op for op, how in rows.items() if how == "onnx=training only")
    assert training_only == ["bce_dice", "softmax_ce"]
    assert {op for op, _ in op_cases()} == set(rows) - set(training_only)


@pytest.mark.parametrize("i", range(len(op_cases())), ids=[f"{op}{i}" for i, (op, _) in enumerate(op_cases())])
def test_op_through_onnx_runtime_equals_the_engine(i, tmp_path):
    op, (inputs, out_shape, attrs, params, states, _) = op_cases()[i]
    rng = np.random.default_rng(100 + i)
    d = str(tmp_path)
    args = [OPINFO, "--op", op, "--onnx", d]
    feed = {}
    for k, a in enumerate(inputs):
        v = rng.normal(0, 1, a.shape).astype(np.float32)
        v.tofile(os.path.join(d, f"in{k}.bin"))
        feed["image" if k == 0 else f"input{k}"] = v
        args += ["--in", ",".join(map(str, a.shape))]
    for j, p in enumerate(params):
        rng.normal(0, 1, p.shape).astype(np.float32).tofile(os.path.join(d, f"param{j}.bin"))
        args += ["--param", ",".join(map(str, p.shape))]
    for j, s in enumerate(states):
        v = rng.normal(0, 1, s.shape) if j == 0 else rng.uniform(0.5, 2, s.shape)  # mean, then a positive variance
        v.astype(np.float32).tofile(os.path.join(d, f"state{j}.bin"))
        args += ["--state", ",".join(map(str, s.shape))]
    for k, v in attrs.items():
        args += ["--" + k.replace("_", "-"), v]
    ok(*args)
    engine = np.fromfile(os.path.join(d, "out.bin"), np.float32).reshape(out_shape)
    path = os.path.join(d, "op.onnx")
    checked(path)
    (got,) = session(path).run(["logits_head0"], feed)
    assert got.shape == engine.shape
    assert np.abs(got - engine).max() <= TOL * max(1.0, np.abs(engine).max()), op


# ---- every model, mode and depth ------------------------------------------------------------------------------

MODELS = [
    dict(model="unet", filters=[4, 6, 8], padding="valid", classes=2),
    dict(model="unet", filters=[4, 6, 8, 8], padding="same", classes=1, norm=True, bilinear=True, fusion="add"),
    dict(model="unet_e", filters=[4, 6, 8, 8], padding="valid", classes=3, ds=True, norm=True, bilinear=True),
    dict(model="unet_e", filters=[4, 6, 8], padding="same", classes=2, ds=True, fusion="add"),
    dict(model="unet_plus", filters=[4, 6, 8, 8], padding="same", classes=1, ds=True, fusion="add"),
    dict(model="unet_plus", filters=[4, 6, 8], padding="valid", classes=2, ds=True, fusion="add", bilinear=True),
    dict(model="unetpp", filters=[4, 6, 8, 8], padding="valid", classes=1, ds=True, norm=True),
    dict(model="unetpp", filters=[4, 6, 8, 8], padding="same", classes=2, ds=True, bilinear=True, dropout=0.3),
    dict(model="unetpp", filters=[4, 6, 8], padding="same", classes=3, ds=True, norm=True, fusion="add",
         in_channels=2),
]


def model_flags(cfg):
    return flags_of(cfg) + (["--dropout", cfg["dropout"]] if cfg.get("dropout") else [])


def modes_of(cfg):
    """(flags, the network the mode runs as a test_model configuration, head columns) of every mode. The deepest
    head of a deep-supervised network needs what the network without deep supervision has (for U-Net^e, the
    U-Net inside it)."""
    L = len(cfg["filters"]) - 1
    if not cfg.get("ds"):
        return [([], cfg, [L]), (["--depth", L], cfg, [L])]
    modes = [(["--mode", "deepest"], dict(cfg, ds=False), [L]), (["--mode", "accurate"], cfg, list(range(1, L + 1)))]
    return modes + [(["--mode", "fast", "--depth", d], dict(cfg, depth=d, ds=False), [d]) for d in range(1, L + 1)]


def write_h5(path, raw):
    with h5py.File(path, "w") as f:
        f["raw"] = raw
        f["label"] = np.zeros((raw.shape[0],) + raw.shape[-2:], np.uint8)


def train(d, cfg, tile):
    """A checkpoint after a few Adam steps (batch norm statistics moved off 0 and 1)."""
    rng = np.random.default_rng(3)
    C, side = cfg.get("in_channels", 1), tile + 8
    raw = rng.random((2, C, side, side)).astype(np.float32)
    data = os.path.join(d, "train.h5")
    with h5py.File(data, "w") as f:
        f["raw"] = raw if C > 1 else raw[:, 0]
        f["label"] = (raw[:, 0] * max(2, cfg["classes"])).astype(np.uint8)
    ckpt = os.path.join(d, "c.safetensors")
    ok(UNET, "train", "--data", data, *model_flags(cfg), "--tile", tile, "--steps", 3, "--optimizer", "adam",
       "--lr", "0.05", "--save", ckpt, "--device", "cpu", "--log-every", 1)
    return ckpt


def predict(ckpt, raw, d, name, *flags):
    """unet predict's prob over raw (N, C, H, W)."""
    data, out = os.path.join(d, name + ".h5"), os.path.join(d, name + ".out.h5")
    write_h5(data, raw if raw.shape[1] > 1 else raw[:, 0])
    ok(UNET, "predict", "--checkpoint", ckpt, "--input", data, "--output", out, "--device", "cpu", *flags)
    with h5py.File(out, "r") as f:
        return f["prob"][:]


def mirrored(images, margin, size):
    """Each image mirrored by margin on every side to size x size, as overlap-tile prediction sees it."""
    H, W = images.shape[-2:]
    ys = onnx_predict.reflect(np.arange(-margin, size - margin), H)
    xs = onnx_predict.reflect(np.arange(-margin, size - margin), W)
    return images[:, :, ys][:, :, :, xs]


TENSOR_KINDS = ("weight", "bias", "running_mean", "running_var")


@pytest.mark.parametrize("i", range(len(MODELS)), ids=[f"{c['model']}-{c['padding']}{i}" for i, c in enumerate(MODELS)])
def test_export_equals_predict(i, tmp_path):
    cfg = MODELS[i]
    d = str(tmp_path)
    rng = np.random.default_rng(20 + i)
    C, L = cfg.get("in_channels", 1), len(cfg["filters"]) - 1
    tile = valid_tile(cfg, 100 if L == 3 else 60) if cfg["padding"] == "valid" else 8 * 2 ** (L - 1)
    ckpt = train(d, cfg, tile)
    for m, (flags, net, heads) in enumerate(modes_of(cfg)):
        # whole images for the first mode, the modes of several heads (blended head by head) and depth 1 (the
        # shallowest pruned network: its own margin and pooling grid)
        whole = m == 0 or len(heads) > 1 or flags[-1:] == [1]
        path = os.path.join(d, "m.onnx")
        out = ok(UNET, "export", "--checkpoint", ckpt, "--output", path, *flags)
        assert out.startswith(f"wrote {path}: {cfg['model']}"), out
        model = checked(path)
        meta = {p.key: p.value for p in model.metadata_props}
        what = f"{cfg} {flags}"
        # the network the mode runs, and no more: its tensors under their checkpoint names, its heads as outputs
        inits = {t.name for t in model.graph.initializer if t.name.endswith(TENSOR_KINDS)}
        assert inits == {p[0] for p in list_params(net)[0]}, what
        assert [o.name for o in model.graph.output] == ["prob"] + [f"logits_head{j}" for j in heads], what
        assert {n.op_type for n in model.graph.node} <= {"Conv", "ConvTranspose", "MaxPool", "Relu", "Concat",
                                                         "Slice", "Add", "Resize", "BatchNormalization", "Sigmoid",
                                                         "Softmax", "Mean"}, what
        assert json.loads(meta["unet.config"])["model"] == cfg["model"]
        assert meta["unet.heads"] == ",".join(map(str, heads)) and meta["unet.classes"] == str(cfg["classes"])
        assert meta["unet.batch_norm"].startswith("BatchNormalization" if cfg.get("norm") else "none")
        T, O, margin = int(meta["unet.tile"]), int(meta["unet.out"]), int(meta["unet.margin"])
        assert T == tile
        sess = session(path)

        # random tiles, a batch of three: unet predict over images of one tile's output
        images = rng.random((3, C, O, O)).astype(np.float32)
        ref = predict(ckpt, images, d, "tiles", *flags)
        (prob,) = sess.run(["prob"], {"image": mirrored(images, margin, T)})
        assert prob.shape == ref.shape, what
        assert ref.std() > 1e-3, "a constant output would say nothing"
        assert np.abs(prob - ref).max() <= TOL, what

        if not whole:
            continue
        # whole images of odd sizes, through scripts/onnx_predict.py
        images = rng.random((2, C, 45, 37)).astype(np.float32)
        ref = predict(ckpt, images, d, "whole", *flags)
        got = np.stack([onnx_predict.predict(sess, im, batch=3) for im in images])
        assert np.abs(got - ref).max() <= TOL, what

        if cfg["padding"] == "same":
            # any multiple of the pooling grid, also unlike the export tile, and not square
            a = int(meta["unet.align"])
            assert meta["unet.shape"].startswith(f"height and width: any multiples of {a}")
            square = rng.random((1, C, 2 * T, 2 * T)).astype(np.float32)
            ref = predict(ckpt, square, d, "big", *flags, "--tile", 2 * T)
            (prob,) = sess.run(["prob"], {"image": square})
            assert np.abs(prob - ref).max() <= TOL, what
            (prob,) = sess.run(["prob"], {"image": rng.random((2, C, 3 * a, 5 * a)).astype(np.float32)})
            assert prob.shape == (2, cfg["classes"], 3 * a, 5 * a)


def test_opset_13_runs_alike(tmp_path):
    """The oldest operator set --opset takes (13) checks and computes what 17 does (BatchNormalization, say, has
    other versions in between)."""
    cfg = next(c for c in MODELS if c.get("bilinear") and c.get("norm") and c["padding"] == "same")
    d = str(tmp_path)
    tile = 32
    ckpt = train(d, cfg, tile)
    for opset in (13, 17):
        path = os.path.join(d, f"m{opset}.onnx")
        ok(UNET, "export", "--checkpoint", ckpt, "--output", path, "--mode", "accurate", "--opset", opset)
        model = checked(path)
        assert model.opset_import[0].version == opset and model.ir_version == 8
    x = np.random.default_rng(0).random((2, 1, tile, tile)).astype(np.float32)
    (a,) = session(os.path.join(d, "m13.onnx")).run(["prob"], {"image": x})
    (b,) = session(os.path.join(d, "m17.onnx")).run(["prob"], {"image": x})
    assert np.abs(a - b).max() <= TOL


def one_line_error(r, *pieces):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for p in pieces:
        assert p in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    d = str(tmp_path)
    cfg = dict(model="unetpp", filters=[4, 6, 8], padding="same", classes=1, ds=True)
    ckpt = train(d, cfg, 16)
    out = os.path.join(d, "m.onnx")
    export = lambda *a: run(UNET, "export", *a)  # noqa: E731
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--mode", "fastest"), "--mode", "deepest")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--depth", 3), "--depth 3", "1..2")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--depth", 1, "--mode", "accurate"),
                   "--depth prunes", "--mode fast")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--mode", "fast"), "needs --depth")
    one_line_error(export("--checkpoint", ckpt, "--output", os.path.join(d, "no", "such", "dir", "m.onnx")),
                   "cannot write", "no/such/dir/m.onnx")
    one_line_error(export("--checkpoint", ckpt), "needs --output")
    one_line_error(export("--output", out), "needs --checkpoint")
    one_line_error(export("--checkpoint", os.path.join(d, "missing.safetensors"), "--output", out), "missing")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--opset", 18), "--opset")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--tile", 18), "tile")
    one_line_error(export("--checkpoint", ckpt, "--output", out, "--steps", 3), "--steps")
    # a checkpoint without a model: tensors, but no unet.config to say what network they make
    tensors, _ = read_safetensors(ckpt)
    bare = os.path.join(d, "bare.safetensors")
    write_safetensors(bare, tensors)
    one_line_error(export("--checkpoint", bare, "--output", out), "has no unet.config metadata")
    # a model with one head cannot be pruned
    unet = train(d, dict(model="unet", filters=[4, 6, 8], padding="same", classes=2), 16)
    one_line_error(export("--checkpoint", unet, "--output", out, "--depth", 1), "has one head")
    assert not os.path.exists(out) and not [f for f in os.listdir(d) if ".tmp." in f]


def write_safetensors(path, tensors):
    """tensors as read_safetensors gives them, without metadata."""
    import struct

    header, data, offset = {}, b"", 0
    for name, (entry, raw) in tensors.items():
        header[name] = dict(dtype=entry["dtype"], shape=entry["shape"], data_offsets=[offset, offset + len(raw)])
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def test_inference_bench_smoke_run(tmp_path):
    """bench/inference_cpu.py end to end on a tiny tile: its report has a row per model and batch."""
    r = subprocess.run([sys.executable, os.path.join(SOURCE, "bench", "inference_cpu.py"), "--build", BUILD,
                        "--tile", "32", "--batches", "1,2", "--steps", "1", "--warmup", "0", "--rounds", "1",
                        "--models", "unetpp_l2", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=300, env=single_process_env())
    assert r.returncode == 0, r.stdout + r.stderr
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    report = json.load(open(os.path.join(tmp_path, name)))
    assert [(x["model"], x["batch"], x["wait"]) for x in report["rows"]] == [
        ("unetpp_l2", b, w) for b in (1, 2) for w in ("spin", "passive")]
    for x in report["rows"]:
        assert x["engine_ips"] > 0 and x["ort_ips"] > 0 and x["ratio"] == pytest.approx(x["ort_ms"] / x["engine_ms"])
        assert x["loads"]
    (cpu,) = report["cpu_rows"]
    assert cpu["engine_cpu_ms"] > 0 and cpu["ort_cpu_ms"] > 0
    md = open(os.path.join(tmp_path, name[:-5] + ".md")).read()
    assert "| model | batch | waiting threads | engine images/s |" in md and "| model | engine CPU ms |" in md
