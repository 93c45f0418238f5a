"""Broken or mistaken model files given to the CLI: exit != 0 with ONE line naming the file and the problem,
no traceback, and never torch's advice to load with weights_only=False (issue 13 part 2, issue 21 item 5)."""
import pickle

import onnx
import pytest
import torch
from typer.testing import CliRunner

from pocketdet.cli import app
from pocketdet.config import load_config
from pocketdet.convert.common import save_converted
from pocketdet.deploy.export import export_onnx
from pocketdet.deploy.model_files import CHECKPOINT, NCNN, ONNX, model_file_kind
from pocketdet.models import build_model

runner = CliRunner()
PHOTO = "data/coco128/images/val2017/000000000139.jpg"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real checkpoint and ONNX export of SSDLite-MNV3-Small (random weights: only loading is tested)."""
    d = tmp_path_factory.mktemp("model_files")
    torch.manual_seed(0)
    cfg = load_config("ssdlite_mnv3_small_320")
    model = build_model(cfg.model).eval()
    ckpt = save_converted(model, d / "small.pt", config=cfg)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        onnx_path = export_onnx(model, d / "small.onnx", name=cfg.name)
    finally:
        torch.set_num_threads(prev)
    return d, ckpt, onnx_path


def _one_line_error(args, *needles):
    r = runner.invoke(app, args)
    out = r.output.strip()
    assert r.exit_code != 0, out
    assert "Traceback" not in out and r.exception is None or isinstance(r.exception, SystemExit), out
    assert len(out.splitlines()) == 1, out
    assert "weights_only" not in out and "will likely succeed" not in out, out
    for n in needles:
        assert n in out, out
    return out


@pytest.mark.parametrize("verb", ["val", "predict"])
def test_truncated_onnx(files, verb, tmp_path):
    _, _, onnx_path = files
    bad = tmp_path / "cut.onnx"
    data = onnx_path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    args = [verb, str(bad)] + (["--data", "data/coco128.yaml"] if verb == "val" else [PHOTO, "--out", str(tmp_path)])
    _one_line_error(args, str(bad), "not a loadable ONNX model")


def test_onnx_without_pocketdet_metadata(files, tmp_path):
    _, _, onnx_path = files
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.model"  # no .onnx suffix either: recognised by content
    onnx.save(proto, str(bare))
    assert model_file_kind(bare) == ONNX
    _one_line_error(["val", str(bare), "--data", "data/coco128.yaml"], str(bare), "no pocketdet metadata")
    _one_line_error(["predict", str(bare), PHOTO, "--out", str(tmp_path)], str(bare), "no pocketdet metadata")


def test_ncnn_param_without_bin(tmp_path):
    param = tmp_path / "net.ncnn.param"
    param.write_text("7767517\n1 1\nInput in0 0 1 in0\n")
    assert model_file_kind(param) == NCNN
    _one_line_error(["predict", str(param), PHOTO, "--out", str(tmp_path)], "net.ncnn.bin", "missing")
    _one_line_error(["val", str(tmp_path / "net"), "--data", "data/coco128.yaml"], "net.ncnn.bin", "missing")


def test_checkpoint_of_another_architecture(files, tmp_path):
    _, ckpt, _ = files
    assert model_file_kind(ckpt) == CHECKPOINT
    ck = torch.load(ckpt, weights_only=True)
    for other in ("ssdlite_mnv3_large_320", "yolov3_mnv3_large_320"):
        ck["config"] = load_config(other).model_dump()
        wrong = tmp_path / f"as_{other}.pt"
        torch.save(ck, wrong)
        _one_line_error(["val", str(wrong), "--data", "data/coco128.yaml"], str(wrong), "do not fit", other)
        _one_line_error(["predict", str(wrong), PHOTO, "--out", str(tmp_path)], str(wrong), "do not fit")


def test_truncated_checkpoint(files, tmp_path):
    _, ckpt, _ = files
    bad = tmp_path / "cut.pt"
    data = ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    for verb_args in (["val", str(bad), "--data", "data/coco128.yaml"], ["predict", str(bad), PHOTO],
                      ["info", str(bad)], ["export", str(bad), "-o", str(tmp_path / "x.onnx")]):
        _one_line_error(verb_args, str(bad), "damaged or truncated")


def test_pickled_model_is_refused_without_unsafe_advice(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # a pickled module: code, not weights
    _one_line_error(["val", str(whole), "--data", "data/coco128.yaml"], str(whole), "never runs code")


@pytest.mark.parametrize("verb", ["val", "predict", "info", "export"])
def test_directory_where_a_file_is_expected(verb, tmp_path):
    d = tmp_path / "weights_dir"
    d.mkdir()
    args = {"val": ["val", str(d), "--data", "data/coco128.yaml"], "predict": ["predict", str(d), PHOTO],
            "info": ["info", str(d)], "export": ["export", str(d), "-o", str(tmp_path / "x.onnx")]}[verb]
    _one_line_error(args, str(d), "is a directory")


def test_onnx_given_where_a_checkpoint_is_needed(files, tmp_path):
    _, _, onnx_path = files
    _one_line_error(["info", str(onnx_path)], str(onnx_path), "not a torch checkpoint")
    _one_line_error(["predict", str(onnx_path), PHOTO, "--runtime", "torch"], str(onnx_path), "--runtime onnx")


def test_other_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(["predict", str(empty), PHOTO], str(empty), "empty")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model\n")
    _one_line_error(["val", str(text), "--data", "data/coco128.yaml"], str(text), "not a model file")
    _one_line_error(["predict", str(tmp_path / "absent.onnx"), PHOTO], "absent.onnx", "not found")
    with open(tmp_path / "legacy.pt", "wb") as f:
        pickle.dump({"model": {}}, f, protocol=2)
    assert model_file_kind(tmp_path / "legacy.pt") == CHECKPOINT
