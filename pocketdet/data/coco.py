"""COCO instances JSON datasets."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .base import DetectionDataset, ImageRecord
from .errors import DataError

log = logging.getLogger("pocketdet.data")


def read_json(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON in {path}: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    return data


class CocoDetection(DetectionDataset):
    """Images dir + COCO instances JSON.

    Category ids map to contiguous labels 0..C-1 in category-id order (or by name onto `class_names` if given).
    Crowd annotations are excluded from training targets but stay in the JSON used for COCO eval, where they
    are 'ignore' regions as usual. Images without boxes are kept (they teach background).
    """

    def __init__(self, img_dir: str | Path, ann_file: str | Path, class_names: list[str] | None = None):
        super().__init__()
        self.img_dir, self.ann_file = Path(img_dir), Path(ann_file)
        self.source = str(self.ann_file)
        data = read_json(self.ann_file)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{self.ann_file}: missing or non-list '{key}'")
        self.gt = data
        cats = sorted(data["categories"], key=lambda c: c["id"])
        if class_names is None:
            self.class_names = [c["name"] for c in cats]
            self.cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
        else:
            self.class_names = list(class_names)
            index = {n: i for i, n in enumerate(self.class_names)}
            unknown = [c["name"] for c in cats if c["name"] not in index]
            if unknown:
                raise DataError(f"{self.ann_file}: categories {unknown} are not in the dataset's names")
            self.cat_to_label = {c["id"]: index[c["name"]] for c in cats}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self._build_records(data)
        self.check_not_empty()
        self.report_skips()

    def _build_records(self, data: dict) -> None:
        by_id: dict[int, ImageRecord] = {}
        boxes: dict[int, list] = {}
        for im in data["images"]:
            try:
                rec = ImageRecord(self.img_dir / im["file_name"], int(im["id"]), int(im["width"]), int(im["height"]))
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{self.ann_file}: malformed image entry {im!r}: {e}") from None
            by_id[rec.image_id] = rec
            boxes[rec.image_id] = []
        missing = [r.path for r in by_id.values() if not r.path.is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise DataError(f"{self.ann_file}: {len(missing)} image file(s) not found: "
                            f"{', '.join(map(str, missing[:3]))}{more}")
        for ann in data["annotations"]:
            where = f"{self.ann_file} annotation id {ann.get('id')}"
            img_id = ann.get("image_id")
            if img_id not in by_id:
                raise DataError(f"{where}: image_id {img_id} is not in 'images'")
            if ann.get("category_id") not in self.cat_to_label:
                raise DataError(f"{where}: unknown category_id {ann.get('category_id')}")
            if ann.get("iscrowd", 0):
                self.skipped["crowd regions (iscrowd=1) not used as boxes to learn or match; COCO eval ignores "
                             "detections on them"] += 1
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise DataError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            rec = by_id[img_id]
            x, y, w, h = bbox
            box = self.sanitize_box([x, y, x + w, y + h], rec.width, rec.height, where)
            if box is not None:
                boxes[img_id].append((box, self.cat_to_label[ann["category_id"]]))
        for img_id, rec in by_id.items():
            if boxes[img_id]:
                rec.boxes = np.array([b for b, _ in boxes[img_id]], np.float32)
                rec.labels = np.array([lab for _, lab in boxes[img_id]], np.int64)
        self.records = sorted(by_id.values(), key=lambda r: r.image_id)

    def coco_gt(self) -> dict:
        return self.gt

    def label_to_category_id(self, label: int) -> int:
        return self.label_to_cat[label]
