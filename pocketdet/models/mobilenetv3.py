"""MobileNetV3 as PaddleDetection's static-era code builds it (spec §2).

Module names follow Paddle's dygraph port (`conv1`, `conv2.expand_conv.conv`, `conv2.mid_se.conv1`, ...)
so Paddle weights map by renaming alone. Differences from torchvision's MobileNetV3 (spec §2.2):
the expand conv is always present, the SE squeeze width is C//4 (not rounded to 8) and the SE gate is
hard_sigmoid with slope 0.2 / offset 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import ConvBNLayer, PaddleHardSigmoid, make_divisible

# kernel, exp, out, se, act, stride
LARGE = [
    (3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]
SMALL = [
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1), (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1),
]
VARIANTS = {"large": LARGE, "small": SMALL}


def block_table(variant: str, multiplier: float = 1.0) -> list[tuple]:
    """The block rows, with the SSDLite `multiplier` applied to the last three rows in place (spec §2.4)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MobileNetV3 variant {variant!r}; expected 'large' or 'small'")
    cfg = [list(r) for r in VARIANTS[variant]]
    if multiplier != 1.0:
        cfg[-3][2] = int(cfg[-3][2] * multiplier)
        for row in cfg[-2:]:
            row[1], row[2] = int(row[1] * multiplier), int(row[2] * multiplier)
    return [tuple(r) for r in cfg]


class SEModule(nn.Module):
    def __init__(self, ch: int, reduction: int = 4):
        super().__init__()
        mid = ch // reduction  # not rounded to 8, unlike torchvision
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(ch, mid, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, ch, 1)
        self.gate = PaddleHardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv2(self.relu(self.conv1(self.avg_pool(x)))))


class ResidualUnit(nn.Module):
    """1x1 expand -> kxk depthwise -> [SE] -> 1x1 linear; `expand_only` builds just the expand conv
    (Cascade R-CNN taps conv14's expand output and never uses the rest of that block)."""

    def __init__(self, in_ch, mid_ch, out_ch, kernel, stride, use_se, act, expand_only=False):
        super().__init__()
        self.expand_conv = ConvBNLayer(in_ch, mid_ch, 1, act=act)
        self.expand_only = expand_only
        if expand_only:
            return
        self.bottleneck_conv = ConvBNLayer(mid_ch, mid_ch, kernel, stride, groups=mid_ch, act=act)
        self.mid_se = SEModule(mid_ch) if use_se else None
        self.linear_conv = ConvBNLayer(mid_ch, out_ch, 1, act=None)
        self.shortcut = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, expand-conv output)."""
        e = self.expand_conv(x)
        if self.expand_only:
            return e, e
        y = self.bottleneck_conv(e)
        if self.mid_se is not None:
            y = self.mid_se(y)
        y = self.linear_conv(y)
        if self.shortcut:
            y = y + x
        return y, e


class ExtraBlockDW(nn.Module):
    """SSDLite extra block: 1x1 -> 3x3 grouped conv (groups=c1, x2 multiplier) stride 2 -> 1x1, ReLU6,
    Paddle SAME padding (asymmetric for even sizes, spec §2.5)."""

    def __init__(self, in_ch: int, c1: int, c2: int, stride: int = 2):
        super().__init__()
        self.pointwise_conv = ConvBNLayer(in_ch, c1, 1, act="relu6")
        self.depthwise_conv = ConvBNLayer(c1, c2, 3, stride, groups=c1, act="relu6", same_pad=True)
        self.normal_conv = ConvBNLayer(c2, c2, 1, act="relu6")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal_conv(self.depthwise_conv(self.pointwise_conv(x)))


@dataclass(frozen=True)
class Tap:
    """A feature the backbone emits: `kind` is 'out' (block output) or 'expand' (expand-conv output)
    of block `index` (0-based block index; Paddle name conv{index+2})."""
    kind: str
    index: int


class MobileNetV3(nn.Module):
    """Backbone returning a list of feature maps: the `taps`, then (SSDLite) conv_extra and extra blocks.

    Blocks past the last tap are not built, so parameter counts match what each detector really uses.
    """

    def __init__(self, variant: str = "large", scale: float = 1.0, multiplier: float = 1.0,
                 taps: list[Tap] | None = None, extra_block_filters: list[list[int]] | None = None,
                 lr_mult_list: list[float] | None = None):
        super().__init__()
        cfg = block_table(variant, multiplier)
        taps = taps or [Tap("out", len(cfg) - 1)]
        self.taps = list(taps)
        ssd_extras = extra_block_filters is not None
        last = len(cfg) - 1 if ssd_extras else max(t.index for t in taps)
        expand_only_last = (not ssd_extras) and all(
            not (t.kind == "out" and t.index == last) for t in taps)
        lr_mult_list = lr_mult_list or [1.0]
        self.lr_mults: dict[str, float] = {}  # module-name prefix -> LR multiplier (spec §2.3)

        def stage_mult(i: int) -> float:
            return lr_mult_list[min(i // 3, len(lr_mult_list) - 1)]

        in_ch = make_divisible(16 * scale)
        self.conv1 = ConvBNLayer(3, in_ch, 3, 2, act="hardswish")
        self.lr_mults["conv1"] = stage_mult(0)
        self.block_names: list[str] = []
        for i, (k, exp, out, se, act, s) in enumerate(cfg[: last + 1]):
            name = f"conv{i + 2}"
            mid, out_c = make_divisible(scale * exp), make_divisible(scale * out)
            block = ResidualUnit(in_ch, mid, out_c, k, s, se, act,
                                 expand_only=expand_only_last and i == last)
            self.add_module(name, block)
            self.block_names.append(name)
            self.lr_mults[name] = stage_mult(i)
            in_ch = out_c
        self.channels = [self._tap_channels(t, cfg, scale) for t in taps]
        self.extra_names: list[str] = []
        if ssd_extras:
            idx = len(cfg) + 2
            extra_ch = make_divisible(scale * cfg[-1][1])
            self.add_module(f"conv{idx}", ConvBNLayer(in_ch, extra_ch, 1, act="hardswish"))
            self.extra_names.append(f"conv{idx}")
            self.channels.append(extra_ch)
            in_ch = extra_ch
            for c1, c2 in extra_block_filters:
                idx += 1
                self.add_module(f"conv{idx}", ExtraBlockDW(in_ch, c1, c2))
                self.extra_names.append(f"conv{idx}")
                self.channels.append(c2)
                in_ch = c2
            # extra layers inherit the multiplier of the last stage index (spec §2.3)
            for n in self.extra_names:
                self.lr_mults[n] = stage_mult(len(cfg))

    @staticmethod
    def _tap_channels(t: Tap, cfg, scale) -> int:
        row = cfg[t.index]
        return make_divisible(scale * (row[1] if t.kind == "expand" else row[2]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1(x)
        want = {(t.kind, t.index): None for t in self.taps}
        for i, name in enumerate(self.block_names):
            x, e = getattr(self, name)(x)
            if ("expand", i) in want:
                want[("expand", i)] = e
            if ("out", i) in want:
                want[("out", i)] = x
        feats = [want[(t.kind, t.index)] for t in self.taps]
        for name in self.extra_names:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


def ssdlite_taps(variant: str) -> list[Tap]:
    """Level 0 of SSDLite: the expand output of the stride-16 -> 32 block (Large conv14, Small conv10)."""
    cfg = block_table(variant)
    strides = [i for i, r in enumerate(cfg) if r[5] == 2]
    return [Tap("expand", strides[-1])]
