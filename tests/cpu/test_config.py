"""The one options table (src/host/cli/options.c) through tests/tools/unet_cfgtest.c:
parsing of every value type, each malformed input's one-line message and exit
code 2, --help listing exactly the options a subcommand takes, the JSON round
trip, and the checkpoint's model overriding defaults but not explicit flags."""
import json
import os
import random
import subprocess

import numpy as np
import pytest

from unet_testlib import BUILD

TOOL = os.path.join(BUILD, "unet_cfgtest")
COMMANDS = ["train", "predict", "eval", "info", "bench"]


def run(*args):
    return subprocess.run([TOOL, *[str(a) for a in args]], capture_output=True, text=True)


def parse(cmd, *args):
    r = run("parse", cmd, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def f32(x):
    return float(np.float32(x))


PAPER_MODEL = {"model": "unet", "filters": [64, 128, 256, 512, 1024], "padding": "valid", "in_channels": 1,
               "classes": 2, "norm": "none", "upsample": "transposed", "fusion": "concat",
               "deep_supervision": False, "dropout": 0, "loss": "ce", "depth": 0, "encoder": "plain",
               "decoder_channels": [256, 128, 64, 32, 16], "freeze_encoder_bn": False}


def test_defaults_are_the_paper_unet():
    out = parse("train")
    assert out["model"] == PAPER_MODEL
    c = out["config"]
    assert c["tile"] == 572 and c["batch"] == 1 and c["optimizer"] == "sgd"
    assert f32(c["momentum"]) == f32(0.99) and c["momentum"] == 0.99  # shortest form, not 0.99000001
    assert c["augment"] == "none" and c["device"] == "auto" and c["precision"] == "auto"
    assert c["augment_device"] == "cpu"
    assert c["raw_key"] == "raw" and c["label_key"] == "label" and c["weight_key"] == "weight"
    assert c["schedule"] == "constant" and c["warmup"] == 0 and c["no_shuffle"] is False
    assert out["explicit"] == [] and out["total_steps"] == c["steps"]


def test_every_value_type():
    out = parse("train", "--tile", "256", "--batch=3", "--steps", "123456789012", "--seed", str(2**64 - 1),
                "--lr", "3e-4", "--weight-decay=1e-5", "--data", "dir with space/a b.h5", "--save=x=y.safetensors",
                "--deep-supervision", "--no-shuffle", "--model", "unetpp", "--filters", "3,5,7", "--padding", "same",
                "--norm", "batch", "--upsample", "bilinear", "--fusion", "add", "--dropout", "0.5",
                "--optimizer", "adamw", "--schedule", "poly", "--warmup", "17", "--precision", "bf16",
                "--device", "cuda:2", "--in-channels", "3", "--classes", "1", "--augment", "paper",
                "--augment-device", "cuda")
    c, m = out["config"], out["model"]
    assert c["tile"] == 256 and c["batch"] == 3 and c["steps"] == 123456789012 and out["total_steps"] == 123456789012
    assert c["seed"] == 2**64 - 1
    assert f32(c["lr"]) == f32(3e-4) and f32(c["weight_decay"]) == f32(1e-5)
    assert c["data"] == "dir with space/a b.h5" and c["save"] == "x=y.safetensors"
    assert c["no_shuffle"] is True and c["augment"] == "paper" and c["augment_device"] == "cuda"
    assert m == {"model": "unetpp", "filters": [3, 5, 7], "padding": "same", "in_channels": 3, "classes": 1,
                 "norm": "batch", "upsample": "bilinear", "fusion": "add", "deep_supervision": True, "dropout": 0.5,
                 "loss": "bce_dice", "depth": 0, "encoder": "plain", "decoder_channels": [256, 128, 64, 32, 16],
                 "freeze_encoder_bn": False}
    assert c["optimizer"] == "adamw" and c["schedule"] == "poly" and c["warmup"] == 17
    assert c["precision"] == "bf16" and c["device"] == "cuda:2"
    assert "loss" not in out["explicit"] and {"tile", "batch", "seed", "filters", "deep-supervision"} <= set(
        out["explicit"])
    # the last of a repeated option wins
    assert parse("info", "--tile", "100", "--tile", "188")["config"]["tile"] == 188


@pytest.mark.parametrize("option,choices", [
    ("model", ["unet", "unet_e", "unet_plus", "unetpp"]), ("padding", ["valid", "same"]),
    ("norm", ["none", "batch"]), ("upsample", ["transposed", "bilinear"]), ("fusion", ["concat", "add"]),
    ("loss", ["ce", "bce_dice"]), ("optimizer", ["sgd", "adam", "adamw"]),
    ("schedule", ["constant", "cosine", "poly"]), ("precision", ["auto", "fp32", "tf32", "bf16"])])
def test_every_enum_choice(option, choices):
    for ch in choices:
        assert parse("train", f"--{option}", ch)["config"][option] == ch


def test_mode_and_device_forms():
    for mode in ["deepest", "fast", "accurate"]:
        assert parse("predict", "--mode", mode)["config"]["mode"] == mode
    for dev, want in [("cpu", "0 -1"), ("cuda", "1 -1"), ("cuda:3", "1 3"), ("auto", "-1 -1")]:
        r = run("device", "predict", "--device", dev)
        assert r.returncode == 0 and r.stdout.split() == want.split()


def test_base_and_levels():
    m = parse("train", "--base", "16", "--levels", "4")["model"]
    assert m["filters"] == [16, 32, 64, 128] and m["depth"] == 0
    # the shorthand: with --base and no --levels, --depth counts the levels
    out = parse("info", "--base", "64", "--depth", "5")
    assert out["model"]["filters"] == [64, 128, 256, 512, 1024] and out["model"]["depth"] == 0
    assert "depth" not in out["explicit"] and "filters" in out["explicit"]
    # with --levels, --depth is the pruning depth again
    m = parse("info", "--base", "32", "--levels", "5", "--depth", "2", "--model", "unetpp")["model"]
    assert m["filters"] == [32, 64, 128, 256, 512] and m["depth"] == 2
    assert parse("info", "--base", "8")["model"]["filters"] == [8, 16, 32, 64, 128]
    assert parse("predict", "--depth", "3")["model"]["depth"] == 3


def test_loss_follows_classes_unless_given():
    assert parse("train", "--classes", "1")["model"]["loss"] == "bce_dice"
    assert parse("train", "--classes", "5")["model"]["loss"] == "ce"
    assert parse("train", "--classes", "1", "--loss", "ce")["model"]["loss"] == "ce"  # the model check refuses it later


BAD = [
    ("train", ["--lr0", "1"], "unknown option --lr0 (did you mean --lr?)"),
    ("train", ["--filter", "4,8"], "unknown option --filter (did you mean --filters?)"),
    ("train", ["--deep-supervison"], "did you mean --deep-supervision?"),
    ("train", ["--deep"], "did you mean --deep-supervision?"),
    ("train", ["--zzzzzzzz"], "unknown option --zzzzzzzz"),
    ("train", ["--lr"], "--lr needs a value"),
    ("train", ["--lr", "abc"], "--lr needs a number, got 'abc'"),
    ("train", ["--lr", "0"], "--lr must be > 0, got 0"),
    ("train", ["--lr", "-1"], "--lr must be > 0"),
    ("train", ["--lr", "nan"], "--lr needs a number"),
    ("train", ["--lr", "inf"], "--lr needs a number"),
    ("train", ["--lr", "1e40"], "--lr must be > 0, got 1e40"),
    ("train", ["--lr", "0.1x"], "--lr needs a number, got '0.1x'"),
    ("train", ["--lr", ""], "--lr needs a number, got ''"),
    ("train", ["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
    ("train", ["--dropout", "1"], "--dropout must be in [0, 1)"),
    ("train", ["--batch", "0"], "--batch must be in [1, "),
    ("train", ["--batch", "1.5"], "--batch needs an integer, got '1.5'"),
    ("train", ["--batch", " 4"], "--batch needs an integer"),
    ("train", ["--batch", "99999999999999999999"], "--batch needs an integer"),
    ("train", ["--tile", "9999999999"], "--tile must be in [1, "),
    ("train", ["--steps", "-5"], "--steps must be in [0, "),
    ("train", ["--log-every", "0"], "--log-every must be >= 1, got 0"),
    ("train", ["--classes", "0"], "--classes must be in [1, 64], got 0"),
    ("train", ["--model", "unet++"], "--model must be one of unet, unet_e, unet_plus, unetpp; got 'unet++'"),
    ("train", ["--padding", "full"], "--padding must be one of valid, same; got 'full'"),
    ("train", ["--filters", "64,,128"], "--filters needs comma-separated integers"),
    ("train", ["--filters", "64,128,"], "--filters needs comma-separated integers"),
    ("train", ["--filters", "a,b"], "--filters needs comma-separated integers"),
    ("train", ["--filters", "64"], "--filters takes 2 to 8 values, got 1"),
    ("train", ["--filters", "1,2,3,4,5,6,7,8,9"], "--filters takes 2 to 8 values, got 9"),
    ("train", ["--filters", "0,4"], "--filters: every value must be in [1, 65536], got 0"),
    ("train", ["--filters", "4,8", "--base", "4"], "give either --filters or --base"),
    ("train", ["--levels", "3"], "--levels goes with --base"),
    ("train", ["--base", "4", "--levels", "1"], "--levels must be in [2, 8], got 1"),
    ("train", ["--base", "4", "--depth", "1"], "--depth with --base must be between 2 and 8 levels, got 1"),
    ("train", ["--base", "4096", "--levels", "8"], "more than 65536"),
    ("train", ["--deep-supervision=1"], "--deep-supervision is a flag and takes no value"),
    ("train", ["--seed", "-1"], "--seed needs an integer in [0, 2^64), got '-1'"),
    ("train", ["--seed", str(2**64)], "--seed needs an integer in [0, 2^64)"),
    ("train", ["--device", "gpu"], "--device must be cpu, cuda, cuda:N (N a device index) or auto; got 'gpu'"),
    ("train", ["--device", "cuda:x"], "--device must be"),
    ("train", ["--device", "cuda:"], "--device must be"),
    ("train", ["--data", "x" * 5000], "--data is too long"),
    ("train", ["-l", "1"], "unknown option -l: options are long"),
    ("train", ["stray"], "unexpected argument 'stray'"),
    ("train", ["--"], "unexpected argument '--'"),
    ("train", ["--save", "--steps", "10"], "--save needs a value (C.safetensors), got option --steps"),
    ("train", ["--model"], "--model needs a value (unet|unet_e|unet_plus|unetpp)"),
    ("predict", ["--lr", "1"], "--lr is not an option of predict (it is one of train, bench, compare)"),
    ("info", ["--data", "x.h5"], "--data is not an option of info"),
    ("trian", [], "unknown command 'trian' (did you mean train?)"),
    ("frobnicate", [], "unknown command 'frobnicate'; commands: train, predict"),
]


@pytest.mark.parametrize("cmd,args,message", BAD, ids=[" ".join([c] + a)[:40] for c, a, _ in BAD])
def test_malformed_input_is_one_line_and_exit_2(cmd, args, message):
    r = run("parse", cmd, *args)
    assert r.returncode == 2, (r.returncode, r.stdout)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0], lines[0]


def help_options(cmd):
    r = run("help", cmd)
    assert r.returncode == 0
    return r.stdout, {tok[2:] for line in r.stdout.splitlines() for tok in line.split()[:1]
                      if tok.startswith("--") and tok != "--help"}


def test_help_lists_exactly_the_options_a_subcommand_takes():
    every = set()
    for cmd in COMMANDS:
        every |= help_options(cmd)[1]
    assert len(every) > 45
    for cmd in COMMANDS:
        text, listed = help_options(cmd)
        assert text.startswith(f"usage: unet {cmd} [options]")
        for line in text.splitlines():
            assert len(line) <= 100, line
        for name in every:
            r = run("parse", cmd, f"--{name}")
            taken = "is not an option of" not in r.stderr
            assert taken == (name in listed), (cmd, name, r.stderr)
    # what the issue asks of train, predict and info
    train = help_options("train")[1]
    assert {"model", "filters", "base", "padding", "in-channels", "classes", "norm", "upsample", "fusion",
            "deep-supervision", "dropout", "loss", "tile", "batch", "steps", "optimizer", "lr", "momentum",
            "weight-decay", "schedule", "warmup", "seed", "no-shuffle", "augment", "data", "val", "raw-key",
            "label-key", "weight-key", "init", "save", "resume", "log", "log-every", "val-every", "device",
            "precision", "workers", "threads"} <= train
    assert {"checkpoint", "input", "output", "mode", "depth"} <= help_options("predict")[1]
    assert {"json", "tile", "depth", "checkpoint"} <= help_options("info")[1]
    # -h and --help anywhere in the options
    for flag in ["-h", "--help"]:
        r = run("parse", "eval", "--tile", "100", flag)
        assert r.returncode == 0 and r.stdout.startswith("usage: unet eval")
    usage = run("usage").stdout
    for cmd in COMMANDS:
        assert f"  {cmd} " in usage


def random_args(rng):
    args = ["--model", rng.choice(["unet", "unet_e", "unet_plus", "unetpp"]),
            "--filters", ",".join(str(rng.randint(1, 4096)) for _ in range(rng.randint(2, 8))),
            "--padding", rng.choice(["valid", "same"]), "--in-channels", rng.randint(1, 16),
            "--classes", rng.randint(1, 64), "--norm", rng.choice(["none", "batch"]),
            "--upsample", rng.choice(["transposed", "bilinear"]), "--fusion", rng.choice(["concat", "add"]),
            "--dropout", repr(rng.random() * 0.999), "--depth", rng.randint(0, 8),
            "--lr", repr(10 ** rng.uniform(-8, 1)), "--momentum", repr(rng.random() * 0.999),
            "--weight-decay", repr(rng.random() ** 5), "--beta2", repr(1 - 10 ** rng.uniform(-6, -1)),
            "--adam-eps", repr(10 ** rng.uniform(-12, -3)), "--val-fraction", repr(rng.random() * 0.9),
            "--seed", rng.randint(0, 2**64 - 1), "--steps", rng.randint(0, 10**12), "--warmup", rng.randint(0, 999),
            "--optimizer", rng.choice(["sgd", "adam", "adamw"]), "--schedule", rng.choice(["constant", "cosine"]),
            "--tile", rng.randint(1, 4096), "--batch", rng.randint(1, 64), "--data", f"d{rng.random()}.h5",
            "--augment", rng.choice(["none", "paper", "elastic,flip"]), "--device", rng.choice(["cpu", "cuda:1"])]
    if rng.random() < 0.5:
        args.append("--deep-supervision")
    if rng.random() < 0.5:
        args.append("--no-shuffle")
    return [str(a) for a in args]


def test_json_round_trip_is_exact():
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for _ in range(25):
        args = random_args(rng)
        r = run("roundtrip", "train", *args)
        assert r.returncode == 0, (args, r.stderr)
        c = json.loads(r.stdout)
        given = dict(zip(args[::2], args[1::2]))
        for key in ["--lr", "--momentum", "--dropout", "--adam-eps", "--weight-decay", "--beta2"]:
            assert f32(c[key[2:].replace("-", "_")]) == f32(float(given[key])), key
        assert c["seed"] == int(given["--seed"]) and c["steps"] == int(given["--steps"])


def test_from_json_model_only_and_errors(tmp_path):
    path = tmp_path / "m.json"
    model = dict(PAPER_MODEL, model="unetpp", filters=[32, 64, 128, 256, 512], padding="same", classes=1,
                 loss="bce_dice", deep_supervision=True, dropout=0.25)
    path.write_text(json.dumps(model))
    r = run("fromjson", "predict", path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == model
    # classes without a loss: the loss follows, as on the command line
    path.write_text(json.dumps({"classes": 1}))
    assert json.loads(run("fromjson", "predict", path).stdout)["model"]["loss"] == "bce_dice"
    for doc, message in [
        ({"model": "unet", "attention": "scse"}, 'unknown key "attention"'),
        ({"model": "unet", "encoder": "resnet"}, "--encoder must be one of"),
        ({"filters": "64,128"}, '"filters" must be an array of integers'),
        ({"filters": [64, 1.5]}, '"filters" must be an array of integers'),
        ({"classes": "2"}, '"classes" must be an integer'),
        ({"deep_supervision": 1}, '"deep_supervision" must be true or false'),
        ({"model": "vnet"}, "--model must be one of"),
        ({"dropout": 1.0}, "--dropout must be in [0, 1)"),
        ({"base": 64}, 'unknown key "base"'),
        ([1, 2], "not a JSON object"),
    ]:
        path.write_text(json.dumps(doc))
        r = run("fromjson", "predict", path)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and message in r.stderr, (doc, r.stderr)
    path.write_text('{"model": "unet",')
    r = run("fromjson", "predict", path)
    assert r.returncode == 2 and "not a JSON object" in r.stderr


def test_checkpoint_model_with_explicit_overrides(tmp_path):
    saved = parse("train", "--model", "unetpp", "--filters", "4,8,16", "--classes", "3", "--norm", "batch",
                  "--deep-supervision", "--padding", "same", "--tile", "64", "--lr", "0.5")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(saved["config"]))

    def merged(*args):
        r = run("merge", "predict", path, *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    out = merged()
    assert out["model"] == saved["model"]
    assert out["config"]["tile"] == 572  # only the model comes from the checkpoint
    m = merged("--depth", "1", "--padding", "valid")["model"]
    assert m["depth"] == 1 and m["padding"] == "valid" and m["filters"] == [4, 8, 16] and m["norm"] == "batch"
    assert merged("--filters", "2,4")["model"]["filters"] == [2, 4]
    assert merged("--base", "8", "--levels", "2")["model"]["filters"] == [8, 16]
    m = merged("--classes", "1")["model"]
    assert m["classes"] == 1 and m["loss"] == "bce_dice"


def test_print_shows_the_configuration():
    r = run("print", "train", "--lr", "3e-4", "--data", "x.h5", "--model", "unetpp", "--deep-supervision")
    assert r.returncode == 0
    text = r.stdout
    assert text.startswith("unet train\n")
    for piece in ["model=unetpp", "filters=64,128,256,512,1024", "deep-supervision", "lr=0.0003", "data=x.h5",
                  "momentum=0.99", "device=auto"]:
        assert piece in text, piece
    assert "save=" not in text and "no-shuffle" not in text  # unset paths and off flags say nothing
    assert "checkpoint=" not in text and "output=" not in text  # options of other commands
    for line in text.splitlines():
        assert len(line) <= 112
