"""Whole encoder models against segmentation_models_pytorch (smp) 0.6.0 in float64, every encoder with both
decoders (issue 13): eval-mode logits within 1e-4, and one SGD step in training mode, its gradients, the parameters
after it and the running statistics, within 2e-4; frozen encoder batch norms as PyTorch's eval mode. The model
structure, torchvision's weights and checkpoints are tests/cpu/test_encoders.py's (this file is its own ctest, so
that the two run side by side)."""
import copy
import functools

import numpy as np
import pytest
import torch

from reference_model import total_loss
from test_encoders import CASES, inputs, model_flags, randomise, record, run_engine, smp_model
from unet_testlib import rel_err


@functools.lru_cache(maxsize=2)
def smp_double(kind, encoder, in_channels, classes):
    """smp's model in float64, built once for the eval and the training test of a case (building ResNet-50's
    UnetPlusPlus takes seconds); callers randomise a copy."""
    return smp_model(kind, encoder, in_channels, classes).double()


def case_model(i, seed, shift=(-0.1, 0.1)):
    """Case i's encoder and decoder, with its input channels and classes (3 -> 2, 4 -> 1, 1 -> 3, 3 -> 1 in
    turn): a randomised float64 copy of smp's model."""
    kind, encoder = CASES[i]
    in_channels, classes = [(3, 2), (4, 1), (1, 3), (3, 1)][i % 4]
    net = randomise(copy.deepcopy(smp_double(kind, encoder, in_channels, classes)), seed, shift)
    return kind, encoder, in_channels, classes, net


# ---- against smp ---------------------------------------------------------------------------------------------

def eval_matches_smp(i):
    """The same weights, eval mode (running statistics): the logits within 1e-4 of smp's in float64."""
    kind, encoder, in_channels, classes, net = case_model(i, seed=i)
    net.eval()
    image, _ = inputs(10 + i, in_channels, classes)
    with torch.no_grad():
        ref = net(torch.from_numpy(image.astype(np.float64))).numpy()
    res = run_engine(model_flags(kind, encoder, in_channels, classes), net.state_dict(), image, eval_mode=True)
    ours = res["outs"][0].reshape(ref.shape)
    scale = max(1.0, np.abs(ref).max())  # random running statistics let the logits grow to hundreds
    record(f"eval {kind} {encoder}", max_abs=np.abs(ours - ref).max(), rel=rel_err(ours, ref), scale=scale)
    assert rel_err(ours, ref) <= 1e-4 and np.abs(ours - ref).max() <= 1e-4 * scale


def smp_step(net, image, label, classes, lr, frozen=False):
    """One SGD step of smp's model in training mode with the engine's loss (its loss, logits and gradients), then
    a second training forward, as unet_modeltest --steps 1 runs: the loss after the step, and the parameters and
    running statistics (updated by both forwards) after it."""
    net.train()
    if frozen:
        for mod in net.encoder.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
    x, y = torch.from_numpy(image.astype(np.float64)), torch.from_numpy(label)
    kind = "ce" if classes > 1 else "bce_dice"
    out = net(x)
    loss, _ = total_loss([out], y, None, kind)
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p -= lr * p.grad
        loss_after, _ = total_loss([net(x)], y, None, kind)
    return dict(losses=[loss.item(), loss_after.item()], out=out.detach().numpy(), grads=grads,
                after={k: v.numpy() for k, v in net.state_dict().items()})


def check_step(res, ref, what):
    """Against smp in float64: the loss before and after the step and the logits (1e-4), every gradient and every
    parameter after the step (2e-4 relative, tensor by tensor) and the running statistics (1e-4). A gradient that
    is zero in exact arithmetic (a batch norm's shift feeding a convolution and another batch norm, which removes
    any constant: MobileNetV2's projections) holds float32 rounding alone: it is held to 1e-7 of the whole
    gradient's norm, about float32's epsilon (seen: below 2e-10)."""
    table = res["table"]
    for ours, theirs in zip(res["losses"], ref["losses"]):
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (res["losses"], ref["losses"])
    assert rel_err(res["outs"][0].reshape(ref["out"].shape), ref["out"]) <= 1e-4
    total = np.sqrt(sum(float((g ** 2).sum()) for g in ref["grads"].values()))
    worst = dict(grad=0.0, param=0.0, state=0.0, zero_grad=0.0)
    for name, (kind, off, count, shape) in table.items():
        if kind == "state":
            worst["state"] = max(worst["state"], rel_err(res["state"][off:off + count].reshape(shape),
                                                         ref["after"][name]))
            continue
        g = res["grads"][off:off + count].reshape(shape)
        if np.linalg.norm(ref["grads"][name]) < 1e-9 * total:
            worst["zero_grad"] = max(worst["zero_grad"], np.linalg.norm(g) / total)
            assert np.linalg.norm(g) <= 1e-7 * total, f"grad {name} should be ~0"
        else:
            worst["grad"] = max(worst["grad"], rel_err(g, ref["grads"][name]))
        worst["param"] = max(worst["param"], rel_err(res["params"][off:off + count].reshape(shape), ref["after"][name]))
    record(what, worst_grad=worst["grad"], worst_param_after_step=worst["param"], worst_running_stat=worst["state"],
           worst_zero_grad_of_total=worst["zero_grad"], loss=ref["losses"][0])
    assert worst["grad"] <= 2e-4 and worst["param"] <= 2e-4 and worst["state"] <= 1e-4, worst


# Batch norm shifts in [2, 3]: the ReLUs' inputs sit clear of zero (ReLU6's of six), so that no element lies within
# float32 rounding of a kink. One that does takes the other side in float32 than in float64, in PyTorch's float32
# as in the engine's, and moves its layer's gradient by about 1 / sqrt(elements) (a bias's gradient is a sum of
# that many terms of either sign): at tiles of 64 a few such elements put 1e-3..1e-2 into gradients of deep
# random networks in training mode. Away from the kinks the step is well-conditioned and held to 2e-4.
SHIFT = (2.0, 3.0)


def one_training_step_matches_smp(i):
    """Training mode (batch statistics, running statistics updated with momentum 0.1) and one SGD step with the
    engine's loss (BCE + Dice for one class, cross-entropy for more): gradients and parameters after the step
    within 2e-4 relative of smp's in float64."""
    kind, encoder, in_channels, classes, net = case_model(i, seed=100 + i, shift=SHIFT)
    lr = 0.01
    before = {k: v.clone() for k, v in net.state_dict().items()}
    image, label = inputs(200 + i, in_channels, classes)
    res = run_engine(model_flags(kind, encoder, in_channels, classes), before, image, label, steps=1, lr=lr)
    check_step(res, smp_step(net, image, label, classes, lr), f"train step {kind} {encoder}")


@pytest.mark.parametrize("i, mode", [(i, mode) for i in range(len(CASES)) for mode in ("eval", "train")])
def test_matches_smp(i, mode):
    """Every encoder with both decoders, in eval mode and for one training step (a case's two modes in turn share
    its smp model)."""
    (eval_matches_smp if mode == "eval" else one_training_step_matches_smp)(i)


def test_frozen_encoder_batch_norm_is_pytorchs_eval_mode():
    """--freeze-encoder-bn: the backbone's batch norms normalise with (and keep) their running statistics while the
    decoder's use batch statistics, as smp's model in train() with its encoder's BatchNorm2d in eval()."""
    kind, encoder, classes = "unet", "mobilenet_v2", 1
    net = randomise(smp_model(kind, encoder, 3, classes).double(), seed=7, shift=SHIFT)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    image, label = inputs(8, 3, classes)
    res = run_engine(model_flags(kind, encoder, 3, classes) + ["--freeze-encoder-bn"], before, image, label, steps=1,
                     lr=0.01)
    check_step(res, smp_step(net, image, label, classes, 0.01, frozen=True), "train step frozen encoder BN")
    for name, (k, off, count, shape) in res["table"].items():
        if k == "state":
            kept = np.array_equal(res["state"][off:off + count], before[name].numpy().astype(np.float32).ravel())
            assert kept == name.startswith("encoder."), name
