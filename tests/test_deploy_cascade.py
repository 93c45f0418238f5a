"""Cascade R-CNN export (one two-part ONNX file; ncnn dense net + stage heads) and its numpy host steps,
against the torch model on real photos."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.config import load_config
from pocketdet.deploy import npops, rcnn_ops
from pocketdet.deploy.trained_like import make_trained_like
from pocketdet.deploy.export import VerifyReport, compare_detections, export_onnx, verify_export
from pocketdet.deploy.runtime import Detector
from pocketdet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "data" / "coco128" / "images" / "val2017"
LANDSCAPE, PORTRAIT = VAL / "000000000139.jpg", VAL / "000000000285.jpg"  # 640x426, 586x640
CALIB = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def cascade():
    """The 320 model with trained-like outputs (frozen BN calibrated on photos, sharpened RPN and class
    logits): a random-init model has tied objectness everywhere and no score above 0.05."""
    torch.manual_seed(0)
    return make_trained_like(build_model(load_config("cascade_rcnn_mnv3_large_fpn_320").model), CALIB)


@pytest.fixture(scope="module")
def cascade_onnx(cascade, tmp_path_factory):
    return export_onnx(cascade, tmp_path_factory.mktemp("onnx") / "cascade.onnx", name="cascade_rcnn_mnv3_large_fpn_320")


def test_one_file_holds_both_parts(cascade, cascade_onnx):
    import onnx

    proto = onnx.load(str(cascade_onnx))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["pocketdet"])
    parts = meta["arch_meta"]["parts"]
    assert parts["dense"]["outputs"] == meta["output_names"] and len(meta["output_names"]) == 15
    assert parts["roi"] == {"inputs": ["roi_p2", "roi_p3", "roi_p4", "rois", "image_info"],
                            "outputs": ["scores", "boxes"]}
    graph_inputs = [i.name for i in proto.graph.input]
    assert graph_inputs == ["images"] + parts["roi"]["inputs"]
    # every input has a default, so ORT accepts a feed of one part only
    assert set(graph_inputs) <= {t.name for t in proto.graph.initializer}
    assert [o.name for o in proto.graph.output] == meta["output_names"] + ["scores", "boxes"]
    assert meta["arch_meta"]["rpn"]["pre_nms_top_n"] == 300 and meta["arch_meta"]["rpn"]["post_nms_top_n"] == 100
    domains = [op.domain for op in proto.opset_import]  # one entry per domain (ORT's quantizer insists)
    assert len(domains) == len(set(domains))


def test_verify_export_landscape_and_portrait(cascade, cascade_onnx):
    report = verify_export(cascade, Detector(cascade_onnx, threads=1), [LANDSCAPE, PORTRAIT])
    assert report.ok and report.images == 2 and not report.notes
    err = report.raw_max_abs_err
    # measured: FPN/RPN outputs <= 4e-5, proposals 1.5e-5 px, RoI scores 2e-6, boxes 3e-5 px
    assert err["padding"] == 0.0  # mean padding + in-graph normalisation == torch's zeroed padding, exactly
    assert max(v for k, v in err.items() if k.startswith(("p", "rpn_"))) <= 1e-3
    assert err["proposals"] <= 1e-3 and err["roi_scores"] <= 1e-4 and err["roi_boxes"] <= 1e-3
    assert report.detections > 10 and report.matched == report.detections and report.tie_exempt == 0


def test_detector_predict_equals_model_predict(cascade, cascade_onnx):
    det = Detector(cascade_onnx, threads=1)
    ref = {k: v.numpy() for k, v in cascade.predict(PORTRAIT)[0].items()}
    got = det.predict(PORTRAIT)
    assert len(got["scores"]) == len(ref["scores"]) > 0
    report = VerifyReport(path="test")
    compare_detections(ref, got, 100, box_tol=0.01, score_tol=1e-4, report=report, where=PORTRAIT.name)
    assert report.ok and report.matched == len(ref["scores"]), report.problems
    h, w = npops.load_rgb(PORTRAIT).shape[:2]
    assert got["boxes"][:, [0, 2]].max() <= w and got["boxes"][:, [1, 3]].max() <= h
    assert got["names"] == [det.class_names[i] for i in got["labels"]]


def test_no_proposals_skips_the_roi_part(cascade, cascade_onnx, monkeypatch):
    det = Detector(cascade_onnx, threads=1)
    monkeypatch.setattr(det._postprocess, "proposals", lambda outputs: np.zeros((0, 4), np.float32))

    def fail(*args):
        raise AssertionError("the RoI part must not run without proposals")

    monkeypatch.setattr(det, "run_part", fail)
    out = det.predict(LANDSCAPE)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["names"] == []
    # torch agrees: no proposal, no detection
    monkeypatch.setattr(cascade.rpn, "static_proposals", lambda *a: torch.zeros(0, 4))
    assert len(cascade.predict(LANDSCAPE)[0]["scores"]) == 0


# -- numpy host steps against torch -----------------------------------------------------------------------
def test_resize_without_antialias_matches_torch(cascade):
    for photo in (LANDSCAPE, PORTRAIT):
        rgb = npops.load_rgb(photo)
        nh, nw = rcnn_ops.resized_hw(*rgb.shape[:2], 320)
        assert (nh, nw) == cascade.resized_size(*rgb.shape[:2]) and max(nh, nw) == 320
        t = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()
        ref = cascade.resize_images([t / 255])[0][0, :, :nh, :nw].numpy()
        s = rcnn_ops.long_side_scale(*rgb.shape[:2], 320)
        assert np.abs(rcnn_ops.resize_bilinear(rgb, nh, nw, s) - ref).max() < 2e-5  # measured 6e-6


def test_anchors_match_the_torch_generator(cascade):
    feats = [torch.zeros(1, 48, 80 // 2 ** k, 56 // 2 ** k) for k in range(4)] + [torch.zeros(1, 48, 5, 4)]
    ref = cascade.anchors_for(feats).numpy()
    gen = cascade.rpn.anchor_generator
    got = np.concatenate([rcnn_ops.level_anchors(tuple(f.shape[-2:]), s, gen.aspect_ratios, st)
                          for f, s, st in zip(feats, gen.sizes, gen.strides)])
    assert np.array_equal(got, ref)


def test_numpy_multiscale_roi_align_matches_torch(cascade):
    rng = np.random.default_rng(0)
    levels = [rng.standard_normal((1, 8, 384 // s, 256 // s)).astype(np.float32) for s in (4, 8, 16)]
    xy = rng.uniform(-20, 260, (90, 2))
    # square-ish boxes for each pooled level (FPN rule: side < 112 -> p2, < 224 -> p3, else p4), some of
    # them sub-pixel or past the map's edge
    side = np.concatenate([rng.uniform(0.5, 100, 30), rng.uniform(120, 210, 30), rng.uniform(240, 400, 30)])
    wh = side[:, None] * rng.uniform(0.9, 1.1, (90, 2))
    rois = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    which = rcnn_ops.roi_levels(rois, 2, 4, 112, 3)
    assert np.bincount(which, minlength=3).min() >= 20  # every level is exercised
    pool = cascade.roi_heads.box_roi_pool
    assert torch.equal(pool.levels_of(torch.from_numpy(rois)), torch.from_numpy(which))
    ref = pool([torch.from_numpy(f) for f in levels], [torch.from_numpy(rois)])
    cfg = {"output_size": [7, 7], "sampling_ratio": 2, "canonical_scale": 112, "canonical_level": 3}
    got = rcnn_ops.multiscale_roi_align(levels, rois, (384, 256), cfg)
    assert np.abs(got - ref.numpy()).max() < 1e-5  # measured 4.8e-7


# -- ncnn ------------------------------------------------------------------------------------------------------
def test_ncnn_export_and_verify(cascade, tmp_path):
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.mobile import NcnnDetector, export_ncnn

    param = export_ncnn(cascade, tmp_path / "cascade")
    assert (tmp_path / "cascade.heads.ncnn.param").is_file() and (tmp_path / "cascade.heads.ncnn.bin").is_file()
    report = verify_export(cascade, NcnnDetector(param, threads=1), [LANDSCAPE, PORTRAIT])
    assert report.ok and not report.notes and report.raw_max_abs_err["padding"] == 0.0
    assert report.detections > 10 and report.matched == report.detections
