"""PP-PicoDet training augmentation (PaddleDetection 2.6 configs/picodet/_base_/picodet_320_reader.yml), built from
the YOLOv3 pieces in yolo_aug.py, on torchvision v2 samples.

Per sample: RandomCrop (Paddle's SSD-style IoU crop, `PaddleIoUCrop`) -> RandomFlip (0.5) -> RandomDistort
-> drop degenerate boxes; per batch: BatchRandomResize to one of the recipe's sizes (320: 256..384, step 32)
with one random interpolation of five, aspect not kept (`RandomShapeCollate`). No expand, no mixup, no box cap
(PadGT pads to the batch's largest GT count).

RandomDistort is dygraph Paddle's: brightness (+delta from [0.5, 1.5]), contrast, saturation and hue, each with
probability 0.5, in a random order, i.e. yolo_aug's `ColorDistort`, except for hue: the dygraph operator
rotates the YIQ chroma by delta * pi radians (delta from [-18, 18]), not by delta degrees as the static
one did, so the trained models saw a hue rotation spread over 18 full turns (near uniform over the circle).
That is reproduced as trained: `ColorDistort` with a hue range of +-18 * 180 degrees.
As in the YOLOv3 pipeline, images stay uint8 between steps (Paddle keeps float32 and never clips).
"""
from __future__ import annotations

from torchvision.transforms import v2

from .yolo_aug import ColorDistort, DrawBatchShape, PaddleIoUCrop

# dygraph RandomDistort's hue delta is in units of pi radians = 180 degrees
DYGRAPH_HUE_DEGREES = (-18.0 * 180.0, 18.0 * 180.0)


def multiscale_sizes(input_size: int) -> list[int]:
    """The reader's BatchRandomResize sizes: input size -64 .. +64 in steps of 32 (320: 256..384, 416: 352..480,
    640: 576..704)."""
    return [input_size + d for d in range(-64, 65, 32)]


def build_picodet_transforms() -> v2.Compose:
    """The per-sample part of the PicoDet reader; the batch part is yolo_aug's `RandomShapeCollate` over
    `multiscale_sizes` (BatchRandomResize with random_size, random_interp, keep_ratio False)."""
    return v2.Compose([
        PaddleIoUCrop(),
        v2.RandomHorizontalFlip(0.5),
        ColorDistort(hue=DYGRAPH_HUE_DEGREES),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        DrawBatchShape(),
    ])
