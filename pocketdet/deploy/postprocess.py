"""Per-architecture numpy post-processing of an exported graph's outputs (torch-free).

An exported model's metadata names its `arch`; the runtime looks the arch up in `POSTPROCESSORS`.
A new family plugs in by registering one class here (and one graph wrapper in `graphs.py`):

    @register_postprocess("yolov3")
    class YoloPostprocess:
        def __init__(self, meta): ...          # once per model: parse anchors etc. from the metadata
        def __call__(self, outputs, cfg, image_wh) -> dict: ...

`meta` is the model's metadata dict (see export.py; `arch_meta` holds what the arch stored at export
time), `outputs` maps the graph's output names to arrays (batch dimension included, batch 1), `cfg` the
post-processing thresholds (metadata's `postprocess_cfg`, possibly overridden by the caller) and
`image_wh` the original image's (width, height). It returns numpy `boxes` [N,4] xyxy in original-image
pixels, `scores` [N] and `labels` [N] (0-based class indices), sorted by score.

Optional hooks, used by Cascade R-CNN: `input_wh(w, h) -> (tw, th)` the size the network input is resized
to (default: square), `preprocess(rgb, orig_wh) -> x` replaces the square resize (`rgb` may be decoded smaller
than `orig_wh`, see `npops.load_for_input`), and a class
with `two_part = True` is called with a fourth argument `run_part(part, feeds) -> {name: array}` (the
backend's `run_part`) to run the second graph on host-computed inputs.
"""
from __future__ import annotations

import numpy as np

from . import npops, rcnn_ops

POSTPROCESSORS: dict[str, type] = {}


def register_postprocess(arch: str):
    def deco(cls: type) -> type:
        POSTPROCESSORS[arch] = cls
        return cls
    return deco


def empty_detections() -> dict:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64)}


def class_wise_nms(boxes: np.ndarray, scores: np.ndarray, cfg: dict, image_wh: tuple[float, float]) -> dict:
    """Shared tail for dense detectors: boxes [P,4] xyxy (clipped), scores [P,C] (no background column) ->
    per class the `nms_top_k` best above `score_thresh`, NMS, `keep_top_k` best; boxes multiplied by
    image_wh at the end (normalised boxes -> pixels; pass (1, 1) for boxes already in pixels).
    Mirrors `pocketdet.models.ssdlite.nms_per_class`: same detections, but the per-class top-k is applied
    inside NMS's best-first prefix (`npops.class_wise_nms`), so only the few best candidates are sorted."""
    prior_idx, labels, kept_scores = npops.class_wise_nms(boxes, scores, cfg["score_thresh"], cfg["nms_top_k"],
                                                         cfg["nms_thresh"], cfg["keep_top_k"])
    w, h = image_wh
    scale = np.array([w, h, w, h], np.float32)
    return {"boxes": boxes[prior_idx] * scale, "scores": kept_scores, "labels": labels.astype(np.int64)}


@register_postprocess("ssdlite")
class SSDPostprocess:
    """Outputs `boxes` [1,P,4] + `scores` [1,P,C] when the export decoded in the graph, else `deltas`
    [1,P,4] + `logits` [1,P,C+1] (background first) and the priors in `arch_meta`."""

    def __init__(self, meta: dict):
        arch_meta = meta["arch_meta"]
        self.decoded_in_graph = bool(arch_meta["decoded_in_graph"])
        if not self.decoded_in_graph:
            self.priors = np.asarray(arch_meta["priors"], np.float32).reshape(-1, 4)
            self.variance = tuple(arch_meta["variance"])

    def __call__(self, outputs: dict, cfg: dict, image_wh: tuple[int, int]) -> dict:
        if self.decoded_in_graph:
            boxes, scores = outputs["boxes"][0], outputs["scores"][0]
        else:
            scores = npops.softmax(outputs["logits"][0])[:, 1:]
            boxes = np.clip(npops.decode_boxes(outputs["deltas"][0], self.priors, self.variance), 0.0, 1.0)
        return class_wise_nms(boxes, scores, cfg, image_wh)


@register_postprocess("yolov3")
class YOLOv3Postprocess:
    """Graph outputs `boxes` [1,P,4] xyxy in input pixels, `scores` [1,P,C] = sigmoid(obj) * sigmoid(cls) and
    `objectness` [1,P]. Mirrors `YOLOv3.decode` + `postprocess`: scores zeroed where obj < conf_thresh,
    boxes stretched to the original image and clipped to [0, W-1] x [0, H-1], class-wise NMS."""

    def __init__(self, meta: dict):
        self.input_hw = tuple(meta["arch_meta"]["input_hw"])
        self.clip = bool(meta["arch_meta"]["clip_bbox"])

    def __call__(self, outputs: dict, cfg: dict, image_wh: tuple[int, int]) -> dict:
        w, h = image_wh
        scale = np.array([w / self.input_hw[1], h / self.input_hw[0]] * 2, np.float32)
        boxes = outputs["boxes"][0] * scale
        if self.clip:
            hi = np.array([w - 1, h - 1, w - 1, h - 1], np.float32)
            boxes = np.minimum(np.maximum(boxes, np.float32(0)), hi)
        scores = outputs["scores"][0]
        low = outputs["objectness"][0] < cfg["conf_thresh"]
        if low.any():
            scores = scores.copy()
            scores[low] = 0.0
        return class_wise_nms(boxes, scores, cfg, (1, 1))


@register_postprocess("picodet")
class PicoDetPostprocess:
    """PP-PicoDet: graph outputs `boxes` [1,P,4] xyxy in input pixels (decoded in the graph) and `scores`
    [1,P,C] (class probabilities). Mirrors `PicoDet.postprocess`: boxes stretched back to the original image
    (the input is the image resized to a square, aspect not kept; no clipping, as ppdet's post_process),
    then class-wise NMS."""

    def __init__(self, meta: dict):
        self.input_hw = tuple(meta["arch_meta"]["input_hw"])

    def __call__(self, outputs: dict, cfg: dict, image_wh: tuple[int, int]) -> dict:
        w, h = image_wh
        # divided by the resize factor (input / original) in float32, exactly as the torch model
        factor = np.array([self.input_hw[1] / w, self.input_hw[0] / h] * 2, np.float32)
        return class_wise_nms(outputs["boxes"][0] / factor, outputs["scores"][0], cfg, (1, 1))


@register_postprocess("cascade_rcnn")
class CascadePostprocess:
    """Cascade R-CNN: the dense outputs (FPN levels, RPN logits/deltas per level) -> numpy RPN proposals
    (`rcnn_ops.rpn_proposals`) -> the backend's RoI part (`run_part("roi", ...)`: the three cascade stages,
    scores [R,C+1] and final boxes [R,4], inclusive, original-image pixels) -> `rcnn_detections`.
    Pre-processing keeps the aspect: long side = input_size, cv2-style bilinear with the exact scale, no
    antialias, padded with the mean to size_divisor (`CascadeRCNN.resize_images`)."""

    two_part = True

    def __init__(self, meta: dict):
        am = meta["arch_meta"]
        self.input_size = int(meta["input_size"])
        self.mean = np.asarray(meta["mean"], np.float32)
        self.size_divisor = int(am["size_divisor"])
        self.levels = list(am["levels"])
        self.roi_levels = list(am["roi_levels"])
        self.anchor_cfg = am["anchors"]
        self.rpn_cfg = am["rpn"]

    def input_wh(self, w: int, h: int) -> tuple[int, int]:
        """Decode-size hint: the full image, as `CascadeRCNN.input_wh` (the static reader resizes the full
        decode; a reduced JPEG decode gives other pixels)."""
        return w, h

    def preprocess(self, rgb: np.ndarray, orig_wh: tuple[int, int]) -> np.ndarray:
        # the resized size follows the original image, also when `rgb` was decoded smaller, so that the
        # post-processing maps boxes back with the same scale as for a full decode
        w, h = orig_wh
        nh, nw = rcnn_ops.resized_hw(h, w, self.input_size)
        # a full decode is sampled with the exact scale, as the static reader's cv2.resize(fx=fy=scale);
        # a smaller decode (an array given reduced) with its own size ratio
        factor = rcnn_ops.long_side_scale(h, w, self.input_size) if rgb.shape[:2] == (h, w) else None
        return rcnn_ops.pad_with_mean(rcnn_ops.resize_bilinear(rgb, nh, nw, factor), self.size_divisor, self.mean)

    def proposals(self, outputs: dict) -> np.ndarray:
        """Clipped to the padded input, as the static graph (its im_info holds the padded size)."""
        p = outputs[self.levels[0]]
        stride = self.anchor_cfg["strides"][0]
        return rcnn_ops.rpn_proposals([outputs[f"rpn_logits_{n}"] for n in self.levels],
                                      [outputs[f"rpn_deltas_{n}"] for n in self.levels],
                                      (p.shape[-2] * stride, p.shape[-1] * stride), self.rpn_cfg, self.anchor_cfg)

    def roi_feeds(self, outputs: dict, rois: np.ndarray, image_info) -> dict:
        """image_info: (original h, original w, resize scale)."""
        feeds = {f"roi_{n}": outputs[n] for n in self.roi_levels}
        feeds["rois"] = rois
        feeds["image_info"] = np.asarray(image_info, np.float32)
        return feeds

    def __call__(self, outputs: dict, cfg: dict, image_wh: tuple[int, int], run_part) -> dict:
        w, h = image_wh
        rois = self.proposals(outputs)
        if len(rois) == 0:  # no proposal: nothing to pool, no RoI run
            return empty_detections()
        info = (h, w, rcnn_ops.long_side_scale(h, w, self.input_size))
        roi_out = run_part("roi", self.roi_feeds(outputs, rois, info))
        return rcnn_detections(roi_out["scores"], roi_out["boxes"], cfg)


def rcnn_detections(scores: np.ndarray, boxes: np.ndarray, cfg: dict) -> dict:
    """`pocketdet.models.cascade_rcnn.postprocess_detections`: every (RoI, foreground class) with score >
    score_thresh, class-wise NMS with the +1 IoU (static `multiclass_nms`, normalized=False), the best
    keep_top_k; boxes returned continuous (x2 + 1). scores [R,C+1] (background first), boxes [R,4]
    class-agnostic, inclusive, original pixels, already clipped by the RoI part."""
    fg = scores[:, 1:]
    r, c = np.nonzero(fg > cfg["score_thresh"])
    if r.size == 0:
        return empty_detections()
    sc, bx = fg[r, c], boxes[r]
    keep = rcnn_ops.pixel_nms(bx, sc, c, cfg["nms_thresh"], cfg["keep_top_k"])
    return {"boxes": rcnn_ops.to_continuous(bx[keep]), "scores": sc[keep], "labels": c[keep].astype(np.int64)}
