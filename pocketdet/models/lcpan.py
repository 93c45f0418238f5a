"""LCPAN: PP-PicoDet's path-aggregation neck (PaddleDetection 2.6 `necks/lc_pan.py`).

C3, C4, C5 (strides 8/16/32) -> conv_t: 1x1 ConvBN+hswish to `out_channels` each
top-down:  P5 -> nearest x2 -> concat with P4 -> 2 DepthwiseSeparable (2c -> 2c -> c) -> P4' ; same to P3'
bottom-up: P3' -> DPModule s2 -> concat with P4' -> 2 DepthwiseSeparable -> N4 ; same to N5
extra level (num_features 4): first_top_conv(P5) + second_top_conv(N5), both DPModule s2 -> N6 (stride 64)
Returns [P3', N4, N5, N6], every level with `out_channels` channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import ConvBNLayer
from .lcnet import DepthwiseSeparable, DPModule


class ChannelT(nn.Module):
    """Per-level 1x1 ConvBN + hard-swish to a common width (ppdet `Channel_T`, module name `convs`)."""

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(ConvBNLayer(c, out_channels, 1, act="hardswish") for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


def _lc_block(channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(DepthwiseSeparable(2 * channels, 2 * channels, 1, kernel),
                         DepthwiseSeparable(2 * channels, channels, 1, kernel))


class LCPAN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int, kernel_size: int = 5, num_features: int = 4):
        super().__init__()
        if num_features not in (3, 4):
            raise ValueError(f"LCPAN num_features must be 3 or 4, got {num_features}")
        c, k, levels = out_channels, kernel_size, len(in_channels)
        self.out_channels = c
        self.num_features = num_features
        self.conv_t = ChannelT(list(in_channels), c)
        if num_features == 4:
            self.first_top_conv = DPModule(c, c, k, stride=2)
            self.second_top_conv = DPModule(c, c, k, stride=2)
        self.top_down_blocks = nn.ModuleList(_lc_block(c, k) for _ in range(levels - 1))
        self.downsamples = nn.ModuleList(DPModule(c, c, k, stride=2) for _ in range(levels - 1))
        self.bottom_up_blocks = nn.ModuleList(_lc_block(c, k) for _ in range(levels - 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = self.conv_t(feats)
        levels = len(inputs)
        inner = [inputs[-1]]  # top-down; top_down_blocks[0] fuses the coarsest level into the next (ppdet order)
        for j, idx in enumerate(range(levels - 1, 0, -1)):
            up = F.interpolate(inner[0], scale_factor=2.0, mode="nearest")
            inner.insert(0, self.top_down_blocks[j](torch.cat([up, inputs[idx - 1]], 1)))
        outs = [inner[0]]
        for idx in range(levels - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner[idx + 1]], 1)))
        if self.num_features == 4:
            outs.append(self.first_top_conv(inputs[-1]) + self.second_top_conv(outs[-1]))
        return outs
