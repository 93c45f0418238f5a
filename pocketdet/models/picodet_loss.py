"""PP-PicoDet's training loss (PaddleDetection 2.6 `PicoHeadV2.get_loss`, configs/picodet/_base_/picodet_v2.yml).

Data flow, for the whole batch at once:
  head outputs per level: class probabilities [N,C,H,W] (the align head's sqrt(sigmoid * sigmoid)) and
  box distributions [N,4*(reg_max+1),H,W] (logits over distances 0..reg_max, in strides, per side l,t,r,b)
  -> flattened level by level to [N,L,C] / [N,L,4,reg_max+1]; expected distance -> predicted box
  -> assignment (no gradient) against the padded GTs: ATSS on 5-stride grid-cell anchors while
     `static_assigner` (the first 100 of 300 epochs), the task-aligned assigner after
  -> Varifocal loss on every anchor x class (target: the assignment's IoU-like soft score), and on the
     positives GIoU + Distribution Focal Loss, each weighted by the positive's soft score;
  -> all three divided by the sum of soft scores over the *global* batch (all-reduced under DDP, / world
     size, at least 1), times 1.0 / 2.5 / 0.5.
Boxes of the losses are in stride units of their level (Paddle divides pixels by the stride), so GIoU and DFL
see every level alike.

Deviation: Paddle clips the normaliser at 1 only when training on several GPUs (the recipe's 4); here always,
so a single process trains like the recipe and a batch without any GT is not divided by zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .assigners import atss_assign, grid_cell_anchors, task_aligned_assign


@dataclass
class PicoLossCfg:
    num_classes: int
    strides: tuple[int, ...] = (8, 16, 32, 64)
    reg_max: int = 7
    cell_offset: float = 0.5
    grid_cell_scale: float = 5.0
    atss_topk: int = 9
    tal_topk: int = 13
    tal_alpha: float = 1.0
    tal_beta: float = 6.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    weight_vfl: float = 1.0
    weight_giou: float = 2.5
    weight_dfl: float = 0.5


def pad_targets(targets: list[dict], dtype=torch.float32, device=None):
    """List of {"boxes" [k,4], "labels" [k]} -> labels [B,n] int64, boxes [B,n,4], mask [B,n] bool with
    n = the largest k (padding rows: label 0, box 0, mask False)."""
    n = max((len(t["boxes"]) for t in targets), default=0)
    labels = torch.zeros(len(targets), n, dtype=torch.long, device=device)
    boxes = torch.zeros(len(targets), n, 4, dtype=dtype, device=device)
    mask = torch.zeros(len(targets), n, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        k = len(t["boxes"])
        labels[i, :k] = t["labels"].to(device)
        boxes[i, :k] = t["boxes"].to(device, dtype).reshape(-1, 4)
        mask[i, :k] = True
    return labels, boxes, mask


def expected_distance(reg: torch.Tensor, reg_max: int) -> torch.Tensor:
    """[..., 4*(reg_max+1)] logits -> [..., 4] expected distances (GFL's integral of the softmax)."""
    prob = reg.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    return prob @ torch.arange(reg_max + 1, dtype=reg.dtype, device=reg.device)


def varifocal_loss(prob: torch.Tensor, target: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Summed VFL on probabilities (use_sigmoid False, iou_weighted True): positives (target > 0) weighted by
    their target, negatives by alpha * |p - target|^gamma. BCE with logs floored at -100, as torch's and
    Paddle's binary_cross_entropy (written out: torch refuses BCE on probabilities under autocast)."""
    pos = target > 0
    weight = torch.where(pos, target, alpha * (prob - target).abs().pow(gamma))
    bce = -(target * prob.log().clamp(min=-100) + (1 - target) * (1 - prob).log().clamp(min=-100))
    return (bce * weight).sum()


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """1 - GIoU per box pair [P, 4] xyxy -> [P] (Paddle GIoULoss: eps on union and enclosing area)."""
    lt, rb = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (pred[:, 2:] - pred[:, :2]).prod(-1) + (target[:, 2:] - target[:, :2]).prod(-1) - inter + eps
    enclose = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(-1) + eps
    return 1 - (inter / union - (enclose - union) / enclose)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL [P, reg_max+1] logits, [P] continuous targets in [0, reg_max) -> [P]: cross-entropy towards the
    two integers around the target, weighted by closeness."""
    left = target.long()
    w_left = (left + 1).to(target.dtype) - target
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, left + 1, reduction="none") * (1 - w_left))


def global_normalizer(total: torch.Tensor) -> torch.Tensor:
    """The batch's sum of soft targets averaged over DDP processes (all-reduce / world size), at least 1:
    DDP's gradient averaging then equals one process normalising the global batch (as SSDLite's)."""
    n = total.detach()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        n = n.clone()
        torch.distributed.all_reduce(n)
        n = n / torch.distributed.get_world_size()
    return n.clamp(min=1.0)


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[N,K,H,W] per level -> [N, sum(H*W), K], level by level, row-major inside a level."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def picodet_loss(cls_scores: list[torch.Tensor], reg_dists: list[torch.Tensor], targets: list[dict],
                 cfg: PicoLossCfg, static_assigner: bool) -> dict[str, torch.Tensor]:
    """The head outputs per level (see the module docstring) and targets with `boxes` in input pixels and
    0-based `labels` -> {"loss_vfl", "loss_bbox", "loss_dfl"}. Computed in float32 (float64 inputs stay
    float64) with autocast off: the soft targets and the BCE logs need the precision."""
    feat_sizes = [tuple(m.shape[-2:]) for m in cls_scores]
    dtype = torch.float64 if cls_scores[0].dtype == torch.float64 else torch.float32
    with torch.autocast(cls_scores[0].device.type, enabled=False):
        return flat_loss(flatten_levels(cls_scores).to(dtype), flatten_levels(reg_dists).to(dtype), feat_sizes,
                         targets, cfg, static_assigner)


def flat_loss(scores: torch.Tensor, reg: torch.Tensor, feat_sizes, targets: list[dict], cfg: PicoLossCfg,
              static_assigner: bool) -> dict[str, torch.Tensor]:
    """`picodet_loss` on flattened outputs: scores [B,L,C] probabilities, reg [B,L,4*(reg_max+1)] logits."""
    batch, _, num_classes = scores.shape
    anchors, points, counts, stride = grid_cell_anchors(feat_sizes, cfg.strides, cfg.grid_cell_scale,
                                                        cfg.cell_offset, scores.dtype, scores.device)
    dist = expected_distance(reg, cfg.reg_max) * stride                        # [B, L, 4] pixels
    pred_px = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
    pred = pred_px / stride                                                    # stride units
    gt_labels, gt_boxes, gt_mask = pad_targets(targets, scores.dtype, scores.device)
    if static_assigner:
        a = atss_assign(anchors, counts, gt_labels, gt_boxes, gt_mask, num_classes,
                        pred_boxes=pred_px.detach(), topk=cfg.atss_topk)
    else:
        a = task_aligned_assign(scores.detach(), pred_px.detach(), points, gt_labels, gt_boxes, gt_mask,
                                num_classes, cfg.tal_topk, cfg.tal_alpha, cfg.tal_beta)
    norm = global_normalizer(a.scores.sum())
    loss_vfl = varifocal_loss(scores, a.scores, cfg.vfl_alpha, cfg.vfl_gamma) / norm
    pos = a.labels < num_classes                                               # [B, L]
    if bool(pos.any()):
        pos_stride = stride.expand(batch, -1, -1)[pos]                         # [P, 1]
        target = a.boxes[pos] / pos_stride
        weight = a.scores[pos].max(-1).values                                  # [P]
        loss_bbox = (giou_loss(pred[pos], target) * weight).sum()
        centre = points.expand(batch, -1, -1)[pos] / pos_stride
        corners = torch.cat([centre - target[:, :2], target[:, 2:] - centre], -1).clamp(0, cfg.reg_max - 0.1)
        loss_dfl = (distribution_focal_loss(reg[pos].reshape(-1, cfg.reg_max + 1), corners.reshape(-1))
                    * weight.repeat_interleave(4)).sum() / 4.0
    else:  # zero, but still a function of the box branch: DDP expects a gradient for every parameter
        loss_bbox = loss_dfl = reg.new_zeros(()) + reg.sum() * 0.0
    return {"loss_vfl": cfg.weight_vfl * loss_vfl, "loss_bbox": cfg.weight_giou * loss_bbox / norm,
            "loss_dfl": cfg.weight_dfl * loss_dfl / norm}
