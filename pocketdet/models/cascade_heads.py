"""Cascade R-CNN's RoI part: FPN RoIAlign, the three cascade stages, their targets and losses (spec §6.5/§6.6).

Data flow (eval, one image): proposals (inclusive boxes, input pixels) -> `StaticFPNRoIAlign` (level by the
+1 area, torchvision `roi_align` aligned=False on the box as it is) -> stage k's `CascadeTwoFCHead` ->
its class-agnostic deltas decode the RoIs for stage k+1 (`box_coder` +1 convention, no clipping between
stages) -> after stage 3: scores = mean of the three classifiers' softmax on the stage-3 RoI features,
boxes = the stage-3 RoIs divided by the resize scale and decoded in *original-image* pixels by the stage-3
deltas, clipped to width-1 / height-1 (static `CascadeBBoxHead.get_prediction` + `box_clip`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou, roi_align

from . import pixel_boxes


class StaticFPNRoIAlign(nn.Module):
    """The static `FPNRoIAlign`: `distribute_fpn_proposals` (level from the +1 area, `pixel_boxes.fpn_levels`)
    then the legacy `roi_align` per level (spatial scale 1/stride). The legacy op samples the window
    [x1, x2] of the inclusive box - one pixel narrower than the box's own +1 extent - which is exactly
    torchvision's `roi_align(aligned=False)` on the same four numbers (checked against the op in the tests).
    Each level's result is written with `index_put` (ONNX ScatterND, one index per RoI row), which exports
    faster than torchvision's `MultiScaleRoIAlign` merge (an index per element)."""

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, canonical_scale: int,
                 canonical_level: int):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.strides = [2 ** int(n[1:]) for n in self.featmap_names]  # "p2" -> 4
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def levels_of(self, rois: torch.Tensor) -> torch.Tensor:
        k_min, k_max = (int(math.log2(s)) for s in (self.strides[0], self.strides[-1]))
        return pixel_boxes.fpn_levels(rois, k_min, k_max, self.canonical_level, self.canonical_scale)

    def forward(self, feats: list[torch.Tensor], rois: list[torch.Tensor]) -> torch.Tensor:
        """feats: the pooled levels [N, C, H, W] in `featmap_names` order; rois: per image [R_i, 4]."""
        boxes = torch.cat(rois)
        batch = torch.cat([torch.zeros_like(r[:, :1]) + i for i, r in enumerate(rois)])  # traced: dynamic R
        with_batch = torch.cat([batch, boxes], 1)
        which = self.levels_of(boxes)
        out = boxes.new_zeros((boxes.shape[0], feats[0].shape[1], *self.output_size))
        for k, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.where(which == k)[0]
            out = out.index_put((idx,), roi_align(feat, with_batch[idx], self.output_size, 1.0 / stride,
                                                  self.sampling_ratio, aligned=False))
        return out


class CascadeTwoFCHead(nn.Module):
    """fc6 (48*7*7 -> mlp) + ReLU, fc7 (mlp -> mlp) + ReLU, then cls (-> classes + background) and a
    class-agnostic bbox fc with 2 x 4 outputs of which only the foreground slot (index 1) is used, as
    Paddle's `CascadeTwoFCHead` with `cls_agnostic_bbox_reg` (spec §6.5). The unused background slot is
    kept so the parameter layout equals Paddle's."""

    def __init__(self, in_features: int, mlp_dim: int, num_classes_with_bg: int):
        super().__init__()
        self.fc6 = nn.Linear(in_features, mlp_dim)
        self.fc7 = nn.Linear(mlp_dim, mlp_dim)
        self.cls_score = nn.Linear(mlp_dim, num_classes_with_bg)
        self.bbox_pred = nn.Linear(mlp_dim, 8)
        for fc in (self.fc6, self.fc7):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, roi_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc6(roi_feats.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)[:, 4:8]


def balanced_l1_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 1.5,
                     beta: float = 1.0) -> torch.Tensor:
    """Element-wise Balanced L1 (Libra R-CNN) as Paddle's `BalancedL1Loss`, b = e^(gamma/alpha) - 1."""
    diff = (pred - target).abs()
    b = math.exp(gamma / alpha) - 1.0
    small = alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff
    large = gamma * diff + gamma / b - alpha * beta
    return torch.where(diff < beta, small, large)


class CascadeRoIHeads(nn.Module):
    """Three cascade stages (spec §6.5/§6.6). RoIs are inclusive boxes (see module docstring).

    Target assignment follows Paddle's `generate_proposal_labels` (read from the op source): stage 1 puts
    the GT boxes in front of the RPN proposals, labels RoIs with IoU >= 0.5 foreground and the rest
    background, and samples 512 per image with at most 25% foreground (torchvision's Matcher +
    BalancedPositiveNegativeSampler). Stages 2 and 3 run in Paddle's `is_cascade_rcnn` mode: the previous
    stage's RoIs, refined by its deltas, minus those whose previous max IoU was 1 (the GT boxes inserted
    before) and minus empty boxes, get the GT boxes put in front again, and *all* of them are kept (no
    subsampling), foreground at IoU >= 0.6 / 0.7. IoU and regression targets use the continuous boxes
    (inclusive + 1) against the continuous GT, so the targets are what the +1 decode inverts.
    Training clamps dw/dh between stages at log(1000/16) (early random deltas could overflow exp);
    inference does not, as the static `box_coder`. Crowd GT boxes are not handled (the datasets drop them).
    """

    def __init__(self, featmap_names: list[str], canonical_size: int, canonical_level: int,
                 in_channels: int, mlp_dim: int, num_classes_with_bg: int, resolution: int = 7,
                 sampling_ratio: int = 2, batch_size_per_image: int = 512, fg_fraction: float = 0.25,
                 stage_iou_thresholds=(0.5, 0.6, 0.7),
                 stage_box_weights=((10., 10., 5., 5.), (20., 20., 10., 10.), (30., 30., 15., 15.)),
                 stage_loss_weights=(1.0, 0.5, 0.25), balanced_l1=(0.5, 1.5, 1.0)):
        super().__init__()
        if not len(stage_iou_thresholds) == len(stage_box_weights) == len(stage_loss_weights):
            raise ValueError("stage_iou_thresholds, stage_box_weights and stage_loss_weights need one "
                             "entry per cascade stage")
        self.box_roi_pool = StaticFPNRoIAlign(featmap_names, resolution, sampling_ratio, canonical_size,
                                              canonical_level)
        in_features = in_channels * resolution * resolution
        self.stages = nn.ModuleList(CascadeTwoFCHead(in_features, mlp_dim, num_classes_with_bg)
                                    for _ in stage_iou_thresholds)
        self.box_coders = [det_utils.BoxCoder(tuple(float(v) for v in w)) for w in stage_box_weights]
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in stage_iou_thresholds]
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, fg_fraction)
        self.stage_loss_weights = list(stage_loss_weights)
        self.balanced_l1 = tuple(balanced_l1)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def _pool(self, feats: dict, rois: list[torch.Tensor]) -> torch.Tensor:
        return self.box_roi_pool([feats[n] for n in self.box_roi_pool.featmap_names], rois)

    # -- target assignment ---------------------------------------------------------------------------
    def assign(self, stage: int, rois: torch.Tensor, prev_max_iou: torch.Tensor | None, target: dict):
        """One image; rois inclusive, target boxes continuous. Returns (rois (inclusive), labels with
        background 0, regression targets, max IoU with GT)."""
        gt, gt_labels = target["boxes"], target["labels"]
        if stage > 0:
            keep = (prev_max_iou < 1.0) & (rois[:, 2] - rois[:, 0] + 1 > 0) & (rois[:, 3] - rois[:, 1] + 1 > 0)
            rois = rois[keep]
        cand = torch.cat([pixel_boxes.to_inclusive(gt.to(rois.dtype)), rois])
        cont = pixel_boxes.to_continuous(cand)
        if gt.numel() == 0:
            matched = torch.full((cand.shape[0],), -1, dtype=torch.long, device=cand.device)
            max_iou = torch.zeros(cand.shape[0], device=cand.device)
        else:
            iou = box_iou(gt, cont)
            max_iou = iou.max(0).values
            matched = self.matchers[stage](iou)  # >= thresh: gt index; below: -1 (background)
        if stage == 0:
            pos, neg = self.sampler([(matched >= 0).to(torch.long)])
            idx = torch.cat([torch.where(pos[0])[0], torch.where(neg[0])[0]])
        else:
            idx = torch.cat([torch.where(matched >= 0)[0], torch.where(matched < 0)[0]])
        cand, cont, matched, max_iou = cand[idx], cont[idx], matched[idx], max_iou[idx]
        fg = matched >= 0
        labels = torch.zeros(cand.shape[0], dtype=torch.long, device=cand.device)
        reg = torch.zeros_like(cand)
        if fg.any():
            labels[fg] = gt_labels.to(cand.device)[matched[fg]] + 1
            reg[fg] = self.box_coders[stage].encode_single(gt[matched[fg]].to(cand.dtype), cont[fg])
        return cand, labels, reg, max_iou

    def decode(self, stage: int, deltas: torch.Tensor, rois: torch.Tensor, dwh_clip: float | None = None):
        return pixel_boxes.decode(deltas, rois, self.box_coders[stage].weights, dwh_clip)

    # -- training ---------------------------------------------------------------------------------------
    def forward_train(self, feats, proposals: list[torch.Tensor], targets):
        losses: dict[str, torch.Tensor] = {}
        rois = [p.detach() for p in proposals]
        max_ious: list[torch.Tensor | None] = [None] * len(rois)
        alpha, gamma, beta = self.balanced_l1
        for k, head in enumerate(self.stages):
            assigned = [self.assign(k, r, m, t) for r, m, t in zip(rois, max_ious, targets)]
            rois = [a[0] for a in assigned]
            labels = torch.cat([a[1] for a in assigned])
            reg_targets = torch.cat([a[2] for a in assigned])
            max_ious = [a[3] for a in assigned]
            cls_logits, deltas = head(self._pool(feats, rois))
            fg = labels > 0
            loss_cls = F.cross_entropy(cls_logits, labels)
            loss_box = balanced_l1_loss(deltas[fg], reg_targets[fg], alpha, gamma, beta).sum() \
                / max(labels.numel(), 1)
            w = self.stage_loss_weights[k]
            losses[f"loss_cls_stage{k + 1}"] = loss_cls * w
            losses[f"loss_box_stage{k + 1}"] = loss_box * w
            if k + 1 < self.num_stages:
                refined = self.decode(k, deltas.detach(), torch.cat(rois), pixel_boxes.RPN_DWH_CLIP)
                rois = list(refined.split([len(r) for r in rois]))
        return losses

    # -- inference --------------------------------------------------------------------------------------
    def stages_one_image(self, levels: list[torch.Tensor], rois: torch.Tensor, image_info: torch.Tensor):
        """levels: the pooled FPN levels [1, C, H, W]; rois [R, 4] inclusive input pixels; image_info:
        (original h, original w, resize scale). Returns (scores [R, C+1], boxes [R, 4] inclusive in
        original pixels clipped to w-1 / h-1, RoIs each stage saw, each stage's own decoded RoIs)."""
        stage_rois, stage_boxes = [], []
        for k, head in enumerate(self.stages):
            x = self.box_roi_pool(levels, [rois])
            cls_logits, deltas = head(x)
            stage_rois.append(rois)
            stage_boxes.append(self.decode(k, deltas, rois))
            if k + 1 < self.num_stages:
                rois = stage_boxes[-1]
        # earlier stages' classifiers on the last stage's RoI features; summed in stage order as the
        # static graph does, so that float rounding (and with it ties between saturated scores) is the same
        probs = self.stages[0](x)[0].softmax(-1)
        for head in self.stages[1:-1]:
            probs = probs + head(x)[0].softmax(-1)
        probs = probs + cls_logits.softmax(-1)
        boxes = self.decode(self.num_stages - 1, deltas, rois / image_info[2])
        boxes = pixel_boxes.clip(boxes, image_info[0], image_info[1])
        return probs / self.num_stages, boxes, stage_rois, stage_boxes

    @torch.no_grad()
    def forward_test(self, feats, proposals: list[torch.Tensor], image_infos: list[torch.Tensor]):
        """Per image a dict: `scores` [R, C+1], `boxes` [R, 4] (see `stages_one_image`), `stage_rois` and
        `stage_boxes` (input pixels, unclipped)."""
        levels = [feats[n] for n in self.box_roi_pool.featmap_names]
        out = []
        for i, (rois, info) in enumerate(zip(proposals, image_infos)):
            s, b, sr, sb = self.stages_one_image([f[i:i + 1] for f in levels], rois, info)
            out.append({"scores": s, "boxes": b, "stage_rois": sr, "stage_boxes": sb})
        return out
