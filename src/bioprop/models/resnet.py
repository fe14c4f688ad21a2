"""ResNets for CIFAR-sized inputs: ResNet-20 (He et al. 2016, sec. 4.2) and ResNet-18.

ResNet-20: a 3x3 conv stem with 16 channels, three stages of three basic blocks (16, 32, 64
channels, stride 2 at the start of stages 2 and 3), global average pooling and a linear readout;
shortcuts are the parameter-free "option A" (subsampling plus zero channels), 269,722
parameters for 10 classes. ResNet-18: basic blocks [2, 2, 2, 2] with 64..512 channels and 1x1
projection shortcuts; with ``cifar_stem`` (default) a 3x3 stride-1 stem without max-pooling.
Blocks are declared in order (stem, residual blocks, head) for rules that walk them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, check_input

__all__ = ["ResNet", "ResNetConfig"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_kind = shortcut if (stride != 1 or cin != cout) else "identity"
        self.stride, self.pad = stride, cout - cin
        self.proj = None
        if self.shortcut_kind == "B":
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_kind == "identity":
            return x
        if self.proj is not None:
            return self.proj(x)
        x = x[:, :, :: self.stride, :: self.stride]  # option A: subsample, pad channels with zeros
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@dataclass
class ResNetConfig:
    in_shape: Tuple[int, ...] = (3, 32, 32)
    num_classes: int = 10


class ResNet(nn.Module):

    def __init__(self, stem: nn.Module, stages: List[nn.Module], width: int, num_classes: int,
                 in_shape: Tuple[int, ...]):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def blocks(self) -> List[nn.Module]:
        return [self.stem, *self.stages, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_shape, type(self).__name__)
        return self.head(self.stages(self.stem(x)))


def _stages(widths, depths, first_width, shortcut) -> List[nn.Module]:
    blocks, cin = [], first_width
    for i, (w, d) in enumerate(zip(widths, depths)):
        for j in range(d):
            blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, shortcut))
            cin = w
    return blocks


@MODELS.register("resnet20", ResNetConfig, "ResNet-20 for CIFAR (He et al. 2016; option-A shortcuts, 0.27M params)", returns=ResNet)
def resnet20(c: ResNetConfig) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(c.in_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    return ResNet(stem, _stages([16, 32, 64], [3, 3, 3], 16, "A"), 64, c.num_classes, c.in_shape)


@dataclass
class ResNet18Config(ResNetConfig):
    cifar_stem: bool = True


@MODELS.register("resnet18", ResNet18Config, "ResNet-18 (1x1 projection shortcuts; CIFAR stem by default)", returns=ResNet)
def resnet18(c: ResNet18Config) -> nn.Module:
    if c.cifar_stem:
        stem = nn.Sequential(nn.Conv2d(c.in_shape[0], 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    else:
        stem = nn.Sequential(nn.Conv2d(c.in_shape[0], 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                             nn.MaxPool2d(3, 2, 1))
    return ResNet(stem, _stages([64, 128, 256, 512], [2, 2, 2, 2], 64, "B"), 512, c.num_classes, c.in_shape)
