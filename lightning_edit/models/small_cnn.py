"""A small convolutional classifier for low-resolution images (8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two or more conv-BN-ReLU blocks, global average pooling, a hidden linear layer and a classifier.

    Args:
        in_channels: input image channels.
        num_classes: number of output classes.
        widths: output channels of each conv block; a 2x2 max-pool follows every block but the last.
        hidden: width of the hidden linear layer (its neurons are prunable components).

    Shapes:
        input ``(N, in_channels, H, W)``, output logits ``(N, num_classes)``.

    Raises:
        ValueError: if ``widths`` is empty or any width is not positive.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths: list[int] | tuple[int, ...] = (32, 64), hidden: int = 64
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1 or hidden < 1:
            raise ValueError(f"SmallCNN needs at least one conv block and positive widths, got widths={widths}, hidden={hidden}.")
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(c, hidden)
        self.act = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.act(self.hidden(x)))
