"""PP-LCNet backbone (PaddleDetection 2.6 `backbones/lcnet.py`) and the depthwise blocks PP-PicoDet's neck
and head reuse.

image -> conv1 (3x3 s2) -> blocks2 -> blocks3 (stride 4) -> blocks4 (8) -> blocks5 (16) -> blocks6 (32, SE).
ppdet numbers the outputs from blocks3 = 2, so PicoDet's feature_maps [3, 4, 5] are blocks4/5/6 at strides
8/16/32 (channels 128/256/512 x scale).
Every conv is bias-free + BN + hard-swish; channels are `make_divisible(c * scale)`.
Module names equal Paddle's dygraph names, so a state dict converts by renaming the BN statistics only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import ConvBNLayer, make_divisible

# per block: kernel, in channels, out channels, stride, SE (before scaling)
LCNET_BLOCKS: dict[str, list[tuple[int, int, int, int, bool]]] = {
    "blocks2": [(3, 16, 32, 1, False)],
    "blocks3": [(3, 32, 64, 2, False), (3, 64, 64, 1, False)],
    "blocks4": [(3, 64, 128, 2, False), (3, 128, 128, 1, False)],
    "blocks5": [(3, 128, 256, 2, False)] + [(5, 256, 256, 1, False)] * 5,
    "blocks6": [(5, 256, 512, 2, True), (5, 512, 512, 1, True)],
}

# Paddle's nn.Hardsigmoid slope (a float32 attribute), not exactly torch's 1/6
PADDLE_HARDSIGMOID_SLOPE = 0.1666667


class LCNetSE(nn.Module):
    """Squeeze-excite of LCNet: avgpool -> 1x1 (C/4, bias) -> ReLU -> 1x1 (C, bias) -> Paddle hard-sigmoid."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(x, 1))))
        return x * (w * PADDLE_HARDSIGMOID_SLOPE + 0.5).clamp(0.0, 1.0)


class DepthwiseSeparable(nn.Module):
    """kxk depthwise ConvBN+act -> optional SE -> 1x1 ConvBN+act (`dw_conv`, `se`, `pw_conv` as Paddle)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dw_size: int = 3, use_se: bool = False,
                 act: str = "hardswish"):
        super().__init__()
        self.dw_conv = ConvBNLayer(in_ch, in_ch, dw_size, stride, groups=in_ch, act=act)
        self.se = LCNetSE(in_ch) if use_se else None
        self.pw_conv = ConvBNLayer(in_ch, out_ch, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_conv(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw_conv(x)


class DPModule(nn.Module):
    """Depthwise (groups = out channels) conv + BN + act, pointwise conv + BN (+ act): ppdet's csp_pan
    `DPModule`, used by LCPAN's down-sampling convs and by PicoHeadV2's align branch (there with one output
    channel, so its "depthwise" conv is a full conv from all inputs, and no act after the pointwise BN)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, act: str = "hardswish",
                 act_out: bool = True):
        super().__init__()
        self.dwconv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=out_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.pwconv = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
        self.act = nn.Hardswish() if act == "hardswish" else nn.Identity()
        self.act_out = act_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.pwconv(self.act(self.bn1(self.dwconv(x)))))
        return self.act(x) if self.act_out else x


def lcnet_stage(cfg: list[tuple[int, int, int, int, bool]], scale: float) -> nn.Sequential:
    return nn.Sequential(*[DepthwiseSeparable(make_divisible(i * scale), make_divisible(o * scale), s, k, se)
                           for k, i, o, s, se in cfg])


class LCNet(nn.Module):
    """PP-LCNet at width `scale`; forward returns the outputs of the stages in `feature_maps`
    (2 = blocks3 ... 5 = blocks6, ppdet's numbering)."""

    def __init__(self, scale: float = 1.0, feature_maps=(3, 4, 5)):
        super().__init__()
        self.scale = scale
        self.feature_maps = list(feature_maps)
        self.conv1 = ConvBNLayer(3, make_divisible(16 * scale), 3, 2, act="hardswish")
        for name, cfg in LCNET_BLOCKS.items():
            setattr(self, name, lcnet_stage(cfg, scale))
        # outputs are counted from blocks3 (index 2) as in ppdet: idx + 2 in feature_maps
        outs = [make_divisible(LCNET_BLOCKS[n][-1][2] * scale) for n in ("blocks3", "blocks4", "blocks5", "blocks6")]
        self.channels = [c for i, c in enumerate(outs) if i + 2 in self.feature_maps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.blocks2(self.conv1(x))
        outs = []
        for i, name in enumerate(("blocks3", "blocks4", "blocks5", "blocks6")):
            x = getattr(self, name)(x)
            if i + 2 in self.feature_maps:
                outs.append(x)
        return outs
