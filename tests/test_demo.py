"""`make demo`'s pieces working together, cheaply. The full demo (8 photos fitted to AP50 >= 0.8, minutes) is not
run here: the fit path runs with 2 photos and a 4-iteration cap, the `--weights coco` path with the committed
fitted model standing in for the download (no network in tests)."""
import json

import pytest
from PIL import Image

from pocketdet import api, demo
from pocketdet.deploy.runtime import Detector

SUMMARY_KEYS = {"model", "weights", "heldout_AP", "heldout_AP50", "onnx", "onnx_boxes_same", "onnx_agrees",
                "latency_ms_torch", "latency_ms_onnxruntime", "predictions", "stage_seconds", "total_seconds"}
CHEAP = ["--heldout", "2", "--latency-runs", "2", "--threads", "1"]  # 1 thread: the shared CI machine


def check_outputs(summary: dict, out, n_photos: int) -> None:
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len(summary["predictions"]) == n_photos
    for png in summary["predictions"]:
        assert Image.open(png).format == "PNG"
    assert Detector(summary["onnx"]).class_names == api.coco_class_names()
    assert summary["heldout_photos"] == 2 and 0.0 <= summary["heldout_AP"] <= 1.0
    assert summary["latency_ms_torch"] > 0 and summary["latency_ms_onnxruntime"] > 0


def test_fit_path_trains_in_segments_and_writes_everything(tmp_path, capsys):
    # a target no fit can reach: the loop must stop at the cap, evaluating after each 2-iteration segment
    s = demo.main(["--photos", "2", "--max-iters", "4", "--eval-every", "2", "--target-ap50", "1.01",
                   "--out", str(tmp_path), *CHEAP])
    assert SUMMARY_KEYS | {"train_AP50", "fit_iterations", "target_reached", "checkpoint"} <= s.keys()
    assert s["fit_iterations"] == 4 and s["target_reached"] is False
    assert set(s["stage_seconds"]) == {"fit", "draw", "export", "heldout"}
    check_outputs(s, tmp_path, 2)
    assert api.load(s["checkpoint"]).class_names == api.coco_class_names()
    printed = capsys.readouterr().out
    assert "iteration    2: training-photo AP50" in printed and "WARNING: the drawn boxes' training-photo AP50" in printed
    assert "held-out AP" in printed and ":coco" in printed  # the sentence on why it is low and what helps


def test_coco_weights_path_draws_and_onnx_gives_the_same_boxes(tmp_path, monkeypatch, fitted_ckpt, fitted_yaml):
    # the committed fitted model stands in for the download; its dataset YAML's val split is its own photos, so
    # the "held-out" stage draws real boxes and the torch/ONNX comparison is not vacuous
    fitted = api.load(fitted_ckpt)
    asked = []
    monkeypatch.setattr(api, "load", lambda spec, *a, **k: asked.append(spec) or fitted)
    s = demo.main(["--weights", "coco", "--data", str(fitted_yaml), "--out", str(tmp_path), *CHEAP])
    assert asked == ["ssdlite_mnv3_small_320:coco"]
    check_outputs(s, tmp_path, 2)
    same, total = map(int, s["onnx_boxes_same"].split("/"))
    assert total >= 2, "the fitted model should draw boxes on its own photos"
    assert same == total and s["onnx_agrees"] and s["max_box_diff_px"] <= 0.5
    assert s["heldout_AP50"] >= 0.5  # evaluated on photos it was fitted to: the AP wiring sees its boxes


def test_coco_weights_offline_is_one_line(tmp_path, monkeypatch):
    def offline(spec, *a, **k):
        raise OSError("https://example.invalid/ssdlite.pdparams: network unreachable\n(second line)")

    monkeypatch.setattr(api, "load", offline)
    with pytest.raises(SystemExit) as e:
        demo.main(["--weights", "coco", "--out", str(tmp_path), *CHEAP])
    msg = str(e.value)
    assert "\n" not in msg and "ssdlite_mnv3_small_320:coco" in msg and "network unreachable" in msg


def test_fit_stops_at_the_first_evaluation_that_reaches_the_target(tmp_path, demo_yaml):
    from pocketdet.data import build_dataset, load_dataset_yaml

    ds = build_dataset(load_dataset_yaml(demo_yaml), "train", api.coco_class_names())
    demo.pick_fit_photos(ds, 2)  # BatchNorm needs a batch of 2
    fit = demo.fit_until(demo.fit_config("ssdlite_mnv3_small_320", 2, 6), ds, tmp_path, 0.0, 2)
    assert fit["reached"] and fit["iterations"] == 2 and len(fit["history"]) == 1


def test_coco_weights_unreachable_server_is_one_line(tmp_path, monkeypatch):
    """The real `NAME:coco` path (pocketdet.hub) against a refused loopback port: one line naming the URL."""
    monkeypatch.setenv("POCKETDET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POCKETDET_MIRROR", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(SystemExit) as e:
        demo.main(["--weights", "coco", "--out", str(tmp_path), *CHEAP])
    msg = str(e.value)
    assert "\n" not in msg and "ssdlite_mnv3_small_320:coco" in msg and "127.0.0.1:9" in msg, msg
