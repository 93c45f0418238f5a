"""The CLI end to end on real photos, and its errors for bad input."""
import json

import pytest
from typer.testing import CliRunner

from pocketdet.cli import app

runner = CliRunner()


def test_zoo_and_info():
    r = runner.invoke(app, ["zoo"])
    assert r.exit_code == 0 and "ssdlite_mnv3_large_320" in r.output and "23.3" in r.output
    r = runner.invoke(app, ["info", "ssdlite_mnv3_small_320"])
    assert r.exit_code == 0 and "1,917,854" in r.output and "FLOPs" in r.output


def test_train_val_predict(tmp_path, tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    data = tmp_path / "d.yaml"
    data.write_text(f"train: {{images: {img_dir}, annotations: {ann_file}}}\nval: {{images: {img_dir}, annotations: {ann_file}}}\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "ssdlite_mnv3_small_320", "--data", str(data), "--out", str(out), "--iters", "2",
                            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--set", "train.eval_interval=2"])
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    r = runner.invoke(app, ["val", str(out / "best.pt"), "--data", str(data), "--workers", "0",
                            "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert set(json.loads((tmp_path / "s.json").read_text())) >= {"AP", "AP50", "images_per_s"}
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(out / "best.pt"), str(img_dir), "--out", str(pred), "--conf", "0.0"])
    assert r.exit_code == 0, r.output
    res = json.loads((pred / "predictions.json").read_text())
    assert len(res) == 4 and len(list(pred.glob("*.jpg"))) == 4  # JPEG by default (--png on request)
    det = res[0]["detections"][0]
    assert set(det) == {"box_xyxy", "score", "label", "class_name"}


@pytest.mark.parametrize("args,msg", [
    (["train", "no_such_model", "--data", "x.yaml"], "unknown zoo model 'no_such_model'"),
    (["train", "ssdlite_mnv3_small_320", "--data", "missing.yaml"], "dataset YAML not found"),
    (["train", "ssdlite_mnv3_small_320", "--data", "missing.yaml", "--set", "train.bogus=1"], "train.bogus"),
    (["train", "ssdlite_mnv3_small_320", "--data", "missing.yaml", "--set", "train.batch_size=many"],
     "train.batch_size"),
    (["predict", "ssdlite_mnv3_small_320", "/nonexistent/*.jpg"], "no images found"),
    (["val", "missing_ckpt.pt", "--data", "x.yaml"], "checkpoint not found"),
])
def test_bad_input_is_a_clear_error(args, msg):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and msg in r.output, r.output


def test_train_overrides_rescale_mixup_with_iters():
    from pocketdet.cli import train_overrides
    from pocketdet.config import apply_overrides, load_config

    cfg = load_config("yolov3_mnv3_large_320")
    mixup, total = cfg.train.extra["mixup_iters"], cfg.train.schedule.max_iters
    assert 0 < mixup < total
    new = apply_overrides(cfg, train_overrides(cfg, [], iters=1000, batch_size=4))
    assert new.train.schedule.max_iters == 1000 and new.train.batch_size == 4
    assert new.train.extra["mixup_iters"] == round(mixup * 1000 / total)
    # an explicit --set wins over the rescaling
    new = apply_overrides(cfg, train_overrides(cfg, ["train.extra.mixup_iters=7"], iters=1000))
    assert new.train.extra["mixup_iters"] == 7
    ssd = load_config("ssdlite_mnv3_small_320")
    assert train_overrides(ssd, [], iters=10) == ["train.schedule.max_iters=10"]


def test_train_without_pretrained_calibrates_frozen_norm(coco128_yaml):
    """Cascade R-CNN's frozen backbone BN gets statistics from training photos when no weights are given."""
    import torch

    from pocketdet.cli import _frozen_norm_init
    from pocketdet.data import build_dataset, load_dataset_yaml
    from pocketdet.models import build_model
    from pocketdet.config import load_config
    from torchvision.ops import FrozenBatchNorm2d

    ds = build_dataset(load_dataset_yaml(coco128_yaml), "train")
    model = build_model(load_config("cascade_rcnn_mnv3_large_fpn_320").model)
    frozen = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(torch.all(m.running_var == 1) for m in frozen)
    _frozen_norm_init(ds, n=2)(model)
    assert all(not torch.all(m.running_var == 1) for m in frozen)
    ssd = build_model(load_config("ssdlite_mnv3_small_320").model)
    before = {k: v.clone() for k, v in ssd.state_dict().items()}
    _frozen_norm_init(ds, n=2)(ssd)  # no frozen BN: untouched
    assert all(torch.equal(before[k], v) for k, v in ssd.state_dict().items())


def test_export_cascade_then_predict_with_onnx_runtime(tmp_path, data_dir):
    """`pocketdet export` of a two-part model (Cascade R-CNN) verifies it, and `--dynamic-batch` is refused."""
    out = tmp_path / "cascade.onnx"
    photo = data_dir / "coco128" / "images" / "val2017" / "000000000139.jpg"
    r = runner.invoke(app, ["export", "cascade_rcnn_mnv3_large_fpn_320", "--format", "onnx", "-o", str(out),
                            "--image", str(photo)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "1 images" in r.output and "wrote" in r.output
    r = runner.invoke(app, ["predict", str(out), str(photo), "--runtime", "onnx", "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "cascade_rcnn_mnv3_large_fpn_320", "-o", str(tmp_path / "x.onnx"),
                            "--dynamic-batch", "--no-verify"])
    assert r.exit_code != 0 and "dynamic_batch" in r.output
