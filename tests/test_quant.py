"""int8 quantization (pocketdet/compress/quant.py): not-quant patterns, PTQ / QAT to QDQ ONNX, CLI round trip."""
from pathlib import Path

import numpy as np
import pytest
import torch

import pocketdet
from pocketdet.compress import quant as Q

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from pocketdet.deploy.runtime import Detector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "data" / "coco128" / "images" / "train2017"
RECIPE = ["res_conv1", "se_block"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread per module


def _photos(n):
    return sorted(PHOTOS.glob("*.jpg"))[:n]


def _conv_weight_quantized(model_proto) -> dict[str, bool]:
    """Conv node's module name -> whether its weight comes through a DequantizeLinear."""
    producer = {o: n for n in model_proto.graph.node for o in n.output}
    out = {}
    for n in model_proto.graph.node:
        if n.op_type == "Conv":
            w = producer.get(n.input[1])
            out[Q.onnx_node_module(n.name)] = w is not None and w.op_type == "DequantizeLinear"
    return out


def test_paddle_scopes_map_to_pocketdet_modules():
    rx = Q.compile_patterns(RECIPE)
    assert Q.excluded("backbone.conv4.bottleneck_conv.conv", rx)
    assert Q.excluded("backbone.conv4.mid_se.conv1", rx)
    assert not Q.excluded("backbone.conv4.expand_conv.conv", rx)
    assert not Q.excluded("backbone.conv14.depthwise_conv.conv", rx)  # extra blocks' grouped 3x3 is quantized
    assert not Q.excluded("ssd_head.scores0.dw_conv", rx)
    glob = Q.compile_patterns(["ssd_head.*.dw_conv"])
    assert Q.excluded("ssd_head.boxes3.dw_conv", glob) and not Q.excluded("ssd_head.boxes3.pw_conv", glob)
    assert Q.excluded("backbone.conv12.linear_conv.conv", Q.compile_patterns([r"backbone\.conv1\d\.linear_conv"]))
    with pytest.raises(Q.QuantError, match="not-quant pattern"):
        Q.compile_patterns(["backbone.(conv"])


def test_qat_not_quant_training_and_onnx_scales(tmp_path):
    m = pocketdet.build("ssdlite_mnv3_small_320")
    names = Q.prepare_qat(m, RECIPE)
    assert "backbone.conv1.conv" in names and "ssd_head.scores0.pw_conv" in names
    assert "backbone.conv14.depthwise_conv.conv" in names and "ssd_head.boxes0.dw_conv" in names
    assert not any(".bottleneck_conv." in n or ".mid_se." in n for n in names)
    assert not isinstance(m.backbone.conv5.bottleneck_conv.conv, Q.QATConv2d)
    from PIL import Image
    imgs = [torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((320, 320)))).permute(2, 0, 1) / 255.0
            for p in _photos(2)]  # two: BN needs more than one value per channel on the 1x1 last level
    m.train()
    loc, conf, _ = m.forward_raw(m.normalize(torch.stack(imgs)))  # observers see real activations
    (loc.square().mean() + conf.square().mean()).backward()
    conv = m.backbone.conv3.expand_conv.conv
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0  # straight-through gradients
    m.eval()
    scale, zp = conv.input_qparams()
    assert scale > 0 and 0 <= zp <= 255
    fresh = pocketdet.build("ssdlite_mnv3_small_320")
    fresh.load_state_dict(Q.float_state_dict(m))  # the float weights load into the plain model

    # int8 ONNX: the conv's input DequantizeLinear carries the QAT scale, not a re-calibrated one
    path = tmp_path / "qat.onnx"
    path.write_bytes(Q.qat_to_onnx(m, _photos(5)[3:], RECIPE))
    proto = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    node = next(n for n in proto.graph.node if n.name == "/backbone/conv3/expand_conv/conv/Conv")
    dq = producer[node.input[0]]
    assert dq.op_type == "DequantizeLinear"
    assert float(init[dq.input[1]]) == pytest.approx(scale, rel=1e-3)
    assert abs(int(init[dq.input[2]]) - zp) <= 1
    quantized = _conv_weight_quantized(proto)
    assert not quantized["backbone.conv5.bottleneck_conv.conv"] and quantized["backbone.conv5.expand_conv.conv"]
    out = Detector(path, threads=1).predict(_photos(1)[0])
    assert out["boxes"].shape[1] == 4 and np.isfinite(out["scores"]).all()


@pytest.fixture(scope="module")
def overfit(fitted_ckpt, fitted_photos):
    """SSDLite-Small fitted to real photos (the committed fixture, not trained here: how far N steps get differs
    between CPUs). It makes confident detections on its photos (top scores > 0.9), which quantization must keep."""
    return pocketdet.load(fitted_ckpt), fitted_photos[:3]  # the photos the tests look at


@pytest.fixture(scope="module")
def exported(overfit, fitted_photos, tmp_path_factory):
    from pocketdet.deploy.export import export_onnx

    d = tmp_path_factory.mktemp("quant")
    fp32 = export_onnx(overfit[0], d / "fp32.onnx")
    # calibrated on other photos of the domain the model works on (its remaining fitted photos): calibrating on
    # photos it detects nothing in gives activation ranges unlike the test photos' (top score 0.99 -> 0.71 here)
    calib = fitted_photos[3:]
    recipe = Q.quantize_onnx(fp32, d / "recipe.onnx", calib, RECIPE)
    full = Q.quantize_onnx(fp32, d / "full.onnx", calib)
    return fp32, recipe, full


def test_not_quant_patterns_in_int8_graph(exported):
    _, recipe, full = exported
    q = _conv_weight_quantized(onnx.load(str(recipe)))
    kept = {n for n in q if ".bottleneck_conv" in n or ".mid_se." in n}
    assert len(kept) == 11 + 9 * 2  # Small: 11 backbone depthwise convs, 9 SE blocks x 2 convs
    assert not any(q[n] for n in kept)
    others = set(q) - kept
    assert others and all(q[n] for n in others)
    assert all(_conv_weight_quantized(onnx.load(str(full))).values())


def test_int8_file_size(exported):
    fp32, recipe, full = exported
    assert full.stat().st_size <= 0.35 * fp32.stat().st_size
    assert recipe.stat().st_size < 0.5 * fp32.stat().st_size  # the float depthwise/SE weights stay fp32


def test_ptq_keeps_confident_detections(overfit, exported):
    from torchvision.ops import box_iou

    fp32, recipe, full = exported
    ref_det, q_det = Detector(fp32, threads=1), Detector(recipe, threads=1)
    for p in overfit[1]:
        ref, got = ref_det.predict(p), q_det.predict(p)
        sure = ref["scores"] > 0.5
        assert sure.any() and ref["scores"][0] > 0.9  # the float model is confident here
        # every confident float detection is found again (same class, IoU > 0.8) among int8's top 20
        iou = box_iou(torch.from_numpy(ref["boxes"][sure]), torch.from_numpy(got["boxes"][:20])).numpy()
        same_label = ref["labels"][sure, None] == got["labels"][None, :20]
        assert ((iou * same_label).max(1) > 0.8).all(), (p.name, (iou * same_label).max(1))
        assert abs(got["scores"][0] - ref["scores"][0]) < 0.1
        # raw outputs where the float model is confident (score > 0.5): decoded boxes (normalised to the
        # image) move by < 2% of its side on average
        x, _ = ref_det.preprocess(p)
        r, g = ref_det.forward(x), q_det.forward(x)
        sure = r["scores"][0].max(-1) > 0.5
        assert sure.sum() >= 3
        err = np.abs(r["boxes"][0][sure] - g["boxes"][0][sure]).mean()
        assert err < 0.02, err


def test_cli_quantize_then_export(tmp_path, overfit):
    from typer.testing import CliRunner

    from pocketdet.cli import app
    from pocketdet.config import load_config
    from pocketdet.checkpoint import save_atomic
    from pocketdet.engine.trainer import checkpoint_state

    ck = tmp_path / "float.pt"
    model = overfit[0]
    save_atomic(checkpoint_state(model, load_config("ssdlite_mnv3_small_320"), model.class_names), ck)
    r = CliRunner().invoke(app, ["quantize", str(ck), "--method", "ptq", "--data", str(PHOTOS), "--calib-images", "2",
                                 "--not-quant", "res_conv1", "--not-quant", "se_block", "-o", str(tmp_path / "q.pt")])
    assert r.exit_code == 0, r.output
    assert '"int8_vs_fp32"' in r.output  # measured on this CPU (a warning follows when int8 is slower)
    assert pocketdet.load(tmp_path / "q.pt") is not None  # float weights still load
    r = CliRunner().invoke(app, ["export", str(tmp_path / "q.pt"), "--format", "onnx", "-o", str(tmp_path / "q.onnx"),
                                 "--image", str(overfit[1][0])])  # verified against the float model on a photo
    assert r.exit_code == 0, r.output
    det = Detector(tmp_path / "q.onnx", threads=1)
    assert det.meta["quant"]["int8"] and det.meta["quant"]["not_quant"] == RECIPE
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    out = det.predict(overfit[1][0])
    assert out["scores"][0] > 0.5


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(Q.QuantError, match="no images"):
        Q.calibration_images(tmp_path)
    with pytest.raises(Q.QuantError, match="--method"):
        Q.quantize_checkpoint("ssdlite_mnv3_small_320", "int4", PHOTOS, tmp_path / "x.pt")
    with pytest.raises(Q.QuantError, match="exclude every conv"):
        Q.prepare_qat(pocketdet.build("ssdlite_mnv3_small_320"), ["backbone|ssd_head"])


def test_bench_times_quant_entries_as_int8_next_to_fp32(tmp_path):
    """`pocketdet bench ssdlite_*_quant`: the recipe's int8 model and its float graph, both in ONNX Runtime."""
    import onnx

    from pocketdet.compress.quant import ptq
    from pocketdet.deploy.bench import INT8, bench_report, run_bench
    from pocketdet.deploy.trained_like import calibration_images

    seen = {}

    def int8_export(model, path, name, not_quant):
        seen.update(name=name, not_quant=list(not_quant))
        path.write_bytes(ptq(model, calibration_images(2), not_quant, name=name))
        return path

    rows = run_bench(["ssdlite_mnv3_small_320_quant"], threads=(1,), runs=1, warmup=0, workdir=tmp_path,
                     progress=lambda *_: None, int8_export=int8_export)
    assert seen == {"name": "ssdlite_mnv3_small_320_quant", "not_quant": ["res_conv1", "se_block"]}
    assert {r.runtime for r in rows} == {"onnxruntime", INT8} and all(r.forward for r in rows)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ssdlite_mnv3_small_320_quant.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    report = bench_report(rows, {"cpu": "x", "logical_cores": 1, "flags": [], "versions": {}}, "cmd", None)
    assert "onnxruntime (fp32)" in report and "int8 / fp32 in ONNX Runtime" in report


@pytest.mark.slow
def test_cascade_rcnn_int8_runs_in_onnx_runtime(tmp_path):
    """Cascade R-CNN's two-part file: each part quantized on its own (dense convs; RoI FC layers) from the
    deployed runtime's own calibration feeds, merged back into one file that `Detector` runs, on a real photo. The merged fp32 file itself is refused with the route."""
    from pocketdet.config import load_config
    from pocketdet.deploy.trained_like import make_trained_like
    from pocketdet.deploy.export import export_onnx
    from pocketdet.models import build_model

    torch.manual_seed(0)
    model = make_trained_like(build_model(load_config("cascade_rcnn_mnv3_large_fpn_320").model), _photos(6))
    int8 = tmp_path / "cascade.int8.onnx"
    int8.write_bytes(Q.ptq(model, _photos(4), name="cascade_rcnn_mnv3_large_fpn_320"))
    proto = onnx.load(str(int8))
    quantized = {n.name.startswith("roi_part/") for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {True, False}  # both subgraphs hold int8 layers
    fp32 = export_onnx(model, tmp_path / "cascade.onnx", name="cascade_rcnn_mnv3_large_fpn_320")
    q, f = Detector(int8, threads=1), Detector(fp32, threads=1)
    assert q.meta["quant"]["int8"] and q.meta["quant"]["parts"]
    photo = ROOT / "data" / "coco128" / "images" / "val2017" / "000000000139.jpg"
    assert len(q.predict(photo)["scores"]) and len(f.predict(photo)["scores"])
    # each part against fp32 on the same input. The dense part of a random-weight model quantizes coarsely
    # (as SSDLite's does: its activations are not a trained network's), so it is checked for correlation;
    # the RoI part's FC layers on the float model's own features must match closely.
    from pocketdet.deploy import npops, rcnn_ops

    rgb = npops.load_rgb(photo)
    x, (w, h) = f.preprocess(rgb)
    fo, qo = f.forward(x), q.forward(x)
    for name in f.meta["output_names"]:
        assert np.corrcoef(qo[name].ravel(), fo[name].ravel())[0, 1] > 0.5, name
    info = (h, w, rcnn_ops.long_side_scale(h, w, f.input_size))
    feeds = f._postprocess.roi_feeds(fo, f._postprocess.proposals(fo), info)
    fr, qr = f.run_part("roi", feeds), q.run_part("roi", feeds)
    assert np.abs(qr["scores"] - fr["scores"]).mean() <= 0.005
    # boxes come out in original pixels: 1 pixel of the resized input
    assert np.abs(qr["boxes"] - fr["boxes"]).mean() <= 1.0 / info[2]
    with pytest.raises(Q.QuantError, match="two-part"):
        Q.quantize_onnx(fp32, tmp_path / "x.onnx", _photos(1))


def test_int8_slower_than_fp32_is_said_with_ratio_and_cpu_flags():
    from pocketdet.compress.quant_speed import slower_warning
    from pocketdet.deploy.bench import BenchRow
    from pocketdet.deploy.bench_checks import INT8, int8_slower

    no_vnni = {"cpu": "AMD EPYC 7B13", "flags": ["avx2", "fma"]}
    w = slower_warning({"fp32_ms": 10.0, "int8_ms": 12.0, "ratio": 1.2, "threads": 1, "runs": 10}, no_vnni)
    assert "SLOWER" in w and "1.20x" in w and "avx2 fma" in w and "no VNNI" in w
    assert slower_warning({"fp32_ms": 10.0, "int8_ms": 7.0, "ratio": 0.7, "threads": 1, "runs": 10}, no_vnni) is None
    vnni = {"cpu": "Xeon", "flags": ["avx2", "avx512_vnni"]}
    assert "no VNNI" not in slower_warning({"fp32_ms": 1, "int8_ms": 2, "ratio": 2.0, "threads": 1, "runs": 3}, vnni)

    def row(model, rt, ms):
        return BenchRow(model, rt, 1, {"median_ms": ms, "p90_ms": ms, "min_ms": ms}, None, 1.0, None)
    rows = [row("slow", "onnxruntime", 10.0), row("slow", INT8, 13.0), row("fast", "onnxruntime", 10.0),
            row("fast", INT8, 6.0)]
    msgs = int8_slower(rows, no_vnni)
    assert len(msgs) == 1 and msgs[0].startswith("slow:") and "1.30x" in msgs[0] and "avx2 fma" in msgs[0]
