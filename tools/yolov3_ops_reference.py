"""Paddle reference for the YOLOv3 loss and box decode (run with `.venv-paddle/bin/python`, see `make paddle-env`).

Runs Paddle's own `yolo_loss` (the fluid `yolov3_loss` op the static config uses, spec §4.3) and `yolo_box`
(spec §4.4) on seeded random head outputs and ground truth, and stores inputs and outputs in
tests/fixtures/yolov3_ops.npz, which tests/test_yolov3.py compares pocketdet's YOLOv3 against.

    .venv-paddle/bin/python tools/yolov3_ops_reference.py [--out tests/fixtures/yolov3_ops.npz]

Small on purpose (3 classes, 128x128 input -> 4x4 / 8x8 / 16x16 maps): 3 classes also exercises the
op's label-smoothing cap, min(1/C, 1/40).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import paddle

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = [[3, 3], [4, 8], [8, 6], [8, 15], [16, 11], [15, 30], [29, 22], [39, 50], [93, 82]]  # COCO / 4, rounded
MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
STRIDES = [32, 16, 8]
SIZE, CLASSES, IGNORE, CONF = 128, 3, 0.5, 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "yolov3_ops.npz")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, b = 2, 6
    # head outputs rounded to float16 values, stored as float16 (half the fixture size, same numbers)
    outs = [rng.normal(0, 0.7, (n, 3 * (5 + CLASSES), SIZE // s, SIZE // s)).astype(np.float16).astype(np.float32)
            for s in STRIDES]
    for x in outs:  # objectness logits around -3, so some cells fall below yolo_box's conf_thresh 0.01
        obj = x.reshape(n, 3, 5 + CLASSES, *x.shape[-2:])[:, :, 4]
        obj[:] = rng.normal(-3.0, 2.0, obj.shape).astype(np.float16).astype(np.float32)
    # GTs in pixels of the 128x128 input, converted to the op's normalised (cx, cy, w, h); image 1 has 4 boxes
    # and 2 padding rows (w = h = 0: invalid, skipped by the op)
    xy1 = rng.uniform(0, SIZE - 40, (n, b, 2))
    wh = rng.uniform(3, 90, (n, b, 2))
    xyxy = np.concatenate([xy1, np.minimum(xy1 + wh, SIZE - 1)], -1).astype(np.float32)
    xyxy[1, 4:] = 0
    gt_box = np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1) / SIZE
    gt_label = rng.integers(0, CLASSES, (n, b)).astype(np.int32)
    gt_score = rng.uniform(0.2, 1.0, (n, b)).astype(np.float32)
    flat_anchors = [v for a in ANCHORS for v in a]
    result = {"xyxy": xyxy, "gt_label": gt_label.astype(np.int64), "gt_score": gt_score,
              "anchors": np.array(ANCHORS, np.float32), "ignore_thresh": np.float32(IGNORE)}
    for level, (x, mask, stride) in enumerate(zip(outs, MASKS, STRIDES)):
        result[f"x{level}"] = x.astype(np.float16)
        for smooth in (False, True):
            loss = paddle.vision.ops.yolo_loss(
                paddle.to_tensor(x), paddle.to_tensor(gt_box.astype(np.float32)), paddle.to_tensor(gt_label),
                flat_anchors, mask, CLASSES, IGNORE, stride, gt_score=paddle.to_tensor(gt_score),
                use_label_smooth=smooth)
            result[f"loss{level}_smooth{int(smooth)}"] = loss.numpy()
    img_size = np.array([[480, 640], [300, 200]], np.int32)  # (h, w) of the original images
    boxes, scores = [], []
    for x, mask, stride in zip(outs, MASKS, STRIDES):
        level_anchors = [v for i in mask for v in ANCHORS[i]]
        bx, sc = paddle.vision.ops.yolo_box(paddle.to_tensor(x), paddle.to_tensor(img_size), level_anchors,
                                            CLASSES, CONF, stride, clip_bbox=True)
        boxes.append(bx.numpy())
        scores.append(sc.numpy())
    result.update(img_size=img_size, conf_thresh=np.float32(CONF), yolo_box_boxes=np.concatenate(boxes, 1),
                  yolo_box_scores=np.concatenate(scores, 1), paddle_version=np.array(paddle.__version__))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **result)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
