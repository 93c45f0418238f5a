"""Issue 15 item 4: ncnn int8 export (calibration on real photos + int8 param/bin), pocketdet.deploy.ncnn_int8."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.config import load_config
from pocketdet.deploy.trained_like import make_trained_like
from pocketdet.deploy.ncnn_int8 import kl_threshold, quantize_ncnn, quantize_weights, read_param
from pocketdet.models import build_model

ROOT = Path(__file__).resolve().parents[1]
VAL = sorted((ROOT / "data" / "coco128" / "images" / "val2017").glob("*.jpg"))[:2]
CALIB = sorted((ROOT / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:8]


def test_quantize_weights_rounds_like_ncnn():
    w = np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0 / 127, -2.0, 0.0]], np.float32)
    q, scale = quantize_weights(w, 3)
    assert np.allclose(scale, [127.0, 1.0, 63.5])
    # 0.25 * 127 = 31.75 -> 32; 1/127 * 63.5 = 0.5 -> 1 (half away from zero, not numpy's half-to-even 0)
    assert q.reshape(3, 4).tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [127, 1, -127, 0]]


def test_kl_threshold_clips_a_sparse_tail():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=200_000))
    x[:20] = 40.0  # a few outliers stretch the range ~10x
    hist, _ = np.histogram(x, bins=2048, range=(0, x.max()))
    t = kl_threshold(hist) * x.max() / 2048
    assert 2.0 < t < 8.0  # the bulk (|N(0,1)| up to ~4.5) kept, the outliers clipped
    flat = np.ones(2048)
    assert kl_threshold(flat) > 2000  # nothing to clip in a uniform distribution
    assert kl_threshold(np.zeros(2048)) == 0.0


@pytest.fixture(scope="module")
def ssd_ncnn(tmp_path_factory):
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.mobile import export_ncnn

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        # trained-like but with milder logits than the deploy tests' (scale 60 would turn int8's
        # ~1 % logit error into score jumps of 0.3): here the detections must stay comparable
        model = make_trained_like(build_model(load_config("ssdlite_mnv3_small_320").model), CALIB, logit_scale=8.0,
                                  background_offset=12.0)
        return export_ncnn(model, tmp_path_factory.mktemp("ncnn") / "ssd", name="ssdlite_mnv3_small_320")
    finally:
        torch.set_num_threads(prev)


def test_int8_export_loads_and_tracks_fp32(ssd_ncnn, tmp_path):
    from pocketdet.deploy.mobile import NcnnDetector

    summary = quantize_ncnn(ssd_ncnn, CALIB[:4], tmp_path / "ssd.int8.ncnn.param")
    _, layers = read_param(Path(summary["param"]))
    n_quant = sum(ly.params.get("8") in ("1", "2") for ly in layers)
    assert n_quant == summary["quantized_layers"]["dense"] > 50
    assert summary["bytes_int8"] < 0.35 * summary["bytes_fp32"]  # int8 weights: ~1/4 of the bytes
    meta = json.loads(Path(summary["json"]).read_text())
    assert meta["ncnn"]["int8"]["calibration_images"] == 4

    fp32, int8 = NcnnDetector(ssd_ncnn, threads=1), NcnnDetector(summary["param"], threads=1)
    for photo in VAL:
        x, _ = fp32.preprocess(photo)
        a, b = fp32.forward(x), int8.forward(x)
        assert np.abs(a["boxes"] - b["boxes"]).max() < 0.05  # normalised coordinates
        assert np.abs(a["scores"] - b["scores"]).max() < 0.2
        assert len(int8.predict(photo)["scores"]) > 0


def test_int8_ap_on_fitted_model(fitted_ckpt, fitted_yaml, fitted_photos, tmp_path):
    """The fitted SSDLite (conftest) on its 8 photos: measured AP 0.971 fp32 -> 0.87 int8 (max calibration, 32
    photos), AP50 unchanged (BENCHMARKS.md `ncnn-int8`). Asserted with margin for the 8 photos used here."""
    pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    pytest.importorskip("pnnx", reason="pnnx not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.api import load
    from pocketdet.data import build_dataset, load_dataset_yaml
    from pocketdet.deploy.mobile import NcnnDetector, export_ncnn

    from pocketdet.engine.evaluate import evaluate_predictor

    def ap_of(det, ds):
        return evaluate_predictor(det.predict, ds, progress=False)

    torch.set_num_threads(1)
    model = load(fitted_ckpt).eval()
    fit = {p.name for p in fitted_photos}
    calib = [p for p in sorted(CALIB[0].parent.glob("*.jpg")) if p.name not in fit][:8]
    fp32 = export_ncnn(model, tmp_path / "fit", name="fit")
    int8 = quantize_ncnn(fp32, calib, tmp_path / "fit.int8.ncnn.param")["param"]
    ds = build_dataset(load_dataset_yaml(fitted_yaml), "val", model.class_names)
    ap32, ap8 = ap_of(NcnnDetector(fp32, threads=1), ds), ap_of(NcnnDetector(int8, threads=1), ds)
    assert ap32["AP50"] > 0.9
    assert ap8["AP50"] >= ap32["AP50"] - 0.05 and ap8["AP"] >= ap32["AP"] - 0.25


def test_int8_weights_equal_ncnn_runtime_quantization(ssd_ncnn, tmp_path):
    """Our int8 weights against ncnn's own: the same scales with fp32 weights make ncnn quantize the weights
    itself at load time; both files must then compute the same outputs."""
    from pocketdet.deploy.mobile import NcnnDetector

    ours = quantize_ncnn(ssd_ncnn, CALIB[:2], tmp_path / "a.ncnn.param")
    ref = quantize_ncnn(ssd_ncnn, CALIB[:2], tmp_path / "b.ncnn.param", int8_weights=False)
    a, b = NcnnDetector(ours["param"], threads=1), NcnnDetector(ref["param"], threads=1)
    x, _ = a.preprocess(VAL[0])
    oa, ob = a.forward(x), b.forward(x)
    for k in oa:
        assert np.array_equal(oa[k], ob[k]), k


def test_int8_skip_types_and_errors(ssd_ncnn, tmp_path):
    summary = quantize_ncnn(ssd_ncnn, CALIB[:1], tmp_path / "s.ncnn.param", skip_types=("ConvolutionDepthWise",))
    _, layers = read_param(Path(summary["param"]))
    assert all("8" not in ly.params for ly in layers if ly.type == "ConvolutionDepthWise")
    assert any("8" in ly.params for ly in layers if ly.type == "Convolution")
    with pytest.raises(ValueError, match="not quantized layer types"):
        quantize_ncnn(ssd_ncnn, CALIB[:1], tmp_path / "t.ncnn.param", skip_types=("Softmax",))
    from pocketdet.deploy.runtime import ModelFileError
    with pytest.raises(ModelFileError, match="already int8"):
        quantize_ncnn(summary["param"], CALIB[:1], tmp_path / "u.ncnn.param")


def test_cli_quantize_format_ncnn(ssd_ncnn, tmp_path):
    from typer.testing import CliRunner

    from pocketdet.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / CALIB[0].name).write_bytes(CALIB[0].read_bytes())
    out = tmp_path / "q.ncnn.param"
    res = CliRunner().invoke(app, ["quantize", str(ssd_ncnn), "--format", "ncnn", "--data", str(photos), "-o", str(out),
                                   "--not-quant", "InnerProduct"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fp32_layer_types"] == ["InnerProduct"] and out.is_file()
    res = CliRunner().invoke(app, ["quantize", str(ssd_ncnn), "--format", "ncnn", "--data", str(photos), "-o",
                                   str(tmp_path / "r.ncnn.param"), "--not-quant", "Softmax"])
    assert res.exit_code != 0 and "Softmax" in res.output and "Traceback" not in res.output


def test_gemm_constants_are_walked_and_kept_fp32(tmp_path):
    """Cascade R-CNN's stage heads are ncnn Gemm layers with constant B and C (dynamic RoI count): the converter
    must step over their weights exactly and keep them fp32, while quantizing the InnerProduct before them."""
    ncnn = pytest.importorskip("ncnn", reason="ncnn not installed (pip install 'pocketdet[mobile]')")
    from pocketdet.deploy.ncnn_int8 import read_weights, write_int8

    rng = np.random.default_rng(0)
    w_ip, b_ip = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w_gemm, c_gemm = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    param = tmp_path / "g.ncnn.param"
    param.write_text("7767517\n3 3\nInput in0 0 1 in0\nInnerProduct ip 1 1 in0 x 0=4 1=1 2=24\n"
                     "Gemm gemm_0 1 1 x out0 10=4 2=0 3=1 4=0 5=1 6=1 7=0 8=3 9=4\n")
    zero = (0).to_bytes(4, "little")
    (tmp_path / "g.ncnn.bin").write_bytes(zero + w_ip.tobytes() + b_ip.tobytes() + zero + w_gemm.tobytes()
                                          + zero + c_gemm.tobytes())
    header, layers = read_param(param)
    read_weights(tmp_path / "g.ncnn.bin", layers)
    assert [len(ly.chunks) for ly in layers] == [0, 2, 2]
    out = tmp_path / "q.ncnn.param"
    assert write_int8(out, tmp_path / "q.ncnn.bin", header, layers, {"in0": 127 / 3.0}, ()) == 1

    x = rng.uniform(-3, 3, size=(5, 6)).astype(np.float32)  # 5 "RoIs"

    def run(p):
        net = ncnn.Net()
        net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
        net.opt.use_bf16_storage = False
        assert net.load_param(str(p)) == 0 and net.load_model(str(p).replace(".param", ".bin")) == 0
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(x))
        return np.array(ex.extract("out0")[1])

    ref = (x @ w_ip.T + b_ip) @ w_gemm.T + c_gemm
    assert np.allclose(run(param), ref, atol=1e-4)
    assert np.abs(run(out) - ref).max() < 0.05 * np.abs(ref).max()  # int8 InnerProduct, fp32 Gemm
