"""The `ssd` training augmentation (spec §3.5: distort, expand, IoU crop, resize, flip), composed analytically.

The reference (transforms.ssd_reference_transforms: torchvision v2 steps one after another) distorts the whole
photo, materialises a zoom-out canvas of up to 16x its area, searches a crop with one tensor op chain per trial
and resizes the crop. Here every random parameter is drawn first, from the same distributions:

1. distortion draw (photometric.sample_distort); zoom-out ratio and offset; IoU-crop window on the would-be
   canvas, all 50 trials of a threshold evaluated at once in numpy; flip. Only the photo's size is needed,
   so in training (base.PhotoFiles items) nothing is decoded yet.
2. The crop window is mapped back to photo coordinates, where it may extend past the photo (the expand fill).
   Boxes go through shift, clip, scale and flip as four array operations.
3. Decode: a JPEG is decoded at 1/2, 1/4 or 1/8 (libjpeg's DCT scaling) when the window still has at least
   `size` decoded pixels on both axes (`decode_reduction`: the resize after it only shrinks); the reduction
   depends on the drawn geometry, never the other way round, so resume stays exact.
4. Pixels: the part of the photo under the window is resized straight to its place in the output with PIL's
   antialiased bilinear filter (fractional source box: the geometry is exact; output pixels only partly
   covered by the photo get the fill), onto an output pre-filled with the fill. No canvas is allocated.
5. The distortion runs on whichever has fewer pixels — the photo region before the resize, or its resized
   image — see `FastSSDAugment`.

Deviations from the reference, all sub-pixel or sub-grey-level: the contrast op's mean grey comes from a
1/16 subsample of the photo; the reduced decode (DCT scaling, then the bilinear filter, where the reference
has the filter alone: 0.2-0.3 grey levels on average on coco128); border pixels half covered by the photo are
fill instead of a blend; PIL's uint8 filter instead of torch's (the latter is a port of the former); the crop
search gives up (no crop) after 1000 rounds of 50 trials where the reference would loop for ever. tests/test_aug_distribution.py checks
that both pipelines draw the same distribution of boxes, crops and colours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from . import photometric
from .base import PhotoFile

IMAGENET_FILL = (124, 116, 104)  # Paddle's expand fill [123.675, 116.28, 103.53], rounded for uint8
IOU_THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # allow_no_crop false: 1.0 ("no crop") left out
MAX_CROP_ROUNDS = 1000
PER_BOX_KEYS = {"labels", "scores"}  # target fields that follow their boxes


@dataclass
class Geometry:
    """Where the output comes from: the window [x0, x0+w) x [y0, y0+h) in photo pixels (may leave the photo),
    resized to size x size, then flipped if `flip`. `keep` marks the boxes whose centre is in the window
    (all of them when there was no IoU crop)."""
    x0: int
    y0: int
    w: int
    h: int
    flip: bool
    keep: np.ndarray


def sample_zoom_out(h: int, w: int, p: float = 0.5, side_range=(1.0, 4.0)) -> tuple[int, int, int, int]:
    """torchvision RandomZoomOut's draw: (pad_left, pad_top, canvas_w, canvas_h); no zoom-out is (0, 0, w, h)."""
    u = torch.rand(4).tolist()
    if u[0] >= p:
        return 0, 0, w, h
    r = side_range[0] + u[1] * (side_range[1] - side_range[0])
    cw, ch = int(w * r), int(h * r)
    return int((cw - w) * u[2]), int((ch - h) * u[3]), cw, ch


def sample_iou_crop(cw: int, ch: int, boxes: np.ndarray, thresholds=IOU_THRESHOLDS, trials: int = 50,
                    scale=(0.3, 1.0), aspect=(0.5, 2.0)):
    """torchvision RandomIoUCrop's search with its trials vectorised: pick a threshold, draw `trials` crops
    (independent w/h scales, position), take the first whose boxes-with-centre-inside include one with
    IoU >= threshold; else pick a threshold again. Returns (left, top, w, h, keep) or None (no boxes)."""
    if len(boxes) == 0 or min(cw, ch) * scale[0] < 1 or not aspect[0] * scale[0] <= cw / ch <= aspect[1] / scale[0]:
        return None  # as the reference (IoUCropIfBoxes): no crop fits a photo this small or this elongated
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for _ in range(MAX_CROP_ROUNDS):
        thr = thresholds[int(torch.randint(len(thresholds), ()))]
        u = torch.rand(trials, 4).numpy()
        nw = (cw * (scale[0] + (scale[1] - scale[0]) * u[:, 0])).astype(np.int64)
        nh = (ch * (scale[0] + (scale[1] - scale[0]) * u[:, 1])).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ar = nw / nh
        ok = (ar >= aspect[0]) & (ar <= aspect[1])
        left = ((cw - nw) * u[:, 2]).astype(np.int64)
        top = ((ch - nh) * u[:, 3]).astype(np.int64)
        right, bottom = left + nw, top + nh
        ok &= (nw > 0) & (nh > 0)
        inside = ((left[:, None] < cx) & (cx < right[:, None]) & (top[:, None] < cy) & (cy < bottom[:, None]))
        iw = np.minimum(boxes[:, 2], right[:, None]) - np.maximum(boxes[:, 0], left[:, None])
        ih = np.minimum(boxes[:, 3], bottom[:, None]) - np.maximum(boxes[:, 1], top[:, None])
        inter = iw.clip(0) * ih.clip(0)
        iou = inter / (area + (nw * nh)[:, None] - inter)
        ok &= np.where(inside, iou, -1.0).max(1) >= thr
        if ok.any():
            t = int(ok.argmax())
            return int(left[t]), int(top[t]), int(nw[t]), int(nh[t]), inside[t]
    return None


def sample_geometry(h: int, w: int, boxes: np.ndarray) -> Geometry:
    """Zoom-out, IoU crop on the zoomed-out canvas and flip, composed into one window on the photo."""
    pad_l, pad_t, cw, ch = sample_zoom_out(h, w)
    crop = sample_iou_crop(cw, ch, boxes + np.array([pad_l, pad_t, pad_l, pad_t], np.float32))
    flip = bool(torch.rand(()) < 0.5)
    if crop is None:
        return Geometry(-pad_l, -pad_t, cw, ch, flip, np.ones(len(boxes), bool))
    left, top, cw, ch, keep = crop
    return Geometry(left - pad_l, top - pad_t, cw, ch, flip, keep)


def transform_boxes(boxes: np.ndarray, g: Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (photo pixels, XYXY) into the output: shift, clip to the window, scale, flip, then drop what
    SanitizeBoundingBoxes(min_size=1) drops. Returns (boxes float32, index of the kept input boxes)."""
    b = boxes - np.array([g.x0, g.y0, g.x0, g.y0], np.float32)
    b = np.clip(b * np.array([size / g.w, size / g.h, size / g.w, size / g.h], np.float32), 0, size)
    b[~g.keep] = 0
    if g.flip:
        b = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    valid = (bw >= 1) & (bh >= 1) & (bw * bh >= 1) & (b >= 0).all(1) & (b <= size).all(1)
    return b[valid].astype(np.float32), np.flatnonzero(valid)


def output_span(lo: int, hi: int, start: int, length: int, size: int) -> tuple[int, int]:
    """Output pixels [a, b) fully covered by photo pixels [lo, hi) of a window [start, start+length)."""
    s = size / length
    a = 0 if lo == start else min(size, math.ceil((lo - start) * s - 1e-6))
    b = size if hi == start + length else max(a, math.floor((hi - start) * s + 1e-6))
    return a, b


def decode_reduction(g: Geometry, size: int) -> int:
    """The JPEG DCT reduction (8, 4, 2, else 1) to decode the photo with: the largest that leaves the window at
    least `size` decoded pixels on both axes, so that the resize after it still only shrinks. A function of
    the geometry alone, which is drawn from the annotated size: the random draws never depend on it."""
    for r in (8, 4, 2):
        if min(g.w, g.h) >= r * size:
            return r
    return 1


def render(src: Image.Image, reduce: int, photo_wh: tuple[int, int], g: Geometry, size: int,
           distort: photometric.DistortParams, fill=IMAGENET_FILL) -> np.ndarray:
    """The output image (HWC uint8, flipped if g.flip) from the RGB photo `src`, decoded at 1/`reduce` of its
    size `photo_wh` (its pixel i covers photo pixels [i * reduce, (i + 1) * reduce)); `g` is in photo pixels."""
    w, h = photo_wh
    ix0, iy0, ix1, iy1 = max(g.x0, 0), max(g.y0, 0), min(g.x0 + g.w, w), min(g.y0 + g.h, h)
    ox0, ox1 = output_span(ix0, ix1, g.x0, g.w, size)
    oy0, oy1 = output_span(iy0, iy1, g.y0, g.h, size)
    out = np.empty((size, size, 3), np.uint8)
    if (ox0, oy0, ox1, oy1) != (0, 0, size, size):
        out[:] = fill
    if ox1 <= ox0 or oy1 <= oy0:
        return out
    # source box (decoded pixels) of the covered output pixels
    sx, sy = g.w / size, g.h / size
    sw, sh = src.size
    box = [(g.x0 + ox0 * sx) / reduce, (g.y0 + oy0 * sy) / reduce, (g.x0 + ox1 * sx) / reduce,
           (g.y0 + oy1 * sy) / reduce]
    box = [min(max(box[0], 0.0), sw), min(max(box[1], 0.0), sh), min(max(box[2], 0.0), sw), min(max(box[3], 0.0), sh)]
    ow, oh = ox1 - ox0, oy1 - oy0
    mean = None
    if any(name == "contrast" for name, _ in distort.ops):
        k = max(1, 4 // reduce)  # ~1/16 of the photo's pixels, whatever the reduction
        sub = src.resize((max(sw // k, 1), max(sh // k, 1)), Image.NEAREST)
        mean = photometric.contrast_mean(torch.from_numpy(np.array(sub)).permute(2, 0, 1), distort, stride=1)
    # Distortion before the resize is exactly the reference's; after it, brightness/contrast/saturation
    # (affine per pixel) commute with the resize's positive normalised weights up to clamping and rounding,
    # and the hue rotation differs only where the filter mixes different hues. Before when cheaper: on the
    # box plus a margin for the filter's support.
    mx, my = math.ceil(max((box[2] - box[0]) / ow, 1.0)) + 1, math.ceil(max((box[3] - box[1]) / oh, 1.0)) + 1
    region = (max(math.floor(box[0]) - mx, 0), max(math.floor(box[1]) - my, 0),
              min(math.ceil(box[2]) + mx, sw), min(math.ceil(box[3]) + my, sh))
    before = bool(distort.ops) and (region[2] - region[0]) * (region[3] - region[1]) <= ow * oh
    if before:
        pixels = torch.from_numpy(np.array(src.crop(region))).permute(2, 0, 1)
        pixels = photometric.apply_ops(pixels.float(), distort.ops, mean).to(torch.uint8)
        src = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
        box = [box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1]]
    resized = src.resize((ow, oh), Image.BILINEAR, box=tuple(box), reducing_gap=None)
    if g.flip:
        resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
        ox0, ox1 = size - ox1, size - ox0
    patch = out[oy0:oy1, ox0:ox1]
    patch[:] = np.asarray(resized)
    if distort.ops and not before:
        t = torch.from_numpy(patch).permute(2, 0, 1)
        t.copy_(photometric.apply_ops(t.float(), distort.ops, mean))
    return out


class FastSSDAugment:
    """Drop-in for the reference `ssd` pipeline: (uint8 Image [3,H,W], target with XYXY `boxes`) ->
    (uint8 Image [3,size,size], target with boxes/labels filtered alike). The image may also be a
    base.PhotoFile (items of base.PhotoFiles): the parameters are drawn from its annotated size, then it is
    decoded at the reduction `decode_reduction` allows. Randomness from torch's global RNG, which the loader
    seeds per sample, so resumed runs see the same images."""

    def __init__(self, size: int = 320):
        self.size = size

    def __call__(self, img, target):
        boxes = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4).numpy()
        if isinstance(img, PhotoFile):
            w, h = img.width, img.height
        else:
            h, w = img.shape[-2:]
        distort = photometric.sample_distort()
        g = sample_geometry(h, w, boxes)
        if isinstance(img, PhotoFile):
            src, reduce = img.decode(decode_reduction(g, self.size))
        else:
            src, reduce = Image.fromarray(np.ascontiguousarray(img.as_subclass(torch.Tensor).permute(1, 2, 0))), 1
        out = render(src, reduce, (w, h), g, self.size, distort)
        image = tv_tensors.Image(torch.from_numpy(out).permute(2, 0, 1))
        new_boxes, kept = transform_boxes(boxes, g, self.size)
        result = dict(target)
        index = torch.from_numpy(kept)
        for key in PER_BOX_KEYS & target.keys():
            result[key] = target[key][index]
        result["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(new_boxes), format="XYXY",
                                                   canvas_size=(self.size, self.size))
        return image, result
