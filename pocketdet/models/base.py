"""The calling convention every pocketdet detector shares (torchvision-style).

train: `losses = model(images, targets)`; eval: `model(images)` -> one dict per image with `boxes`
(xyxy, input-image pixels), `scores`, `labels` (0-based index into `model.class_names`).
`images` is a float tensor [N,3,H,W] in 0..1 or a list of [3,H,W] tensors of any size; resizing to the
model's input size and mean/std normalisation happen inside.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_batch_side(images, multiple: int) -> int:
    """S if `images` is a batch of S x S images (one [N,3,S,S] tensor or a list of equal [3,S,S]) with S a
    multiple of `multiple`, else 0. Families with multi-scale training (a random size per batch) train such a
    batch at its own size instead of stretching it to input_size."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        shapes = {tuple(images.shape[1:])}
    elif isinstance(images, (list, tuple)) and images and all(isinstance(im, torch.Tensor) and im.dim() == 3
                                                               for im in images):
        shapes = {tuple(im.shape) for im in images}
    else:
        return 0
    if len(shapes) != 1:
        return 0
    c, h, w = next(iter(shapes))
    return h if c == 3 and h == w and h % multiple == 0 else 0


class DetectionModel(nn.Module):
    arch: str = "base"
    multiscale_multiple: int = 0  # > 0: square batches of a side divisible by it train at their own size

    def __init__(self, num_classes: int, class_names: list[str] | None, input_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.input_size = int(input_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.postprocess_cfg: dict[str, Any] = {}
        self.channels_last = False

    def use_channels_last(self) -> "DetectionModel":
        """NHWC weights and inputs: ~1.4x faster training on CPU (depthwise convs avoid torch's slow im2col
        path; measured on SSDLite-Small, batch 8) and the usual win with AMP on GPUs."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    # -- pre-processing -------------------------------------------------------------------------
    def resize_images(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Stretch every image to input_size x input_size (SSD/YOLO keep no aspect ratio)."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images of shape [N,3,H,W], got {tuple(images.shape)}")
            images = list(images)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        s = self.input_size
        out = [im if im.shape[-2:] == (s, s) else
               F.interpolate(im[None].float(), size=(s, s), mode="bilinear", align_corners=False,
                             antialias=True)[0] for im in images]
        return torch.stack(out).float(), sizes

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- the common entry point -----------------------------------------------------------------
    def forward(self, images, targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            x, targets = self.training_batch(images, targets)
            return self.compute_loss(self.normalize(x), targets)
        x, sizes = self.resize_images(images)
        return self.postprocess(self.forward_raw(self.normalize(x)), sizes)

    def training_batch(self, images, targets) -> tuple[torch.Tensor, list[dict]]:
        """(un-normalised [N,3,S,S] input, targets in its pixels). Families trained multi-scale (a random size per
        batch: YOLOv3's RandomShape, PicoDet's BatchRandomResize) set `multiscale_multiple`: a batch of equal
        squares whose side is such a multiple then trains at its own size; anything else is stretched to
        input_size (the eval size)."""
        if self.multiscale_multiple and square_batch_side(images, self.multiscale_multiple):
            x = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
            return x.float(), [{**t, "boxes": t["boxes"].float()} for t in targets]
        x, sizes = self.resize_images(images)
        return x, self.scale_targets(targets, sizes)

    def scale_targets(self, targets, sizes):
        s = float(self.input_size)
        out = []
        for t, (h, w) in zip(targets, sizes):
            scale = torch.tensor([s / w, s / h, s / w, s / h], device=t["boxes"].device)
            out.append({**t, "boxes": t["boxes"].float() * scale})
        return out

    @torch.no_grad()
    def predict(self, images, score_thresh: float | None = None) -> list[dict[str, torch.Tensor]]:
        """Eval-mode inference on tensors, PIL images, HxWx3 uint8 arrays or file paths; boxes in pixels of
        each original image as stored (EXIF orientation not applied). Files and large images are decoded
        reduced as the deployed runtime does (`models/inputs.py`), boxes mapped back to the original size.

        Thread safety: several threads may call `predict` on one model at once (no state is written; tests/
        test_runtime_threads.py checks 4 threads against sequential results), as long as nobody trains or
        moves it meanwhile. It switches to eval mode itself, so a model in train mode must be put in eval
        mode before it is shared."""
        from .inputs import to_tensor_list  # local: keeps PIL out of model import time

        was_training = self.training
        if was_training:
            self.eval()
        try:
            dev = self.pixel_mean.device
            tensors, orig = to_tensor_list(images, dev, self.input_wh)
            outs = self(tensors)
        finally:
            if was_training:
                self.train()
        for o, t, (w, h) in zip(outs, tensors, orig):
            th, tw = t.shape[-2:]
            if (tw, th) != (w, h):  # decoded smaller: boxes back to the original pixels
                o["boxes"] = o["boxes"] * o["boxes"].new_tensor([w / tw, h / th, w / tw, h / th])
        if score_thresh is not None:
            outs = [{k: v[o["scores"] >= score_thresh] for k, v in o.items()} for o in outs]
        return outs

    def input_wh(self, w: int, h: int) -> tuple[int, int]:
        """The size an image of (w, h) pixels is resized to for the network (square here)."""
        return self.input_size, self.input_size

    # -- to implement ---------------------------------------------------------------------------
    def forward_raw(self, x: torch.Tensor):
        """The dense network on a normalised batch: what gets exported."""
        raise NotImplementedError

    def compute_loss(self, x: torch.Tensor, targets) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def postprocess(self, raw, sizes) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError
