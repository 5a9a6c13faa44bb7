import torch
from torch import nn

from batchscale.models import CifarResNet18, build_model


def test_cifar_resnet18_shape_and_parameter_count():
    model = build_model("resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the 11.17M of the CIFAR ResNet-18
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_variant_is_torchvisions_with_ten_outputs():
    model = build_model("resnet18-imagenet")
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert model.fc.out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scales_every_stage():
    narrow = CifarResNet18(width=8)
    assert narrow.head.in_features == 64
    assert narrow(torch.randn(1, 3, 32, 32)).shape == (1, 10)
