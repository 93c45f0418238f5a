"""Per-arch export graphs: for each detector family, the module that is traced to ONNX / pnnx (images 0..1 in,
normalisation inside, everything before NMS out) and the JSON-able constants its numpy post-processing needs
(`postprocess.POSTPROCESSORS[arch]` reads them back from the model file). See export.py for the graph contract."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from pocketdet.models.box_ops import decode_boxes
from pocketdet.models.ssdlite import VARIANCE

from .runtime import TWO_PART_DOC


@dataclass
class GraphSpec:
    module: nn.Module          # images (0..1) -> tuple of outputs, in the order of `output_names`
    output_names: list[str]
    arch_meta: dict            # JSON-able constants the numpy post-processing needs
    # optional arch hooks (Cascade R-CNN): the graph input for a list of [3,H,W] 0..1 images (default:
    # `model.resize_images(images)[0]`), a builder of the whole ONNX ModelProto `(model, opset, tmpdir)`
    # (default: trace `module` on one square input), a doc_string marker, and extra verification
    # `(model, detector, x, sizes, report, where)` run per image after the raw-output comparison.
    prepare_input: Callable | None = None
    onnx_builder: Callable | None = None
    doc: str = ""
    extra_checks: Callable | None = None
    # full-pipeline box tolerance grows with the box (px per px of its longer side) for archs whose boxes are
    # not clipped and can span more than the image (PicoDet): the runtime's own resize moves them that much
    box_tol_rel: float = 0.0

    def graph_input(self, model, images: list[torch.Tensor]) -> torch.Tensor:
        if self.prepare_input is not None:
            return self.prepare_input(model, images)
        return model.resize_images(images)[0]


GRAPH_WRAPPERS: dict[str, Callable[..., GraphSpec]] = {}


def register_graph(arch: str):
    """`fn(model, decode_in_graph: bool) -> GraphSpec`; the numpy side registers in postprocess.py."""
    def deco(fn):
        GRAPH_WRAPPERS[arch] = fn
        return fn
    return deco


class _SSDGraph(nn.Module):
    def __init__(self, model, decode_in_graph: bool):
        super().__init__()
        self.model = model
        self.decode_in_graph = decode_in_graph
        self.register_buffer("priors", ssd_priors(model), persistent=False)

    def forward(self, images: torch.Tensor):
        loc, conf, _ = self.model.forward_raw(self.model.normalize(images))
        if not self.decode_in_graph:
            return loc, conf
        scores = conf.softmax(-1)[..., 1:]  # drop background, as SSDLite.postprocess
        boxes = decode_boxes(loc, self.priors[None], VARIANCE).clamp(0.0, 1.0)
        return boxes, scores


def ssd_priors(model) -> torch.Tensor:
    with torch.no_grad():
        dev = model.pixel_mean.device
        return model.forward_raw(torch.zeros(1, 3, model.input_size, model.input_size, device=dev))[2].cpu()


@register_graph("ssdlite")
def ssd_graph(model, decode_in_graph: bool = True) -> GraphSpec:
    g = _SSDGraph(model, decode_in_graph).eval()  # eval: the exporter restores the wrapper's mode recursively
    meta = {"decoded_in_graph": decode_in_graph, "variance": list(VARIANCE)}
    if decode_in_graph:
        return GraphSpec(g, ["boxes", "scores"], meta)
    meta["priors"] = [round(float(v), 8) for v in g.priors.flatten()]
    return GraphSpec(g, ["deltas", "logits"], meta)


class _YOLOv3Graph(nn.Module):
    """`YOLOv3.decode` minus its conf_thresh mask, plus the objectness as a third output: the mask
    (`obj >= conf_thresh`) is applied in numpy, because ncnn has no comparison op (pnnx leaves an unknown
    `torch.ge` layer) and so conf_thresh stays adjustable after export. Same float ops as torch otherwise,
    so scores match exactly where obj >= conf_thresh and are zeroed elsewhere, as in `YOLOv3.decode`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        m = self.model
        raw = m.forward_raw(m.normalize(images))
        boxes, scores, objs = [], [], []
        for out, mask, in zip(raw, m.anchor_masks):
            n, _, h, w = out.shape
            p = out.view(n, len(mask), 5 + m.num_classes, h, w)
            boxes.append(m._decode_level(p, m.anchor_wh[mask], images.shape[-2] // h).reshape(n, -1, 4))
            obj = p[:, :, 4].sigmoid()
            cls = obj[:, :, None] * p[:, :, 5:].sigmoid()
            scores.append(cls.permute(0, 1, 3, 4, 2).reshape(n, -1, m.num_classes))
            objs.append(obj.reshape(n, -1))
        return torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(objs, 1)


@register_graph("yolov3")
def yolov3_graph(model, decode_in_graph: bool = True) -> GraphSpec:
    # YOLO's decode (sigmoid, exp, anchors, grid) is always in the graph: it is elementwise on the raw maps
    # and the raw maps would need the same work in numpy.
    s = model.input_size
    return GraphSpec(_YOLOv3Graph(model).eval(), ["boxes", "scores", "objectness"],
                     {"decoded_in_graph": True, "input_hw": [s, s], "clip_bbox": bool(model.clip_bbox)})


@register_graph("cascade_rcnn")
def cascade_graph(model, decode_in_graph: bool = True) -> GraphSpec:
    # decode_in_graph has no meaning here: RPN decoding happens on the host for the selected anchors only,
    # the RoI part always decodes its boxes in-graph (cascade_export.py)
    from . import cascade_export as ce

    return GraphSpec(ce.CascadeDenseGraph(model).eval(), ce.dense_output_names(model), ce.cascade_arch_meta(model),
                     prepare_input=ce.mean_padded_input, onnx_builder=ce.export_cascade_onnx_proto,
                     doc=TWO_PART_DOC, extra_checks=ce.verify_roi_part)


@register_graph("picodet")
def picodet_graph(model, decode_in_graph: bool = True) -> GraphSpec:
    # decoding (softmax over the distance bins, integral, anchor points) is always in the graph, as YOLO's
    from .picodet_export import PicoDetGraph, picodet_arch_meta

    # box_tol_rel: a trained PicoDet-XS's full pipelines differ by 1e-4 x the box side (0.11 px on a 1120 px
    # low-score box that reaches beyond the photo), from the 1e-5 input difference of the two resizes
    return GraphSpec(PicoDetGraph(model).eval(), ["boxes", "scores"], picodet_arch_meta(model), box_tol_rel=3e-4)


def graph_spec(model, decode_in_graph: bool = True) -> GraphSpec:
    arch = getattr(model, "arch", None)
    if arch not in GRAPH_WRAPPERS:
        raise NotImplementedError(f"no export graph for arch {arch!r} (known: {', '.join(sorted(GRAPH_WRAPPERS))})")
    return GRAPH_WRAPPERS[arch](model, decode_in_graph)
