"""Every input that showed a bug in a file reader, kept in
tests/fuzz/regressions/<target>/ (found by that fuzz target of tests/fuzz, or
made by hand where reading the reader showed a bug the fuzzer had not reached),
fed to the real `unet` command that reads such a file: each is refused with
one line on stderr that names the file and says what is wrong, exit code 2,
never a crash or a silent run. (scripts/fuzz.sh replays the same inputs
through the fuzz targets under ASan and UBSan.)"""
import os
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import save_file

from unet_testlib import BUILD, SOURCE, UNET

REGRESSIONS = os.path.join(SOURCE, "tests", "fuzz", "regressions")

# target/file -> words the one-line error must hold (besides the file's name); "by hand": not a fuzzer's find
EXPECTED = {
    "safetensors/field-name-with-newline.safetensors": ["corrupt safetensors header", "unknown field"],
    "config_json/key-with-newline.json": ["configuration has an unknown key \"in_channe?s\""],
    "h5dataset/chunk-larger-than-dataset-libhdf5-overread.h5": ['dataset "label" is damaged: chunks of (3276801,8,8)'
                                                                " do not fit its shape (3,8,8)"],
    "h5dataset/libhdf5-leak-corrupt-object-header.h5": ['has no dataset "raw"'],
    "h5dataset/libhdf5-local-heap-claims-553-mb.h5": ['has no dataset "raw"'],
    # by hand
    "h5dataset/never-written-claims-400-mb.h5": ['dataset "raw" of shape (1,20000,20000) needs 400000000 bytes but '
                                                 "the file stores 0 for it"],
    "png/libpng-error-leaks-rows.png": ["is not a readable PNG file: PNG unsigned integer out of range"],
    # by hand
    "png/huge-claimed-size.png": ["claims an image of 30000 x 30000 pixels, more than its 196 bytes can hold"],
    "tiff/huge-claimed-size.tif": ["claims an image of 268435455 x 8 pixels, more than its 3991 bytes can hold"],
    # by hand
    "tiff/ycbcr-subsampled-tiles-read-past-buffer.tif": ["its tiles hold other than one value a sample"],
    # by hand
    "tiff/ycbcr-subsampled-rows-scrambled.tif": ["its rows hold other than one value a sample"],
    # by hand, after CI's tiff fuzzing (input not kept) saw a failed read reported with libtiff's two-line warning
    # about the header: the reason given is the read's own
    "tiff/ink-count-warning-then-short-strip.tif": ["reading the pixels failed: Not enough data for scanline 0"],
}


def inputs():
    for target in sorted(os.listdir(REGRESSIONS)):
        for name in sorted(os.listdir(os.path.join(REGRESSIONS, target))):
            yield f"{target}/{name}"


def command(target, path, tmp):
    """The unet command that reads a file of this target's kind, and the name its message gives the file."""
    if target in ("safetensors", "checkpoint"):
        # prune reads the configuration, then every weight into the model it describes
        return ["prune", "--checkpoint", path, "--depth", "1", "--output", tmp / "pruned.safetensors"], path
    if target == "config_json":
        # the configuration a checkpoint carries
        ckpt = tmp / "config.safetensors"
        with open(path, "rb") as f:
            config = f.read().decode("utf-8", "replace")
        save_file({"x": np.zeros(1, np.float32)}, str(ckpt), metadata={"format": "pt", "unet.config": config})
        return ["info", "--checkpoint", ckpt], ckpt
    if target == "h5dataset":
        return ["data", "info", path], path
    if target in ("png", "tiff"):
        images, masks = tmp / "images", tmp / "masks"
        images.mkdir(), masks.mkdir()
        name = "a.png" if target == "png" else "a.tif"
        shutil.copy(path, images / name), shutil.copy(path, masks / name)
        return ["data", "import", "--images", images, "--masks", masks, "--output", tmp / "out.h5"], images / name
    raise AssertionError(f"no command reads the inputs of fuzz target {target}")


def test_every_regression_input_has_an_expected_error():
    assert sorted(inputs()) == sorted(EXPECTED)


def environment(case):
    """Under AddressSanitizer (scripts/sanitize.sh), the inputs named libhdf5-* make libhdf5 leak on its own error
    path whatever its caller does: its leaks are suppressed for them as in the fuzz runs (tests/fuzz/lsan.supp)."""
    env = dict(os.environ)
    if os.path.basename(case).startswith("libhdf5-"):
        supp = "suppressions=" + os.path.join(SOURCE, "tests", "fuzz", "lsan.supp")
        env["LSAN_OPTIONS"] = ":".join(filter(None, [env.get("LSAN_OPTIONS"), supp, "print_suppressions=0"]))
    return env


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_regression_input_is_one_clean_line(tmp_path, case):
    target = case.split("/")[0]
    argv, named = command(target, os.path.join(REGRESSIONS, case), tmp_path)
    r = subprocess.run([UNET] + [str(a) for a in argv], capture_output=True, text=True, errors="replace",
                       timeout=120, env=environment(case))
    assert r.returncode == 2, (case, r.returncode, r.stderr[-2000:])  # never a signal, never a run
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unet"), (case, r.stderr[-2000:])
    assert str(named) in lines[0], (case, lines[0])
    for words in EXPECTED[case]:
        assert words in lines[0], (case, words, lines[0])


@pytest.mark.parametrize("target", sorted(os.listdir(os.path.join(SOURCE, "tests", "fuzz", "corpus"))))
def test_fuzz_target_replays_its_seeds_and_regressions(target):
    """Every build has the fuzz targets as plain programs (tests/fuzz/replay_main.c): the seed corpus and the saved
    inputs of a target, run through the target's own checks (one line on each refusal; ASan and UBSan in the
    sanitizer build), so that a reader changed under a target is caught here and not in CI's fuzz stage alone."""
    program = os.path.join(BUILD, "tests", "fuzz", f"fuzz_{target}")
    files = [os.path.join(d, name) for d in (os.path.join(SOURCE, "tests", "fuzz", "corpus", target),
                                             os.path.join(REGRESSIONS, target)) if os.path.isdir(d)
             for name in sorted(os.listdir(d))]
    for path in files:  # one at a time: the libhdf5-* inputs need their own leak suppression
        r = subprocess.run([program, path], capture_output=True, text=True, errors="replace", timeout=120,
                           env=environment(path))
        assert r.returncode == 0, (path, r.returncode, r.stderr[-2000:])
