"""Paddle reference for PP-PicoDet's assigners and loss (run with `.venv-paddle/bin/python`, see `make paddle-env`).

Feeds seeded inputs to paddledet 2.6.0's own `ATSSAssigner`, `TaskAlignedAssigner` and `PicoHeadV2.get_loss`
(configured as configs/picodet/_base_/picodet_v2.yml: ATSS topk 9, TAL topk 13 / alpha 1 / beta 6, VFL
use_sigmoid False + iou_weighted, DFL 0.5, GIoU 2.5, reg_max 7, cell offset 0.5, grid cell 5) and stores inputs
and outputs in tests/fixtures/picodet_loss.npz, which tests/test_picodet_loss.py compares pocketdet against.

    .venv-paddle/bin/python tools/picodet_loss_reference.py [--out tests/fixtures/picodet_loss.npz]

Everything runs in float64 (the anchors too: `generate_anchors_for_grid_cell` is called with dtype float64),
so assignments can be compared exactly and losses to 1e-5. Predicted boxes are decoded by the head's own
`distribution_project` (Integral) and `batch_distance2bbox`, as in `PicoHeadV2.forward_train`.
Inputs are stored small and exact: class probabilities (k + 0.5) / 256, box logits k / 8 (int8).
Batch: 4 images with 3, 0, 7 and 1 GTs padded to 7 (nested and overlapping boxes in image 2: anchors that
are positive for several GTs); a 128 x 128 input with maps 16, 8, 4 and 3 cells wide (3: ATSS takes 9 per level).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import paddle

import ppdet.modeling.heads.pico_head as pico_head
from ppdet.modeling.assigners import ATSSAssigner, TaskAlignedAssigner
from ppdet.modeling.assigners.utils import generate_anchors_for_grid_cell
from ppdet.modeling.bbox_utils import batch_distance2bbox, bbox_center
from ppdet.modeling.heads.pico_head import PicoFeat, PicoHeadV2
from ppdet.modeling.losses.gfocal_loss import DistributionFocalLoss
from ppdet.modeling.losses.iou_loss import GIoULoss
from ppdet.modeling.losses.varifocal_loss import VarifocalLoss

ROOT = Path(__file__).resolve().parents[1]
CLASSES, REG_MAX, STRIDES = 4, 7, [8, 16, 32, 64]
FEAT_SIZES = [(16, 16), (8, 8), (4, 4), (3, 3)]
GT_COUNTS = [3, 0, 7, 1]


def make_inputs(rng) -> dict:
    num_anchors = sum(h * w for h, w in FEAT_SIZES)
    b, n = len(GT_COUNTS), max(GT_COUNTS)
    score_k = rng.integers(0, 256, (b, num_anchors, CLASSES)).astype(np.uint8)
    reg_k = np.clip(np.round(rng.normal(0, 1.5, (b, num_anchors, 4 * (REG_MAX + 1))) * 8), -127, 127).astype(np.int8)
    boxes = np.zeros((b, n, 4))
    labels = np.zeros((b, n), np.int64)
    for i, k in enumerate(GT_COUNTS):
        xy = rng.uniform(0, 100, (k, 2))
        wh = rng.uniform(6, 110, (k, 2))
        boxes[i, :k] = np.concatenate([xy, np.minimum(xy + wh, 128.0)], 1)
        labels[i, :k] = rng.integers(0, CLASSES, k)
    # image 2: a box nested in its first one (same centre, half size) and one a few pixels off (not just shifted:
    # two boxes of one size inside the same prediction have the same IoU, a tie only rounding would break)
    c, half = (boxes[2, 0, :2] + boxes[2, 0, 2:]) / 2, (boxes[2, 0, 2:] - boxes[2, 0, :2]) / 2
    boxes[2, 1] = np.concatenate([c - half / 2, c + half / 2])
    boxes[2, 2] = np.minimum(boxes[2, 0] + np.array([3.3, 2.1, 7.9, 1.3]), 128.0)
    mask = np.zeros((b, n), bool)
    for i, k in enumerate(GT_COUNTS):
        mask[i, :k] = True
    return {"score_k": score_k, "reg_k": reg_k, "gt_boxes": boxes, "gt_labels": labels, "gt_mask": mask}


def build_head() -> PicoHeadV2:
    # the feature convs are never run (only get_loss and the box decode are): smallest valid PicoFeat
    feat = PicoFeat(feat_in=8, feat_out=8, num_fpn_stride=4, num_convs=1, share_cls_reg=True, use_se=True)
    head = PicoHeadV2(conv_feat=feat, num_classes=CLASSES, fpn_stride=STRIDES, use_align_head=True,
                      loss_class=VarifocalLoss(use_sigmoid=False, iou_weighted=True, loss_weight=1.0),
                      loss_dfl=DistributionFocalLoss(loss_weight=0.5), loss_bbox=GIoULoss(loss_weight=2.5),
                      static_assigner_epoch=100, static_assigner=ATSSAssigner(topk=9, num_classes=CLASSES),
                      assigner=TaskAlignedAssigner(topk=13, alpha=1.0, beta=6.0), reg_max=REG_MAX, feat_in_chan=8,
                      cell_offset=0.5, grid_cell_scale=5.0)
    head.distribution_project.project = head.distribution_project.project.astype("float64")
    head.train()
    return head


def decode(head, reg: paddle.Tensor) -> paddle.Tensor:
    """PicoHeadV2.forward_train's box branch per level: integral * stride around the cell centre, / stride."""
    out, start = [], 0
    for (h, w), stride in zip(FEAT_SIZES, STRIDES):
        y, x = head.get_single_level_center_point([h, w], stride, cell_offset=0.5)
        centres = paddle.stack([x, y], -1).astype("float64")
        lvl = reg[:, start:start + h * w]
        dist = head.distribution_project(lvl).reshape([reg.shape[0], h * w, 4]) * stride
        out.append(batch_distance2bbox(centres, dist) / stride)
        start += h * w
    return paddle.concat(out, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "picodet_loss.npz")
    args = ap.parse_args()
    paddle.set_device("cpu")
    inp = make_inputs(np.random.default_rng(0))
    scores = paddle.to_tensor((inp["score_k"].astype(np.float64) + 0.5) / 256)
    reg = paddle.to_tensor(inp["reg_k"].astype(np.float64) / 8)
    head = build_head()
    pred_boxes = decode(head, reg)
    # the head's anchors in float64 (its call uses the float32 default)
    pico_head.generate_anchors_for_grid_cell = functools.partial(generate_anchors_for_grid_cell, dtype="float64")
    feats = [paddle.zeros([len(GT_COUNTS), 1, h, w], dtype="float64") for h, w in FEAT_SIZES]
    anchors, _, counts, stride_t = pico_head.generate_anchors_for_grid_cell(feats, STRIDES, 5.0, 0.5)
    gt_meta = {"gt_class": paddle.to_tensor(inp["gt_labels"][..., None]),
               "gt_bbox": paddle.to_tensor(inp["gt_boxes"]),
               "pad_gt_mask": paddle.to_tensor(inp["gt_mask"][..., None].astype(np.float64)),
               "im_id": paddle.zeros([len(GT_COUNTS), 1], dtype="int64")}
    out = dict(inp, pred_boxes=pred_boxes.numpy(), anchors=anchors.numpy(), strides=np.array(STRIDES),
               feat_sizes=np.array(FEAT_SIZES), reg_max=np.int64(REG_MAX), paddle_version=np.array(paddle.__version__))
    pred_px = pred_boxes * stride_t
    atss = head.static_assigner(anchors, counts, gt_meta["gt_class"], gt_meta["gt_bbox"], gt_meta["pad_gt_mask"],
                                bg_index=CLASSES, pred_bboxes=pred_px)
    tal = head.assigner(scores, pred_px, bbox_center(anchors), counts, gt_meta["gt_class"], gt_meta["gt_bbox"],
                        gt_meta["pad_gt_mask"], bg_index=CLASSES)
    for name, res in (("atss", atss), ("tal", tal)):
        for key, value in zip(("labels", "boxes", "scores", "positive"), res):
            out[f"{name}_{key}"] = value.numpy()
    for name, epoch in (("atss", 0), ("tal", 100)):
        losses = head.get_loss((scores, reg, pred_boxes, feats), dict(gt_meta, epoch_id=epoch))
        for key, value in losses.items():
            out[f"{name}_{key}"] = np.float64(value.numpy().reshape(()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): "
          + ", ".join(f"{k}={float(v):.6f}" for k, v in out.items() if k.endswith(("vfl", "bbox", "dfl"))))


if __name__ == "__main__":
    main()
