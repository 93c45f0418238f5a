"""Paddle weight conversion: parity against PaddleDetection outputs, the file formats, and refusals.

Two kinds of reference:
* committed fixture (always runs): tests/fixtures/paddle/ssdlite_mnv3_small_320, produced once by
  tools/paddle_reference.py with PaddlePaddle 3.3.1 + paddledet 2.6.0 (see its README.md): a dygraph
  `.pdparams` (random weights, stored float16 losslessly), two real photos, Paddle's raw head outputs of the
  float64 forward and Paddle's own NMS output.
* live Paddle (runs when `make paddle-env` has created .venv-paddle): all three dygraph models, freshly
  generated, also through Paddle-written persistables folders.

Parity is asserted at 1e-4 in float64 (where only the conversion can make a difference); in float32 random
networks amplify round-off (torch's own float32 forward is ~1.5e-4 from its float64 one on these weights), so
float32 outputs are held to 1e-3 and to identical detections after NMS.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.convert.common import WeightConversionError, save_converted
from pocketdet.convert.paddle import convert_paddle, load_backbone_weights
from pocketdet.convert.paddle_io import (PaddleFormatError, lod_tensor_bytes, read_lod_tensor_file,
                                         read_paddle_weights, write_lod_tensor)
from pocketdet.convert.paddle_names import dygraph_to_static, to_paddle_dygraph
from pocketdet.models.box_ops import decode_boxes
from pocketdet.models.ssdlite import VARIANCE, nms_per_class

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures/paddle/ssdlite_mnv3_small_320"
PADDLE_PY = ROOT / ".venv-paddle/bin/python"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
F64_TOL, F32_TOL = 1e-4, 1e-3


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def normalize(u8: np.ndarray) -> torch.Tensor:
    """Exactly the numpy ops of tools/paddle_reference.py: uint8 NHWC -> ImageNet-normalised NCHW."""
    x = (u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))


def bg_first(conf: np.ndarray) -> np.ndarray:
    """Paddle dygraph class layout (background last) -> pocketdet's (background first)."""
    return np.concatenate([conf[..., -1:], conf[..., :-1]], -1)


def fixture_arrays() -> dict[str, np.ndarray]:
    return read_paddle_weights(FIX / "weights.pdparams").arrays


def write_pickle(path: Path, obj, protocol: int = 4) -> Path:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def static_arrays(dygraph: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights as a static-graph model holds them: static names, background at class index 0."""
    out = {}
    for k, v in dygraph.items():
        if k.startswith("ssd_head.scores") and k.endswith("pw_conv.weight"):
            c = 81
            perm = np.concatenate([a * c + np.r_[c - 1, 0:c - 1] for a in range(v.shape[0] // c)])
            v = v[perm]
        out[dygraph_to_static(k)] = v
    return out


def raw_outputs(model, x: torch.Tensor, dtype=torch.float64):
    m = model.to(dtype)
    try:
        with torch.no_grad():
            return m.forward_raw(x.to(dtype))
    finally:
        model.float()


def assert_same_detections(a: dict, b: dict, box_tol: float = 0.25, score_tol: float = 5e-4) -> tuple[float, float]:
    """Same detections up to order among equal scores: every detection of `a` pairs with an unused one of
    `b` with the same label, box within box_tol pixels and score within score_tol. Returns the max errors.
    (A float32 logit error e moves a box side by about 0.2 * e * its size: 0.1 px for a 500 px box.)"""
    la, lb = a["labels"].numpy(), b["labels"].numpy()
    assert len(la) == len(lb), f"{len(la)} vs {len(lb)} detections"
    ba, bb = a["boxes"].double().numpy(), b["boxes"].double().numpy()
    sa, sb = a["scores"].double().numpy(), b["scores"].double().numpy()
    used = np.zeros(len(lb), bool)
    max_box = max_score = 0.0
    for i in range(len(la)):
        cand = np.flatnonzero((lb == la[i]) & ~used)
        assert len(cand), f"detection {i} (label {la[i]}) has no partner"
        err = np.maximum(np.abs(bb[cand] - ba[i]).max(1) / box_tol, np.abs(sb[cand] - sa[i]) / score_tol)
        j = cand[err.argmin()]
        assert err.min() <= 1.0, f"detection {i}: box {ba[i]} score {sa[i]} vs {bb[j]} {sb[j]}"
        used[j] = True
        max_box = max(max_box, float(np.abs(bb[j] - ba[i]).max()))
        max_score = max(max_score, float(abs(sb[j] - sa[i])))
    return max_box, max_score


def paddle_nms_per_image(d: Path) -> list[dict]:
    """Paddle's MultiClassNMS output [M, 6] (label, score, x1, y1, x2, y2) split per image."""
    bbox, num = np.load(d / "nms_bbox.npy"), np.load(d / "nms_num.npy")
    out, off = [], 0
    for n in num:
        b = torch.from_numpy(bbox[off:off + n])
        out.append({"labels": b[:, 0].long(), "scores": b[:, 1], "boxes": b[:, 2:]})
        off += n
    return out


def ssd_nms_unclipped(model, loc, conf, priors, size=320) -> list[dict]:
    """pocketdet's class-wise NMS on boxes decoded like Paddle's SSDBox (no clipping before NMS)."""
    res = []
    for lo, co in zip(loc, conf):
        boxes = decode_boxes(lo, priors, VARIANCE) * size
        res.append(nms_per_class(boxes, co.softmax(-1)[:, 1:], model.postprocess_cfg, (1, 1)))
    return res


# ------------------------------------------------------------------------------------------------
# (b) committed fixture: dygraph .pdparams of SSDLite-Small against Paddle's outputs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_converted():
    model, report = convert_paddle(FIX / "weights.pdparams", "ssdlite_mnv3_small_320")
    return model, report


@pytest.fixture(scope="module")
def fixture_input() -> torch.Tensor:
    return normalize(np.load(FIX / "input_uint8.npy"))


def test_fixture_raw_outputs_match_paddle(small_converted, fixture_input, capsys):
    model, report = small_converted
    assert report.naming == "dygraph" and report.layout == "pdparams pickle"
    assert len(report.loaded) == 343  # every tensor of Paddle's SSDLite-Small (paddle_dygraph_params tsv)
    assert sorted(report.transformed) == [f"ssd_head.scores{i}.pw_conv.weight" for i in range(6)]
    loc, conf, priors = raw_outputs(model, fixture_input)
    ref_loc, ref_conf = np.load(FIX / "loc_f64.npy"), bg_first(np.load(FIX / "conf_f64.npy"))
    err_loc = np.abs(loc.numpy() - ref_loc).max()
    err_conf = np.abs(conf.numpy() - ref_conf).max()
    err_priors = np.abs(priors.numpy() - np.load(FIX / "priors.npy")).max()
    with capsys.disabled():
        print(f"\n[paddle parity, fixture SSDLite-Small, float64] loc {err_loc:.2e} conf {err_conf:.2e} "
              f"priors {err_priors:.2e} (|conf| max {np.abs(ref_conf).max():.1f})")
    assert err_loc <= F64_TOL and err_conf <= F64_TOL
    assert err_priors <= 1e-6
    # float32, the deployed precision
    loc32, conf32, _ = raw_outputs(model, fixture_input, torch.float32)
    assert np.abs(loc32.numpy() - ref_loc).max() <= F32_TOL
    assert np.abs(conf32.numpy() - ref_conf).max() <= F32_TOL


def test_fixture_detections_match_paddle(small_converted, fixture_input):
    model, _ = small_converted
    sizes = [(320, 320)] * fixture_input.shape[0]
    ref = [torch.from_numpy(np.load(FIX / "loc_f64.npy")), torch.from_numpy(bg_first(np.load(FIX / "conf_f64.npy"))),
           torch.from_numpy(np.load(FIX / "priors.npy"))]
    with torch.no_grad():
        raw = model.forward_raw(fixture_input)
        ours, theirs = model.postprocess(raw, sizes), model.postprocess(ref, sizes)
    for a, b in zip(ours, theirs):
        assert len(a["labels"]) == 200  # keep_top_k reached: a real comparison, not two empty lists
        assert_same_detections(a, b)
    # Paddle's own NMS (MultiClassNMS on SSDBox boxes, which are not clipped)
    for a, b in zip(ssd_nms_unclipped(model, *raw), paddle_nms_per_image(FIX)):
        assert_same_detections(a, b)


def test_static_persistables_folder_and_tar_give_the_same_model(small_converted, tmp_path):
    """Static-graph names + background-first classes, stored as LoDTensor files, as a folder and a tar."""
    ref_model, _ = small_converted
    folder = tmp_path / "ssdlite_small"
    folder.mkdir()
    for name, arr in static_arrays(fixture_arrays()).items():
        write_lod_tensor(folder / name, arr)
    (folder / "__model__").write_bytes(b"\x0a\x00")  # program desc next to the variables: skipped
    write_lod_tensor(folder / "conv1_weights_velocity_0", np.zeros((16, 3, 3, 3), np.float32))
    write_lod_tensor(folder / "learning_rate_0", np.zeros((1,), np.float32))
    tar = tmp_path / "ssdlite_small.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder, arcname="ssdlite_small")
    for src in (folder, tar):
        model, report = convert_paddle(src, "ssdlite_mnv3_small_320")
        assert report.naming == "static" and not report.transformed  # static: background already first
        assert report.ignored["conv1_weights_velocity_0"].startswith("optimizer")
        for k, v in ref_model.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


def test_static_pdparams_protocol2_with_old_numpy_module_names(small_converted, tmp_path):
    """fluid.save wrote protocol-2 pickles (bytes via _codecs.encode) under numpy 1.x (`numpy.core`)."""
    ref_model, _ = small_converted
    data = pickle.dumps(static_arrays(fixture_arrays()), protocol=2)
    assert b"_codecs" in data
    data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "ssdlite_mobilenet_v3_small.pdparam"  # the seed's links end in .pdparam
    path.write_bytes(data)
    model, report = convert_paddle(path, "ssdlite_mnv3_small_320")
    assert report.naming == "static"
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_lodtensor_files_written_by_paddle(tmp_path):
    d = FIX / "lodtensor"
    conv1 = read_lod_tensor_file((d / "conv1_weights").read_bytes(), "conv1_weights")
    var = read_lod_tensor_file((d / "conv1_bn_variance").read_bytes(), "conv1_bn_variance")
    dyg = fixture_arrays()
    assert conv1.dtype == np.float16 and np.array_equal(conv1, dyg["backbone.conv1.conv.weight"])
    assert np.array_equal(var, dyg["backbone.conv1.bn._variance"])
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    i64 = np.arange(-2, 3, dtype=np.int64) * 10**10
    assert np.array_equal(read_lod_tensor_file((d / "arange_float32").read_bytes(), "a"), f32)
    assert np.array_equal(read_lod_tensor_file((d / "arange_int64").read_bytes(), "b"), i64)
    # our writer produces Paddle's exact bytes
    assert lod_tensor_bytes(f32) == (d / "arange_float32").read_bytes()
    assert lod_tensor_bytes(i64) == (d / "arange_int64").read_bytes()
    assert lod_tensor_bytes(conv1) == (d / "conv1_weights").read_bytes()
    # a LoD level (sequence offsets) is skipped; a truncated file is refused with its name
    arr = np.ones((3, 2), np.float32)
    raw = lod_tensor_bytes(arr)
    with_lod = raw[:4] + np.uint64(1).tobytes() + np.uint64(16).tobytes() + np.array([0, 3], np.uint64).tobytes() + raw[12:]
    assert np.array_equal(read_lod_tensor_file(with_lod, "x"), arr)
    with pytest.raises(PaddleFormatError, match="cut_var.*truncated"):
        read_lod_tensor_file(raw[:-4], "cut_var")


def test_class_count_comes_from_the_file(small_converted, fixture_input, tmp_path):
    """A 20-class dygraph SSDLite (e.g. VOC): needs class_names, then predicts the same logits."""
    arrays = fixture_arrays()
    keep = list(range(20)) + [80]  # 20 classes and the background (last, dygraph)
    for i in range(6):
        k = f"ssd_head.scores{i}.pw_conv.weight"
        w = arrays[k]
        arrays[k] = np.concatenate([w[a * 81:(a + 1) * 81][keep] for a in range(w.shape[0] // 81)])
    path = write_pickle(tmp_path / "voc.pdparams", arrays)
    with pytest.raises(WeightConversionError, match=r"voc.pdparams.*20 classes.*class_names"):
        convert_paddle(path, "ssdlite_mnv3_small_320")
    with pytest.raises(WeightConversionError, match="20 classes but 3 class names"):
        convert_paddle(path, "ssdlite_mnv3_small_320", class_names=["a", "b", "c"])
    names = [f"c{i}" for i in range(20)]
    model, _ = convert_paddle(path, "ssdlite_mnv3_small_320", class_names=names)
    assert model.class_names == names
    full, _ = small_converted
    with torch.no_grad():
        c20 = model.forward_raw(fixture_input[:1])[1]
        c80 = full.forward_raw(fixture_input[:1])[1]
    assert torch.allclose(c20, c80[..., :21], atol=1e-5)


def test_save_converted_loads_with_pocketdet_load(small_converted, fixture_input, tmp_path):
    import pocketdet

    model, _ = small_converted
    out = save_converted(model, tmp_path / "ssdlite_small.pt")
    ck = torch.load(out, weights_only=True)
    assert set(ck) == {"model", "config", "class_names"}
    assert ck["config"]["name"] == "ssdlite_mnv3_small_320" and len(ck["class_names"]) == 80
    loaded = pocketdet.load(out)
    with torch.no_grad():
        a, b = model.forward_raw(fixture_input[:1]), loaded.forward_raw(fixture_input[:1])
    assert torch.equal(a[1], b[1])
    assert loaded.class_names == model.class_names


# ------------------------------------------------------------------------------------------------
# naming rules
# ------------------------------------------------------------------------------------------------
# Written out by hand from PaddleDetection release/2.4 static code (mobilenet_v3.py ParamAttr names
# `name + '_weights'`, `bn_name + '_scale'`, ..., ops.py SSDLiteMultiBoxHead `name + 'dw_weights'`,
# yolo_head.py `name + '.conv.weights'`, `bn_name + '.var'`), not derived from the converter's code.
STATIC_NAMES = {
    "backbone.conv1.conv.weight": "conv1_weights",
    "backbone.conv1.bn.weight": "conv1_bn_scale",
    "backbone.conv1.bn._variance": "conv1_bn_variance",
    "backbone.conv2.expand_conv.conv.weight": "conv2_expand_weights",
    "backbone.conv2.expand_conv.bn.bias": "conv2_expand_bn_offset",
    "backbone.conv5.bottleneck_conv.bn._mean": "conv5_depthwise_bn_mean",
    "backbone.conv5.mid_se.conv1.weight": "conv5_se_1_weights",
    "backbone.conv5.mid_se.conv2.bias": "conv5_se_2_offset",
    "backbone.conv16.linear_conv.conv.weight": "conv16_linear_weights",
    "backbone.conv17.conv.weight": "conv17_weights",
    "backbone.conv18.pointwise_conv.conv.weight": "conv18_extra1_weights",
    "backbone.conv18.depthwise_conv.bn.weight": "conv18_extra2_dw_bn_scale",
    "backbone.conv21.normal_conv.bn._variance": "conv21_extra2_sep_bn_variance",
    "ssd_head.boxes0.dw_conv.weight": "loc_1dw_weights",
    "ssd_head.boxes2.bn._mean": "loc_3_bn_mean",
    "ssd_head.scores5.pw_conv.weight": "conf_6pw_weights",
    "neck.yolo_block.0.conv_module.conv0.conv.weight": "yolo_block.0.0.0.conv.weights",
    "neck.yolo_block.2.conv_module.conv3.batch_norm._variance": "yolo_block.2.1.1.bn.var",
    "neck.yolo_block.1.conv_module.route.batch_norm.weight": "yolo_block.1.2.bn.scale",
    "neck.yolo_block.1.tip.conv.weight": "yolo_block.1.tip.conv.weights",
    "neck.yolo_transition.0.batch_norm.bias": "yolo_transition.0.bn.offset",
    "yolo_head.yolo_output.2.bias": "yolo_output.2.conv.bias",
    # Cascade R-CNN: fpn.py (body names mv3_0..2 of MobileNetV3RCNN), rpn_head.py FPNRPNHead (shared
    # lowest-level names), cascade_head.py + cascade_rcnn.py (stage suffix '', '_2', '_3')
    "fpn.fpn.inner_blocks.2.0.weight": "fpn_inner_mv3_2_w",
    "fpn.fpn.inner_blocks.0.0.bias": "fpn_inner_mv3_0_lateral_b",
    "fpn.fpn.layer_blocks.1.0.weight": "fpn_mv3_1_w",
    "fpn.fpn.extra_blocks.convs.1.bias": "fpn_6_b",
    "rpn.head.conv.0.0.weight": "conv_rpn_fpn2_w",
    "rpn.head.bbox_pred.bias": "rpn_bbox_pred_fpn2_b",
    "roi_heads.stages.0.fc6.weight": "fc6_w",
    "roi_heads.stages.1.bbox_pred.weight": "bbox_pred_2_w",
    "roi_heads.stages.2.cls_score.bias": "cls_score_3_b",
}


def test_static_names_follow_paddle_static_code():
    for dyg, static in STATIC_NAMES.items():
        assert dygraph_to_static(dyg) == static
    with pytest.raises(KeyError, match="backbone.conv1.weird"):
        dygraph_to_static("backbone.conv1.weird")


@pytest.mark.parametrize("name", ["ssdlite_mnv3_large_320", "ssdlite_mnv3_small_320", "yolov3",
                                  "cascade_rcnn_mnv3_large_fpn_320"])
def test_every_model_key_has_one_static_name(name):
    if name == "yolov3":
        from pocketdet.models import YOLOv3
        model = YOLOv3()
    else:
        import pocketdet
        model = pocketdet.build(name)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    static = [dygraph_to_static(to_paddle_dygraph(k)) for k in keys]
    assert len(set(static)) == len(keys)


def test_yolo_static_names_agree_with_the_model_helper():
    """models/yolov3.py encodes the seed's static head names independently (its pruning uses them)."""
    from pocketdet.models import YOLOv3
    from pocketdet.models.yolov3 import PRUNE_NAME_MAP, static_param_to_torch

    keys = [k for k in YOLOv3().state_dict() if k.startswith(("neck.", "yolo_head."))
            and not k.endswith("num_batches_tracked")]
    for k in keys:
        assert static_param_to_torch(dygraph_to_static(to_paddle_dygraph(k))) == k
    assert len(PRUNE_NAME_MAP) == 18  # the seed README's --pruned_params all have a counterpart


# ------------------------------------------------------------------------------------------------
# (c) malicious pickles
# ------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "open", "nested_in_array_dict", "in_tar"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, how):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    if how == "os.system":
        payload = {"conv1_weights": _Evil(os.system, cmd)}
    elif how == "builtins.exec":
        payload = _Evil(exec, f"open({str(marker)!r}, 'w').close()")
    elif how == "open":
        payload = {"x": _Evil(open, str(marker))}  # open(path) would fail, but must never be called
    else:
        payload = {"conv1_weights": np.zeros(3, np.float32), "meta": [1, {"a": _Evil(os.system, cmd)}]}
    path = write_pickle(tmp_path / "evil.pdparams", payload, protocol=2)
    if how == "in_tar":
        tar = tmp_path / "evil.tar"
        with tarfile.open(tar, "w") as t:
            t.add(path, arcname="model/model.pdparams")
        path = tar
    with pytest.raises(PaddleFormatError, match=r"evil\.(pdparams|tar).*(not allowed|refused)"):
        convert_paddle(path, "ssdlite_mnv3_small_320")
    with pytest.raises(PaddleFormatError):
        load_backbone_weights(torch.nn.Module(), path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = write_pickle(tmp_path / "obj.pdparams", {"conv1_weights": np.array([1, "a"], dtype=object)})
    with pytest.raises(PaddleFormatError, match="conv1_weights.*non-numeric"):
        read_paddle_weights(path)


# ------------------------------------------------------------------------------------------------
# (d) wrong files, missing keys, shape mismatches
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "json", "empty", "torch_zip", "single_lodtensor", "missing"])
def test_wrong_files_name_the_file(tmp_path, kind):
    path = tmp_path / f"weights_{kind}.pdparams"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "json":
        path.write_text(json.dumps({"conv1_weights": [1, 2, 3]}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "torch_zip":
        torch.save({"a": torch.zeros(2)}, path)
    elif kind == "single_lodtensor":
        write_lod_tensor(path, np.zeros((2, 2), np.float32))
    expected = {"random": "not a Paddle weight file", "json": "JSON", "empty": "empty file",
                "torch_zip": "PyTorch checkpoint", "single_lodtensor": "single LoDTensor",
                "missing": "no such file"}[kind]
    with pytest.raises(PaddleFormatError, match=rf"weights_{kind}\.pdparams.*{expected}"):
        convert_paddle(path, "ssdlite_mnv3_small_320")


def test_folder_with_a_foreign_file_names_it(tmp_path):
    write_lod_tensor(tmp_path / "conv1_weights", np.zeros((16, 3, 3, 3), np.float32))
    (tmp_path / "notes.bin").write_bytes(b"hello world, not a tensor")
    with pytest.raises(PaddleFormatError, match="notes.bin: not a Paddle LoDTensor"):
        convert_paddle(tmp_path, "ssdlite_mnv3_small_320")


def test_missing_unknown_and_misshapen_keys_are_all_named(tmp_path):
    arrays = fixture_arrays()
    del arrays["backbone.conv3.expand_conv.bn._mean"], arrays["ssd_head.boxes1.pw_conv.weight"]
    arrays["backbone.conv4.linear_conv.conv.weight"] = np.zeros((24, 88, 3, 3), np.float16)
    arrays["ssd_head.extra_thing.weight"] = np.zeros(3, np.float32)
    path = write_pickle(tmp_path / "broken.pdparams", arrays)
    with pytest.raises(WeightConversionError) as e:
        convert_paddle(path, "ssdlite_mnv3_small_320")
    msg = str(e.value)
    assert "broken.pdparams" in msg
    assert "ssd_head.extra_thing.weight" in msg  # a file key with no counterpart
    assert "backbone.conv3.expand_conv.bn.running_mean" in msg and "ssd_head.boxes1.pw_conv.weight" in msg
    assert "backbone.conv4.linear_conv.conv.weight (file (24, 88, 3, 3), model (24, 88, 1, 1))" in msg


def test_weights_of_another_model_are_refused(tmp_path):
    path = write_pickle(tmp_path / "resnet.pdparams", {"res2a_branch2a_weights": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(WeightConversionError, match="resnet.pdparams: none of its 1 keys matches"):
        convert_paddle(path, "ssdlite_mnv3_small_320")


# ------------------------------------------------------------------------------------------------
# backbone initialisation from ImageNet-style files
# ------------------------------------------------------------------------------------------------
def _backbone_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("backbone."):]: v for k, v in arrays.items() if k.startswith("backbone.")}


def test_backbone_from_dygraph_and_static_imagenet_files(small_converted, tmp_path):
    import pocketdet

    ref, _ = small_converted
    bb = _backbone_only(fixture_arrays())
    classifier_dyg = {"last_second_conv.conv.weight": np.zeros((576, 96, 1, 1), np.float32),
                      "last_conv.weight": np.zeros((1280, 576, 1, 1), np.float32),
                      "out.weight": np.zeros((1280, 1000), np.float32), "out.bias": np.zeros(1000, np.float32)}
    dyg = write_pickle(tmp_path / "MobileNetV3_small_dygraph.pdparams", {**bb, **classifier_dyg})
    static_dir = tmp_path / "MobileNetV3_small_x1_0_pretrained"
    static_dir.mkdir()
    for k, v in bb.items():
        write_lod_tensor(static_dir / dygraph_to_static("backbone." + k), v)
    for k in ("fc_weights", "fc_offset", "last_1x1_conv_weights", "conv_last_weights", "conv_last_bn_mean"):
        write_lod_tensor(static_dir / k, np.zeros(4, np.float32))
    for src, naming in ((dyg, "dygraph"), (static_dir, "static")):
        model = pocketdet.build("ssdlite_mnv3_small_320")
        report = load_backbone_weights(model, src)
        assert report.naming == naming
        assert not report.not_loaded  # the fixture is an SSDLite backbone: every layer fits
        assert all(v in ("ImageNet classifier",) for v in report.ignored.values()) and len(report.ignored) in (4, 5)
        for k, v in ref.state_dict().items():
            same = torch.equal(model.state_dict()[k], v)
            assert same == k.startswith("backbone.") or k.endswith("num_batches_tracked"), k


def test_backbone_with_full_tail_into_ssdlite_reports_the_multiplier_layers(tmp_path):
    """ImageNet MobileNetV3 has the full tail; SSDLite's multiplier 0.5 halves it: those layers keep their init."""
    import pocketdet
    from pocketdet.models.mobilenetv3 import MobileNetV3

    imagenet = MobileNetV3("small", 1.0, 1.0)  # all blocks, multiplier 1
    arrays = {to_paddle_dygraph(k): v.numpy() for k, v in imagenet.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    path = write_pickle(tmp_path / "imagenet.pdparams", arrays)
    model = pocketdet.build("ssdlite_mnv3_small_320")
    report = load_backbone_weights(model, path)
    assert "backbone.conv10.linear_conv.conv.weight" in report.not_loaded  # 96 -> 48 channels
    assert report.not_loaded["backbone.conv11.expand_conv.conv.weight"].startswith("shape differs")
    assert report.not_loaded["backbone.conv14.pointwise_conv.conv.weight"] == "not in the file"
    assert torch.equal(model.backbone.conv3.expand_conv.conv.weight, imagenet.conv3.expand_conv.conv.weight)
    assert "backbone.conv3.expand_conv.conv.weight" in report.loaded


def test_backbone_file_with_unknown_keys_is_refused(tmp_path):
    import pocketdet

    arrays = {to_paddle_dygraph(k): v.numpy() for k, v in pocketdet.build("ssdlite_mnv3_small_320").backbone
              .state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays["layer1.0.conv1.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    path = write_pickle(tmp_path / "mixed.pdparams", arrays)
    with pytest.raises(WeightConversionError, match=r"(?s)mixed\.pdparams.*layer1\.0\.conv1\.weight"):
        load_backbone_weights(pocketdet.build("ssdlite_mnv3_small_320"), path)


# ------------------------------------------------------------------------------------------------
# (a) live parity against a fresh PaddlePaddle run
# ------------------------------------------------------------------------------------------------
needs_paddle = pytest.mark.skipif(not PADDLE_PY.exists(),
                                  reason="no .venv-paddle (run `make paddle-env` for live Paddle parity)")
LIVE_MODELS = ["ssdlite_mnv3_small_320", "ssdlite_mnv3_large_320", "yolov3_mnv3_large_320"]


@pytest.fixture(scope="module")
def paddle_run(tmp_path_factory):
    cache = {}

    def run(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([str(PADDLE_PY), str(ROOT / "tools/paddle_reference.py"), "--model", name,
                                   "--out", str(out), "--persistables"], capture_output=True, text=True,
                                  env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache[name] = out
        return cache[name]
    return run


def _zoo_name_or_skip(name: str) -> str:
    from pocketdet.config import zoo_names
    if name not in zoo_names():
        pytest.skip(f"zoo config {name} does not exist yet")
    return name


@needs_paddle
@pytest.mark.slow  # a PaddlePaddle process per model: 25-40 s idle, minutes on a busy 2-core machine
@pytest.mark.parametrize("name", LIVE_MODELS)
def test_live_paddle_parity(paddle_run, name, capsys):
    _zoo_name_or_skip(name)
    d = paddle_run(name)
    x = torch.from_numpy(np.load(d / "input.npy"))
    sizes = [(320, 320)] * x.shape[0]
    lines = []
    models = {}
    for src in ("weights.pdparams", "persistables"):
        model, report = convert_paddle(d / src, name)
        assert report.naming == ("dygraph" if src.endswith("pdparams") else "static")
        models[src] = model
        out64 = raw_outputs(model, x)
        out32 = raw_outputs(model, x, torch.float32)
        keys = ["loc", "conf"] if name.startswith("ssdlite") else ["out0", "out1", "out2"]
        for k, a64, a32 in zip(keys, out64, out32):
            r64, r32 = np.load(d / f"{k}_f64.npy"), np.load(d / f"{k}.npy")
            if k == "conf":
                r64, r32 = bg_first(r64), bg_first(r32)
            e64, e32 = np.abs(a64.numpy() - r64).max(), np.abs(a32.numpy() - r32).max()
            lines.append(f"{name} {src} {k}: float64 {e64:.2e}, float32 {e32:.2e}")
            assert e64 <= F64_TOL and e32 <= F32_TOL, lines[-1]
    for k, v in models["weights.pdparams"].state_dict().items():
        assert torch.equal(models["persistables"].state_dict()[k], v), k
    model = models["weights.pdparams"]
    # detections: pocketdet's post-processing on both raw outputs, and Paddle's own NMS
    with torch.no_grad():
        raw = model.forward_raw(x)
    if name.startswith("ssdlite"):
        ref = [torch.from_numpy(np.load(d / "loc.npy")), torch.from_numpy(bg_first(np.load(d / "conf.npy"))),
               torch.from_numpy(np.load(d / "priors.npy"))]
        ours_nms = ssd_nms_unclipped(model, *raw)
    else:
        model.postprocess_cfg["conf_thresh"] = 0.005  # the dygraph config's YOLOBox threshold
        ref = [torch.from_numpy(np.load(d / f"out{i}.npy")) for i in range(3)]
        ours_nms = model.postprocess(raw, sizes)
    for a, b in zip(model.postprocess(raw, sizes), model.postprocess(ref, sizes)):
        assert len(a["labels"]) > 0
        box, score = assert_same_detections(a, b)
    lines.append(f"{name} detections vs pocketdet-post on Paddle raw: max box {box:.1e} px, score {score:.1e}")
    for a, b in zip(ours_nms, paddle_nms_per_image(d)):
        box, score = assert_same_detections(a, b)
    lines.append(f"{name} detections vs Paddle MultiClassNMS: max box {box:.1e} px, score {score:.1e}")
    with capsys.disabled():
        print("\n[paddle parity] " + "\n[paddle parity] ".join(lines))


@needs_paddle
@pytest.mark.slow
def test_live_backbone_pretrained_naming(paddle_run):
    """backbone.pdparams = a Paddle MobileNetV3's own state dict (how ppdet's ImageNet weights are named)."""
    from pocketdet.models import YOLOv3

    d = paddle_run("yolov3_mnv3_large_320")
    model = YOLOv3()
    report = load_backbone_weights(model, d / "backbone.pdparams")
    assert report.naming == "dygraph" and not report.not_loaded and not report.ignored
    arrays = read_paddle_weights(d / "backbone.pdparams").arrays
    assert len(arrays) == len(report.loaded)
    state = model.state_dict()
    for k, v in arrays.items():
        assert np.array_equal(state["backbone." + k.replace("._mean", ".running_mean")
                                    .replace("._variance", ".running_var")].numpy(), v), k


def test_backbone_from_a_pocketdet_checkpoint(small_converted, tmp_path):
    """Backbone init from another pocketdet model: Small's backbone into a fresh Small; head untouched."""
    import pocketdet

    ref, _ = small_converted
    ck = save_converted(ref, tmp_path / "small.pt")
    model = pocketdet.build("ssdlite_mnv3_small_320")
    head_before = model.ssd_head.scores0.pw_conv.weight.clone()
    report = load_backbone_weights(model, ck)
    assert report.naming == "pocketdet" and not report.not_loaded
    assert report.ignored["ssd_head.scores0.pw_conv.weight"] == "detector layer outside the backbone"
    assert torch.equal(model.backbone.conv12.linear_conv.conv.weight, ref.backbone.conv12.linear_conv.conv.weight)
    assert torch.equal(model.ssd_head.scores0.pw_conv.weight, head_before)


def test_cli_convert_paddle(tmp_path):
    from typer.testing import CliRunner

    from pocketdet.cli import app

    out = tmp_path / "small.pt"
    r = CliRunner().invoke(app, ["convert", "paddle", str(FIX / "weights.pdparams"), "--model",
                                 "ssdlite_mnv3_small_320", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "loaded 343 tensors" in r.output and out.is_file()
    assert torch.load(out, weights_only=True)["config"]["name"] == "ssdlite_mnv3_small_320"
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    r = CliRunner().invoke(app, ["convert", "paddle", str(bad), "--model", "ssdlite_mnv3_small_320",
                                 "-o", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "notes.txt: not a Paddle weight file (a text file)" in r.output
    assert not (tmp_path / "x.pt").exists()


def test_cascade_static_checkpoint(tmp_path):
    """Static Cascade R-CNN (the seed's .tar): FC weights stored [in, out], and the backbone layers that
    Paddle's MobileNetV3RCNN builds past conv14's expand conv (unused) are skipped by name."""
    import pocketdet

    torch.manual_seed(0)
    src_model = pocketdet.build("cascade_rcnn_mnv3_large_fpn_320").eval()
    arrays = {}
    for k, v in src_model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        a = v.numpy()
        arrays[dygraph_to_static(to_paddle_dygraph(k))] = a.T.copy() if a.ndim == 2 else a
    arrays["conv14_depthwise_weights"] = np.zeros((672, 1, 5, 5), np.float32)
    arrays["conv16_linear_bn_mean"] = np.zeros(160, np.float32)
    arrays["fc6_w_velocity_0"] = np.zeros((2352, 128), np.float32)
    folder = tmp_path / "cascade_rcnn_mobilenetv3_fpn_320"
    folder.mkdir()
    for k, v in arrays.items():
        write_lod_tensor(folder / k, v)
    tar = tmp_path / "cascade_rcnn_mobilenetv3_fpn_320.tar"
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname=folder.name)
    model, report = convert_paddle(tar, "cascade_rcnn_mnv3_large_fpn_320")
    assert report.naming == "static"
    assert report.transformed["roi_heads.stages.2.fc6.weight"].startswith("transposed")
    assert report.ignored["conv14_depthwise_weights"].startswith("backbone layer after the last feature tap")
    assert report.ignored["conv16_linear_bn_mean"].startswith("backbone layer after")
    assert report.ignored["fc6_w_velocity_0"].startswith("optimizer")
    for k, v in src_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    arrays["conv2_weird_weights"] = np.zeros(3, np.float32)  # within the built blocks: refused, not skipped
    path = write_pickle(tmp_path / "cascade.pdparams", arrays)
    with pytest.raises(WeightConversionError, match="conv2_weird_weights"):
        convert_paddle(path, "cascade_rcnn_mnv3_large_fpn_320")


def test_pruned_yolov3_head_widths_come_from_the_file(tmp_path):
    """The seed's FPGM-pruned YOLOv3 (spec §5.1 widths), static names: rebuilt to the file's widths, and the
    widths travel in the saved checkpoint's config."""
    import pocketdet
    from pocketdet.models import YOLOv3

    widths = [[128, 256, 128, 256, 128, 256], [64, 128, 64, 128, 64, 128], [16, 32, 16, 32, 16, 32]]
    torch.manual_seed(0)
    pruned = YOLOv3(block_widths=widths).eval()
    arrays = {dygraph_to_static(to_paddle_dygraph(k)): v.numpy() for k, v in pruned.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    path = write_pickle(tmp_path / "yolov3_mobilenet_v3_prune75875_FPGM_distillby_r34.pdparams", arrays, protocol=2)
    model, report = convert_paddle(path, "yolov3_mnv3_large_320")
    assert model.block_widths == widths and "pruned" in report.notes[0]
    for k, v in pruned.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    loaded = pocketdet.load(save_converted(model, tmp_path / "pruned.pt"))
    assert loaded.block_widths == widths


def fluid_cascade_static_names() -> list[str]:
    """Every persistable name of the static Cascade R-CNN MobileNetV3-FPN graph, written from the fluid-era
    source (ppdet-notebook 0.4.3.7 = static ppdet), independently of the converter:
    backbones/mobilenet_v3.py `_conv_bn_layer` ({name}_weights, {name}_bn_{scale,offset,mean,variance}),
    `_se_block` ({name}_se_{1,2}_{weights,offset}), `MobileNetV3RCNN._residual_unit` (always an expand
    conv: conv{i}_expand / _depthwise / _linear), all 15 large blocks conv2..conv16 (no conv_last: the
    config's feature_maps [2, 3, 4] stop below 5); backbones/fpn.py (body names mv3_0..mv3_2 reversed:
    top `fpn_inner_mv3_2`, `fpn_inner_mv3_{i}_lateral`, `fpn_mv3_{i}`, extra `fpn_5`, `fpn_6`);
    anchor_heads/rpn_head.py FPNRPNHead (shared `*_fpn2` names); roi_heads/cascade_head.py
    CascadeTwoFCHead + CascadeBBoxHead with stage suffixes '', '_2', '_3'."""
    se_blocks = {5, 6, 7, 12, 13, 14, 15, 16}  # large cfg rows with SE (spec §2.1), conv2 = row 0
    names = []
    conv = lambda n: [f"{n}_weights"] + [f"{n}_bn_{s}" for s in ("scale", "offset", "mean", "variance")]  # noqa: E731
    names += conv("conv1")
    for b in range(2, 17):
        for part in ("expand", "depthwise", "linear"):
            names += conv(f"conv{b}_{part}")
        if b in se_blocks:
            names += [f"conv{b}_se_{k}_{t}" for k in (1, 2) for t in ("weights", "offset")]
    wb = lambda n: [f"{n}_w", f"{n}_b"]  # noqa: E731
    names += wb("fpn_inner_mv3_2") + wb("fpn_inner_mv3_1_lateral") + wb("fpn_inner_mv3_0_lateral")
    names += [x for i in range(3) for x in wb(f"fpn_mv3_{i}")] + wb("fpn_5") + wb("fpn_6")
    names += wb("conv_rpn_fpn2") + wb("rpn_cls_logits_fpn2") + wb("rpn_bbox_pred_fpn2")
    for sfx in ("", "_2", "_3"):
        names += [x for n in ("fc6", "fc7", "cls_score", "bbox_pred") for x in wb(n + sfx)]
    return names


@pytest.mark.parametrize("size", [320, 640])
def test_cascade_static_names_follow_the_fluid_source(size):
    """Name by name: the converter's static map of every Cascade tensor is exactly the fluid graph's names
    for the layers pocketdet builds, and every other fluid name is a backbone layer past conv14's expand
    conv that the converter skips by rule."""
    import pocketdet
    from pocketdet.convert.paddle import _unused_backbone_layer

    model = pocketdet.build(f"cascade_rcnn_mnv3_large_fpn_{size}")
    mapped = {dygraph_to_static(to_paddle_dygraph(k)) for k in model.state_dict()
              if not k.endswith("num_batches_tracked")}
    fluid = fluid_cascade_static_names()
    assert len(fluid) == len(set(fluid))
    assert mapped <= set(fluid), sorted(mapped - set(fluid))
    rest = sorted(set(fluid) - mapped)
    assert rest and all(_unused_backbone_layer(n, model) for n in rest), [n for n in rest
                                                                           if not _unused_backbone_layer(n, model)]
    assert {n.split("_")[0] for n in rest} == {"conv14", "conv15", "conv16"}
    assert not any(n.startswith("conv14_expand") for n in rest)
