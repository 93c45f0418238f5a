"""Cascade R-CNN training data pipeline (spec §6.7): per-sample flip, then a batch collate that resizes
every image to a random short side (aspect kept, long side capped) and pads the batch to a multiple of 32.

Spec order: Decode, RandomFlip(0.5), AutoAugment v1, Normalize, multi-scale Resize, Permute, PadBatch(32).
Deviation: **AutoAugment (Google detection policy v1) is not implemented**; the pipeline is flip + multi-scale
only. Normalisation happens inside the model (DetectionModel.normalize), which also zeroes the padding, as
Paddle pads after normalising.

Reproducibility: the loader seeds each sample's transform (see loader.py) but not the collate, so the random
short side is drawn in the per-sample transform (`DrawScaleSample` stores a uniform number in the target) and
only *applied* in the collate; a resumed run therefore sees the same scales as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

SCALE_KEY = "rcnn_scale_u"  # uniform [0, 1) drawn per sample; picks the short side in the collate


class DrawScaleSample(torch.nn.Module):
    """Draws the sample's multi-scale choice under the loader's per-sample seed."""

    def forward(self, img, target):
        return img, {**target, SCALE_KEY: torch.rand(())}


def build_rcnn_transforms(flip_p: float = 0.5) -> v2.Compose:
    """Per-sample training transforms (uint8 image + XYXY BoundingBoxes): horizontal flip, scale draw."""
    return v2.Compose([v2.RandomHorizontalFlip(flip_p), v2.SanitizeBoundingBoxes(min_size=1.0), DrawScaleSample()])


def rcnn_scale(h: int, w: int, short: int, max_size: int) -> float:
    """Paddle ResizeImage: short side -> `short` unless the long side would exceed `max_size`."""
    s = short / min(h, w)
    if round(s * max(h, w)) > max_size:
        s = max_size / max(h, w)
    return s


class RCNNMultiScaleCollate:
    """Batch collate: each image gets a short side from `short_sizes` (long side <= max_size), bilinear
    without antialiasing (Paddle uses cv2 INTER_LINEAR), then the batch is zero-padded to a multiple of
    `size_divisor`. Returns (images float [N,3,Hp,Wp] in 0..1, targets) where each target has `boxes`
    (scaled, float), `labels`, `image_id` and `image_size` = the unpadded (h, w) that CascadeRCNN reads
    to skip its own resize. With `short_sizes` of one element it is a deterministic resize (eval-like)."""

    def __init__(self, short_sizes: list[int], max_size: int, size_divisor: int = 32):
        if not short_sizes:
            raise ValueError("RCNNMultiScaleCollate: short_sizes is empty")
        self.short_sizes, self.max_size, self.size_divisor = [int(s) for s in short_sizes], int(max_size), size_divisor

    def __call__(self, batch):
        images, targets = [], []
        for img, t in batch:
            img = img.as_subclass(torch.Tensor)
            h, w = int(img.shape[-2]), int(img.shape[-1])
            u = float(t[SCALE_KEY]) if SCALE_KEY in t else float(torch.rand(()))
            short = self.short_sizes[min(int(u * len(self.short_sizes)), len(self.short_sizes) - 1)]
            s = rcnn_scale(h, w, short, self.max_size)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            x = img if img.dtype == torch.uint8 else img.float().mul(255.0)
            if (nh, nw) != (h, w):
                # uint8 channels-last bilinear (torch's fast kernel) on uint8 input: no full-size float copy;
                # values rounded to the uint8 grid, within 1/255 of the float result. Sampled with the exact
                # scale, as the static reader's cv2.resize(fx=fy=s) and `CascadeRCNN.resize_images`
                x = torch.ops.aten.upsample_bilinear2d(x[None].contiguous(memory_format=torch.channels_last),
                                                       [nh, nw], False, s, s)[0]
            boxes = t["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
            boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
            out = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v)
                   for k, v in t.items() if k not in ("boxes", SCALE_KEY)}
            out.update(boxes=boxes, image_size=torch.tensor([nh, nw]))
            images.append(x)
            targets.append(out)
        d = self.size_divisor
        hp = math.ceil(max(x.shape[-2] for x in images) / d) * d
        wp = math.ceil(max(x.shape[-1] for x in images) / d) * d
        padded = torch.zeros((len(images), 3, hp, wp))
        for p, x in zip(padded, images):
            p[:, : x.shape[-2], : x.shape[-1]] = x
        return padded.div_(255.0), targets
