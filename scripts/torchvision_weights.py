#!/usr/bin/env python3
"""Converts torchvision ImageNet weights that you already have (a .pth state dict, such as resnet34-b627a593.pth
or mobilenet_v2-b0353104.pth from torchvision's model zoo) into the safetensors file that
`unet train --encoder NAME --init-encoder W.safetensors` loads into the backbone. Nothing is downloaded.

    scripts/torchvision_weights.py resnet34-b627a593.pth resnet34.safetensors [--encoder resnet34]

The tensors keep torchvision's names and layouts (conv1.weight, layer1.0.bn1.running_mean, features.0.0.weight),
as float32; the classifier (fc, classifier) and BatchNorm2d's num_batches_tracked counters are left out, since the
segmentation model has no use for them. The network is recognised from the names (or given with --encoder) and
checked against torchvision's own definition of it, tensor by tensor; the file records it in its metadata
("unet.encoder"), so that loading it into another backbone is an error rather than a silent mismatch. The file is
written to a temporary name beside the target and renamed."""
import argparse
import json
import os
import struct
import sys

import numpy as np

ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")


def fail(message):
    """Bad input: one line on stderr and exit code 2, as unet's own commands do."""
    print("torchvision_weights: " + message, file=sys.stderr)
    sys.exit(2)


def recognise(state):
    """The torchvision network whose state dict this is, from its names."""
    if "features.18.0.weight" in state:
        return "mobilenet_v2"
    if "layer1.0.conv3.weight" in state:
        return "resnet50"
    if "layer1.2.conv1.weight" in state:
        return "resnet34"
    if "layer1.1.conv1.weight" in state:
        return "resnet18"
    return None


def reference_shapes(encoder):
    """Name -> shape of torchvision's own network (random weights: nothing is downloaded)."""
    import torchvision

    model = getattr(torchvision.models, encoder)()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def kept(name):
    return not (name.startswith(("fc.", "classifier.")) or name.endswith("num_batches_tracked"))


def check(state, encoder):
    """Every tensor of torchvision's network, with its shape, and nothing else."""
    want = {k: s for k, s in reference_shapes(encoder).items() if kept(k)}
    have = {k: tuple(v.shape) for k, v in state.items() if kept(k)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        fail("this is not torchvision's %s: %s" % (
            encoder, "; ".join(p for p in (missing and "missing %s" % ", ".join(missing[:5]),
                                         extra and "unexpected %s" % ", ".join(extra[:5])) if p)))
    for k in want:
        if want[k] != have[k]:
            fail("%s has shape %s, torchvision's %s has %s" % (k, list(have[k]), encoder,
                                                                                      list(want[k])))


def write_safetensors(path, tensors, metadata):
    """The safetensors format: a little-endian header length, the JSON header (padded to 8 bytes), the data."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path):
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:  # a torch without weights_only
            state = torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises many kinds for a file that is no PyTorch file
        fail("cannot read %s as a PyTorch file (%s)" % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        fail("%s holds no state dict" % path)
    return state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="torchvision weights, a .pth state dict")
    ap.add_argument("output", help="the safetensors file for --init-encoder")
    ap.add_argument("--encoder", choices=ENCODERS, help="the network (default: recognised from the names)")
    args = ap.parse_args(argv)
    if not os.path.exists(args.input):
        fail("%s does not exist" % args.input)
    state = load_state(args.input)
    encoder = args.encoder or recognise(state)
    if encoder is None:
        fail("%s is none of torchvision's %s (give --encoder to say which)" %
                 (args.input, ", ".join(ENCODERS)))
    check(state, encoder)
    tensors = {k: v.detach().cpu().float().numpy() for k, v in state.items() if kept(k)}
    write_safetensors(args.output, tensors, {"format": "pt", "unet.encoder": encoder})
    print("wrote %s: torchvision's %s, %d tensors (%d values)" % (args.output, encoder, len(tensors),
                                                                 sum(t.size for t in tensors.values())))


if __name__ == "__main__":
    main()
