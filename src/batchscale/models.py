"""ResNet-18 for 32x32 images, and torchvision's ImageNet ResNet-18 for reproducing the original."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .config import TTA_MODES
from .errors import ConfigError


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False, groups=groups)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False, groups=groups)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False, groups=groups),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """He et al.'s ResNet-18 with a 3x3 stem and no max-pool, so 32x32 inputs keep their resolution.

    With `groups` = G it is G independent ResNet-18s of `width` packed into one network (every convolution
    grouped, the head a grouped 1x1 convolution): input [N, 3G, 32, 32], output [N, G x classes]. Batch norm is
    per channel, so the G members share nothing but the kernels' launches (a study's G learning rates at once).
    """

    def __init__(self, num_classes: int = 10, width: int = 64, groups: int = 1) -> None:
        super().__init__()
        g = groups
        self.stem = nn.Sequential(nn.Conv2d(3 * g, width * g, 3, 1, 1, bias=False, groups=g), nn.BatchNorm2d(width * g),
                                  nn.ReLU())
        layers, in_ch = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            out_ch = width * 2**i
            layers += [BasicBlock(in_ch * g, out_ch * g, stride, g), BasicBlock(out_ch * g, out_ch * g, 1, g)]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.groups = g
        self.head: nn.Module = nn.Linear(in_ch, num_classes) if g == 1 else nn.Conv2d(in_ch * g, num_classes * g, 1,
                                                                                        groups=g)

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        if self.groups == 1:
            return self.head(torch.flatten(out, 1))
        return torch.flatten(self.head(out), 1)


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


def tta_logits(model: nn.Module, x: Tensor, mode: str = "none") -> Tensor:
    """Test-time augmentation as in KellerJordan/cifar10-zoo (airbench/baselines/train_resnet18_94.py): `flip`
    averages the logits of the images and their mirror images; `flip-translate` gives that half the weight and
    a quarter each to the same pair moved by one pixel down-right and up-left (mirrored edges). In fp32."""
    from .data import flip, translate

    def mirror(inputs: Tensor) -> Tensor:
        return 0.5 * model(inputs).float() + 0.5 * model(flip(inputs)).float()

    if mode == "none":
        return model(x).float()
    if mode == "flip":
        return mirror(x)
    if mode == "flip-translate":
        return 0.5 * mirror(x) + 0.25 * mirror(translate(x, 1, 1)) + 0.25 * mirror(translate(x, -1, -1))
    raise ConfigError(f"unknown --tta {mode!r}; choose one of {', '.join(TTA_MODES)}")
