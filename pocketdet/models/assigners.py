"""Label assignment for anchor-free dense heads (PP-PicoDet): ATSS and the task-aligned assigner (TOOD).

Both work on a whole batch at once with padded ground truth: `gt_boxes` [B, n, 4] (xyxy pixels), `gt_labels`
[B, n], `gt_mask` [B, n] (False for padding rows), n = the largest GT count of the batch (0 allowed). They
return an `Assignment` per anchor: class (`num_classes` = background), target box, soft class target
(IoU or normalised alignment metric on the assigned class, 0 elsewhere) and the [B, n, L] positive mask.

Semantics follow PaddleDetection 2.6's `ATSSAssigner` / `TaskAlignedAssigner` (ppdet/modeling/assigners/),
quirks included, so the official recipe trains the same: an anchor positive for several GTs goes to the GT
of highest IoU among *all* GTs; an anchor positive for none keeps GT 0's box (ignored by the losses).
Checked assignment-for-assignment against Paddle in tests/test_picodet_loss.py.
"""
from __future__ import annotations

from itertools import accumulate
from typing import NamedTuple

import torch


class Assignment(NamedTuple):
    labels: torch.Tensor     # [B, L] int64, num_classes = background
    boxes: torch.Tensor      # [B, L, 4] xyxy pixels of the assigned GT
    scores: torch.Tensor     # [B, L, C] soft target on the assigned class
    positive: torch.Tensor   # [B, n, L] bool: anchor l is a positive of GT j (after resolving overlaps)


def grid_cell_anchors(feat_sizes, strides, cell_scale: float = 5.0, offset: float = 0.5, dtype=torch.float32,
                      device=None):
    """Per feature-map cell, level by level in row-major order: a square anchor of side cell_scale * stride
    around the cell centre (ATSS's IoU candidates) [L, 4], the centre itself [L, 2] (pixels), the number
    of cells per level and the stride of each cell [L, 1]."""
    boxes, points, counts, stride_t = [], [], [], []
    for (h, w), s in zip(feat_sizes, strides):
        ys = (torch.arange(h, dtype=dtype, device=device) + offset) * s
        xs = (torch.arange(w, dtype=dtype, device=device) + offset) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack([cx, cy], -1).reshape(-1, 2)
        half = cell_scale * s * 0.5
        boxes.append(torch.cat([pts - half, pts + half], -1))
        points.append(pts)
        counts.append(h * w)
        stride_t.append(torch.full((h * w, 1), float(s), dtype=dtype, device=device))
    return torch.cat(boxes), torch.cat(points), counts, torch.cat(stride_t)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """IoU of every box in a [..., n, 4] with every box in b [..., L, 4] -> [..., n, L]; `eps` added to
    the union (Paddle: 1e-10 against anchors, 1e-9 against predictions), areas of inverted boxes are 0."""
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """[B, n, L] bool: point l lies strictly inside box j (every side more than eps away)."""
    p = points[None, None]
    b = boxes.unsqueeze(2)
    ltrb = torch.cat([p - b[..., :2], b[..., 2:] - p], -1)
    return ltrb.min(-1).values > eps


def topk_mask(values: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best entries along the last axis as a 0/1 mask of values' shape, and their indices."""
    idx = values.topk(k, dim=-1, largest=largest).indices
    return torch.zeros_like(values).scatter_(-1, idx, 1.0), idx


def _finish(positive: torch.Tensor, ious: torch.Tensor, gt_labels, gt_boxes, num_classes: int):
    """An anchor positive for several GTs keeps only the GT of highest IoU (over all GTs, padding included,
    first index on ties); then per anchor the assigned label (background if none), box and one-hot."""
    multiple = positive.sum(-2, keepdim=True) > 1
    best = torch.zeros_like(positive).scatter_(-2, ious.argmax(-2, keepdim=True), 1.0)
    positive = torch.where(multiple, best, positive)
    any_pos = positive.sum(-2) > 0                                             # [B, L]
    gt_index = positive.argmax(-2)                                             # [B, L]; 0 where none
    labels = torch.where(any_pos, gt_labels.gather(1, gt_index), torch.full_like(gt_index, num_classes))
    boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
    onehot = ious.new_zeros(*labels.shape, num_classes + 1).scatter_(-1, labels[..., None], 1.0)[..., :num_classes]
    return positive, labels, boxes, onehot


def _empty(batch: int, num_anchors: int, num_classes: int, like: torch.Tensor) -> Assignment:
    return Assignment(torch.full((batch, num_anchors), num_classes, dtype=torch.long, device=like.device),
                      like.new_zeros(batch, num_anchors, 4), like.new_zeros(batch, num_anchors, num_classes),
                      torch.zeros(batch, 0, num_anchors, dtype=torch.bool, device=like.device))


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, level_counts: list[int], gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                gt_mask: torch.Tensor, num_classes: int, pred_boxes: torch.Tensor | None = None,
                topk: int = 9) -> Assignment:
    """ATSS (Zhang et al. 2020): per level the `topk` anchors whose centres are closest to a GT's centre are
    candidates (a level with fewer cells gives all: small inputs, where Paddle fails); those with IoU above
    mean + std (unbiased) of the candidates' IoUs and centre inside the GT are positives. Soft targets are
    the IoU of the *predicted* box with its GT when `pred_boxes` [B, L, 4] is given (PicoDet's static
    assigner), else 1."""
    batch, n = gt_labels.shape
    num_anchors = anchors.shape[0]
    if n == 0:
        return _empty(batch, num_anchors, num_classes, anchors)
    mask = gt_mask[..., None].to(anchors.dtype)                               # [B, n, 1]
    ious = pairwise_iou(gt_boxes, anchors, eps=1e-10)                         # [B, n, L]
    gt_c = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    a_c = (anchors[:, :2] + anchors[:, 2:]) / 2
    dist = (gt_c[:, :, None] - a_c[None, None]).norm(dim=-1)                  # [B, n, L]
    in_topk, cand_idx = [], []
    for lvl_dist, start in zip(dist.split(level_counts, -1), accumulate([0] + list(level_counts)[:-1])):
        m, idx = topk_mask(lvl_dist, min(topk, lvl_dist.shape[-1]), largest=False)
        in_topk.append(m * mask)
        cand_idx.append(idx + start)
    in_topk, cand_idx = torch.cat(in_topk, -1), torch.cat(cand_idx, -1)
    cand_iou = ious * in_topk
    picked = cand_iou.gather(-1, cand_idx)                                    # [B, n, levels * topk]
    threshold = picked.mean(-1, keepdim=True) + picked.std(-1, keepdim=True)
    in_topk = torch.where(cand_iou > threshold, in_topk, torch.zeros_like(in_topk))
    positive = in_topk * points_in_boxes(a_c, gt_boxes).to(ious.dtype) * mask
    positive, labels, boxes, scores = _finish(positive, ious, gt_labels, gt_boxes, num_classes)
    if pred_boxes is not None:
        pred_iou = (pairwise_iou(gt_boxes, pred_boxes, eps=1e-9) * positive).max(-2).values
        scores = scores * pred_iou[..., None]
    return Assignment(labels, boxes, scores, positive > 0)


@torch.no_grad()
def task_aligned_assign(pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                        gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor, num_classes: int,
                        topk: int = 13, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """TOOD's assigner: alignment t = score(GT class)^alpha * IoU(pred, GT)^beta; per GT the `topk` anchors
    of highest t among those whose centre lies inside it are positives. Soft target of a positive:
    t / max t of its GT * max IoU of its GT (the best-aligned anchor of a GT learns that GT's best IoU)."""
    batch, num_anchors, _ = pred_scores.shape
    n = gt_labels.shape[1]
    if n == 0:
        return _empty(batch, num_anchors, num_classes, pred_boxes)
    mask = gt_mask[..., None].to(pred_boxes.dtype)
    ious = pairwise_iou(gt_boxes, pred_boxes, eps=1e-9)                       # [B, n, L]
    cls = pred_scores.transpose(1, 2).gather(1, gt_labels[..., None].expand(-1, -1, num_anchors))
    align = cls.pow(alpha) * ious.pow(beta)
    inside = points_in_boxes(points, gt_boxes).to(ious.dtype)
    in_topk, _ = topk_mask(align * inside, min(topk, num_anchors), largest=True)
    positive = in_topk * inside * mask
    positive, labels, boxes, onehot = _finish(positive, ious, gt_labels, gt_boxes, num_classes)
    align = align * positive
    norm = align / (align.max(-1, keepdim=True).values + eps) * (ious * positive).max(-1, keepdim=True).values
    return Assignment(labels, boxes, onehot * norm.max(-2).values[..., None], positive > 0)
