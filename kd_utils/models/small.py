"""The small networks of the seed projects: MNIST MLPs and CNN, and a CIFAR ResNet/CNN pair."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


# ---------------------------------------------------------------- MNIST ----
class MLP(nn.Module):
    """Fully connected ReLU net on flattened images.

    ``hidden=(1200, 1200), dropout=0.5, input_dropout=0.2`` is Hinton et al.'s MNIST teacher,
    ``hidden=(800, 800)`` their student, ``hidden=(128,)`` the seed project's student.
    ``max_norm`` (if set) is the incoming-weight norm constraint Hinton's teacher used; call
    :meth:`apply_constraints` after each optimiser step (the trainer does).
    """

    def __init__(self, hidden: Sequence[int] = (128,), num_classes: int = 10, in_features: int = 784,
                 dropout: float = 0.0, input_dropout: float = 0.0, max_norm: float | None = None):
        super().__init__()
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.max_norm = max_norm
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        c = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Rescale each unit's incoming weight vector to L2 norm <= max_norm."""
        if self.max_norm is None:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                norms = m.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
                m.weight.mul_(norms.clamp(max=self.max_norm) / norms)


class MnistCNN(nn.Module):
    """The seed's teacher: conv 32@5x5, 5x5 max-pool, FC 128, 10 outputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 32, hidden: int = 128):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 5)          # 28 -> 24
        self.pool = nn.MaxPool2d(5)                                # 24 -> 4
        self.fc = nn.Linear(channels * 4 * 4, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv(x)))
        x = F.relu(self.fc(torch.flatten(x, 1)))
        return self.classifier(x)


# ---------------------------------------------------------------- CIFAR ----
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-style CIFAR teacher (the CIFAR-10 seed's): stem, three stages of basic blocks
    (``blocks`` per stage, widths ``base, 2*base, 4*base``), global pooling, linear head.
    ``blocks=3, base=16`` is ResNet-20."""

    def __init__(self, num_classes: int = 10, blocks: int = 3, base: int = 32, in_channels: int = 3):
        super().__init__()
        if blocks < 1 or base < 1:
            raise ValueError(f"blocks and base must be >= 1, got blocks={blocks}, base={base}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True))
        c = base
        self.feature_channels = []
        for i, mult in enumerate((1, 2, 4), start=1):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c, base * mult, stride=2 if (b == 0 and i > 1) else 1))
                c = base * mult
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            self.feature_channels.append(c)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class CifarCNN(nn.Module):
    """Compact CNN student (the CIFAR-10 seed's): three conv-BN-ReLU-pool blocks and a small head."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        chans = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        c = in_channels
        for i, c_out in enumerate(chans, start=1):
            layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = c_out
        self.features = nn.Sequential(*layers)   # 32 -> 4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
