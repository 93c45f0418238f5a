"""Issue 20: the C++ runner (deploy/cpp) gives the Python ncnn runtime's detections on real photos.

Needs the C++ build (`make cpp-runner`: ncnn from its PyPI sdist + the runner, cached under .cache/); every
test here skips without it, e.g. in CI unless its cache holds the build. Both runners are fed the same RGB
array (written as a binary PPM, which stb_image reads losslessly): JPEG decoding differs between PIL and
stb_image and is not part of the contract (docs/deploy.md). Random-weights models run on 3 val photos; the
fitted PicoDet-XS on 3 of the photos it was fitted on, where it finds its objects with high scores.
"""
import json
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from pocketdet.config import load_config
from pocketdet.deploy import npops
from pocketdet.deploy.trained_like import make_trained_like
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


class Export(NamedTuple):
    param: Path              # NAME.ncnn.param
    photos: list[Path]       # the JPEGs to compare on
    confident: bool = False  # every photo has a detection scored > 0.5 (a fitted model on its own photos)


@pytest.fixture(scope="module")
def ppm_photos(exported, tmp_path_factory):
    """(path of a PPM, the RGB array) per photo: the decoded JPEG as both runners will see it."""
    out = tmp_path_factory.mktemp("ppm")
    photos = []
    for p in exported.photos:
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
        return Export(export_ncnn(model, tmp_path_factory.mktemp("ncnn") / name, name=name), PHOTOS)
    finally:
        torch.set_num_threads(prev)


FITTED_DIR = ROOT / "tests" / "fixtures" / "fitted"
# fixture checkpoint, the photos to compare on (None: the val photos; else its *_fit.json's first 3)
FITTED = {"fitted_ssdlite": ("ssdlite_small_fit.pt", None), "fitted_picodet": ("picodet_xs_fit.pt", "picodet_fit.json")}


def _export_fitted(name, tmp_path_factory):
    ckpt, photos_json = FITTED[name]
    if not (FITTED_DIR / ckpt).is_file():
        pytest.skip(f"fitted fixture {ckpt} not present")
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.api import load
    from pocketdet.deploy.mobile import export_ncnn

    photos = PHOTOS
    if photos_json:
        names = json.loads((FITTED_DIR / photos_json).read_text())["photos"][:3]
        photos = [ROOT / "data" / "coco128" / "images" / "train2017" / n for n in names]
    param = export_ncnn(load(FITTED_DIR / ckpt).eval(), tmp_path_factory.mktemp("ncnn") / name, name=name)
    return Export(param, photos, confident=photos_json is not None)


@pytest.fixture(scope="module", params=["ssdlite_mnv3_small_320", "fitted_ssdlite", "yolov3_mnv3_large_320_prune_fpgm",
                                        "yolov3_mnv3_large_320", "fitted_picodet", "picodet_xs_416"])
def exported(request, tmp_path_factory):
    """Trained-like weights (hundreds of detections per photo, crowded classes for YOLOv3; PicoDet-XS at 416,
    boxes decoded from random distance bins) and the fitted SSDLite and PicoDet-XS fixtures (a few confident
    detections among the low-score ones, as a trained model gives)."""
    if request.param in FITTED:
        return _export_fitted(request.param, tmp_path_factory)
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

    det = NcnnDetector(exported.param, threads=1)
    lines = run_cpp(exported.param, [p for p, _ in ppm_photos]).stdout.strip().split("\n")
    assert len(lines) == len(ppm_photos)
    total = 0
    for line, (path, rgb) in zip(lines, ppm_photos):
        out = json.loads(line)
        assert out["image"] == str(path) and (out["height"], out["width"]) == rgb.shape[:2]
        py = det.predict(rgb)
        assert_same_detections(out["detections"], py, f"{exported.param.name} on {path.name}")
        assert [d["name"] for d in out["detections"]] == [det.class_names[d["label"]] for d in out["detections"]]
        total += len(py["scores"])
        if exported.confident:  # the comparison covers the boxes that matter, not only low-score ones
            assert py["scores"].max(initial=0) > 0.5, f"{exported.param.name}: nothing confident on {path.name}"
    assert total > 10  # the comparison is not vacuous


def test_cpp_detections_equal_python_tight_cfg(exported, ppm_photos, tmp_path):
    """The paths the default thresholds rarely reach: a per-class cut of 2 (only the first candidates of a class
    stay eligible, so NMS has to look far down the score order), few detections kept and, for YOLOv3, an
    objectness threshold that drops most boxes. Both runners read these from the same metadata."""
    from pocketdet.deploy.mobile import NcnnDetector

    src = exported.param
    meta = json.loads(src.with_name(src.name.replace(".param", ".json")).read_text())
    meta["postprocess_cfg"].update(nms_top_k=2, keep_top_k=40, score_thresh=0.05)
    if "conf_thresh" in meta["postprocess_cfg"]:
        meta["postprocess_cfg"]["conf_thresh"] = 0.9
    param = tmp_path / "tight.ncnn.param"
    param.symlink_to(src)
    (tmp_path / "tight.ncnn.bin").symlink_to(src.with_name(src.name.replace(".param", ".bin")))
    (tmp_path / "tight.ncnn.json").write_text(json.dumps(meta))
    det = NcnnDetector(param, threads=1)
    lines = run_cpp(param, [p for p, _ in ppm_photos]).stdout.strip().split("\n")
    total = 0
    for line, (path, rgb) in zip(lines, ppm_photos):
        py = det.predict(rgb)
        cpp = json.loads(line)["detections"]
        assert_same_detections(cpp, py, f"{src.name} (tight cfg) on {path.name}")
        assert max(np.bincount(py["labels"], minlength=1)) <= 2  # the cut is in force
        total += len(cpp)
    assert total > 0


def test_cpp_resize_equals_numpy(exported, ppm_photos, tmp_path):
    """The network input itself: the C++ antialiased resize against npops.resize_chw on the same array."""
    path, rgb = ppm_photos[0]
    dump = tmp_path / "input.f32"
    run_cpp(exported.param, [path], "--dump-input", str(dump))
    meta = exported.param.with_name(exported.param.name.replace(".param", ".json"))
    size = json.loads(meta.read_text())["input_size"]
    cpp = np.fromfile(dump, np.float32).reshape(3, size, size)
    py = npops.resize_chw(rgb, size)[0]
    assert np.abs(cpp - py).max() <= 1e-6


def test_cpp_runner_errors_are_one_line(exported, ppm_photos, tmp_path):
    exported = exported.param
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
