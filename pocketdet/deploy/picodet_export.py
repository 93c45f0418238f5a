"""PP-PicoDet export graph: images (0..1) -> `boxes` [1,P,4] xyxy in input pixels, `scores` [1,P,C].

    images -> normalise (in-graph) -> LCNet -> LCPAN -> PicoHeadV2 per level: class probabilities
    sqrt(sigmoid(cls) * sigmoid(align)), distance-bin logits -> softmax, integral, * stride from the anchor
    points -> all levels flattened                                      (the graph: `PicoDet.forward_raw`)
    -> numpy: boxes divided by the resize factor, class-wise NMS        (`postprocess.PicoDetPostprocess`)

The decoding stays in the graph as in ppdet's eval path (export_post_process=True): it is elementwise work
and a few reshapes over ~2-9k points, which the raw distributions would need in numpy as well.

int8 (ORT QDQ, `compress/ort_quant.py`) keeps the export wrapper's own nodes float (the anchor-point decode
of `PicoDet.decode` runs at its root); `arch_meta["int8_float_scopes"]` adds the head's own nodes (sigmoid,
product, square root of the aligned score) and the integral's (softmax over the bins, dot product): in uint8
the scores would fall on 1/255 steps (ties in NMS, a 0.025 threshold one step away) and the bin
probabilities too (boxes off by up to stride * reg_max / 255 px). Every convolution, the head's included,
is quantized.
"""
from __future__ import annotations

import torch
from torch import nn


class PicoDetGraph(nn.Module):
    """`PicoDet.forward_raw` on normalised images, outputs in the runtime's order (boxes, scores)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        m = self.model
        scores, boxes = m.forward_raw(m.normalize(images))
        return boxes, scores


def picodet_arch_meta(model) -> dict:
    s = int(model.input_size)
    # module scopes as the TorchScript exporter names the nodes (`/head/Sqrt`, `/distribution_project/Softmax`):
    # the wrapper calls `forward_raw` as a method, so `model` adds no scope, and `decode` calls the integral
    # outside the head's forward (tests/test_picodet_deploy.py checks these names against an export)
    scopes = ["head", "distribution_project"]
    return {"decoded_in_graph": True, "input_hw": [s, s], "reg_max": int(model.reg_max),
            "strides": list(model.strides), "int8_float_scopes": scopes}


@torch.no_grad()
def sharpen_head(model, x: torch.Tensor, candidates: float = 300.0, cls_std: float = 10.0,
                 reg_std: float = 1.5) -> None:
    """Make a random-init PicoDet's outputs look trained, for latency and parity measurements only (no
    accuracy), after its BN statistics were taken from real photos (`trained_like.make_trained_like`).

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
