"""Width-scaled re-implementation of torchvision's Inception-v3 and of pytorch-fid's FID variant.

``Inception3Scaled(div=1, ...)`` is, module for module and op for op, torchvision 0.24's
``torchvision.models.inception.Inception3`` (``fid=False``) or the network pytorch-fid 0.3.0's
``fid_inception_v3()`` builds (``fid=True``: torchvision's Inception3 with ``Mixed_5b/5c/5d`` replaced
by ``FIDInceptionA``, ``Mixed_6b..6e`` by ``FIDInceptionC``, ``Mixed_7b`` by ``FIDInceptionE_1`` and
``Mixed_7c`` by ``FIDInceptionE_2``). The only addition is ``div``: every hard-coded output width
(32, 64, 80, 192, 48, 96, pool_features 32/64, 384, channels_7x7 128/160/192, 320, 448, the aux
head's 128 and 768, the 2048 of the pooled features) is divided by ``div``; input widths follow.
State-dict keys are torchvision's (``Conv2d_1a_3x3.conv.weight``, ``Mixed_6b.branch7x7_2.bn.running_var``,
``AuxLogits.conv1.conv.weight``, ``fc.weight``, ...). BasicConv2d = Conv2d(bias=False) ->
BatchNorm2d(eps=0.001) -> ReLU, as in torchvision.

generate.py proves the equivalence at ``div=1`` (identical state-dict keys/shapes and bit-identical
outputs against pytorch-fid's ``InceptionV3`` and torchvision's ``inception_v3``) before it writes the
``div=8`` fixtures ``inception_fid_tiny`` / ``inception_cls_tiny``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _w(c: int, div: int) -> int:
    if c % div:
        raise ValueError(f"width {c} is not divisible by div={div}")
    return c // div


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class InceptionA(nn.Module):
    """torchvision InceptionA; ``fid=True`` = pytorch-fid's FIDInceptionA (avg pool without the padded
    zeros: count_include_pad=False)."""

    def __init__(self, in_channels: int, pool_features: int, div: int, fid: bool) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.fid = fid
        self.branch1x1 = BasicConv2d(in_channels, w(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, w(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, w(pool_features), kernel_size=1)

    @staticmethod
    def out_channels(pool_features: int, div: int) -> int:
        return _w(64, div) + _w(64, div) + _w(96, div) + _w(pool_features, div)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)

        branch5x5 = self.branch5x5_1(x)
        branch5x5 = self.branch5x5_2(branch5x5)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        if self.fid:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        else:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)

        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int, div: int) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.branch3x3 = BasicConv2d(in_channels, w(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3(x)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """torchvision InceptionC; ``fid=True`` = FIDInceptionC (count_include_pad=False)."""

    def __init__(self, in_channels: int, channels_7x7: int, div: int, fid: bool) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.fid = fid
        c7 = w(channels_7x7)
        self.branch1x1 = BasicConv2d(in_channels, w(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, w(192), kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)

        branch7x7 = self.branch7x7_1(x)
        branch7x7 = self.branch7x7_2(branch7x7)
        branch7x7 = self.branch7x7_3(branch7x7)

        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)

        if self.fid:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        else:
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)

        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int, div: int) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.branch3x3_1 = BasicConv2d(in_channels, w(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, w(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = self.branch3x3_2(branch3x3)

        branch7x7x3 = self.branch7x7x3_1(x)
        branch7x7x3 = self.branch7x7x3_2(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_3(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_4(branch7x7x3)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """torchvision InceptionE. ``pool``: "avg" (torchvision), "avg_nopad" (FIDInceptionE_1:
    count_include_pad=False) or "max" (FIDInceptionE_2: 3x3/1 max pool, padding 1)."""

    def __init__(self, in_channels: int, div: int, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "avg_nopad", "max"):
            raise ValueError(pool)
        w = lambda c: _w(c, div)  # noqa: E731
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, w(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, w(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, w(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, w(192), kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)

        if self.pool == "avg":
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        elif self.pool == "avg_nopad":
            branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        else:
            branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)

        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionAux(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, div: int) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.conv0 = BasicConv2d(in_channels, w(128), kernel_size=1)
        self.conv1 = BasicConv2d(w(128), w(768), kernel_size=5)
        self.fc = nn.Linear(w(768), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv0(x)
        x = self.conv1(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.fc(x)


class Inception3Scaled(nn.Module):
    """torchvision ``Inception3`` (``fid=False``) or pytorch-fid's FID Inception (``fid=True``) with all
    widths divided by ``div``. Weights: PyTorch's default init (torchvision ``init_weights=False``)."""

    def __init__(
        self,
        div: int = 1,
        num_classes: int = 1000,
        aux_logits: bool = True,
        transform_input: bool = False,
        fid: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        w = lambda c: _w(c, div)  # noqa: E731
        self.div = div
        self.fid = fid
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, w(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        c5b = InceptionA.out_channels(32, div)  # 256 / div
        c5c = InceptionA.out_channels(64, div)  # 288 / div
        self.Mixed_5b = InceptionA(w(192), pool_features=32, div=div, fid=fid)
        self.Mixed_5c = InceptionA(c5b, pool_features=64, div=div, fid=fid)
        self.Mixed_5d = InceptionA(c5c, pool_features=64, div=div, fid=fid)
        self.Mixed_6a = InceptionB(c5c, div=div)
        c6 = w(384) + w(96) + c5c  # 768 / div
        self.Mixed_6b = InceptionC(c6, channels_7x7=128, div=div, fid=fid)
        self.Mixed_6c = InceptionC(c6, channels_7x7=160, div=div, fid=fid)
        self.Mixed_6d = InceptionC(c6, channels_7x7=160, div=div, fid=fid)
        self.Mixed_6e = InceptionC(c6, channels_7x7=192, div=div, fid=fid)
        self.AuxLogits: Optional[nn.Module] = None
        if aux_logits:
            self.AuxLogits = InceptionAux(c6, num_classes, div=div)
        c7a = w(320) + w(192) + c6  # 1280 / div
        c7 = w(320) + 2 * w(384) + 2 * w(384) + w(192)  # 2048 / div
        self.Mixed_7a = InceptionD(c6, div=div)
        self.Mixed_7b = InceptionE(c7a, div=div, pool="avg_nopad" if fid else "avg")
        self.Mixed_7c = InceptionE(c7, div=div, pool="max" if fid else "avg")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c7, num_classes)
        self.pool_dim = c7
        self.mixed_6e_dim = c6

    # ---- torchvision Inception3.forward --------------------------------------------------------

    def _transform_input(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def stem(self, x: Tensor) -> Tensor:
        """Conv2d_1a .. maxpool1 (pytorch-fid's block 0)."""
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        return self.maxpool1(x)

    def stem2(self, x: Tensor) -> Tensor:
        """Conv2d_3b .. maxpool2 (pytorch-fid's block 1)."""
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        return self.maxpool2(x)

    def mixed_5_6(self, x: Tensor) -> Tensor:
        """Mixed_5b .. Mixed_6e (pytorch-fid's block 2; the AuxLogits input)."""
        for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e):
            x = m(x)
        return x

    def mixed_7(self, x: Tensor) -> Tensor:
        """Mixed_7a .. Mixed_7c + adaptive avg pool, [N, 2048/div, 1, 1] (pytorch-fid's block 3)."""
        x = self.Mixed_7a(x)
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        return self.avgpool(x)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The classifier path up to the pooled features (transform_input applied): ``mixed_6e``,
        ``pool`` [N, 2048/div] (after avgpool + flatten, before dropout/fc)."""
        x = self._transform_input(x)
        x = self.stem2(self.stem(x))
        m6e = self.mixed_5_6(x)
        pool = torch.flatten(self.mixed_7(m6e), 1)
        return {"mixed_6e": m6e, "pool": pool}

    def forward(self, x: Tensor):
        """torchvision semantics: logits in eval mode, (logits, aux) in training mode with aux_logits."""
        x = self._transform_input(x)
        x = self.stem2(self.stem(x))
        x = self.mixed_5_6(x)
        aux = None
        if self.AuxLogits is not None and self.training:
            aux = self.AuxLogits(x)
        x = self.mixed_7(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        if self.training and self.aux_logits:
            return x, aux
        return x

    # ---- pytorch-fid InceptionV3.forward ---------------------------------------------------------

    def fid_blocks(self, inp: Tensor, resize_input: bool = True, normalize_input: bool = True) -> list[Tensor]:
        """pytorch-fid ``InceptionV3(output_blocks=[0, 1, 2, 3])`` on this network: [block0 (after
        maxpool1), block1 (after maxpool2), block2 (Mixed_6e), block3 ([N, 2048/div, 1, 1] pool)].
        No transform_input (pytorch-fid runs the blocks directly)."""
        x = inp
        if resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if normalize_input:
            x = 2 * x - 1
        b0 = self.stem(x)
        b1 = self.stem2(b0)
        b2 = self.mixed_5_6(b1)
        b3 = self.mixed_7(b2)
        return [b0, b1, b2, b3]


def randomize_(model: nn.Module, conv_gain: float) -> None:
    """Seeded (global torch RNG) weights for a random-weight fixture: conv weights = their default
    init x ``conv_gain``; BatchNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1),
    running_var ~ U(0.5, 1.5); Linear layers keep their default init. Modules in registration order."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(conv_gain)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
