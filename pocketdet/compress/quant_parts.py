"""int8 for two-part exports (Cascade R-CNN): each subgraph quantized on its own, then merged again.

ORT's quantizer cannot take the merged file (its optional inputs are initializers, which ORT's
pre-processing folds into constants), so:

1. export the float model as usual and open it with the deployed runtime (`Detector`);
2. run it on the calibration photos: the dense part's inputs are the runtime's own pre-processed images, the
   RoI part's feeds are what the runtime gives that part (FPN levels, numpy RPN proposals, image size);
3. export the two subgraphs apart (`cascade_export.export_cascade_parts`), quantize each with its feeds
   (dense: every conv; RoI: the FC layers fc6/fc7 of the three stages, with the class and box predictors
   kept float so final scores and deltas keep full resolution);
4. merge the int8 parts like the float ones (`merge_cascade_parts`) and carry the metadata over.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .ort_quant import FeedReader, OrtQuantOptions, QuantError, compile_patterns, quantize_graph, set_metadata

ROI_FLOAT_LAYERS = ("cls_score", "bbox_pred")  # per-stage predictors: small, and their outputs are the scores


def calibration_feeds(detector, images) -> tuple[list[dict], list[dict]]:
    """(dense feeds, RoI feeds) of a float two-part `Detector` on `images`: the inputs each part sees in
    deployment. Photos without any RPN proposal give no RoI feed."""
    from pocketdet.deploy import npops, rcnn_ops

    post = detector._postprocess
    dense, roi = [], []
    for p in images:
        rgb = npops.load_rgb(p)
        x, (w, h) = detector.preprocess(rgb)
        dense.append({detector.meta["input_name"]: x})
        outs = detector.forward(x)
        rois = post.proposals(outs)
        if len(rois):  # the same feeds the deployed post-processing gives the RoI part
            info = (h, w, rcnn_ops.long_side_scale(h, w, detector.input_size))
            roi.append(post.roi_feeds(outs, rois, info))
    return dense, roi


def ptq_two_part(model, images, not_quant=(), opts: OrtQuantOptions | None = None, name: str | None = None) -> bytes:
    """Cascade R-CNN float model -> int8 ONNX bytes (one file, two int8 subgraphs, runs in `Detector`)."""
    import onnx

    from pocketdet.deploy.cascade_export import export_cascade_parts, merge_cascade_parts
    from pocketdet.deploy.export import DEFAULT_OPSET, export_onnx
    from pocketdet.deploy.runtime import METADATA_KEY, Detector

    images = list(images)
    if not images:
        raise QuantError("no calibration images")
    regexes = compile_patterns(not_quant)
    model = model.eval().cpu().float()
    with tempfile.TemporaryDirectory(prefix="pocketdet-q2-") as tmp:
        fp32_path = export_onnx(model, Path(tmp) / "fp32.onnx", name=name)
        fp32 = onnx.load(str(fp32_path))
        dense_feeds, roi_feeds = calibration_feeds(Detector(fp32_path), images)
        if not roi_feeds:
            raise QuantError(f"{model.arch}: no RPN proposal on any of the {len(images)} calibration photos; "
                             "the RoI part cannot be calibrated")
        dense_src, roi_src = export_cascade_parts(model, DEFAULT_OPSET, tmp)
        dense_q, roi_q = Path(tmp) / "dense.int8.onnx", Path(tmp) / "roi.int8.onnx"
        n_dense = quantize_graph(dense_src, dense_q, FeedReader(dense_feeds), regexes, opts)
        n_roi = quantize_graph(roi_src, roi_q, FeedReader(roi_feeds), regexes, opts,
                                keep_float=lambda mod: mod.endswith(ROI_FLOAT_LAYERS), op_types=["Gemm", "MatMul"])
        merged = merge_cascade_parts(model, onnx.load(str(dense_q)), onnx.load(str(roi_q)))
    meta = json.loads({p.key: p.value for p in fp32.metadata_props}[METADATA_KEY])
    meta["quant"] = {"int8": True, "format": "QDQ", "not_quant": list(not_quant), "method": "ptq",
                     "excluded_nodes": n_dense + n_roi, "calibration_images": len(images),
                     "parts": {"dense": "every conv (not-quant patterns aside)",
                               "roi": "stage FC layers fc6/fc7; class/box predictors float"}}
    set_metadata(merged, meta, doc=fp32.doc_string)
    merged.graph.name = fp32.graph.name
    return merged.SerializeToString()
