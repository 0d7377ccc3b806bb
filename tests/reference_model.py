"""An independent PyTorch implementation of the U-Net family (Ronneberger et
al. 2015; Zhou et al. 2018/2019), written from the papers' definitions, with
the engine's checkpoint names, for whole-model tests in float64."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from op_references import centre_crop


class Block(nn.Module):
    def __init__(self, cin, cout, pad, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=pad)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=pad)
        self.norm1 = nn.BatchNorm2d(cout) if norm else None
        self.norm2 = nn.BatchNorm2d(cout) if norm else None

    def forward(self, x):
        x = self.conv1(x)
        if self.norm1 is not None:
            x = self.norm1(x)
        x = F.relu(x)
        x = self.conv2(x)
        if self.norm2 is not None:
            x = self.norm2(x)
        return F.relu(x)


class Up(nn.Module):
    def __init__(self, cin, cout, bilinear):
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.up = nn.Conv2d(cin, cout, 1)
        else:
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, x):
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.up(x)


class Node(nn.Module):
    """X^{i,j}: block, plus its upsampling for j >= 1 (named x{i}_{j}.up)."""

    def __init__(self, cin, cout, pad, norm, up=None):
        super().__init__()
        blk = Block(cin, cout, pad, norm)
        self.conv1, self.conv2, self.norm1, self.norm2 = blk.conv1, blk.conv2, blk.norm1, blk.norm2
        self._blk = [blk]
        if up is not None:
            self.up = up.up
            self._up = [up]

    def block(self, x):
        return self._blk[0](x)

    def upsample(self, x):
        return self._up[0](x)


class GridNet(nn.Module):
    def __init__(self, model="unet", filters=(64, 128, 256, 512, 1024), padding="valid", in_channels=1, classes=2,
                 norm=False, bilinear=False, fusion="concat", deep_supervision=False, dropout=0.0, depth=0):
        super().__init__()
        self.model, self.filters, self.fusion = model, list(filters), fusion
        self.L = depth if depth else len(filters) - 1
        self.pad = 1 if padding == "same" else 0
        self.dropout = dropout
        self.full_L = len(filters) - 1
        L = self.L
        self.heads_cols = list(range(1, L + 1)) if deep_supervision else [L]
        needed = set()

        def mark(i, j):
            if (i, j) in needed:
                return
            needed.add((i, j))
            if j == 0:
                if i > 0:
                    mark(i - 1, 0)
                return
            mark(i + 1, j - 1)
            for k in self.skips(j):
                mark(i, k)

        for j in self.heads_cols:
            mark(0, j)
        self.needed = needed
        self.nodes = nn.ModuleDict()
        for (i, j) in sorted(needed):
            f = filters[i]
            if j == 0:
                cin = in_channels if i == 0 else filters[i - 1]
                self.nodes[f"x{i}_{j}"] = Node(cin, f, self.pad, norm)
            else:
                cin = f if fusion == "add" else f * (1 + len(self.skips(j)))
                self.nodes[f"x{i}_{j}"] = Node(cin, f, self.pad, norm, Up(filters[i + 1], f, bilinear))
        self.heads = nn.ModuleDict({f"head{j}": nn.Conv2d(filters[0], classes, 1) for j in self.heads_cols})

    def skips(self, j):
        if self.model in ("unet", "unet_e"):
            return [0]
        if self.model == "unet_plus":
            return [j - 1]
        return list(range(j))

    def state_dict_flat(self):
        """Tensors under the engine's names (x{i}_{j}.conv1.weight, head{j}.weight, ...)."""
        out = {}
        for k, v in self.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue
            k = k.replace("nodes.", "").replace("heads.", "")
            out[k] = v
        return out

    def load_flat(self, flat):
        sd = {}
        for k in self.state_dict().keys():
            if k.endswith("num_batches_tracked"):
                continue
            sd[k] = flat[k.replace("nodes.", "").replace("heads.", "")]
        self.load_state_dict(sd, strict=False)

    def forward(self, x, dropout_mask=None):
        X = {}
        L = self.L
        for i in range(L + 1):
            if (i, 0) not in self.needed:
                break
            inp = x if i == 0 else F.max_pool2d(X[(i - 1, 0)], 2)
            X[(i, 0)] = self.nodes[f"x{i}_0"].block(inp)
            if i == self.full_L and self.dropout > 0 and dropout_mask is not None:
                X[(i, 0)] = X[(i, 0)] * dropout_mask / (1 - self.dropout)
        for j in range(1, L + 1):
            for i in range(L - j, -1, -1):
                if (i, j) not in self.needed:
                    continue
                node = self.nodes[f"x{i}_{j}"]
                u = node.upsample(X[(i + 1, j - 1)])
                h, w = u.shape[2], u.shape[3]
                parts = [u] + [centre_crop(X[(i, k)], h, w) for k in self.skips(j)]
                fused = sum(parts) if self.fusion == "add" else torch.cat(parts, 1)
                X[(i, j)] = node.block(fused)
        return [self.heads[f"head{j}"](X[(0, j)]) for j in self.heads_cols]


def loss_ce(logits, label, weight=None):
    n, k, h, w = logits.shape
    lab = centre_crop(label, h, w)[:, 0].long()
    ce = F.cross_entropy(logits, lab, reduction="none")
    if weight is not None:
        ce = ce * centre_crop(weight, h, w)[:, 0]
    return ce.mean()


def loss_bce_dice(logits, label, weight=None):
    n, k, h, w = logits.shape
    y = centre_crop(label, h, w).to(logits.dtype)
    wt = centre_crop(weight, h, w) if weight is not None else None
    bce = F.binary_cross_entropy_with_logits(logits, y, weight=wt)
    p = torch.sigmoid(logits)
    inter = (p * y).sum(dim=(1, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3)) + 1)
    return bce + 1 - dice.mean()


def total_loss(outs, label, weight, loss):
    fn = loss_ce if loss == "ce" else loss_bce_dice
    per = [fn(o, label, weight) for o in outs]
    return sum(per) / len(per), per
