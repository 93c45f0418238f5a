"""Issue 20: the C++ runner (deploy/cpp) gives the Python ncnn runtime's detections on real photos.

Needs the C++ build (`make cpp-runner`: ncnn from its PyPI sdist + the runner, cached under .cache/); every
test here skips without it, e.g. in CI unless its cache holds the build. Both runners are fed the same RGB
array (written as a binary PPM, which stb_image reads losslessly): JPEG decoding differs between PIL and
stb_image and is not part of the contract (docs/deploy.md).
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.bench import make_trained_like
from pocketdet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(os.environ.get("POCKETDET_CPP_RUNNER", ROOT / ".cache" / "cpp-runner" / "pocketdet_detect"))
PHOTOS = sorted((ROOT / "data" / "coco128" / "images" / "val2017").glob("*.jpg"))[:3]
CALIB = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]

pytestmark = [
    pytest.mark.skipif(not RUNNER.is_file(), reason=f"C++ runner not built ({RUNNER}): run `make cpp-runner`"),
]


def run_cpp(model, images, *extra, check=True):
    res = subprocess.run([str(RUNNER), str(model), *map(str, images), "--threads", "1", *extra],
                         capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"pocketdet_detect failed ({res.returncode}): {res.stderr}")
    return res


@pytest.fixture(scope="module")
def ppm_photos(tmp_path_factory):
    """(path of a PPM, the RGB array) per photo: the decoded JPEG as both runners will see it."""
    out = tmp_path_factory.mktemp("ppm")
    photos = []
    for p in PHOTOS:
        rgb = npops.load_rgb(p)
        dst = out / (p.stem + ".ppm")
        Image.fromarray(rgb).save(dst)
        photos.append((dst, rgb))
    return photos


def _export(name, tmp_path_factory):
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.mobile import export_ncnn

    torch.manual_seed(0)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_trained_like(build_model(load_config(name).model), CALIB)
        return export_ncnn(model, tmp_path_factory.mktemp("ncnn") / name, name=name)
    finally:
        torch.set_num_threads(prev)


FITTED = ROOT / "tests" / "fixtures" / "fitted" / "ssdlite_small_fit.pt"


@pytest.fixture(scope="module", params=["ssdlite_mnv3_small_320", "fitted_ssdlite", "yolov3_mnv3_large_320_prune_fpgm",
                                        "yolov3_mnv3_large_320"])
def exported(request, tmp_path_factory):
    """Trained-like weights (hundreds of detections per photo, crowded classes for YOLOv3) and the fitted
    SSDLite fixture (a few confident detections, as a trained model gives)."""
    if request.param == "fitted_ssdlite":
        if not FITTED.is_file():
            pytest.skip("fitted SSDLite fixture not present")
        pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
        from pocketdet.api import load
        from pocketdet.deploy.mobile import export_ncnn

        return export_ncnn(load(FITTED).eval(), tmp_path_factory.mktemp("ncnn") / "fitted", name="fitted")
    return _export(request.param, tmp_path_factory)


def assert_same_detections(cpp: list[dict], py: dict, what: str):
    """One-to-one: same count; each C++ detection has an unused Python one of its label with the score within
    1e-3 and every box coordinate within 0.5 px (matching, not position: near-tied scores may swap order)."""
    n = len(py["scores"])
    assert len(cpp) == n, f"{what}: C++ {len(cpp)} detections, Python {n}"
    used = np.zeros(n, bool)
    for d in cpp:
        ok = (~used & (py["labels"] == d["label"]) & (np.abs(py["scores"] - d["score"]) <= 1e-3)
              & (np.abs(py["boxes"] - np.asarray(d["box"])).max(axis=1) <= 0.5))
        assert ok.any(), f"{what}: no Python detection matches C++ {d}"
        used[np.flatnonzero(ok)[0]] = True


def test_cpp_detections_equal_python(exported, ppm_photos):
    from pocketdet.deploy.mobile import NcnnDetector

    det = NcnnDetector(exported, threads=1)
    lines = run_cpp(exported, [p for p, _ in ppm_photos]).stdout.strip().split("\n")
    assert len(lines) == len(ppm_photos)
    total = 0
    for line, (path, rgb) in zip(lines, ppm_photos):
        out = json.loads(line)
        assert out["image"] == str(path) and (out["height"], out["width"]) == rgb.shape[:2]
        py = det.predict(rgb)
        assert_same_detections(out["detections"], py, f"{exported.name} on {path.name}")
        assert [d["name"] for d in out["detections"]] == [det.class_names[d["label"]] for d in out["detections"]]
        total += len(py["scores"])
    assert total > 10  # the comparison is not vacuous


def test_cpp_resize_equals_numpy(exported, ppm_photos, tmp_path):
    """The network input itself: the C++ antialiased resize against npops.resize_chw on the same array."""
    path, rgb = ppm_photos[0]
    dump = tmp_path / "input.f32"
    run_cpp(exported, [path], "--dump-input", str(dump))
    size = 320
    cpp = np.fromfile(dump, np.float32).reshape(3, size, size)
    py = npops.resize_chw(rgb, size)[0]
    assert np.abs(cpp - py).max() <= 1e-6


def test_cpp_runner_errors_are_one_line(exported, ppm_photos, tmp_path):
    # metadata missing: exit 1, one line naming the JSON file
    lonely = tmp_path / "m.ncnn.param"
    lonely.write_text(exported.read_text())
    (tmp_path / "m.ncnn.bin").write_bytes(exported.with_name(exported.name.replace(".param", ".bin")).read_bytes())
    res = run_cpp(lonely, [ppm_photos[0][0]], check=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "m.ncnn.json" in res.stderr
    # a Cascade R-CNN export is refused by name
    meta = json.loads(exported.with_name(exported.name.replace(".param", ".json")).read_text())
    (tmp_path / "m.ncnn.json").write_text(json.dumps(dict(meta, arch="cascade_rcnn", ncnn_heads={})))
    res = run_cpp(lonely, [ppm_photos[0][0]], check=False)
    assert res.returncode == 1 and "cascade_rcnn" in res.stderr and "m.ncnn.json" in res.stderr
    # an unreadable image
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = run_cpp(exported, [bad], check=False)
    assert res.returncode == 1 and "bad.jpg" in res.stderr and res.stderr.count("\n") == 1
    # usage error
    res = subprocess.run([str(RUNNER), str(exported)], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
