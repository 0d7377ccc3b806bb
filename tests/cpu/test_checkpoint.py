"""Checkpoints (src/host/train/{safetensors,checkpoint}.c) through
tests/tools/unet_cfgtest.c, against a small independent safetensors reader and
writer written here from the format's description (torch 1.13 has no
safetensors support): files we write load in Python and into the PyTorch
reference model, a PyTorch state_dict in F32/F64/F16/BF16 loads in C, a
corrupt or truncated file is one clean line naming it, and a failed write
leaves neither a temporary file nor a damaged old checkpoint."""
import json
import os
import resource
import signal
import struct
import subprocess

import numpy as np
import pytest
import torch

from reference_model import GridNet
from unet_testlib import BUILD

TOOL = os.path.join(BUILD, "unet_cfgtest")

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
          "I32": np.int32, "U8": np.uint8}


def read_st(path):
    """name -> numpy array (BF16 as float32), and the metadata."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype=DTYPES[e["dtype"]])
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.reshape(e["shape"])
    return out, meta


def to_bytes(t, dtype):
    if dtype == "BF16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    return t.numpy().astype({"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64}[dtype]).tobytes()


def write_st(path, tensors, meta=None, dtype="F32", order=None, pad=True):
    """A torch state_dict as safetensors, floats in `dtype` (integers as I64)."""
    header, blobs, offset = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name in order or tensors:
        t = tensors[name]
        dt = "I64" if not t.is_floating_point() else dtype
        blob = to_bytes(t.detach().cpu(), dt)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def run(*args, **kw):
    return subprocess.run([TOOL, *[str(a) for a in args]], capture_output=True, text=True, **kw)


def ok(*args, **kw):
    r = run(*args, **kw)
    assert r.returncode == 0, r.stderr
    return r


def one_line_error(r, *pieces):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for p in pieces:
        assert p in lines[0], lines[0]
    return lines[0]


def blocks(d):
    """list.txt and the blocks the driver wrote: name -> (kind, array)."""
    params = np.fromfile(d / "params.bin", dtype=np.float32)
    state = np.fromfile(d / "state.bin", dtype=np.float32)
    opt = {n: np.fromfile(d / f"{n}.bin", dtype=np.float32) for n in ["opt_a", "opt_b"] if (d / f"{n}.bin").exists()}
    table = {}
    for line in open(d / "list.txt"):
        name, kind, off, count, *dims = line.split()
        off, count, dims = int(off), int(count), [int(x) for x in dims]
        src = params if kind == "param" else state
        table[name] = (kind, src[off:off + count].reshape(dims), {k: v[off:off + count].reshape(dims)
                                                                    for k, v in opt.items()} if kind == "param" else {})
    return table


MODEL = ["--model", "unetpp", "--filters", "3,5,6", "--norm", "batch", "--deep-supervision", "--classes", "3",
         "--padding", "same"]
REF_KW = dict(model="unetpp", filters=(3, 5, 6), norm=True, deep_supervision=True, classes=3, padding="same")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ours_load_in_python_and_in_pytorch(tmp_path, optimizer):
    d = tmp_path / "a"
    d.mkdir()
    ck = tmp_path / "c.safetensors"
    ok("ckpt-save", d, ck, *MODEL, "--optimizer", optimizer, "--steps", 42, "--seed", 7)
    assert sorted(os.listdir(tmp_path)) == ["a", "c.safetensors"]  # no temporary file left
    (n,) = struct.unpack("<Q", open(ck, "rb").read(8))
    assert n % 8 == 0
    tensors, meta = read_st(ck)
    table = blocks(d)
    for name, (kind, value, opt) in table.items():
        assert tensors[name].dtype == np.float32 and np.array_equal(tensors[name], value), name
        if kind != "param":
            assert not any(k.startswith("optimizer.") and k.endswith(name) for k in tensors)
        elif optimizer == "sgd":
            assert np.array_equal(tensors[f"optimizer.momentum_buffer.{name}"], opt["opt_a"])
            assert f"optimizer.exp_avg.{name}" not in tensors
        else:
            assert np.array_equal(tensors[f"optimizer.exp_avg.{name}"], opt["opt_a"])
            assert np.array_equal(tensors[f"optimizer.exp_avg_sq.{name}"], opt["opt_b"])
    assert meta["format"] == "pt" and meta["unet.step"] == "42" and meta["unet.format_version"] == "1"
    assert meta["unet.optimizer_state"] == optimizer
    config = json.loads(meta["unet.config"])
    assert config["model"] == "unetpp" and config["filters"] == [3, 5, 6] and config["optimizer"] == optimizer
    # order: the graph's parameters, each batch norm followed by num_batches_tracked, then the optimizer state
    header = json.loads(open(ck, "rb").read()[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    graph_names = list(table)
    assert [k for k in names if not k.endswith("num_batches_tracked") and not k.startswith("optimizer.")] == graph_names
    assert list(header)[0] == "__metadata__"
    # PyTorch's own model loads the weights strictly, num_batches_tracked included
    net = GridNet(**REF_KW)
    sd = {}
    for k in net.state_dict():
        flat = k.replace("nodes.", "").replace("heads.", "")
        sd[k] = torch.from_numpy(np.array(tensors[flat]))
    net.load_state_dict(sd, strict=True)
    bn = dict(net.named_buffers())["nodes.x0_0.norm1.num_batches_tracked"]
    assert bn.dtype == torch.int64 and bn.shape == () and int(bn) == 42
    assert torch.equal(net.state_dict()["nodes.x1_1.up.weight"].float(),
                       torch.from_numpy(table["x1_1.up.weight"][1]))
    assert table["x1_1.up.weight"][1].shape == (6, 5, 2, 2)  # transposed conv: in, out, kh, kw

    # and back: weights, optimizer state and step
    r = tmp_path / "r"
    r.mkdir()
    ok("ckpt-resume", r, ck, *MODEL, "--optimizer", optimizer)
    assert (r / "step.txt").read_text().strip() == "42"
    for name in ["params.bin", "state.bin", "opt_a.bin"] + (["opt_b.bin"] if optimizer == "adam" else []):
        assert (r / name).read_bytes() == (d / name).read_bytes(), name
    meta_out = json.loads(ok("ckpt-meta", ck).stdout)
    assert meta_out["step"] == 42 and meta_out["format_version"] == 1 and meta_out["optimizer_state"] == optimizer
    assert json.loads(meta_out["config"]) == config


@pytest.mark.parametrize("dtype,tol", [("F32", 0), ("F64", 0), ("F16", 1e-3), ("BF16", 1e-2)])
def test_pytorch_state_dict_loads_in_c(tmp_path, dtype, tol):
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    net = GridNet(**REF_KW)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.randn_like(v))
            else:
                v.fill_(5)
    sd = {k.replace("nodes.", "").replace("heads.", ""): v for k, v in net.state_dict().items()}
    # an order other than ours, and an unpadded header, as another writer may produce
    order = sorted(sd, reverse=True)
    ck = tmp_path / "torch.safetensors"
    write_st(ck, sd, dtype=dtype, order=order, pad=False, meta={"format": "pt"})
    d = tmp_path / "d"
    d.mkdir()
    ok("ckpt-init", d, ck, *MODEL)
    for name, (kind, value, _) in blocks(d).items():
        want = sd[name].numpy().astype(np.float32)
        if dtype == "F16":
            want = want.astype(np.float16).astype(np.float32)
        if dtype == "BF16":
            want = sd[name].to(torch.bfloat16).float().numpy()
        assert np.array_equal(value, want), name
    # st-dump converts every float dtype the same way
    out = json.loads(ok("st-dump", d, ck).stdout)
    assert out["metadata"] == {"format": "pt"}
    assert [t["name"] for t in out["tensors"]] == order  # file order
    i = order.index("x0_0.norm1.num_batches_tracked")
    assert out["tensors"][i]["dtype"] == "I64" and out["tensors"][i]["shape"] == []
    assert np.fromfile(d / f"{i}.bin", dtype=np.int64).tolist() == [5]
    # without our metadata there is no config, and resuming is refused
    meta = json.loads(ok("ckpt-meta", ck).stdout)
    assert meta["config"] is None and meta["step"] == 0 and meta["optimizer_state"] == "none"
    one_line_error(run("ckpt-resume", d, ck, *MODEL), "no optimizer state", f"--init {ck}")


def test_f16_special_values(tmp_path):
    vals = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, -5.96e-8, np.inf, -np.inf], dtype=np.float16)
    ck = tmp_path / "h.safetensors"
    write_st(ck, {"h": torch.from_numpy(vals.astype(np.float32))}, dtype="F16")
    d = tmp_path / "d"
    d.mkdir()
    ok("st-dump", d, ck)
    got = np.fromfile(d / "0.bin", dtype=np.float32)
    assert np.array_equal(got, vals.astype(np.float32)) and np.signbit(got[1])
    write_st(ck, {"h": torch.tensor([float("nan")])}, dtype="F16")
    ok("st-dump", d, ck)
    assert np.isnan(np.fromfile(d / "0.bin", dtype=np.float32)[0])


def test_wrong_model_is_one_line_naming_the_tensor(tmp_path):
    ck = tmp_path / "c.safetensors"
    d = tmp_path / "d"
    d.mkdir()
    ok("ckpt-save", d, ck, *MODEL, "--optimizer", "sgd")
    # a wider model: shapes differ
    wide = [a if a != "3,5,6" else "3,5,7" for a in MODEL]
    one_line_error(run("ckpt-init", d, ck, *wide), str(ck), "tensor x2_0.conv1.weight has shape [6, 5, 3, 3]",
                   "the model needs [7, 5, 3, 3]")
    # a model with a tensor the file lacks
    one_line_error(run("ckpt-init", d, ck, *MODEL, "--in-channels", "2"), "x0_0.conv1.weight has shape [3, 1, 3, 3]",
                   "needs [3, 2, 3, 3]")
    one_line_error(run("ckpt-init", d, ck, *[a for a in MODEL if a != "--deep-supervision"], "--filters", "3,5,6,8"),
                   "has no tensor x3_0.conv1.weight [8, 6, 3, 3] that the model needs")
    # a model whose tensors are a subset of the file's (pruned to depth 1) loads: extra tensors are ignored
    ok("ckpt-init", d, ck, *MODEL, "--depth", "1")
    # resume with the other optimizer, or from weights only
    one_line_error(run("ckpt-resume", d, ck, *MODEL, "--optimizer", "adam"),
                   "holds the optimizer state of SGD (momentum buffers), but this run uses Adam")
    w = tmp_path / "w.safetensors"
    ok("ckpt-save-weights", d, w, *MODEL)
    assert read_st(w)[1]["unet.optimizer_state"] == "none"
    assert not any(k.startswith("optimizer.") for k in read_st(w)[0])
    one_line_error(run("ckpt-resume", d, w, *MODEL), "holds weights but no optimizer state", f"--init {w}")
    # a weight stored as integers
    tensors, meta = read_st(ck)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    sd["head1.bias"] = sd["head1.bias"].long()
    write_st(ck, sd, meta=meta)
    one_line_error(run("ckpt-init", d, ck, *MODEL), "tensor head1.bias has dtype I64, not a floating-point type")
    # a newer format
    meta["unet.format_version"] = "99"
    sd["head1.bias"] = sd["head1.bias"].float()
    write_st(ck, sd, meta=meta)
    one_line_error(run("ckpt-init", d, ck, *MODEL), "written by a newer unet")


def corrupt_variants(good):
    """(description, bytes, expected words) for ways a file can be broken."""
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + n])
    data = good[8 + n:]
    first = next(k for k in header if k != "__metadata__")

    def with_header(h, body=data):
        t = json.dumps(h).encode()
        return struct.pack("<Q", len(t)) + t + body

    def edit(fn):
        h = json.loads(good[8:8 + n])
        fn(h)
        return with_header(h)

    yield "empty", b"", "less than the 8-byte header length"
    yield "only length", good[:8], "truncated"
    yield "half header", good[:8 + n // 2], "truncated"
    yield "cut in the data", good[:len(good) - 10], "truncated"
    yield "one byte short", good[:-1], "truncated"
    yield "trailing bytes", good + b"\0" * 16, "past its last tensor"
    yield "huge header length", struct.pack("<Q", 2**63) + good[8:], "truncated or not a safetensors file"
    yield "not json", struct.pack("<Q", 8) + b"not json" + data, "corrupt safetensors header"
    yield "json garbage", struct.pack("<Q", n) + b"{" + b"\x01" * (n - 1) + data, "corrupt safetensors header"
    yield "nul in header", good[:9] + b"\0" + good[10:], "corrupt safetensors header"
    yield "array header", with_header([1, 2]), "corrupt safetensors header"
    t = json.dumps(header).encode() + b"xx"
    yield "text after json", struct.pack("<Q", len(t)) + t + data, "corrupt safetensors header"
    yield "bad dtype", edit(lambda h: h[first].update(dtype="F33")), 'unknown dtype "F33"'
    yield "bad shape", edit(lambda h: h[first].update(shape=[-1, 3])), "bad shape"
    yield "shape mismatch", edit(lambda h: h[first].update(shape=[1])), "but F32 [1] needs 4 bytes"
    yield "reversed offsets", edit(lambda h: h[first].update(data_offsets=[8, 0])), "bad data_offsets"
    yield "missing offsets", edit(lambda h: h[first].pop("data_offsets")), "bad data_offsets"
    yield "unknown field", edit(lambda h: h[first].update(extra=1)), 'unknown field "extra"'
    yield "metadata not strings", edit(lambda h: h["__metadata__"].update(x=1)), 'value of "x" is not a string'

    def overlap(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = names[0], names[1]
        size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]

    yield "overlap", edit(overlap), "overlaps"

    def beyond(h):
        last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
        b, e = h[last]["data_offsets"]
        h[last]["data_offsets"] = [b + 4096, e + 4096]

    yield "offsets beyond the file", edit(beyond), "gap of 4096 bytes"


def test_corrupt_and_truncated_files_are_clean_errors(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    good_path = tmp_path / "good.safetensors"
    ok("ckpt-save", d, good_path, "--filters", "2,3", "--norm", "batch")
    good = good_path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    seen = 0
    for what, content, words in corrupt_variants(good):
        bad.write_bytes(content)
        for cmd in (["st-dump", d, bad], ["ckpt-init", d, bad, "--filters", "2,3", "--norm", "batch"],
                    ["ckpt-meta", bad]):
            r = run(*cmd)
            assert r.returncode == 2, (what, cmd[0], r.returncode, r.stderr)  # never a signal
            line = one_line_error(r, str(bad))
            assert words in line, (what, line)
        seen += 1
    assert seen >= 20
    one_line_error(run("st-dump", d, tmp_path / "missing.safetensors"), "cannot open", "No such file")
    one_line_error(run("st-dump", d, tmp_path), "not a regular file")


def test_atomic_write_never_leaves_a_temporary_or_damaged_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    # into a directory that does not exist: an error, nothing created
    one_line_error(run("ckpt-save", d, tmp_path / "nowhere" / "c.safetensors", "--filters", "2,3"),
                   "cannot write", "nowhere/c.safetensors", "No such file or directory")
    assert not (tmp_path / "nowhere").exists()
    # onto a directory: the rename fails, the temporary file goes
    target = tmp_path / "isdir"
    target.mkdir()
    one_line_error(run("ckpt-save", d, target, "--filters", "2,3"), "cannot rename", "Is a directory")
    assert sorted(os.listdir(tmp_path)) == ["d", "isdir"] and os.listdir(target) == []
    # a full disk in the middle of the data: the old checkpoint stays as it was
    ck = tmp_path / "c.safetensors"
    ok("ckpt-save", d, ck, "--filters", "2,3", "--seed", "1")
    before = ck.read_bytes()
    limit = len(before) + 4096  # a bigger model does not fit

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = run("ckpt-save", d, ck, "--filters", "8,16,32", "--seed", "2", preexec_fn=small_disk)
    one_line_error(r, f"cannot write {ck}", "File too large")
    assert ck.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "d", "isdir"]
    # a successful save replaces it, again with nothing left beside it
    ok("ckpt-save", d, ck, "--filters", "8,16,32", "--seed", "2")
    assert ck.read_bytes() != before and len(ck.read_bytes()) > limit
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "d", "isdir"]


def test_empty_and_scalar_tensors(tmp_path):
    ck = tmp_path / "e.safetensors"
    sd = {"a": torch.zeros(0, 3), "b": torch.tensor(2.5), "c": torch.zeros(0), "d": torch.arange(3).float()}
    write_st(ck, sd, order=["a", "b", "c", "d"])
    d = tmp_path / "d"
    d.mkdir()
    out = json.loads(ok("st-dump", d, ck).stdout)
    shapes = {t["name"]: t["shape"] for t in out["tensors"]}
    assert shapes == {"a": [0, 3], "b": [], "c": [0], "d": [3]}
    i = [t["name"] for t in out["tensors"]].index("d")
    assert np.fromfile(d / f"{i}.bin", dtype=np.float32).tolist() == [0, 1, 2]
