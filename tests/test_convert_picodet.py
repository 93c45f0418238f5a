"""PP-PicoDet Paddle weights: conversion parity against paddledet 2.6.0's own forward and detections.

* committed fixture (always runs): tests/fixtures/paddle/picodet_xs_320, made by `tools/picodet_reference.py
  forward --model picodet_xs_320 --fp16-weights --compact` (see the fixtures README): ppdet's PicoDet-XS with
  seeded random weights (float16-exact), two real photos, Paddle's float64 dense outputs before NMS and its
  MultiClassNMS detections for the original photo sizes, in float64 and float32.
* live Paddle (when .venv-paddle exists, marked slow): S 320, M 416 and L 640 generated afresh.

Parity: float64 dense outputs within 1e-4, float32 within 1e-3; detections the same (labels, boxes within
1e-3 px, scores within 1e-4) after pocketdet's postprocess and Paddle's MultiClassNMS.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketdet.convert.common import WeightConversionError
from pocketdet.convert.paddle import convert_paddle
from pocketdet.convert.paddle_io import read_paddle_weights
from test_convert_paddle import assert_same_detections, paddle_nms_per_image

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests/fixtures/paddle/picodet_xs_320"
PADDLE_PY = ROOT / ".venv-paddle/bin/python"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
F64_TOL, F32_TOL = 1e-4, 1e-3
BOX_TOL, SCORE_TOL = 1e-3, 1e-4
PADDLE_TENSORS_XS = 463  # tests/fixtures/picodet_xs_params.tsv: every state-dict entry of ppdet's PicoDet-XS
ALIASES = 16             # head.head_{cls,reg}{0..3}.{weight,bias}: the same tensors as head_*_list

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normalize(u8: np.ndarray) -> torch.Tensor:
    """The numpy ops of tools/paddle_reference.py `normalize`: uint8 NHWC -> ImageNet-normalised NCHW."""
    x = (u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))


def dense(model, x: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(scores, boxes, per-level distribution logits) in `dtype`, as float64 arrays."""
    model.to(dtype)
    try:
        with torch.no_grad():
            scores, boxes = model.forward_raw(x.to(dtype))
            regs = model.head_outputs(x.to(dtype))[1]
        return scores.double(), boxes.double(), [r.double() for r in regs]
    finally:
        model.float()


def max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def check_against_paddle(model, d: Path, label: str) -> list[str]:
    """Dense outputs and detections against the files of a picodet_reference run.

    float64 checks the conversion: scores, boxes (px) and logits within 1e-4 of Paddle's float64 forward,
    detections equal to Paddle's (boxes within 1e-3 px, scores within 1e-4). float32 is compared with the
    exact (float64) answer: within 1e-3, or within twice Paddle's own float32 error where that is larger
    (random deep networks amplify float32 round-off: on PicoDet-M 416 Paddle's own float32 boxes are 0.06 px
    from its float64 ones, so no float32 implementation can meet 1e-3 px there); detections then match
    Paddle's float32 MultiClassNMS within the same box tolerance."""
    x = normalize(np.load(d / "input_uint8.npy"))
    sizes = [tuple(int(v) for v in hw) for hw in np.load(d / "orig_hw.npy")]
    ref = {k: np.load(d / f"{k}_f64.npy") for k in ("scores", "boxes")}
    ref.update({f"reg{i}": np.load(d / f"reg{i}_f64.npy") for i in range(4) if (d / f"reg{i}_f64.npy").exists()})
    lines = []
    for dtype, suffix in ((torch.float64, "_f64"), (torch.float32, "")):
        scores, boxes, regs = dense(model, x, dtype)
        ours = {"scores": scores, "boxes": boxes, **{f"reg{i}": r for i, r in enumerate(regs)}}
        tol, errs = {}, {}
        for k in ref:
            errs[k] = max_err(ours[k], ref[k])
            paddle32 = d / f"{k}.npy"
            if dtype == torch.float64:
                tol[k] = F64_TOL
            else:
                tol[k] = max(F32_TOL, 2 * max_err(np.load(paddle32), ref[k])) if paddle32.exists() else F32_TOL
        lines.append(f"{label} {dtype}: " + ", ".join(f"{k} {errs[k]:.1e} (tol {tol[k]:.0e})" for k in ref))
        assert all(errs[k] <= tol[k] for k in ref), lines[-1]
        box_tol = BOX_TOL if dtype == torch.float64 else max(BOX_TOL, tol["boxes"])
        score_tol = SCORE_TOL if dtype == torch.float64 else max(SCORE_TOL, tol["scores"])
        for a, b in zip(model.postprocess((scores, boxes), sizes), paddle_nms_per_image_suffix(d, suffix)):
            assert len(a["labels"]) == 100  # keep_top_k reached: a real comparison
            box, score = assert_same_detections(a, b, box_tol=box_tol, score_tol=score_tol)
            lines.append(f"{label} {dtype} detections vs Paddle MultiClassNMS: {len(a['labels'])} boxes, "
                         f"max box {box:.1e} px, score {score:.1e}")
    return lines


def paddle_nms_per_image_suffix(d: Path, suffix: str) -> list[dict]:
    if not suffix:
        return paddle_nms_per_image(d)
    tmp = {k: np.load(d / f"{k}{suffix}.npy") for k in ("nms_bbox", "nms_num")}
    out, off = [], 0
    for n in tmp["nms_num"]:
        b = torch.from_numpy(tmp["nms_bbox"][off:off + n]).double()
        out.append({"labels": b[:, 0].long(), "scores": b[:, 1], "boxes": b[:, 2:]})
        off += n
    return out


def write_pickle(path: Path, arrays: dict) -> Path:
    with path.open("wb") as f:
        pickle.dump(arrays, f, protocol=4)
    return path


@pytest.fixture(scope="module")
def xs_converted():
    return convert_paddle(FIX / "weights.pdparams", "picodet_xs_320")


def test_fixture_conversion_is_a_rename(xs_converted):
    model, report = xs_converted
    assert report.naming == "dygraph" and report.layout == "pdparams pickle"
    assert len(report.loaded) == PADDLE_TENSORS_XS - ALIASES and not report.transformed
    assert sorted(report.ignored) == sorted(f"head.head_{p}{i}.{w}" for p in ("cls", "reg") for i in range(4)
                                            for w in ("weight", "bias"))
    arrays = read_paddle_weights(FIX / "weights.pdparams").arrays
    state = model.state_dict()
    for k, v in arrays.items():
        ours = k.replace("._mean", ".running_mean").replace("._variance", ".running_var")
        ours = ours if ours in state else ours.replace("head.head_cls", "head.head_cls_list.").replace(
            "head.head_reg", "head.head_reg_list.")
        assert np.array_equal(state[ours].numpy(), v.astype(np.float32)), k


def test_fixture_matches_paddle(xs_converted, capsys):
    model, _ = xs_converted
    lines = check_against_paddle(model, FIX, "fixture picodet_xs_320")
    with capsys.disabled():
        print("\n[picodet parity] " + "\n[picodet parity] ".join(lines))


def test_alias_that_differs_is_refused(tmp_path):
    arrays = read_paddle_weights(FIX / "weights.pdparams").arrays
    arrays["head.head_reg2.bias"] = arrays["head.head_reg2.bias"] + np.float16(1)
    path = write_pickle(tmp_path / "edited.pdparams", arrays)
    with pytest.raises(WeightConversionError, match=r"edited\.pdparams: .*head\.head_reg2\.bias"):
        convert_paddle(path, "picodet_xs_320")
    # a file with the list names only (no aliases) converts to the same model
    lists_only = {k: v for k, v in read_paddle_weights(FIX / "weights.pdparams").arrays.items()
                  if not k.startswith(("head.head_cls", "head.head_reg")) or "_list." in k}
    model, report = convert_paddle(write_pickle(tmp_path / "lists.pdparams", lists_only), "picodet_xs_320")
    assert not report.ignored and len(report.loaded) == PADDLE_TENSORS_XS - ALIASES


def test_missing_and_misshapen_keys_name_the_file(tmp_path):
    arrays = read_paddle_weights(FIX / "weights.pdparams").arrays
    del arrays["neck.downsamples.1.bn2._variance"]
    arrays["backbone.blocks6.0.se.conv1.bias"] = np.zeros(3, np.float32)
    arrays["head.extra_conv.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    with pytest.raises(WeightConversionError) as e:
        convert_paddle(write_pickle(tmp_path / "broken.pdparams", arrays), "picodet_xs_320")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "broken.pdparams") + ": cannot convert")
    for what in ("head.extra_conv.weight", "backbone.blocks6.0.se.conv1.bias (file (3,)",
                 "neck.downsamples.1.bn2.running_var"):
        assert what in msg


def test_class_count_comes_from_the_file(xs_converted, tmp_path):
    arrays = read_paddle_weights(FIX / "weights.pdparams").arrays
    for i in range(4):
        for name in (f"head.head_cls_list.{i}", f"head.head_cls{i}"):
            for p in ("weight", "bias"):
                arrays[f"{name}.{p}"] = arrays[f"{name}.{p}"][:20]
    path = write_pickle(tmp_path / "voc.pdparams", arrays)
    with pytest.raises(WeightConversionError, match=r"voc\.pdparams.*20 classes.*class_names"):
        convert_paddle(path, "picodet_xs_320")
    model, _ = convert_paddle(path, "picodet_xs_320", class_names=[f"c{i}" for i in range(20)])
    full, _ = xs_converted
    x = normalize(np.load(FIX / "input_uint8.npy"))[:1]
    with torch.no_grad():
        assert torch.allclose(model.forward_raw(x)[0], full.forward_raw(x)[0][..., :20], atol=1e-6)


def test_load_by_name_from_the_download_cache(xs_converted, tmp_path, monkeypatch):
    """`pocketdet.load("picodet_xs_320:coco")` with the file placed by hand where a download would go."""
    import pocketdet

    monkeypatch.setenv("POCKETDET_HOME", str(tmp_path))
    monkeypatch.setenv("POCKETDET_MIRROR", "http://127.0.0.1:9")  # nothing may be fetched
    (tmp_path / "downloads").mkdir()
    shutil.copy(FIX / "weights.pdparams", tmp_path / "downloads" / "picodet_xs_320_coco_lcnet.pdparams")
    model = pocketdet.load("picodet_xs_320:coco")
    ref, _ = xs_converted
    assert model.arch == "picodet" and model.input_size == 320 and len(model.class_names) == 80
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------------
# live Paddle
# ------------------------------------------------------------------------------------------------
needs_paddle = pytest.mark.skipif(not PADDLE_PY.exists(),
                                  reason="no .venv-paddle (run `make paddle-env` for live Paddle parity)")


@needs_paddle
@pytest.mark.slow  # one PaddlePaddle process per model, float32 and float64 forwards: 10-60 s each on 2 cores
@pytest.mark.parametrize("name", ["picodet_s_320", "picodet_m_416", "picodet_l_640"])
def test_live_paddle_parity(name, tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(PADDLE_PY), str(ROOT / "tools/picodet_reference.py"), "forward", "--model", name,
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["model"] == name and meta["fp16_weights"] is False
    model, report = convert_paddle(tmp_path / "weights.pdparams", name)
    assert len(report.ignored) == ALIASES and not report.transformed
    lines = check_against_paddle(model, tmp_path, name)
    with capsys.disabled():
        print("\n[picodet parity] " + "\n[picodet parity] ".join(lines))
