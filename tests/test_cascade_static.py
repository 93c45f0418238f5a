"""Cascade R-CNN's static-graph conventions against the legacy Paddle ops (issue 22), one test per convention.

The reference outputs come from paddle 3.3.1's legacy ops (`anchor_generator`, `generate_proposals` +
`collect_fpn_proposals`, `distribute_fpn_proposals` + `roi_align`, `box_coder`, `multiclass_nms3`) and the
static reader's `cv2.resize`, stored by tools/cascade_static_reference.py in
tests/fixtures/cascade_static_ops.npz. Each check runs both the torch model code and its numpy twin
(`deploy/rcnn_ops.py`, used by the exported model), so the export path is held to the same reference.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import pocketdet
from pocketdet.deploy import npops, rcnn_ops
from pocketdet.models import pixel_boxes

FIX = np.load(Path(__file__).parent / "fixtures" / "cascade_static_ops.npz")


PADDLE_PY = Path(__file__).resolve().parents[1] / ".venv-paddle" / "bin" / "python"


@pytest.mark.skipif(not PADDLE_PY.exists(), reason="no .venv-paddle (run `make paddle-env` for the live ops)")
def test_fixture_is_what_the_live_legacy_ops_give(tmp_path):
    """Live: the legacy ops rerun now give the committed fixture, so every check below holds against them."""
    import subprocess

    out = tmp_path / "ops.npz"
    subprocess.run([str(PADDLE_PY), str(Path(__file__).resolve().parents[1] / "tools/cascade_static_reference.py"),
                    "--out", str(out)], check=True, capture_output=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    live = np.load(out)
    assert set(live) == set(FIX)
    for k in FIX:
        if k != "paddle":
            np.testing.assert_allclose(live[k], FIX[k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def models():
    return {s: pocketdet.build(f"cascade_rcnn_mnv3_large_fpn_{s}").eval() for s in (320, 640)}


def test_resize_is_cv2_with_the_exact_scale(models):
    """ResizeImage: `cv2.resize(fx=fy=s)`: size round(side * s), sampled with s itself."""
    rgb = FIX["resize_input"]
    for i in range(2):
        s, ref = float(FIX[f"resize_scale_{i}"]), FIX[f"resize_out_{i}"].transpose(2, 0, 1)
        nh, nw = ref.shape[1:]
        assert (nh, nw) == (round(rgb.shape[0] * s), round(rgb.shape[1] * s))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None] / 255
        got = torch.ops.aten.upsample_bilinear2d(x, [nh, nw], False, s, s)[0].numpy()
        assert np.abs(got - ref).max() < 2e-6
        assert np.abs(rcnn_ops.resize_bilinear(rgb, nh, nw, s) - ref).max() < 2e-6
        # the size-ratio resize (what F.interpolate(size=...) does) is measurably different
        plain = torch.nn.functional.interpolate(x, (nh, nw), mode="bilinear", align_corners=False)[0].numpy()
        assert np.abs(plain - ref).max() > 1e-3


@pytest.mark.parametrize("size", [320, 640])
def test_anchors_equal_anchor_generator(models, size):
    gen = models[size].rpn.anchor_generator
    per_level = gen.per_level([(3, 5)] * 5)
    for lvl, got in zip(range(2, 7), per_level):
        ref = FIX[f"anchors_{size}_p{lvl}"]
        assert torch.equal(got, torch.from_numpy(ref)), lvl
        np.testing.assert_array_equal(rcnn_ops.level_anchors((3, 5), gen.sizes[lvl - 2], gen.aspect_ratios,
                                                             gen.strides[lvl - 2]), ref)
    # the documented difference to torchvision's generator: P2 ratio 0.5 is 24 x 12 (+1 widths), not 22 x 12
    if size == 320:
        w, h = (per_level[0][0, 2:] - per_level[0][0, :2] + 1).tolist()
        assert (w, h) == (24.0, 12.0)


def test_proposals_equal_generate_and_collect(models):
    m = models[320]
    hp, wp, _ = FIX["props_im_info"]
    pre_n, post_n = (int(v) for v in FIX["props_top_n"])
    logits = [torch.from_numpy(FIX[f"props_logits_p{lvl}"]) for lvl in range(2, 7)]
    deltas = [torch.from_numpy(FIX[f"props_deltas_p{lvl}"]) for lvl in range(2, 7)]
    ref = FIX["props_rois"]
    rpn = m.rpn
    saved = dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)
    rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"] = pre_n, post_n
    try:
        anchors = rpn.anchor_generator.per_level([lg.shape[-2:] for lg in logits])
        got = rpn.static_proposals(logits, deltas, 0, anchors, (int(hp), int(wp)))
    finally:
        rpn._pre_nms_top_n.update(saved[0])
        rpn._post_nms_top_n.update(saved[1])
    assert got.shape == ref.shape and np.abs(got.numpy() - ref).max() < 1e-4
    cfg = {"pre_nms_top_n": pre_n, "post_nms_top_n": post_n, "nms_thresh": 0.7, "weights": [1.0] * 4,
           "bbox_xform_clip": pixel_boxes.RPN_DWH_CLIP}
    gen = rpn.anchor_generator
    acfg = {"sizes": gen.sizes, "aspect_ratios": gen.aspect_ratios, "strides": gen.strides}
    got_np = rcnn_ops.rpn_proposals([lg.numpy() for lg in logits], [d.numpy() for d in deltas],
                                    (int(hp), int(wp)), cfg, acfg)
    assert got_np.shape == ref.shape and np.abs(got_np - ref).max() < 1e-4
    # clipped to the padded input with the +1 convention: x2 <= w - 1
    assert ref[:, 2].max() <= wp - 1 and ref[:, 3].max() <= hp - 1


def test_roi_levels_and_roi_align_equal_fpn_roi_align(models):
    pool = models[320].roi_heads.box_roi_pool
    feats = [torch.from_numpy(FIX[f"roi_feat_p{lvl}"]) for lvl in (2, 3, 4)]
    rois = torch.from_numpy(FIX["roi_rois"])
    assert torch.equal(pool.levels_of(rois), torch.from_numpy(FIX["roi_levels"]))
    # sqrt(+1 area) of 111 x 111 is under 112: P2; 112 x 112 reaches P3 (torchvision's rule: P3 only at 112)
    assert FIX["roi_levels"][:4].tolist() == [0, 1, 2, 0]
    got = pool(feats, [rois]).numpy()
    assert np.abs(got - FIX["roi_pooled"]).max() < 1e-5
    cfg = {"output_size": [7, 7], "sampling_ratio": 2, "canonical_scale": 112, "canonical_level": 3}
    got_np = rcnn_ops.multiscale_roi_align([f.numpy() for f in feats], FIX["roi_rois"], (128, 160), cfg)
    assert np.abs(got_np - FIX["roi_pooled"]).max() < 1e-5


def test_stage_decode_equals_box_coder_without_clip_or_clamp(models):
    heads = models[320].roi_heads
    rois, deltas = torch.from_numpy(FIX["coder_rois"]), torch.from_numpy(FIX["coder_deltas"])
    for k in range(3):
        ref = FIX[f"coder_stage{k}"]
        got = heads.decode(k, deltas, rois).numpy()
        assert np.allclose(got, ref, rtol=1e-5, atol=1e-3), k
        got_np = rcnn_ops.decode_deltas(FIX["coder_deltas"], FIX["coder_rois"], heads.box_coders[k].weights, None)
        assert np.allclose(got_np, ref, rtol=1e-5, atol=1e-3), k
    # row 0 has dw = 12 / 5: no clamp at log(1000/16) * 5, the box grows e^2.4 times, beyond the image
    assert FIX["coder_stage0"][0, 2] - FIX["coder_stage0"][0, 0] > 10 * (FIX["coder_rois"][0, 2] - FIX["coder_rois"][0, 0])


def test_final_decode_in_original_pixels(models):
    """get_prediction: the stage-3 RoIs are divided by the resize scale *before* the +1 decode."""
    heads = models[320].roi_heads
    rois, deltas = torch.from_numpy(FIX["coder_rois"]), torch.from_numpy(FIX["coder_deltas"])
    scale = float(FIX["coder_scale"])
    ref = FIX["coder_final"]
    got = heads.decode(2, deltas, rois / scale).numpy()
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-3)
    # decoding in input pixels and dividing afterwards differs by (1/scale - 1) px of width
    other = (heads.decode(2, deltas, rois) / scale).numpy()
    assert np.abs(other - ref).max() > 0.5
    # box_clip: to width-1 / height-1 of the original image (inclusive boxes)
    clipped = pixel_boxes.clip(torch.from_numpy(ref), 100.0, 150.0)
    assert float(clipped[:, 2].max()) == 149.0 and float(clipped[:, 3].max()) == 99.0


def test_multiclass_nms_with_plus_one_iou(models):
    m = models[320]
    boxes, scores = torch.from_numpy(FIX["nms_boxes"]), torch.from_numpy(FIX["nms_scores"])
    ref = FIX["nms_out"]  # label (1-based, background 0), score, x1, y1, x2, y2; grouped by class
    cfg = dict(m.postprocess_cfg, keep_top_k=30)
    from pocketdet.models.cascade_rcnn import postprocess_detections

    got = postprocess_detections(scores, boxes, cfg)
    order = np.lexsort((-ref[:, 1], ref[:, 0]))
    ref = ref[order]
    mine = np.concatenate([got["labels"][:, None].numpy() + 1.0, got["scores"][:, None].numpy(),
                           got["boxes"].numpy() - np.array([0, 0, 1, 1])], 1)
    mine = mine[np.lexsort((-mine[:, 1], mine[:, 0]))]
    assert mine.shape == ref.shape and np.allclose(mine, ref, atol=1e-6)
    from pocketdet.deploy.postprocess import rcnn_detections

    got_np = rcnn_detections(FIX["nms_scores"], FIX["nms_boxes"], cfg)
    assert np.array_equal(np.sort(got_np["scores"]), np.sort(got["scores"].numpy()))
    # the +1 IoU of [0,0,3,3] and [2,0,5,3] is 8/24 (continuous: 3/15): suppressed at 0.3
    pair = torch.tensor([[0.0, 0, 3, 3], [2, 0, 5, 3]])
    assert len(pixel_boxes.nms(pair, torch.tensor([0.9, 0.8]), torch.zeros(2), 0.3)) == 1
    assert len(npops.batched_nms(pair.numpy(), np.array([0.9, 0.8], np.float32), np.zeros(2), 0.3, 10)) == 2


# -- end to end ---------------------------------------------------------------------------------------------
E2E = Path(__file__).parent / "fixtures" / "cascade_static_e2e.npz"
VAL = Path(__file__).resolve().parents[1] / "data" / "coco128" / "images" / "val2017"


def _e2e_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cascade_static_e2e", E2E.parents[2] / "tools" / "cascade_static_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("size", [320, pytest.param(640, marks=pytest.mark.slow)])  # 640: ~45 s loaded
def test_detections_equal_the_static_graph(size):
    """Paddle's whole static pipeline (static reader, paddledet's dygraph MobileNetV3 + FPN, RPN convs, the
    legacy ops of the static inference graph and the stage heads; every weight read by Paddle from the
    seed's static layout; tools/cascade_static_e2e.py) against pocketdet's own predict on real photos,
    with the same seeded model converted from that layout: of Paddle's top 50, >= 90% (measured: all,
    boxes within 1.3e-3 px) have a pocketdet detection with the same label, IoU > 0.99 and |score diff|
    < 1e-3."""
    tool = _e2e_tool()
    ref = np.load(E2E)
    model = tool.trained_like(size)
    for stem in ("000000000285", "000000000632"):  # 100 detections each
        got = model.predict(VAL / f"{stem}.jpg")[0]
        matched, n = tool.top50_match(ref[f"{size}_{stem}"], got)
        assert n > 0 and matched >= 0.9 * n, (size, stem, matched, n)
