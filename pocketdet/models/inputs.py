"""Turn user inputs (paths, PIL images, numpy arrays, tensors) into [3,H,W] float tensors in 0..1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_tensor_list(images, device=None) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images.to(device))
    if not isinstance(images, (list, tuple)):
        images = [images]
    return [_one(im).to(device) for im in images]


def _one(im) -> torch.Tensor:
    from PIL import Image

    if isinstance(im, (str, Path)):
        try:
            with Image.open(im) as f:
                im = f.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {im}: {e}") from e
    if isinstance(im, Image.Image):
        im = np.asarray(im.convert("RGB"))
    if isinstance(im, np.ndarray):
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 array, got shape {im.shape}")
        return torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1).float() / 255.0
    if isinstance(im, torch.Tensor):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"expected a [3,H,W] tensor, got {tuple(im.shape)}")
        return im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
    raise TypeError(f"unsupported image type {type(im).__name__}")
