"""Center-size box coding (SSD / R-CNN style) on xyxy boxes."""
from __future__ import annotations

import math

import torch

_DWH_CLAMP = math.log(1000.0 / 16)


def encode_boxes(gt: torch.Tensor, ref: torch.Tensor, variance: tuple[float, float, float, float]) -> torch.Tensor:
    """Offsets of `gt` relative to `ref` (both [..., 4] xyxy), divided by `variance`."""
    rw, rh = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    rx, ry = ref[..., 0] + 0.5 * rw, ref[..., 1] + 0.5 * rh
    gw, gh = (gt[..., 2] - gt[..., 0]).clamp(min=1e-6), (gt[..., 3] - gt[..., 1]).clamp(min=1e-6)
    gx, gy = gt[..., 0] + 0.5 * gw, gt[..., 1] + 0.5 * gh
    return torch.stack([(gx - rx) / rw / variance[0], (gy - ry) / rh / variance[1],
                        torch.log(gw / rw) / variance[2], torch.log(gh / rh) / variance[3]], dim=-1)


def decode_boxes(deltas: torch.Tensor, ref: torch.Tensor, variance: tuple[float, float, float, float]) -> torch.Tensor:
    """Inverse of `encode_boxes`; width/height offsets are clamped so exp() cannot overflow."""
    rw, rh = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    rx, ry = ref[..., 0] + 0.5 * rw, ref[..., 1] + 0.5 * rh
    cx = deltas[..., 0] * variance[0] * rw + rx
    cy = deltas[..., 1] * variance[1] * rh + ry
    w = torch.exp((deltas[..., 2] * variance[2]).clamp(max=_DWH_CLAMP)) * rw
    h = torch.exp((deltas[..., 3] * variance[3]).clamp(max=_DWH_CLAMP)) * rh
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
