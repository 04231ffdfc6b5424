"""The SSCD copy-detection network's architecture (facebookresearch/sscd-copy-detection, ``sscd/models``).

``Model`` there, with a Classy Vision backbone as in both released TorchScript files: a ResNet /
ResNeXt trunk, generalised-mean pooling (``GlobalGeMPool2d``, p = 3), ``Linear(2048, dims)`` and L2
normalisation. Written here (not copied) so that :mod:`diffrep.rehearsal` can script it to
TorchScript with random weights; the module imports torch, so import it lazily.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck, conv1x1


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial dimensions: (mean x^p)^(1/p), x clamped at eps."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class SSCDNet(nn.Module):
    """trunk -> GeM -> Linear(features, dims) -> L2 normalisation (one descriptor per image)."""

    def __init__(self, trunk: nn.Module, features: int, dims: int, pool_param: float = 3.0):
        super().__init__()
        self.backbone = trunk
        self.embeddings = nn.Sequential(GeM(pool_param), nn.Linear(features, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embeddings(self.backbone(x)))


def resnet_trunk(
    layers: list[int], groups: int, width_per_group: int, base: int = 64
) -> tuple[nn.Module, int]:
    """A torchvision-style Bottleneck ResNet/ResNeXt trunk (stem + 4 stages, no pooling, no head)
    with stage widths ``base * 2**i`` (64: the standard sizes); returns (trunk, output channels)."""
    stem = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True)]
    stages: list[nn.Module] = [*stem, nn.MaxPool2d(3, 2, 1)]
    inplanes = base
    for i, n in enumerate(layers):
        planes, stride = base * 2**i, 1 if i == 0 else 2
        down = nn.Sequential(conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4))
        blocks = [Bottleneck(inplanes, planes, stride, down, groups, width_per_group)]
        inplanes = planes * 4
        blocks += [
            Bottleneck(inplanes, planes, groups=groups, base_width=width_per_group) for _ in range(1, n)
        ]
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), inplanes
