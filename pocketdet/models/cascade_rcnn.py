"""Cascade R-CNN with a MobileNetV3-Large FPN, as PaddleDetection's static mobile configs (spec §6).

Structure (spec §6.2-6.6), built from torchvision detection pieces where their semantics fit:
  MobileNetV3-Large taps C2/C3/C4 (expand-conv outputs of conv5/conv8/conv14, 72/240/672 ch), BN frozen
  -> FPN 48 ch, P2-P6 (`fpn.PaddleFPN` on torchvision's FeaturePyramidNetwork)
  -> RPN (`cascade_rpn`: torchvision RegionProposalNetwork + RPNHead, one anchor size per level, 3 ratios)
  -> 3 cascade stages (`cascade_heads`): RoIAlign 7x7 -> 2 x FC-128 -> 81-way softmax + class-agnostic deltas.

Static-graph conventions. The zoo entries exist to run the official weights, which were trained and
evaluated by PaddlePaddle's static graph, so inference reproduces its box conventions, each checked
against the legacy op in tests/test_cascade_static.py (fixture tests/fixtures/cascade_static_ops.npz,
written by tools/cascade_static_reference.py; end to end against Paddle: tools/cascade_static_e2e.py):
  - pre-processing: `cv2.resize(fx=fy=scale)` of the static `ResizeImage`: output size round(side * scale)
    but sampled with the exact scale, not the rounded size ratio (`resize_images`);
  - anchors: `anchor_generator` (stride-sized base box rounded half up, then scaled; +1 widths);
  - proposals: `generate_proposals` per level + `collect_fpn_proposals`: +1 decode, clipped to the *padded*
    input, NMS with +1 IoU;
  - RoI levels: `distribute_fpn_proposals` with the +1 area; RoIAlign: the legacy `roi_align`
    (= torchvision aligned=False on the inclusive box);
  - between stages: `box_coder` decode with +1 widths, no clipping, no dw/dh clamp;
  - final boxes: the stage-3 RoIs divided by the resize scale, decoded in original-image pixels, clipped to
    width-1 / height-1 (`box_clip`); `multiclass_nms` with normalized=False (+1 IoU).
  Inside, boxes are inclusive (x2 = last pixel, `pixel_boxes`). Detections are returned continuous
  (x2 + 1): the box static PaddleDetection writes to its COCO results (w = x2 - x1 + 1).

Deployment split (what `forward_raw` is): the dense network runs once per image and is what the exporter
traces; everything after it depends on the proposals, so it is a second, small graph:
  1. `forward_raw(x)` -> (features [P2..P6], RPN objectness logits per level [N,3,H,W], RPN deltas per
     level [N,12,H,W]). Anchors for an input shape come from `model.anchors_for(features)`.
  2. host code: the proposals (`model.rpn.static_proposals` is the reference implementation).
  3. `RoIStagesExport(model)(P2..P4 [or P5], rois [R,4], image_info)` -> (scores [R,81] softmax, background
     at 0; boxes [R,4] inclusive, original pixels): RoIAlign + the three stages + the final decode, one
     image at a time; image_info = (original h, original w, resize scale).
  4. host code: class-wise NMS (score 0.05, +1 IoU 0.5, top 100), boxes + 1 (`postprocess_detections`).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d

from . import pixel_boxes
from .base import DetectionModel
from .cascade_heads import CascadeRoIHeads, balanced_l1_loss  # noqa: F401  (balanced_l1_loss: re-export)
from .cascade_rpn import PaddleStyleRPN, StaticAnchorGenerator
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
# the detector
class CascadeRCNN(DetectionModel):
    """Cascade R-CNN MobileNetV3-Large FPN (spec §6); `input_size` is the test-time *long* side (320/640).

    Inputs follow DetectionModel's convention. Eval: each image is resized so its long side equals input_size
    (aspect kept, spec §6.1/§6.7: Paddle's target_size = max_size) and padded to a multiple of 32; boxes come
    back in original-image pixels (continuous; the static conventions: module docstring). Train: when every
    target carries `image_size` (as `pocketdet.data.rcnn_aug.RCNNMultiScaleCollate` produces), the images are
    taken as already resized (multi-scale) and padded; otherwise they are resized like eval and the boxes scaled
    with them.
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
        anchor_gen = StaticAnchorGenerator(sizes, list(aspect_ratios), strides)
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
        """The decode-size hint of `predict` (`models/inputs.py`): the full image. The static reader resizes
        the fully decoded photo with cv2; a reduced JPEG decode (DCT scaling) would give other pixels, and
        the official weights' detections are reproduced only from the static reader's input."""
        return w, h

    def resize_images(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resize each image so its long side is input_size, pad the batch to a multiple of 32. Returns
        (batch, original sizes). The resize is the static reader's `cv2.resize(fx=fy=scale, INTER_LINEAR)`:
        bilinear without antialiasing, output size round(side * scale), and source positions
        (dst + 0.5) / scale - 0.5 with the exact scale (not the rounded size ratio, which is what
        `F.interpolate(size=...)` would use; the two differ when side * scale is fractional)."""
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
                s = self.test_scale(h, w)
                im = torch.ops.aten.upsample_bilinear2d(im[None], [nh, nw], False, s, s)[0]
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
        proposals, losses = self.rpn.proposals_from_head(objectness, deltas, feats, valid, targets, hw)
        losses.update(self.roi_heads.forward_train(self._feature_dict(feats), proposals, targets))
        return losses

    # -- inference -----------------------------------------------------------------------------------------
    def image_info(self, h: int, w: int, device=None) -> torch.Tensor:
        """(original h, original w, resize scale): what the static graph's im_shape / im_info carry."""
        return torch.tensor([float(h), float(w), self.test_scale(h, w)], device=device)

    @torch.no_grad()
    def cascade_outputs(self, raw, sizes) -> list[dict]:
        """RPN + the three stages on `forward_raw` output (`CascadeRoIHeads.forward_test` per image)."""
        feats, objectness, deltas = raw
        valid = [self.resized_size(h, w) for h, w in sizes]
        proposals, _ = self.rpn.proposals_from_head(objectness, deltas, feats, valid)
        infos = [self.image_info(h, w, feats[0].device) for h, w in sizes]
        return self.roi_heads.forward_test(self._feature_dict(feats), proposals, infos)

    def postprocess(self, raw, sizes):
        outs = self.cascade_outputs(raw, sizes)
        return [postprocess_detections(o["scores"], o["boxes"], self.postprocess_cfg) for o in outs]


def postprocess_detections(scores: torch.Tensor, boxes: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """The static `multiclass_nms` (normalized=False) on class-agnostic boxes (spec §6.6): background
    (column 0) skipped, score > score_thresh, class-wise NMS with the +1 IoU at nms_thresh, the best
    keep_top_k overall. `boxes`: inclusive, original pixels, already clipped (`stages_one_image`).
    Returned boxes are continuous (x2 + 1); labels 0-based (column c+1 -> label c)."""
    fg = scores[:, 1:]
    r, c = torch.where(fg > cfg["score_thresh"])
    sc, bx = fg[r, c], boxes[r]
    keep = pixel_boxes.nms(bx, sc, c, cfg["nms_thresh"])[: cfg["keep_top_k"]]
    return {"boxes": pixel_boxes.to_continuous(bx[keep]), "scores": sc[keep], "labels": c[keep]}


class RoIStagesExport(nn.Module):
    """The proposal-dependent half of the detector for export (one image): pooled levels + RoIs [R, 4]
    (inclusive, input pixels) + image_info (original h, original w, resize scale) as a tensor ->
    (scores [R, C+1], boxes [R, 4] inclusive in original pixels), `CascadeRoIHeads.stages_one_image`."""

    def __init__(self, model: CascadeRCNN):
        super().__init__()
        self.roi_heads = model.roi_heads

    def forward(self, *args):
        *levels, rois, image_info = args
        scores, boxes, _, _ = self.roi_heads.stages_one_image(list(levels), rois, image_info)
        return scores, boxes
