"""Export (ONNX, ncnn), the torch-free runtime and its numpy post-processing, against the torch model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import batched_nms as tv_batched_nms

from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.bench import replace_section
from pocketdet.deploy.trained_like import make_trained_like
from pocketdet.deploy.export import (ExportVerificationError, VerifyReport, compare_detections, export_model,
                                     export_onnx, verify_export)
from pocketdet.deploy.runtime import Detector, ModelFileError
from pocketdet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "data" / "coco128" / "images" / "val2017"
PHOTOS = sorted(VAL.glob("*.jpg"))[:3]
CALIB = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def ssd_small():
    """SSDLite-MNV3-Small whose outputs look trained (BN statistics from real photos, sharpened logits):
    a random-init model's scores are all tied at 1/81, which would make the detection comparison vacuous."""
    torch.manual_seed(0)
    return make_trained_like(build_model(load_config("ssdlite_mnv3_small_320").model), CALIB)


@pytest.fixture(scope="module")
def ssd_small_onnx(ssd_small, tmp_path_factory):
    return export_onnx(ssd_small, tmp_path_factory.mktemp("onnx") / "ssd_small.onnx", name="ssdlite_mnv3_small_320")


def test_runtime_import_leaves_torch_out():
    code = ("import sys, pocketdet.deploy.runtime, pocketdet.deploy.postprocess, pocketdet.deploy.mobile; "
            "from pocketdet import Detector; "
            "bad = [m for m in ('torch', 'pocketdet.models', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_export_writes_metadata(ssd_small, ssd_small_onnx):
    import onnx

    proto = onnx.load(str(ssd_small_onnx))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["pocketdet"])
    assert meta["arch"] == "ssdlite" and meta["name"] == "ssdlite_mnv3_small_320"
    assert meta["class_names"] == ssd_small.class_names and meta["input_size"] == 320
    assert meta["postprocess_cfg"] == ssd_small.postprocess_cfg
    assert np.allclose(meta["mean"], [0.485, 0.456, 0.406]) and np.allclose(meta["std"], [0.229, 0.224, 0.225])
    assert [o.name for o in proto.graph.output] == meta["output_names"] == ["boxes", "scores"]


def test_verify_export_on_real_photos(ssd_small, ssd_small_onnx):
    report = verify_export(ssd_small, Detector(ssd_small_onnx, threads=1), PHOTOS)
    assert report.ok and report.images == len(PHOTOS)
    # measured: boxes <= 1e-5 (normalised), scores <= 3.2e-4 (logits up to ~120 in this sharpened model)
    assert report.raw_max_abs_err["boxes"] <= 1e-4 and report.raw_max_abs_err["scores"] <= 1e-3
    assert report.detections > 50 and report.matched == report.detections and report.tie_exempt == 0


def test_detector_equals_torch_predictions(ssd_small, ssd_small_onnx):
    det = Detector(ssd_small_onnx, threads=1)
    photo = PHOTOS[1]
    ref = {k: v.numpy() for k, v in ssd_small.predict(photo)[0].items()}
    got = det.predict(photo)
    assert len(got["scores"]) == len(ref["scores"]) > 0
    # one-to-one: same label, box within 0.05 px (measured 2.4e-3), score within 1e-3 (order-insensitive:
    # scores 1e-5 apart may swap places)
    report = VerifyReport(path="test")
    compare_detections(ref, got, 200, box_tol=0.05, score_tol=1e-3, report=report, where=photo.name)
    assert report.ok and report.matched == len(ref["scores"]), report.problems
    assert np.allclose(np.sort(ref["scores"]), np.sort(got["scores"]), atol=1e-3)
    assert got["names"] == [det.class_names[i] for i in got["labels"]]
    # same answer for a path, a PIL image and an HxWx3 uint8 array; boxes in original-image pixels
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    for other in (det.predict(Image.open(photo)), det.predict(rgb)):
        assert np.array_equal(other["boxes"], got["boxes"])
    h, w = rgb.shape[:2]
    assert got["boxes"][:, [0, 2]].max() <= w and got["boxes"][:, [1, 3]].max() <= h


def test_score_thresh_filters(ssd_small_onnx):
    det = Detector(ssd_small_onnx, threads=1)
    full, high = det.predict(PHOTOS[0]), det.predict(PHOTOS[0], score_thresh=0.5)
    assert len(high["scores"]) == int((full["scores"] >= 0.5).sum()) and (high["scores"] >= 0.5).all()


def test_priors_in_metadata_variant_gives_same_detections(ssd_small, ssd_small_onnx, tmp_path):
    raw = export_onnx(ssd_small, tmp_path / "raw.onnx", decode_in_graph=False)
    det_raw, det_dec = Detector(raw, threads=1), Detector(ssd_small_onnx, threads=1)
    assert det_raw.meta["output_names"] == ["deltas", "logits"] and len(det_raw.meta["arch_meta"]["priors"]) > 0
    a, b = det_raw.predict(PHOTOS[0]), det_dec.predict(PHOTOS[0])
    assert np.array_equal(a["labels"], b["labels"]) and np.abs(a["boxes"] - b["boxes"]).max() < 0.05


def test_verification_fails_loudly_on_a_different_model(ssd_small, ssd_small_onnx):
    other = make_trained_like(build_model(load_config("ssdlite_mnv3_small_320").model), CALIB[:4])
    with pytest.raises(ExportVerificationError, match="ssd_small.onnx"):
        verify_export(other, ssd_small_onnx, PHOTOS[:1])


def test_export_from_zoo_name_with_random_weights(tmp_path):
    # random init ties every score at 1/81: verification compares what is comparable and says so
    path, report = export_model("ssdlite_mnv3_small_320", tmp_path / "zoo.onnx", images=PHOTOS[:1], threads=1)
    assert report.ok and report.images == 1 and report.tie_exempt > 0
    assert Detector(path).class_names[0] == "person"  # COCO names travel in the metadata


# -- bad files ---------------------------------------------------------------------------------------------
def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        Detector(tmp_path / "nope.onnx")


def test_non_onnx_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(ModelFileError, match="notes.onnx"):
        Detector(bad)


def test_onnx_without_pocketdet_metadata(ssd_small_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(ssd_small_onnx))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ModelFileError, match=r"plain\.onnx.*no pocketdet metadata"):
        Detector(plain)


def test_metadata_of_unknown_arch(ssd_small_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(ssd_small_onnx))
    meta = json.loads(proto.metadata_props[0].value)
    meta["arch"] = "retinanet"
    proto.metadata_props[0].value = json.dumps(meta)
    odd = tmp_path / "odd.onnx"
    onnx.save(proto, str(odd))
    with pytest.raises(ModelFileError, match=r"odd\.onnx.*retinanet"):
        Detector(odd)


def test_unreadable_image(ssd_small_onnx, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        Detector(ssd_small_onnx).predict(bad)


# -- numpy pieces against their torch twins -----------------------------------------------------------------
def test_resize_matches_torch_antialias():
    for photo in PHOTOS:
        rgb = npops.load_rgb(photo)
        t = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None] / 255
        ref = F.interpolate(t, size=(320, 320), mode="bilinear", align_corners=False, antialias=True).numpy()
        assert np.abs(npops.resize_chw(rgb, 320, exact=True) - ref).max() < 5e-5  # measured 1.7e-5
        assert np.abs(npops.resize_chw(rgb, 320, exact=False) - ref).max() <= 1 / 255 + 1e-6
        up = F.interpolate(t, size=(700, 700), mode="bilinear", align_corners=False, antialias=True).numpy()
        assert np.abs(npops.resize_chw(rgb, 700, exact=True) - up).max() < 1e-4  # upscaling taps; measured 4.8e-5


@pytest.mark.parametrize("max_pairs", [0, 10 ** 9])  # best-first loop / fixed-point strategy
def test_numpy_nms_matches_torchvision(max_pairs):
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(0, 1500))
        ctr, wh = rng.uniform(0, 1, (n, 2)), rng.uniform(0.0, 0.5, (n, 2))
        boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)
        if n:
            boxes[rng.integers(0, n, 5)] = boxes[0]  # exact duplicates (IoU 1)
            boxes[rng.integers(0, n, 3)] = 0.0  # empty boxes: IoU 0/0
        scores = (rng.permutation(n) / max(n, 1)).astype(np.float32)  # distinct: no tie ambiguity
        labels = rng.integers(0, int(rng.choice([1, 3, 12])), n)  # 1-3 labels: crowded groups (dense IoU path)
        ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.45)
        got = npops.batched_nms(boxes, scores, labels, 0.45, 100, max_pairs=max_pairs)
        assert np.array_equal(ref.numpy()[:100], got)


def test_per_class_candidates_match_torch_topk():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 0.05, (500, 6)).astype(np.float32)
    scores[:, 0] = rng.uniform(0, 0.005, 500)  # a class with no candidate
    pi, ci, s = npops.per_class_candidates(scores, 0.01, 100)
    ts, ti = torch.from_numpy(scores).topk(100, dim=0)
    keep = ts > 0.01
    ref = {(int(p), int(c)) for p, c in zip(ti[keep], torch.arange(6).expand(100, -1)[keep])}
    assert {(int(p), int(c)) for p, c in zip(pi, ci)} == ref
    assert np.array_equal(s, scores[pi, ci])


# -- other archs and backends ----------------------------------------------------------------------------------
def test_yolov3_export_and_verify(tmp_path):
    torch.manual_seed(0)
    model = make_trained_like(build_model(load_config("yolov3_mnv3_large_320").model), CALIB[:4])
    path = export_onnx(model, tmp_path / "yolo.onnx")
    report = verify_export(model, Detector(path, threads=1), PHOTOS[:1])
    assert report.ok and report.detections > 0 and report.matched + report.tie_exempt == report.detections


def test_ncnn_export_and_verify(ssd_small, tmp_path):
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.mobile import NcnnDetector, export_ncnn

    param = export_ncnn(ssd_small, tmp_path / "ssd_small")
    assert param.name == "ssd_small.ncnn.param" and (tmp_path / "ssd_small.ncnn.bin").is_file()
    report = verify_export(ssd_small, NcnnDetector(param, threads=1), PHOTOS[:2])
    assert report.ok and report.matched == report.detections > 0
    assert report.raw_max_abs_err["boxes"] <= 1e-4  # fp32 weights; pnnx's fp16 default would give ~1e-2


def test_ncnn_missing_sidecar(tmp_path):
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.mobile import NcnnDetector

    (tmp_path / "m.ncnn.param").write_text("7767517\n")
    (tmp_path / "m.ncnn.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"m\.ncnn\.json"):
        NcnnDetector(tmp_path / "m.ncnn.param")


def test_replace_section_keeps_other_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    replace_section(md, "deploy-zoo", "first", parent="deploy")
    replace_section(md, "deploy-peers", "peers", parent="deploy")
    replace_section(md, "deploy-zoo", "second", parent="deploy")
    text = md.read_text()
    assert "keep me" in text and "second" in text and "first" not in text and text.count("deploy-zoo:start") == 1
    inner = text.split("<!-- deploy:start -->")[1].split("<!-- deploy:end -->")[0]
    assert "second" in inner and "peers" in inner and "keep me" not in inner
