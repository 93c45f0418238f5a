"""Paddle reference for Cascade R-CNN's static-graph box conventions (run with `.venv-paddle/bin/python`).

The official Cascade R-CNN MobileNetV3-FPN weights were trained and evaluated by PaddleDetection's static
graph (the fluid-era ppdet 0.4.x: `static/ppdet/modeling/architectures/cascade_rcnn.py`,
`anchor_heads/rpn_head.py` FPNRPNHead, `roi_extractors/roi_extractor.py` FPNRoIAlign,
`roi_heads/cascade_head.py`, `data/transform/operators.py` ResizeImage). paddle 3.3.1 still ships the
legacy ops that graph calls; this script runs them on seeded inputs and stores inputs and outputs in
tests/fixtures/cascade_static_ops.npz, which tests/test_cascade_rcnn.py compares pocketdet against:

  resize_*     the static reader's `cv2.resize(im, None, None, fx=s, fy=s, INTER_LINEAR)` on a float image
  anchors_*    `anchor_generator` per FPN level with the 320 / 640 configs (offset 0.5)
  props_*      `generate_proposals` (v1: im_info = padded h, w, scale) per level + `collect_fpn_proposals`
  roi_*        `distribute_fpn_proposals` + `roi_align` per level + the restore gather (`FPNRoIAlign`)
  coder_*      `box_coder(decode_center_size, box_normalized=False, axis=1)` with the three stage variances,
               and the final decode on RoIs divided by the resize scale
  nms_*        `multiclass_nms3` (normalized=False, background 0) on class-agnostic boxes, as `get_prediction`

`box_clip` segfaults in paddle 3's dygraph without LoD input, so the final clip is not run here (it is
`min(max(x, 0), round(im_w / im_scale) - 1)` in the fluid kernel, with im_scale 1 for `im_shape`).

    .venv-paddle/bin/python tools/cascade_static_reference.py [--out tests/fixtures/cascade_static_ops.npz]

With --pipeline DIR it is one step of tools/cascade_static_e2e.py instead (DIR/request.json): `reader` (the
static reader's input), `dense` (paddledet's dygraph MobileNetV3 + FPN and the RPN convs with the static
weights, then the static inference graph: `static_inference`) or `heads` (the static inference graph on
dense outputs given by pocketdet).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import paddle
from paddle import _legacy_C_ops as L


def paddle_names_module():
    """The converter's torch-free naming rules, loaded from its file (as tools/paddle_reference.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paddle_names", Path(__file__).resolve().parents[1]
                                                  / "pocketdet/convert/paddle_names.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "data/coco_mini/val2017/000000000139.jpg"
ANCHOR_START = {320: 16.0, 640: 24.0}
RATIOS = [0.5, 1.0, 2.0]
STAGE_VARIANCES = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [1 / 30, 1 / 30, 1 / 15, 1 / 15]]


def T(a) -> paddle.Tensor:
    return paddle.to_tensor(np.ascontiguousarray(a))


def anchors(grid_hw, size: float, stride: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    x = paddle.zeros([1, 1, *grid_hw])
    return L.anchor_generator(x, "anchor_sizes", [float(size)], "aspect_ratios", RATIOS,
                              "variances", [1.0, 1.0, 1.0, 1.0], "stride", [float(stride)] * 2, "offset", 0.5)


def resize_cases(out: dict) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    crop = rgb[100:121, 200:229]  # 21 x 29: fractional scaled sides for both factors below
    out["resize_input"] = crop
    for i, s in enumerate([0.7331, 2.3719]):
        im = crop.astype(np.float32) / 255.0
        out[f"resize_scale_{i}"] = np.float64(s)
        out[f"resize_out_{i}"] = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)


def anchor_cases(out: dict) -> None:
    for size, start in ANCHOR_START.items():
        for lvl in range(2, 7):
            a, _ = anchors((3, 5), start * 2 ** (lvl - 2), 2 ** lvl)
            out[f"anchors_{size}_p{lvl}"] = a.numpy().reshape(-1, 4)


def proposal_cases(out: dict, rng) -> None:
    """A 64 x 96 padded input (P2 16x24 ... P6 1x2) with the 320 config; small top-n so the cuts bind."""
    hp, wp, scale, pre_n, post_n = 64, 96, 0.8, 60, 25
    out["props_im_info"] = np.array([hp, wp, scale], np.float32)
    out["props_top_n"] = np.array([pre_n, post_n])
    rois, probs = [], []
    for lvl in range(2, 7):
        gh, gw = max(1, hp // 2 ** lvl), max(1, wp // 2 ** lvl)
        logits = rng.normal(0.0, 2.0, (1, 3, gh, gw)).astype(np.float32)
        deltas = rng.normal(0.0, 0.6, (1, 12, gh, gw)).astype(np.float32)
        out[f"props_logits_p{lvl}"], out[f"props_deltas_p{lvl}"] = logits, deltas
        an, var = anchors((gh, gw), 16.0 * 2 ** (lvl - 2), 2 ** lvl)
        r, p, _ = L.generate_proposals(paddle.nn.functional.sigmoid(T(logits)), T(deltas),
                                       T(out["props_im_info"][None]), an, var, "pre_nms_topN", pre_n,
                                       "post_nms_topN", post_n, "nms_thresh", 0.7, "min_size", 0.0, "eta", 1.0)
        rois.append(r)
        probs.append(p)
    nums = [paddle.to_tensor(np.array([r.shape[0]], np.int32)) for r in rois]
    collected, _ = L.collect_fpn_proposals(rois, probs, nums, "post_nms_topN", post_n)
    out["props_rois"] = collected.numpy()


def roi_align_cases(out: dict, rng) -> None:
    """FPNRoIAlign of the 320 config (P2-P4, canonical level 3 at 112 px) on a 128 x 160 input."""
    feats = [rng.normal(0, 1, (1, 4, 128 // s, 160 // s)).astype(np.float32) for s in (4, 8, 16)]
    n = 40
    xy = rng.uniform(-10, 140, (n, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(300), (n, 2)))
    rois = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    rois[:4] = [[0, 0, 110, 110], [0, 0, 111, 111], [0, 0, 223, 223], [20, 20, 19, 30]]  # level edges, inverted
    multi, restore, nums = L.distribute_fpn_proposals(T(rois), T(np.array([n], np.int32)), 3, 3, "min_level", 2,
                                                     "max_level", 4, "refer_level", 3, "refer_scale", 112,
                                                     "pixel_offset", True)
    pooled, level_of = [], np.zeros(n, np.int64)
    restore = restore.numpy().ravel()
    start = 0
    for k, (r, f) in enumerate(zip(multi, feats)):
        cnt = r.shape[0]
        level_of[np.argsort(restore)[start:start + cnt]] = k  # restore[i] = row of RoI i in the concatenation
        start += cnt
        if cnt:
            pooled.append(L.roi_align(T(f), r, T(np.array([cnt], np.int32)), "pooled_height", 7, "pooled_width", 7,
                                      "spatial_scale", 1.0 / 2 ** (k + 2), "sampling_ratio", 2,
                                      "aligned", False).numpy())
    out.update({f"roi_feat_p{k + 2}": f for k, f in enumerate(feats)})
    out["roi_rois"], out["roi_levels"] = rois, level_of
    out["roi_pooled"] = np.concatenate(pooled)[restore]


def coder_cases(out: dict, rng) -> None:
    n = 30
    xy = rng.uniform(0, 200, (n, 2))
    rois = np.concatenate([xy, xy + rng.uniform(2, 120, (n, 2))], 1).astype(np.float32)
    deltas = rng.normal(0, 0.8, (n, 4)).astype(np.float32)
    deltas[0] = [0.3, -0.2, 12.0, 9.0]  # large dw/dh: box_coder has no clamp
    out["coder_rois"], out["coder_deltas"] = rois, deltas
    for k, var in enumerate(STAGE_VARIANCES):
        o = L.box_coder(T(rois), None, T(deltas[:, None]), "code_type", "decode_center_size",
                        "box_normalized", False, "axis", 1, "variance", var)
        out[f"coder_stage{k}"] = o.numpy().reshape(-1, 4)
    scale = np.float32(0.53)
    out["coder_scale"] = scale
    o = L.box_coder(T(rois / scale), None, T(deltas[:, None]), "code_type", "decode_center_size",
                    "box_normalized", False, "axis", 1, "variance", STAGE_VARIANCES[-1])
    out["coder_final"] = o.numpy().reshape(-1, 4)


def nms_cases(out: dict, rng) -> None:
    """Class-agnostic boxes expanded over the classes, as `get_prediction` feeds `multiclass_nms`."""
    m, c = 60, 6
    ctr = rng.uniform(20, 100, (5, 2))[rng.integers(0, 5, m)] + rng.normal(0, 4, (m, 2))
    wh = rng.uniform(4, 40, (m, 2))
    boxes = np.round(np.concatenate([ctr - wh / 2, ctr + wh / 2], 1)).astype(np.float32)  # whole pixels: +1 matters
    logits = rng.normal(0, 2, (m, c)).astype(np.float32)
    scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    res, _, num = L.multiclass_nms3(T(np.repeat(boxes[:, None], c, 1)), T(scores), T(np.array([m], np.int32)),
                                    "background_label", 0, "score_threshold", 0.05, "nms_top_k", -1,
                                    "nms_threshold", 0.5, "keep_top_k", 30, "nms_eta", 1.0, "normalized", False)
    out["nms_boxes"], out["nms_scores"], out["nms_out"] = boxes, scores, res.numpy()


# --------------------------------------------------------------------------------------------------
# end to end: the static reader and the static inference graph after the dense network
# --------------------------------------------------------------------------------------------------
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ROI_CFG = {320: dict(min_level=2, max_level=4, refer_level=3, refer_scale=112),
           640: dict(min_level=2, max_level=5, refer_level=4, refer_scale=224)}


def static_reader(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DecodeImage(to_rgb) -> NormalizeImage(is_scale, mean, std) -> ResizeImage(target_size = max_size =
    size, cv2 INTER_LINEAR, fx = fy = scale) -> Permute -> PadBatch(32, use_padded_im_info). Returns
    (image [1,3,Hp,Wp] float32, im_info [Hp, Wp, scale], im_shape [h, w, 1])."""
    im = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    h, w = im.shape[:2]
    im = im / 255.0
    im -= np.array(MEAN)[None, None]
    im /= np.array(STD)[None, None]
    scale = float(size) / float(min(h, w))
    if np.round(scale * max(h, w)) > size:
        scale = float(size) / float(max(h, w))
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    rh, rw = im.shape[:2]
    hp, wp = int(np.ceil(rh / 32) * 32), int(np.ceil(rw / 32) * 32)
    padded = np.zeros((1, 3, hp, wp), np.float32)
    padded[0, :, :rh, :rw] = im.transpose(2, 0, 1)
    return padded, np.array([hp, wp, scale], np.float32), np.array([h, w, 1.0], np.float32)


def fpn_roi_align(levels: list[np.ndarray], rois: paddle.Tensor, cfg: dict) -> paddle.Tensor:
    """`FPNRoIAlign.__call__` (sampling_ratio 2, 7x7) with the legacy ops."""
    n_lvl = cfg["max_level"] - cfg["min_level"] + 1
    multi, restore, _ = L.distribute_fpn_proposals(rois, T(np.array([rois.shape[0]], np.int32)), n_lvl, n_lvl,
                                                   "min_level", cfg["min_level"], "max_level", cfg["max_level"],
                                                   "refer_level", cfg["refer_level"], "refer_scale",
                                                   cfg["refer_scale"], "pixel_offset", True)
    outs = []
    for k, r in enumerate(multi):
        if r.shape[0]:
            outs.append(L.roi_align(T(levels[k]), r, T(np.array([r.shape[0]], np.int32)), "pooled_height", 7,
                                    "pooled_width", 7, "spatial_scale", 1.0 / 2 ** (cfg["min_level"] + k),
                                    "sampling_ratio", 2, "aligned", False))
    return paddle.gather(paddle.concat(outs), restore.reshape([-1]))


def two_fc_head(x: paddle.Tensor, w: dict, sfx: str) -> tuple[paddle.Tensor, paddle.Tensor]:
    """CascadeBBoxHead.get_output with CascadeTwoFCHead: fc6, fc7 (ReLU), cls_score, bbox_pred; static fc
    weights are [in, out]."""
    fc = lambda v, n: paddle.matmul(v, w[f"{n}{sfx}_w"]) + w[f"{n}{sfx}_b"]  # noqa: E731
    h = paddle.nn.functional.relu(fc(x.reshape([x.shape[0], -1]), "fc6"))
    h = paddle.nn.functional.relu(fc(h, "fc7"))
    return fc(h, "cls_score"), fc(h, "bbox_pred")


def static_inference(dense: dict, weights: dict, im_info, im_shape, size: int) -> dict:
    """`CascadeRCNN.build(mode='test')` after the FPN: FPNRPNHead.get_proposals (anchor_generator,
    generate_proposals per level, collect_fpn_proposals), three stages (FPNRoIAlign, head, `_decode_box`
    without clipping), `CascadeBBoxHead.get_prediction` (mean of 3 softmaxes on the stage-3 features, decode
    of rois / im_scale, box_clip, multiclass_nms normalized=False)."""
    start = ANCHOR_START[size]
    rois_l, probs_l = [], []
    for lvl in range(2, 7):
        logits, deltas = dense[f"logits_p{lvl}"], dense[f"deltas_p{lvl}"]
        an, var = anchors(logits.shape[-2:], start * 2 ** (lvl - 2), 2 ** lvl)
        r, p, _ = L.generate_proposals(paddle.nn.functional.sigmoid(T(logits)), T(deltas), T(im_info[None]), an,
                                       var, "pre_nms_topN", 300, "post_nms_topN", 100, "nms_thresh", 0.7,
                                       "min_size", 0.0, "eta", 1.0)
        rois_l.append(r)
        probs_l.append(p)
    nums = [T(np.array([r.shape[0]], np.int32)) for r in rois_l]
    rois, _ = L.collect_fpn_proposals(rois_l, probs_l, nums, "post_nms_topN", 100)
    cfg = ROI_CFG[size]
    levels = [dense[f"p{lvl}"] for lvl in range(cfg["min_level"], cfg["max_level"] + 1)]
    stage_rois, preds = [], []
    for i in range(3):
        if i > 0:
            rois = L.box_coder(rois, None, preds[-1][1].reshape([-1, 2, 4])[:, 1:2], "code_type",
                               "decode_center_size", "box_normalized", False, "axis", 1,
                               "variance", STAGE_VARIANCES[i - 1]).reshape([-1, 4])
        stage_rois.append(rois.numpy())
        feat = fpn_roi_align(levels, rois, cfg)
        preds.append(two_fc_head(feat, weights, "" if i == 0 else f"_{i + 1}"))
    probs = [paddle.nn.functional.softmax(two_fc_head(feat, weights, "" if i == 0 else f"_{i + 1}")[0])
             for i in range(2)] + [paddle.nn.functional.softmax(preds[-1][0])]
    mean = (probs[0] + probs[1] + probs[2]) / 3.0
    c = mean.shape[1]
    delta = paddle.expand(preds[-1][1].reshape([-1, 2, 4])[:, 1:2], [rois.shape[0], c, 4])
    boxes = L.box_coder(rois / float(im_info[2]), None, delta, "code_type", "decode_center_size",
                        "box_normalized", False, "axis", 1, "variance", STAGE_VARIANCES[-1]).numpy()
    # box_clip (its dygraph kernel needs LoD input and crashes): x in [0, round(w / 1) - 1], y likewise
    hi = np.array([im_shape[1], im_shape[0], im_shape[1], im_shape[0]], np.float32) - 1
    boxes = np.minimum(np.maximum(boxes, 0), hi).astype(np.float32)
    res, _, _ = L.multiclass_nms3(T(boxes), mean, T(np.array([boxes.shape[0]], np.int32)), "background_label", 0,
                                  "score_threshold", 0.05, "nms_top_k", -1, "nms_threshold", 0.5,
                                  "keep_top_k", 100, "nms_eta", 1.0, "normalized", False)
    return {"detections": res.numpy(), "scores": mean.numpy(), "final_boxes": boxes[:, 0],
            **{f"stage{i}_rois": r for i, r in enumerate(stage_rois)}}


def load_static_weights(folder: Path) -> dict:
    """The cascade heads' variables from a static persistables folder (LoDTensor files), read by Paddle."""
    names = [f"{n}{sfx}_{wb}" for sfx in ("", "_2", "_3") for n in ("fc6", "fc7", "cls_score", "bbox_pred")
             for wb in ("w", "b")]
    return {n: paddle.load(str(folder / n)) for n in names}


class DenseRef(paddle.nn.Layer):
    """The dense network of the static config from paddledet 2.6's dygraph modules (issue 17):
    MobileNetV3-Large returning the expand-conv outputs of conv5 / conv8 / conv14 (`with_extra_blocks`
    makes a block in `feature_maps` return [expand output, block output]; the extra blocks it also builds
    run after conv14 and feed nothing), FPN 48 ch with `use_c5` (P5 from raw C4) and ReLU before the P6
    conv, and the shared RPN head (3x3 + ReLU, 1x1 objectness, 1x1 deltas) as paddle convs, because
    ppdet 2.6's RPNHead has no per-level static naming. Weights come from the static persistables by
    the static names of the fluid-era source (body names mv3_0..mv3_2 = C2..C4)."""

    def __init__(self, lr_mult_list):
        super().__init__()
        from ppdet.modeling.backbones.mobilenet_v3 import MobileNetV3
        from ppdet.modeling.necks.fpn import FPN

        self.backbone = MobileNetV3(scale=1.0, model_name="large", feature_maps=[5, 8, 14], with_extra_blocks=True,
                                    extra_block_filters=[], lr_mult_list=lr_mult_list, conv_decay=1e-5,
                                    norm_type="bn", freeze_norm=True)
        self.fpn = FPN(in_channels=[72, 240, 672], out_channel=48, spatial_scales=[0.25, 0.125, 0.0625],
                       has_extra_convs=True, extra_stage=2, use_c5=True, relu_before_extra_convs=True)
        self.rpn = {}

    def load_static(self, folder: Path) -> list[str]:
        """Returns the backbone parameters left without a file (only blocks after conv14's expand conv)."""
        names = paddle_names_module()
        state, missing = {}, []
        for k in self.backbone.state_dict():
            static = names.dygraph_to_static("backbone." + k)
            if (folder / static).exists():
                state[k] = paddle.load(str(folder / static))
            else:
                missing.append(k)
        self.backbone.set_state_dict(state)
        fpn = {}
        for i in range(3):
            lat = "fpn_inner_mv3_2" if i == 2 else f"fpn_inner_mv3_{i}_lateral"
            for wb, attr in (("w", "weight"), ("b", "bias")):
                fpn[f"lateral_convs.{i}.{attr}"] = paddle.load(str(folder / f"{lat}_{wb}"))
                fpn[f"fpn_convs.{i}.{attr}"] = paddle.load(str(folder / f"fpn_mv3_{i}_{wb}"))
        for j, lvl in enumerate((5, 6)):
            for wb, attr in (("w", "weight"), ("b", "bias")):
                fpn[f"fpn_convs.{3 + j}.{attr}"] = paddle.load(str(folder / f"fpn_{lvl}_{wb}"))
        by_order = dict(zip(self.fpn.state_dict(), self._fpn_keys()))
        self.fpn.set_state_dict({k: fpn[v] for k, v in by_order.items()})
        for n in ("conv_rpn_fpn2", "rpn_cls_logits_fpn2", "rpn_bbox_pred_fpn2"):
            self.rpn[n] = (paddle.load(str(folder / f"{n}_w")), paddle.load(str(folder / f"{n}_b")))
        return missing

    def _fpn_keys(self) -> list[str]:
        """FPN state keys in module order, written as lateral_convs.i / fpn_convs.i (ppdet names them
        fpn_inner_res{i+2}_sum_lateral, fpn_res{i+2}_sum, fpn_5, ...)."""
        keys = []
        for i in range(3):
            keys += [f"lateral_convs.{i}.weight", f"lateral_convs.{i}.bias"]
            keys += [f"fpn_convs.{i}.weight", f"fpn_convs.{i}.bias"]
        keys += ["fpn_convs.3.weight", "fpn_convs.3.bias", "fpn_convs.4.weight", "fpn_convs.4.bias"]
        return keys

    def forward(self, x):
        taps = self.backbone({"image": x})
        levels = self.fpn(taps)
        conv = lambda v, n, **kw: paddle.nn.functional.conv2d(v, *(t.astype(v.dtype) for t in self.rpn[n]), **kw)  # noqa: E731
        out = {f"c{k + 2}": t for k, t in enumerate(taps)}
        out.update({f"p{k + 2}": f for k, f in enumerate(levels)})
        for k, f in enumerate(levels):
            h = paddle.nn.functional.relu(conv(f, "conv_rpn_fpn2", padding=1))
            out[f"logits_p{k + 2}"] = conv(h, "rpn_cls_logits_fpn2")
            out[f"deltas_p{k + 2}"] = conv(h, "rpn_bbox_pred_fpn2")
        return out


def run_pipeline(work: Path) -> None:
    """work/request.json: {"size", "images", "weights" (persistables folder)}. Step `reader` writes
    work/input_{i}.npz; step `heads` reads work/dense_{i}.npz (pocketdet's dense outputs on that input) and
    writes work/paddle_{i}.npz."""
    req = json.loads((work / "request.json").read_text())
    size = int(req["size"])
    if req["step"] == "reader":
        for i, img in enumerate(req["images"]):
            x, info, shape = static_reader(Path(img), size)
            np.savez(work / f"input_{i}.npz", image=x, im_info=info, im_shape=shape)
        return
    folder = Path(req["weights"])
    weights = load_static_weights(folder)
    if req["step"] == "dense":
        # Paddle's own dense network on the static reader's input: float32 for the detections, float64
        # for the parity of every dense tensor (work/paddle_dense64_{i}.npz)
        net = DenseRef(req["lr_mult_list"])
        missing = net.load_static(folder)
        (work / "missing.json").write_text(json.dumps(missing))
        net.eval()
        for i in range(len(req["images"])):
            inp = np.load(work / f"input_{i}.npz")
            dense = {k: v.numpy() for k, v in net(T(inp["image"])).items()}
            out = static_inference(dense, weights, inp["im_info"], inp["im_shape"], size)
            np.savez(work / f"paddle_{i}.npz", **out)
        net.to(dtype="float64")
        for i in range(len(req["images"])):
            x = np.load(work / f"input_{i}.npz")["image"].astype(np.float64)
            np.savez(work / f"paddle_dense64_{i}.npz", **{k: v.numpy() for k, v in net(T(x)).items()})
        return
    for i in range(len(req["images"])):
        inp, dense = np.load(work / f"input_{i}.npz"), dict(np.load(work / f"dense_{i}.npz"))
        out = static_inference(dense, weights, inp["im_info"], inp["im_shape"], size)
        np.savez(work / f"paddle_{i}.npz", **out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "cascade_static_ops.npz")
    ap.add_argument("--pipeline", type=Path, help="run the end-to-end step described in DIR/request.json "
                                                  "(driven by tools/cascade_static_e2e.py)")
    args = ap.parse_args()
    paddle.set_device("cpu")
    if args.pipeline:
        with paddle.no_grad():
            run_pipeline(args.pipeline)
        return
    rng = np.random.default_rng(0)
    out: dict = {"paddle": np.array(paddle.__version__)}
    resize_cases(out)
    anchor_cases(out)
    proposal_cases(out, rng)
    roi_align_cases(out, rng)
    coder_cases(out, rng)
    nms_cases(out, rng)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {args.out.stat().st_size} bytes, {len(out)} arrays")


if __name__ == "__main__":
    main()
