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
