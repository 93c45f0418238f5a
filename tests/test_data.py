"""Datasets, the dataset YAML, augmentation, and every kind of bad input the issue lists."""
import json
import logging

import pytest
import torch

from pocketdet.data import CocoDetection, DataError, YoloDetection, build_dataset, load_dataset_yaml
from pocketdet.data.loader import SeededTransformDataset, StreamBatchSampler
from pocketdet.data.transforms import ssd_train_transforms


def test_coco_mapping_crowd_and_empty_images(data_dir):
    ds = CocoDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/annotations/instances_train2017.json")
    assert len(ds) == 128 and len(ds.class_names) == 80
    # COCO ids 1..90 -> contiguous 0..79 in id order
    assert ds.cat_to_label[1] == 0 and ds.cat_to_label[90] == 79 and ds.label_to_category_id(79) == 90
    assert sum(len(r.boxes) for r in ds.records) == 929  # 939 annotations minus 10 crowd (SOURCE.md)
    assert ds.skipped["crowd regions (iscrowd=1) not used as boxes to learn or match; COCO eval ignores "
                      "detections on them"] == 10
    empty = [r for r in ds.records if r.image_id in (250, 508)]
    assert len(empty) == 2 and all(len(r.boxes) == 0 for r in empty)
    img, t = ds[0]
    assert img.dtype == torch.uint8 and img.shape[0] == 3 and t["boxes"].shape[1] == 4


def test_yolo_labels_match_coco_json(data_dir):
    names = build_dataset(load_dataset_yaml(data_dir / "coco128.yaml"), "train").class_names
    yolo = YoloDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/object_detection/labels/train2017",
                         names)
    coco = CocoDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/annotations/instances_train2017.json")
    assert yolo.skipped["label files without an image ignored"] == 2  # 000000000656/659 are orphans
    assert yolo.skipped["images without a label file kept as background"] == 2
    y = {r.image_id: r for r in yolo.records}
    for r in coco.records[:40]:
        assert len(y[r.image_id].boxes) == len(r.boxes)
        if len(r.boxes):  # every COCO box has a YOLO box within 1 px (YOLO txt is rounded to 6 digits)
            d = torch.cdist(torch.from_numpy(r.boxes), torch.from_numpy(y[r.image_id].boxes), p=float("inf"))
            assert d.min(1).values.max() < 1.0


def test_dataset_yaml_both_formats(coco128_yaml, demo_yaml):
    spec = load_dataset_yaml(coco128_yaml)
    assert isinstance(build_dataset(spec, "train"), CocoDetection)
    assert isinstance(build_dataset(spec, "val"), YoloDetection)
    demo = load_dataset_yaml(demo_yaml)
    tr, va = build_dataset(demo, "train"), build_dataset(demo, "val")
    assert {r.image_id for r in tr.records}.isdisjoint({r.image_id for r in va.records})


# ---- bad input ----------------------------------------------------------------------------------------

def test_truncated_json_names_file(tiny_coco):
    img_dir, ann_file, _ = tiny_coco
    ann_file.write_text(ann_file.read_text()[:500])
    with pytest.raises(DataError, match=rf"invalid JSON in {ann_file}"):
        CocoDetection(img_dir, ann_file)


def test_missing_annotation_file(tiny_coco, tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDetection(tiny_coco[0], tmp_path / "nope.json")


def test_missing_image_file_named(tiny_coco):
    img_dir, ann_file, ann = tiny_coco
    victim = ann["images"][1]["file_name"]
    (img_dir / victim).unlink()
    with pytest.raises(DataError, match=victim):
        CocoDetection(img_dir, ann_file)


def test_annotation_pointing_to_missing_image(tiny_coco):
    img_dir, ann_file, ann = tiny_coco
    ann["annotations"][0]["image_id"] = 987654321
    ann_file.write_text(json.dumps(ann))
    with pytest.raises(DataError, match="image_id 987654321 is not in 'images'"):
        CocoDetection(img_dir, ann_file)


def test_unknown_category(tiny_coco):
    img_dir, ann_file, ann = tiny_coco
    ann["annotations"][0]["category_id"] = 1234
    ann_file.write_text(json.dumps(ann))
    with pytest.raises(DataError, match="unknown category_id 1234"):
        CocoDetection(img_dir, ann_file)


def test_degenerate_and_outside_boxes_are_counted_skips(tiny_coco, caplog):
    img_dir, ann_file, ann = tiny_coco
    im = ann["images"][0]
    n_before = sum(1 for a in ann["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd"))
    base = dict(image_id=im["id"], category_id=1, iscrowd=0, area=1.0)
    ann["annotations"] += [
        {**base, "id": 900001, "bbox": [10, 10, 0, 5]},                      # zero width
        {**base, "id": 900002, "bbox": [10, 10, -4, 5]},                     # negative width
        {**base, "id": 900003, "bbox": [im["width"] + 5, 10, 20, 20]},       # entirely outside
        {**base, "id": 900004, "bbox": [im["width"] - 10, 10, 50, 20]},      # partly outside: clipped
    ]
    ann_file.write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING, logger="pocketdet.data"):
        ds = CocoDetection(img_dir, ann_file)
    assert ds.skipped["degenerate boxes (zero/negative size) skipped"] == 2
    assert ds.skipped["boxes entirely outside their image skipped"] == 1
    assert ds.skipped["boxes clipped to their image"] == 1
    rec = next(r for r in ds.records if r.image_id == im["id"])
    assert len(rec.boxes) == n_before + 1 and rec.boxes[:, 2].max() <= im["width"]
    assert "degenerate" in caplog.text and str(ann_file) in caplog.text


def test_empty_dataset(tiny_coco):
    img_dir, ann_file, ann = tiny_coco
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": ann["categories"]}))
    with pytest.raises(DataError, match="no images"):
        CocoDetection(img_dir, ann_file)


def test_corrupt_image_is_named_and_skipped_in_training(tiny_coco, caplog):
    img_dir, ann_file, ann = tiny_coco
    victim = img_dir / ann["images"][0]["file_name"]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = CocoDetection(img_dir, ann_file)
    with pytest.raises(DataError, match=victim.name):
        ds[0]
    wrapped = SeededTransformDataset(ds, None)
    with caplog.at_level(logging.WARNING, logger="pocketdet.data"):
        img, t = wrapped[(0, 0)]  # replaced by the next image, with a warning naming the file
    assert t["image_id"] == ds.records[1].image_id and victim.name in caplog.text


def test_yolo_bad_lines(tmp_path, data_dir):
    import shutil

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    src = sorted((data_dir / "coco128/images/val2017").glob("*.jpg"))[0]
    shutil.copy(src, tmp_path / "images" / src.name)
    lab = tmp_path / "labels" / f"{src.stem}.txt"
    lab.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=rf"{lab.name}:2: expected 'class cx cy w h'"):
        YoloDetection(tmp_path / "images", tmp_path / "labels", ["a", "b"])
    lab.write_text("5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=rf"{lab.name}:1: unknown class id 5"):
        YoloDetection(tmp_path / "images", tmp_path / "labels", ["a", "b"])
    lab.write_text("1 0.5 0.5 0.0 0.2\n0 0.5 0.5 0.2 0.2\n")
    ds = YoloDetection(tmp_path / "images", tmp_path / "labels", ["a", "b"])
    assert len(ds.records[0].boxes) == 1 and ds.skipped["degenerate boxes (zero/negative size) skipped"] == 1


def test_dataset_yaml_errors(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text("path: .\ntrain: images\nvall: images\n")
    with pytest.raises(DataError, match=r"d\.yaml: unknown key 'vall' \(allowed: path, names, train, val"):
        load_dataset_yaml(bad)
    bad.write_text("train: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML"):
        load_dataset_yaml(bad)
    with pytest.raises(DataError, match="not found"):
        load_dataset_yaml(tmp_path / "missing.yaml")


def test_undecoded_photos_fail_like_decoded_ones(tiny_coco, caplog):
    """PhotoFiles items are decoded inside the ssd transform: a corrupt file is still named and skipped in
    training, and a photo whose pixels disagree with the annotated size is still an error naming it."""
    from pocketdet.data.base import PhotoFiles

    img_dir, ann_file, ann = tiny_coco
    victim = img_dir / ann["images"][0]["file_name"]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    files = PhotoFiles(CocoDetection(img_dir, ann_file))
    wrapped = SeededTransformDataset(files, ssd_train_transforms(320))
    with caplog.at_level(logging.WARNING, logger="pocketdet.data"):
        img, t = wrapped[(0, 0)]
    assert t["image_id"] == files.base.records[1].image_id and victim.name in caplog.text
    assert img.shape == (3, 320, 320)
    ann["images"][1]["width"] += 1
    ann_file.write_text(json.dumps(ann))
    photo, _ = PhotoFiles(CocoDetection(img_dir, ann_file))[1]
    with pytest.raises(DataError, match=f"{photo.path.name}: image is .* but the annotations say"):
        photo.decode(2)



# ---- augmentation and sampling ------------------------------------------------------------------------

def test_ssd_transforms_keep_boxes_valid_and_are_seeded(data_dir):
    ds = CocoDetection(data_dir / "coco128/images/train2017", data_dir / "coco128/annotations/instances_train2017.json")
    aug = SeededTransformDataset(ds, ssd_train_transforms(320), seed=3)
    for pos in range(12):
        img, t = aug[(pos, pos % len(ds))]
        assert img.shape == (3, 320, 320)
        b = t["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b.min() >= 0 and b.max() <= 320
        assert len(t["labels"]) == len(b)
    a1, t1 = aug[(5, 7)]
    a2, t2 = aug[(5, 7)]
    assert torch.equal(a1, a2) and torch.equal(t1["boxes"], t2["boxes"])


def test_stream_sampler_shards_the_global_batch():
    one = StreamBatchSampler(10, 4, seed=1)
    r0 = StreamBatchSampler(10, 2, seed=1, rank=0, world_size=2)
    r1 = StreamBatchSampler(10, 2, seed=1, rank=1, world_size=2)
    for it in range(7):
        assert one.batch(it) == r0.batch(it) + r1.batch(it)
    # every image appears once per epoch
    stream = [i for it in range(5) for _, i in one.batch(it)]  # 20 draws = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert list(StreamBatchSampler(10, 4, seed=1, start_iter=3, max_iters=5)) == [one.batch(3), one.batch(4)]


def test_fast_ssd_handles_tiny_and_boxless_photos():
    """Photos of a few pixels or very elongated (no crop fits: no crop, as the reference) and without boxes."""
    from torchvision import tv_tensors

    aug = ssd_train_transforms(320)
    for h, w, boxes in [(1, 1, [[0.0, 0.0, 1.0, 1.0]]), (2, 3, [[0.0, 0.0, 3.0, 2.0]]), (40, 60, []),
                        (20, 4000, [[10.0, 2.0, 300.0, 18.0]])]:  # a panorama no crop's aspect fits
        img = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4), format="XYXY",
                                                    canvas_size=(h, w)),
                  "labels": torch.zeros(len(boxes), dtype=torch.long), "image_id": 1}
        for seed in range(6):
            torch.manual_seed(seed)
            out, t = aug(img, target)
            assert out.shape == (3, 320, 320) and out.dtype == torch.uint8
            assert len(t["boxes"]) == len(t["labels"]) <= len(boxes)


@pytest.fixture(scope="module")
def coco128_train(data_dir):
    root = data_dir / "coco128"
    return CocoDetection(root / "images/train2017", root / "annotations/instances_train2017.json")


def test_device_ssd_path_matches_the_cpu_pipeline(coco128_train):
    """The batched (GPU) path run on CPU tensors: same boxes as the CPU pipeline for the same seeds (the
    workers draw the same parameters), pixels within a few grey levels (roi_align's box filter vs PIL's
    triangle filter when shrinking)."""
    from pocketdet.data import gpu_aug

    hooks = gpu_aug.train_hooks(320)
    encoded = SeededTransformDataset(hooks["dataset_wrapper"](coco128_train), hooks["transform"], seed=5)
    cpu = SeededTransformDataset(coco128_train, ssd_train_transforms(320), seed=5)
    keys = [(pos, pos * 7 % len(coco128_train)) for pos in (0, 3, 5, 12)]
    images, targets = hooks["batch_transform"](*hooks["collate_fn"]([encoded[k] for k in keys]), "cpu")
    assert images.shape == (4, 3, 320, 320) and images.dtype == torch.float32
    diffs = []
    for img, t, key in zip(images, targets, keys):
        ref_img, ref_t = cpu[key]
        assert torch.equal(t["boxes"], ref_t["boxes"].as_subclass(torch.Tensor))
        assert torch.equal(t["labels"], ref_t["labels"]) and t["image_id"] == ref_t["image_id"]
        diffs.append(float((img * 255 - ref_img.float()).abs().mean()))
    assert max(diffs) < 6 and sum(diffs) / len(diffs) < 3, diffs


def test_device_augmentation_plugs_into_the_training_loop(tiny_coco, tmp_path):
    from pocketdet.config import apply_overrides, load_config
    from pocketdet.data import gpu_aug
    from pocketdet.engine.trainer import TrainOptions, train

    img_dir, ann_file, _ = tiny_coco
    cfg = apply_overrides(load_config("ssdlite_mnv3_small_320"),
                          ["train.schedule.max_iters=1", "train.schedule.warmup_iters=1", "train.batch_size=2",
                           "train.num_workers=0", "train.checkpoint_interval=1"])
    seen = []
    hooks = gpu_aug.train_hooks(320)
    device_aug = hooks["batch_transform"]
    hooks["batch_transform"] = lambda images, targets, device: seen.append(1) or device_aug(images, targets, device)
    result = train(cfg, CocoDetection(img_dir, ann_file), TrainOptions(out_dir=tmp_path, progress=False, **hooks))
    assert result["last"].exists() and len(seen) == 1
