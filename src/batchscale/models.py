"""ResNet-18 for 32x32 images, and torchvision's ImageNet ResNet-18 for reproducing the original."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .errors import ConfigError


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """He et al.'s ResNet-18 with a 3x3 stem and no max-pool, so 32x32 inputs keep their resolution."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, in_ch = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            out_ch = width * 2**i
            layers += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def build_model(name: str, width: int = 64, num_classes: int = 10) -> nn.Module:
    if name == "resnet18":
        return CifarResNet18(num_classes, width)
    if name == "resnet18-imagenet":
        if width != 64:
            raise ConfigError("--width applies to --model resnet18 only; drop it for resnet18-imagenet")
        import torchvision

        return torchvision.models.resnet18(num_classes=num_classes)
    raise ConfigError(f"unknown --model {name!r}; choose resnet18 or resnet18-imagenet")


TOO_MANY = 2**63


def parameter_count(name: str, width: int) -> int:
    """Parameters of the model, counted on the meta device: exact, and nothing is allocated however wide."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(name, width).parameters())
    except RuntimeError:  # a tensor too large to describe (more than 2**63 bytes): more than any memory holds
        return TOO_MANY


def check_fits(name: str, width: int, device: torch.device) -> None:
    """Refuses, before any data is read, a model whose weights, gradients and momentum alone (12 bytes a
    parameter in fp32) exceed the device's memory: such a run would fail in the allocator much later."""
    needed = 12 * parameter_count(name, width)
    if device.type == "cuda":
        available, _ = torch.cuda.mem_get_info(device)
    else:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > available:
        size = ("more than 9e18 parameters, more than any memory holds" if needed >= 12 * TOO_MANY else
                f"{needed / 12:.3g} parameters, whose weights, gradients and momentum need {needed / 2**30:,.1f} GiB")
        raise ConfigError(f"--width {width} gives {size}, but {device.type} has {available / 2**30:,.1f} GiB free; "
                          "choose a smaller --width (64 is the standard ResNet-18)")
