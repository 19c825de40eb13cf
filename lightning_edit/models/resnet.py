"""CIFAR ResNets (He et al. 2016, Sec. 4.2): 3 stages of ``n`` basic blocks, widths 16/32/64, depth 6n+2."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut.

    ``shortcut="A"`` pads the subsampled identity with zero channels (no parameters, the paper's
    CIFAR choice); ``"B"`` uses a 1x1 conv + BN projection when the shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_kind = shortcut
        self.shortcut: nn.Module = nn.Identity()
        self.pad = 0
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.pad = planes - in_planes
                self.stride = stride
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:
            sc = x[:, :, :: self.stride, :: self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = self.shortcut(x)
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        depth: 20, 32, 44, 56, 110 (any ``6n+2``).
        in_channels: input image channels.
        num_classes: number of output classes.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1x1 projection).
        base_width: width of the first stage (16 in the paper); stages use 1x, 2x, 4x.

    Shapes:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``.

    Raises:
        ValueError: if ``depth`` is not ``6n+2`` or the shortcut kind is unknown.

    Note:
        Option-A shortcuts tie channel indices across a stage through zero padding, which
        torch-pruning cannot trace; prune option-B ResNets (the default).
    """

    def __init__(
        self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, shortcut: str = "B", base_width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}.")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        stages, planes = [], base_width
        for i, width in enumerate((base_width, 2 * base_width, 4 * base_width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(planes, width, stride, shortcut))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for small images; ``kwargs`` as :class:`CifarResNet` (``in_channels``, ``num_classes``, ...)."""
    return CifarResNet(20, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 for small images; ``kwargs`` as :class:`CifarResNet` (``in_channels``, ``num_classes``, ...)."""
    return CifarResNet(56, **kwargs)
