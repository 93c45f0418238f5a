"""What both dataset formats share: image records, box sanitising with counted skips, image decoding.

Decoding can wait: `PhotoFiles(dataset)` yields `PhotoFile`s (path + annotated size) instead of pixels, so a
transform that knows which part of the photo it needs, at what resolution, draws its parameters from the size
first and then decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) where that still leaves more
pixels than its output needs (ssd_aug.FastSSDAugment)."""
from __future__ import annotations

import io
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
        image, _ = PhotoFile(rec.path, rec.width, rec.height).decode()
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    def target(self, i: int) -> dict:
        rec = self.records[i]
        return {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(rec.boxes).float().reshape(-1, 4),
                                              format="XYXY", canvas_size=(rec.height, rec.width)),
            "labels": torch.from_numpy(rec.labels).long(),
            "image_id": rec.image_id,
        }

    def __getitem__(self, i: int):
        return tv_tensors.Image(self.load_image(i)), self.target(i)

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


@dataclass(frozen=True)
class PhotoFile:
    """An image file not decoded yet, with its size from the annotations (checked against the file's header
    when it is decoded)."""
    path: Path
    width: int
    height: int

    def decode(self, reduce: int = 1) -> tuple[Image.Image, int]:
        """(RGB PIL image, reduction actually applied). `reduce` (1, 2, 4 or 8) asks libjpeg to decode a JPEG
        at 1/reduce of its size, ceil(width / reduce) x ceil(height / reduce) (pixel i covers the photo's
        pixels [i * reduce, (i + 1) * reduce)); other formats decode in full (reduction 1)."""
        try:
            # one read of the whole file: PIL parses the markers from memory (~6% of the decode from a path)
            with Image.open(io.BytesIO(self.path.read_bytes())) as im:
                self.check_size(im.size)
                applied = 1
                if reduce > 1 and im.format == "JPEG":
                    drafted = im.draft("RGB" if im.mode == "RGB" else None,
                                       (max(self.width // reduce, 1), max(self.height // reduce, 1)))
                    applied = round(self.width / drafted[1][2]) if drafted else 1
                if im.mode != "RGB":
                    return Image.fromarray(to_rgb_array(im)), applied
                im.load()  # leaving `with` closes the file; the decoded pixels stay
                return im, applied
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for truncated/garbage files
            raise DataError(f"cannot decode image {self.path}: {e}") from e

    def check_size(self, size: tuple[int, int]) -> None:
        if tuple(size) != (self.width, self.height):
            hint = ""
            if tuple(size) == (self.height, self.width):
                hint = (" (annotated in the EXIF-rotated view? pocketdet, like COCO, uses the pixels as stored: "
                        "EXIF orientation is not applied)")
            raise DataError(f"{self.path}: image is {size[0]}x{size[1]} but the annotations say "
                            f"{self.width}x{self.height}{hint}")


class PhotoFiles(torch.utils.data.Dataset):
    """A detection dataset whose items are (PhotoFile, target) instead of (pixels, target): the transform
    decodes (see PhotoFile.decode)."""

    def __init__(self, base: DetectionDataset):
        self.base = base
        self.records, self.class_names = base.records, base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        rec = self.base.records[i]
        return PhotoFile(rec.path, rec.width, rec.height), self.base.target(i)
