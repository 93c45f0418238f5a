"""YOLOv3 training augmentation (spec §4.5, S24 static/configs/yolov3_reader.yml), on torchvision v2 samples.

A sample is `(tv_tensors.Image uint8 [3,H,W], {"boxes": tv_tensors.BoundingBoxes XYXY pixels,
"labels": int64, ...})`. Order, as Paddle's reader:

1. `MixupDataset` (dataset wrapper): blend with a random other sample, Beta(1.5, 1.5), while enabled
   (the first 250 epochs); every target gets `scores` (the mix weight of its image, 1 without mixup).
2. `build_yolo_transforms()` per sample: ColorDistort (random order) -> RandomZoomOut (Paddle RandomExpand)
   -> SSD-style IoU crop -> horizontal flip -> first 50 boxes (PadBox) -> drop degenerate boxes. The
   image comes out as a yolo_window.Window (the crop without the zoom-out canvas it was cut from);
   `yolo_reference_transforms()` is the same step by step on torchvision v2, canvas included.
3. `RandomShapeCollate` per batch (in yolo_window.py): one random size from 320..608 (step 32) and one
   random interpolation for the whole batch; returns float images in 0..1 (normalisation happens inside
   the model).

All randomness comes from torch's global RNG, so seeding torch per sample reproduces a run; the batch's size
and interpolation are drawn by the last per-sample step (`DrawBatchShape`) for the same reason, and the
collate uses the first sample's draw.
Images stay uint8 between steps (Paddle keeps float32): each photometric op result is rounded once.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .yolo_window import INTERPOLATIONS, RandomShapeCollate, YoloWindowAugment, resize_sample  # noqa: F401

# Paddle RandomExpand fill: the ImageNet mean in 0..255 (rounded: the canvas is uint8 here)
EXPAND_FILL = (124, 116, 104)

# YIQ <-> RGB matrices of Paddle's ColorDistort.apply_hue (standard NTSC coefficients)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
_YIQ2RGB = torch.tensor([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


# -- 1. mixup -----------------------------------------------------------------------------------------
class MixupDataset(torch.utils.data.Dataset):
    """Paddle MixupImage: blend sample i with a random sample j, factor ~ Beta(alpha, beta); the canvas is
    max(H) x max(W), both images top-left aligned; boxes of i get score = factor, boxes of j 1 - factor.
    A factor of exactly 0 or 1 returns one image alone, as Paddle does.

    Whether mixing is on, in order of precedence:
    - keyed access `ds[(stream_pos, idx)]` with `until_position` set: on while stream_pos < until_position
      (= mixup_iters x global batch), which is exact under resume whatever the DataLoader prefetches;
    - `enabled_fn()` if given;
    - a flag in shared memory, `set_enabled()` / `on_iteration()`. DataLoader workers are separate
      processes: a closure over trainer state is copied into each worker when it starts and never sees later
      changes, while the shared flag is seen by all of them (up to the batches already prefetched).
    Randomness (partner, factor) is drawn from torch's global RNG: seed it around the access for
    reproducible runs."""

    stream_keys = True  # SeededTransformDataset passes (stream_pos, index) keys

    def __init__(self, base_dataset, alpha: float = 1.5, beta: float = 1.5,
                 enabled_fn: Callable[[], bool] | None = None, until_position: int | None = None,
                 until_iter: int | None = None):
        self.base = base_dataset
        self.alpha, self.beta = float(alpha), float(beta)
        self.enabled_fn = enabled_fn
        self.until_position, self.until_iter = until_position, until_iter
        self._flag = torch.ones(1, dtype=torch.uint8).share_memory_()

    def set_enabled(self, on: bool) -> None:
        self._flag.fill_(int(bool(on)))

    def on_iteration(self, iteration: int) -> None:
        """Trainer hook: mixup stays on for iterations < until_iter (Paddle: the first 250 epochs)."""
        if self.until_iter is not None:
            self.set_enabled(iteration < self.until_iter)

    def enabled(self) -> bool:
        return bool(self.enabled_fn()) if self.enabled_fn is not None else bool(self._flag.item())

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            pos, idx = key
            on = pos < self.until_position if self.until_position is not None else self.enabled()
        else:
            idx, on = key, self.enabled()
        image, target = self.base[idx]
        if not on or len(self.base) < 2:
            return image, with_scores(target, 1.0)
        # validate_args=False: the same draw without the argument checks (1 ms a sample)
        factor = float(torch.distributions.Beta(self.alpha, self.beta, validate_args=False).sample().clamp(0.0, 1.0))
        other = int(torch.randint(len(self.base), ()))
        if factor >= 1.0:
            return image, with_scores(target, 1.0)
        image2, target2 = self.base[other]
        if factor <= 0.0:
            return image2, with_scores(target2, 1.0)
        return mixup_pair(image, target, image2, target2, factor)


def with_scores(target: dict, value: float) -> dict:
    n = len(target["boxes"])
    out = dict(target)
    out["scores"] = torch.full((n,), float(value)) if "scores" not in target else target["scores"] * value
    return out


def mixup_pair(image1, target1, image2, target2, factor: float):
    h = max(image1.shape[-2], image2.shape[-2])
    w = max(image1.shape[-1], image2.shape[-1])
    canvas = torch.zeros(3, h, w, dtype=torch.float32)
    first = canvas[:, : image1.shape[-2], : image1.shape[-1]]
    first.copy_(image1.as_subclass(torch.Tensor)).mul_(factor)
    canvas[:, : image2.shape[-2], : image2.shape[-1]].add_(image2.as_subclass(torch.Tensor), alpha=1.0 - factor)
    image = tv_tensors.Image(canvas.round_().clamp_(0, 255).to(torch.uint8))
    t1, t2 = with_scores(target1, factor), with_scores(target2, 1.0 - factor)
    boxes = torch.cat([t1["boxes"].as_subclass(torch.Tensor).float(), t2["boxes"].as_subclass(torch.Tensor).float()])
    out = {k: v for k, v in target1.items() if k not in ("boxes", "labels", "scores")}
    out["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
    out["labels"] = torch.cat([torch.as_tensor(t1["labels"]), torch.as_tensor(t2["labels"])]).long()
    out["scores"] = torch.cat([t1["scores"], t2["scores"]]).float()
    return image, out


# -- 2. per-sample transforms -------------------------------------------------------------------------
class ColorDistort(v2.Transform):
    """Paddle ColorDistort with random_apply: brightness, contrast, saturation and hue in a random order,
    each applied with probability `p`.

    As in Paddle's operator (S24 static/ppdet/data/transform/operators.py), not torchvision's ColorJitter:
    brightness *adds* a delta from [0.5, 1.5] to 0..255 pixels (a near no-op, but that is the recipe),
    contrast multiplies pixels by a delta (no mean centring), saturation blends with the luma gray, and hue
    rotates the chroma in YIQ space by a delta in degrees."""

    def __init__(self, hue=(-18.0, 18.0), saturation=(0.5, 1.5), contrast=(0.5, 1.5), brightness=(0.5, 1.5),
                 p: float = 0.5):
        super().__init__()
        self.ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        names = list(self.ranges)
        ops = []
        for i in torch.randperm(len(names)).tolist():
            if float(torch.rand(())) < self.p:
                ops.append((names[i], _uniform(*self.ranges[names[i]])))
        return {"ops": ops}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or not params["ops"]:
            return inpt
        # every op is affine in RGB and the result is rounded once: apply their composition in one pass
        mat, off = self.composed(params["ops"])
        img = inpt.as_subclass(torch.Tensor)
        flat = torch.addmm(off[:, None], mat, img.reshape(3, -1).float()).reshape(img.shape)
        out = flat.round_().clamp_(0, 255).to(inpt.dtype) if inpt.dtype == torch.uint8 else flat
        return tv_tensors.wrap(out, like=inpt)

    @staticmethod
    def composed(ops) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with ops applied in order == M @ rgb + c."""
        mat, off = torch.eye(3), torch.zeros(3)
        for name, delta in ops:
            if name == "brightness":
                off = off + delta
            elif name == "contrast":
                mat, off = mat * delta, off * delta
            else:
                m = (delta * torch.eye(3) + (1.0 - delta) * torch.tensor([0.299, 0.587, 0.114]).expand(3, 3)
                     if name == "saturation" else ColorDistort._hue_matrix(delta))
                mat, off = m @ mat, m @ off
        return mat, off

    @staticmethod
    def _brightness(img, delta):
        return img + delta

    @staticmethod
    def _contrast(img, delta):
        return img * delta

    @staticmethod
    def _saturation(img, delta):
        gray = torch.einsum("c,chw->hw", torch.tensor([0.299, 0.587, 0.114]), img)[None]
        return img * delta + gray * (1.0 - delta)

    @staticmethod
    def _hue_matrix(delta):
        u, w = math.cos(delta * math.pi / 180), math.sin(delta * math.pi / 180)
        rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, u, -w], [0.0, w, u]])
        return _YIQ2RGB @ rot @ _RGB2YIQ

    @staticmethod
    def _hue(img, delta):
        return torch.einsum("dc,chw->dhw", ColorDistort._hue_matrix(delta), img)


class PaddleIoUCrop(v2.RandomIoUCrop):
    """Paddle's SSD-style RandomCrop defaults (thresholds .0-.9 plus "no crop", scale [0.3, 1], aspect ratio
    [0.5, 2], 50 attempts per threshold): the thresholds are tried once each in a random order; for each,
    scale and aspect ratio are drawn jointly (crop = scale/sqrt(ar) x scale*sqrt(ar) of the image), and a
    crop is taken if its best IoU with any GT reaches the threshold and some GT centre lies inside it.
    torchvision's RandomIoUCrop draws w and h independently and resamples thresholds until one succeeds.
    Images without boxes are left uncropped (Paddle returns them unchanged)."""

    def __init__(self, thresholds=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9), scaling=(0.3, 1.0), aspect_ratio=(0.5, 2.0),
                 num_attempts: int = 50, allow_no_crop: bool = True):
        super().__init__(min_scale=scaling[0], max_scale=scaling[1], min_aspect_ratio=aspect_ratio[0],
                         max_aspect_ratio=aspect_ratio[1])
        self.thresholds = list(thresholds) + ([None] if allow_no_crop else [])
        self.scaling, self.aspect_ratio, self.num_attempts = scaling, aspect_ratio, num_attempts

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from torchvision.transforms.v2._utils import get_bounding_boxes, query_size

        h, w = query_size(flat_inputs)
        boxes = get_bounding_boxes(flat_inputs)
        boxes = v2.functional.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), boxes.format,
                                                          tv_tensors.BoundingBoxFormat.XYXY).float()
        if boxes.numel() == 0:
            return {}
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
        for i in torch.randperm(len(self.thresholds)).tolist():
            thresh = self.thresholds[i]
            if thresh is None:
                return {}
            # all attempts of this threshold at once; the first that passes is the one the loop would take
            u = torch.rand(self.num_attempts, 4, dtype=torch.float64)
            scale = self.scaling[0] + (self.scaling[1] - self.scaling[0]) * u[:, 0]
            lo = scale.square().clamp(min=self.aspect_ratio[0])
            hi = scale.square().reciprocal().clamp(max=self.aspect_ratio[1])
            ar = lo + (hi - lo) * u[:, 1]
            crop_h = (h * scale / ar.sqrt()).floor()
            crop_w = (w * scale * ar.sqrt()).floor()
            top = (u[:, 2] * (h - crop_h).clamp(min=1)).floor()
            left = (u[:, 3] * (w - crop_w).clamp(min=1)).floor()
            crops = torch.stack([left, top, left + crop_w, top + crop_h], 1).to(boxes.dtype)
            lt, rb = boxes[None, :, :2].maximum(crops[:, None, :2]), boxes[None, :, 2:].minimum(crops[:, None, 2:])
            inter = (rb - lt).clamp(min=0).prod(2)
            iou = inter / (area[None] + (crop_w * crop_h).to(boxes.dtype)[:, None] - inter)
            inside = ((centres[None] >= crops[:, None, :2]) & (centres[None] < crops[:, None, 2:])).all(2)
            inside &= (lt < rb).all(2)
            ok = (crop_h >= 1) & (crop_w >= 1) & (iou.max(1).values >= thresh) & inside.any(1)
            if ok.any():
                t = int(ok.to(torch.uint8).argmax())
                return dict(top=int(top[t]), left=int(left[t]), height=int(crop_h[t]), width=int(crop_w[t]),
                            is_within_crop_area=inside[t])
        return {}


class KeepFirstBoxes(v2.Transform):
    """Paddle's PadBox(num_max_boxes=50) keeps only the first 50 GTs of an image."""

    def __init__(self, max_boxes: int = 50):
        super().__init__()
        self.max_boxes = max_boxes

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        if len(target["boxes"]) <= self.max_boxes:
            return sample
        target = dict(target)
        for k in ("boxes", "labels", "scores"):
            if k in target:
                target[k] = target[k][: self.max_boxes]
        # slicing unwraps tv_tensors: the boxes must stay BoundingBoxes for the steps after this one
        target["boxes"] = tv_tensors.wrap(target["boxes"], like=sample[1]["boxes"])
        return image, target


class DrawBatchShape(v2.Transform):
    """Stores two uniform numbers in the target (`shape_draw`) that `RandomShapeCollate` uses, from the first
    sample of a batch, to pick the batch size and interpolation. The per-sample transform runs under a seed
    derived from the sample's stream position, so the batch shape is reproducible under resume, which the
    collate's own RNG (a DataLoader worker's) is not."""

    def forward(self, *inputs):
        image, target = inputs if len(inputs) > 1 else inputs[0]
        return image, {**target, "shape_draw": torch.rand(2)}


def _labels_and_scores(sample):
    target = sample[1]
    return (target["labels"], target["scores"]) if "scores" in target else target["labels"]


def finishing_steps(max_boxes: int = 50) -> list:
    return [KeepFirstBoxes(max_boxes), v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_scores), DrawBatchShape()]


def yolo_reference_transforms(max_boxes: int = 50) -> v2.Compose:
    """The per-sample part of the YOLOv3 reader (after mixup, before the batch resize), step by step on
    torchvision v2: the version `build_yolo_transforms` is checked against (tests/test_yolo_aug.py)."""
    return v2.Compose([
        ColorDistort(),
        v2.RandomZoomOut(fill={tv_tensors.Image: EXPAND_FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5),
        PaddleIoUCrop(),
        v2.RandomHorizontalFlip(0.5),
        *finishing_steps(max_boxes),
    ])


def build_yolo_transforms(max_boxes: int = 50) -> YoloWindowAugment:
    """The per-sample part of the YOLOv3 reader: the reference's draws and boxes, the image as a
    yolo_window.Window (no zoom-out canvas; RandomShapeCollate resizes it)."""
    ref = yolo_reference_transforms(max_boxes).transforms
    return YoloWindowAugment(ref[0], ref[1], ref[2], ref[3].p, v2.Compose(ref[4:]), EXPAND_FILL)
