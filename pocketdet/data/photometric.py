"""Paddle's RandomDistort for the `ssd` pipeline (spec §3.5) as float math on 0..255 values.

Every operation reproduces what torchvision's uint8 kernels (`adjust_brightness/contrast/saturation/hue`)
compute, including the truncation to uint8 after each step (`floor_()` here, images are never negative), so
chaining them on float32 gives the same pixels as chaining the uint8 kernels — without the uint8<->float round
trips and the HSV stack/gather of `adjust_hue`, which dominated the reference pipeline's time.

Tensors are `[..., 3, H, W]` (channel dim -3, any memory layout); factors are Python floats for one image or
tensors broadcastable to `[N, 1, 1, 1]` for a batch (the device pipeline, gpu_aug.py). An identity factor
(1 for brightness/contrast/saturation, 0 for hue) leaves a pixel unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
HUE_OFFSETS = (5.0, 3.0, 1.0)  # HSV->RGB sector offsets of R, G, B
U8_SCALE = 255.999 / 255.0  # torchvision's float->uint8 conversion multiplies 0..1 values by 255.999


@dataclass
class DistortParams:
    """One image's draw: `ops` in the order applied, each (name, factor); hue factor in turns (1 = 360°)."""
    ops: list[tuple[str, float]] = field(default_factory=list)


def sample_distort(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_deg=18.0,
                   p: float = 0.5) -> DistortParams:
    """Same distribution as the reference `PaddleDistort`: order B,C,S,H or (probability 0.5) B,S,H,C; each op
    applied with probability `p`, its factor uniform in its range. Draws from torch's global RNG."""
    ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation,
              "hue": (-hue_deg / 360.0, hue_deg / 360.0)}
    u = torch.rand(9).tolist()  # order, then (apply?, factor) per op
    order = ["brightness", "contrast", "saturation", "hue"] if u[0] < 0.5 else \
        ["brightness", "saturation", "hue", "contrast"]
    ops = []
    for k, name in enumerate(order):
        if u[1 + 2 * k] < p:
            lo, hi = ranges[name]
            ops.append((name, lo + (hi - lo) * u[2 + 2 * k]))
    return DistortParams(ops)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Grey level as torchvision computes it for uint8 images (weighted sum, floored); channel dim kept."""
    r, g, b = x.unbind(-3)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).floor_().unsqueeze(-3)


def brightness(x, f):
    return (x * f).clamp_(0, 255).floor_()


def contrast(x, f, mean):
    """Blend with the image's mean grey level; `mean` comes from the whole photo (see `contrast_mean`)."""
    return (x * f).add_(mean * (1 - f)).clamp_(0, 255).floor_()


def saturation(x, f):
    return (x * f).add_(gray(x) * (1 - f)).clamp_(0, 255).floor_()


def hue(x, delta):
    """HSV hue rotation by `delta` turns without building HSV: value (max) and chroma (max - min) are kept,
    each channel is max - chroma * clamp(min(k, 4 - k), 0, 1) with k = (offset + 6 h') mod 6."""
    r, g, b = x.unbind(-3)
    # pairwise on the channel planes: aminmax over the channel dim is ~4x slower on CPU
    mn, mx = torch.minimum(torch.minimum(r, g), b), torch.maximum(torch.maximum(r, g), b)
    chroma = mx - mn
    inv = torch.where(chroma > 0, chroma, torch.ones_like(chroma)).reciprocal_()
    h6 = torch.where(mx == r, g - b, torch.where(mx == g, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4)))
    h6 = h6.mul_(inv).unsqueeze_(-3).add_(delta * 6)
    k = (torch.tensor(HUE_OFFSETS, dtype=x.dtype, device=x.device).view(3, 1, 1) + h6).remainder_(6)
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    return w.mul_(chroma.unsqueeze(-3)).neg_().add_(mx.unsqueeze(-3)).mul_(U8_SCALE).floor_()


def apply_ops(x: torch.Tensor, ops, contrast_mean=None) -> torch.Tensor:
    """Applies `ops` ((name, factor) pairs) in order to float 0..255 values. `contrast_mean` is the mean grey
    level the contrast op blends with (float or [N,1,1,1]); required when a contrast op is present."""
    for name, f in ops:
        if name == "brightness":
            x = brightness(x, f)
        elif name == "contrast":
            x = contrast(x, f, contrast_mean)
        elif name == "saturation":
            x = saturation(x, f)
        else:
            x = hue(x, f)
    return x


def contrast_mean(photo_u8: torch.Tensor, params: DistortParams, stride: int = 4) -> float | None:
    """Mean grey level of the whole photo just before the contrast op, as the reference computes it on the
    full-resolution image: the ops before contrast are replayed on a `stride`-subsampled copy (1/16 of the
    pixels: the mean's error is a fraction of a grey level). None when the draw has no contrast op."""
    names = [n for n, _ in params.ops]
    if "contrast" not in names:
        return None
    sub = photo_u8[..., ::stride, ::stride].float()
    sub = apply_ops(sub, params.ops[: names.index("contrast")])
    return float(gray(sub).mean())
