"""Without a GPU: the CUDA backend's NHWC layout conversions
(src/kernels/cuda/layout.h, through tests/tools/unet_layouttest.c) against
PyTorch. Rounding float32 -> bfloat16 must be PyTorch's round to nearest even
bit for bit (NaN: the device's canonical 0x7fff); packing must be NCHW ->
NHWC with the channels padded by zeros to a multiple of 8 (bf16) or 4
(float32, --layout nhwc); unpacking must give back the (rounded) values in
NCHW."""
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from unet_testlib import BUILD

TOOL = os.path.join(BUILD, "unet_layouttest")


def tool(*args):
    if not os.path.exists(TOOL):
        pytest.fail(f"{TOOL} is missing: build the unet_layouttest target")
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def torch_bf16_bits(x):
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_rounding_is_round_to_nearest_even():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200000, dtype=np.uint64).astype(np.uint32)
    # ties and their neighbours, both parities, every exponent range, and specials
    tie = (rng.integers(0, 2**16, size=20000, dtype=np.uint64).astype(np.uint32) << 16)
    bits = np.concatenate([bits, tie | 0x8000, tie | 0x7FFF, tie | 0x8001, tie | 0x18000,
                           np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF,
                                     0x7F7F8000, 0x3F808000, 0x3F818000, 0x7FC00000, 0xFFC00001, 0x7F800001],
                                    dtype=np.uint32)])
    x = bits.view(np.float32)
    with tempfile.TemporaryDirectory() as d:
        x.tofile(os.path.join(d, "in.bin"))
        tool("round", os.path.join(d, "in.bin"), os.path.join(d, "out.bin"))
        got = np.fromfile(os.path.join(d, "out.bin"), dtype=np.uint16)
    nan = np.isnan(x)
    assert np.all(got[nan] == 0x7FFF)
    want = torch_bf16_bits(x[~nan].copy())
    bad = np.nonzero(got[~nan] != want)[0]
    assert bad.size == 0, [(hex(bits[~nan][i]), hex(got[~nan][i]), hex(want[i])) for i in bad[:10]]


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 8, 4, 4), (3, 9, 2, 3), (1, 1, 1, 1), (2, 17, 3, 1)])
def test_pack_and_unpack(shape):
    n, c, h, w = shape
    cp = (c + 7) // 8 * 8
    rng = np.random.default_rng(c * 100 + h)
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        x.tofile(os.path.join(d, "x.bin"))
        tool("pack", n, c, h, w, os.path.join(d, "x.bin"), os.path.join(d, "p.bin"))
        packed = np.fromfile(os.path.join(d, "p.bin"), dtype=np.uint16)
        assert packed.size == n * h * w * cp
        tool("unpack", n, c, h, w, os.path.join(d, "p.bin"), os.path.join(d, "u.bin"))
        back = np.fromfile(os.path.join(d, "u.bin"), dtype=np.float32).reshape(shape)
    packed = packed.reshape(n, h, w, cp)
    want = torch_bf16_bits(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert np.array_equal(packed[..., :c], want)
    assert np.all(packed[..., c:] == 0)
    rounded = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(back, rounded)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 4, 4), (3, 9, 2, 3), (1, 1, 1, 1), (2, 17, 3, 1)])
def test_pack_and_unpack_float_nhwc(shape):
    n, c, h, w = shape
    cp = (c + 3) // 4 * 4
    rng = np.random.default_rng(c * 100 + h + 1)
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        x.tofile(os.path.join(d, "x.bin"))
        tool("pack", n, c, h, w, os.path.join(d, "x.bin"), os.path.join(d, "p.bin"), "nhwc")
        packed = np.fromfile(os.path.join(d, "p.bin"), dtype=np.float32)
        assert packed.size == n * h * w * cp
        tool("unpack", n, c, h, w, os.path.join(d, "p.bin"), os.path.join(d, "u.bin"), "nhwc")
        back = np.fromfile(os.path.join(d, "u.bin"), dtype=np.float32).reshape(shape)
    packed = packed.reshape(n, h, w, cp)
    assert np.array_equal(packed[..., :c], x.transpose(0, 2, 3, 1))
    assert np.all(packed[..., c:].view(np.uint32) == 0)  # +0.0, bit for bit
    assert np.array_equal(back, x)


def test_bytes():
    assert tool("bytes", 2, 3, 5, 7, "fp32", "f32").strip() == str(2 * 3 * 5 * 7 * 4)
    assert tool("bytes", 2, 3, 5, 7, "bf16", "f32").strip() == str(2 * 8 * 5 * 7 * 2)
    assert tool("bytes", 2, 16, 5, 7, "bf16", "f32").strip() == str(2 * 16 * 5 * 7 * 2)
    # labels stay int32 NCHW under bf16
    assert tool("bytes", 2, 1, 5, 7, "bf16", "i32").strip() == str(2 * 5 * 7 * 4)
    # float32 NHWC: channels padded to 4; labels stay int32 NCHW
    assert tool("bytes", 2, 3, 5, 7, "nhwc", "f32").strip() == str(2 * 4 * 5 * 7 * 4)
    assert tool("bytes", 2, 16, 5, 7, "nhwc", "f32").strip() == str(2 * 16 * 5 * 7 * 4)
    assert tool("bytes", 2, 1, 5, 7, "nhwc", "i32").strip() == str(2 * 5 * 7 * 4)
