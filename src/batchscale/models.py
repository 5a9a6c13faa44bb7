"""ResNet-18 for 32x32 images, and torchvision's ImageNet ResNet-18 for reproducing the original."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import TTA_MODES
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
