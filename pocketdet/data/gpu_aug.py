"""The `ssd` augmentation as batched tensor operations on the training device (CUDA; CPU in the tests).

Split of the work:
- DataLoader workers (`EncodedImages` + `DrawSSDParams`, under the loader's per-sample seed): read the file's
  bytes and labels, draw the sample's random parameters with the very functions of the CPU pipeline
  (ssd_aug.py) and move its boxes; no pixel is touched. Resume is exact as before: parameters depend only on
  (seed, stream position).
- The training loop (`DeviceSSDAugment`, per collated batch): decode the JPEGs together (torchvision's
  batched nvJPEG decoder on CUDA, libjpeg-turbo on CPU), distort the whole photos in the reference's order
  (per-image factors; identity where an op was not drawn), crop+resize every window to size x size with one
  `roi_align` on (photo - fill) so the area outside the photo comes out as the fill, flip, round to the uint8
  grid, scale to 0..1.

Deviation from the CPU pipeline: `roi_align` averages ceil(scale)^2 bilinear samples per output pixel when
shrinking, a box filter over bilinear taps, where PIL's antialiased bilinear uses a triangle filter.
"""
from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.ops import roi_align

from . import photometric
from .errors import DataError
from .ssd_aug import IMAGENET_FILL, PER_BOX_KEYS, sample_geometry, transform_boxes

AUG_KEY = "device_aug"  # target field: [x0, y0, w, h, flip, brightness, contrast, saturation, hue, contrast_last]
IDENTITY = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}


class EncodedImages(torch.utils.data.Dataset):
    """A detection dataset whose images stay encoded: (uint8 [nbytes] file contents, target). The target's
    boxes have the photo's size from the annotations as canvas size."""

    def __init__(self, base):
        self.base = base
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        rec = self.base.records[i]
        try:
            data = rec.path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read image {rec.path}: {e.strerror or e}") from None
        if not data:
            raise DataError(f"cannot decode image {rec.path}: the file is empty")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), self.base.target(i)


class DrawSSDParams:
    """Per-sample (worker) half: the CPU pipeline's draws, in its order, stored in target[AUG_KEY]."""

    def __init__(self, size: int = 320):
        self.size = size

    def __call__(self, data, target):
        h, w = target["boxes"].canvas_size
        boxes = target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4).numpy()
        distort = photometric.sample_distort()
        g = sample_geometry(h, w, boxes)
        new_boxes, kept = transform_boxes(boxes, g, self.size)
        factors = dict(IDENTITY, **dict(distort.ops))
        names = [n for n, _ in distort.ops]
        contrast_last = bool(names) and names[-1] == "contrast"  # B,S,H,C (same result as B,C when alone)
        out = {k: v for k, v in target.items() if k != "boxes"}
        for key in PER_BOX_KEYS & target.keys():
            out[key] = target[key][torch.from_numpy(kept)]
        out["boxes"] = torch.from_numpy(new_boxes)
        out[AUG_KEY] = torch.tensor([g.x0, g.y0, g.w, g.h, float(g.flip), factors["brightness"],
                                     factors["contrast"], factors["saturation"], factors["hue"],
                                     float(contrast_last)], dtype=torch.float64)
        return data, out


def collate_encoded(batch):
    """(list of encoded images, list of targets): the pixels are made on the device."""
    return [data for data, _ in batch], [t for _, t in batch]


def decode_batch(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3,H,W] images on `device`: JPEGs in one batched call, other formats one by one on the CPU."""
    is_jpeg = [len(e) > 2 and int(e[0]) == 0xFF and int(e[1]) == 0xD8 for e in encoded]
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, j in enumerate(is_jpeg) if j]
    if jpegs:
        for i, img in zip(jpegs, decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)):
            out[i] = img
    for i, j in enumerate(is_jpeg):
        if not j:
            out[i] = decode_image(encoded[i], mode=ImageReadMode.RGB).to(device)
    return out


def distort_batch(x: torch.Tensor, valid: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Float 0..255 photos [N,3,H,W] (zero-padded to one size; `valid` [N,1,H,W] marks photo pixels),
    per-image factors `p` [N,10] as in AUG_KEY. Order B,C,S,H, or B,S,H,C where contrast_last."""
    f = p[:, 5:].float().view(-1, 5, 1, 1, 1).unbind(1)
    b, c, s, hue, last = f
    last = last > 0.5

    def contrast(x, where):
        mean = (photometric.gray(x) * valid).sum((-3, -2, -1), keepdim=True) / valid.sum((-3, -2, -1), keepdim=True)
        factor = torch.where(where, c, torch.ones_like(c))
        return photometric.contrast(x, factor, mean)

    x = photometric.brightness(x, b)
    x = contrast(x, ~last)
    x = photometric.saturation(x, s)
    x = torch.where(hue != 0, photometric.hue(x, hue), x)
    return contrast(x, last)


class DeviceSSDAugment:
    """Batch (device) half: (list of encoded images, targets from DrawSSDParams) -> (float [N,3,S,S] 0..1 on
    `device`, targets with plain tensors on `device`)."""

    def __init__(self, size: int = 320, fill=IMAGENET_FILL):
        self.size = size
        self.fill = torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, encoded, targets, device):
        device = torch.device(device)
        photos = decode_batch(encoded, device)
        n = len(photos)
        hmax, wmax = max(p.shape[-2] for p in photos), max(p.shape[-1] for p in photos)
        x = torch.zeros((n, 3, hmax, wmax), device=device)
        valid = torch.zeros((n, 1, hmax, wmax), device=device)
        for i, p in enumerate(photos):
            x[i, :, : p.shape[-2], : p.shape[-1]] = p
            valid[i, :, : p.shape[-2], : p.shape[-1]] = 1
        params = torch.stack([t[AUG_KEY] for t in targets]).to(device)
        x = distort_batch(x, valid, params)
        fill = self.fill.to(device)
        x = (x - fill) * valid  # zero outside the photos: roi_align's samples there give the fill back
        rois = torch.cat([torch.arange(n, device=device, dtype=torch.float64)[:, None], params[:, :2],
                          params[:, :2] + params[:, 2:4]], 1).float()
        out = roi_align(x, rois, (self.size, self.size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        out = (out + fill).round_().clamp_(0, 255)
        flip = params[:, 4].view(-1, 1, 1, 1) > 0.5
        out = torch.where(flip, out.flip(-1), out).div_(255.0)
        targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items() if k != AUG_KEY}
                   for t in targets]
        return out, targets


def train_hooks(input_size: int) -> dict:
    """TrainOptions fields that move the `ssd` augmentation onto the training device."""
    return {"dataset_wrapper": EncodedImages, "transform": DrawSSDParams(input_size), "collate_fn": collate_encoded,
            "batch_transform": DeviceSSDAugment(input_size)}
