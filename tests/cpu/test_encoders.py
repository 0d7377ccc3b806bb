"""Backbones in place of the plain encoder (issue 13): torchvision's ResNet-18/34/50 and MobileNetV2 with
segmentation_models_pytorch's (smp's) Unet and UnetPlusPlus decoders, under smp's names, against smp 0.6.0 itself
(randomly initialised; nothing is downloaded)."""
import json
import os
import subprocess

import pytest

from unet_testlib import BUILD

smp = pytest.importorskip("segmentation_models_pytorch")

MODELTEST = os.path.join(BUILD, "unet_modeltest")
UNET = os.path.join(BUILD, "unet")
ENCODERS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
DECODERS = {"unet": smp.Unet, "unetpp": smp.UnetPlusPlus}


def smp_model(kind, encoder, in_channels=3, classes=1, **kw):
    return DECODERS[kind](encoder, encoder_weights=None, in_channels=in_channels, classes=classes, **kw)


def engine_params(kind, encoder, *flags):
    """{name: (kind, offset, count, shape)} of the engine's parameter table."""
    r = subprocess.run([MODELTEST, "--model", kind, "--encoder", encoder, *map(str, flags), "--list"],
                       capture_output=True, text=True, check=True)
    out = {}
    for line in r.stdout.splitlines():
        if not line.startswith("#"):
            name, k, off, count, *dims = line.split()
            out[name] = (k, int(off), int(count), tuple(map(int, dims)))
    return out


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_names_and_shapes_are_smps(kind, encoder):
    """Every parameter and running statistic under smp's state-dict name and shape, nothing more (smp's
    num_batches_tracked counters are written with a checkpoint, not held as parameters)."""
    for in_channels, classes in ((3, 1), (1, 4)):
        ref = smp_model(kind, encoder, in_channels, classes).state_dict()
        ref = {k: tuple(v.shape) for k, v in ref.items() if not k.endswith("num_batches_tracked")}
        ours = engine_params(kind, encoder, "--in-channels", in_channels, "--classes", classes)
        assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))[:10]
        assert {k: v[3] for k, v in ours.items()} == ref
        for name, (k, *_rest) in ours.items():
            assert (k == "state") == name.endswith(("running_mean", "running_var")), name
