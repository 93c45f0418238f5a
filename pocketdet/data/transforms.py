"""Training augmentation pipelines, and the reference `ssd` pipeline on torchvision transforms.v2 steps.

`ssd` trains with ssd_aug.FastSSDAugment; `ssd_reference_transforms` below is the step-by-step version it was
checked against (tests/test_aug_distribution.py, benchmarks/data_speed.py). All randomness is drawn from
torch's global RNG, which the loader seeds per sample (see loader.py), so a resumed run sees exactly the same
augmented images as an uninterrupted one.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .ssd_aug import IMAGENET_FILL, FastSSDAugment


class PaddleDistort(torch.nn.Module):
    """Paddle's RandomDistort (spec §3.5): brightness, contrast, saturation, hue, each with probability p,
    in the order B,C,S,H or (with probability 0.5) B,S,H,C. Factors are multiplicative as in PIL's
    ImageEnhance; hue is in degrees."""

    def __init__(self, brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_deg=18.0,
                 p: float = 0.5):
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue_deg, p

    def _maybe(self, img, fn, lo, hi):
        if torch.rand(()) < self.p:
            f = float(torch.empty(()).uniform_(lo, hi))
            img = fn(img, f)
        return img

    def forward(self, img, target):
        ops = [lambda im: self._maybe(im, TF.adjust_brightness, *self.brightness),
               lambda im: self._maybe(im, TF.adjust_contrast, *self.contrast),
               lambda im: self._maybe(im, TF.adjust_saturation, *self.saturation),
               lambda im: self._maybe(im, TF.adjust_hue, -self.hue / 360.0, self.hue / 360.0)]
        order = [0, 1, 2, 3] if torch.rand(()) < 0.5 else [0, 2, 3, 1]
        for i in order:
            img = ops[i](img)
        return img, target


class IoUCropIfBoxes(v2.RandomIoUCrop):
    """SSD IoU-constrained crop; images without boxes pass through (torchvision's version needs boxes), and so
    do images no crop fits: a side under 1/min_scale pixels (torchvision divides by a 0-pixel crop) or a shape
    so elongated that no crop of the allowed scales has an allowed aspect (a 20000x100 panorama: torchvision
    would retry forever)."""

    def forward(self, *inputs):
        target = inputs[-1] if isinstance(inputs[-1], dict) else None
        if not self._can_crop(*TF.get_size(inputs[0])) or (target is not None and len(target["boxes"]) == 0):
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)

    def _can_crop(self, h: int, w: int) -> bool:
        if min(h, w) * self.min_scale < 1:
            return False
        lowest, highest = self.min_scale * w / h, w / (self.min_scale * h)  # reachable crop aspects w/h
        return lowest <= self.max_aspect_ratio and highest >= self.min_aspect_ratio


def ssd_train_transforms(input_size: int = 320) -> FastSSDAugment:
    """The `ssd` pipeline: the reference's steps composed analytically (ssd_aug.py), ~the same samples faster."""
    return FastSSDAugment(input_size)


def ssd_reference_transforms(input_size: int = 320) -> v2.Compose:
    """Spec §3.5 in its order: distort, expand, IoU crop, resize (aspect not kept), flip.

    Deviations: resize is bilinear with antialias instead of PIL LANCZOS (same role, faster on tensors), and the
    flip is done correctly in pixel space — the static config flips normalised boxes with pixel arithmetic (a bug
    that dropped the positives of half the flipped images; the dygraph port fixed it too).
    """
    return v2.Compose([
        PaddleDistort(),
        v2.RandomZoomOut(fill={tv_tensors.Image: IMAGENET_FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5),
        # allow_no_crop false: 1.0 is left out of the sampler options, and torchvision retries on failure
        IoUCropIfBoxes(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5, max_aspect_ratio=2.0,
                       sampler_options=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9], trials=50),
        v2.Resize((input_size, input_size), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.SanitizeBoundingBoxes(min_size=1.0),
    ])


def plain_train_transforms(input_size: int) -> v2.Compose:
    """No augmentation: resize only (overfit checks, debugging)."""
    return v2.Compose([v2.Resize((input_size, input_size), antialias=True), v2.SanitizeBoundingBoxes(min_size=1.0)])


def build_train_transforms(kind: str, input_size: int):
    if kind == "ssd":
        return ssd_train_transforms(input_size)
    if kind == "none":
        return plain_train_transforms(input_size)
    if kind == "yolo":
        from .yolo_aug import build_yolo_transforms  # written with the YOLOv3 family
        return build_yolo_transforms()
    if kind == "rcnn":
        from .rcnn_aug import build_rcnn_transforms  # written with the Cascade R-CNN family
        return build_rcnn_transforms()
    if kind == "picodet":
        from .picodet_aug import build_picodet_transforms
        return build_picodet_transforms()
    raise ValueError(f"unknown augmentation pipeline {kind!r}")
