"""Turn user inputs (paths, PIL images, numpy arrays, tensors) into [3,H,W] float tensors in 0..1.

Decoding follows the deployed runtime (`pocketdet.deploy.npops.load_for_input`, which this layer may not
import), so that `model.predict` and `Detector.predict` see the same pixels: a JPEG file decodes at the
largest DCT scale that keeps it at least the network's input size, a still much larger image is reduced by
an integer factor, 16-bit grayscale keeps its top 8 bits, alpha is dropped, EXIF orientation is not applied
(boxes are in the stored frame, as COCO's). tests/test_images.py checks both paths give the same array.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..images import draft_at_least, to_rgb_array

REDUCING_GAP = 2.0  # = npops.REDUCING_GAP


def to_tensor_list(images, device=None, min_wh=None) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """-> (tensors, original (width, height) per image). `min_wh(w, h) -> (tw, th)`: the network input size
    for an image of (w, h); given, files/arrays/PIL images are decoded and reduced as little as that allows.
    Tensors are used as they are."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images.to(device)), [(int(images.shape[-1]), int(images.shape[-2]))] * len(images)
    if not isinstance(images, (list, tuple)):
        images = [images]
    tensors, sizes = [], []
    for im in images:
        t, wh = _one(im, min_wh)
        tensors.append(t.to(device))
        sizes.append(wh)
    return tensors, sizes


def _one(im, min_wh) -> tuple[torch.Tensor, tuple[int, int]]:
    from PIL import Image

    if isinstance(im, (str, Path)):
        try:
            with Image.open(im) as f:
                w, h = f.size
                if min_wh is not None:
                    draft_at_least(f, *min_wh(w, h))
                im = to_rgb_array(f)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {im}: {e}") from e
        return _reduced_tensor(im, (w, h), min_wh)
    if isinstance(im, Image.Image):
        im = to_rgb_array(im)
    if isinstance(im, np.ndarray):
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 array, got shape {im.shape}")
        return _reduced_tensor(im, (im.shape[1], im.shape[0]), min_wh)
    if isinstance(im, torch.Tensor):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"expected a [3,H,W] tensor, got {tuple(im.shape)}")
        t = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
        return t, (int(im.shape[-1]), int(im.shape[-2]))
    raise TypeError(f"unsupported image type {type(im).__name__}")


def _reduced_tensor(rgb: np.ndarray, orig_wh, min_wh) -> tuple[torch.Tensor, tuple[int, int]]:
    """= npops.reduce_large, then uint8 HWC -> float CHW in 0..1."""
    if min_wh is not None:
        from PIL import Image

        tw, th = min_wh(*orig_wh)
        h, w = rgb.shape[:2]
        fx, fy = max(1, int(w / (tw * REDUCING_GAP))), max(1, int(h / (th * REDUCING_GAP)))
        if fx > 1 or fy > 1:
            rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce((fx, fy)))
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255.0, orig_wh
