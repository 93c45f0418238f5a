"""The YOLOv3 per-sample augmentation (yolo_aug.py step 2) without the zoom-out canvas, and the batch resize.

The step-by-step pipeline (`yolo_aug.yolo_reference_transforms`) distorts the whole photo, pads it onto a
zoom-out canvas of up to 16x its area, crops the canvas and leaves the crop — up to 16x the photo, mostly
fill — for the batch collate to resize to the batch's random size with the batch's random interpolation.
Here (`YoloWindowAugment`) the same random parameters are drawn in the same order from the photo's size and
boxes alone (the boxes go through the very torchvision box kernels of the reference), and the sample's
image becomes a `Window`: the crop's size, and only the photo pixels under it (distorted, flipped) with their
place in it. Distorting only those pixels is exact: Paddle's ColorDistort is per pixel (yolo_aug.ColorDistort).

The collate (`RandomShapeCollate`, once the batch's size S and interpolation are known) resizes a
Window to S x S (`resize_window`):
- nearest, bilinear, bicubic and area (4 of the 5 interpolations): straight from the photo pixels,
  separably, with the fill standing for the crop outside them: torch's own tap positions and weights
  (nearest exact; bilinear in float, rounded to the uint8 grid as the reference collate's uint8 kernel,
  within 1/255 of it; bicubic and area within 0.02 grey levels), area through prefix sums over the bins;
- bicubic with antialiasing (a filter as wide as the scale): the crop is built (fill + photo pixels,
  `Window.materialise`) and resized as before; the zoom-out canvas still is not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


@dataclass
class Window:
    """A crop of the (never built) zoom-out canvas: `height` x `width` of `fill`, with the uint8 photo pixels
    `pixels` [3, h, w] at column `left`, row `top` (they lie inside the crop)."""
    pixels: torch.Tensor
    left: int
    top: int
    height: int
    width: int
    fill: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    def materialise(self) -> torch.Tensor:
        """The crop as a uint8 [3, height, width] image (what the reference pipeline produces)."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        out[:] = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1)
        h, w = self.pixels.shape[-2:]
        out[:, self.top:self.top + h, self.left:self.left + w] = self.pixels
        return out

    def bordered(self) -> torch.Tensor:
        """uint8 pixels with a one-pixel frame of fill: index i + 1 is photo pixel i, 0 and n + 1 stand for
        every crop pixel left/right of (above/below) the photo."""
        h, w = self.pixels.shape[-2:]
        out = torch.empty((3, h + 2, w + 2), dtype=torch.uint8)
        out[:] = torch.tensor(self.fill, dtype=torch.uint8).view(3, 1, 1)
        out[:, 1:-1, 1:-1] = self.pixels
        return out

    def mostly_fill(self, ratio: float = 4.0) -> bool:
        """Whether the crop has `ratio` times more pixels than the photo part: then resizing from the photo
        pixels (`resize_window`) is cheaper than building the crop and resizing it."""
        return self.height * self.width >= ratio * max(self.pixels.shape[-2] * self.pixels.shape[-1], 1)


def nearest_taps(length: int, size: int) -> torch.Tensor:
    """Source indices of torch's `nearest` resize (floor(dst * in / out) in float32), clamped."""
    scale = torch.tensor(length / size, dtype=torch.float32)
    return (torch.arange(size, dtype=torch.float32) * scale).floor_().long().clamp_(max=length - 1)


def bilinear_taps(length: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index0, index1, weight of index1) of torch's bilinear resize, align_corners=False, no antialias."""
    scale = torch.tensor(length / size, dtype=torch.float32)
    src = ((torch.arange(size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long()
    i1 = i0 + (i0 < length - 1).long()
    return i0, i1, src - i0


def cubic_taps(length: int, size: int, a: float = -0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [size, 4], weights [size, 4]) of torch's bicubic resize (align_corners=False, no antialias):
    Keys' cubic with a = -0.75 around floor(src), indices clamped to the axis."""
    scale = torch.tensor(length / size, dtype=torch.float32)
    src = (torch.arange(size, dtype=torch.float32) + 0.5) * scale - 0.5
    i0 = src.floor()
    t = (src - i0).view(-1, 1)
    d = torch.cat([t + 1, t, 1 - t, 2 - t], 1)  # distances to the 4 taps
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    weights = torch.where(d <= 1, near, far)
    index = (i0.long().view(-1, 1) + torch.arange(-1, 3)).clamp_(0, length - 1)
    return index, weights


def area_sums(x: torch.Tensor, dim: int, length: int, size: int, offset: int, fill: torch.Tensor) -> torch.Tensor:
    """torch's `area` (adaptive average pooling) along `dim` of a crop of `length` that is `fill` except for
    the pixels `x` at `offset`: bin i averages crop cells [floor(i L / S), ceil((i + 1) L / S))."""
    n = x.shape[dim]
    i = torch.arange(size)
    start, end = i * length // size, ((i + 1) * length + size - 1) // size
    a, b = (start - offset).clamp(0, n), (end - offset).clamp(0, n)
    first = list(x.shape)
    first[dim] = 1
    prefix = torch.cat([x.new_zeros(first), x.cumsum(dim)], dim)
    inside = prefix.index_select(dim, b) - prefix.index_select(dim, a)
    shape = [1, 1, 1]
    shape[dim] = size
    outside = ((end - start) - (b - a)).view(shape).to(x.dtype)
    return (inside + fill * outside) / (end - start).view(shape).to(x.dtype)


def resize_window(win: Window, size: int, mode: str) -> torch.Tensor:
    """Resize of the crop to [3, size, size] float 0..1 without building the crop, for the interpolations
    `nearest`, `bilinear`, `bicubic` and `area` (no antialiasing)."""
    h, w = win.pixels.shape[-2:]
    if mode == "area":
        fill = torch.tensor(win.fill, dtype=torch.float32).view(3, 1, 1)
        rows = area_sums(win.pixels.float(), 1, win.height, size, win.top, fill)  # [3, size, w]
        rows = rows.transpose(1, 2).contiguous()  # gathers along dim 1 copy whole rows: fast
        return area_sums(rows, 1, win.width, size, win.left, fill).transpose(1, 2).div_(255.0)
    # the horizontal pass gathers rows of the transposed image (contiguous copies, not element gathers)
    src = win.bordered().transpose(1, 2).contiguous()  # [3, w + 2, h + 2]
    rows = lambda idx: (idx - win.top).clamp_(-1, h) + 1  # noqa: E731
    cols = lambda idx: (idx - win.left).clamp_(-1, w) + 1  # noqa: E731
    if mode == "nearest":
        out = src.index_select(1, cols(nearest_taps(win.width, size))).transpose(1, 2).contiguous()
        return out.index_select(1, rows(nearest_taps(win.height, size))).float().div_(255.0)
    if mode == "bicubic":
        iy, wy = cubic_taps(win.height, size)
        ix, wx = cubic_taps(win.width, size)
        iy, ix = rows(iy), cols(ix)
        horiz = sum(src.index_select(1, ix[:, k]).float().mul_(wx[:, k].view(1, -1, 1)) for k in range(4))
        horiz = horiz.transpose(1, 2).contiguous()  # [3, h + 2, size]
        out = sum(horiz.index_select(1, iy[:, k]).mul_(wy[:, k].view(1, -1, 1)) for k in range(4))
        return out.div_(255.0).clamp_(0.0, 1.0)
    y0, y1, wy = bilinear_taps(win.height, size)
    x0, x1, wx = bilinear_taps(win.width, size)
    y0, y1, x0, x1 = rows(y0), rows(y1), cols(x0), cols(x1)
    horiz = torch.lerp(src.index_select(1, x0).float(), src.index_select(1, x1).float(), wx.view(1, -1, 1))
    horiz = horiz.transpose(1, 2).contiguous()  # [3, h + 2, size]
    out = torch.lerp(horiz.index_select(1, y0), horiz.index_select(1, y1), wy.view(1, -1, 1))
    return out.round_().clamp_(0, 255).div_(255.0)


class YoloWindowAugment:
    """ColorDistort -> RandomZoomOut -> PaddleIoUCrop -> horizontal flip -> first boxes -> clamp/sanitise ->
    batch-shape draw, as `yolo_aug.yolo_reference_transforms` draws them, with a `Window` as the image."""

    def __init__(self, distort, zoom_out: v2.RandomZoomOut, crop, flip_p: float, finish: v2.Compose, fill):
        self.distort, self.zoom_out, self.crop, self.flip_p, self.finish = distort, zoom_out, crop, flip_p, finish
        self.fill = tuple(int(v) for v in fill)

    def __call__(self, image, target):
        photo = image.as_subclass(torch.Tensor)
        h, w = photo.shape[-2:]
        boxes = target["boxes"]
        ops = self.distort.make_params([image])["ops"]
        pad_left, pad_top = 0, 0
        if torch.rand(1) < self.zoom_out.p:  # v2's random-apply check, then its draws
            params = self.zoom_out.make_params([boxes])
            pad_left, pad_top = params["padding"][:2]
            boxes = self.zoom_out.transform(boxes, params)
        canvas_h, canvas_w = boxes.canvas_size
        crop = self.crop.make_params([boxes])
        if crop:
            boxes = self.crop.transform(boxes, crop)
            left, top, height, width = crop["left"], crop["top"], crop["height"], crop["width"]
        else:
            left, top, height, width = 0, 0, canvas_h, canvas_w
        flip = bool(torch.rand(1) < self.flip_p)
        if flip:
            boxes = TF.horizontal_flip(boxes)
        # photo pixels under the crop, in photo and in crop coordinates
        x0, y0 = max(left - pad_left, 0), max(top - pad_top, 0)
        x1, y1 = min(left - pad_left + width, w), min(top - pad_top + height, h)
        x1, y1 = max(x1, x0), max(y1, y0)
        pixels = self.distort.transform(tv_tensors.Image(photo[:, y0:y1, x0:x1]), {"ops": ops})
        pixels = pixels.as_subclass(torch.Tensor)
        ox, oy = x0 + pad_left - left, y0 + pad_top - top
        if flip:
            pixels, ox = pixels.flip(-1), width - ox - (x1 - x0)
        window = Window(pixels.contiguous(), ox, oy, height, width, self.fill)
        target = {**target, "boxes": boxes}
        return self.finish(window, target)


# -- 3. batch resize ------------------------------------------------------------------------------------
# cv2 interpolations of Paddle's RandomShape and their closest torch equivalents: nearest, linear, area,
# cubic, lanczos4 (no lanczos for tensors: bicubic with antialiasing stands in)
INTERPOLATIONS = (("nearest", False), ("bilinear", False), ("area", False), ("bicubic", False), ("bicubic", True))


class RandomShapeCollate:
    """Collate a list of (uint8 image, target) into (float images [N,3,S,S] in 0..1, targets) with one random
    S from `sizes` and one random interpolation per batch (Paddle RandomShape; aspect not kept). Target
    boxes become plain float tensors in pixels of the S x S batch."""

    def __init__(self, sizes=range(320, 609, 32), interpolations=INTERPOLATIONS):
        self.sizes = [int(s) for s in sizes]
        if not self.sizes:
            raise ValueError("RandomShapeCollate needs at least one size")
        self.interpolations = list(interpolations)

    def __call__(self, batch):
        draw = batch[0][1].get("shape_draw") if batch else None
        draw = torch.rand(2) if draw is None else draw
        size = self.sizes[min(int(draw[0] * len(self.sizes)), len(self.sizes) - 1)]
        mode, antialias = self.interpolations[min(int(draw[1] * len(self.interpolations)),
                                                  len(self.interpolations) - 1)]
        images, targets = [], []
        for image, target in batch:
            h, w = image.shape[-2:]
            images.append(resize_sample(image, size, mode, antialias))
            t = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()
                 if k != "shape_draw"}
            scale = torch.tensor([size / w, size / h, size / w, size / h])
            t["boxes"] = t["boxes"].float().reshape(-1, 4) * scale
            t["labels"] = torch.as_tensor(t["labels"]).long()
            t["orig_size"] = (int(h), int(w))
            targets.append(t)
        return torch.stack(images), targets


def resize_sample(image, size: int, mode: str, antialias: bool) -> torch.Tensor:
    """A uint8 image or yolo_window.Window -> float [3, size, size] in 0..1."""
    if isinstance(image, Window):
        if not antialias and image.mostly_fill():
            return resize_window(image, size, mode)  # from the photo pixels, without building the crop
        image = image.materialise()
    x = image.as_subclass(torch.Tensor)[None]
    if x.dtype == torch.uint8 and mode in ("nearest", "bilinear") and not antialias:
        # these read a few pixels per output pixel: resize the uint8 image (channels-last has torch's fast
        # kernel; values rounded to the uint8 grid, within 1/255 of the float result) and convert only the
        # output, instead of converting a zoomed-out crop of up to 16x the photo to float
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(size, size), mode=mode,
                             **kwargs)[0].float().div_(255.0)
    kwargs = {} if mode in ("nearest", "area") else {"align_corners": False, "antialias": antialias}
    return F.interpolate(x.float() / 255.0, size=(size, size), mode=mode, **kwargs)[0].clamp_(0.0, 1.0)
