"""Fine-tuning to the user's classes: the whole detector initialised from a trained one, class layers rebuilt
row by row (names mapped, background/box/objectness rows kept, other rows the family's standard init)."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from typer.testing import CliRunner

import pocketdet
from pocketdet.api import build
from pocketdet.cli import app
from pocketdet.config import load_config
from pocketdet.convert.paddle import paddle_static_arrays
from pocketdet.convert.paddle_io import write_pdparams
from pocketdet.checkpoint import CheckpointError, save_atomic
from pocketdet.init_weights import class_rows, init_from_model
from pocketdet.models import build_model

NEW = ["dog", "widget", "person"]  # two COCO names (COCO index 16 and 0) and one unknown


def source_model(name: str):
    torch.manual_seed(1)
    m = build(name).eval()
    with torch.no_grad():  # distinct values everywhere: a copied row cannot equal a fresh one by chance
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def fresh_target(name: str, classes=NEW, seed: int = 2):
    torch.manual_seed(seed)
    return build_model(load_config(name).model, class_names=list(classes)).eval()


def blocks(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t.reshape(groups, -1, *t.shape[1:])  # [groups, fixed + classes, ...]


@pytest.mark.parametrize("name,fixed", [("ssdlite_mnv3_small_320", 1), ("yolov3_mnv3_large_320", 5),
                                        ("cascade_rcnn_mnv3_large_fpn_320", 1), ("picodet_xs_320", 0)])
def test_class_rows_are_mapped_by_name_per_family(name, fixed):
    src = source_model(name)
    tgt = fresh_target(name)
    fresh = {k: v.clone() for k, v in tgt.state_dict().items()}
    report = init_from_model(tgt, src, "coco.pt")
    layouts = class_rows(tgt)
    assert layouts and all(r.fixed == fixed for r in layouts.values())
    assert report.mapped == {"dog": 16, "person": 0} and report.reinitialised == ["widget"]
    assert sorted(report.rebuilt) == sorted(layouts)
    s_sd, t_sd = src.state_dict(), tgt.state_dict()
    for k, v in t_sd.items():
        if k not in layouts:
            assert torch.equal(v, s_sd[k]), k  # everything class-independent is loaded as is
            continue
        g = layouts[k].groups
        t, s, f = blocks(v, g), blocks(s_sd[k], g), blocks(fresh[k], g)
        assert t.shape[1] == fixed + 3 and s.shape[1] == fixed + 80
        assert torch.equal(t[:, :fixed], s[:, :fixed]), k              # background / box + objectness rows
        assert torch.equal(t[:, fixed + 0], s[:, fixed + 16]), k       # dog <- COCO dog
        assert torch.equal(t[:, fixed + 2], s[:, fixed + 0]), k        # person <- COCO person
        assert torch.equal(t[:, fixed + 1], f[:, fixed + 1]), k        # widget: the family's standard init
        assert not torch.equal(t[:, fixed + 1], s[:, fixed + 1]), k


def test_yolo_outputs_of_mapped_classes_equal_the_trained_model():
    """End to end through the network: the new model's person / dog logits are the trained model's."""
    src = source_model("yolov3_mnv3_large_320")
    tgt = fresh_target("yolov3_mnv3_large_320")
    init_from_model(tgt, src, "coco.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(tgt.forward_raw(x), src.forward_raw(x)):
            a, b = blocks(a[0], 3), blocks(b[0], 3)  # [anchors, 5 + C, H, W]
            scale = b.abs().max()  # other channel counts pick other conv kernels: float rounding differs
            for got, want in ((a[:, :5], b[:, :5]), (a[:, 5 + 2], b[:, 5 + 0]), (a[:, 5 + 0], b[:, 5 + 16])):
                torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=1e-5)


def test_picodet_scores_of_mapped_classes_equal_the_trained_model():
    """PicoDet: sigmoid classes (no background row), a class-free align head and box distributions. Through the
    network, the new model's dog / person probabilities and its boxes are the trained model's; the new class
    keeps the prior-probability init (score sqrt(0.01 * align) before training)."""
    src = source_model("picodet_xs_320")
    tgt = fresh_target("picodet_xs_320")
    report = init_from_model(tgt, src, "coco.pt")
    assert sorted(report.rebuilt) == sorted(f"head.head_cls_list.{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        (s_new, b_new), (s_src, b_src) = tgt.forward_raw(x), src.forward_raw(x)
    assert s_new.shape[-1] == 3 and s_src.shape[-1] == 80
    torch.testing.assert_close(b_new, b_src, rtol=0, atol=1e-4)  # class-free: the same boxes
    torch.testing.assert_close(s_new[..., 0], s_src[..., 16], rtol=0, atol=1e-5)  # dog <- COCO dog
    torch.testing.assert_close(s_new[..., 2], s_src[..., 0], rtol=0, atol=1e-5)   # person <- COCO person
    assert not torch.allclose(s_new[..., 1], s_src[..., 1], atol=1e-3)          # widget: fresh


def test_without_name_mapping_every_class_row_is_fresh():
    src, tgt = source_model("ssdlite_mnv3_small_320"), fresh_target("ssdlite_mnv3_small_320")
    key = "ssd_head.scores0.pw_conv.weight"
    fresh, g = tgt.state_dict()[key].clone(), class_rows(tgt)[key].groups
    report = init_from_model(tgt, src, "coco.pt", map_names=False)
    assert report.mapped == {} and report.reinitialised == NEW
    t, f, s = blocks(tgt.state_dict()[key], g), blocks(fresh, g), blocks(src.state_dict()[key], g)
    assert torch.equal(t[:, 1:], f[:, 1:]) and torch.equal(t[:, :1], s[:, :1])


def test_same_classes_load_everything_and_misfits_are_one_clear_error():
    src = source_model("ssdlite_mnv3_small_320")
    tgt = fresh_target("ssdlite_mnv3_small_320", src.class_names)
    report = init_from_model(tgt, src, "coco.pt")
    assert not report.rebuilt and all(torch.equal(v, src.state_dict()[k]) for k, v in tgt.state_dict().items())
    full = fresh_target("yolov3_mnv3_large_320")
    with pytest.raises(CheckpointError, match=r"big.pt: holds a ssdlite model; cannot initialise a yolov3"):
        init_from_model(full, src, "big.pt")
    pruned = build_model({**load_config("yolov3_mnv3_large_320").model,
                          "block_widths": [[128, 256, 128, 256, 128, 256], [64, 128, 64, 128, 64, 128],
                                           [16, 32, 16, 32, 16, 32]]}, class_names=NEW)
    with pytest.raises(CheckpointError) as e:
        init_from_model(pruned, full, "full.pt")
    msg = str(e.value)
    assert "\n" not in msg and "shape mismatch" in msg and "only the classes may differ" in msg


def test_build_with_weights_and_other_classes(tmp_path):
    src = source_model("ssdlite_mnv3_small_320")
    ck = tmp_path / "coco.pt"
    save_atomic({"model": src.state_dict(), "config": src.zoo_config.model_dump(),
                 "class_names": list(src.class_names)}, ck)
    m = build("ssdlite_mnv3_small_320", class_names=["person", "gadget"], weights=ck)
    assert m.class_names == ["person", "gadget"] and not m.training
    key = "ssd_head.scores1.pw_conv.weight"
    g = class_rows(m)[key].groups
    assert torch.equal(blocks(m.state_dict()[key], g)[:, 1], blocks(src.state_dict()[key], g)[:, 1])  # person


def subset_yaml(tmp_path, data_dir, keep=("person", "dog"), rename=None, n_images=4):
    """A COCO-format dataset of real coco128 photos restricted to `keep` classes (optionally renamed)."""
    src = json.loads((data_dir / "coco128/annotations/instances_train2017.json").read_text())
    cats = [c for c in src["categories"] if c["name"] in keep]
    ids = {c["id"] for c in cats}
    anns = [a for a in src["annotations"] if a["category_id"] in ids]
    images = [im for im in src["images"] if im["id"] in {a["image_id"] for a in anns}][:n_images]
    keep_ids = {im["id"] for im in images}
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in images:
        shutil.copy(data_dir / "coco128/images/train2017" / im["file_name"], img_dir / im["file_name"])
    for c in cats:
        c["name"] = (rename or {}).get(c["name"], c["name"])
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "categories": cats,
                                                   "annotations": [a for a in anns if a["image_id"] in keep_ids]}))
    y = tmp_path / "d.yaml"
    y.write_text(f"train: {{images: {img_dir}, annotations: {tmp_path / 'ann.json'}}}\n")
    return y


def test_cli_train_weights_pdparams_logs_mapping(tmp_path, data_dir, caplog):
    """`train NAME --weights FILE.pdparams` on a person + 'pet' (renamed dog) dataset: runs, logs the mapping."""
    src = source_model("ssdlite_mnv3_small_320")
    pd = write_pdparams(paddle_static_arrays(src), tmp_path / "coco_ssdlite.pdparams")
    data = subset_yaml(tmp_path, data_dir, rename={"dog": "pet"})
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="pocketdet"):
        r = CliRunner().invoke(app, ["train", "ssdlite_mnv3_small_320", "--data", str(data), "--weights", str(pd),
                                     "--out", str(out), "--iters", "1", "--batch-size", "2", "--workers", "0",
                                     "--no-eval", "--set", "train.augment=none"])
    assert r.exit_code == 0, r.output
    log = caplog.text
    assert "classes mapped by name (trained rows copied): person <- #0" in log
    assert "classes re-initialised (standard init): pet" in log
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["class_names"] == ["person", "pet"]


def test_cli_train_weights_errors(tmp_path, data_dir):
    data = subset_yaml(tmp_path, data_dir)
    r = CliRunner().invoke(app, ["train", "yolov3_mnv3_large_320", "--data", str(data), "--weights",
                                 str(tmp_path / "nope.pdparams"), "--iters", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "nope.pdparams: no such weight file" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["train", "yolov3_mnv3_large_320", "--data", str(data), "--weights", "coco",
                                 "--pretrained", "x.pdparams", "--iters", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "drop --pretrained" in r.output
    ssd = source_model("ssdlite_mnv3_small_320")
    ck = tmp_path / "ssd.pt"
    save_atomic({"model": ssd.state_dict(), "config": ssd.zoo_config.model_dump(),
                 "class_names": list(ssd.class_names)}, ck)
    r = CliRunner().invoke(app, ["train", "yolov3_mnv3_large_320", "--data", str(data), "--weights", str(ck),
                                 "--iters", "1", "--out", str(tmp_path / "r"), "--workers", "0"])
    assert r.exit_code == 2 and "holds a ssdlite model" in r.output, r.output


def mapped_and_unmapped_ap50(model_name: str, ckpt, tmp_path, data_dir) -> tuple[float, float]:
    """A fitted 80-class checkpoint (8 real photos, instances.json beside it) projected onto [giraffe, person,
    widget]: AP50 on those photos with the class rows mapped by name, and with them re-initialised."""
    from pocketdet.data.coco import CocoDetection
    from pocketdet.engine.evaluate import evaluate

    d = json.loads((ckpt.parent / "instances.json").read_text())
    cats = [c for c in d["categories"] if c["name"] in ("giraffe", "person")]
    cats.append({"id": 999, "name": "widget", "supercategory": "none"})  # a new class: no boxes on these photos
    ids = {c["id"] for c in cats}
    (tmp_path / "sub.json").write_text(json.dumps({"images": d["images"], "categories": cats, "annotations": [
        a for a in d["annotations"] if a["category_id"] in ids]}))
    names = ["giraffe", "person", "widget"]
    ds = CocoDetection(data_dir / "coco128/images/train2017", tmp_path / "sub.json", names)
    mapped = build(model_name, class_names=names, weights=ckpt)
    fitted = pocketdet.load(ckpt)
    unmapped = build_model(fitted.zoo_config.model, class_names=names)
    init_from_model(unmapped, fitted, str(ckpt), map_names=False)
    return evaluate(mapped, ds, progress=False)["AP50"], evaluate(unmapped.eval(), ds, progress=False)["AP50"]


def test_mapped_rows_keep_detecting_on_real_photos(fitted_ckpt, tmp_path, data_dir):
    """The committed fitted SSDLite (80 COCO classes, 8 real photos) projected onto [giraffe, person, widget]:
    with name mapping it still finds the giraffes and persons (AP50 high, no training); with the class rows
    re-initialised it does not. Inference only: no CPU-dependent training."""
    ap_mapped, ap_unmapped = mapped_and_unmapped_ap50("ssdlite_mnv3_small_320", fitted_ckpt, tmp_path, data_dir)
    assert ap_mapped >= 0.7 and ap_unmapped <= 0.4, (ap_mapped, ap_unmapped)  # measured 0.88 / 0.17


def test_picodet_mapped_rows_keep_detecting_on_real_photos(tmp_path, data_dir):
    """The same with the committed fitted PicoDet-XS (tools/make_picodet_fit_fixture.py, same 8 photos). Without
    the mapping it still finds some objects: the class-free align head scores the objects' places, and every
    fresh class row gives the same prior probability there (measured AP50 1.0 mapped / 0.37 not)."""
    ckpt = data_dir.parent / "tests" / "fixtures" / "fitted" / "picodet_xs_fit.pt"
    ap_mapped, ap_unmapped = mapped_and_unmapped_ap50("picodet_xs_320", ckpt, tmp_path, data_dir)
    assert ap_mapped >= 0.8 and ap_unmapped <= ap_mapped - 0.3, (ap_mapped, ap_unmapped)
