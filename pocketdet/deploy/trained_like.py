"""Random-init zoo models made to *look* trained (BN statistics from real photos, sharpened class logits), so
latency and parity measurements see realistic activations and a realistic number of NMS candidates; and the bundled
photos used for that and for int8 calibration. No accuracy is implied."""
from __future__ import annotations

from pathlib import Path

import torch


def _load_chw(path) -> torch.Tensor:
    from . import npops

    return torch.from_numpy(npops.load_rgb(path).copy()).permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def make_trained_like(model, calib_images, logit_scale: float = 60.0, background_offset: float = 100.0):
    """Turn a randomly initialised SSD-style model into one whose outputs *look* trained, for latency and
    parity measurements only (no accuracy): BN statistics re-estimated on real photos (random-init
    activations otherwise shrink to ~1e-10 through the network, which makes every comparison vacuous), then
    the class logits sharpened and the background favoured so that, like a trained SSDLite, a few hundred
    (class, prior) pairs pass the 0.01 score threshold instead of all of them (measured: ~285 per coco128
    photo for SSDLite-MNV3-Small). Modifies and returns `model` (eval mode).
    PicoDet: `picodet_export.sharpen_head` after the BN statistics.
    Cascade R-CNN (frozen BN, two stages): see `_make_cascade_trained_like`."""
    if hasattr(model, "calibrate_frozen_norm"):
        return _make_cascade_trained_like(model, calib_images)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over the calibration batch
    model.train()
    x, _ = model.resize_images([_load_chw(p) for p in calib_images])
    model.forward_raw(model.normalize(x))
    for b, mom in zip(bns, saved):
        b.momentum = mom
    model.eval()
    if getattr(model, "arch", None) == "picodet":  # class / box logits spread, class bias set from the photos
        from .picodet_export import sharpen_head

        sharpen_head(model, model.normalize(x))
        return model
    head = getattr(model, "ssd_head", None)
    if head is not None:
        c = head.num_classes
        for i in range(head.levels):
            w = getattr(head, f"scores{i}").pw_conv.weight  # [A*(C+1), Cin, 1, 1]; background is class 0
            w.mul_(logit_scale)
            w.view(-1, c, w.shape[1])[:, 0] += background_offset / w.shape[1]
    return model


@torch.no_grad()
def _make_cascade_trained_like(model, calib_images, rpn_scale: float = 100.0, cls_scale: float = 30.0,
                               background_offset: float = 15.0, box_scale: float = 10.0):
    """Cascade R-CNN with outputs that look trained: frozen-BN statistics from real photos
    (`calibrate_frozen_norm`), RPN logits spread to a few units (random init: |logit| < 0.03, so the top-k
    would choose among near-ties), class logits sharpened with the background favoured, and box deltas
    enlarged so the cascade stages move the boxes. Measured on 6 coco128 val photos (320 model): 4..100
    detections above the 0.05 score threshold, max scores 0.16..0.38."""
    model.calibrate_frozen_norm([_load_chw(p) for p in calib_images])
    model.rpn.head.cls_logits.weight.mul_(rpn_scale)
    for stage in model.roi_heads.stages:
        stage.cls_score.weight.mul_(cls_scale)
        stage.cls_score.bias[0] += background_offset
        stage.bbox_pred.weight.mul_(box_scale)
    return model.eval()


def calibration_images(n: int = 16) -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "data" / "coco128" / "images" / "train2017"
    return sorted(root.glob("*.jpg"))[:n]
