"""The CLI end to end on real photos, and its errors for bad input."""
import json
import re

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


def test_train_gpu_aug_runs_the_device_pipeline_and_refuses_other_recipes(tmp_path, tiny_coco, monkeypatch):
    """`--gpu-aug` wires data/gpu_aug.py into `pocketdet train` (here on CPU tensors: the same code as on CUDA);
    a recipe whose augmentation is not `ssd` is refused in one line before any work."""
    from pocketdet.data import gpu_aug

    calls = []
    real = gpu_aug.DeviceSSDAugment.__call__

    def spy(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)
    monkeypatch.setattr(gpu_aug.DeviceSSDAugment, "__call__", spy)
    img_dir, ann_file, _ = tiny_coco
    data = tmp_path / "d.yaml"
    data.write_text(f"train: {{images: {img_dir}, annotations: {ann_file}}}\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "ssdlite_mnv3_small_320", "--data", str(data), "--out", str(out), "--iters", "2",
                            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--gpu-aug", "--no-eval"])
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").exists() and len(calls) == 2
    r = runner.invoke(app, ["train", "yolov3_mnv3_large_320", "--data", str(data), "--out", str(tmp_path / "y"),
                            "--iters", "1", "--device", "cpu", "--gpu-aug"])
    err = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(err) == 1 and "--gpu-aug" in err[0] and "train.augment=yolo" in err[0], r.output


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
    assert train_overrides(ssd, [], iters=100000) == ["train.schedule.max_iters=100000"]
    # a short run gets a quarter of itself as warmup, not the recipe's 2000 iterations (its LR would never peak)
    short = apply_overrides(ssd, train_overrides(ssd, [], iters=400)).train.schedule
    assert ssd.train.schedule.warmup_iters == 2000 and short.warmup_iters == 100
    kept = apply_overrides(ssd, train_overrides(ssd, ["train.schedule.warmup_iters=300"], iters=400))
    assert kept.train.schedule.warmup_iters == 300


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


# -- issue 21: what a new user hits ---------------------------------------------------------------------------
def _yaml(tmp_path, tiny_coco, text=None):
    img_dir, ann_file, _ = tiny_coco
    p = tmp_path / "d.yaml"
    p.write_text(text or f"train: {{images: {img_dir}, annotations: {ann_file}}}\n")
    return p


def test_pretrained_offline_url_is_one_line(tmp_path, tiny_coco, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    r = runner.invoke(app, ["train", "ssdlite_mnv3_small_320", "--data", str(_yaml(tmp_path, tiny_coco)), "--iters", "1",
                            "--out", str(tmp_path / "run"), "--device", "cpu",
                            "--pretrained", "http://127.0.0.1:9/mnv3_small.pdparams"])  # port 9: refused
    assert r.exit_code == 2 and "--pretrained http://127.0.0.1:9/mnv3_small.pdparams: cannot read it" in r.output
    assert "offline?" in r.output and "Traceback" not in r.output, r.output


def test_pretrained_of_another_family_is_refused_and_counts_are_logged(tmp_path, caplog):
    import logging

    import pocketdet
    from pocketdet.cli import _pretrained_init
    from pocketdet.convert.common import WeightConversionError
    from pocketdet.checkpoint import save_atomic

    large = tmp_path / "large.pt"
    save_atomic({"model": pocketdet.build("ssdlite_mnv3_large_320").state_dict()}, large)
    with pytest.raises(WeightConversionError, match=r"only \d+ of \d+ backbone tensors fit this model"):
        _pretrained_init(str(large))(pocketdet.build("ssdlite_mnv3_small_320"))
    small = tmp_path / "small.pt"
    save_atomic({"model": pocketdet.build("ssdlite_mnv3_small_320").state_dict()}, small)
    with caplog.at_level(logging.INFO):
        _pretrained_init(str(small))(pocketdet.build("ssdlite_mnv3_small_320"))
    assert re.search(r"loaded (\d+) of \1 backbone tensors, 0 kept their initialisation", caplog.text), caplog.text


@pytest.mark.parametrize("text,msg", [
    ("train: {images: images, annotation: a.json}\n",
     "unknown key 'annotation' in 'train' (allowed: images, annotations, labels"),
    ("trian: images\n", "unknown key 'trian' (allowed: path, names, train, val, test, nc)"),
    ("train: {annotations: a.json}\n", "'train' needs 'images'"),
])
def test_dataset_yaml_typo_names_file_key_and_allowed_keys(tmp_path, text, msg):
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    r = runner.invoke(app, ["train", "ssdlite_mnv3_small_320", "--data", str(p), "--device", "cpu"])
    assert r.exit_code == 2 and f"{p}: {msg}" in r.output, r.output
    assert "SplitSpec" not in r.output and "train.str" not in r.output


@pytest.mark.slow
def test_bench_prints_table_writes_only_under_out_and_int8_sits_next_to_fp32(tmp_path, monkeypatch):
    """Issue 21.7 / 21.9: nothing lands in the current folder, the table is printed, `--runtime
    onnxruntime-int8` gives an fp32 row next to the int8 one, and the progress line names only what is timed."""
    import warnings

    from pocketdet.compress import quant
    from pocketdet.deploy.trained_like import calibration_images

    monkeypatch.setattr(quant, "bench_int8_export", lambda model, path, name, not_quant=(): (
        path.write_bytes(quant.ptq(model, calibration_images(2), not_quant, name=name)), path)[1])
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # matplotlib's "No artists with labels" is a UserWarning
        r = runner.invoke(app, ["bench", "ssdlite_mnv3_small_320", "--runtime", "onnxruntime-int8", "--threads", "1",
                                "--runs", "1", "--warmup", "0", "--out", "b"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert {"BENCHMARKS.md", "rows.json", "latency_vs_ap.png"} <= {p.name for p in (tmp_path / "b").iterdir()}
    table = [line for line in r.output.splitlines() if line.startswith("| ssdlite_mnv3_small_320 |")]
    assert [line.split("|")[2].strip() for line in table] == ["onnxruntime (fp32)", "onnxruntime-int8"]
    assert "threads=1: onnxruntime, onnxruntime-int8" in r.output and "torch" not in r.output.split("threads=1:")[1]


def test_export_zoo_name_warns_random_weights_and_weak_verification(tmp_path, data_dir, caplog):
    photo = data_dir / "coco128" / "images" / "val2017" / "000000000139.jpg"
    r = runner.invoke(app, ["export", "ssdlite_mnv3_small_320", "--format", "ONNX", "-o", str(tmp_path / "m.onnx"),
                            "--image", str(photo)])
    assert r.exit_code == 0, r.output
    assert "RANDOM weights" in caplog.text
    assert "WARNING: " in r.output and ("no detections to compare" in r.output or "could be compared" in r.output)


def test_verify_report_says_how_much_was_compared():
    from pocketdet.deploy.export import VerifyReport

    assert VerifyReport("m.onnx", detections=10, matched=10).weak is None
    weak = VerifyReport("m.onnx", detections=800, matched=6, tie_exempt=794)
    assert "only 6 of 800 detections could be compared" in weak.summary()
    assert "no detections to compare" in VerifyReport("m.onnx", images=4).summary()
    int8 = VerifyReport("m.onnx", images=4, compare_detections=False)
    assert "detections not compared" in int8.summary() and "0/0" not in int8.summary() and int8.weak is None


def test_predict_zoo_name_warns_and_conf_is_checked(tmp_path, data_dir, caplog):
    photo = data_dir / "coco128" / "images" / "val2017" / "000000000139.jpg"
    r = runner.invoke(app, ["predict", "ssdlite_mnv3_small_320", str(photo), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "ssdlite_mnv3_small_320 is a zoo name without weights" in caplog.text
    # .txt lists of images: tests/test_predict_sources.py
    r = runner.invoke(app, ["predict", "ssdlite_mnv3_small_320", str(photo), "--conf", "1.5"])
    assert r.exit_code == 2 and "--conf" in r.output


def test_small_surface_fixes():
    from pocketdet import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"pocketdet {__version__}"
    val_help = runner.invoke(app, ["val", "--help"], terminal_width=200).output
    assert "images per forward pass" in val_help and "data loader workers" in val_help and "auto" in val_help
    assert "spec 5.2" not in runner.invoke(app, ["distill", "--help"], terminal_width=200).output
    import inspect

    from pocketdet import cli
    assert inspect.signature(cli.val).parameters["device"].default.default == "auto"
    assert inspect.signature(cli.train).parameters["device"].default.default == "auto"


def test_crowd_regions_message_does_not_talk_about_training(tiny_coco, caplog):
    import json

    from pocketdet.data import CocoDetection

    img_dir, ann_file, ann = tiny_coco
    ann["annotations"][0]["iscrowd"] = 1
    ann_file.write_text(json.dumps(ann))
    CocoDetection(img_dir, ann_file)
    assert "1 crowd regions (iscrowd=1)" in caplog.text and "training" not in caplog.text


def test_qat_log_names_the_recipe_not_quant_layers(tmp_path, tiny_coco, monkeypatch, caplog):
    import logging

    from pocketdet.compress import quant

    monkeypatch.setattr(quant, "qat_finetune", lambda model, *a, **k: model)
    monkeypatch.setattr(quant, "qat_to_onnx", lambda *a, **k: b"onnx")
    with caplog.at_level(logging.INFO):
        summary = quant.quantize_checkpoint("ssdlite_mnv3_small_320", "qat", _yaml(tmp_path, tiny_coco),
                                            tmp_path / "q.pt", calib_images=1)
    assert summary["not_quant"] == ["res_conv1", "se_block"]
    assert "not-quant ['res_conv1', 'se_block']" in caplog.text and "not-quant none" not in caplog.text


def test_export_of_a_trained_model_compares_its_detections(tmp_path, fitted_ckpt, fitted_photos, caplog):
    """The counterpart of the random-weights case: on photos the fitted model detects on, most detections are
    compared one to one and the summary carries no warning."""
    r = runner.invoke(app, ["export", str(fitted_ckpt), "-o", str(tmp_path / "fit.onnx"),
                            "--image", str(fitted_photos[0]), "--image", str(fitted_photos[1])])
    assert r.exit_code == 0, r.output
    matched, total = map(int, re.search(r"detections (\d+)/(\d+) identical", r.output).groups())
    assert total > 0 and matched >= total / 2 and "WARNING" not in r.output, r.output
    assert "RANDOM weights" not in caplog.text
