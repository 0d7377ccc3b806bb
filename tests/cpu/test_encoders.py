"""Backbones in place of the plain encoder (issue 13): torchvision's ResNet-18/34/50 and MobileNetV2 with
segmentation_models_pytorch's (smp's) Unet and UnetPlusPlus decoders, under smp's names, held against smp 0.6.0
and torchvision themselves (randomly initialised; nothing is downloaded): names and shapes, parameter counts,
torchvision's weights through scripts/torchvision_weights.py giving torchvision's features, checkpoints that move
both ways, compare, and the structures refused in one line. The whole models' numbers against smp (eval, one
training step) are tests/cpu/test_encoders_smp.py's, which shares this file's helpers. Tiles of 64, batch 2."""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest
import torch

from unet_testlib import BUILD, SOURCE, read_safetensors, rel_err

smp = pytest.importorskip("segmentation_models_pytorch")
import torchvision  # noqa: E402  (after smp: its absence skips the file)

MODELTEST = os.path.join(BUILD, "unet_modeltest")
UNET = os.path.join(BUILD, "unet")
CONVERT = os.path.join(SOURCE, "scripts", "torchvision_weights.py")
ENCODERS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
DECODERS = {"unet": smp.Unet, "unetpp": smp.UnetPlusPlus}
CASES = [(kind, encoder) for encoder in ENCODERS for kind in DECODERS]
TILE, BATCH = 64, 2


def smp_model(kind, encoder, in_channels=3, classes=1, **kw):
    return DECODERS[kind](encoder, encoder_weights=None, in_channels=in_channels, classes=classes, **kw)


def model_flags(kind, encoder, in_channels, classes):
    return ["--model", kind, "--encoder", encoder, "--in-channels", str(in_channels), "--classes", str(classes)]


def engine_table(flags):
    """The engine's parameter table, {name: (kind, offset, count, shape)}, and its block sizes."""
    r = subprocess.run([MODELTEST, *flags, "--list"], capture_output=True, text=True, check=True)
    table, blocks = {}, {}
    for line in r.stdout.splitlines():
        if line.startswith("# trainable"):
            toks = line[2:].split()
            blocks = {toks[i]: int(toks[i + 1]) for i in range(0, len(toks) - 1, 2)}
        elif not line.startswith("#"):
            name, kind, off, count, *dims = line.split()
            table[name] = (kind, int(off), int(count), tuple(map(int, dims)))
    return table, blocks


def randomise(net, seed, shift=(-0.1, 0.1)):
    """Every value drawn from `seed`, float32-representable: He-normal convolutions, and batch norms made to
    matter: random scales, shifts (uniform in `shift`) and running statistics (eval mode uses them)."""
    rng = np.random.default_rng(seed)
    sd = net.state_dict()
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        shape = tuple(t.shape)
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("running_mean") or (name.endswith("bias") and "segmentation_head" in name):
            v = rng.normal(0.0, 0.1, shape)
        elif name.endswith("bias"):  # a batch norm's shift
            v = rng.uniform(*shift, shape)
        elif len(shape) == 1:  # a batch norm's scale
            v = rng.uniform(0.5, 1.5, shape)
        else:  # He-normal, as the engine initialises
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        sd[name] = torch.from_numpy(np.asarray(v, np.float32).astype(np.float64))
    net.load_state_dict(sd)
    return net


def run_engine(flags, sd, image, label=None, extra=(), steps=0, lr=0.0, eval_mode=False):
    """The engine's model with smp's values (sd: name -> tensor, for every engine parameter) through
    tests/tools/unet_modeltest: outputs, losses, gradients, parameters after `steps` SGD steps, statistics."""
    table, blocks = engine_table(flags)
    train = np.zeros(blocks["trainable"], np.float32)
    state = np.zeros(blocks["state"], np.float32)
    for name, (kind, off, count, shape) in table.items():
        (train if kind == "param" else state)[off:off + count] = sd[name].numpy().astype(np.float32).ravel()
    with tempfile.TemporaryDirectory() as d:
        train.tofile(os.path.join(d, "params.bin"))
        state.tofile(os.path.join(d, "state.bin"))
        image.astype(np.float32).tofile(os.path.join(d, "image.bin"))
        if label is not None:
            label.astype(np.int32).tofile(os.path.join(d, "label.bin"))
        cmd = [MODELTEST, *flags, "--tile", str(image.shape[2]), "--batch", str(image.shape[0]), "--dir", d, *extra]
        if eval_mode:
            cmd.append("--eval")
        if steps:
            cmd += ["--steps", str(steps), "--lr", repr(lr), "--optimizer", "sgd"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs, o = [], 0
        while os.path.exists(os.path.join(d, f"out{o}.bin")):
            outs.append(np.fromfile(os.path.join(d, f"out{o}.bin"), np.float32))
            o += 1
        res = {"outs": outs, "table": table}
        if not eval_mode:
            res["losses"] = [float(line.split()[0]) for line in open(os.path.join(d, "loss.txt"))]
            res["grads"] = np.fromfile(os.path.join(d, "grads.bin"), np.float32)
            res["params"] = np.fromfile(os.path.join(d, "params.out.bin"), np.float32)
            res["state"] = np.fromfile(os.path.join(d, "state.out.bin"), np.float32)
        return res


def record(what, **numbers):
    """The figures of a comparison, in the test's output (pytest -s shows them; the report quotes them)."""
    print(f"\n{what}: " + ", ".join(f"{k} {v:.3g}" for k, v in numbers.items()))


def inputs(seed, in_channels, classes, tile=TILE, batch=BATCH):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, (batch, in_channels, tile, tile)).astype(np.float32)
    label = rng.integers(0, max(classes, 2), (batch, 1, tile, tile)).astype(np.int32)
    return image, label


# ---- the model's structure ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, encoder", CASES)
def test_names_and_shapes_are_smps(kind, encoder):
    """Every parameter and running statistic under smp's state-dict name and shape, nothing more (smp's
    num_batches_tracked counters are written with a checkpoint, not held as parameters)."""
    for in_channels, classes in ((3, 1), (1, 4)):
        ref = smp_model(kind, encoder, in_channels, classes).state_dict()
        ref = {k: tuple(v.shape) for k, v in ref.items() if not k.endswith("num_batches_tracked")}
        ours, _ = engine_table(model_flags(kind, encoder, in_channels, classes))
        assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))[:10]
        assert {k: v[3] for k, v in ours.items()} == ref
        for name, (k, *_rest) in ours.items():
            assert (k == "state") == name.endswith(("running_mean", "running_var")), name


SMP_PARAMS = {("unet", "resnet18"): 14328209, ("unet", "resnet34"): 24436369, ("unet", "resnet50"): 32521105,
              ("unet", "mobilenet_v2"): 6628945, ("unetpp", "resnet34"): 26078609,
              ("unetpp", "mobilenet_v2"): 6824721}


@pytest.mark.parametrize("kind, encoder", sorted(SMP_PARAMS))
def test_parameter_counts_are_smps(kind, encoder):
    """unet info's count, 3 input channels, 1 class, the default decoder channels: smp's exactly."""
    r = subprocess.run([UNET, "info", "--device", "cpu", "--json", "--tile", "256", "--batch", "1",
                        *model_flags(kind, encoder, 3, 1)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == SMP_PARAMS[(kind, encoder)]
    assert info["encoder"] == encoder and info["decoder_channels"] == [256, 128, 64, 32, 16]
    ref = smp_model(kind, encoder)
    assert info["encoder_params"] == sum(p.numel() for p in ref.encoder.parameters())
    assert info["output_sizes"] == [[256, 256]] and info["nearest_valid_tiles"] == [224, 288]
    assert info["flops"] > 1e9


# ---- torchvision's weights -------------------------------------------------------------------------------------

def torchvision_features(net, encoder, x):
    """The five stages smp takes from torchvision's network (eval mode)."""
    if encoder == "mobilenet_v2":
        feats = []
        for i, layer in enumerate(net.features):
            x = layer(x)
            if i in (1, 3, 6, 13, 18):
                feats.append(x)
        return feats
    f1 = net.relu(net.bn1(net.conv1(x)))
    f2 = net.layer1(net.maxpool(f1))
    f3 = net.layer2(f2)
    f4 = net.layer3(f3)
    return [f1, f2, f3, f4, net.layer4(f4)]


def converted_weights(tmp_path, encoder, seed):
    """A random torchvision network saved as a .pth and converted by scripts/torchvision_weights.py."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, encoder)()
    randomise(net, seed)
    pth, out = str(tmp_path / f"{encoder}.pth"), str(tmp_path / f"{encoder}.safetensors")
    torch.save(net.state_dict(), pth)
    r = subprocess.run([sys.executable, CONVERT, pth, out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return net.double().eval(), out


@pytest.mark.parametrize("encoder", ENCODERS)
def test_torchvision_weights_give_torchvisions_features(tmp_path, encoder):
    """torchvision's state dict -> scripts/torchvision_weights.py -> --init-encoder: the backbone's five features
    equal torchvision's (eval mode); for one input channel the first convolution is smp's sum of the three."""
    net, weights = converted_weights(tmp_path, encoder, seed=ENCODERS.index(encoder))
    tensors, meta = read_safetensors(weights)
    assert meta["unet.encoder"] == encoder and not [k for k in tensors if k.startswith(("fc.", "classifier."))]
    for in_channels in ((3, 1) if encoder == "resnet18" else (3,)):
        image, _ = inputs(30, in_channels, 1)
        x = torch.from_numpy(image.astype(np.float64))
        with torch.no_grad():
            ref = torchvision_features(net, encoder, x.repeat(1, 3, 1, 1) if in_channels == 1 else x)
        with tempfile.TemporaryDirectory() as d:
            image.tofile(os.path.join(d, "image.bin"))
            cmd = [MODELTEST, *model_flags("unet", encoder, in_channels, 1), "--tile", str(TILE), "--batch",
                   str(BATCH), "--dir", d, "--eval", "--features", "--init-encoder", weights]
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            for level, f in enumerate(ref, start=1):
                ours = np.fromfile(os.path.join(d, f"out{level}.bin"), np.float32).reshape(f.shape)
                record(f"torchvision {encoder} in {in_channels} feature {level}", rel=rel_err(ours, f.numpy()))
                assert rel_err(ours, f.numpy()) <= 1e-4, level


def test_torchvision_weights_of_another_network_are_refused(tmp_path):
    """resnet34's file holds every tensor resnet18 has: the leftovers, or the recorded encoder, refuse it."""
    _, weights = converted_weights(tmp_path, "resnet34", seed=3)
    with tempfile.TemporaryDirectory() as d:
        np.zeros((1, 3, 64, 64), np.float32).tofile(os.path.join(d, "image.bin"))
        r = subprocess.run([MODELTEST, *model_flags("unet", "resnet18", 3, 1), "--tile", "64", "--dir", d, "--eval",
                            "--init-encoder", weights], capture_output=True, text=True)
        assert r.returncode != 0 and "resnet34" in r.stderr and "--encoder resnet34" in r.stderr, r.stderr
    # a file without the metadata: the tensors resnet18 lacks name the mismatch
    tensors, _ = read_safetensors(weights)
    bare = str(tmp_path / "bare.safetensors")
    from safetensors.numpy import save_file
    save_file({k: np.frombuffer(raw, np.float32).reshape(t["shape"]) for k, (t, raw) in tensors.items()}, bare)
    with tempfile.TemporaryDirectory() as d:
        np.zeros((1, 3, 64, 64), np.float32).tofile(os.path.join(d, "image.bin"))
        r = subprocess.run([MODELTEST, *model_flags("unet", "resnet18", 3, 1), "--tile", "64", "--dir", d, "--eval",
                            "--init-encoder", bare], capture_output=True, text=True)
        assert r.returncode != 0 and "layer1.2" in r.stderr and "lacks" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, CONVERT, str(tmp_path / "resnet34.pth"), str(tmp_path / "x.safetensors"),
                        "--encoder", "mobilenet_v2"], capture_output=True, text=True)
    assert r.returncode == 2 and "not torchvision's mobilenet_v2" in r.stderr and len(r.stderr.splitlines()) == 1


# ---- checkpoints both ways, through the command line ----------------------------------------------------------

def write_rgb_dataset(path, n, seed):
    rng = np.random.default_rng(seed)
    raw = rng.normal(0, 1, (n, 3, TILE, TILE)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = raw, (raw[:, 0] > 0.3).astype(np.uint8)
    return raw


def run_ok(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def predict_prob(ckpt, data, out, *flags):
    run_ok(UNET, "predict", "--checkpoint", ckpt, "--input", data, "--output", out, "--device", "cpu", "--tile",
           TILE, *flags)
    with h5py.File(out) as f:
        return f["prob"][...]


def test_smp_state_dict_loads_and_predicts_the_same(tmp_path):
    """A state dict smp saved as safetensors (its num_batches_tracked counters included) is a checkpoint: unet
    predict with the model's flags, and unet train --init, give smp's eval-mode probabilities."""
    from safetensors.torch import save_file
    net = randomise(smp_model("unetpp", "resnet18", 3, 1), seed=5).eval()
    weights = str(tmp_path / "smp.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    data = str(tmp_path / "d.h5")
    raw = write_rgb_dataset(data, 2, 6)
    with torch.no_grad():
        ref = torch.sigmoid(net.double()(torch.from_numpy(raw.astype(np.float64)))).numpy()
    flags = model_flags("unetpp", "resnet18", 3, 1)
    prob = predict_prob(weights, data, str(tmp_path / "p.h5"), *flags)
    record("smp state dict through unet predict", max_abs=np.abs(prob - ref).max())
    assert np.abs(prob - ref).max() <= 1e-4
    ckpt = str(tmp_path / "c.safetensors")
    run_ok(UNET, "train", *flags, "--init", weights, "--data", data, "--tile", TILE, "--batch", 2, "--steps", 0,
           "--save", ckpt, "--device", "cpu")
    assert np.abs(predict_prob(ckpt, data, str(tmp_path / "q.h5")) - ref).max() <= 1e-4


def test_checkpoint_loads_into_smp_strictly(tmp_path):
    """What unet train saves for an encoder model is smp's state dict (its optimizer state aside): smp loads it
    with strict=True, and predicts what unet predict does."""
    from safetensors.torch import load_file
    data = str(tmp_path / "d.h5")
    raw = write_rgb_dataset(data, 2, 7)
    ckpt = str(tmp_path / "c.safetensors")
    run_ok(UNET, "train", "--preset", "unet-mobilenet", "--in-channels", 3, "--data", data, "--tile", TILE,
           "--batch", 2, "--steps", 2, "--save", ckpt, "--device", "cpu")
    sd = {k: v for k, v in load_file(ckpt).items() if not k.startswith("optimizer.")}
    net = smp_model("unet", "mobilenet_v2", 3, 1)
    net.load_state_dict(sd, strict=True)
    assert all(sd[k].item() == 2 for k in sd if k.endswith("num_batches_tracked"))
    with torch.no_grad():
        ref = torch.sigmoid(net.double().eval()(torch.from_numpy(raw.astype(np.float64)))).numpy()
    prob = predict_prob(ckpt, data, str(tmp_path / "p.h5"))
    record("unet checkpoint in smp", max_abs=np.abs(prob - ref).max())
    assert np.abs(prob - ref).max() <= 1e-4


def test_fine_tuning_from_torchvision_weights(tmp_path):
    """unet train --init-encoder with a converted torchvision file: the saved backbone starts from it (a vanishing
    learning rate and frozen batch norms keep it); a model without an encoder, or a resumed run, refuses the flag
    (one input channel: test_torchvision_weights_give_torchvisions_features)."""
    _, weights = converted_weights(tmp_path, "resnet18", seed=9)
    tensors, _ = read_safetensors(weights)
    data = str(tmp_path / "d.h5")
    write_rgb_dataset(data, 2, 8)
    ckpt = str(tmp_path / "c.safetensors")
    run_ok(UNET, "train", *model_flags("unet", "resnet18", 3, 1), "--init-encoder", weights, "--freeze-encoder-bn",
           "--data", data, "--tile", TILE, "--batch", 2, "--steps", 1, "--lr", "1e-30", "--save", ckpt, "--device",
           "cpu")
    saved, meta = read_safetensors(ckpt)
    assert json.loads(meta["unet.config"])["freeze_encoder_bn"] is True
    for name, (t, raw) in tensors.items():
        assert saved["encoder." + name][1] == raw, name
    r = subprocess.run([UNET, "train", "--init-encoder", weights, "--data", data, "--tile", "64", "--padding", "same",
                        "--in-channels", "3", "--filters", "4,8", "--steps", "1", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "needs --encoder" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([UNET, "train", "--init-encoder", weights, "--resume", ckpt, "--encoder", "resnet18"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "give one of them" in r.stderr, r.stderr


# ---- what the structure does not allow: one line, exit code 2 -------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--encoder", "resnet34", "--padding", "valid"], "needs --padding same"),
    (["--model", "unetpp", "--encoder", "resnet34", "--deep-supervision"], "only one, X^{0,5}"),
    (["--model", "unetpp", "--encoder", "mobilenet_v2", "--depth", "3"], "only full-resolution node is X^{0,5}"),
    (["--model", "unet_plus", "--encoder", "resnet18"], "takes --model unet or unetpp"),
    (["--encoder", "resnet18", "--filters", "8,16,32"], "--filters sets the widths of the plain encoder"),
    (["--encoder", "resnet18", "--upsample", "bilinear"], "nearest x2"),
    (["--encoder", "resnet18", "--decoder-channels", "64,32,16"], "takes 5 to 8 values"),
    (["--encoder", "resnet18", "--decoder-channels", "64,32,16,8,4,2"], "needs 5 widths"),
    (["--upsample", "nearest"], "for --encoder models"),
    (["--freeze-encoder-bn"], "needs --encoder"),
    (["--encoder", "resnet"], "must be one of plain, resnet18"),
])
def test_impossible_encoder_models_are_one_line(flags, words):
    r = subprocess.run([UNET, "info", "--device", "cpu", "--tile", "64", *flags], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout, r
    assert words in r.stderr, r.stderr


def test_prune_of_an_encoder_checkpoint_says_why_not(tmp_path):
    data = str(tmp_path / "d.h5")
    write_rgb_dataset(data, 2, 9)
    ckpt = str(tmp_path / "c.safetensors")
    run_ok(UNET, "train", "--preset", "unetpp-resnet34", "--in-channels", 3, "--data", data, "--tile", TILE,
           "--batch", 2, "--steps", 1, "--save", ckpt, "--device", "cpu")
    r = subprocess.run([UNET, "prune", "--checkpoint", ckpt, "--depth", "2", "--output", str(tmp_path / "p.st")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "X^{0,5}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_compare_lists_encoder_models_beside_plain_ones(tmp_path):
    """unet compare --models unet,unet:resnet18: the encoder model trained under the same settings (its
    encoder's defaults: same padding, batch norm), its counts in the report; the plain models' matching keeps
    working."""
    data, val = str(tmp_path / "d.h5"), str(tmp_path / "v.h5")
    write_rgb_dataset(data, 2, 10)
    write_rgb_dataset(val, 1, 11)
    out = str(tmp_path / "cmp")
    run_ok(UNET, "compare", "--models", "unet,wide_unet,unet:resnet18", "--match-params", "unetpp", "--data", data,
           "--val", val, "--in-channels", 3, "--filters", "2,4,8", "--padding", "same", "--classes", 1, "--tile",
           TILE, "--batch", 1, "--steps", 2, "--seeds", 1, "--bench-warmup", 1, "--out", out, "--device", "cpu")
    rep = json.load(open(os.path.join(out, "report.json")))
    models = {m["name"]: m for m in rep["models"]}
    enc = models["unet:resnet18"]
    assert enc["encoder"] == "resnet18" and enc["label"] == "U-Net (resnet18)" and "filters" not in enc
    assert enc["params"] == 14328209 and enc["encoder_params"] == 11176512 and enc["padding"] == "same"
    assert models["unet"]["encoder"] == "plain" and models["unet"]["filters"] == [2, 4, 8]
    assert abs(models["wide_unet"]["params"] - rep["match"]["target_params"]) <= abs(
        models["unet"]["params"] - rep["match"]["target_params"])
    assert os.path.exists(os.path.join(out, "runs", "unet-resnet18_seed1.jsonl"))
    md = open(os.path.join(out, "report.md")).read()
    assert "| U-Net (resnet18) | resnet18, decoder 256,128,64,32,16 | 14.33M |" in md
    assert "U-Net (resnet18) 14328209 parameters (14.33M), 11.18M of them in the encoder" in md
    r = subprocess.run([UNET, "compare", "--models", "unet:resnet19", "--data", data, "--val", val, "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown encoder" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


# ---- ONNX export ----------------------------------------------------------------------------------------------

# ONNX Runtime's float32 against the engine's: test_export_onnx.py holds models of 4..8 channels to 1e-5; reductions
# over 512..2304 channels through 20..50 layers round differently in the two (seen: up to 3e-5 in prob), and the
# whole models are held to smp's float64 at 1e-4 (test_encoders_smp.py)
ONNX_TOL = 1e-4


@pytest.mark.parametrize("kind, encoder, in_channels, classes", [("unet", "resnet18", 3, 1),
                                                                 ("unetpp", "mobilenet_v2", 1, 3)])
def test_export_equals_predict(tmp_path, kind, encoder, in_channels, classes):
    """unet export of an encoder model (the stem's 7x7/2 convolution and padded max-pool, bias-free and depthwise
    convolutions, ReLU6, residual sums, nearest x2) with randomised smp weights (running statistics that keep the
    logits moderate, unlike a few training steps'): onnx's checker passes, the file holds exactly the checkpoint's
    inference tensors under smp's names, and ONNX Runtime's prob equals unet predict's within ONNX_TOL on tiles, on
    an input twice as large (non-square shapes run too) and, through scripts/onnx_predict.py, on an odd-sized image
    (tests/cpu/test_export_onnx.py's checks, for the plain models)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    sys.path.insert(0, os.path.join(SOURCE, "scripts"))
    import onnx_predict

    from safetensors.torch import save_file
    net = randomise(smp_model(kind, encoder, in_channels, classes), seed=40).eval()
    weights, data = str(tmp_path / "smp.safetensors"), str(tmp_path / "d.h5")
    ckpt, path = str(tmp_path / "c.safetensors"), str(tmp_path / "m.onnx")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    rng = np.random.default_rng(40)
    write_h5(data, rng.random((2, in_channels, TILE, TILE)).astype(np.float32), np.zeros((2, TILE, TILE), np.uint8))
    run_ok(UNET, "train", *model_flags(kind, encoder, in_channels, classes), "--init", weights, "--data", data,
           "--tile", TILE, "--steps", 0, "--save", ckpt, "--device", "cpu")
    out = run_ok(UNET, "export", "--checkpoint", ckpt, "--output", path).stdout
    assert out.startswith(f"wrote {path}: {kind}"), out
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    table, _ = engine_table(model_flags(kind, encoder, in_channels, classes))
    assert {t.name for t in model.graph.initializer if t.name in table} == set(table)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "BatchNormalization", "Resize", "Concat"} <= ops and ("MaxPool" in ops) == encoder.startswith(
        "resnet") and ("Clip" in ops) == (encoder == "mobilenet_v2"), ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["unet.margin"]) == 0 and int(meta["unet.tile"]) == int(meta["unet.out"]) == TILE, meta
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def predict(images, name, *flags):
        src, dst = str(tmp_path / f"{name}.h5"), str(tmp_path / f"{name}.out.h5")
        write_h5(src, images, np.zeros((images.shape[0],) + images.shape[2:], np.uint8))
        run_ok(UNET, "predict", "--checkpoint", ckpt, "--input", src, "--output", dst, "--device", "cpu", *flags)
        with h5py.File(dst) as f:
            return f["prob"][...]

    tiles = rng.random((2, in_channels, TILE, TILE)).astype(np.float32)
    ref = predict(tiles, "tiles")
    (prob,) = sess.run(["prob"], {"image": tiles})
    assert np.mean((ref > 0.01) & (ref < 0.99)) > 0.1, "saturated probabilities would say little"
    record(f"onnx {kind} {encoder} tile", max_abs=np.abs(prob - ref).max(),
           unsaturated=np.mean((ref > 0.01) & (ref < 0.99)))
    assert prob.shape == ref.shape and np.abs(prob - ref).max() <= ONNX_TOL
    # a larger input than the export tile (predict's tile as large: no mirrored context), and a non-square one
    big = rng.random((1, in_channels, 2 * TILE, 2 * TILE)).astype(np.float32)
    ref = predict(big, "big", "--tile", 2 * TILE)
    (prob,) = sess.run(["prob"], {"image": big})
    assert prob.shape == ref.shape and np.abs(prob - ref).max() <= ONNX_TOL
    (prob,) = sess.run(["prob"], {"image": rng.random((2, in_channels, 32, 96)).astype(np.float32)})
    assert prob.shape == (2, classes, 32, 96)
    odd = rng.random((1, in_channels, 45, 37)).astype(np.float32)
    ref = predict(odd, "odd")
    got = onnx_predict.predict(sess, odd[0], batch=3)
    assert got.shape == ref[0].shape and np.abs(got - ref[0]).max() <= ONNX_TOL


def write_h5(path, raw, label):
    with h5py.File(path, "w") as f:
        f["raw"] = raw if raw.shape[1] > 1 else raw[:, 0]
        f["label"] = label
