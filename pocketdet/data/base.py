"""What both dataset formats share: image records, box sanitising with counted skips, image decoding."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from ..images import to_rgb_array
from .errors import DataError

log = logging.getLogger("pocketdet.data")


@dataclass
class ImageRecord:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xyxy pixels
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


class DetectionDataset(torch.utils.data.Dataset):
    """Records + decoding. Subclasses fill `self.records`, `self.class_names`, `self.skipped`."""

    def __init__(self):
        self.records: list[ImageRecord] = []
        self.class_names: list[str] = []
        self.skipped: Counter = Counter()  # what was dropped or changed on purpose -> count (logged)
        self.source = ""

    def __len__(self) -> int:
        return len(self.records)

    def check_not_empty(self) -> None:
        if not self.records:
            raise DataError(f"{self.source}: the dataset has no images")

    def report_skips(self) -> None:
        for reason, n in sorted(self.skipped.items()):
            log.warning("%s: %d %s", self.source, n, reason)

    def sanitize_box(self, box_xyxy, w: int, h: int, where: str):
        """Clip to the image; return None (and count it) for boxes that are degenerate or fully outside."""
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            self.skipped["degenerate boxes (zero/negative size) skipped"] += 1
            log.debug("degenerate box %s at %s", box_xyxy, where)
            return None
        cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
        if cx1 - cx0 < 1e-3 or cy1 - cy0 < 1e-3:
            self.skipped["boxes entirely outside their image skipped"] += 1
            return None
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            self.skipped["boxes clipped to their image"] += 1
        return [cx0, cy0, cx1, cy1]

    def load_image(self, i: int) -> torch.Tensor:
        rec = self.records[i]
        try:
            with Image.open(rec.path) as im:
                arr = to_rgb_array(im)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for truncated/garbage files
            raise DataError(f"cannot decode image {rec.path}: {e}") from e
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        if tuple(img.shape[-2:]) != (rec.height, rec.width):
            hint = ""
            if tuple(img.shape[-2:]) == (rec.width, rec.height):
                hint = (" (annotated in the EXIF-rotated view? pocketdet, like COCO, uses the pixels as stored: "
                        "EXIF orientation is not applied)")
            raise DataError(f"{rec.path}: image is {img.shape[-1]}x{img.shape[-2]} but the annotations say "
                            f"{rec.width}x{rec.height}{hint}")
        return img

    def __getitem__(self, i: int):
        rec = self.records[i]
        img = self.load_image(i)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(rec.boxes).float().reshape(-1, 4),
                                              format="XYXY", canvas_size=(rec.height, rec.width)),
            "labels": torch.from_numpy(rec.labels).long(),
            "image_id": rec.image_id,
        }
        return tv_tensors.Image(img), target

    def coco_gt(self) -> dict:
        """Ground truth as a COCO dict (category id = label + 1), for datasets without their own JSON."""
        images, anns = [], []
        for rec in self.records:
            images.append({"id": rec.image_id, "width": rec.width, "height": rec.height, "file_name": rec.path.name})
            for b, lab in zip(rec.boxes, rec.labels):
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append({"id": len(anns) + 1, "image_id": rec.image_id, "category_id": int(lab) + 1,
                             "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}

    def label_to_category_id(self, label: int) -> int:
        return label + 1


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding; clear error for unreadable files."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
