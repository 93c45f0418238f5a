"""Cascade R-CNN's RPN: the static graph's anchors and proposals on torchvision's RegionProposalNetwork.

Data flow (eval): FPN levels -> shared RPN head (3x3 conv + ReLU, 1x1 objectness, 1x1 deltas; run by
`CascadeRCNN.forward_raw`) -> `StaticAnchorGenerator` anchors -> `PaddleStyleRPN.static_proposals`:
per level the best `pre_nms_top_n` by objectness, decoded and clipped with the +1 pixel convention
(`pixel_boxes`), NMS per level, the best `post_nms_top_n` over all levels. Boxes are inclusive
(x2 = last pixel), in padded-input pixels, as the static ops hold them.
Training keeps torchvision's target assignment, sampling and losses, on the continuous version of the same
anchors (`pixel_boxes.to_continuous`), so the deltas it learns are the ones the +1 decode inverts.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import box_iou

from . import pixel_boxes


class StaticAnchorGenerator(nn.Module):
    """The static `anchor_generator` op per FPN level (spec §6.4): one size per level, stride 2^level,
    offset 0.5, the cell's base box rounded before scaling, +1 widths (`pixel_boxes.static_cell_anchors`).
    Level-major, then row, column, ratio, as the op and torchvision's `concat_box_prediction_layers`."""

    def __init__(self, sizes: list[float], aspect_ratios: list[float], strides: list[int]):
        super().__init__()
        self.sizes = [float(s) for s in sizes]
        self.aspect_ratios = [float(a) for a in aspect_ratios]
        self.strides = [int(s) for s in strides]
        self.cells = [pixel_boxes.static_cell_anchors(s, self.aspect_ratios, st)
                      for s, st in zip(self.sizes, self.strides)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(self.aspect_ratios)] * len(self.sizes)

    def per_level(self, grid_sizes, device=None) -> list[torch.Tensor]:
        return [pixel_boxes.grid_anchors(tuple(g), c.to(device), st)
                for g, c, st in zip(grid_sizes, self.cells, self.strides)]

    def anchors_for_grids(self, grid_sizes, dtype=torch.float32, device=None) -> torch.Tensor:
        """All anchors [sum_l H_l*W_l*A, 4], inclusive boxes in input pixels."""
        return torch.cat(self.per_level(grid_sizes, device)).to(dtype)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        a = self.anchors_for_grids([f.shape[-2:] for f in feature_maps], feature_maps[0].dtype,
                                   feature_maps[0].device)
        return [a for _ in image_list.image_sizes]


class PaddleStyleRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork driven from pre-computed head outputs, with the static graph's
    proposal step and Paddle's `straddle_thresh`.

    Proposals (`generate_proposals` per level + `collect_fpn_proposals`, spec §6.4): per level the
    `pre_nms_top_n` best scores, deltas decoded on the anchors (+1 widths, dw/dh clamped at
    log(1000/16)), clipped to the *padded* input (the static reader's `PadBatch` rewrites im_info to the
    padded size), boxes with x2 < x1 dropped (min_size 0 means 1 px with +1 widths), NMS with the +1 IoU,
    then the best `post_nms_top_n` over all levels. Keeping the per-level post-NMS top-n first changes
    nothing when it equals the final n (2000/2000 train, 100/100 test): a box in the global top-n is in
    its level's top-n.
    Training (torchvision semantics equal Paddle's `rpn_target_assign`): IoU >= 0.7 positive, < 0.3
    negative, plus every GT's best anchor(s); 256 anchors/img at positive fraction 0.5; sigmoid CE over the
    sampled anchors, smooth-L1 (beta 1/9) summed over positives / number sampled. Matching and encoding use
    the continuous boxes (inclusive + 1). straddle_thresh 0: anchors crossing the (unpadded) image border
    are ignored, also for the "best anchor per GT" rule; torchvision has no such option (below).
    """

    def __init__(self, *args, straddle_thresh: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.straddle_thresh = straddle_thresh

    def assign_targets_to_anchors(self, anchors, targets):
        """anchors: continuous boxes per image."""
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

    def static_proposals(self, objectness: list[torch.Tensor], deltas: list[torch.Tensor], image: int,
                         anchors: list[torch.Tensor], padded_hw: tuple[int, int]) -> torch.Tensor:
        """Proposals [R, 4] (inclusive, padded-input pixels, best first) of image `image`.
        objectness[l]: [N, A, H, W] logits; deltas[l]: [N, 4A, H, W]; anchors[l]: [H*W*A, 4]."""
        pre_n, post_n = self.pre_nms_top_n(), self.post_nms_top_n()
        boxes, scores, levels = [], [], []
        for lvl, (lg, dl, an) in enumerate(zip(objectness, deltas, anchors)):
            a, gh, gw = lg.shape[1:]
            # ranked by logit, (H, W, A) order as the op: the op ranks sigmoid scores, the same order except
            # among logits whose float32 sigmoids are equal, where its own order is arbitrary too
            logit = lg[image].permute(1, 2, 0).reshape(-1)
            d = dl[image].reshape(a, 4, gh, gw).permute(2, 3, 0, 1).reshape(-1, 4)
            top, idx = logit.topk(min(pre_n, logit.numel()))
            b = pixel_boxes.decode(d[idx], an[idx], (1.0, 1.0, 1.0, 1.0), pixel_boxes.RPN_DWH_CLIP)
            b = pixel_boxes.clip(b, *padded_hw)
            keep = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
            boxes.append(b[keep])
            scores.append(top[keep])
            levels.append(torch.full((int(keep.sum()),), lvl, device=b.device))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        keep = pixel_boxes.nms(boxes, scores, levels, self.nms_thresh)[:post_n]
        return boxes[keep]

    def proposals_from_head(self, objectness: list[torch.Tensor], deltas: list[torch.Tensor],
                            features: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                            targets: list[dict] | None = None, padded_hw: tuple[int, int] | None = None):
        """The second half of RegionProposalNetwork.forward, on head outputs computed elsewhere
        (`forward_raw`). Returns (proposals per image, losses). padded_hw: the input's size (default:
        the first level's size times its stride)."""
        gen = self.anchor_generator
        per_level = gen.per_level([f.shape[-2:] for f in features], features[0].device)
        if padded_hw is None:
            padded_hw = (features[0].shape[-2] * gen.strides[0], features[0].shape[-1] * gen.strides[0])
        with torch.no_grad():
            boxes = [self.static_proposals([o.detach() for o in objectness], [d.detach() for d in deltas], i,
                                           per_level, padded_hw) for i in range(len(image_sizes))]
        losses = {}
        if targets is not None:
            anchors = pixel_boxes.to_continuous(torch.cat(per_level))
            obj, dl = concat_box_prediction_layers(objectness, deltas)
            labels, matched = self.assign_targets_to_anchors([anchors] * len(targets), targets)
            reg_targets = self.box_coder.encode(matched, [anchors] * len(targets))
            loss_obj, loss_reg = self.compute_loss(obj, dl, labels, reg_targets)
            losses = {"loss_rpn_cls": loss_obj, "loss_rpn_reg": loss_reg}
        return boxes, losses
