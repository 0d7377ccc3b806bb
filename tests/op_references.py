"""Float64 PyTorch references of the ops, shared by the CPU tests (the CPU
backend against PyTorch) and the GPU twins (the CUDA backend against
PyTorch and the CPU): one definition of what each op must compute."""
import numpy as np
import torch
import torch.nn.functional as F


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def centre_crop(x, h, w):
    """The centre h x w window of an (N, C, H, W) array or tensor (offsets rounded down)."""
    oy, ox = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, oy:oy + h, ox:ox + w]


def softmax_ce_ref(Z, label, weight):
    """Mean over batch and pixels of w * -log softmax(Z)[label], label and weight centre-cropped to Z."""
    n, k, h, w = Z.shape
    lab = torch.tensor(centre_crop(label, h, w)[:, 0]).long()
    ce = F.cross_entropy(Z, lab, reduction="none")
    if weight is not None:
        ce = ce * t64(centre_crop(weight, h, w)[:, 0])
    return ce.sum() / (n * h * w)


def bce_dice_ref(Z, label, weight):
    """Mean (weighted) BCE with logits plus 1 - the batch mean of the per-image smoothed Dice."""
    n, _, h, w = Z.shape
    y = t64(centre_crop(label, h, w))
    wt = t64(centre_crop(weight, h, w)) if weight is not None else None
    bce = F.binary_cross_entropy_with_logits(Z, y, weight=wt)
    p = torch.sigmoid(Z)
    dice = (2 * (p * y).sum(dim=(1, 2, 3)) + 1) / (p.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3)) + 1)
    return bce + 1 - dice.mean()


LOSS_REFS = {"softmax_ce": softmax_ce_ref, "bce_dice": bce_dice_ref}


def bn_case(g, shape, mean_scale=3.0):
    """Batch norm inputs: activations with a per-channel mean up to mean_scale, gamma of both signs."""
    n, c, h, w = shape
    shift = g.uniform(-mean_scale, mean_scale, size=(1, c, 1, 1))
    x = (shift + g.uniform(0.5, 2.0, size=(1, c, 1, 1)) * g.standard_normal(shape)).astype(np.float32)
    gamma = g.uniform(0.5, 1.5, c).astype(np.float32) * g.choice([-1, 1], c).astype(np.float32)
    beta = g.standard_normal(c).astype(np.float32)
    rm = g.standard_normal(c).astype(np.float32)
    rv = g.uniform(0.5, 2.0, c).astype(np.float32)
    dout = g.standard_normal(shape).astype(np.float32)
    return x, gamma, beta, rm, rv, dout


def activation(y, act):
    """act after y: 0 / None / "none", 1 / "relu", "relu6" (the ops' act attribute)."""
    act = {0: "none", 1: "relu", None: "none"}.get(act, act)
    return {"none": y, "relu": F.relu(y), "relu6": F.relu6(y)}[act]


def bn_reference(x, gamma, beta, rm, rv, dout, training, relu, momentum, eps):
    """y, dx, dgamma, dbeta and the updated running mean and variance of F.batch_norm (+ the
    activation relu: 0, 1 (ReLU) or "relu6"). training False is eval mode, and a frozen batch norm."""
    X, G, B = t64(x, True), t64(gamma, True), t64(beta, True)
    RM, RV = t64(rm), t64(rv)
    y = F.batch_norm(X, RM, RV, G, B, training=bool(training), momentum=momentum, eps=eps)
    y = activation(y, relu)
    y.backward(t64(dout))
    return y.detach().numpy(), X.grad.numpy(), G.grad.numpy(), B.grad.numpy(), RM.numpy(), RV.numpy()
