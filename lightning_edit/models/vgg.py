"""CIFAR-style VGG with BatchNorm (Simonyan & Zisserman 2015; the CIFAR variant used by DISCEDIT and TVSPrune)."""

from __future__ import annotations

from torch import Tensor, nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG feature extractor (3x3 conv, BatchNorm, ReLU; ``"M"`` = 2x2 max-pool) and a linear classifier.

    Args:
        cfg: a name in ``CONFIGS`` or an explicit list of widths and ``"M"``.
        in_channels: input image channels.
        num_classes: number of output classes.
        width_multiplier: scales every width (e.g. 0.25 for a CPU-sized model); widths are at least 1.
        max_pools: use at most this many of the config's pools (a 28x28 input survives 4, 8x8 survives 3).

    Shapes:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``; global average pooling makes
        the classifier independent of ``H, W``.

    Raises:
        ValueError: for an unknown config name or a non-positive width multiplier.
    """

    def __init__(
        self,
        cfg: str | list[int | str] = "vgg16",
        in_channels: int = 3,
        num_classes: int = 10,
        width_multiplier: float = 1.0,
        max_pools: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in CONFIGS:
                raise ValueError(f"Unknown VGG config {cfg!r}; choose one of {sorted(CONFIGS)} or pass a list.")
            cfg = CONFIGS[cfg]
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}.")
        layers: list[nn.Module] = []
        c, pools = in_channels, 0
        for v in cfg:
            if v == "M":
                if max_pools is None or pools < max_pools:
                    layers.append(nn.MaxPool2d(2))
                    pools += 1
                continue
            w = max(1, int(round(int(v) * width_multiplier)))
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11(**kwargs) -> VGG:
    """VGG-11 for small images; ``kwargs`` as :class:`VGG` (``in_channels``, ``num_classes``, ...)."""
    return VGG("vgg11", **kwargs)


def vgg16(**kwargs) -> VGG:
    """VGG-16 for small images; ``kwargs`` as :class:`VGG` (``in_channels``, ``num_classes``, ...)."""
    return VGG("vgg16", **kwargs)


def vgg19(**kwargs) -> VGG:
    """VGG-19 for small images; ``kwargs`` as :class:`VGG` (``in_channels``, ``num_classes``, ...)."""
    return VGG("vgg19", **kwargs)
