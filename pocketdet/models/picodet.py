"""PP-PicoDet (PaddleDetection 2.6 configs/picodet, the `*_coco_lcnet` models): LCNet + LCPAN + PicoHeadV2.

image [N,3,S,S] (stretched, ImageNet-normalised)
 -> LCNet (`lcnet.py`): C3, C4, C5 at strides 8/16/32
 -> LCPAN (`lcpan.py`): 4 levels of `neck_channels` at strides 8/16/32/64
 -> PicoHeadV2 (`picodet_head.py`): per level class probabilities [N,C,H,W] and 4 x (reg_max+1) bin logits
 == `head_outputs(x)`; training losses read these (and `anchor_points`), see `picodet_loss.py`
 -> decode in the graph: softmax over the bins, expected distance d (grid cells), anchor point
    p = (i + cell_offset) * stride, box = (p - d_lt * stride, p + d_rb * stride) in input pixels
 == `forward_raw(x)` -> scores [N,P,C], boxes [N,P,4]: the exported graph (everything before NMS)
 -> `postprocess`: boxes to each original image's pixels, class-wise NMS (ppdet MultiClassNMS).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import DetectionModel
from .lcnet import LCNet
from .lcpan import LCPAN
from .picodet_head import PicoHeadV2
from .picodet_loss import PicoLossCfg, picodet_loss
from .ssdlite import nms_per_class

# width of LCNet, neck/head channels and head tower depth per size, from the v2.6.0 configs
PICODET_VARIANTS: dict[str, dict] = {
    "xs": dict(backbone_scale=0.35, neck_channels=96, head_convs=2),
    "s": dict(backbone_scale=0.75, neck_channels=96, head_convs=2),
    "m": dict(backbone_scale=1.5, neck_channels=128, head_convs=4),
    "l": dict(backbone_scale=2.0, neck_channels=160, head_convs=4),
}


class PicoDet(DetectionModel):
    arch = "picodet"
    multiscale_multiple = 32  # the reader's BatchRandomResize: 256..384 for the 320 models

    def __init__(self, variant: str = "s", num_classes: int = 80, class_names=None, input_size: int = 320,
                 backbone_scale: float | None = None, neck_channels: int | None = None,
                 head_convs: int | None = None, neck_kernel: int = 5, strides=(8, 16, 32, 64), reg_max: int = 7,
                 use_align_head: bool = True, prior_prob: float = 0.01, cell_offset: float = 0.5,
                 grid_cell_scale: float = 5.0, score_thresh: float = 0.025, nms_thresh: float = 0.6,
                 nms_top_k: int = 1000, keep_top_k: int = 100):
        super().__init__(num_classes, class_names, input_size)
        if variant not in PICODET_VARIANTS:
            raise ValueError(f"unknown PicoDet variant {variant!r}; expected one of {sorted(PICODET_VARIANTS)}")
        v = PICODET_VARIANTS[variant]
        self.variant = variant
        self.backbone_scale = v["backbone_scale"] if backbone_scale is None else backbone_scale
        neck_channels = v["neck_channels"] if neck_channels is None else neck_channels
        head_convs = v["head_convs"] if head_convs is None else head_convs
        self.strides = [int(s) for s in strides]
        if len(self.strides) not in (3, 4):
            raise ValueError(f"PicoDet needs 3 or 4 strides, got {self.strides}")
        self.reg_max, self.cell_offset, self.grid_cell_scale = int(reg_max), float(cell_offset), float(grid_cell_scale)
        self.backbone = LCNet(self.backbone_scale, feature_maps=(3, 4, 5))
        self.neck = LCPAN(self.backbone.channels, neck_channels, neck_kernel, num_features=len(self.strides))
        self.head = PicoHeadV2(num_classes, neck_channels, self.strides, head_convs, self.reg_max, prior_prob,
                               use_align_head)
        self.postprocess_cfg = dict(score_thresh=score_thresh, nms_thresh=nms_thresh, nms_top_k=nms_top_k,
                                    keep_top_k=keep_top_k)
        self._anchor_cache: dict = {}
        self.loss_cfg = PicoLossCfg(num_classes, tuple(self.strides), self.reg_max, self.cell_offset,
                                    self.grid_cell_scale)
        # ATSS (PicoHeadV2's static_assigner) instead of the task-aligned assigner: the trainer sets this per
        # iteration from train.extra.static_assigner_iters (engine/family_hooks.py)
        self.use_static_assigner = False
        self._init_weights()

    def _init_weights(self):
        """Paddle's initialisers: LCNet Kaiming-normal, LCPAN Kaiming-uniform (fan in); the head sets its own."""
        for part, init in ((self.backbone, nn.init.kaiming_normal_), (self.neck, nn.init.kaiming_uniform_)):
            for m in part.modules():
                if isinstance(m, nn.Conv2d):
                    init(m.weight, mode="fan_in", nonlinearity="relu" if init is nn.init.kaiming_normal_
                         else "leaky_relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    # -- dense network ------------------------------------------------------------------------------
    def head_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised batch -> (class probabilities [N,C,H,W], distribution logits [N,4*(reg_max+1),H,W])
        per level, fine to coarse; the probabilities are PicoHeadV2's aligned scores, as in training."""
        return self.head(self.neck(self.backbone(x)))

    def anchor_points(self, feat_sizes, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell centres (i + cell_offset) * stride as [P,2] (x, y) input pixels, and each one's stride [P,1],
        levels concatenated fine to coarse, rows in row-major (y, x) order. Cached per size: constants in an
        exported graph."""
        sizes = tuple((int(h), int(w)) for h, w in feat_sizes)
        key = (sizes, device, dtype)
        if key not in self._anchor_cache:
            pts, strides = [], []
            for (h, w), s in zip(sizes, self.strides):
                ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                        indexing="ij")
                pts.append((torch.stack([xs, ys], -1).reshape(-1, 2) + self.cell_offset) * s)
                strides.append(torch.full((h * w, 1), float(s), dtype=torch.float64))
            self._anchor_cache[key] = (torch.cat(pts).to(device, dtype), torch.cat(strides).to(device, dtype))
        return self._anchor_cache[key]

    def decode(self, reg_dists: list[torch.Tensor]) -> torch.Tensor:
        """Distribution logits per level -> boxes [N,P,4] xyxy in input pixels (ppdet's eval decode)."""
        dists = torch.cat([r.flatten(2).transpose(1, 2) for r in reg_dists], 1)  # [N,P,4*(reg_max+1)]
        d = self.head.distribution_project(dists)  # [N,P,4] in grid cells
        pts, strides = self.anchor_points([r.shape[-2:] for r in reg_dists], d.device, d.dtype)
        d = d * strides
        return torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1)

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised batch -> (scores [N,P,C] probabilities, boxes [N,P,4] xyxy input pixels): the export."""
        cls_scores, reg_dists = self.head_outputs(x)
        scores = torch.cat([s.flatten(2) for s in cls_scores], 2).transpose(1, 2)
        return scores, self.decode(reg_dists)

    # -- training -----------------------------------------------------------------------------------
    def compute_loss(self, x, targets):
        """{"loss_vfl", "loss_bbox", "loss_dfl"} of PicoHeadV2 (`picodet_loss.py`), with ATSS assignment while
        `use_static_assigner`, task-aligned after."""
        cls_scores, reg_dists = self.head_outputs(x)
        return picodet_loss(cls_scores, reg_dists, targets, self.loss_cfg, self.use_static_assigner)

    # -- inference ----------------------------------------------------------------------------------
    def postprocess(self, raw, sizes):
        """Boxes divided by each image's resize factor (input / original, as ppdet's scale_factor), then
        class-wise NMS: per class the nms_top_k best above score_thresh, IoU nms_thresh (no +1: boxes are
        `normalized` in ppdet's MultiClassNMS), keep_top_k overall. Boxes are not clipped (ppdet does not)."""
        scores, boxes = raw
        s = float(self.input_size)
        out = []
        for b, sc, (h, w) in zip(boxes, scores, sizes):
            scale = b.new_tensor([s / w, s / h, s / w, s / h])
            out.append(nms_per_class(b / scale, sc, self.postprocess_cfg, (1, 1)))
        return out
