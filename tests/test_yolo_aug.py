"""YOLOv3 training augmentation (spec §4.5): mixup, Paddle's ColorDistort, IoU crop, batch resize."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pocketdet.data.yolo_aug import (INTERPOLATIONS, ColorDistort, MixupDataset, PaddleIoUCrop, RandomShapeCollate,
                                     build_yolo_transforms, mixup_pair, resize_sample, with_scores,
                                     yolo_reference_transforms)
from pocketdet.data.yolo_window import Window, resize_window

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT / "data" / "coco128"


def sample(h=100, w=120, boxes=((10.0, 10.0, 50.0, 60.0), (60.0, 20.0, 110.0, 90.0)), labels=(1, 2), fill=None):
    img = torch.full((3, h, w), fill, dtype=torch.uint8) if fill is not None else \
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return tv_tensors.Image(img), {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)),
                                   "labels": torch.tensor(labels, dtype=torch.long), "image_id": 7}


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def real_samples(n=3):
    data = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    out = []
    for im in data["images"][:n]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        arr = np.asarray(Image.open(COCO128 / "images" / "train2017" / im["file_name"]).convert("RGB"))
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        out.append((tv_tensors.Image(torch.from_numpy(arr.copy()).permute(2, 0, 1)),
                    {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=arr.shape[:2]),
                     "labels": torch.arange(len(anns)), "image_id": im["id"]}))
    return out


def test_mixup_pair_blends_on_max_canvas_with_scores():
    a, ta = sample(100, 120, fill=200)
    b, tb = sample(80, 150, boxes=((1.0, 2.0, 30.0, 40.0),), labels=(5,), fill=100)
    img, t = mixup_pair(a, ta, b, tb, 0.25)
    assert img.shape == (3, 100, 150) and img.dtype == torch.uint8
    assert img[0, 0, 0].item() == round(200 * 0.25 + 100 * 0.75)   # both images
    assert img[0, 90, 10].item() == round(200 * 0.25)              # only the taller one
    assert img[0, 10, 140].item() == round(100 * 0.75)             # only the wider one
    assert t["labels"].tolist() == [1, 2, 5]
    torch.testing.assert_close(t["scores"], torch.tensor([0.25, 0.25, 0.75]))
    assert t["boxes"].canvas_size == (100, 150) and t["image_id"] == 7


def test_mixup_dataset_position_switch_and_flag():
    ds = MixupDataset(ListDataset([sample(fill=10), sample(fill=250)]), until_position=16)
    torch.manual_seed(0)
    img, t = ds[(15, 0)]                      # before the switch: mixed (4 boxes, scores < 1)
    assert len(t["boxes"]) == 4 and (t["scores"] < 1).all()
    img, t = ds[(16, 0)]                      # from the switch on: the sample itself, scores 1
    assert len(t["boxes"]) == 2 and t["scores"].tolist() == [1.0, 1.0] and img.max().item() == 10
    ds2 = MixupDataset(ListDataset([sample(), sample()]), until_iter=5)
    ds2.on_iteration(5)
    assert ds2[0][1]["scores"].tolist() == [1.0, 1.0]


def test_color_distort_ops_follow_paddle():
    img = torch.rand(3, 8, 8) * 255
    torch.testing.assert_close(ColorDistort._hue(img, 0.0), img, atol=1.0, rtol=0)  # YIQ round trip
    gray = img[:1].expand(3, -1, -1)
    torch.testing.assert_close(ColorDistort._saturation(gray, 0.3), gray, atol=1e-3, rtol=0)
    torch.testing.assert_close(ColorDistort._contrast(img, 1.5), img * 1.5)  # Paddle: no mean centring
    torch.testing.assert_close(ColorDistort._brightness(img, 1.2), img + 1.2)  # Paddle: additive delta
    t = ColorDistort(p=1.0)
    orders = set()
    for s in range(20):
        torch.manual_seed(s)
        ops = t.make_params([])["ops"]
        assert len(ops) == 4 and -18 <= dict(ops)["hue"] <= 18 and 0.5 <= dict(ops)["contrast"] <= 1.5
        orders.add(tuple(n for n, _ in ops))
    assert len(orders) > 3  # random order


def _paddle_crop_loop(crop, h, w, boxes):
    """Paddle's crop search attempt by attempt (as yolo_aug had it), on the same random numbers as the
    vectorised version: per threshold, attempt i uses row i of one rand(num_attempts, 4) draw."""
    from torchvision.ops import box_iou

    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for i in torch.randperm(len(crop.thresholds)).tolist():
        thresh = crop.thresholds[i]
        if thresh is None:
            return {}
        u = torch.rand(crop.num_attempts, 4, dtype=torch.float64).tolist()
        for u0, u1, u2, u3 in u:
            scale = crop.scaling[0] + (crop.scaling[1] - crop.scaling[0]) * u0
            lo, hi = max(crop.aspect_ratio[0], scale ** 2), min(crop.aspect_ratio[1], scale ** -2)
            ar = lo + (hi - lo) * u1
            ch, cw = int(h * scale / ar ** 0.5), int(w * scale * ar ** 0.5)
            if ch < 1 or cw < 1:
                continue
            top, left = int(u2 * max(h - ch, 1)), int(u3 * max(w - cw, 1))
            box = torch.tensor([[left, top, left + cw, top + ch]], dtype=boxes.dtype)
            if box_iou(boxes, box).max() < thresh:
                continue
            inside = ((centres >= box[0, :2]) & (centres < box[0, 2:])).all(1)
            clipped = torch.cat([boxes[:, :2].maximum(box[0, :2]), boxes[:, 2:].minimum(box[0, 2:])], 1)
            inside &= (clipped[:, :2] < clipped[:, 2:]).all(1)
            if inside.any():
                return dict(top=top, left=left, height=ch, width=cw, is_within_crop_area=inside)
    return {}


def test_vectorised_iou_crop_takes_the_attempt_the_loop_takes():
    crop = PaddleIoUCrop()
    found = 0
    for s in range(40):
        img, t = sample(90 + s, 160 - s, boxes=[[5.0 + s, 8.0, 40.0 + s, 50.0], [60.0, 30.0, 70.0, 38.0]])
        torch.manual_seed(s)
        got = crop.make_params([img, t["boxes"]])
        torch.manual_seed(s)
        want = _paddle_crop_loop(crop, img.shape[-2], img.shape[-1], t["boxes"].as_subclass(torch.Tensor).float())
        assert got.keys() == want.keys()
        if want:
            found += 1
            assert {k: v for k, v in got.items() if k != "is_within_crop_area"} == \
                {k: v for k, v in want.items() if k != "is_within_crop_area"}
            assert torch.equal(got["is_within_crop_area"], want["is_within_crop_area"])
    assert found > 20


def test_keep_first_boxes_keeps_bounding_boxes_type():
    """Photos with more than 50 GTs (coco128 has some) went on with plain tensors, and the sanitising step
    after it raised 'No bounding boxes were found'."""
    img, t = sample(100, 100, boxes=[[1.0, 1.0, 20.0, 20.0]] * 60, labels=[0] * 60)
    img, t = build_yolo_transforms()(img, with_scores(t, 1.0))
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and len(t["boxes"]) <= 50


def test_color_distort_composed_affine_equals_the_ops_in_order():
    img = torch.rand(3, 16, 16) * 255
    for s in range(6):
        torch.manual_seed(s)
        ops = ColorDistort(p=1.0).make_params([])["ops"]
        ref = img
        for name, delta in ops:
            ref = getattr(ColorDistort, f"_{name}")(ref, delta)
        mat, off = ColorDistort.composed(ops)
        torch.testing.assert_close(torch.einsum("dc,chw->dhw", mat, img) + off.view(3, 1, 1), ref,
                                   atol=1e-3, rtol=1e-5)


def test_iou_crop_keeps_centred_boxes_and_skips_empty_images():
    crop = PaddleIoUCrop()
    for s in range(30):
        torch.manual_seed(s)
        img, t = crop(*sample(200, 300))
        b = t["boxes"]
        assert b.canvas_size == tuple(img.shape[-2:])
        kept = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        assert kept.any()
        assert (b[kept, 0::2] <= img.shape[-1]).all() and (b[kept, 1::2] <= img.shape[-2]).all()
    img, t = sample(50, 60, boxes=(), labels=())
    out_img, out_t = crop(img, t)
    assert out_img.shape == img.shape and len(out_t["boxes"]) == 0


@pytest.mark.skipif(not COCO128.exists(), reason="data/coco128 not present")
def test_full_pipeline_on_real_images_gives_valid_batches():
    ds = MixupDataset(ListDataset(real_samples(3)))
    tf = build_yolo_transforms()
    collate = RandomShapeCollate()
    sizes = set()
    for s in range(6):
        torch.manual_seed(s)
        batch = [tf(*ds[i]) for i in range(3)]
        for img, t in batch:
            assert isinstance(img, Window) and img.pixels.dtype == torch.uint8
            assert len(t["boxes"]) == len(t["labels"]) == len(t["scores"]) <= 50
            b = t["boxes"]
            assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
            assert (b[:, 0::2] <= img.shape[-1]).all() and (b[:, 1::2] <= img.shape[-2]).all() and (b >= 0).all()
        x, targets = collate(batch)
        size = x.shape[-1]
        sizes.add(size)
        assert x.shape == (3, 3, size, size) and size in range(320, 609, 32)
        assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
        for (img, t), out in zip(batch, targets):
            h, w = img.shape[-2:]
            expect = t["boxes"].as_subclass(torch.Tensor) * torch.tensor([size / w, size / h] * 2)
            torch.testing.assert_close(out["boxes"], expect)
            assert "shape_draw" not in out
    assert len(sizes) > 1


@pytest.mark.skipif(not COCO128.exists(), reason="data/coco128 not present")
def test_window_pipeline_is_the_reference_without_its_canvas():
    """Same seeds: the windowed transform gives the reference's targets and, built, its image; every
    interpolation resizes the window as the collate resizes the reference's image (nearest exactly, bilinear
    within the uint8 grid step, the float filters within float rounding)."""
    ds = MixupDataset(ListDataset(real_samples(4)))
    new, ref = build_yolo_transforms(), yolo_reference_transforms()
    zoomed = 0
    for k in range(16):
        torch.manual_seed(k)
        image, target = ds[k % 4]
        torch.manual_seed(100 + k)
        win, t_new = new(image, target)
        torch.manual_seed(100 + k)
        img, t_ref = ref(image, target)
        assert torch.equal(win.materialise(), img.as_subclass(torch.Tensor))
        for key in ("boxes", "labels", "scores", "shape_draw"):
            assert torch.equal(t_new[key].as_subclass(torch.Tensor), t_ref[key].as_subclass(torch.Tensor)), key
        zoomed += win.mostly_fill()
        for (mode, antialias), size in zip(INTERPOLATIONS, (320, 416, 608, 352, 512)):
            expect = resize_sample(img, size, mode, antialias)
            got = resize_window(win, size, mode) if not antialias else resize_sample(win, size, mode, antialias)
            tol = {"nearest": 0.0, "bilinear": 1.001 / 255}.get(mode, 1e-4)
            assert (got - expect).abs().max() <= tol, (k, mode)
    assert zoomed >= 2  # some crops were mostly zoom-out fill: the path that never builds them ran


def test_collate_shape_follows_first_sample_draw():
    collate = RandomShapeCollate()
    img, t = sample()
    t0 = {**t, "shape_draw": torch.tensor([0.0, 0.0])}
    t1 = {**t, "shape_draw": torch.tensor([0.999, 0.5])}
    assert collate([(img, t0), (img, t1)])[0].shape[-1] == 320
    assert collate([(img, t1), (img, t0)])[0].shape[-1] == 608


def test_train_hooks_from_zoo_config():
    from pocketdet.config import ConfigError, apply_overrides, load_config
    from pocketdet.engine.family_hooks import yolo_hooks

    cfg = load_config("yolov3_mnv3_large_320")
    hooks = yolo_hooks(cfg)
    ds = hooks["dataset_wrapper"](ListDataset([sample(), sample()]))
    assert isinstance(ds, MixupDataset) and ds.until_position == cfg.train.extra["mixup_iters"] * cfg.train.batch_size
    assert isinstance(hooks["collate_fn"], RandomShapeCollate)
    with pytest.raises(ConfigError, match="mixup_iters"):
        yolo_hooks(apply_overrides(cfg, ["train.extra={mixup_iters: -1}"]))
