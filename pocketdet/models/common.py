"""Small building blocks shared by the model families."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` the way MobileNetV3 (and Paddle) do."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class PaddleHardSigmoid(nn.Module):
    """clip(0.2 x + 0.5, 0, 1): Paddle's hard_sigmoid, *not* torch's slope-1/6 Hardsigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x * 0.2 + 0.5, 0.0, 1.0)


def make_act(name: str | None) -> nn.Module:
    if name is None or name == "none":
        return nn.Identity()
    acts = {
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "hardswish": lambda: nn.Hardswish(inplace=True),
        "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(acts)}")
    return acts[name]()


class SamePad(nn.Module):
    """TensorFlow/Paddle 'SAME' padding: for even inputs with stride 2 it pads 0 before and 1 after.

    The pad is computed from the runtime shape so the same module works at any input size.
    """

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            size = int(size)
            out = math.ceil(size / self.stride)
            total = max((out - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if not any(pads):
            return x
        return F.pad(x, pads)


class ConvBNLayer(nn.Module):
    """conv (no bias) + BN + activation, named `conv` / `bn` like Paddle's dygraph layers."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None, same_pad: bool = False, bn_name: str = "bn"):
        super().__init__()
        self.pad = SamePad(kernel, stride) if same_pad else nn.Identity()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, 0 if same_pad else (kernel - 1) // 2,
                              groups=groups, bias=False)
        # Paddle BN momentum 0.9 == torch momentum 0.1; eps 1e-5 as Paddle.
        self.bn_name = bn_name
        setattr(self, bn_name, nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1))
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(getattr(self, self.bn_name)(self.conv(self.pad(x))))


def count_parameters(model: nn.Module, learnable_only: bool = True) -> int:
    if learnable_only:
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers()
                                                           if not n.endswith("num_batches_tracked"))
