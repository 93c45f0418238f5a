"""Cascade R-CNN with a MobileNetV3-Large FPN, as PaddleDetection's static mobile configs (spec §6).

Structure (spec §6.2-6.6), built from torchvision detection pieces where their semantics fit:
  MobileNetV3-Large taps C2/C3/C4 (expand-conv outputs of conv5/conv8/conv14, 72/240/672 ch), BN frozen
  -> FPN 48 ch, P2-P6 (`fpn.PaddleFPN` on torchvision's FeaturePyramidNetwork)
  -> RPN (torchvision RegionProposalNetwork + RPNHead, one anchor size per level, 3 ratios)
  -> 3 cascade stages: MultiScaleRoIAlign 7x7 -> 2 x FC-128 -> 81-way softmax + class-agnostic deltas.

Deployment split (what `forward_raw` is): the dense network runs once per image and is what the exporter
traces; everything after it depends on the proposals, so it is a second, small graph:
  1. `forward_raw(x)` -> (features [P2..P6], RPN objectness logits per level [N,3,H,W], RPN deltas per
     level [N,12,H,W]). Anchors for an input shape come from `model.anchors_for(features)`.
  2. host code: decode deltas on the anchors (weights 1,1,1,1), per level keep the top 300 by objectness,
     clip to the valid (unpadded) image, NMS 0.7 per level, keep the best 100 over all levels
     (`model.rpn.filter_proposals` is the reference implementation).
  3. `RoIStagesExport(model)(P2..P4 [or P5], rois [R,4], image_hw)` -> (scores [R,81] softmax, background
     at 0; boxes [R,4]): RoIAlign + the three stages + the final decode, one image at a time.
  4. host code: class-wise NMS (score 0.05, IoU 0.5, top 100) and division by the resize scale
     (`postprocess_detections`).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image

from .base import DetectionModel
from .fpn import PaddleFPN
from .mobilenetv3 import MobileNetV3, Tap

# C2 / C3 / C4: expand-conv outputs of Paddle conv5, conv8, conv14 (0-based blocks 3, 6, 12), spec §6.2
CASCADE_TAPS = (Tap("expand", 3), Tap("expand", 6), Tap("expand", 12))


# ----------------------------------------------------------------------------------------------------------
# backbone helpers
def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by torchvision's FrozenBatchNorm2d, keeping the attribute
    names (`bn`) so state-dict keys, and hence Paddle weight names, stay the same. Paddle's `freeze_norm`
    uses global statistics and gives BN no gradient (spec §6.2)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


# ----------------------------------------------------------------------------------------------------------
# RPN
class PaddleAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with Paddle's fixed per-level strides and cell-centred anchors.

    Differences from the stock class, both to follow Paddle's `anchor_generator` (offset 0.5, stride 2^level):
    - torchvision infers a level's stride as padded_size // grid_size, which is wrong whenever the padded
      size is not a multiple of 64 (P6); here the strides are given.
    - torchvision centres anchors on the cell's top-left corner (x * stride); Paddle centres them in the
      cell (x * stride + 0.5 * (stride - 1) in its +1 pixel convention), so the anchors are shifted by
      stride / 2 (continuous coordinates).
    The base widths/heights come from torchvision's `generate_anchors` (size / sqrt(ratio), rounded to
    whole pixels); Paddle rounds a stride-sized base box first, which changes widths by at most ~1 px.
    """

    def __init__(self, sizes: list[float], aspect_ratios: list[float], strides: list[int]):
        super().__init__(tuple((float(s),) for s in sizes), (tuple(aspect_ratios),) * len(sizes))
        self.strides = list(strides)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        anchors = self.anchors_for_grids([tuple(f.shape[-2:]) for f in feature_maps],
                                         feature_maps[0].dtype, feature_maps[0].device)
        return [anchors for _ in image_list.image_sizes]

    def anchors_for_grids(self, grid_sizes, dtype=torch.float32, device=None) -> torch.Tensor:
        """All anchors [sum_l H_l*W_l*A, 4] (xyxy, input pixels), level-major then row, column, ratio."""
        self.set_cell_anchors(dtype, device)
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        per_level = self.grid_anchors([list(g) for g in grid_sizes], strides)
        return torch.cat([a.to(dtype) + s / 2.0 for a, s in zip(per_level, self.strides)])


class PaddleStyleRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork, driven from pre-computed head outputs, plus Paddle's
    `straddle_thresh`.

    Where torchvision's semantics equal Paddle's `rpn_target_assign` / `generate_proposals` (spec §6.4):
    - matching: IoU >= 0.7 positive, < 0.3 negative, plus every GT's best anchor(s) (allow_low_quality);
      256 anchors/img at positive fraction 0.5, random;
    - loss: sigmoid CE averaged over the sampled anchors; smooth-L1 with beta 1/9 (Paddle sigma 3) summed
      over positives and divided by the number of sampled anchors of the whole batch, as Paddle;
    - proposals: top-n per level before NMS. torchvision then runs NMS per level (batched by level) and
      keeps the post-NMS top-n *over all levels*; Paddle keeps post-NMS top-n per level and then the
      top-n over all levels (`collect_fpn_proposals`). With equal per-level and final n (2000/2000 train,
      100/100 test) both keep exactly the same boxes: a box in the global top-n is in its level's top-n.
    Differences:
    - straddle_thresh 0: anchors crossing the (unpadded) image border are ignored in target assignment,
      including for the "best anchor per GT" rule. torchvision has no such option: implemented below.
    - min_size: torchvision drops proposals under 1e-3 px; Paddle's min_size 0 with its +1 convention
      keeps everything of width >= 0. Immaterial.
    - Paddle's boxes use the legacy +1 width convention; here boxes are continuous (x2 - x1).
    """

    def __init__(self, *args, straddle_thresh: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.straddle_thresh = straddle_thresh

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = [], []
        for anchors_i, t in zip(anchors, targets):
            gt = t["boxes"]
            h, w = (int(v) for v in t["image_size"])
            lab = torch.full((anchors_i.shape[0],), -1.0, device=anchors_i.device)  # -1 = ignored
            matched = torch.zeros_like(anchors_i)
            if self.straddle_thresh >= 0:
                s = self.straddle_thresh
                inside = ((anchors_i[:, 0] >= -s) & (anchors_i[:, 1] >= -s)
                          & (anchors_i[:, 2] <= w + s) & (anchors_i[:, 3] <= h + s))
            else:
                inside = torch.ones_like(lab, dtype=torch.bool)
            idx = torch.where(inside)[0]
            if gt.numel() == 0:
                lab[idx] = 0.0
            elif idx.numel() > 0:
                m = self.proposal_matcher(box_iou(gt, anchors_i[idx]))
                lab_in = (m >= 0).to(torch.float32)
                lab_in[m == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
                lab[idx] = lab_in
                matched[idx] = gt[m.clamp(min=0)]
            labels.append(lab)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes

    def proposals_from_head(self, objectness: list[torch.Tensor], deltas: list[torch.Tensor],
                            features: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                            targets: list[dict] | None = None):
        """The second half of RegionProposalNetwork.forward, on head outputs computed elsewhere
        (`forward_raw`). Returns (proposals per image, losses)."""
        anchors = self.anchor_generator(ImageList(features[0], image_sizes), features)
        num_images = len(anchors)
        num_anchors_per_level = [int(o[0].numel()) for o in objectness]
        obj, dl = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(dl.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, obj, image_sizes, num_anchors_per_level)
        losses = {}
        if targets is not None:
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            reg_targets = self.box_coder.encode(matched, anchors)
            loss_obj, loss_reg = self.compute_loss(obj, dl, labels, reg_targets)
            losses = {"loss_rpn_cls": loss_obj, "loss_rpn_reg": loss_reg}
        return boxes, losses


# ----------------------------------------------------------------------------------------------------------
# RoI heads
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
    """Three cascade stages (spec §6.5/§6.6).

    Target assignment follows Paddle's `generate_proposal_labels` (read from the op source, which the spec
    asked to verify): stage 1 puts the GT boxes in front of the RPN proposals, labels RoIs with IoU >= 0.5
    foreground and the rest background, and samples 512 per image with at most 25% foreground (torchvision's
    Matcher + BalancedPositiveNegativeSampler). Stages 2 and 3 run in Paddle's `is_cascade_rcnn` mode:
    the previous stage's RoIs, refined by its deltas, minus those whose previous max IoU was 1 (the GT boxes
    inserted before) and minus empty boxes, get the GT boxes put in front again, and *all* of them are
    kept (no subsampling), foreground at IoU >= 0.6 / 0.7.
    Crowd GT boxes are not handled (the datasets drop them).
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
        # torchvision's LevelMapper is floor(level0 + log2(sqrt(area) / size0)) clamped to the pooled
        # levels, i.e. Paddle's distribute_fpn_proposals; canonical level/size are configured (spec §6.5).
        self.box_roi_pool = MultiScaleRoIAlign(list(featmap_names), resolution, sampling_ratio,
                                               canonical_scale=canonical_size, canonical_level=canonical_level)
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

    # -- target assignment ---------------------------------------------------------------------------
    def assign(self, stage: int, rois: torch.Tensor, prev_max_iou: torch.Tensor | None, target: dict):
        """One image. Returns (rois, labels with background 0, regression targets, max IoU with GT)."""
        gt, gt_labels = target["boxes"], target["labels"]
        if stage > 0:
            keep = (prev_max_iou < 1.0) & (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
            rois = rois[keep]
        cand = torch.cat([gt.to(rois.dtype), rois])
        if gt.numel() == 0:
            matched = torch.full((cand.shape[0],), -1, dtype=torch.long, device=cand.device)
            max_iou = torch.zeros(cand.shape[0], device=cand.device)
        else:
            iou = box_iou(gt, cand)
            max_iou = iou.max(0).values
            matched = self.matchers[stage](iou)  # >= thresh: gt index; below: -1 (background)
        if stage == 0:
            pos, neg = self.sampler([(matched >= 0).to(torch.long)])
            idx = torch.cat([torch.where(pos[0])[0], torch.where(neg[0])[0]])
        else:
            idx = torch.cat([torch.where(matched >= 0)[0], torch.where(matched < 0)[0]])
        cand, matched, max_iou = cand[idx], matched[idx], max_iou[idx]
        fg = matched >= 0
        labels = torch.zeros(cand.shape[0], dtype=torch.long, device=cand.device)
        reg = torch.zeros_like(cand)
        if fg.any():
            labels[fg] = gt_labels.to(cand.device)[matched[fg]] + 1
            reg[fg] = self.box_coders[stage].encode_single(gt[matched[fg]].to(cand.dtype), cand[fg])
        return cand, labels, reg, max_iou

    # -- stages ---------------------------------------------------------------------------------------
    def _pool(self, feats: "OrderedDict[str, torch.Tensor]", rois: list[torch.Tensor], padded_hw):
        return self.box_roi_pool(feats, rois, [tuple(padded_hw)] * len(rois))

    def refine(self, stage: int, rois: list[torch.Tensor], deltas: torch.Tensor,
               image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Stage-k RoIs decoded by its foreground deltas, clipped to the unpadded image. (Paddle's static
        `_decode_box` does not clip between stages; clipping keeps RoIAlign inside the image and only
        changes boxes that leave it.)"""
        boxes = self.box_coders[stage].decode_single(deltas, torch.cat(rois))
        out = []
        for b, hw in zip(boxes.split([len(r) for r in rois]), image_sizes):
            out.append(clip_boxes_to_image(b, hw))
        return out

    def forward_train(self, feats, proposals: list[torch.Tensor], image_sizes, padded_hw, targets):
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
            cls_logits, deltas = head(self._pool(feats, rois, padded_hw))
            fg = labels > 0
            loss_cls = F.cross_entropy(cls_logits, labels)
            loss_box = balanced_l1_loss(deltas[fg], reg_targets[fg], alpha, gamma, beta).sum() \
                / max(labels.numel(), 1)
            w = self.stage_loss_weights[k]
            losses[f"loss_cls_stage{k + 1}"] = loss_cls * w
            losses[f"loss_box_stage{k + 1}"] = loss_box * w
            if k + 1 < self.num_stages:
                rois = self.refine(k, rois, deltas.detach(), image_sizes)
        return losses

    @torch.no_grad()
    def forward_test(self, feats, proposals: list[torch.Tensor], image_sizes, padded_hw):
        """Returns per image a dict: `scores` [R, C+1] (mean of all stages' softmax on the last stage's
        RoI features, spec §6.6), `boxes` [R, 4] (last stage's RoIs decoded by its deltas, clipped),
        `stage_rois` (the RoIs each stage saw) and `stage_boxes` (each stage's own decoded boxes)."""
        rois = proposals
        stage_rois, stage_boxes = [], []
        for k, head in enumerate(self.stages):
            x = self._pool(feats, rois, padded_hw)
            cls_logits, deltas = head(x)
            stage_rois.append(rois)
            stage_boxes.append(self.refine(k, rois, deltas, image_sizes))
            if k + 1 < self.num_stages:
                rois = stage_boxes[-1]
        probs = cls_logits.softmax(-1)
        for head in self.stages[:-1]:  # earlier stages' classifiers on the last stage's RoI features
            probs = probs + head(x)[0].softmax(-1)
        probs = probs / self.num_stages
        n = [len(r) for r in rois]
        return [{"scores": s, "boxes": b, "stage_rois": [sr[i] for sr in stage_rois],
                 "stage_boxes": [sb[i] for sb in stage_boxes]}
                for i, (s, b) in enumerate(zip(probs.split(n), stage_boxes[-1]))]


# ----------------------------------------------------------------------------------------------------------
# the detector
class CascadeRCNN(DetectionModel):
    """Cascade R-CNN MobileNetV3-Large FPN (spec §6); `input_size` is the test-time *long* side (320/640).

    Inputs follow DetectionModel's convention. Eval: each image is resized so its long side equals
    input_size (aspect kept, spec §6.1/§6.7: Paddle's target_size = max_size) and padded to a multiple of
    32; boxes come back in original-image pixels. Train: when every target carries `image_size` (as
    `pocketdet.data.rcnn_aug.RCNNMultiScaleCollate` produces), the images are taken as already resized
    (multi-scale) and padded; otherwise they are resized like eval and the boxes scaled with them.
    """

    arch = "cascade_rcnn"

    def __init__(self, num_classes: int = 80, class_names=None, input_size: int = 320,
                 lr_mult_list=(0.25, 0.25, 0.5, 0.5, 0.75), freeze_norm: bool = True,
                 fpn_channels: int = 48, anchor_start_size: float = 16, aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_post_nms_top_n_train: int = 2000,
                 rpn_pre_nms_top_n_test: int = 300, rpn_post_nms_top_n_test: int = 100,
                 rpn_nms_thresh: float = 0.7, rpn_straddle_thresh: float = 0.0,
                 roi_levels=(2, 4), roi_canonical_level: int = 3, roi_canonical_size: int = 112,
                 roi_resolution: int = 7, roi_sampling_ratio: int = 2, mlp_dim: int = 128,
                 roi_batch_size_per_image: int = 512, roi_fg_fraction: float = 0.25,
                 stage_iou_thresholds=(0.5, 0.6, 0.7),
                 stage_box_weights=((10., 10., 5., 5.), (20., 20., 10., 10.), (30., 30., 15., 15.)),
                 stage_loss_weights=(1.0, 0.5, 0.25), balanced_l1=(0.5, 1.5, 1.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, keep_top_k: int = 100,
                 size_divisor: int = 32):
        super().__init__(num_classes, class_names, input_size)
        self.size_divisor = size_divisor
        self.backbone = MobileNetV3("large", 1.0, 1.0, taps=list(CASCADE_TAPS), lr_mult_list=list(lr_mult_list))
        self._init_backbone()
        if freeze_norm:
            freeze_batchnorm(self.backbone)
        self.fpn = PaddleFPN(self.backbone.channels, fpn_channels, min_level=2, max_level=6)
        levels = list(range(2, 7))
        strides = [2 ** lvl for lvl in levels]
        sizes = [anchor_start_size * 2 ** (lvl - 2) for lvl in levels]  # spec §6.4: one size per level
        anchor_gen = PaddleAnchorGenerator(sizes, list(aspect_ratios), strides)
        rpn_head = RPNHead(fpn_channels, len(aspect_ratios))  # 3x3 conv + ReLU, 1x1 cls, 1x1 box; N(0, .01)
        self.rpn = PaddleStyleRPN(
            anchor_gen, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            rpn_nms_thresh, straddle_thresh=rpn_straddle_thresh)
        lo, hi = roi_levels
        if not (2 <= lo <= hi <= 6):
            raise ValueError(f"roi_levels must lie within the FPN levels 2..6, got {tuple(roi_levels)}")
        self.roi_heads = CascadeRoIHeads(
            [f"p{lvl}" for lvl in range(lo, hi + 1)], roi_canonical_size, roi_canonical_level, fpn_channels,
            mlp_dim, num_classes + 1, roi_resolution, roi_sampling_ratio, roi_batch_size_per_image,
            roi_fg_fraction, stage_iou_thresholds, stage_box_weights, stage_loss_weights, balanced_l1)
        self.postprocess_cfg = dict(score_thresh=score_thresh, nms_thresh=nms_thresh, keep_top_k=keep_top_k)

    def _init_backbone(self):
        # only matters without ImageNet weights (Paddle starts from SSLD-pretrained weights, spec §6.2)
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def calibrate_frozen_norm(self, images) -> None:
        """Data-dependent init of the frozen backbone BN for training *without* pretrained weights: one
        forward pass over `images` (float 0..1, any sizes) sets every frozen BN's mean/variance to the
        statistics of its input, so each layer starts normalised. Frozen identity BN on a randomly
        initialised MobileNetV3 lets activations vanish (std ~1e-3 at C3 at init). Paddle always starts
        from ImageNet weights, whose BN statistics play this role. No-op with freeze_norm=False."""
        x, _ = self.prepare(images)

        def set_stats(mod, inputs):
            inp = inputs[0]
            mod.running_mean.copy_(inp.mean((0, 2, 3)))
            mod.running_var.copy_(inp.var((0, 2, 3), unbiased=False))

        hooks = [m.register_forward_pre_hook(set_stats) for m in self.backbone.modules()
                 if isinstance(m, FrozenBatchNorm2d)]
        try:
            self.backbone(x)
        finally:
            for h in hooks:
                h.remove()

    # -- training recipe hooks ------------------------------------------------------------------------
    def param_lr_mults(self) -> dict[str, float]:
        """Parameter-name prefix -> LR multiplier: the backbone's per-stage multipliers (spec §2.3) and
        1 / stage_loss_weight for the cascade heads (Paddle's `wb_scalar`, spec §6.5)."""
        out = {f"backbone.{k}": v for k, v in self.backbone.lr_mults.items()}
        for k, w in enumerate(self.roi_heads.stage_loss_weights):
            out[f"roi_heads.stages.{k}."] = 1.0 / w
        return out

    # -- resizing (aspect kept, spec §6.1) -------------------------------------------------------------
    def test_scale(self, h: int, w: int) -> float:
        """Paddle ResizeImage with target_size = max_size = input_size: the long side becomes input_size."""
        s = self.input_size / min(h, w)
        if round(s * max(h, w)) > self.input_size:
            s = self.input_size / max(h, w)
        return s

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.test_scale(h, w)
        return max(1, round(h * s)), max(1, round(w * s))

    def input_wh(self, w: int, h: int) -> tuple[int, int]:
        nh, nw = self.resized_size(h, w)
        return nw, nh

    def resize_images(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resize each image so its long side is input_size (bilinear without antialiasing, like Paddle's
        cv2 INTER_LINEAR), pad the batch to a multiple of 32. Returns (batch, original sizes)."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images of shape [N,3,H,W], got {tuple(images.shape)}")
            images = list(images)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        out = []
        for im, (h, w) in zip(images, sizes):
            nh, nw = self.resized_size(h, w)
            im = im.float()
            if (nh, nw) != (h, w):
                im = F.interpolate(im[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            out.append(im)
        return self.pad_batch(out), sizes

    def pad_batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        d = self.size_divisor
        hp = math.ceil(max(im.shape[-2] for im in images) / d) * d
        wp = math.ceil(max(im.shape[-1] for im in images) / d) * d
        batch = images[0].new_zeros((len(images), 3, hp, wp))
        for b, im in zip(batch, images):
            b[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        return batch

    def scale_targets(self, targets, sizes):
        out = []
        for t, (h, w) in zip(targets, sizes):
            nh, nw = self.resized_size(h, w)
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=t["boxes"].device)
            out.append({**t, "boxes": t["boxes"].float() * scale,
                        "image_size": torch.tensor([nh, nw], device=t["boxes"].device)})
        return out

    def _normalize_padded(self, x: torch.Tensor, valid: list[tuple[int, int]]) -> torch.Tensor:
        """Normalise, then zero the padding: Paddle pads after NormalizeImage (PadBatch, spec §6.7)."""
        x = self.normalize(x)
        if any((h, w) != tuple(x.shape[-2:]) for h, w in valid):
            mask = torch.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
            for m, (h, w) in zip(mask, valid):
                m[:, :h, :w] = 1
            x = x * mask
        return x

    def prepare(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Eval pre-processing: (normalised, padded batch, original (h, w) per image)."""
        x, sizes = self.resize_images(images)
        return self._normalize_padded(x, [self.resized_size(h, w) for h, w in sizes]), sizes

    # -- entry point ------------------------------------------------------------------------------------
    def forward(self, images, targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            if all("image_size" in t for t in targets):  # already resized + padded by the collate
                if not isinstance(images, torch.Tensor):
                    images = self.pad_batch([im.float() for im in images])
                x = images.float()
            else:
                x, sizes = self.resize_images(images)
                targets = self.scale_targets(targets, sizes)
            valid = [(int(t["image_size"][0]), int(t["image_size"][1])) for t in targets]
            return self.compute_loss(self._normalize_padded(x, valid), targets)
        x, sizes = self.prepare(images)
        return self.postprocess(self.forward_raw(x), sizes)

    def forward_raw(self, x: torch.Tensor):
        """Dense part: (FPN features [P2..P6], RPN objectness logits per level, RPN deltas per level)."""
        feats = list(self.fpn(self.backbone(x)).values())
        objectness, deltas = self.rpn.head(feats)
        return feats, objectness, deltas

    def _feature_dict(self, feats: list[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(zip(self.fpn.level_names, feats))

    def anchors_for(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.rpn.anchor_generator.anchors_for_grids([tuple(f.shape[-2:]) for f in feats],
                                                           feats[0].dtype, feats[0].device)

    def compute_loss(self, x: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        """`targets[i]["image_size"]` is the unpadded (h, w) of image i inside x (default: all of x)."""
        hw = tuple(x.shape[-2:])
        targets = [t if "image_size" in t else {**t, "image_size": torch.tensor(hw)} for t in targets]
        targets = [{**t, "boxes": t["boxes"].float().to(x.device), "labels": t["labels"].to(x.device)}
                   for t in targets]
        valid = [(int(t["image_size"][0]), int(t["image_size"][1])) for t in targets]
        feats, objectness, deltas = self.forward_raw(x)
        proposals, losses = self.rpn.proposals_from_head(objectness, deltas, feats, valid, targets)
        losses.update(self.roi_heads.forward_train(self._feature_dict(feats), proposals, valid, hw, targets))
        return losses

    # -- inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def cascade_outputs(self, raw, sizes) -> list[dict]:
        """RPN + the three stages on `forward_raw` output; boxes in resized-input pixels."""
        feats, objectness, deltas = raw
        valid = [self.resized_size(h, w) for h, w in sizes]
        proposals, _ = self.rpn.proposals_from_head(objectness, deltas, feats, valid)
        hw = (feats[0].shape[-2] * 4, feats[0].shape[-1] * 4)
        return self.roi_heads.forward_test(self._feature_dict(feats), proposals, valid, hw)

    def postprocess(self, raw, sizes):
        outs = self.cascade_outputs(raw, sizes)
        return [postprocess_detections(o["scores"], o["boxes"], self.test_scale(h, w), (h, w),
                                       self.postprocess_cfg) for o, (h, w) in zip(outs, sizes)]


def postprocess_detections(scores: torch.Tensor, boxes: torch.Tensor, scale: float, orig_hw: tuple[int, int],
                           cfg: dict) -> dict[str, torch.Tensor]:
    """Class-wise NMS on class-agnostic boxes (spec §6.6): background (column 0) skipped, score >
    score_thresh, IoU nms_thresh, best keep_top_k overall; boxes divided by the resize scale and clipped to
    the original image. Labels are 0-based (column c+1 -> label c)."""
    boxes = clip_boxes_to_image(boxes / scale, orig_hw)
    fg = scores[:, 1:]
    r, c = torch.where(fg > cfg["score_thresh"])
    sc, bx = fg[r, c], boxes[r]
    keep = batched_nms(bx, sc, c, cfg["nms_thresh"])[: cfg["keep_top_k"]]
    return {"boxes": bx[keep], "scores": sc[keep], "labels": c[keep]}


class RoIStagesExport(nn.Module):
    """The proposal-dependent half of the detector for export (one image): pooled levels + RoIs
    [R, 4] (resized-input pixels) + the unpadded (h, w) as a tensor -> (scores [R, C+1], boxes [R, 4])."""

    def __init__(self, model: CascadeRCNN):
        super().__init__()
        self.roi_heads = model.roi_heads
        self.names = model.roi_heads.box_roi_pool.featmap_names

    def forward(self, *args):
        *levels, rois, image_hw = args
        feats = OrderedDict(zip(self.names, levels))
        stride = 2 ** int(self.names[0][1:])  # first pooled level, e.g. p2 -> 4
        padded_hw = (levels[0].shape[-2] * stride, levels[0].shape[-1] * stride)
        heads = self.roi_heads
        x = heads.box_roi_pool(feats, [rois], [padded_hw])
        for k, head in enumerate(heads.stages):
            if k > 0:
                x = heads.box_roi_pool(feats, [rois], [padded_hw])
            cls_logits, deltas = head(x)
            rois = heads.box_coders[k].decode_single(deltas, rois)
            rois = torch.stack([rois[:, 0].clamp(min=0).minimum(image_hw[1]),
                                rois[:, 1].clamp(min=0).minimum(image_hw[0]),
                                rois[:, 2].clamp(min=0).minimum(image_hw[1]),
                                rois[:, 3].clamp(min=0).minimum(image_hw[0])], dim=1)
        probs = cls_logits.softmax(-1)
        for head in heads.stages[:-1]:
            probs = probs + head(x)[0].softmax(-1)
        return probs / len(heads.stages), rois
