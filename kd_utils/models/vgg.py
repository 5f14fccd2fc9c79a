"""CIFAR-style VGG family with BatchNorm and a width multiplier.

Five convolutional stages (``stage1`` .. ``stage5``) separated by 2x2 max-pooling, then global
average pooling and one linear classifier, as in the VGG variants used by the CRD/RepDistiller
benchmarks. Stage names are stable so forward hooks can address them (``"stage3"``).
"""
from __future__ import annotations

import torch
from torch import nn

# Output channels of each conv layer, stage by stage (at width 1.0).
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def scaled(channels: int, width: float) -> int:
    """Channels after the width multiplier (at least 4, so tiny widths still build)."""
    return max(4, int(round(channels * width)))


class VGG(nn.Module):
    """VGG for 32x32 inputs. ``feature_channels`` lists each stage's output channels."""

    def __init__(self, depth: str = "vgg13", width: float = 1.0, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG depth {depth!r}; known: {sorted(VGG_CONFIGS)}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.feature_channels: list[int] = []
        c_in = in_channels
        for i, stage_cfg in enumerate(VGG_CONFIGS[depth], start=1):
            layers: list[nn.Module] = []
            for c in stage_cfg:
                c_out = scaled(c, width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            self.feature_channels.append(c_in)
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes
        _init_weights(self)

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"stage{i}") for i in range(1, 6)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < 4:  # 32 -> 16 -> 8 -> 4 -> 2; stage5 works at 2x2
                x = self.pool(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(self.dropout(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
