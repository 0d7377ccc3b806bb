"""Whole-model forward and backward of every family member, valid and same
padding, against the independent PyTorch reference (tests/reference_model.py)
in float64, through the compiled plan (graph, autodiff, memory plan)."""
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import pytest
import torch

from reference_model import GridNet, total_loss
from unet_testlib import BUILD, assert_close, gpu_listed

MODELTEST = os.path.join(BUILD, "unet_modeltest")


def flags_of(cfg):
    f = ["--model", cfg["model"], "--filters", ",".join(map(str, cfg["filters"])), "--padding", cfg["padding"],
         "--classes", str(cfg["classes"]), "--in-channels", str(cfg.get("in_channels", 1))]
    if cfg.get("norm"):
        f += ["--norm", "batch"]
    if cfg.get("bilinear"):
        f += ["--upsample", "bilinear"]
    if cfg.get("fusion") == "add":
        f += ["--fusion", "add"]
    if cfg.get("ds"):
        f += ["--deep-supervision"]
    if cfg.get("depth"):
        f += ["--depth", str(cfg["depth"])]
    return f


def list_params(cfg, tile=None, batch=1):
    cmd = [MODELTEST] + flags_of(cfg) + ["--list"]
    if tile:
        cmd += ["--tile", str(tile), "--batch", str(batch)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip()
    params = []
    stats = {}
    for line in r.stdout.splitlines():
        if line.startswith("# trainable"):
            toks = line[2:].split()
            stats.update({toks[i]: toks[i + 1] for i in range(0, len(toks) - 1, 2)})
        elif line.startswith("# arena"):
            toks = line[2:].split()
            stats.update({toks[i]: toks[i + 1] for i in range(0, len(toks) - 1, 2)})
        elif not line.startswith("#"):
            name, kind, off, count, *dims = line.split()
            params.append((name, kind, int(off), int(count), tuple(map(int, dims))))
    return params, stats


def valid_tile(cfg, start):
    for s in range(start, start + 64):
        p, _ = list_params(cfg, s)
        if p is not None:
            return s
    raise AssertionError("no valid tile found")


def reference(cfg):
    return GridNet(model=cfg["model"], filters=cfg["filters"], padding=cfg["padding"],
                   in_channels=cfg.get("in_channels", 1), classes=cfg["classes"], norm=cfg.get("norm", False),
                   bilinear=cfg.get("bilinear", False), fusion=cfg.get("fusion", "concat"),
                   deep_supervision=cfg.get("ds", False), depth=cfg.get("depth", 0)).double()


def run_case(cfg, seed, tile_start, batch=2, weight_map=False):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tile = valid_tile(cfg, tile_start)
    params, blocks = list_params(cfg)
    net = reference(cfg)
    flat = net.state_dict_flat()
    names = [p[0] for p in params]
    assert sorted(names) == sorted(flat.keys()), f"names differ: {set(names) ^ set(flat.keys())}"
    # random values everywhere (biases and batch norm too), float32-representable
    for name, kind, off, count, dims in params:
        t = flat[name]
        assert tuple(t.shape) == dims, f"{name}: {tuple(t.shape)} vs {dims}"
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, dims)
        elif name.endswith("weight") and "norm" in name:
            v = rng.uniform(0.5, 1.5, dims)
        else:
            fan_in = np.prod(dims[1:]) if len(dims) > 1 else 4
            v = rng.normal(0, np.sqrt(2.0 / fan_in), dims)
        flat[name] = torch.from_numpy(v.astype(np.float32).astype(np.float64))
    net.load_flat(flat)
    # the blocks keep each tensor at its offset (64-byte aligned, zero gaps)
    train_block = np.zeros(int(blocks["trainable"]), np.float32)
    state_block = np.zeros(int(blocks["state"]), np.float32)
    for name, kind, off, count, dims in params:
        block = train_block if kind == "param" else state_block
        block[off:off + count] = flat[name].numpy().ravel()
    cin = cfg.get("in_channels", 1)
    image = rng.normal(0, 1, (batch, cin, tile, tile)).astype(np.float32)
    k = max(cfg["classes"], 2)
    label = rng.integers(0, k, (batch, 1, tile, tile)).astype(np.int32)
    weight = rng.uniform(0.5, 3.0, (batch, 1, tile, tile)).astype(np.float32)
    loss_kind = "ce" if cfg["classes"] > 1 else "bce_dice"
    with tempfile.TemporaryDirectory() as d:
        train_block.tofile(os.path.join(d, "params.bin"))
        state_block.tofile(os.path.join(d, "state.bin"))
        image.tofile(os.path.join(d, "image.bin"))
        label.tofile(os.path.join(d, "label.bin"))
        weight.tofile(os.path.join(d, "weight.bin"))
        cmd = [MODELTEST] + flags_of(cfg) + ["--tile", str(tile), "--batch", str(batch), "--dir", d]
        if weight_map:
            cmd.append("--weight-map")
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        losses = [float(x) for x in open(os.path.join(d, "loss.txt")).readline().split()]
        grads = np.fromfile(os.path.join(d, "grads.bin"), dtype=np.float32)
        outs = []
        for h in range(len(net.heads_cols)):
            outs.append(np.fromfile(os.path.join(d, f"out{h}.bin"), dtype=np.float32))
        state_out = np.fromfile(os.path.join(d, "state.out.bin"), dtype=np.float32) if state_block.size else None

    net.train()
    x = torch.from_numpy(image.astype(np.float64))
    ref_outs = net(x)
    lab = torch.from_numpy(label)
    wt = torch.from_numpy(weight.astype(np.float64)) if weight_map else None
    loss, per = total_loss(ref_outs, lab, wt, loss_kind)
    loss.backward()
    for h, o in enumerate(ref_outs):
        assert_close(outs[h].reshape(o.shape), o.detach().numpy(), 1e-4, f"head {h} output")
    assert abs(losses[0] - loss.item()) <= 1e-4 * max(1.0, abs(loss.item())), (losses, loss.item())
    for h, p in enumerate(per):
        assert abs(losses[1 + h] - p.item()) <= 1e-4 * max(1.0, abs(p.item()))
    named = dict((k.replace("nodes.", "").replace("heads.", ""), v) for k, v in net.named_parameters())
    total = np.sqrt(sum(float((v.grad.numpy() ** 2).sum()) for v in named.values()))
    for name, kind, off, count, dims in params:
        if kind != "param":
            continue
        ref = named[name].grad.numpy()
        ours = grads[off:off + count].reshape(dims)
        if np.linalg.norm(ref) < 1e-9 * total:
            # a bias right before batch norm: its exact gradient is zero, and
            # float32 leaves rounding there; hold it against the whole gradient
            assert np.linalg.norm(ours) <= 1e-5 * total, f"grad {name} should be ~0"
            continue
        assert_close(ours, ref, 2e-4, f"grad {name}")
    if state_out is not None:
        sd = net.state_dict_flat()
        for name, kind, off, count, dims in params:
            if kind == "state":
                assert_close(state_out[off:off + count], sd[name].numpy().ravel(), 1e-5, name)


CASES = [
    dict(model="unet", filters=[4, 8, 16], padding="valid", classes=2),
    dict(model="unet", filters=[4, 8, 16], padding="same", classes=3),
    dict(model="unet_e", filters=[3, 6, 12], padding="valid", classes=2, ds=True),
    dict(model="unet_e", filters=[3, 6, 12], padding="same", classes=1, ds=True),
    dict(model="unet_plus", filters=[3, 6, 12], padding="valid", classes=2, ds=True),
    dict(model="unet_plus", filters=[3, 6, 12], padding="same", classes=2),
    dict(model="unetpp", filters=[2, 4, 8, 16], padding="valid", classes=2, ds=True),
    dict(model="unetpp", filters=[4, 8, 16], padding="same", classes=1, ds=True),
    dict(model="unetpp", filters=[4, 8, 16], padding="same", classes=2, norm=True),
    dict(model="unetpp", filters=[4, 8, 16], padding="valid", classes=2, bilinear=True, fusion="add", ds=True),
    dict(model="unet", filters=[4, 8, 16], padding="same", classes=2, norm=True, bilinear=True, in_channels=3),
    dict(model="unetpp", filters=[2, 4, 8, 16], padding="same", classes=1, ds=True, depth=2),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_family_member(i):
    cfg = CASES[i]
    start = 44 if cfg["padding"] == "valid" else 16 + 2 * i
    run_case(cfg, seed=100 + i, tile_start=start, weight_map=(i % 2 == 0))


def test_published_parameter_counts():
    def count(cfg):
        params, stats = list_params(cfg)
        assert int(stats["params"]) == sum(p[3] for p in params if p[1] == "param")
        return int(stats["params"])
    assert count(dict(model="unet", filters=[64, 128, 256, 512, 1024], padding="valid", classes=2)) == 31030658
    assert abs(count(dict(model="unet", filters=[32, 64, 128, 256, 512], padding="same", classes=1)) - 7.76e6) < 5e3
    assert abs(count(dict(model="unetpp", filters=[32, 64, 128, 256, 512], padding="same", classes=1)) - 9.04e6) < 5e3


def test_planner_reuses_memory():
    cfg = dict(model="unet", filters=[64, 128, 256, 512, 1024], padding="valid", classes=2)
    _, stats = list_params(cfg, 572)
    assert stats["out0"] == "1x2x388x388"
    arena, unplanned, peak = int(stats["arena"]), int(stats["unplanned"]), int(stats["peak"])
    # training keeps most activations for the backward pass, so the floor
    # (the most bytes alive at one step) is ~60% of all tensors; the
    # placement must come close to that floor
    assert arena <= 1.2 * peak, (arena, peak)
    assert arena < 0.75 * unplanned, (arena, unplanned)


def test_invalid_tile_names_nearest():
    cfg = dict(model="unet", filters=[64, 128, 256, 512, 1024], padding="valid", classes=2)
    p, msg = list_params(cfg, 570)
    assert p is None
    assert "nearest valid sizes: 556 and 572" in msg, msg


def test_repeated_steps_see_the_same_inputs(tmp_path):
    """Inputs set once stay valid for every step of a plan (their memory is
    never lent to another tensor): with a vanishing learning rate every step's
    loss is the first one's."""
    cfg = dict(model="unetpp", filters=[4, 8, 16], padding="same", classes=2, norm=True, ds=True)
    rng = np.random.default_rng(7)
    rng.normal(size=(2, 1, 32, 32)).astype(np.float32).tofile(tmp_path / "image.bin")
    rng.integers(0, 2, (2, 1, 32, 32)).astype(np.int32).tofile(tmp_path / "label.bin")
    r = subprocess.run([MODELTEST] + flags_of(cfg) + ["--tile", "32", "--batch", "2", "--dir", str(tmp_path),
                                                      "--steps", "3", "--lr", "1e-30"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    losses = [line.split()[0] for line in open(tmp_path / "loss.txt")]
    assert len(losses) == 4 and len(set(losses)) == 1, losses


# ---- unet info: the memory of a training run, and the largest batch that fits ----------------

UNET = os.path.join(BUILD, "unet")
GIB = 1 << 30


def info(*args):
    r = subprocess.run([UNET, "info", "--device", "cpu", "--json", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_info_memory_breakdown(optimizer):
    small = ["--filters", "8,16,32,64", "--padding", "same", "--tile", 96, "--norm", "batch", "--optimizer", optimizer]
    runs = [info(*small, "--batch", b) for b in (1, 2, 4, 8)]
    for d, batch in zip(runs, (1, 2, 4, 8)):
        m = d["memory"]
        assert m["batch"] == batch
        assert m["total"] == m["params"] + m["grads"] + m["optimizer"] + m["arena"] + m["workspace"]
        # parameter blocks: parameters and the running statistics, gradients, and one (SGD) or two (Adam) buffers
        assert m["params"] > m["grads"] >= 4 * d["params"]
        assert m["optimizer"] == (2 if optimizer == "adam" else 1) * m["grads"]
        assert m["arena"] == d["activation_bytes"] and d["param_bytes"] == m["params"] + m["grads"] + m["optimizer"]
        assert d["optimizer"] == optimizer and d["memory_layout"] == "cpu"
        assert d["memory_budget"] is None and d["largest_batch"] is None  # no budget, no device to ask
    totals = [d["memory"]["total"] for d in runs]
    assert totals == sorted(set(totals)), totals
    # the parameter blocks do not grow with the batch; the arena grows in proportion
    assert len({(d["memory"]["params"], d["memory"]["grads"], d["memory"]["optimizer"]) for d in runs}) == 1
    arenas = [d["memory"]["arena"] for d in runs]
    assert 7.5 * arenas[0] < arenas[3] < 8.5 * arenas[0], arenas


@pytest.mark.parametrize("flags, budget_gib", [
    (["--filters", "8,16,32,64", "--padding", "same", "--tile", 128, "--optimizer", "adam"], 0.75),
    (["--filters", "4,8,16", "--tile", 92, "--norm", "batch"], 0.0625),
])
def test_info_largest_batch_fits_and_the_next_does_not(flags, budget_gib):
    d = info(*flags, "--memory-budget", budget_gib)
    budget = int(budget_gib * GIB)
    assert d["memory_budget"] == budget and d["memory_budget_source"] == "--memory-budget"
    b = d["largest_batch"]
    assert b > 2 and d["largest_batch_capped"] is False
    at, above = info(*flags, "--batch", b)["memory"], info(*flags, "--batch", b + 1)["memory"]
    assert at["total"] <= budget < above["total"], (b, at, above, budget)
    assert d["largest_batch_memory"] == at


def test_info_largest_batch_of_the_original_unet_is_quick():
    """The paper's U-Net at 572: plan-only compiles at doubling batches then bisection, in a blink."""
    t = time.time()
    d = info("--memory-budget", 80)
    elapsed = time.time() - t
    assert d["params"] == 31030658 and d["largest_batch"] > 50
    assert d["largest_batch_memory"]["total"] <= 80 * GIB
    assert elapsed < 10, elapsed
    # too small a budget: not even batch 1 fits
    tiny = info("--memory-budget", 0.5)
    assert tiny["largest_batch"] == 0 and tiny["largest_batch_memory"] is None
    text = subprocess.run([UNET, "info", "--device", "cpu", "--memory-budget", "80"], capture_output=True,
                          text=True).stdout
    assert f"largest batch  {d['largest_batch']} within 80.00 GiB (--memory-budget)" in text
    assert "training run batch 1, sgd: parameters" in text and "CPU backend's layout" in text


@pytest.mark.parametrize("value, words", [("0", "must be in (0"), ("-1", "must be in (0"), ("abc", "needs a number"),
                                          ("nan", "needs a number"), ("", "needs a number")])
def test_info_bad_memory_budget_is_one_line(value, words):
    r = subprocess.run([UNET, "info", "--memory-budget", value], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout, r
    assert "--memory-budget" in r.stderr and words in r.stderr, r.stderr


@pytest.mark.skipif(gpu_listed(), reason="a GPU is here: --device cuda plans with it")
def test_info_device_cuda_without_a_device():
    r = subprocess.run([UNET, "info", "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout, r
    assert "no CUDA device" in r.stderr and "--memory-budget" in r.stderr, r.stderr
    # with a budget it plans a run for the GPU it does not have, with the CPU layout's sizes, and says so
    d = json.loads(subprocess.run([UNET, "info", "--device", "cuda", "--memory-budget", "40", "--json"],
                                  capture_output=True, text=True, check=True).stdout)
    assert d["memory_layout"] == "cpu" and "CPU layout" in d["memory_note"] and d["largest_batch"] > 1
