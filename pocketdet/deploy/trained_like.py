"""Random-init zoo models made to *look* trained (BN statistics from real photos, sharpened class logits), so
latency and parity measurements see realistic activations and a realistic number of NMS candidates; and the bundled
photos used for that and for int8 calibration. No accuracy is implied."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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
    PicoDet: `sharpen_picodet_head` after the BN statistics.
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
        sharpen_picodet_head(model, model.normalize(x))
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


@torch.no_grad()
def sharpen_picodet_head(model, x: torch.Tensor, candidates: float = 300.0, cls_std: float = 10.0,
                 reg_std: float = 1.5) -> None:
    """Make a random-init PicoDet's outputs look trained, for latency and parity measurements only (no
    accuracy), after its BN statistics were taken from real photos (`make_trained_like`).

    1. Every BN variance is raised to at least its layer's median: random convs leave channels that hardly
       vary on the calibration photos, and dividing by their tiny variance made the network chaotic on other
       photos (measured on 8 coco128 val photos, PicoDet-XS 320: 0 to 1670 candidates per photo, and ORT vs
       torch box differences up to 0.09 px from float rounding alone; with the floor 113-363 candidates and
       <= 1.2e-4 px).
    2. Random init gives every (point, class) the same score sqrt(0.01 * 0.5) = 0.0707 (all 170k pairs tied
       above the 0.025 threshold) and near-uniform distance bins (every box ~3.5 cells per side): the class and
       box logits are spread (std `cls_std` / `reg_std` over the normalised batch `x`) and the class bias is
       chosen so that about `candidates` (point, class) pairs per photo pass score_thresh (median over `x`).
       With cls_std 10 a photo also gets a few confident detections (top scores 0.3-0.7: the align factor
       sigmoid(align) ~0.5 caps them), as the int8 tests need."""
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_var is not None:
            bn.running_var.clamp_(min=float(bn.running_var.median()))
    head = model.head
    cls_out, align_out, reg_out = [], [], []
    hooks = [conv.register_forward_hook(lambda m, i, o: cls_out.append(o - m.bias.view(1, -1, 1, 1)))
             for conv in head.head_cls_list]
    hooks += [conv.register_forward_hook(lambda m, i, o: reg_out.append(o - m.bias.view(1, -1, 1, 1)))
              for conv in head.head_reg_list]
    if head.cls_align is not None:
        hooks += [mod.register_forward_hook(lambda m, i, o: align_out.append(o)) for mod in head.cls_align]
    try:
        model.head_outputs(x)
    finally:
        for h in hooks:
            h.remove()
    s_cls = cls_std / float(torch.cat([o.flatten() for o in cls_out]).std())
    s_reg = reg_std / float(torch.cat([o.flatten() for o in reg_out]).std())
    for conv in head.head_cls_list:
        conv.weight.mul_(s_cls)
    for conv in head.head_reg_list:
        conv.weight.mul_(s_reg)
    # score = sqrt(sigmoid(logit + b) * align) > thresh  <=>  logit + b > logit(thresh^2 / align)
    need = []  # per image, the bias each (point, class) pair needs to pass
    for i, o in enumerate(cls_out):
        align = torch.sigmoid(align_out[i]) if align_out else torch.ones_like(o[:, :1])
        p = (model.postprocess_cfg["score_thresh"] ** 2 / align).clamp(max=1 - 1e-6)
        need.append((torch.logit(p) - o * s_cls).flatten(1))
    need = torch.cat(need, 1).sort(1).values
    k = int(min(need.shape[1] - 1, candidates))
    bias = float(need[:, k].median())  # robust to a photo unlike the others
    for conv in head.head_cls_list:
        conv.bias.fill_(bias)
