"""UNet++ as its paper uses it (issue 3): deep supervision against PyTorch,
pruning (a pruned network computes exactly what head d of the full network
computes, on tiles and on whole images), --mode accurate, unet prune, the
presets, the matched-parameter search, and unet compare end to end.

References are tests/reference_model.py (an independent PyTorch grid) in
float64; whole-image references redo overlap-tile prediction in numpy."""
import json
import os
import subprocess
import tempfile

import h5py
import numpy as np
import pytest
import torch

from test_checkpoint import read_st
from test_model import flags_of, list_params, reference, run_case, valid_tile
from unet_testlib import BUILD, assert_close

UNET = os.path.join(BUILD, "unet")
MODELTEST = os.path.join(BUILD, "unet_modeltest")
CFGTEST = os.path.join(BUILD, "unet_cfgtest")


def ok(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


# ---- deep supervision: loss and gradients against PyTorch -----------------
# test_model.py holds the other combinations; these are the ones it lacks:
# every deep-supervised member in both paddings with both losses, weight maps
# under valid padding (each head crops label and weights to its own size).
DS_CASES = [
    dict(model="unet_plus", filters=[3, 6, 12], padding="same", classes=2, ds=True),
    dict(model="unet_plus", filters=[2, 4, 8, 8], padding="valid", classes=1, ds=True),
    dict(model="unet_e", filters=[2, 4, 8, 8], padding="valid", classes=1, ds=True),
    dict(model="unet_e", filters=[3, 6, 12], padding="same", classes=3, ds=True),
    dict(model="unetpp", filters=[2, 4, 8, 8], padding="valid", classes=1, ds=True),
    dict(model="unetpp", filters=[3, 5, 7, 9], padding="same", classes=2, ds=True),
]


@pytest.mark.parametrize("i", range(len(DS_CASES)))
def test_deep_supervision_loss_and_gradients(i):
    cfg = DS_CASES[i]
    start = 92 + 4 * i if cfg["padding"] == "valid" else 17 + 3 * i
    run_case(cfg, seed=300 + i, tile_start=start, batch=2, weight_map=cfg["padding"] == "valid" or i % 2 == 1)


# ---- pruning on tiles: the pruned graph against head d of the full graph ----

def random_blocks(cfg, rng):
    """name -> float32 values for every tensor of cfg's graph."""
    params, _ = list_params(cfg)
    out = {}
    for name, kind, off, count, dims in params:
        if name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 2.0, dims).astype(np.float32)
        elif "norm" in name and name.endswith("weight"):
            out[name] = rng.uniform(0.5, 1.5, dims).astype(np.float32)
        else:
            fan = np.prod(dims[1:]) if len(dims) > 1 else 4
            out[name] = rng.normal(0, np.sqrt(2.0 / fan), dims).astype(np.float32)
    return out


def forward_eval(cfg, values, image):
    """Head outputs of the engine's inference plan at the image's size, weights by name."""
    params, blocks = list_params(cfg)
    train = np.zeros(int(blocks["trainable"]), np.float32)
    state = np.zeros(int(blocks["state"]), np.float32)
    for name, kind, off, count, dims in params:
        (train if kind == "param" else state)[off:off + count] = values[name].ravel()
    with tempfile.TemporaryDirectory() as d:
        train.tofile(os.path.join(d, "params.bin"))
        state.tofile(os.path.join(d, "state.bin"))
        image.tofile(os.path.join(d, "image.bin"))
        r = subprocess.run([MODELTEST] + flags_of(cfg) + ["--eval", "--tile", str(image.shape[2]), "--batch",
                                                          str(image.shape[0]), "--dir", d, "--list"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        shapes = [tuple(int(x) for x in tok.split("x")) for tok in r.stdout.split() if "x" in tok and tok[0].isdigit()]
        r = subprocess.run([MODELTEST] + flags_of(cfg) + ["--eval", "--tile", str(image.shape[2]), "--batch",
                                                          str(image.shape[0]), "--dir", d],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return [np.fromfile(os.path.join(d, f"out{h}.bin"), np.float32).reshape(s) for h, s in enumerate(shapes)]


def centre(a, h, w):
    oy, ox = (a.shape[2] - h) // 2, (a.shape[3] - w) // 2
    return a[:, :, oy:oy + h, ox:ox + w]


PRUNE_CASES = [
    dict(model="unetpp", filters=[4, 6, 8, 8], padding="valid", classes=2, ds=True),
    dict(model="unetpp", filters=[4, 6, 8, 8], padding="same", classes=1, ds=True, norm=True),
    dict(model="unet_plus", filters=[4, 6, 8, 8], padding="valid", classes=1, ds=True, norm=True),
    dict(model="unet_plus", filters=[4, 6, 8, 8], padding="same", classes=2, ds=True),
    dict(model="unet_e", filters=[4, 6, 8, 8], padding="valid", classes=1, ds=True),
    dict(model="unet_e", filters=[4, 6, 8, 8], padding="same", classes=3, ds=True, bilinear=True),
]


@pytest.mark.parametrize("i", range(len(PRUNE_CASES)))
def test_pruned_network_is_head_d_on_a_tile(i):
    """Same tile: the pruned graph's output is head d's, to the last bit the
    arithmetic allows (it is the same nodes with the same weights). Valid
    padding, smaller tile: the pruned network needs less context, and on a
    centre crop of the input it reproduces the centre of head d exactly when
    the crop keeps the pooling grid (an offset that is a multiple of 2^d);
    with any other offset its max-pools see other 2x2 windows and the
    values differ. Same padding on a smaller tile is not head d at all:
    the zeros of its borders sit elsewhere."""
    full = PRUNE_CASES[i]
    rng = np.random.default_rng(500 + i)
    values = random_blocks(full, rng)
    L = len(full["filters"]) - 1
    T = valid_tile(full, 92 if full["padding"] == "valid" else 24 + i)
    image = rng.normal(0, 1, (2, 1, T, T)).astype(np.float32)
    heads = forward_eval(full, values, image)
    assert len(heads) == L
    for d in range(1, L + 1):
        pruned = dict(full, depth=d, ds=False)
        pv = {n: v for n, v in values.items() if n in {p[0] for p in list_params(pruned)[0]}}
        assert f"head{d}.weight" in pv and all(f"head{j}.weight" not in pv for j in range(1, L + 1) if j != d)
        (out,) = forward_eval(pruned, pv, image)
        assert out.shape == heads[d - 1].shape
        assert_close(out, heads[d - 1], 1e-5, f"depth {d} on the full tile")
        if full["padding"] != "valid" or d == L:
            continue
        # a smaller tile, centred: the offset (T - t) / 2 decides whether the pooling grids agree
        for aligned in (True, False):
            t = next(s for s in range(T - 2, 8, -2) if (((T - s) // 2) % 2 ** d == 0) == aligned and
                     list_params(pruned, s)[0] is not None)
            crop = centre(image, t, t).copy()
            (small,) = forward_eval(pruned, pv, crop)
            ref = centre(heads[d - 1], small.shape[2], small.shape[3])
            assert ref.std() > 1e-2, "random weights left the head constant: the comparison would say nothing"
            if aligned:
                assert_close(small, ref, 1e-5, f"depth {d} on a centred {t} tile")
            else:
                assert np.abs(small - ref).max() > 1e-3, "a shifted pooling grid should change the values"


# ---- whole images: unet predict --mode fast / accurate / deepest, unet prune ----

def write_dataset(path, n, h, w, rng):
    raw = np.clip(rng.normal(0.5, 0.25, (n, h, w)), 0, 1).astype(np.float32)
    label = (raw > 0.55).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=raw, chunks=(1, h, w))
        f.create_dataset("label", data=label, chunks=(1, h, w))
    return raw


def train_checkpoint(d, flags, tile, data, steps=3):
    ckpt = os.path.join(d, "full.safetensors")
    ok(UNET, "train", "--data", data, *flags, "--tile", tile, "--batch", 1, "--steps", steps, "--optimizer", "adam",
       "--lr", "0.05", "--save", ckpt, "--device", "cpu", "--log-every", 1)
    return ckpt


def predict(ckpt, data, out, *extra):
    ok(UNET, "predict", "--checkpoint", ckpt, "--input", data, "--output", out, "--device", "cpu", *extra)
    with h5py.File(out, "r") as f:
        return f["prob"][:].astype(np.float64)


def net_with(ckpt, cfg, **kw):
    net = reference(dict(cfg, **kw))
    tensors, _ = read_st(ckpt)
    net.load_flat({k: torch.from_numpy(tensors[k].astype(np.float64)) for k in net.state_dict_flat()})
    return net.eval()


def probabilities(logits):
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def reflect(i, n):
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def mirrored(image, y0, x0, rows, cols):
    """Rows y0 .. y0+rows and columns x0 .. x0+cols of the image mirrored
    without repeating its edge (numpy's 'reflect'), as overlap-tile prediction sees it."""
    H, W = image.shape
    ys, xs = reflect(np.arange(y0, y0 + rows), H), reflect(np.arange(x0, x0 + cols), W)
    return image[np.ix_(ys, xs)]


def margin_of(cfg, tile):
    """Context a valid network loses per side, from its smallest output at this tile."""
    _, stats = list_params(cfg, tile)
    return max((tile - int(v.split("x")[2])) // 2 for k, v in stats.items() if k.startswith("out"))


def whole_image_valid(net, cfg, image):
    """Every head of a valid-padding network over a whole image: one pass
    over the image mirrored by the network's margin, started on the pooling
    grid the tiles use, each head cropped to the image (heads of a
    deep-supervised net are larger than the deepest; their extra border is
    cropped at its own offset)."""
    H, W = image.shape
    T = valid_tile(cfg, 60)
    m = margin_of(cfg, T)
    n = valid_tile(cfg, max(H, W) + 2 * m)
    x = torch.from_numpy(mirrored(image, -m, -m, n, n)[None, None].astype(np.float64))
    with torch.no_grad():
        outs = net(x)
    res = []
    for o in outs:
        k = (o.shape[2] - (n - 2 * m)) // 2
        res.append(probabilities(o)[0, :, k:k + H, k:k + W].numpy())
    return res


VALID = dict(model="unetpp", filters=[2, 4, 6, 8], padding="valid", classes=1, ds=True)


def test_whole_image_modes_and_prune_valid_padding(tmp_path):
    """Valid padding: overlap-tile prediction is exact, so every mode has a
    closed-form reference: --mode fast --depth d is the pruned network over
    the mirrored image, which is also head d of the full network over it
    (the margins of depth d and L agree modulo 2^d, so both pooling grids
    coincide); --mode accurate is the mean of the heads' probabilities; the
    default is the deepest head; unet prune writes a checkpoint that
    predicts exactly what --mode fast does."""
    rng = np.random.default_rng(7)
    d = str(tmp_path)
    data = os.path.join(d, "data.h5")
    images = write_dataset(data, 2, 37, 45, rng)
    cfg = VALID
    L = len(cfg["filters"]) - 1
    tile = valid_tile(cfg, 132)  # outputs of 44: few tiles per image
    ckpt = train_checkpoint(d, flags_of(cfg), tile, data)
    full = net_with(ckpt, cfg)
    ref_heads = [whole_image_valid(full, cfg, im) for im in images]
    deepest = predict(ckpt, data, os.path.join(d, "deepest.h5"))
    accurate = predict(ckpt, data, os.path.join(d, "accurate.h5"), "--mode", "accurate")
    for k in range(len(images)):
        assert_close(deepest[k], ref_heads[k][L - 1], 1e-4, "deepest head")
        assert_close(accurate[k], np.mean(ref_heads[k], axis=0), 1e-4, "mean of the heads")
    for depth in range(1, L):
        fast = predict(ckpt, data, os.path.join(d, f"fast{depth}.h5"), "--mode", "fast", "--depth", depth)
        pruned_cfg = dict(cfg, depth=depth, ds=False)
        pruned = net_with(ckpt, pruned_cfg)
        for k in range(len(images)):
            (ref,) = whole_image_valid(pruned, pruned_cfg, images[k])
            assert_close(ref, ref_heads[k][depth - 1], 1e-9, f"pruned {depth} against head {depth}, whole image")
            assert_close(fast[k], ref, 1e-4, f"--mode fast --depth {depth}")
        # unet prune: the pruned network's tensors alone, its own config, the same predictions
        p = os.path.join(d, f"pruned{depth}.safetensors")
        ok(UNET, "prune", "--checkpoint", ckpt, "--depth", depth, "--output", p)
        tensors, meta = read_st(p)
        full_tensors, _ = read_st(ckpt)
        names = {q[0] for q in list_params(pruned_cfg)[0]}
        assert set(tensors) == names
        for n in names:
            assert np.array_equal(tensors[n], full_tensors[n])
        saved = json.loads(meta["unet.config"])
        assert saved["depth"] == depth and saved["deep_supervision"] is False and saved["model"] == "unetpp"
        assert np.array_equal(predict(p, data, os.path.join(d, f"p{depth}.h5")), fast)
        info_p = json.loads(ok(UNET, "info", "--checkpoint", p, "--json", "--device", "cpu"))
        info_d = json.loads(ok(UNET, "info", *flags_of(pruned_cfg), "--tile", tile, "--json", "--device", "cpu"))
        assert info_p["params"] == info_d["params"] == sum(q[3] for q in list_params(pruned_cfg)[0] if q[1] == "param")
        assert info_p["flops"] == info_d["flops"] and info_p["activation_bytes"] == info_d["activation_bytes"]
    # what a pruned checkpoint cannot do, in one line each
    r = subprocess.run([UNET, "predict", "--checkpoint", os.path.join(d, "pruned2.safetensors"), "--input", data,
                        "--output", os.path.join(d, "x.h5"), "--depth", "1", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "has one head" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([UNET, "prune", "--checkpoint", ckpt, "--depth", str(L + 1), "--output", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "deeper than the network" in r.stderr, r.stderr


def emulate_same(heads_of_tile, image, T, overlap, align):
    """Overlap-tile prediction with same padding, redone: tiles on a stride
    that is a multiple of `align`, mirrored beyond the image, every head's
    logits blended with a Gaussian window (sigma T/8, floor 1e-3),
    probabilities taken after blending. Returns the stride and the
    probabilities of every head."""
    H, W = image.shape
    reach = int(np.float32(1.0 - np.float32(overlap)) * np.float32(T))
    stride = reach // align * align
    along = lambda n: 1 if n <= T else -(-(n - T) // stride) + 1  # noqa: E731
    c, s = (T - 1) / 2.0, T / 8.0
    win = np.maximum(np.exp(-(np.arange(T) - c) ** 2 / (2 * s * s)), 1e-3)
    w2 = np.outer(win, win)
    acc, wsum = None, np.zeros((H, W))
    for ty in range(along(H)):
        for tx in range(along(W)):
            y0, x0 = ty * stride, tx * stride
            heads = heads_of_tile(mirrored(image, y0, x0, T, T))
            if acc is None:
                acc = [np.zeros((p.shape[0], H, W)) for p in heads]
            h, w = min(T, H - y0), min(T, W - x0)
            for a, p in zip(acc, heads):
                a[:, y0:y0 + h, x0:x0 + w] += (w2 * p)[:, :h, :w]
            wsum[y0:y0 + h, x0:x0 + w] += w2[:h, :w]
    return stride, [probabilities(torch.from_numpy(a / wsum)[None])[0].numpy() for a in acc]


def test_whole_image_fast_mode_same_padding(tmp_path):
    """Same padding: a tile's output depends on where the tile lies (zeros
    at its borders), so whole-image predictions of the pruned network and of
    head d agree when both tile the image alike. The tiles align to 2^d for
    the pruned network and 2^L for the full one: at tile 48 with overlap 0.5
    both strides are 24 and fast mode is head d blended; at tile 40 the
    strides are 20 and 16 and the two differ near tile borders."""
    rng = np.random.default_rng(11)
    d = str(tmp_path)
    data = os.path.join(d, "data.h5")
    images = write_dataset(data, 1, 53, 61, rng)
    cfg = dict(model="unetpp", filters=[2, 4, 6, 8], padding="same", classes=2, ds=True)
    L = len(cfg["filters"]) - 1
    ckpt = train_checkpoint(d, flags_of(cfg), 48, data)
    full = net_with(ckpt, cfg)

    def heads_of_full(tile):
        with torch.no_grad():
            return [o[0].numpy() for o in full(torch.from_numpy(tile[None, None].astype(np.float64)))]

    for T, same_grid in ((48, True), (40, False)):
        stride_l, per_head = emulate_same(heads_of_full, images[0], T, 0.5, 2 ** L)
        accurate = predict(ckpt, data, os.path.join(d, f"acc{T}.h5"), "--mode", "accurate", "--tile", T)
        assert_close(accurate[0], np.mean(per_head, axis=0), 1e-4, "accurate, same padding")
        for depth in range(1, L):
            fast = predict(ckpt, data, os.path.join(d, f"fast{T}_{depth}.h5"), "--depth", depth, "--tile", T)
            stride_d, own = emulate_same(heads_of_full, images[0], T, 0.5, 2 ** depth)
            assert_close(fast[0], own[depth - 1], 1e-4, f"fast depth {depth}, tile {T}: head d on its own tiles")
            assert (stride_d == stride_l) == same_grid
            if same_grid:
                assert_close(fast[0], per_head[depth - 1], 1e-4, f"fast depth {depth} = head {depth}, tile {T}")
            else:
                assert np.abs(fast[0] - per_head[depth - 1]).max() > 1e-4


# ---- presets and matched parameter counts ----------------------------------

def parsed(*args):
    return json.loads(ok(CFGTEST, "parse", *args))


def test_presets_fill_in_what_flags_do_not_set():
    unet = parsed("train", "--preset", "unet-paper")
    assert unet["model"]["filters"] == [64, 128, 256, 512, 1024] and unet["model"]["padding"] == "valid"
    assert unet["model"]["classes"] == 2 and unet["model"]["loss"] == "ce" and unet["config"]["optimizer"] == "sgd"
    assert unet["config"]["momentum"] == 0.99 and unet["config"]["tile"] == 572
    pp = parsed("train", "--preset", "unetpp-paper")
    m, c = pp["model"], pp["config"]
    assert m["model"] == "unetpp" and m["filters"] == [32, 64, 128, 256, 512] and m["padding"] == "same"
    assert m["classes"] == 1 and m["loss"] == "bce_dice" and m["deep_supervision"] is True
    assert c["optimizer"] == "adam" and c["lr"] == 0.0003 and c["tile"] == 96
    assert pp["explicit"] == []  # a preset is not the command line: a checkpoint's model may still override
    # explicit flags win, whatever their order; the loss follows explicit classes
    o = parsed("train", "--lr", "0.01", "--preset", "unetpp-paper", "--classes", "2", "--base", "16", "--levels", "4",
               "--padding", "valid")
    assert o["config"]["lr"] == 0.01 and o["model"]["classes"] == 2 and o["model"]["loss"] == "ce"
    assert o["model"]["filters"] == [16, 32, 64, 128] and o["model"]["padding"] == "valid"
    assert o["model"]["deep_supervision"] is True and o["config"]["optimizer"] == "adam"
    info = json.loads(ok(UNET, "info", "--preset", "unetpp-paper", "--json", "--device", "cpu"))
    assert info["params"] == 9041601 + 3 * 33  # UNet++ 9.04M plus heads 1..3 of deep supervision
    info = json.loads(ok(UNET, "info", "--preset", "unet-paper", "--json", "--device", "cpu"))
    assert info["params"] == 31030658 and info["output_size"] == 388


def test_matched_parameter_counts_reproduce_the_paper():
    flags = ["--filters", "32,64,128,256,512", "--padding", "same", "--classes", "1", "--json"]
    by_model = json.loads(ok(UNET, "info", *flags, "--match-params", "unetpp"))
    by_number = json.loads(ok(UNET, "info", *flags, "--match-params", "9041601"))
    bare = json.loads(ok(UNET, "info", "--match-params", *flags))  # alone: unetpp
    assert by_model["reference"]["params"] == 9041601 and by_model["reference"]["model"] == "unetpp"
    assert by_model["unet"]["params"] == 7759521  # the paper's U-Net: 7.76M
    assert round(by_model["unet"]["params"] / 1e4) == 776 and round(by_model["reference"]["params"] / 1e4) == 904
    for r in (by_model, by_number, bare):
        assert r["match"] == by_model["match"]
        assert abs(r["match"]["gap"]) < 0.01  # a wide U-Net within 1% of UNet++
    w = by_model["by_width"]
    assert w["filters"] == [w["width"] << i for i in range(5)]
    # the integer width is the closest of its family
    for other in (w["width"] - 1, w["width"] + 1):
        n = json.loads(ok(UNET, "info", "--filters", ",".join(str(other << i) for i in range(5)), "--model", "unet",
                          "--padding", "same", "--classes", "1", "--json", "--tile", "96", "--device", "cpu"))["params"]
        assert abs(n - 9041601) >= abs(w["params"] - 9041601)
    text = ok(UNET, "info", *flags[:-1], "--match-params")
    assert "9041601" in text and "7759521" in text and "gap" in text
    r = subprocess.run([UNET, "info", "--match-params", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--match-params takes a model" in r.stderr


# ---- unet compare, end to end ----------------------------------------------

def test_compare_writes_a_consistent_report(tmp_path):
    rng = np.random.default_rng(3)
    d = str(tmp_path)
    train, val = os.path.join(d, "train.h5"), os.path.join(d, "val.h5")
    write_dataset(train, 2, 40, 40, rng)
    write_dataset(val, 1, 36, 44, rng)
    out = os.path.join(d, "cmp")
    ok(UNET, "compare", "--models", "unet,unetpp,wide_unet", "--match-params", "--data", train, "--val", val,
       "--filters", "2,4,8", "--padding", "same", "--classes", "1", "--deep-supervision", "--tile", 32, "--batch", 2,
       "--steps", 4, "--val-every", 2, "--seeds", 2, "--optimizer", "adam", "--lr", "0.01", "--bench-warmup", 1,
       "--out", out, "--device", "cpu")
    rep = json.load(open(os.path.join(out, "report.json")))
    models = {m["name"]: m for m in rep["models"]}
    assert list(models) == ["unet", "unetpp", "wide_unet"]
    pp, unet, wide = models["unetpp"], models["unet"], models["wide_unet"]
    assert unet["deep_supervision"] is False and unet["pruning"] == [] and pp["deep_supervision"] is True
    assert pp["params"] == rep["match"]["target_params"]  # the reference: UNet++ as configured
    assert abs(wide["params"] - rep["match"]["target_params"]) <= abs(unet["params"] - rep["match"]["target_params"])
    for m in rep["models"]:
        assert len(m["val_iou"]["runs"]) == 2 and len(m["logs"]) == 2
        for log in m["logs"]:
            lines = [json.loads(x) for x in open(os.path.join(out, log))]
            vals = [x for x in lines if "val_iou" in x]
            assert [x["step"] for x in vals] == [2, 4]
            assert vals[-1]["val_iou"] in m["val_iou"]["runs"]
            for key in ("val_pixel_error", "val_rand_error", "val_iou_class1", "val_dice_class1"):
                assert vals[-1][key] in m[key]["runs"], key
        assert m["val_iou_class1"] == m["val_iou"] and "val_iou_class2" not in m  # one class: class 1 is the headline
        assert m["flops_per_image"] > 0 and m["train_images_per_s"] > 0 and m["train_activation_bytes"] > 0
    # depth L pruned is the full network's deepest head, through the same evaluation
    assert [p["depth"] for p in pp["pruning"]] == [1, 2]
    assert pp["pruning"][-1]["val_iou"]["runs"] == pytest.approx(pp["val_iou"]["runs"], abs=1e-6)
    assert pp["pruning"][0]["params"] < pp["pruning"][1]["params"] <= pp["params"]
    assert not [f for f in os.listdir(os.path.join(out, "runs")) if f.endswith(".safetensors")]
    md = open(os.path.join(out, "report.md")).read()
    assert "| UNet++ (DS) |" in md and "| UNet++ | L1 |" in md and "wide U-Net" in md
    assert "Val Rand error" in md and "Per class" not in md
    r = subprocess.run([UNET, "compare", "--models", "unet,wide_unet", "--data", train, "--val", val, "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--match-params" in r.stderr and len(r.stderr.splitlines()) == 1


def test_compare_reports_every_class(tmp_path):
    """Three classes: the report gives IoU and Dice of classes 1 and 2 (their mean is the headline), for the
    models as trained and pruned, and they are the runs' last validations."""
    rng = np.random.default_rng(4)
    d = str(tmp_path)
    train, val = os.path.join(d, "train.h5"), os.path.join(d, "val.h5")
    for path, n, h, w in ((train, 2, 40, 40), (val, 1, 36, 44)):
        raw = rng.random((n, h, w)).astype(np.float32)
        with h5py.File(path, "w") as f:
            f["raw"], f["label"] = raw, np.digitize(raw, [0.4, 0.7]).astype(np.uint8)
    out = os.path.join(d, "cmp")
    ok(UNET, "compare", "--models", "unet,unetpp", "--data", train, "--val", val, "--filters", "2,4,8", "--padding",
       "same", "--classes", 3, "--deep-supervision", "--tile", 32, "--batch", 2, "--steps", 3, "--seeds", 1,
       "--optimizer", "adam", "--lr", "0.01", "--bench-warmup", 1, "--out", out, "--device", "cpu")
    rep = json.load(open(os.path.join(out, "report.json")))
    for m in rep["models"]:
        last = [json.loads(x) for x in open(os.path.join(out, m["logs"][0])) if "val_iou" in x][-1]
        for key in ("val_iou", "val_dice", "val_pixel_error", "val_rand_error", "val_iou_class1", "val_iou_class2",
                    "val_dice_class1", "val_dice_class2"):
            assert m[key]["runs"] == [last[key]], key
        assert "val_iou_class3" not in m
        assert m["val_iou"]["mean"] == pytest.approx((last["val_iou_class1"] + last["val_iou_class2"]) / 2, abs=2e-6)
    pp = rep["models"][1]
    for key in ("val_iou_class1", "val_dice_class2", "val_rand_error"):
        assert pp["pruning"][-1][key]["runs"] == pytest.approx(pp[key]["runs"], abs=1e-6), key
    md = open(os.path.join(out, "report.md")).read()
    assert "means over classes 1..2" in md and "| UNet++ L1 | 2 |" in md and "| U-Net | 1 |" in md
