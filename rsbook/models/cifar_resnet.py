"""The CIFAR ResNet of Cohen et al. 2019 (App. J.2: ResNet-110 on CIFAR-10).

Cohen et al.'s code base (locuslab/smoothing, ``archs/cifar_resnet.py``) takes it from
bearpaw/pytorch-classification; this is a re-implementation of the same network (He et al. 2016,
Sec. 4.2, with projection shortcuts):

- a 3x3 convolution (16 channels) + BatchNorm + ReLU on the 3x32x32 input;
- three stages of n BasicBlocks each, 16, 32 and 64 channels, on 32x32, 16x16 and 8x8 maps
  (the first block of stages 2 and 3 has stride 2); depth = 6n + 2;
- a BasicBlock is conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU; the shortcut is the
  identity, or a 1x1 convolution + BatchNorm where the shape changes;
- global 8x8 average pooling and a linear head.

Module names (conv1, bn1, layer1..3, fc; blocks conv1, bn1, conv2, bn2, downsample) follow the
original so that state_dicts carry the same keys. Parameters for 10 classes: ResNet-20 about 0.27M,
ResNet-110 about 1.73M.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet20", "cifar_resnet110"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); conv1 carries the block's stride."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for 3x32x32 inputs; forward maps (B, 3, 32, 32) to logits (B, num_classes).

    The input is whatever the stem expects (standardised pixels when wrapped by
    rsbook.models.normalize.normalized). Weights are initialised as in the original: convolutions
    N(0, 2 / (k*k*out_channels)) (He init, fan-out), BatchNorm weight 1 and bias 0, the linear
    head with PyTorch's default; draws come from torch's global generator.
    """

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"CifarResNet expects a batch of shape (B, 3, 32, 32), got {tuple(x.shape)}")
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def extra_repr(self) -> str:
        return f"depth={self.depth}"


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n = 3) for CIFAR, about 0.27M parameters for 10 classes."""
    return CifarResNet(20, num_classes)


def cifar_resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (n = 18) for CIFAR, about 1.73M parameters for 10 classes: Cohen et al.'s CIFAR-10 model."""
    return CifarResNet(110, num_classes)
