"""Cascade R-CNN export: a dense graph and a RoI graph in ONE ONNX file, proposal selection in numpy.

The detector cannot be one static graph: the RoIs of the second half are chosen from the first half's
outputs by top-k + NMS (data-dependent sizes; NMS in a graph costs far more than numpy NMS, see export.py).
So the exported file holds two independent subgraphs that share nothing:

  dense:  `images` [1,3,H,W] (0..1, long side resized to input_size, padded to a multiple of
          size_divisor with the per-channel *mean*) -> p2..p6, RPN logits and deltas per level.
          H and W are dynamic.
  roi:    `roi_p2`..`roi_p4` (the pooled FPN levels, fed back from the dense outputs), `rois` [R,4]
          (proposals, inclusive boxes in input pixels), `image_info` [3] (original h, original w, resize
          scale) -> `scores` [R,C+1] (mean of the three stages' softmax, background first) and `boxes`
          [R,4] (final boxes, inclusive, original pixels, clipped), as `RoIStagesExport`.
          R is dynamic (R = 0 is handled on the host without running the graph).

Every input carries a tiny default initializer so that ONNX Runtime treats it as optional: then
`session.run(dense_outputs, {"images": x})` and `session.run(["scores", "boxes"], {roi feeds})` both work
on one InferenceSession (ORT runs the other subgraph on its tiny defaults too: ~1 ms per predict, see
`export_cascade_onnx_proto`). The proposal step between the
two (anchors, decode, top-k, NMS) and the final class-wise NMS are numpy (`postprocess.CascadePostprocess`,
`rcnn_ops`).

Padding: torch normalises and then zeroes the padding (`CascadeRCNN._normalize_padded`); the exported graph
normalises in-graph, so the runtime pads with the mean, which `(x - mean) / std` turns into exactly 0.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from pocketdet.models import pixel_boxes
from pocketdet.models.cascade_rcnn import CascadeRCNN, RoIStagesExport

DENSE_INPUT = "images"
ROI_OUTPUTS = ["scores", "boxes"]
ROI_PREFIX = "roi_part/"  # node/initializer names of the RoI subgraph, so they cannot clash with the dense one


def dense_output_names(model: CascadeRCNN) -> list[str]:
    lv = model.fpn.level_names  # p2..p6
    return list(lv) + [f"rpn_logits_{n}" for n in lv] + [f"rpn_deltas_{n}" for n in lv]


def roi_input_names(model: CascadeRCNN) -> list[str]:
    return [f"roi_{n}" for n in model.roi_heads.box_roi_pool.featmap_names] + ["rois", "image_info"]


class CascadeDenseGraph(nn.Module):
    """images (0..1, mean-padded) -> (*FPN levels, *RPN logits, *RPN deltas), as `forward_raw`."""

    def __init__(self, model: CascadeRCNN):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        feats, objectness, deltas = self.model.forward_raw(self.model.normalize(images))
        return (*feats, *objectness, *deltas)


class CascadeRoIGraph(RoIStagesExport):
    """The RoI part for ONNX: `RoIStagesExport` itself (its `StaticFPNRoIAlign` writes each level's rows
    with `index_put`, ONNX ScatterND; measured in ORT at 1 thread, 100 RoIs through the three stages:
    19.7 ms against 31.8 ms for torchvision's per-element merge)."""


def mean_padded_input(model: CascadeRCNN, images: list[torch.Tensor]) -> torch.Tensor:
    """Torch twin of the runtime's pre-processing: `resize_images`, then the padding set to the mean."""
    x, sizes = model.resize_images(images)
    x = x.clone()
    for b, (h, w) in zip(x, sizes):
        nh, nw = model.resized_size(h, w)
        pad = torch.ones_like(b, dtype=torch.bool)
        pad[:, :nh, :nw] = False
        b.copy_(torch.where(pad, model.pixel_mean[0].expand_as(b), b))
    return x


def cascade_arch_meta(model: CascadeRCNN) -> dict:
    """The JSON constants the numpy side needs: anchors, RPN filtering, RoI-part names, resize rule."""
    rpn = model.rpn
    gen = rpn.anchor_generator
    return {
        "parts": {"dense": {"inputs": [DENSE_INPUT], "outputs": dense_output_names(model)},
                  "roi": {"inputs": roi_input_names(model), "outputs": list(ROI_OUTPUTS)}},
        "levels": list(model.fpn.level_names),
        "roi_levels": list(model.roi_heads.box_roi_pool.featmap_names),
        "size_divisor": int(model.size_divisor),
        "input_format": "float32 [1,3,H,W] RGB in 0..1, long side resized to input_size (bilinear with the "
                        "exact scale as cv2.resize(fx=fy=scale), no antialias), padded to a multiple of "
                        "size_divisor with the mean; mean/std applied in-graph",
        "box_convention": "static Paddle +1 pixel (inclusive x2, y2) inside; detections x2 + 1",
        "anchors": {"sizes": list(gen.sizes), "aspect_ratios": list(gen.aspect_ratios),
                    "strides": list(gen.strides)},
        "rpn": {"weights": [1.0, 1.0, 1.0, 1.0], "bbox_xform_clip": float(pixel_boxes.RPN_DWH_CLIP),
                "pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
                "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
                "nms_thresh": float(rpn.nms_thresh)},
        "roi_align": {"output_size": list(model.roi_heads.box_roi_pool.output_size),
                      "sampling_ratio": int(model.roi_heads.box_roi_pool.sampling_ratio),
                      "canonical_scale": int(model.roi_heads.box_roi_pool.canonical_scale),
                      "canonical_level": int(model.roi_heads.box_roi_pool.canonical_level)},
        "stage_box_weights": [list(c.weights) for c in model.roi_heads.box_coders],
    }


def example_input(model: CascadeRCNN, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """A random image of a padded, non-square shape, so that the trace sees distinct H and W."""
    s = model.input_size
    d = model.size_divisor
    h = h or math.ceil(s / d) * d
    w = w or math.ceil(round(s * 0.75) / d) * d
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def example_rois(model: CascadeRCNN, n: int = 6) -> torch.Tensor:
    """Boxes of several sizes, so that every pooled level gets some in the trace."""
    s = float(model.input_size)
    sides = torch.linspace(8.0, s * 0.9, n)
    x1 = torch.linspace(0.0, s * 0.05, n)
    return torch.stack([x1, x1, x1 + sides, x1 + sides * 0.7], 1)


def _export(module, args, path, input_names, output_names, dynamic_axes, opset):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation + tracer warnings on shapes
        torch.onnx.export(module, args, str(path), opset_version=opset, dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_cascade_parts(model: CascadeRCNN, opset: int, tmpdir) -> tuple[str, str]:
    """The two subgraphs as separate ONNX files in `tmpdir`: (dense.onnx, roi.onnx). int8 quantizes them one
    by one (compress/quant.py) before `merge_cascade_parts`: ORT's quantizer cannot take the merged file,
    whose optional inputs are initializers that its pre-processing folds into constants."""
    dense_names = dense_output_names(model)
    x = example_input(model)
    dense_path = f"{tmpdir}/dense.onnx"
    axes = {DENSE_INPUT: {2: "height", 3: "width"}}
    for i, n in enumerate(dense_names):
        axes[n] = {2: f"h_{i % len(model.fpn.level_names)}", 3: f"w_{i % len(model.fpn.level_names)}"}
    _export(CascadeDenseGraph(model).eval(), (x,), dense_path, [DENSE_INPUT], dense_names, axes, opset)

    roi_names = roi_input_names(model)
    with torch.no_grad():
        feats = model.forward_raw(model.normalize(x))[0]
    pooled = feats[: len(roi_names) - 2]
    rois = example_rois(model)
    hw = torch.tensor([float(x.shape[-2]), float(x.shape[-1]), 1.0])  # image_info: h, w, scale
    roi_path = f"{tmpdir}/roi.onnx"
    axes = {n: {2: f"rh_{i}", 3: f"rw_{i}"} for i, n in enumerate(roi_names[:-2])}
    axes.update({"rois": {0: "num_rois"}, "scores": {0: "num_rois"}, "boxes": {0: "num_rois"}})
    _export(CascadeRoIGraph(model).eval(), (*pooled, rois, hw), roi_path, roi_names, ROI_OUTPUTS, axes, opset)
    return dense_path, roi_path


def export_cascade_onnx_proto(model: CascadeRCNN, opset: int, tmpdir):
    """Both subgraphs merged into one ONNX ModelProto (no metadata yet)."""
    import onnx

    dense_path, roi_path = export_cascade_parts(model, opset, tmpdir)
    return merge_cascade_parts(model, onnx.load(dense_path), onnx.load(roi_path))


def merge_cascade_parts(model: CascadeRCNN, dense, roi):
    """One ModelProto holding the dense and RoI subgraphs (fp32 or int8), every input made optional."""
    import onnx
    from onnx import compose, numpy_helper

    roi_names = roi_input_names(model)
    roi = compose.add_prefix(roi, ROI_PREFIX, rename_inputs=False, rename_outputs=False)
    merged = compose.merge_models(dense, roi, io_map=[])
    # Tiny defaults make the RoI inputs optional for ORT (an input with an initializer of the same name may
    # be left out of a feed), so a dense-only run needs just `images`. They are never used for a real RoI run.
    defaults = {n: torch.zeros(1, model.fpn.out_channels, 1, 1) for n in roi_names[:-2]}
    defaults["rois"] = torch.zeros(0, 4)
    defaults["image_info"] = torch.ones(3)
    # and `images` too, so a RoI-only run needs no image (ORT's Python API rejects a feed that lacks an
    # input without initializer). ORT does NOT prune a run to the nodes the requested outputs need: each
    # call also runs the other subgraph on its defaults. Measured at 1 thread: the dense subgraph on a 1x1
    # default costs ~0.7 ms (32x32: ~1.6 ms), the RoI subgraph on 0 RoIs ~0.3 ms; so the defaults are the
    # smallest inputs that still run (every conv/upsample of the dense part is valid on 1x1).
    defaults[DENSE_INPUT] = torch.zeros(1, 3, 1, 1)
    for name, value in defaults.items():
        merged.graph.initializer.append(numpy_helper.from_array(value.numpy(), name))
    merged.graph.name = "pocketdet_cascade_rcnn"
    # merge_models lists the default domain once per input model; ORT's quantizer (and onnx tools that look
    # the opset up by domain) require one entry per domain
    versions: dict[str, int] = {}
    for op in merged.opset_import:
        versions[op.domain] = max(versions.get(op.domain, 0), op.version)
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    return merged


def _tied_objectness(logits: list, top_n: int) -> bool:
    """Whether some level's best top_n + 1 logits hold equal values (or equal float32 sigmoids)."""
    import numpy as np

    for lg in logits:
        flat = lg.reshape(-1)
        top = np.sort(flat)[::-1][: top_n + 1]
        probs = (1.0 / (1.0 + np.exp(-top.astype(np.float32)))).astype(np.float32)
        if len(np.unique(top)) < len(top) or len(np.unique(probs)) < len(probs):
            return True
    return False


def verify_roi_part(model: CascadeRCNN, det, x: torch.Tensor, sizes, atol: float, report, where: str) -> None:
    """Per image, on the *torch* dense outputs (so each check isolates one step):
    - padding: torch's zero-padded `_normalize_padded` input and the mean-padded graph input give the same
      dense outputs (`padding`: max abs difference, expected exactly 0);
    - the runtime's numpy proposals equal torch's `proposals_from_head` (`proposals`, pixels);
    - the runtime's RoI part equals `RoIStagesExport` on those proposals (`roi_scores`, `roi_boxes`)."""
    import numpy as np

    from .export import check_raw

    (h, w), = sizes
    resized = model.resized_size(h, w)
    with torch.no_grad():
        feats, obj, deltas = model.forward_raw(model.normalize(x))
        zero_padded = model._normalize_padded(model.pad_batch([x[0, :, : resized[0], : resized[1]]]), [resized])
        feats0, obj0, deltas0 = model.forward_raw(zero_padded)
        pad_err = max(float((a - b).abs().max()) for a, b in zip([*feats, *obj, *deltas], [*feats0, *obj0, *deltas0]))
        report.raw_max_abs_err["padding"] = max(report.raw_max_abs_err.get("padding", 0.0), pad_err)
        if pad_err > 0:
            report.problems.append(f"{where}: mean padding differs from torch's zeroed padding by {pad_err:.3e}")
        ref_props, _ = model.rpn.proposals_from_head(obj, deltas, feats, [resized])
    info = model.image_info(h, w)
    names = dense_output_names(model)
    outputs = dict(zip(names, (t.numpy() for t in (*feats, *obj, *deltas))))
    post = det._postprocess
    props = post.proposals(outputs)
    ref_p = ref_props[0].numpy()
    same = props.shape == ref_p.shape and (not len(props) or float(np.abs(props - ref_p).max()) <= atol *
                                           max(1.0, float(np.abs(ref_p).max())))
    if same:
        check_raw("proposals", ref_p, props, atol, report, where)
    elif _tied_objectness([o.numpy() for o in obj], int(post.rpn_cfg["pre_nms_top_n"])):
        # e.g. random init: the objectness is constant over large areas, so top-k and NMS order among equal
        # scores is arbitrary, in torch as in numpy; not a defect of the export
        report.notes.append(f"{where}: proposals not comparable (tied objectness scores); RoI part checked on "
                            "torch's proposals")
    else:
        report.problems.append(f"{where}: numpy proposals ({len(props)}) differ from torch's ({len(ref_p)})")
    if len(ref_p) == 0:
        return
    got = det.run_part("roi", post.roi_feeds(outputs, ref_p, info.tolist()))
    with torch.no_grad():
        ref = RoIStagesExport(model)(*feats[: len(model.roi_heads.box_roi_pool.featmap_names)], ref_props[0],
                                     info)
    for name, r in zip(ROI_OUTPUTS, ref):
        check_raw(f"roi_{name}", r.numpy(), np.asarray(got[name]), atol, report, where)


class CascadeHeadsGraph(nn.Module):
    """For ncnn, which has no multi-RoI, multi-level RoIAlign: only the cascade stages' FC heads, one input
    per stage (pooled RoI features flattened to [R, C*7*7], pooled on the host by `rcnn_ops`) ->
    (cls logits, class-agnostic deltas) per stage. ncnn computes only what an extracted blob needs, so
    each stage runs alone with its own input; the final score also runs stages 1-2 on stage 3's input."""

    def __init__(self, model: CascadeRCNN):
        super().__init__()
        self.stages = model.roi_heads.stages

    def forward(self, *xs):
        out = []
        for head, x in zip(self.stages, xs):
            out.extend(head(x))
        return tuple(out)
