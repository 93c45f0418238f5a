"""The FPN of PaddleDetection's static Cascade R-CNN MobileNetV3 configs (spec §6.3), on torchvision's
`FeaturePyramidNetwork`.

torchvision's FPN already has Paddle's layout for P2-P4: a 1x1 lateral conv with bias per input level, a
top-down path that resizes the coarser merged map to the lateral's shape with nearest interpolation and adds,
and a 3x3 output conv with bias per level, no norm layers. Only the extra levels differ from torchvision's
ready-made blocks in naming: Paddle builds P5 with a 3x3 stride-2 conv on the *raw* top backbone feature
(C4, 672 channels, because `use_c5` is true) and P6 with a 3x3 stride-2 conv on ReLU(P5).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock


class ExtraLevelsFromTopFeature(ExtraFPNBlock):
    """P(k+1) = 3x3/s2 conv on the raw top backbone feature, each further level = 3x3/s2 conv on ReLU of
    the previous one (Paddle FPN `has_extra_convs` with `use_c5`)."""

    def __init__(self, in_channels: int, out_channels: int, first_level: int, num_levels: int = 2):
        super().__init__()
        self.names = [f"p{first_level + i}" for i in range(num_levels)]
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1) for i in range(num_levels))

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]):
        y = x[-1]
        for i, conv in enumerate(self.convs):
            y = conv(y if i == 0 else F.relu(y))
            results.append(y)
        return results, names + self.names


class PaddleFPN(nn.Module):
    """Backbone features [C2, C3, C4] -> OrderedDict p2..p6, all `out_channels` wide."""

    def __init__(self, in_channels: list[int], out_channels: int = 48, min_level: int = 2, max_level: int = 6):
        super().__init__()
        top = min_level + len(in_channels) - 1
        self.level_names = [f"p{lvl}" for lvl in range(min_level, max_level + 1)]
        self._in_names = [f"c{lvl}" for lvl in range(min_level, top + 1)]
        extra = ExtraLevelsFromTopFeature(in_channels[-1], out_channels, top + 1, max_level - top) \
            if max_level > top else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.reset_parameters()

    def reset_parameters(self):
        # Paddle: Xavier with fan_out for every FPN conv, zero biases (spec §6.3)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        out = self.fpn(OrderedDict(zip(self._in_names, feats)))
        # torchvision names the FPN levels after its inputs (c2..c4); rename to p2..p6
        return OrderedDict(zip(self.level_names, out.values()))
