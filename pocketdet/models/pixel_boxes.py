"""Box arithmetic in the legacy "+1 pixel" convention of PaddlePaddle's static detection ops.

The static graph that trained the official Cascade R-CNN weights treats a box [x1, y1, x2, y2] as the
*inclusive* pixel range x1..x2: its width is x2 - x1 + 1 (`box_normalized=False` / `pixel_offset=True` in
`anchor_generator`, `generate_proposals`, `box_coder`, `distribute_fpn_proposals`, `multiclass_nms`).
An inclusive box equals the continuous box [x1, y1, x2 + 1, y2 + 1], so the functions below are the
continuous torchvision operations with that shift applied where the legacy ops apply it; the tests
compare each with the legacy op's output (tests/fixtures/cascade_static_ops.npz).
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import batched_nms

# `generate_proposals`' clamp of the RPN width/height deltas (kBBoxClipDefault); `box_coder` has none
RPN_DWH_CLIP = math.log(1000.0 / 16.0)


def to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """Inclusive [x1, y1, x2, y2] -> continuous [x1, y1, x2 + 1, y2 + 1] (what COCO's x, y, w, h mean)."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def to_inclusive(boxes: torch.Tensor) -> torch.Tensor:
    return boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def round_half_up(v: float) -> float:
    """C++ std::round for v >= 0 (the op's rounding; Python's round() rounds half to even)."""
    return float(math.floor(v + 0.5))


def static_cell_anchors(size: float, aspect_ratios, stride: int, offset: float = 0.5) -> torch.Tensor:
    """The anchors of the cell at (0, 0) as the static `anchor_generator` op makes them: [A, 4] inclusive.

    For each ratio r the op rounds a stride-sized base box first (w0 = round(sqrt(stride^2 / r)),
    h0 = round(w0 * r), half away from zero), scales it by size / stride, and centres it at
    offset * (stride - 1) with half-extent (w - 1) / 2. So P2 (stride 4, size 16) ratio 0.5 is 24 x 12,
    not torchvision's 22 x 12 (size / sqrt(r) rounded)."""
    ctr = offset * (stride - 1)
    rows = []
    for r in aspect_ratios:
        base_w = round_half_up(math.sqrt(stride * stride / float(r)))
        base_h = round_half_up(base_w * float(r))
        w, h = size / stride * base_w, size / stride * base_h
        rows.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(rows, dtype=torch.float64).float()


def grid_anchors(grid_hw: tuple[int, int], cell: torch.Tensor, stride: int) -> torch.Tensor:
    """[H*W*A, 4]: `cell` shifted by stride per cell, row-major cells, ratio fastest (the op's layout)."""
    gh, gw = grid_hw
    sy = torch.arange(gh, dtype=torch.float32, device=cell.device) * stride
    sx = torch.arange(gw, dtype=torch.float32, device=cell.device) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)


def decode(deltas: torch.Tensor, boxes: torch.Tensor, weights, dwh_clip: float | None = None) -> torch.Tensor:
    """`box_coder(decode_center_size, box_normalized=False)` / `generate_proposals`' decode: inclusive boxes
    [N, 4] + deltas [N, 4] divided by `weights` (Paddle's variances are 1 / weights) -> inclusive boxes.
    The width is x2 - x1 + 1 and the new x2 is cx + w / 2 - 1. `dwh_clip`: the RPN's clamp of dw, dh
    (`box_coder` has none, so the cascade stages pass None)."""
    wx, wy, ww, wh = weights
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dw, dh = deltas[:, 2] / ww, deltas[:, 3] / wh
    if dwh_clip is not None:
        dw, dh = dw.clamp(max=dwh_clip), dh.clamp(max=dwh_clip)
    cx = deltas[:, 0] / wx * widths + ctr_x
    cy = deltas[:, 1] / wy * heights + ctr_y
    w, h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1.0, cy + 0.5 * h - 1.0], dim=1)


def clip(boxes: torch.Tensor, h: float | torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Clip inclusive boxes to the pixels 0..w-1, 0..h-1 (`generate_proposals`, `box_clip`)."""
    if not isinstance(h, torch.Tensor):
        h, w = torch.tensor(float(h)), torch.tensor(float(w))
    hi = torch.stack([w, h, w, h]).to(boxes) - 1.0
    return boxes.clamp(min=0).minimum(hi)


def nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision `batched_nms` with the legacy IoU (`normalized=False`: areas and overlaps with +1
    widths), which is the continuous IoU of the shifted boxes. Kept indices, best first.
    Equal scores are taken in index order, as the static ops' stable sort does (torchvision's own order
    among ties is unspecified; a random or saturated classifier gives many exact ties, e.g. 1/3)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.arange(len(order), 0, -1, dtype=torch.float32, device=scores.device)
    keep = batched_nms(to_continuous(boxes[order]), rank, idxs[order], iou_threshold)
    return order[keep]


def fpn_levels(rois: torch.Tensor, k_min: int, k_max: int, canonical_level: int, canonical_size: float
               ) -> torch.Tensor:
    """`distribute_fpn_proposals(pixel_offset=True)`: level = floor(log2(sqrt(area) / size0 + 1e-6) + level0)
    with the +1 area (0 for an inverted box), clamped to [k_min, k_max]. Returns level - k_min (int64)."""
    w = rois[:, 2] - rois[:, 0] + 1.0
    h = rois[:, 3] - rois[:, 1] + 1.0
    valid = (rois[:, 2] >= rois[:, 0]) & (rois[:, 3] >= rois[:, 1])
    area = torch.where(valid, w * h, torch.zeros_like(w))
    lvl = torch.floor(torch.log2(torch.sqrt(area) / canonical_size + 1e-6) + canonical_level)
    return (lvl.clamp(k_min, k_max) - k_min).to(torch.int64)
